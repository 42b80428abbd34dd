//! The kernel as the service sees it: links (netlink in the host's namespace),
//! sandbox namespaces, and the firewall, each behind a trait so that the service's
//! logic runs against in-memory fakes in unit tests (no root) and against the real
//! kernel ([`Kernel::host`]) everywhere else.
//!
//! Lifecycle of what goes through here: a bridge per network (`ensure_bridge`, marked
//! as the node's with `set_alias`); per sandbox a namespace pinned at a file
//! (`Namespaces::create`), a veth pair per endpoint (`add_veth`, peer moved into the
//! namespace) configured from inside (`Ns::configure`); the firewall rendered whole
//! from the records (`Firewall::apply`). Removal is the reverse; the namespace's
//! unmount takes its veths with it.

use async_trait::async_trait;
use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::firewall::{FirewallError, FwNetwork, FwPort};
use crate::link::{Link, LinkError, Netlink};

/// Links, addresses and routes in the host's namespace.
#[async_trait]
pub trait Links: Send + Sync {
    async fn links(&self) -> Result<Vec<Link>, LinkError>;
    async fn link(&self, name: &str) -> Result<Option<Link>, LinkError>;
    /// Create (or adopt) a bridge with exactly `addr/prefix`, up; its index.
    async fn ensure_bridge(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<u32, LinkError>;
    /// One more address on the link `name` (a bridge's IPv6 gateway). Idempotent.
    async fn add_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), LinkError>;
    /// Delete a link by name. Idempotent.
    async fn delete(&self, name: &str) -> Result<(), LinkError>;
    /// A veth pair: `host` on the bridge with index `bridge`, `peer` (with `mac`)
    /// inside the namespace `ns`; the host end carries `alias`.
    #[allow(clippy::too_many_arguments)]
    async fn add_veth(
        &self,
        host: &str,
        alias: &str,
        bridge: u32,
        mtu: u32,
        peer: &str,
        mac: [u8; 6],
        ns: &Ns,
    ) -> Result<(), LinkError>;
    /// Delete links a second from now, off the request path, if they are still
    /// there (veths of a namespace the kernel is cleaning up in the background).
    fn delete_later(&self, names: Vec<String>);
    /// Mark a link (its alias).
    fn set_alias(&self, name: &str, alias: &str) -> std::io::Result<()>;
    /// Write a sysctl under /proc/sys.
    fn sysctl(&self, key: &str, value: &str) -> std::io::Result<()>;
    /// The host's IPv4 routes other than default routes.
    fn routes(&self) -> Vec<Ipv4Net>;
}

/// Inside one sandbox's namespace.
#[async_trait]
pub trait NsLinks: Send + Sync {
    async fn lo_up(&self) -> Result<(), LinkError>;
    /// `ifname` up with `ip/prefix`, and the default route via `gw` when given.
    async fn configure(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
    ) -> Result<(), LinkError>;
    /// More addresses on `ifname` (its IPv6 address, link-local ones), IPv6 turned on
    /// for it first when one is IPv6, and the default IPv6 route via `gw6` when given.
    async fn add_addresses(
        &self,
        ifname: &str,
        addrs: &[(IpAddr, u8)],
        gw6: Option<Ipv6Addr>,
    ) -> Result<(), LinkError>;
}

/// An open sandbox namespace: where it is pinned, an fd of it (real namespaces), and
/// a netlink connection inside it.
pub struct Ns {
    pub path: PathBuf,
    pub file: Option<std::fs::File>,
    pub links: Box<dyn NsLinks>,
}

/// Network namespaces pinned at files under the service's `netns` directory.
#[async_trait]
pub trait Namespaces: Send + Sync {
    /// Make the directory namespaces are pinned in ready (a shared mount point).
    fn prepare_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Undo `prepare_dir` (graceful stop with no namespace left in it).
    fn release_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// A new namespace pinned at `path`.
    async fn create(&self, path: PathBuf) -> std::io::Result<Ns>;
    /// The namespace pinned at `path`.
    async fn open(&self, path: PathBuf) -> std::io::Result<Ns>;
    /// Unpin and delete. Idempotent.
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// Whether `path` pins a namespace.
    fn is_pinned(&self, path: &Path) -> bool;
    /// Whether a process lives in the namespace pinned at `path`.
    fn in_use(&self, path: &Path) -> bool;
}

/// The node's firewall: one nftables table rendered whole, plus the tagged accept
/// rules in iptables' FORWARD chain.
#[async_trait]
pub trait Firewall: Send + Sync {
    async fn apply(
        &self,
        table: &str,
        nets: &[FwNetwork],
        ports: &[FwPort],
    ) -> Result<(), FirewallError>;
    async fn delete(&self, table: &str) -> Result<(), FirewallError>;
    async fn sync_forward(&self, table: &str, bridges: &[String]) -> Result<(), FirewallError>;
}

/// The three together.
#[derive(Clone)]
pub struct Kernel {
    pub links: Arc<dyn Links>,
    pub ns: Arc<dyn Namespaces>,
    pub fw: Arc<dyn Firewall>,
}

impl Kernel {
    /// The real kernel, as seen from the calling process.
    pub fn host() -> std::io::Result<Kernel> {
        Ok(Kernel {
            links: Arc::new(HostLinks {
                nl: Netlink::host()?,
            }),
            ns: Arc::new(HostNamespaces),
            fw: Arc::new(HostFirewall),
        })
    }
}

/// [`Links`] over rtnetlink.
pub struct HostLinks {
    nl: Netlink,
}

#[async_trait]
impl Links for HostLinks {
    async fn links(&self) -> Result<Vec<Link>, LinkError> {
        self.nl.links().await
    }
    async fn link(&self, name: &str) -> Result<Option<Link>, LinkError> {
        self.nl.link(name).await
    }
    async fn ensure_bridge(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<u32, LinkError> {
        self.nl.ensure_bridge(name, addr, prefix, mtu).await
    }
    async fn add_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), LinkError> {
        if addr.is_ipv6() {
            // the gateway answers at once (no duplicate address detection first)
            let _ = crate::link::sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0");
            let _ = crate::link::sysctl(&format!("net/ipv6/conf/{name}/accept_dad"), "0");
        }
        self.nl.add_address(name, addr, prefix).await
    }
    async fn delete(&self, name: &str) -> Result<(), LinkError> {
        self.nl.delete(name).await
    }
    async fn add_veth(
        &self,
        host: &str,
        alias: &str,
        bridge: u32,
        mtu: u32,
        peer: &str,
        mac: [u8; 6],
        ns: &Ns,
    ) -> Result<(), LinkError> {
        let f = ns
            .file
            .as_ref()
            .ok_or_else(|| LinkError::Netlink("namespace without an fd".into()))?;
        self.nl
            .add_veth(host, alias, bridge, mtu, peer, mac, f)
            .await
    }
    fn delete_later(&self, names: Vec<String>) {
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let left: Vec<String> = names
                .into_iter()
                .filter(|v| Path::new("/sys/class/net").join(v).exists())
                .collect();
            if !left.is_empty() {
                let _ = tokio::task::spawn_blocking(move || delete_links_blocking(&left)).await;
            }
        });
    }
    fn set_alias(&self, name: &str, alias: &str) -> std::io::Result<()> {
        crate::link::set_alias(name, alias)
    }
    fn sysctl(&self, key: &str, value: &str) -> std::io::Result<()> {
        crate::link::sysctl(key, value)
    }
    fn routes(&self) -> Vec<Ipv4Net> {
        crate::ipam::host_routes()
    }
}

/// Deletes host links from a blocking thread, over a connection of its own: a
/// netlink delete waits ~20 ms for RCU inside sendmsg, which would hold a worker.
fn delete_links_blocking(names: &[String]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok(nl) = Netlink::host() else { return };
        for n in names {
            if let Err(err) = nl.delete(n).await {
                tracing::warn!(link = %n, error = %err, "cannot delete veth");
            }
        }
    });
}

/// [`NsLinks`] over a netlink socket opened inside the namespace pinned at the path.
struct InnerLinks(Netlink, PathBuf);

#[async_trait]
impl NsLinks for InnerLinks {
    async fn lo_up(&self) -> Result<(), LinkError> {
        self.0.lo_up().await
    }
    async fn configure(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
    ) -> Result<(), LinkError> {
        self.0.configure(ifname, ip, prefix, gw, false).await
    }
    async fn add_addresses(
        &self,
        ifname: &str,
        addrs: &[(IpAddr, u8)],
        gw6: Option<Ipv6Addr>,
    ) -> Result<(), LinkError> {
        if addrs.iter().any(|(a, _)| a.is_ipv6()) {
            // the namespace's interfaces come in without IPv6 (netns::create): turn it
            // on for this one, without duplicate address detection (usable at once, as
            // Moby adds them with IFA_F_NODAD); sysctls are per namespace
            if ifname.is_empty() || ifname.contains(['/', '.']) {
                return Err(LinkError::Netlink(format!("bad interface name {ifname:?}")));
            }
            let dir = format!("/proc/sys/net/ipv6/conf/{ifname}");
            crate::netns::run_in(self.1.clone(), move || {
                std::fs::write(format!("{dir}/accept_dad"), "0")?;
                std::fs::write(format!("{dir}/disable_ipv6"), "0")
            })
            .await
            .map_err(|e| LinkError::Netlink(format!("cannot turn IPv6 on for {ifname}: {e}")))?;
        }
        self.0.add_addresses(ifname, addrs, gw6).await
    }
}

/// [`Namespaces`] as bind mounts of nsfs files (see `netns`).
pub struct HostNamespaces;

#[async_trait]
impl Namespaces for HostNamespaces {
    fn prepare_dir(&self, dir: &Path) -> std::io::Result<()> {
        crate::netns::prepare_dir(dir)
    }
    fn release_dir(&self, dir: &Path) -> std::io::Result<()> {
        crate::netns::release_dir(dir)
    }
    async fn create(&self, path: PathBuf) -> std::io::Result<Ns> {
        let sock = crate::netns::create(path.clone()).await?;
        let res = (|| {
            let links = Box::new(InnerLinks(Netlink::from_fd(sock)?, path.clone()));
            let file = std::fs::File::open(&path)?;
            Ok(Ns {
                path: path.clone(),
                file: Some(file),
                links,
            })
        })();
        if res.is_err() {
            let _ = crate::netns::remove(&path);
        }
        res
    }
    async fn open(&self, path: PathBuf) -> std::io::Result<Ns> {
        let sock = crate::netns::netlink_in(path.clone()).await?;
        let links = Box::new(InnerLinks(Netlink::from_fd(sock)?, path.clone()));
        let file = std::fs::File::open(&path)?;
        Ok(Ns {
            path,
            file: Some(file),
            links,
        })
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        crate::netns::remove(path)
    }
    fn is_pinned(&self, path: &Path) -> bool {
        crate::netns::is_pinned(path)
    }
    fn in_use(&self, path: &Path) -> bool {
        crate::netns::in_use(path)
    }
}

/// [`Firewall`] through `nft -f -` and `iptables`.
pub struct HostFirewall;

#[async_trait]
impl Firewall for HostFirewall {
    async fn apply(
        &self,
        table: &str,
        nets: &[FwNetwork],
        ports: &[FwPort],
    ) -> Result<(), FirewallError> {
        crate::firewall::apply(&crate::firewall::render(table, nets, ports)).await
    }
    async fn delete(&self, table: &str) -> Result<(), FirewallError> {
        crate::firewall::apply(&crate::firewall::delete_script(table)).await
    }
    async fn sync_forward(&self, table: &str, bridges: &[String]) -> Result<(), FirewallError> {
        crate::firewall::sync_forward(table, bridges).await
    }
}
