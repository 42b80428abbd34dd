//! An in-memory kernel for unit tests: links, namespaces and firewall tables in one
//! [`World`] that tests inspect, with failures injected by operation name. It keeps
//! the real kernel's rules that the service relies on: a namespace's removal takes
//! its veths with it, a bridge's removal frees its ports, names are unique.

use async_trait::async_trait;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::firewall::{FirewallError, FwNetwork, FwPort};
use crate::kernel::{Firewall, Kernel, Links, Namespaces, Ns, NsLinks};
use crate::link::{Link, LinkError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    pub index: u32,
    pub kind: &'static str,
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub addr: Option<(Ipv4Addr, u8)>,
    pub mtu: u32,
    /// veth: the namespace its peer is in, and the peer's name there.
    pub peer_ns: Option<PathBuf>,
    pub peer: Option<String>,
}

/// An interface inside a fake namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeIface {
    pub mac: [u8; 6],
    pub addr: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub up: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNs {
    pub lo_up: bool,
    /// `add_addresses`: per interface, the addresses; and the IPv6 default route.
    pub extra: BTreeMap<String, Vec<(IpAddr, u8)>>,
    pub gateway6: Option<Ipv6Addr>,
    pub ifaces: BTreeMap<String, FakeIface>,
    /// A process lives in it.
    pub in_use: bool,
}

#[derive(Debug, Default)]
pub struct World {
    next_index: u32,
    pub links: BTreeMap<String, FakeLink>,
    pub namespaces: BTreeMap<PathBuf, FakeNs>,
    pub prepared_dirs: BTreeSet<PathBuf>,
    pub tables: BTreeMap<String, (Vec<FwNetwork>, Vec<FwPort>)>,
    pub forward: BTreeMap<String, Vec<String>>,
    pub routes: Vec<Ipv4Net>,
    pub sysctls: BTreeMap<String, String>,
    /// Addresses added to host links with `add_address`.
    pub addresses: BTreeMap<String, Vec<(IpAddr, u8)>>,
    /// Operations that fail from now on (`add_veth`, `configure`, `apply`, ...).
    pub fail: BTreeSet<&'static str>,
}

impl World {
    fn check(&self, op: &'static str) -> Result<(), LinkError> {
        if self.fail.contains(op) {
            return Err(LinkError::Netlink(format!("injected failure: {op}")));
        }
        Ok(())
    }

    fn add(&mut self, name: &str, mut l: FakeLink) -> u32 {
        self.next_index += 1;
        l.index = self.next_index + 100;
        let i = l.index;
        self.links.insert(name.to_string(), l);
        i
    }

    fn name_of(&self, index: u32) -> Option<String> {
        self.links
            .iter()
            .find(|(_, l)| l.index == index)
            .map(|(n, _)| n.clone())
    }

    fn delete(&mut self, name: &str) {
        if let Some(l) = self.links.remove(name) {
            for o in self.links.values_mut() {
                if o.master == Some(l.index) {
                    o.master = None;
                }
            }
            // a veth's peer goes with it
            if let (Some(ns), Some(peer)) = (l.peer_ns, l.peer) {
                if let Some(n) = self.namespaces.get_mut(&ns) {
                    n.ifaces.remove(&peer);
                }
            }
        }
    }

    /// Host links attached to `bridge`.
    pub fn ports_of(&self, bridge: &str) -> Vec<String> {
        let Some(b) = self.links.get(bridge) else {
            return vec![];
        };
        self.links
            .iter()
            .filter(|(_, l)| l.master == Some(b.index))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Links of kind `veth`.
    pub fn veths(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|(_, l)| l.kind == "veth")
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Links of kind `bridge`.
    pub fn bridges(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|(_, l)| l.kind == "bridge")
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A bridge another node made (marked `berth:<node>`), or anyone's link.
    pub fn add_foreign(&mut self, name: &str, kind: &'static str, alias: Option<&str>) {
        self.add(
            name,
            FakeLink {
                index: 0,
                kind,
                master: None,
                alias: alias.map(str::to_string),
                addr: None,
                mtu: 1500,
                peer_ns: None,
                peer: None,
            },
        );
    }
}

/// The fake kernel: clone it freely, every clone sees the same [`World`].
#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<World>>);

impl Fake {
    pub fn new() -> Fake {
        Fake::default()
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    pub fn kernel(&self) -> Kernel {
        Kernel {
            links: Arc::new(self.clone()),
            ns: Arc::new(self.clone()),
            fw: Arc::new(self.clone()),
        }
    }

    fn to_link(name: &str, l: &FakeLink) -> Link {
        Link {
            index: l.index,
            name: name.to_string(),
            kind: Some(l.kind.to_string()),
            master: l.master,
            alias: l.alias.clone(),
        }
    }
}

#[async_trait]
impl Links for Fake {
    async fn links(&self) -> Result<Vec<Link>, LinkError> {
        let w = self.world();
        w.check("links")?;
        Ok(w.links.iter().map(|(n, l)| Fake::to_link(n, l)).collect())
    }
    async fn link(&self, name: &str) -> Result<Option<Link>, LinkError> {
        let w = self.world();
        w.check("link")?;
        Ok(w.links.get(name).map(|l| Fake::to_link(name, l)))
    }
    async fn ensure_bridge(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<u32, LinkError> {
        let mut w = self.world();
        w.check("ensure_bridge")?;
        if let Some(l) = w.links.get_mut(name) {
            l.addr = Some((addr, prefix));
            return Ok(l.index);
        }
        Ok(w.add(
            name,
            FakeLink {
                index: 0,
                kind: "bridge",
                master: None,
                alias: None,
                addr: Some((addr, prefix)),
                mtu,
                peer_ns: None,
                peer: None,
            },
        ))
    }
    async fn add_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), LinkError> {
        let mut w = self.world();
        w.check("add_address")?;
        if !w.links.contains_key(name) {
            return Err(LinkError::Netlink(format!("{name} not found")));
        }
        let v = w.addresses.entry(name.to_string()).or_default();
        if !v.contains(&(addr, prefix)) {
            v.push((addr, prefix));
        }
        Ok(())
    }
    async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let mut w = self.world();
        w.check("delete")?;
        w.delete(name);
        Ok(())
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
        let mut w = self.world();
        w.check("add_veth")?;
        if w.links.contains_key(host) {
            return Err(LinkError::Io(std::io::Error::from_raw_os_error(
                libc::EEXIST,
            )));
        }
        if w.name_of(bridge).is_none() {
            return Err(LinkError::Io(std::io::Error::from_raw_os_error(
                libc::ENODEV,
            )));
        }
        let Some(n) = w.namespaces.get_mut(&ns.path) else {
            return Err(LinkError::Netlink("no such namespace".into()));
        };
        if n.ifaces.contains_key(peer) {
            return Err(LinkError::Io(std::io::Error::from_raw_os_error(
                libc::EEXIST,
            )));
        }
        n.ifaces.insert(
            peer.to_string(),
            FakeIface {
                mac,
                ..Default::default()
            },
        );
        w.add(
            host,
            FakeLink {
                index: 0,
                kind: "veth",
                master: Some(bridge),
                alias: Some(alias.to_string()),
                addr: None,
                mtu,
                peer_ns: Some(ns.path.clone()),
                peer: Some(peer.to_string()),
            },
        );
        Ok(())
    }
    fn delete_later(&self, names: Vec<String>) {
        let mut w = self.world();
        for n in names {
            w.delete(&n);
        }
    }
    fn set_alias(&self, name: &str, alias: &str) -> std::io::Result<()> {
        let mut w = self.world();
        match w.links.get_mut(name) {
            Some(l) => {
                l.alias = Some(alias.to_string());
                Ok(())
            }
            None => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }
    fn sysctl(&self, key: &str, value: &str) -> std::io::Result<()> {
        self.world()
            .sysctls
            .insert(key.to_string(), value.to_string());
        Ok(())
    }
    fn routes(&self) -> Vec<Ipv4Net> {
        let w = self.world();
        let mut r = w.routes.clone();
        // a bridge with an address routes its subnet, as the kernel's connected routes
        for l in w.links.values() {
            if let Some((a, p)) = l.addr {
                if let Ok(n) = Ipv4Net::new(a, p) {
                    r.push(n.trunc());
                }
            }
        }
        r
    }
}

/// Inside a fake namespace.
struct FakeNsLinks {
    world: Fake,
    path: PathBuf,
}

#[async_trait]
impl NsLinks for FakeNsLinks {
    async fn lo_up(&self) -> Result<(), LinkError> {
        let mut w = self.world.world();
        w.check("lo_up")?;
        let n = w
            .namespaces
            .get_mut(&self.path)
            .ok_or_else(|| LinkError::Netlink("namespace gone".into()))?;
        n.lo_up = true;
        Ok(())
    }
    async fn configure(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
    ) -> Result<(), LinkError> {
        let mut w = self.world.world();
        w.check("configure")?;
        let n = w
            .namespaces
            .get_mut(&self.path)
            .ok_or_else(|| LinkError::Netlink("namespace gone".into()))?;
        let i = n
            .ifaces
            .get_mut(ifname)
            .ok_or_else(|| LinkError::Netlink(format!("{ifname} not found in sandbox")))?;
        i.addr = Some((ip, prefix));
        i.gateway = gw;
        i.up = true;
        Ok(())
    }
    async fn add_addresses(
        &self,
        ifname: &str,
        addrs: &[(IpAddr, u8)],
        gw6: Option<Ipv6Addr>,
    ) -> Result<(), LinkError> {
        let mut w = self.world.world();
        w.check("add_addresses")?;
        let n = w
            .namespaces
            .get_mut(&self.path)
            .ok_or_else(|| LinkError::Netlink("namespace gone".into()))?;
        if !n.ifaces.contains_key(ifname) {
            return Err(LinkError::Netlink(format!("{ifname} not found in sandbox")));
        }
        n.extra.entry(ifname.to_string()).or_default().extend_from_slice(addrs);
        if gw6.is_some() {
            n.gateway6 = gw6;
        }
        Ok(())
    }
}

#[async_trait]
impl Namespaces for Fake {
    fn prepare_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        self.world().prepared_dirs.insert(dir.to_path_buf());
        Ok(())
    }
    fn release_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.world().prepared_dirs.remove(dir);
        Ok(())
    }
    async fn create(&self, path: PathBuf) -> std::io::Result<Ns> {
        {
            let mut w = self.world();
            if w.fail.contains("ns_create") {
                return Err(std::io::Error::other("injected failure: ns_create"));
            }
            if w.namespaces.contains_key(&path) {
                return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
            }
            w.namespaces.insert(path.clone(), FakeNs::default());
        }
        std::fs::write(&path, b"")?;
        Ok(self.ns_of(path))
    }
    async fn open(&self, path: PathBuf) -> std::io::Result<Ns> {
        if !self.world().namespaces.contains_key(&path) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(self.ns_of(path))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        let mut w = self.world();
        if w.namespaces.remove(path).is_some() {
            let gone: Vec<String> = w
                .links
                .iter()
                .filter(|(_, l)| l.peer_ns.as_deref() == Some(path))
                .map(|(n, _)| n.clone())
                .collect();
            for g in gone {
                w.delete(&g);
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn is_pinned(&self, path: &Path) -> bool {
        self.world().namespaces.contains_key(path)
    }
    fn in_use(&self, path: &Path) -> bool {
        self.world().namespaces.get(path).is_some_and(|n| n.in_use)
    }
}

impl Fake {
    fn ns_of(&self, path: PathBuf) -> Ns {
        Ns {
            path: path.clone(),
            file: None,
            links: Box::new(FakeNsLinks {
                world: self.clone(),
                path,
            }),
        }
    }
}

#[async_trait]
impl Firewall for Fake {
    async fn apply(
        &self,
        table: &str,
        nets: &[FwNetwork],
        ports: &[FwPort],
    ) -> Result<(), FirewallError> {
        let mut w = self.world();
        if w.fail.contains("apply") {
            return Err(FirewallError::Nft("injected failure: apply".into()));
        }
        w.tables
            .insert(table.to_string(), (nets.to_vec(), ports.to_vec()));
        Ok(())
    }
    async fn delete(&self, table: &str) -> Result<(), FirewallError> {
        self.world().tables.remove(table);
        Ok(())
    }
    async fn sync_forward(&self, table: &str, bridges: &[String]) -> Result<(), FirewallError> {
        let mut w = self.world();
        if bridges.is_empty() {
            w.forward.remove(table);
        } else {
            w.forward.insert(table.to_string(), bridges.to_vec());
        }
        Ok(())
    }
}

/// A service on a fake kernel, in a temp dir, with the events it published.
pub struct TestService {
    pub fake: Fake,
    pub dir: tempfile::TempDir,
    pub svc: Arc<crate::NetworkService>,
    pub events: Arc<Mutex<Vec<bus_schema::event::Event>>>,
}

impl TestService {
    /// The settings of node `n1` with bridge `berth0`, on `dir`.
    pub fn config(dir: &Path) -> crate::Config {
        let d = berth_config::DaemonConfig::default();
        let mut c = crate::Config::from_daemon(&d, dir, "n1").unwrap();
        std::fs::write(dir.join("resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        c.host_resolv_conf = dir.join("resolv.conf");
        c.host_hosts = dir.join("hosts");
        // never a real port: the fake's gateways may exist on the host
        c.dns_port = 0;
        c
    }

    pub async fn start() -> TestService {
        Self::start_with(Fake::new(), |_| {}).await
    }

    pub async fn start_with(fake: Fake, f: impl FnOnce(&mut crate::Config)) -> TestService {
        Self::try_start_with(fake, f).await.unwrap()
    }

    pub async fn try_start_with(
        fake: Fake,
        f: impl FnOnce(&mut crate::Config),
    ) -> Result<TestService, bus_schema::BusError> {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Self::config(dir.path());
        f(&mut cfg);
        let events = Arc::new(Mutex::new(Vec::new()));
        let svc = Self::boot(&fake, cfg, &events).await?;
        Ok(TestService {
            fake,
            dir,
            svc,
            events,
        })
    }

    async fn boot(
        fake: &Fake,
        cfg: crate::Config,
        events: &Arc<Mutex<Vec<bus_schema::event::Event>>>,
    ) -> Result<Arc<crate::NetworkService>, bus_schema::BusError> {
        let ev = events.clone();
        crate::NetworkService::start_on(
            cfg,
            Arc::new(move |e| ev.lock().unwrap().push(e)),
            fake.kernel(),
        )
        .await
    }

    /// The service as after a crash and a new start on the same records and kernel.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await
    }

    pub async fn restart_with(&mut self, f: impl FnOnce(&mut crate::Config)) {
        let mut cfg = Self::config(self.dir.path());
        f(&mut cfg);
        self.svc = Self::boot(&self.fake, cfg, &self.events).await.unwrap();
    }

    pub fn actions(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.action.clone())
            .collect()
    }
}
