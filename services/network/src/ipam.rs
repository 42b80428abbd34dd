//! Address management (IPv4; IPv6 subnets the user gives, [`Subnet6`]): subnet pools for new networks (skipping subnets the
//! host already routes and those other networks use) and addresses within a subnet.
//! Pure logic; the caller supplies the host's routes and what is in use.

use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {0}: {1}")]
    BadSubnet(String, String),
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")]
    PoolsExhausted,
    #[error("no available IPv4 addresses on this network's address pools: {0}")]
    AddressesExhausted(String),
    #[error("Address already in use")]
    AddressInUse,
    #[error("invalid address {0}: it does not belong to any of this network's subnets")]
    OutOfRange(String),
}

/// A pool new networks take subnets from: `base` split into subnets of `size` bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub base: Ipv4Net,
    pub size: u8,
}

/// Moby's local default pools (libnetwork/ipamutils): 172.17-31.0.0/16 as /16s, then
/// 192.168.0.0/16 as /20s.
pub fn default_pools() -> Vec<Pool> {
    let mut v: Vec<Pool> = [
        ("172.17.0.0/16", 16),
        ("172.18.0.0/16", 16),
        ("172.19.0.0/16", 16),
        ("172.20.0.0/14", 16),
        ("172.24.0.0/14", 16),
        ("172.28.0.0/14", 16),
        ("192.168.0.0/16", 20),
    ]
    .iter()
    .map(|(b, s)| Pool {
        base: b.parse().unwrap(),
        size: *s,
    })
    .collect();
    v.dedup();
    v
}

/// `default-address-pools` from daemon.json, or Moby's defaults.
pub fn pools_from_config(
    cfg: &[berth_config::daemon::AddressPool],
) -> Result<Vec<Pool>, IpamError> {
    if cfg.is_empty() {
        return Ok(default_pools());
    }
    cfg.iter()
        .map(|p| {
            let base = parse_net(&p.base)?;
            if p.size < base.prefix_len() || p.size > 30 {
                return Err(IpamError::BadSubnet(
                    p.base.clone(),
                    format!("invalid pool size {}", p.size),
                ));
            }
            Ok(Pool { base, size: p.size })
        })
        .collect()
}

/// Parse a CIDR, normalizing host bits away (`10.1.2.3/16` is `10.1.0.0/16`).
pub fn parse_net(s: &str) -> Result<Ipv4Net, IpamError> {
    let n: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|e: ipnet::AddrParseError| IpamError::BadSubnet(s.into(), e.to_string()))?;
    Ok(n.trunc())
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first subnet of the pools that overlaps neither `in_use` (other networks)
/// nor `routed` (the host's routes other than default routes).
pub fn pick_subnet(
    pools: &[Pool],
    in_use: &[Ipv4Net],
    routed: &[Ipv4Net],
) -> Result<Ipv4Net, IpamError> {
    for p in pools {
        let Ok(subnets) = p.base.subnets(p.size) else {
            continue;
        };
        for s in subnets {
            let busy = in_use.iter().chain(routed.iter()).any(|o| overlaps(&s, o));
            if !busy {
                return Ok(s);
            }
        }
    }
    Err(IpamError::PoolsExhausted)
}

/// The IPv4 routes of the host's main table, without default routes.
pub fn host_routes() -> Vec<Ipv4Net> {
    parse_proc_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

pub fn parse_proc_routes(text: &str) -> Vec<Ipv4Net> {
    berth_config::parse_proc_routes(text).into_iter().filter_map(|(a, p)| Ipv4Net::new(a, p).ok()).collect()
}

/// The gateway of a subnet: its first host address.
pub fn first_host(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// Allocate an address in `subnet` (restricted to `range` when given), never the
/// network or broadcast address nor one in `used`. Starts after `last` and wraps,
/// as Moby does, so that a freed address is not handed out again at once.
pub fn alloc_addr(
    subnet: &Ipv4Net,
    range: Option<&Ipv4Net>,
    used: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let r = range.unwrap_or(subnet);
    let lo = u32::from(r.network()).max(u32::from(subnet.network()) + 1);
    let hi = u32::from(r.broadcast()).min(u32::from(subnet.broadcast()).saturating_sub(1));
    if lo > hi {
        return Err(IpamError::AddressesExhausted(subnet.to_string()));
    }
    let start = match last.map(u32::from) {
        Some(l) if l >= lo && l < hi => l + 1,
        _ => lo,
    };
    let count = (hi - lo + 1) as u64;
    let mut a = start;
    for _ in 0..count {
        let ip = Ipv4Addr::from(a);
        if !used.contains(&ip) {
            return Ok(ip);
        }
        a = if a >= hi { lo } else { a + 1 };
    }
    Err(IpamError::AddressesExhausted(subnet.to_string()))
}

/// Check an address the user asked for (`--ip`).
pub fn check_addr(
    subnet: &Ipv4Net,
    ip: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<(), IpamError> {
    if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(IpamError::OutOfRange(ip.to_string()));
    }
    if used.contains(&ip) {
        return Err(IpamError::AddressInUse);
    }
    Ok(())
}

/// An IPv6 subnet of a network (`--ipv6 --subnet fd00::/64`): there are no default
/// IPv6 pools (as in Moby 20.10), so the user always gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subnet6 {
    pub subnet: Ipv6Net,
    /// The bridge's address: the given gateway or the subnet's first host.
    pub gateway: Ipv6Addr,
    pub ip_range: Option<Ipv6Net>,
    /// As the user wrote them (inspect shows them back; an unset gateway stays unset).
    #[serde(default)]
    pub given_range: Option<String>,
    #[serde(default)]
    pub given_gateway: Option<String>,
}

impl Subnet6 {
    /// From the user's IPAM config: `subnet`, optional `range` and `gateway`.
    pub fn parse(subnet: &str, range: Option<&str>, gateway: Option<&str>) -> Result<Subnet6, IpamError> {
        let bad = |s: &str| IpamError::BadSubnet(s.to_string(), "invalid CIDR address".into());
        let sub: Ipv6Net = subnet.parse().map_err(|_| bad(subnet))?;
        let sub = sub.trunc();
        if sub.prefix_len() > 126 {
            return Err(IpamError::BadSubnet(subnet.to_string(), "too small a subnet".into()));
        }
        let ip_range = match range {
            Some(r) => {
                let n: Ipv6Net = r.parse().map_err(|_| bad(r))?;
                if !sub.contains(&n.network()) || n.prefix_len() < sub.prefix_len() {
                    return Err(IpamError::OutOfRange(r.to_string()));
                }
                Some(n.trunc())
            }
            None => None,
        };
        let gw = match gateway {
            Some(g) => {
                let a: Ipv6Addr = g.parse().map_err(|_| IpamError::OutOfRange(g.to_string()))?;
                if !sub.contains(&a) || a == sub.network() {
                    return Err(IpamError::OutOfRange(g.to_string()));
                }
                a
            }
            None => Ipv6Addr::from(u128::from(sub.network()) + 1),
        };
        Ok(Subnet6 {
            subnet: sub,
            gateway: gw,
            ip_range,
            given_range: range.map(str::to_string),
            given_gateway: gateway.map(str::to_string),
        })
    }

    /// The lowest free address of the range (or subnet), never the subnet-router
    /// anycast address (the network's), the gateway or one in `used`.
    pub fn alloc(&self, used: &BTreeSet<Ipv6Addr>) -> Result<Ipv6Addr, IpamError> {
        let r = self.ip_range.unwrap_or(self.subnet);
        let lo = u128::from(r.network()).max(u128::from(self.subnet.network()) + 1);
        let hi = u128::from(r.broadcast()).min(u128::from(self.subnet.broadcast()));
        // bounded: a /64 has more addresses than any node will ever use
        (lo..=hi)
            .take(used.len() + 2)
            .map(Ipv6Addr::from)
            .find(|a| *a != self.gateway && !used.contains(a))
            .ok_or_else(|| IpamError::AddressesExhausted(self.subnet.to_string()))
    }

    /// Check an address the user asked for (`--ip6`).
    pub fn check(&self, ip: Ipv6Addr, used: &BTreeSet<Ipv6Addr>) -> Result<(), IpamError> {
        if !self.subnet.contains(&ip) || ip == self.subnet.network() {
            return Err(IpamError::OutOfRange(ip.to_string()));
        }
        if ip == self.gateway || used.contains(&ip) {
            return Err(IpamError::AddressInUse);
        }
        Ok(())
    }

    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.subnet.contains(&other.network()) || other.contains(&self.subnet.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn default_pools_are_mobys() {
        let p = default_pools();
        assert_eq!(
            p[0],
            Pool {
                base: n("172.17.0.0/16"),
                size: 16
            }
        );
        assert_eq!(
            p.last().unwrap(),
            &Pool {
                base: n("192.168.0.0/16"),
                size: 20
            }
        );
        // 172.17..172.31 as /16, then 192.168.0.0/20, 192.168.16.0/20, ...
        let mut used = vec![];
        let mut got = vec![];
        for _ in 0..17 {
            let s = pick_subnet(&p, &used, &[]).unwrap();
            used.push(s);
            got.push(s);
        }
        assert_eq!(got[0], n("172.17.0.0/16"));
        assert_eq!(got[14], n("172.31.0.0/16"));
        assert_eq!(got[15], n("192.168.0.0/20"));
        assert_eq!(got[16], n("192.168.16.0/20"));
    }

    #[test]
    fn skips_routed_subnets() {
        // another engine owns docker0 with 172.17.0.0/16; a VPN routes 172.19.5.0/24
        let routed = vec![n("172.17.0.0/16"), n("172.19.5.0/24")];
        let s = pick_subnet(&default_pools(), &[], &routed).unwrap();
        assert_eq!(s, n("172.18.0.0/16"));
        let s = pick_subnet(&default_pools(), &[n("172.18.0.0/16")], &routed).unwrap();
        assert_eq!(s, n("172.20.0.0/16"));
        // a route covering a whole pool
        let s = pick_subnet(&default_pools(), &[], &[n("172.16.0.0/12")]).unwrap();
        assert_eq!(s, n("192.168.0.0/20"));
        assert_eq!(
            pick_subnet(
                &[Pool {
                    base: n("10.0.0.0/24"),
                    size: 24
                }],
                &[n("10.0.0.0/8")],
                &[]
            ),
            Err(IpamError::PoolsExhausted)
        );
    }

    #[test]
    fn configured_pools() {
        let cfg = vec![berth_config::daemon::AddressPool {
            base: "10.10.0.0/16".into(),
            size: 24,
        }];
        let p = pools_from_config(&cfg).unwrap();
        assert_eq!(
            pick_subnet(&p, &[n("10.10.0.0/24")], &[]).unwrap(),
            n("10.10.1.0/24")
        );
        let bad = vec![berth_config::daemon::AddressPool {
            base: "10.10.0.0/16".into(),
            size: 8,
        }];
        assert!(pools_from_config(&bad).is_err());
    }

    #[test]
    fn proc_routes() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_routes(t),
            vec![n("192.0.2.0/24"), n("172.17.0.0/16")]
        );
    }

    #[test]
    fn addresses() {
        let s = n("172.18.0.0/16");
        let mut used = BTreeSet::from([first_host(&s)]);
        let a = alloc_addr(&s, None, &used, None).unwrap();
        assert_eq!(a, Ipv4Addr::new(172, 18, 0, 2));
        used.insert(a);
        let b = alloc_addr(&s, None, &used, Some(a)).unwrap();
        assert_eq!(b, Ipv4Addr::new(172, 18, 0, 3));
        // freed .2 is not reused at once
        used.remove(&a);
        used.insert(b);
        assert_eq!(
            alloc_addr(&s, None, &used, Some(b)).unwrap(),
            Ipv4Addr::new(172, 18, 0, 4)
        );
        // ip-range
        let r = n("172.18.5.0/24");
        assert_eq!(
            alloc_addr(&s, Some(&r), &used, None).unwrap(),
            Ipv4Addr::new(172, 18, 5, 0)
        );
        // tiny subnet: /30 has two hosts, one of which is the gateway
        let t = n("10.0.0.0/30");
        let used = BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(
            alloc_addr(&t, None, &used, None).unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        let used = BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        assert!(matches!(
            alloc_addr(&t, None, &used, None),
            Err(IpamError::AddressesExhausted(_))
        ));
        // wrap around
        let used = BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(
            alloc_addr(&t, None, &used, Some(Ipv4Addr::new(10, 0, 0, 2))).unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
    }

    #[test]
    fn requested_addresses() {
        let s = n("10.1.0.0/24");
        let used = BTreeSet::from([Ipv4Addr::new(10, 1, 0, 1)]);
        assert!(check_addr(&s, Ipv4Addr::new(10, 1, 0, 9), &used).is_ok());
        assert_eq!(
            check_addr(&s, Ipv4Addr::new(10, 1, 0, 1), &used),
            Err(IpamError::AddressInUse)
        );
        assert!(matches!(
            check_addr(&s, Ipv4Addr::new(10, 2, 0, 1), &used),
            Err(IpamError::OutOfRange(_))
        ));
        assert!(matches!(
            check_addr(&s, Ipv4Addr::new(10, 1, 0, 255), &used),
            Err(IpamError::OutOfRange(_))
        ));
        assert_eq!(parse_net("10.1.2.3/16").unwrap(), n("10.1.0.0/16"));
        assert!(parse_net("10.1.2.3").is_err());
    }

    #[test]
    fn ipv6_subnets_and_addresses() {
        // docker-py's: range 2001:389::/96, gateway ::ffff (inside the range, skipped)
        let s = Subnet6::parse("2001:389::/64", Some("2001:389::0/96"), Some("2001:389::ffff")).unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(s.alloc(&used).unwrap(), "2001:389::1".parse::<Ipv6Addr>().unwrap());
        used.insert("2001:389::1".parse().unwrap());
        assert_eq!(s.alloc(&used).unwrap(), "2001:389::2".parse::<Ipv6Addr>().unwrap());
        assert!(s.check("2001:389::f00d".parse().unwrap(), &used).is_ok());
        assert_eq!(s.check("2001:389::ffff".parse().unwrap(), &used), Err(IpamError::AddressInUse));
        assert!(matches!(s.check("2001:388::1".parse().unwrap(), &used), Err(IpamError::OutOfRange(_))));
        // no gateway given: the first host, not shown back
        let s = Subnet6::parse("fd00:2::/64", None, None).unwrap();
        assert_eq!(s.gateway, "fd00:2::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(s.alloc(&BTreeSet::new()).unwrap(), "fd00:2::2".parse::<Ipv6Addr>().unwrap());
        assert!(s.given_gateway.is_none());
        assert!(Subnet6::parse("fd00:2::/127", None, None).is_err());
        assert!(Subnet6::parse("10.0.0.0/8", None, None).is_err());
        assert!(Subnet6::parse("fd00:2::/64", Some("fd00:3::/96"), None).is_err());
        assert!(Subnet6::parse("fd00:2::/64", None, Some("fd00:3::1")).is_err());
        assert!(s.overlaps(&"fd00:2:0:0:1::/80".parse().unwrap()));
        assert!(!s.overlaps(&"fd00:3::/64".parse().unwrap()));
    }
}
