//! Links, addresses and routes over rtnetlink: the bridges and veth host ends in the
//! host's namespace, and the interfaces inside a sandbox's namespace (through a
//! netlink socket opened there, see `netns`).

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl LinkError {
    fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Io(e) => e.raw_os_error(),
            LinkError::Netlink(_) => None,
        }
    }
}

fn nl(e: rtnetlink::Error) -> LinkError {
    match e {
        rtnetlink::Error::NetlinkError(m) => LinkError::Io(m.to_io()),
        other => LinkError::Netlink(other.to_string()),
    }
}

/// A link as listed by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub alias: Option<String>,
}

/// A netlink route connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    h: rtnetlink::Handle,
}

impl Netlink {
    /// A connection in the calling process's namespace (the host's for the service).
    pub fn host() -> std::io::Result<Netlink> {
        let (conn, h, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { h })
    }

    /// A connection over a netlink socket opened in another namespace.
    pub fn from_fd(fd: OwnedFd) -> std::io::Result<Netlink> {
        use std::os::fd::FromRawFd;
        // SAFETY: we own the fd and hand it over.
        let sock = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, h, _) = rtnetlink::from_socket(sock);
        tokio::spawn(conn);
        Ok(Netlink { h })
    }

    pub async fn links(&self) -> Result<Vec<Link>, LinkError> {
        let msgs: Vec<LinkMessage> = self
            .h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl)?;
        Ok(msgs.into_iter().map(to_link).collect())
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>, LinkError> {
        let mut s = self.h.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(to_link(m))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = nl(e);
                if e.errno() == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Create (or adopt) a bridge with exactly `addr/prefix`, up. Returns its index.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<u32, LinkError> {
        let idx = match self.link(name).await? {
            Some(l) => l.index,
            None => {
                let mut b = LinkBridge::new(name);
                if mtu > 0 {
                    b = b.mtu(mtu);
                }
                match self.h.link().add(b.build()).execute().await.map_err(nl) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                self.link(name)
                    .await?
                    .ok_or_else(|| LinkError::Netlink(format!("bridge {name} vanished")))?
                    .index
            }
        };
        // exactly one IPv4 address: ours
        let addrs: Vec<_> = self
            .h
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute()
            .try_collect()
            .await
            .map_err(nl)?;
        let mut have = false;
        for a in addrs {
            let ip = a.attributes.iter().find_map(|x| match x {
                rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(v)) => {
                    Some(*v)
                }
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if ip == addr && a.header.prefix_len == prefix {
                have = true;
            } else {
                let _ = self.h.address().del(a).execute().await;
            }
        }
        if !have {
            match self
                .h
                .address()
                .add(idx, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .map_err(nl)
            {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        self.h
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl)?;
        Ok(idx)
    }

    /// Delete a link by name. Idempotent.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let Some(l) = self.link(name).await? else {
            return Ok(());
        };
        match self.h.link().del(l.index).execute().await.map_err(nl) {
            Err(e) if e.errno() != Some(libc::ENODEV) => Err(e),
            _ => Ok(()),
        }
    }

    /// Create a veth pair: `host` (marked with `alias`) on the bridge `bridge` (up,
    /// hairpin on, so a container reaches its own published ports), and `peer` with
    /// `mac` inside the namespace `ns`.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_veth(
        &self,
        host: &str,
        alias: &str,
        bridge: u32,
        mtu: u32,
        peer: &str,
        mac: [u8; 6],
        ns: &std::fs::File,
    ) -> Result<(), LinkError> {
        let mut p = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(mac.to_vec());
        if mtu > 0 {
            p = p.mtu(mtu);
        }
        let peer_msg = p.setns_by_fd(ns.as_raw_fd()).build();
        let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)));
        if mtu > 0 {
            b = b.mtu(mtu);
        }
        self.h.link().add(b.build()).execute().await.map_err(nl)?;
        if let Some(l) = self.link(host).await? {
            let _ = self
                .h
                .link()
                .set_port(LinkBridgePort::new(l.index).hairpin(true).build())
                .execute()
                .await;
        }
        // the kernel takes no alias in RTM_NEWLINK: sysfs, as for bridges
        let _ = set_alias(host, alias);
        Ok(())
    }

    /// Inside a sandbox: `lo` up, and `ifname` up with `ip/prefix` and, when given,
    /// the default route via `gw`.
    pub async fn configure(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
        lo_up: bool,
    ) -> Result<(), LinkError> {
        if lo_up {
            if let Some(lo) = self.link("lo").await? {
                self.h
                    .link()
                    .set(LinkUnspec::new_with_index(lo.index).up().build())
                    .execute()
                    .await
                    .map_err(nl)?;
            }
        }
        let l = self
            .link(ifname)
            .await?
            .ok_or_else(|| LinkError::Netlink(format!("{ifname} not found in sandbox")))?;
        self.h
            .address()
            .add(l.index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(nl)?;
        self.h
            .link()
            .set(LinkUnspec::new_with_index(l.index).up().build())
            .execute()
            .await
            .map_err(nl)?;
        if let Some(gw) = gw {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(l.index)
                .build();
            self.h.route().add(r).execute().await.map_err(nl)?;
        }
        Ok(())
    }

    /// One more address on `name`. Idempotent (EEXIST is success).
    pub async fn add_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), LinkError> {
        let l = self
            .link(name)
            .await?
            .ok_or_else(|| LinkError::Netlink(format!("{name} not found")))?;
        match self.h.address().add(l.index, addr, prefix).execute().await.map_err(nl) {
            Err(e) if e.errno() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Inside a sandbox: more addresses on `ifname` and the default IPv6 route.
    pub async fn add_addresses(
        &self,
        ifname: &str,
        addrs: &[(IpAddr, u8)],
        gw6: Option<Ipv6Addr>,
    ) -> Result<(), LinkError> {
        for (a, p) in addrs {
            self.add_address(ifname, *a, *p).await?;
        }
        if let Some(gw) = gw6 {
            let l = self
                .link(ifname)
                .await?
                .ok_or_else(|| LinkError::Netlink(format!("{ifname} not found in sandbox")))?;
            let r = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(l.index)
                .build();
            self.h.route().add(r).execute().await.map_err(nl)?;
        }
        Ok(())
    }

    /// Bring `lo` up (a `none` sandbox).
    pub async fn lo_up(&self) -> Result<(), LinkError> {
        if let Some(lo) = self.link("lo").await? {
            self.h
                .link()
                .set(LinkUnspec::new_with_index(lo.index).up().build())
                .execute()
                .await
                .map_err(nl)?;
        }
        Ok(())
    }
}

fn to_link(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        master: None,
        alias: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Controller(i) => l.master = Some(i),
            LinkAttribute::IfAlias(s) => l.alias = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Mark a link as this node's, so a restart after a crash can tell ours from others'.
pub fn set_alias(name: &str, alias: &str) -> std::io::Result<()> {
    std::fs::write(format!("/sys/class/net/{name}/ifalias"), alias)
}

/// Write a sysctl under /proc/sys (in the calling thread's namespace for net.*).
pub fn sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value)
}

pub fn sysctl_read(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A random veth host-end name, Docker-style (`veth` + 7 hex).
pub fn veth_name() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("random");
    format!("veth{}", &hex::encode(b)[..7])
}

/// A MAC address derived from the IPv4 address, as Docker's `02:42:<ip>`.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_names() {
        let m = mac_for(Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(mac_string(&m), "02:42:ac:12:00:02");
        assert_eq!(parse_mac("02:42:ac:12:00:02"), Some(m));
        assert_eq!(parse_mac("zz"), None);
        let v = veth_name();
        assert_eq!(v.len(), 11);
        assert!(v.starts_with("veth"));
    }

    #[tokio::test]
    async fn bridge_and_veth_into_a_namespace() {
        berth_test_support::require_root!();
        let nlh = Netlink::host().unwrap();
        let br = format!("bt{}", &crate::store::new_id()[..8]);
        let gw = Ipv4Addr::new(10, 250, 77, 1);
        let idx = nlh.ensure_bridge(&br, gw, 24, 0).await.unwrap();
        // idempotent
        assert_eq!(nlh.ensure_bridge(&br, gw, 24, 0).await.unwrap(), idx);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ns");
        let sock = crate::netns::create(p.clone()).await.unwrap();
        let veth = veth_name();
        let f = std::fs::File::open(&p).unwrap();
        nlh.add_veth(
            &veth,
            "berth:test",
            idx,
            0,
            "eth0",
            mac_for(Ipv4Addr::new(10, 250, 77, 2)),
            &f,
        )
        .await
        .unwrap();
        let inner = Netlink::from_fd(sock).unwrap();
        inner
            .configure("eth0", Ipv4Addr::new(10, 250, 77, 2), 24, Some(gw), true)
            .await
            .unwrap();
        let l = nlh.link(&veth).await.unwrap().unwrap();
        assert_eq!(l.master, Some(idx));
        assert!(inner.link("eth0").await.unwrap().is_some());
        // the host reaches the namespace over the bridge
        let ok = std::process::Command::new("ping")
            .args(["-c1", "-W2", "10.250.77.2"])
            .status()
            .map(|s| s.success());
        if let Ok(ok) = ok {
            assert!(ok, "ping into the namespace failed");
        }
        crate::netns::remove(&p).unwrap();
        nlh.delete(&veth).await.unwrap();
        nlh.delete(&br).await.unwrap();
        assert!(nlh.link(&br).await.unwrap().is_none());
        nlh.delete(&br).await.unwrap();
    }
}
