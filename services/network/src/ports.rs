//! Published ports: parsing Docker's port bindings, and reserving host ports by
//! binding a socket that never listens. The reservation makes a taken port an error
//! at start (`Bind for 0.0.0.0:8080 failed: port is already allocated`) and keeps
//! other programs off the port while the container has it; the traffic itself is
//! forwarded in the kernel (see `firewall`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bus_schema::docker::PortBinding;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("invalid port specification: \"{0}\"")]
    BadSpec(String),
    #[error("unsupported protocol {0}: berth publishes tcp and udp ports")]
    Unsupported(String),
    #[error("Bind for {0}:{1} failed: port is already allocated")]
    Allocated(Ipv4Addr, u16),
    #[error("failed to bind host port {0}:{1}/{2}: {3}")]
    Bind(Ipv4Addr, u16, &'static str, String),
}

/// A container port key (`80/tcp`, `53/udp`, `80`).
pub fn parse_port_key(k: &str) -> Result<(u16, Proto), PortError> {
    let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" | "" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(PortError::Unsupported(other.into())),
    };
    let port: u16 = port.parse().map_err(|_| PortError::BadSpec(k.into()))?;
    if port == 0 {
        return Err(PortError::BadSpec(k.into()));
    }
    Ok((port, proto))
}

/// One binding to make: a container port on a host address and a host port, or a
/// host port range (`lo..=hi`), or an ephemeral port (`0, 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub proto: Proto,
    pub container_port: u16,
    pub host_ip: Ipv4Addr,
    pub host_lo: u16,
    pub host_hi: u16,
}

/// A binding that was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub proto: Proto,
    pub container_port: u16,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
}

/// What to publish for a container: its bindings, `-P` over its exposed ports, with
/// `default_ip` (the network's `host_binding_ipv4`) where no host IP was given.
/// Also returns every container port to list in `NetworkSettings.Ports`.
pub fn plan(
    bindings: &HashMap<String, Option<Vec<PortBinding>>>,
    publish_all: bool,
    exposed: &[String],
    default_ip: Ipv4Addr,
) -> Result<(Vec<PortSpec>, Vec<(u16, Proto)>), PortError> {
    let mut specs = Vec::new();
    let mut all = std::collections::BTreeSet::new();
    let mut keys: Vec<&String> = bindings.keys().collect();
    keys.sort();
    for k in keys {
        let (cport, proto) = parse_port_key(k)?;
        all.insert((cport, proto));
        for b in bindings[k].iter().flatten() {
            let ip = match b.host_ip.as_deref().map(str::trim) {
                None | Some("") => default_ip,
                Some(s) => match s
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                {
                    Ok(std::net::IpAddr::V4(a)) => a,
                    // IPv6 host addresses: berth's networks are IPv4 only.
                    Ok(std::net::IpAddr::V6(_)) => continue,
                    Err(_) => {
                        return Err(PortError::BadSpec(format!(
                            "{s}:{}",
                            b.host_port.as_deref().unwrap_or("")
                        )))
                    }
                },
            };
            let (lo, hi) = parse_host_ports(b.host_port.as_deref().unwrap_or(""))?;
            specs.push(PortSpec {
                proto,
                container_port: cport,
                host_ip: ip,
                host_lo: lo,
                host_hi: hi,
            });
        }
    }
    for e in exposed {
        let (cport, proto) = parse_port_key(e)?;
        let new = all.insert((cport, proto));
        if publish_all
            && (new
                || bindings
                    .get(e)
                    .is_none_or(|b| b.as_ref().is_none_or(|v| v.is_empty())))
        {
            specs.push(PortSpec {
                proto,
                container_port: cport,
                host_ip: default_ip,
                host_lo: 0,
                host_hi: 0,
            });
        }
    }
    Ok((specs, all.into_iter().collect()))
}

/// `8080`, `8000-8010`, or empty (ephemeral).
pub fn parse_host_ports(s: &str) -> Result<(u16, u16), PortError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok((0, 0));
    }
    let bad = || PortError::BadSpec(s.to_string());
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = s.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo > hi || (lo == 0 && hi != 0) {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// `NetworkSettings.Ports`: every container port, with the bindings made (or null).
pub fn port_map(
    all: &[(u16, Proto)],
    made: &[PortMapping],
) -> HashMap<String, Option<Vec<PortBinding>>> {
    let mut m: BTreeMap<String, Option<Vec<PortBinding>>> = BTreeMap::new();
    for (p, proto) in all {
        m.insert(format!("{p}/{}", proto.as_str()), None);
    }
    for pm in made {
        let e = m
            .entry(format!("{}/{}", pm.container_port, pm.proto.as_str()))
            .or_insert(None);
        e.get_or_insert_with(Vec::new).push(PortBinding {
            host_ip: Some(pm.host_ip.to_string()),
            host_port: Some(pm.host_port.to_string()),
        });
    }
    m.into_iter().collect()
}

/// A host port held by a bound, never listening, socket.
#[derive(Debug)]
pub struct Reservation {
    pub mapping: PortMapping,
    _fd: OwnedFd,
}

/// Bind `proto` on `ip:port` (0: any free port) without listening.
pub fn bind_port(proto: Proto, ip: Ipv4Addr, port: u16) -> std::io::Result<(OwnedFd, u16)> {
    let ty = match proto {
        Proto::Tcp => libc::SOCK_STREAM,
        Proto::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: plain socket calls; the fd is owned from here on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        // No SO_REUSEADDR: with it, another program could bind and listen on the port.
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::getsockname(
            fd.as_raw_fd(),
            &mut out as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok((fd, u16::from_be(out.sin_port)))
    }
}

/// The ephemeral range: `/proc/sys/net/ipv4/ip_local_port_range`, else 49153-65535 (Moby).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .filter(|(a, b)| a <= b && *a > 0)
        .unwrap_or((49153, 65535))
}

/// Reserve every spec. `taken` says whether berth itself already holds a mapping
/// (another container's port): that is "already allocated" without asking the kernel.
/// All or nothing: on error the reservations made so far are dropped (released).
pub fn reserve_all(
    specs: &[PortSpec],
    taken: &dyn Fn(Proto, Ipv4Addr, u16) -> bool,
) -> Result<Vec<Reservation>, PortError> {
    let mut out: Vec<Reservation> = Vec::new();
    for s in specs {
        let held = |proto: Proto, ip: Ipv4Addr, port: u16| {
            taken(proto, ip, port)
                || out.iter().any(|r| {
                    r.mapping.proto == proto
                        && r.mapping.host_port == port
                        && (r.mapping.host_ip == ip
                            || r.mapping.host_ip.is_unspecified()
                            || ip.is_unspecified())
                })
        };
        let r = if s.host_lo == 0 {
            reserve_ephemeral(s, &held)?
        } else {
            let mut last_err = None;
            let mut got = None;
            for port in s.host_lo..=s.host_hi {
                if held(s.proto, s.host_ip, port) {
                    last_err = Some(PortError::Allocated(s.host_ip, port));
                    continue;
                }
                match bind_port(s.proto, s.host_ip, port) {
                    Ok((fd, p)) => {
                        got = Some(Reservation {
                            mapping: mapping(s, p),
                            _fd: fd,
                        });
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                        last_err = Some(PortError::Allocated(s.host_ip, port));
                    }
                    Err(e) => {
                        last_err = Some(PortError::Bind(
                            s.host_ip,
                            port,
                            s.proto.as_str(),
                            e.to_string(),
                        ));
                    }
                }
            }
            match got {
                Some(r) => r,
                None => return Err(last_err.unwrap_or(PortError::Allocated(s.host_ip, s.host_lo))),
            }
        };
        out.push(r);
    }
    Ok(out)
}

fn mapping(s: &PortSpec, host_port: u16) -> PortMapping {
    PortMapping {
        proto: s.proto,
        container_port: s.container_port,
        host_ip: s.host_ip,
        host_port,
    }
}

fn reserve_ephemeral(
    s: &PortSpec,
    held: &dyn Fn(Proto, Ipv4Addr, u16) -> bool,
) -> Result<Reservation, PortError> {
    let (lo, hi) = ephemeral_range();
    // Start at a random point of the range so that restarts do not all race for the same port.
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let span = (hi - lo) as u32 + 1;
    let start = (u16::from_le_bytes(b) as u32) % span;
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        if held(s.proto, s.host_ip, port) {
            continue;
        }
        if let Ok((fd, p)) = bind_port(s.proto, s.host_ip, port) {
            return Ok(Reservation {
                mapping: mapping(s, p),
                _fd: fd,
            });
        }
    }
    Err(PortError::Allocated(s.host_ip, 0))
}

/// Take a reservation back for a mapping that already exists (service restart).
pub fn rebind(m: PortMapping) -> std::io::Result<Reservation> {
    let (fd, _) = bind_port(m.proto, m.host_ip, m.host_port)?;
    Ok(Reservation {
        mapping: m,
        _fd: fd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(ip: &str, port: &str) -> PortBinding {
        PortBinding {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        }
    }

    #[test]
    fn keys_and_ranges() {
        assert_eq!(parse_port_key("80/tcp").unwrap(), (80, Proto::Tcp));
        assert_eq!(parse_port_key("53/udp").unwrap(), (53, Proto::Udp));
        assert_eq!(parse_port_key("8080").unwrap(), (8080, Proto::Tcp));
        assert!(matches!(
            parse_port_key("1/sctp"),
            Err(PortError::Unsupported(_))
        ));
        assert!(parse_port_key("x/tcp").is_err());
        assert_eq!(parse_host_ports("").unwrap(), (0, 0));
        assert_eq!(parse_host_ports("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_host_ports("8000-8010").unwrap(), (8000, 8010));
        assert!(parse_host_ports("9-8").is_err());
        assert!(parse_host_ports("a").is_err());
    }

    #[test]
    fn plans_bindings_and_publish_all() {
        let any = Ipv4Addr::UNSPECIFIED;
        let b = HashMap::from([
            (
                "80/tcp".to_string(),
                Some(vec![pb("", "8080"), pb("127.0.0.1", "")]),
            ),
            ("53/udp".to_string(), Some(vec![pb("::", "53")])),
        ]);
        let (specs, all) = plan(&b, false, &["80/tcp".into(), "443/tcp".into()], any).unwrap();
        // the IPv6 binding is skipped: berth's networks are IPv4 only
        assert_eq!(specs.len(), 2);
        assert_eq!(
            specs[0],
            PortSpec {
                proto: Proto::Tcp,
                container_port: 80,
                host_ip: any,
                host_lo: 8080,
                host_hi: 8080
            }
        );
        assert_eq!(
            specs[1],
            PortSpec {
                proto: Proto::Tcp,
                container_port: 80,
                host_ip: Ipv4Addr::LOCALHOST,
                host_lo: 0,
                host_hi: 0
            }
        );
        assert_eq!(
            all,
            vec![(53, Proto::Udp), (80, Proto::Tcp), (443, Proto::Tcp)]
        );
        // -P publishes exposed ports without bindings
        let (specs, _) = plan(
            &HashMap::new(),
            true,
            &["80/tcp".into(), "53/udp".into()],
            any,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert!(specs.iter().all(|s| s.host_lo == 0));
    }

    #[test]
    fn port_map_lists_unpublished_as_null() {
        let made = [PortMapping {
            proto: Proto::Tcp,
            container_port: 80,
            host_ip: Ipv4Addr::UNSPECIFIED,
            host_port: 8080,
        }];
        let m = port_map(&[(80, Proto::Tcp), (443, Proto::Tcp)], &made);
        assert_eq!(m["80/tcp"], Some(vec![pb("0.0.0.0", "8080")]));
        assert_eq!(m["443/tcp"], None);
    }

    #[test]
    fn reservations_hold_ports() {
        let lo = Ipv4Addr::LOCALHOST;
        let spec = PortSpec {
            proto: Proto::Tcp,
            container_port: 80,
            host_ip: lo,
            host_lo: 0,
            host_hi: 0,
        };
        let r = reserve_all(&[spec.clone()], &|_, _, _| false).unwrap();
        let port = r[0].mapping.host_port;
        assert!(port > 0);
        // the port is held: another program cannot bind it, we refuse it as allocated
        assert!(std::net::TcpListener::bind((lo, port)).is_err());
        let fixed = PortSpec {
            host_lo: port,
            host_hi: port,
            ..spec.clone()
        };
        assert_eq!(
            reserve_all(&[fixed.clone()], &|_, _, _| false).unwrap_err(),
            PortError::Allocated(lo, port)
        );
        // berth's own records say it is taken
        assert!(matches!(
            reserve_all(&[fixed.clone()], &|_, _, p| p == port),
            Err(PortError::Allocated(_, _))
        ));
        drop(r);
        // released
        let r2 = reserve_all(&[fixed], &|_, _, _| false).unwrap();
        assert_eq!(r2[0].mapping.host_port, port);
        // a range skips the taken port
        let range = PortSpec {
            host_lo: port,
            host_hi: port.saturating_add(5),
            ..spec
        };
        let r3 = reserve_all(&[range], &|_, _, _| false).unwrap();
        assert_ne!(r3[0].mapping.host_port, port);
        // a port a program listens on is "already allocated"
        let l = std::net::TcpListener::bind((lo, 0)).unwrap();
        let taken = l.local_addr().unwrap().port();
        let e = reserve_all(
            &[PortSpec {
                proto: Proto::Tcp,
                container_port: 80,
                host_ip: lo,
                host_lo: taken,
                host_hi: taken,
            }],
            &|_, _, _| false,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Bind for 127.0.0.1:{taken} failed: port is already allocated")
        );
    }
}
