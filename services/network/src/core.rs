//! The network service's logic: networks, sandboxes, endpoints, ports, DNS names,
//! over the kernel parts (`link`, `netns`, `firewall`, `dns`) and the records
//! (`store`). One lock serializes changes; the records are the truth and the kernel
//! state is reconciled against them at start.

use bus_schema::event::{Action, Event, EventType};
use bus_schema::network::*;
use bus_schema::{docker, BusError};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dns::{self, Dns, DnsEntry};
use crate::files::{self, DnsOverrides, ResolvConf};
use crate::firewall::{self, FwNetwork, FwPort};
use crate::ipam::{self, Pool};
use crate::link::{self, Netlink};
use crate::netns;
use crate::ports::{self, PortError, Reservation};
use crate::store::{
    self, EndpointRecord, NetworkRecord, SandboxRecord, Store, DRIVER_BRIDGE, DRIVER_HOST,
    DRIVER_NULL,
};

const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
const OPT_MASQ: &str = "com.docker.network.bridge.enable_ip_masquerade";
const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
const OPT_HOST_IP: &str = "com.docker.network.bridge.host_binding_ipv4";
const OPT_MTU: &str = "com.docker.network.driver.mtu";
const OPT_DEFAULT_BRIDGE: &str = "com.docker.network.bridge.default_bridge";

/// The service's settings, from daemon.json and the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `<root>/network`.
    pub dir: PathBuf,
    /// The node id: the firewall table and link marks carry it.
    pub node: String,
    /// The default bridge device (`bridge`, default `berth0`); None for `"none"`.
    pub bridge: Option<String>,
    /// `bip`: the default bridge's address and prefix.
    pub bip: Option<(Ipv4Addr, u8)>,
    /// `fixed-cidr`: the default bridge's container range.
    pub fixed_cidr: Option<Ipv4Net>,
    pub pools: Vec<Pool>,
    pub mtu: u32,
    pub ip_masq: bool,
    pub icc: bool,
    pub ip_forward: bool,
    /// Program the firewall (`iptables`, default true).
    pub firewall: bool,
    /// `ip`: default host address for published ports.
    pub default_host_ip: Ipv4Addr,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_opts: Vec<String>,
    /// The embedded DNS port (53; tests may use another).
    pub dns_port: u16,
    pub host_resolv_conf: PathBuf,
    pub host_hosts: PathBuf,
}

impl Config {
    pub fn from_daemon(
        cfg: &berth_config::DaemonConfig,
        root: &Path,
        node: &str,
    ) -> Result<Config, String> {
        let s = |k: &str| {
            cfg.other
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let bridge = match s("bridge").as_deref() {
            None | Some("") => Some("berth0".to_string()),
            Some("none") => None,
            Some(b) => Some(b.to_string()),
        };
        let bip = match &cfg.bip {
            None => None,
            Some(b) => {
                let n: ipnet::Ipv4Net = b.parse().map_err(|_| format!("invalid bip {b}"))?;
                Some((n.addr(), n.prefix_len()))
            }
        };
        let fixed_cidr = match s("fixed-cidr") {
            None => None,
            Some(c) => Some(ipam::parse_net(&c).map_err(|e| e.to_string())?),
        };
        let pools =
            ipam::pools_from_config(&cfg.default_address_pools).map_err(|e| e.to_string())?;
        let default_host_ip = match s("ip") {
            None => Ipv4Addr::UNSPECIFIED,
            Some(ip) => ip.parse().map_err(|_| format!("invalid ip {ip}"))?,
        };
        Ok(Config {
            dir: root.join("network"),
            node: node.to_string(),
            bridge,
            bip,
            fixed_cidr,
            pools,
            mtu: cfg.mtu.unwrap_or(1500),
            ip_masq: cfg.ip_masq.unwrap_or(true),
            icc: cfg
                .other
                .get("icc")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
            ip_forward: cfg.ip_forward.unwrap_or(true),
            firewall: cfg.iptables.unwrap_or(true),
            default_host_ip,
            dns: cfg.dns.clone(),
            dns_search: cfg.dns_search.clone(),
            dns_opts: cfg.dns_opts.clone(),
            dns_port: 53,
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            host_hosts: PathBuf::from("/etc/hosts"),
        })
    }

    /// The alias that marks this node's bridges.
    fn mark(&self) -> String {
        format!("berth:{}", self.node)
    }
}

/// Where events go (the bus in production, a recorder in tests).
pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Default)]
struct State {
    networks: BTreeMap<String, NetworkRecord>,
    sandboxes: BTreeMap<String, SandboxRecord>,
    reservations: HashMap<String, Vec<Reservation>>,
}

impl State {
    fn find_network(&self, key: &str) -> Result<&NetworkRecord, BusError> {
        if let Some(n) = self.networks.get(key) {
            return Ok(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.name == key) {
            return Ok(n);
        }
        let m: Vec<&NetworkRecord> = if key.is_empty() {
            vec![]
        } else {
            self.networks
                .values()
                .filter(|n| n.id.starts_with(key))
                .collect()
        };
        match m.len() {
            0 => Err(BusError::not_found(format!("network {key} not found"))),
            1 => Ok(m[0]),
            n => Err(BusError::invalid(format!(
                "network {key} is ambiguous ({n} matches found based on ID prefix)"
            ))),
        }
    }

    fn find_sandbox(&self, key: &str) -> Option<&SandboxRecord> {
        self.sandboxes.get(key).or_else(|| {
            let key = key.trim_start_matches('/');
            self.sandboxes.values().find(|s| s.name == key).or_else(|| {
                let m: Vec<_> = self
                    .sandboxes
                    .values()
                    .filter(|s| s.container_id.starts_with(key))
                    .collect();
                if m.len() == 1 && !key.is_empty() {
                    Some(m[0])
                } else {
                    None
                }
            })
        })
    }

    fn endpoints_on<'a>(
        &'a self,
        net_id: &'a str,
    ) -> impl Iterator<Item = (&'a SandboxRecord, &'a EndpointRecord)> + 'a {
        self.sandboxes.values().flat_map(move |s| {
            s.endpoints
                .iter()
                .filter(move |e| e.network_id == net_id)
                .map(move |e| (s, e))
        })
    }

    fn used_ips(&self, net: &NetworkRecord) -> BTreeSet<Ipv4Addr> {
        let mut u: BTreeSet<Ipv4Addr> = net.aux.values().copied().collect();
        u.extend(net.gateway);
        u.extend(self.endpoints_on(&net.id).filter_map(|(_, e)| e.ip));
        u
    }

    fn port_taken(&self, proto: ports::Proto, ip: Ipv4Addr, port: u16) -> bool {
        self.sandboxes
            .values()
            .flat_map(|s| s.ports.iter())
            .any(|m| {
                m.proto == proto
                    && m.host_port == port
                    && (m.host_ip == ip || m.host_ip.is_unspecified() || ip.is_unspecified())
            })
    }

    fn default_gateway(&self) -> Option<Ipv4Addr> {
        self.networks
            .values()
            .find(|n| n.default_bridge)
            .and_then(|n| n.gateway)
    }
}

/// The network service.
pub struct NetworkService {
    cfg: Config,
    store: Store,
    nl: Netlink,
    dns: Dns,
    table: String,
    events: Events,
    state: tokio::sync::Mutex<State>,
    /// The bridges iptables' FORWARD chain last got accept rules for.
    forward_synced: tokio::sync::Mutex<Option<Vec<String>>>,
}

fn internal(e: impl std::fmt::Display) -> BusError {
    BusError::internal(e.to_string())
}

impl NetworkService {
    /// Load the records, reconcile the kernel with them, create the predefined
    /// networks, and start the DNS servers.
    pub async fn start(cfg: Config, events: Events) -> Result<Arc<NetworkService>, BusError> {
        let store = Store::open(&cfg.dir)?;
        netns::prepare_dir(&store.netns_dir())?;
        let nl = Netlink::host()?;
        let host_rc =
            ResolvConf::parse(&std::fs::read_to_string(&cfg.host_resolv_conf).unwrap_or_default());
        let dns = Dns::new(dns::forwarders(
            if cfg.dns.is_empty() {
                &host_rc.nameservers
            } else {
                &cfg.dns
            },
            &[],
        ));
        let table = firewall::table_name(&cfg.node);
        let svc = Arc::new(NetworkService {
            cfg,
            store,
            nl,
            dns,
            table,
            events,
            state: Default::default(),
            forward_synced: Default::default(),
        });
        svc.reconcile().await?;
        Ok(svc)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    /// The firewall table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn event(&self, action: Action, net: &NetworkRecord, container: Option<&str>) {
        let mut e = Event::now(EventType::Network, action, net.id.clone())
            .attr("name", net.name.clone())
            .attr("type", net.driver.clone());
        if let Some(c) = container {
            e = e.attr("container", c);
        }
        (self.events)(e);
    }

    async fn reconcile(&self) -> Result<(), BusError> {
        let mut st = self.state.lock().await;
        if self.cfg.ip_forward {
            if let Err(e) = link::sysctl("net/ipv4/ip_forward", "1") {
                tracing::warn!(error = %e, "cannot enable IPv4 forwarding");
            }
        }
        for n in self.store.load_networks() {
            st.networks.insert(n.id.clone(), n);
        }
        self.ensure_predefined(&mut st).await?;

        // Sandboxes whose namespace is gone (reboot, or removed behind our back) are dropped.
        let mut dropped = Vec::new();
        for s in self.store.load_sandboxes() {
            let alive = if s.owns_netns {
                netns::is_pinned(Path::new(&s.key))
            } else {
                true
            };
            if alive {
                st.sandboxes.insert(s.container_id.clone(), s);
            } else {
                dropped.push(s);
            }
        }
        let joined_gone: Vec<String> = st
            .sandboxes
            .values()
            .filter(|s| {
                s.joined
                    .as_ref()
                    .is_some_and(|j| !st.sandboxes.contains_key(j))
            })
            .map(|s| s.container_id.clone())
            .collect();
        for id in joined_gone {
            if let Some(s) = st.sandboxes.remove(&id) {
                dropped.push(s);
            }
        }
        for s in &dropped {
            tracing::info!(container = %s.container_id, "dropping the sandbox of a namespace that is gone");
            self.teardown(&mut st, s).await;
            let _ = self.store.delete_sandbox(&s.container_id);
        }

        // Bridges: ours exist with their addresses; links we do not know go.
        let mut bridge_idx: BTreeMap<u32, String> = BTreeMap::new();
        let nets: Vec<NetworkRecord> = st
            .networks
            .values()
            .filter(|n| n.is_bridge())
            .cloned()
            .collect();
        for n in &nets {
            match self.ensure_bridge(n).await {
                Ok(i) => {
                    bridge_idx.insert(i, n.id.clone());
                }
                Err(e) => tracing::warn!(network = %n.name, error = %e, "cannot set up bridge"),
            }
        }
        let known_veths: BTreeSet<String> = st
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| e.host_veth.clone()))
            .collect();
        let known_bridges: BTreeSet<String> = nets.iter().map(|n| n.bridge.clone()).collect();
        if let Ok(links) = self.nl.links().await {
            for l in links {
                let ours_bridge = l.alias.as_deref() == Some(self.cfg.mark().as_str());
                if ours_bridge && !known_bridges.contains(&l.name) {
                    tracing::info!(link = %l.name, "removing a bridge no network records");
                    let _ = self.nl.delete(&l.name).await;
                } else if l.master.is_some_and(|m| bridge_idx.contains_key(&m))
                    && !known_veths.contains(&l.name)
                {
                    tracing::info!(link = %l.name, "removing a veth no sandbox records");
                    let _ = self.nl.delete(&l.name).await;
                }
            }
        }
        // Namespace files no record knows.
        let known_ns: BTreeSet<PathBuf> = st
            .sandboxes
            .values()
            .filter(|s| s.owns_netns)
            .map(|s| PathBuf::from(&s.key))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.store.netns_dir()) {
            for e in rd.flatten() {
                if !known_ns.contains(&e.path()) {
                    let _ = netns::remove(&e.path());
                }
            }
        }
        // Host ports held again.
        let sbs: Vec<SandboxRecord> = st.sandboxes.values().cloned().collect();
        for s in &sbs {
            let mut rs = Vec::new();
            for m in &s.ports {
                match ports::rebind(*m) {
                    Ok(r) => rs.push(r),
                    Err(e) => {
                        tracing::warn!(port = m.host_port, error = %e, "cannot hold published port again")
                    }
                }
            }
            st.reservations.insert(s.container_id.clone(), rs);
        }
        for s in &sbs {
            self.dns_register(&st, s);
        }
        self.apply_firewall(&st).await?;
        for n in st.networks.values().filter(|n| n.has_dns()) {
            self.dns.set_network(&n.id, &n.name, n.internal);
            if let Some(gw) = n.gateway {
                if let Err(e) = self.dns.start(&n.id, gw, self.cfg.dns_port).await {
                    tracing::warn!(network = %n.name, error = %e, "cannot start the embedded DNS");
                }
            }
        }
        Ok(())
    }

    /// `bridge`, `host` and `none` exist from the start.
    async fn ensure_predefined(&self, st: &mut State) -> Result<(), BusError> {
        for (name, driver) in [("host", DRIVER_HOST), ("none", DRIVER_NULL)] {
            if !st
                .networks
                .values()
                .any(|n| n.name == name && n.driver == driver)
            {
                let n = NetworkRecord {
                    id: store::new_id(),
                    name: name.into(),
                    driver: driver.into(),
                    created: store::now_rfc3339(),
                    internal: false,
                    attachable: false,
                    options: BTreeMap::new(),
                    labels: BTreeMap::new(),
                    ipam_options: BTreeMap::new(),
                    subnet: None,
                    gateway: None,
                    ip_range: None,
                    aux: BTreeMap::new(),
                    user_ipam: false,
                    bridge: String::new(),
                    default_bridge: false,
                    masquerade: false,
                    icc: true,
                    mtu: 0,
                    host_ip: Ipv4Addr::UNSPECIFIED,
                    last_ip: None,
                };
                self.store.save_network(&n)?;
                st.networks.insert(n.id.clone(), n);
            }
        }
        let existing = st.networks.values().find(|n| n.default_bridge).cloned();
        let Some(dev) = self.cfg.bridge.clone() else {
            // `"bridge": "none"`: no default bridge network.
            if let Some(n) = existing {
                if st.endpoints_on(&n.id).next().is_none() {
                    let _ = self.nl.delete(&n.bridge).await;
                    st.networks.remove(&n.id);
                    self.store.delete_network(&n.id)?;
                }
            }
            return Ok(());
        };
        let in_use = existing
            .as_ref()
            .is_some_and(|n| st.endpoints_on(&n.id).next().is_some());
        let mut n = existing.clone().unwrap_or_else(|| NetworkRecord {
            id: store::new_id(),
            name: "bridge".into(),
            driver: DRIVER_BRIDGE.into(),
            created: store::now_rfc3339(),
            internal: false,
            attachable: false,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            ipam_options: BTreeMap::new(),
            subnet: None,
            gateway: None,
            ip_range: None,
            aux: BTreeMap::new(),
            user_ipam: false,
            bridge: dev.clone(),
            default_bridge: true,
            masquerade: true,
            icc: true,
            mtu: 0,
            host_ip: Ipv4Addr::UNSPECIFIED,
            last_ip: None,
        });
        if !in_use {
            if n.bridge != dev {
                let _ = self.nl.delete(&n.bridge).await;
                n.bridge = dev.clone();
            }
            let _lock = HostLock::take();
            let others: Vec<Ipv4Net> = st
                .networks
                .values()
                .filter(|o| o.id != n.id)
                .filter_map(|o| o.subnet)
                .collect();
            match self.cfg.bip {
                Some((gw, prefix)) => {
                    let sub = Ipv4Net::new(gw, prefix).map_err(internal)?.trunc();
                    n.subnet = Some(sub);
                    n.gateway = Some(gw);
                }
                None => {
                    // keep the recorded subnet unless someone else routes it now
                    let ours_up = self.nl.link(&dev).await.ok().flatten().is_some();
                    let routed = ipam::host_routes();
                    let keep = n
                        .subnet
                        .is_some_and(|s| ours_up || !routed.iter().any(|r| ipam::overlaps(r, &s)));
                    if !keep {
                        let s = ipam::pick_subnet(&self.cfg.pools, &others, &routed)
                            .map_err(|e| BusError::internal(e.to_string()))?;
                        n.subnet = Some(s);
                        n.gateway = Some(ipam::first_host(&s));
                    }
                }
            }
            n.ip_range = self.cfg.fixed_cidr;
            n.masquerade = self.cfg.ip_masq;
            n.icc = self.cfg.icc;
            n.mtu = self.cfg.mtu;
            n.host_ip = self.cfg.default_host_ip;
            n.options = BTreeMap::from([
                (OPT_DEFAULT_BRIDGE.to_string(), "true".to_string()),
                (OPT_ICC.to_string(), self.cfg.icc.to_string()),
                (OPT_MASQ.to_string(), self.cfg.ip_masq.to_string()),
                (
                    OPT_HOST_IP.to_string(),
                    self.cfg.default_host_ip.to_string(),
                ),
                (OPT_BRIDGE_NAME.to_string(), dev.clone()),
                (OPT_MTU.to_string(), self.cfg.mtu.to_string()),
            ]);
            // the address goes on the bridge while the lock is held, so another
            // node picking at the same time sees the route
            self.ensure_bridge(&n).await.map_err(internal)?;
        }
        if existing.as_ref() != Some(&n) {
            self.store.save_network(&n)?;
        }
        st.networks.insert(n.id.clone(), n);
        Ok(())
    }

    async fn ensure_bridge(&self, n: &NetworkRecord) -> Result<u32, link::LinkError> {
        let (Some(sub), Some(gw)) = (n.subnet, n.gateway) else {
            return Err(link::LinkError::Netlink(format!(
                "network {} has no subnet",
                n.name
            )));
        };
        let idx = self
            .nl
            .ensure_bridge(&n.bridge, gw, sub.prefix_len(), n.mtu)
            .await?;
        let _ = link::set_alias(&n.bridge, &self.cfg.mark());
        // 127.0.0.1 -> published port: the DNATed packet leaves with a loopback source
        let _ = link::sysctl(&format!("net/ipv4/conf/{}/route_localnet", n.bridge), "1");
        Ok(idx)
    }

    async fn apply_firewall(&self, st: &State) -> Result<(), BusError> {
        if !self.cfg.firewall {
            return Ok(());
        }
        let nets: Vec<FwNetwork> = st
            .networks
            .values()
            .filter(|n| n.is_bridge())
            .filter_map(|n| {
                Some(FwNetwork {
                    bridge: n.bridge.clone(),
                    subnet: n.subnet?,
                    internal: n.internal,
                    masquerade: n.masquerade,
                    icc: n.icc,
                })
            })
            .collect();
        let mut fports = Vec::new();
        for s in st.sandboxes.values() {
            let Some(net) = &s.ports_network else {
                continue;
            };
            let Some(ip) = s
                .endpoints
                .iter()
                .find(|e| &e.network_id == net)
                .and_then(|e| e.ip)
            else {
                continue;
            };
            for m in &s.ports {
                fports.push(FwPort {
                    proto: m.proto,
                    host_ip: m.host_ip,
                    host_port: m.host_port,
                    container_ip: ip,
                    container_port: m.container_port,
                });
            }
        }
        firewall::apply(&firewall::render(&self.table, &nets, &fports))
            .await
            .map_err(internal)?;
        let mut bridges: Vec<String> = nets.iter().map(|n| n.bridge.clone()).collect();
        bridges.sort();
        self.sync_forward(bridges).await;
        Ok(())
    }

    /// iptables' FORWARD accept rules for these bridges (only when the set changed).
    async fn sync_forward(&self, bridges: Vec<String>) {
        let mut last = self.forward_synced.lock().await;
        if last.as_ref() == Some(&bridges) {
            return;
        }
        match firewall::sync_forward(&self.table, &bridges).await {
            Ok(()) => *last = Some(bridges),
            Err(e) => tracing::warn!(error = %e, "cannot add berth's accept rules to iptables' FORWARD chain"),
        }
    }

    /// Remove everything the node put in the kernel when nothing uses it any more
    /// (graceful stop with no sandbox left): firewall table, bridges, DNS servers.
    /// The records stay; the next start recreates the kernel state from them.
    pub async fn shutdown(&self) {
        let st = self.state.lock().await;
        for n in st.networks.values() {
            self.dns.stop(&n.id);
        }
        if !st.sandboxes.is_empty() {
            return;
        }
        if self.cfg.firewall {
            let _ = firewall::apply(&firewall::delete_script(&self.table)).await;
            self.sync_forward(Vec::new()).await;
        }
        for n in st.networks.values().filter(|n| n.is_bridge()) {
            let _ = self.nl.delete(&n.bridge).await;
        }
    }

    // ---- inspection -------------------------------------------------------

    fn inspect_of(
        &self,
        st: &State,
        n: &NetworkRecord,
        with_containers: bool,
    ) -> docker::NetworkInspect {
        let mut cfgs = Vec::new();
        if let Some(sub) = n.subnet {
            cfgs.push(docker::IpamConfig {
                subnet: Some(sub.to_string()),
                ip_range: n.ip_range.map(|r| r.to_string()),
                gateway: n.gateway.map(|g| g.to_string()),
                auxiliary_addresses: if n.aux.is_empty() {
                    None
                } else {
                    Some(
                        n.aux
                            .iter()
                            .map(|(k, v)| (k.clone(), v.to_string()))
                            .collect(),
                    )
                },
            });
        }
        let mut containers = HashMap::new();
        if with_containers {
            for (s, e) in st.endpoints_on(&n.id) {
                containers.insert(
                    s.container_id.clone(),
                    docker::EndpointResource {
                        name: Some(s.name.clone()),
                        endpoint_id: Some(e.endpoint_id.clone()),
                        mac_address: Some(e.mac.clone()),
                        ipv4_address: Some(
                            e.ip.map(|ip| format!("{ip}/{}", e.prefix))
                                .unwrap_or_default(),
                        ),
                        ipv6_address: Some(String::new()),
                    },
                );
            }
        }
        docker::NetworkInspect {
            name: Some(n.name.clone()),
            id: Some(n.id.clone()),
            created: Some(n.created.clone()),
            scope: Some("local".into()),
            driver: Some(n.driver.clone()),
            enable_ipv4: Some(true),
            enable_ipv6: Some(false),
            ipam: Some(docker::Ipam {
                driver: Some("default".into()),
                config: Some(cfgs),
                options: if n.is_bridge() {
                    Some(n.ipam_options.clone().into_iter().collect())
                } else {
                    None
                },
            }),
            internal: Some(n.internal),
            attachable: Some(n.attachable),
            ingress: Some(false),
            config_from: Some(docker::ConfigReference {
                network: Some(String::new()),
            }),
            config_only: Some(false),
            options: Some(n.options.clone().into_iter().collect()),
            labels: Some(n.labels.clone().into_iter().collect()),
            peers: None,
            containers: Some(containers),
            services: None,
            status: None,
        }
    }

    fn endpoint_settings(&self, st: &State, e: &EndpointRecord) -> docker::EndpointSettings {
        let n = st.networks.get(&e.network_id);
        docker::EndpointSettings {
            ipam_config: e
                .requested_ip
                .as_ref()
                .map(|ip| docker::EndpointIpamConfig {
                    ipv4_address: Some(ip.clone()),
                    ..Default::default()
                }),
            links: if e.links.is_empty() {
                None
            } else {
                Some(e.links.clone())
            },
            mac_address: Some(e.mac.clone()),
            aliases: if e.aliases.is_empty() {
                None
            } else {
                Some(e.aliases.clone())
            },
            driver_opts: if e.driver_opts.is_empty() {
                None
            } else {
                Some(e.driver_opts.clone().into_iter().collect())
            },
            gw_priority: Some(e.gw_priority),
            network_id: Some(e.network_id.clone()),
            endpoint_id: Some(e.endpoint_id.clone()),
            gateway: Some(
                n.and_then(|n| n.gateway)
                    .filter(|_| e.ip.is_some())
                    .map(|g| g.to_string())
                    .unwrap_or_default(),
            ),
            ip_address: Some(e.ip.map(|i| i.to_string()).unwrap_or_default()),
            ip_prefix_len: Some(e.prefix as i64),
            ipv6_gateway: Some(String::new()),
            global_ipv6_address: Some(String::new()),
            global_ipv6_prefix_len: Some(0),
            dns_names: if e.dns_names.is_empty() {
                None
            } else {
                Some(e.dns_names.clone())
            },
        }
    }

    fn sandbox_reply(&self, st: &State, s: &SandboxRecord) -> Sandbox {
        let mut networks = HashMap::new();
        for e in &s.endpoints {
            if let Some(n) = st.networks.get(&e.network_id) {
                networks.insert(n.name.clone(), self.endpoint_settings(st, e));
            }
        }
        Sandbox {
            key: s.key.clone(),
            networks,
            ports: ports::port_map(&s.all_ports, &s.ports),
            resolv_conf: s.resolv_conf.clone(),
            hosts: s.hosts.clone(),
        }
    }

    // ---- sandboxes --------------------------------------------------------

    fn overrides(&self, r_dns: &[String], r_search: &[String], r_opts: &[String]) -> DnsOverrides {
        DnsOverrides {
            dns: if r_dns.is_empty() {
                self.cfg.dns.clone()
            } else {
                r_dns.to_vec()
            },
            search: if r_search.is_empty() {
                self.cfg.dns_search.clone()
            } else {
                r_search.to_vec()
            },
            options: if r_opts.is_empty() {
                self.cfg.dns_opts.clone()
            } else {
                r_opts.to_vec()
            },
        }
    }

    fn dns_register(&self, st: &State, s: &SandboxRecord) {
        let entries: Vec<DnsEntry> = s
            .endpoints
            .iter()
            .filter(|e| st.networks.get(&e.network_id).is_some_and(|n| n.has_dns()))
            .filter_map(|e| {
                Some(DnsEntry {
                    network_id: e.network_id.clone(),
                    ip: e.ip?,
                    names: e.dns_names.clone(),
                })
            })
            .collect();
        let fwd = dns::forwarders(&s.dns, &[]);
        self.dns.set_sandbox(&s.container_id, entries, fwd);
    }

    /// Undo what a sandbox record holds in the kernel and in memory (not the record file).
    async fn teardown(&self, st: &mut State, s: &SandboxRecord) {
        self.dns.remove_sandbox(&s.container_id);
        st.reservations.remove(&s.container_id);
        // A namespace that goes with the sandbox takes its veths with it: the kernel
        // deletes both ends as it cleans the namespace up, in the background. An
        // explicit delete would hold the request (and the thread: netlink requests
        // run inside sendmsg) ~20 ms for RCU. A veth still there a second later
        // (something else pins the namespace) is deleted then, on a blocking thread.
        // A namespace another sandbox joined lives on: its veths go before the answer.
        let netns_goes = s.owns_netns
            && !st
                .sandboxes
                .values()
                .any(|o| o.joined.as_deref() == Some(s.container_id.as_str()));
        let veths: Vec<String> = s
            .endpoints
            .iter()
            .filter(|e| !e.host_veth.is_empty())
            .map(|e| e.host_veth.clone())
            .collect();
        if netns_goes {
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let left: Vec<String> = veths
                    .into_iter()
                    .filter(|v| Path::new("/sys/class/net").join(v).exists())
                    .collect();
                if !left.is_empty() {
                    let _ = tokio::task::spawn_blocking(move || delete_links_blocking(&left)).await;
                }
            });
        } else {
            for v in veths {
                if let Err(err) = self.nl.delete(&v).await {
                    tracing::warn!(link = %v, error = %err, "cannot delete veth");
                }
            }
        }
        if s.owns_netns {
            if let Err(err) = netns::remove(Path::new(&s.key)) {
                tracing::warn!(path = %s.key, error = %err, "cannot remove network namespace");
            }
        }
    }

    fn host_files(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.cfg.host_resolv_conf).unwrap_or_default(),
            std::fs::read_to_string(&self.cfg.host_hosts).unwrap_or_default(),
        )
    }

    fn extra_hosts(
        &self,
        st: &State,
        extra: &[String],
        first_gw: Option<Ipv4Addr>,
    ) -> Result<Vec<String>, BusError> {
        let hg = st.default_gateway().or(first_gw);
        extra
            .iter()
            .map(|e| files::extra_host_line(e, hg).map_err(BusError::invalid))
            .collect()
    }

    /// One endpoint: address, veth into the namespace, address and route inside.
    /// The record is pushed before the kernel work so that a rollback finds the veth.
    #[allow(clippy::too_many_arguments)]
    async fn attach(
        &self,
        st: &mut State,
        rec: &mut SandboxRecord,
        net_id: &str,
        settings: &docker::EndpointSettings,
        inner: &Netlink,
        nsfile: &std::fs::File,
        ifname: &str,
        want_gw: bool,
    ) -> Result<(), BusError> {
        let net = st
            .networks
            .get(net_id)
            .cloned()
            .ok_or_else(|| BusError::not_found(format!("network {net_id} not found")))?;
        let sub = net
            .subnet
            .ok_or_else(|| BusError::internal(format!("network {} has no subnet", net.name)))?;
        let mut used = st.used_ips(&net);
        used.extend(
            rec.endpoints
                .iter()
                .filter(|e| e.network_id == net.id)
                .filter_map(|e| e.ip),
        );
        let requested = settings
            .ipam_config
            .as_ref()
            .and_then(|c| c.ipv4_address.clone())
            .filter(|s| !s.is_empty());
        let ip = match &requested {
            Some(s) => {
                if net.default_bridge {
                    return Err(BusError::invalid(
                        "user specified IP address is supported on user defined networks only",
                    ));
                }
                if !net.user_ipam {
                    return Err(BusError::invalid(
                        "user specified IP address is supported only when connecting to networks with user configured subnets",
                    ));
                }
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| BusError::invalid(format!("invalid IPv4 address: {s}")))?;
                ipam::check_addr(&sub, ip, &used).map_err(|e| match e {
                    ipam::IpamError::AddressInUse => BusError::forbidden("Address already in use"),
                    other => BusError::invalid(other.to_string()),
                })?;
                ip
            }
            None => {
                let ip = ipam::alloc_addr(&sub, net.ip_range.as_ref(), &used, net.last_ip)
                    .map_err(|e| BusError::unavailable(e.to_string()))?;
                // remembered in memory only: after a restart allocation starts over
                if let Some(n) = st.networks.get_mut(&net.id) {
                    n.last_ip = Some(ip);
                }
                ip
            }
        };
        let mac = settings
            .mac_address
            .as_deref()
            .filter(|m| !m.is_empty())
            .and_then(link::parse_mac)
            .unwrap_or_else(|| link::mac_for(ip));
        let veth = link::veth_name();
        let idx = match self.nl.link(&net.bridge).await.map_err(internal)? {
            Some(l) => l.index,
            None => self.ensure_bridge(&net).await.map_err(internal)?,
        };
        let mut dns_names = Vec::new();
        let aliases: Vec<String> = settings.aliases.clone().unwrap_or_default();
        if net.has_dns() {
            let short = &rec.container_id[..rec.container_id.len().min(12)];
            for n in std::iter::once(&rec.name)
                .chain(aliases.iter())
                .map(|s| s.as_str())
                .chain([short, rec.hostname.as_str()])
            {
                if !n.is_empty() && !dns_names.iter().any(|x: &String| x == n) {
                    dns_names.push(n.to_string());
                }
            }
        }
        self.nl
            .add_veth(&veth, idx, net.mtu, ifname, mac, nsfile)
            .await
            .map_err(internal)?;
        rec.endpoints.push(EndpointRecord {
            network_id: net.id.clone(),
            endpoint_id: store::new_id(),
            ifname: ifname.to_string(),
            host_veth: veth,
            mac: link::mac_string(&mac),
            ip: Some(ip),
            prefix: sub.prefix_len(),
            gateway: if want_gw { net.gateway } else { None },
            aliases,
            dns_names,
            links: settings.links.clone().unwrap_or_default(),
            driver_opts: settings
                .driver_opts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            gw_priority: settings.gw_priority.unwrap_or(0),
            requested_ip: requested,
        });
        inner
            .configure(
                ifname,
                ip,
                sub.prefix_len(),
                if want_gw { net.gateway } else { None },
                false,
            )
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn create_sandbox(&self, st: &mut State, r: SandboxCreate) -> Result<Sandbox, BusError> {
        let cid = r.container_id.clone();
        if cid.is_empty() || cid.contains('/') || cid.contains("..") {
            return Err(BusError::invalid(format!("invalid container id {cid:?}")));
        }
        // A sandbox left from an earlier start is replaced.
        if let Some(old) = st.sandboxes.remove(&cid) {
            self.teardown(st, &old).await;
            let _ = self.store.delete_sandbox(&cid);
        }
        let mode = match r.network_mode.trim() {
            "" | "default" => "bridge".to_string(),
            m => m.to_string(),
        };
        let o = self.overrides(&r.dns, &r.dns_search, &r.dns_options);
        let mut rec = SandboxRecord {
            container_id: cid.clone(),
            name: r.name.trim_start_matches('/').to_string(),
            hostname: r.hostname.clone(),
            domainname: r.domainname.clone(),
            mode: mode.clone(),
            key: String::new(),
            owns_netns: false,
            joined: None,
            endpoints: vec![],
            ports: vec![],
            ports_network: None,
            all_ports: vec![],
            dns: o.dns.clone(),
            dns_search: o.search.clone(),
            dns_options: o.options.clone(),
            extra_hosts: r.extra_hosts.clone(),
            resolv_conf: String::new(),
            hosts: String::new(),
        };

        // Which kind of sandbox: host, none, another container's, or networks.
        let mut kind = mode.clone();
        let mut first_net: Option<String> = None;
        if let Some(target) = mode.strip_prefix("container:") {
            kind = "container".into();
            let t = st
                .find_sandbox(target)
                .filter(|t| !t.key.is_empty() || t.mode == "host")
                .ok_or_else(|| {
                    BusError::conflict(format!(
                        "cannot join network of a non running container: {target}"
                    ))
                })?
                .clone();
            rec.key = t.key.clone();
            rec.joined = Some(t.container_id.clone());
            rec.resolv_conf = t.resolv_conf.clone();
            rec.hosts = t.hosts.clone();
        } else if mode == bus_schema::network::MODE_DETACHED {
            // a container disconnected from its mode's network: a namespace of its
            // own with only lo, which `network connect` can still join to networks
            kind = "none".into();
        } else if mode != "host" && mode != "none" {
            let n = st.find_network(&mode)?.clone();
            match n.driver.as_str() {
                DRIVER_HOST => kind = "host".into(),
                DRIVER_NULL => kind = "none".into(),
                _ => {
                    kind = "bridge".into();
                    first_net = Some(n.id.clone());
                }
            }
        }

        match kind.as_str() {
            "host" => {
                let n = st.find_network("host")?.clone();
                rec.endpoints.push(empty_endpoint(&n.id));
                let (rc, hosts) = self.host_files();
                rec.resolv_conf = files::resolv_conf_host(&rc, &o);
                let extra = self.extra_hosts(st, &r.extra_hosts, None)?;
                rec.hosts = files::hosts_host(&hosts, &extra);
                let (_, all) = ports::plan(
                    &HashMap::new(),
                    false,
                    &r.exposed_ports,
                    Ipv4Addr::UNSPECIFIED,
                )
                .map_err(port_err)?;
                rec.all_ports = all;
            }
            "container" => {}
            "none" => {
                let n = st.find_network("none")?.clone();
                let extra = self.extra_hosts(st, &r.extra_hosts, None)?;
                let path = self.store.netns_path(&cid);
                let sock = netns::create(path.clone()).await?;
                rec.key = path.display().to_string();
                rec.owns_netns = true;
                let res = async {
                    Netlink::from_fd(sock)?.lo_up().await.map_err(internal)?;
                    Ok::<(), BusError>(())
                }
                .await;
                if let Err(e) = res {
                    self.teardown(st, &rec).await;
                    return Err(e);
                }
                if mode != bus_schema::network::MODE_DETACHED {
                    rec.endpoints.push(empty_endpoint(&n.id));
                }
                let (rc, _) = self.host_files();
                rec.resolv_conf = files::resolv_conf_legacy(&ResolvConf::parse(&rc), &o);
                rec.hosts = files::hosts(None, &r.hostname, &r.domainname, &extra);
            }
            _ => {
                let first = first_net.expect("bridge mode has a network");
                // the mode's network first (it gets eth0), then the others asked for
                let mut wanted: Vec<(String, docker::EndpointSettings)> = Vec::new();
                let mut first_settings = docker::EndpointSettings::default();
                for e in &r.endpoints {
                    let n = st.find_network(&e.network)?;
                    if n.id == first {
                        first_settings = e.settings.clone();
                    } else if !wanted.iter().any(|(id, _)| id == &n.id) {
                        if !n.is_bridge() {
                            return Err(BusError::forbidden(
                                "container cannot be disconnected from host network or connected to host network",
                            ));
                        }
                        wanted.push((n.id.clone(), e.settings.clone()));
                    }
                }
                wanted.insert(0, (first, first_settings));
                let extra_check = self.extra_hosts(st, &r.extra_hosts, None)?;
                drop(extra_check);

                let path = self.store.netns_path(&cid);
                let sock = netns::create(path.clone()).await?;
                rec.key = path.display().to_string();
                rec.owns_netns = true;
                let res = self
                    .build_endpoints(st, &mut rec, sock, &path, &wanted, &r)
                    .await;
                if let Err(e) = res {
                    self.teardown(st, &rec).await;
                    return Err(e);
                }
                // files
                let (rc, _) = self.host_files();
                let host_rc = ResolvConf::parse(&rc);
                let dns_net = rec
                    .endpoints
                    .iter()
                    .find(|e| st.networks.get(&e.network_id).is_some_and(|n| n.has_dns()))
                    .and_then(|e| st.networks.get(&e.network_id).and_then(|n| n.gateway));
                rec.resolv_conf = match dns_net {
                    Some(gw) => {
                        let ext = if o.dns.is_empty() {
                            host_rc.nameservers.clone()
                        } else {
                            o.dns.clone()
                        };
                        files::resolv_conf_embedded(gw, &host_rc, &o, &ext)
                    }
                    None => files::resolv_conf_legacy(&host_rc, &o),
                };
                let first_gw = rec
                    .endpoints
                    .first()
                    .and_then(|e| st.networks.get(&e.network_id))
                    .and_then(|n| n.gateway);
                let extra = self.extra_hosts(st, &r.extra_hosts, first_gw)?;
                rec.hosts = files::hosts(
                    rec.endpoints.first().and_then(|e| e.ip),
                    &r.hostname,
                    &r.domainname,
                    &extra,
                );
            }
        }

        let has_ports = !rec.ports.is_empty();
        let reservations = st.reservations.remove(&cid).unwrap_or_default();
        st.sandboxes.insert(cid.clone(), rec.clone());
        st.reservations.insert(cid.clone(), reservations);
        if has_ports {
            if let Err(e) = self.apply_firewall(st).await {
                st.sandboxes.remove(&cid);
                self.teardown(st, &rec).await;
                let _ = self.apply_firewall(st).await;
                return Err(e);
            }
        }
        self.dns_register(st, &rec);
        if let Err(e) = self.store.save_sandbox(&rec) {
            st.sandboxes.remove(&cid);
            self.teardown(st, &rec).await;
            if has_ports {
                let _ = self.apply_firewall(st).await;
            }
            return Err(e.into());
        }
        for e in &rec.endpoints {
            if let Some(n) = st.networks.get(&e.network_id) {
                self.event(Action::Connect, n, Some(&cid));
            }
        }
        Ok(self.sandbox_reply(st, &rec))
    }

    /// The endpoints of a bridge-mode sandbox and its published ports.
    async fn build_endpoints(
        &self,
        st: &mut State,
        rec: &mut SandboxRecord,
        sock: std::os::fd::OwnedFd,
        path: &Path,
        wanted: &[(String, docker::EndpointSettings)],
        r: &SandboxCreate,
    ) -> Result<(), BusError> {
        let inner = Netlink::from_fd(sock)?;
        let nsfile = std::fs::File::open(path)?;
        inner.lo_up().await.map_err(internal)?;
        let mut gw_net: Option<String> = None;
        for (i, (net_id, settings)) in wanted.iter().enumerate() {
            let internal_net = st.networks.get(net_id).is_some_and(|n| n.internal);
            let want_gw = gw_net.is_none() && !internal_net;
            self.attach(
                st,
                rec,
                net_id,
                settings,
                &inner,
                &nsfile,
                &format!("eth{i}"),
                want_gw,
            )
            .await?;
            if want_gw {
                gw_net = Some(net_id.clone());
            }
        }
        // Published ports go to the endpoint that has the default route.
        let host_ip = gw_net
            .as_ref()
            .and_then(|id| st.networks.get(id))
            .map(|n| n.host_ip)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let (specs, all) = ports::plan(&r.port_bindings, r.publish_all, &r.exposed_ports, host_ip)
            .map_err(port_err)?;
        rec.all_ports = all;
        if let Some(net) = gw_net {
            if !specs.is_empty() {
                let ep = rec
                    .endpoints
                    .iter()
                    .find(|e| e.network_id == net)
                    .map(|e| e.endpoint_id.clone())
                    .unwrap_or_default();
                let taken = |p, ip, port| st.port_taken(p, ip, port);
                let rs = ports::reserve_all(&specs, &taken).map_err(|e| {
                    BusError::internal(format!(
                        "driver failed programming external connectivity on endpoint {} ({ep}): {e}",
                        rec.name
                    ))
                })?;
                rec.ports = rs.iter().map(|r| r.mapping).collect();
                rec.ports_network = Some(net);
                st.reservations.insert(rec.container_id.clone(), rs);
            }
        }
        Ok(())
    }

    async fn remove_sandbox(&self, st: &mut State, cid: &str) -> Result<(), BusError> {
        let Some(rec) = st.sandboxes.remove(cid) else {
            // idempotent; a namespace file without record goes too
            let p = self.store.netns_path(cid);
            if !cid.is_empty() && !cid.contains('/') && p.exists() {
                let _ = netns::remove(&p);
            }
            let _ = self.store.delete_sandbox(cid);
            return Ok(());
        };
        self.teardown(st, &rec).await;
        if !rec.ports.is_empty() {
            self.apply_firewall(st).await?;
        }
        self.store.delete_sandbox(cid)?;
        for e in &rec.endpoints {
            if let Some(n) = st.networks.get(&e.network_id) {
                self.event(Action::Disconnect, n, Some(cid));
            }
        }
        Ok(())
    }

    // ---- networks ---------------------------------------------------------

    async fn create_network(
        &self,
        st: &mut State,
        body: docker::NetworkCreateRequest,
    ) -> Result<docker::NetworkCreateResponse, BusError> {
        let name = body.name.trim().to_string();
        if name.is_empty() {
            return Err(BusError::invalid("network name must not be empty"));
        }
        let driver = body
            .driver
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DRIVER_BRIDGE.into());
        if st.networks.values().any(|n| n.name == name) {
            return Err(BusError::conflict(format!(
                "network with name {name} already exists"
            )));
        }
        match driver.as_str() {
            DRIVER_BRIDGE => {}
            DRIVER_HOST | DRIVER_NULL => {
                return Err(BusError::forbidden(format!(
                    "only one instance of \"{driver}\" network is allowed"
                )))
            }
            other => return Err(BusError::not_found(format!("plugin \"{other}\" not found"))),
        }
        if body.enable_ipv6 == Some(true) {
            return Err(BusError::invalid(
                "berth networks are IPv4 only: IPv6 is not supported",
            ));
        }
        if body.enable_ipv4 == Some(false) {
            return Err(BusError::invalid("berth bridge networks need IPv4"));
        }
        if body.config_only == Some(true)
            || body
                .config_from
                .as_ref()
                .is_some_and(|c| c.network.as_deref().is_some_and(|n| !n.is_empty()))
        {
            return Err(BusError::not_implemented(
                "config-only networks are not supported",
            ));
        }
        if body.ingress == Some(true) {
            return Err(BusError::forbidden("ingress networks need swarm mode"));
        }
        let options: BTreeMap<String, String> = body
            .options
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let labels: BTreeMap<String, String> = body
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let ipam = body.ipam.clone().unwrap_or_default();
        if let Some(d) = ipam
            .driver
            .as_deref()
            .filter(|d| !d.is_empty() && *d != "default")
        {
            return Err(BusError::not_found(format!("plugin \"{d}\" not found")));
        }
        let bool_opt = |k: &str, default: bool| -> Result<bool, BusError> {
            match options.get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<bool>()
                    .map_err(|_| BusError::invalid(format!("invalid value {v:?} for option {k}"))),
            }
        };
        let masquerade = bool_opt(OPT_MASQ, true)?;
        let icc = bool_opt(OPT_ICC, true)?;
        let mtu: u32 = match options.get(OPT_MTU) {
            None => self.cfg.mtu,
            Some(v) => v
                .parse()
                .map_err(|_| BusError::invalid(format!("invalid MTU value {v:?}")))?,
        };
        let host_ip: Ipv4Addr = match options.get(OPT_HOST_IP) {
            None => self.cfg.default_host_ip,
            Some(v) => v
                .parse()
                .map_err(|_| BusError::invalid(format!("invalid host binding address {v:?}")))?,
        };
        let id = store::new_id();
        let bridge = options
            .get(OPT_BRIDGE_NAME)
            .cloned()
            .unwrap_or_else(|| format!("br-{}", &id[..12]));
        if bridge.is_empty()
            || bridge.len() > 15
            || bridge.contains('/')
            || bridge.contains(char::is_whitespace)
        {
            return Err(BusError::invalid(format!("invalid bridge name {bridge:?}")));
        }
        if st.networks.values().any(|n| n.bridge == bridge) {
            return Err(BusError::forbidden(format!(
                "bridge name {bridge} is already in use by another network"
            )));
        }

        // IPAM: one IPv4 config at most.
        let mut cfgs = ipam.config.clone().unwrap_or_default();
        cfgs.retain(|c| !c.subnet.as_deref().is_some_and(|s| s.contains(':')));
        if cfgs.len() > 1 {
            return Err(BusError::invalid("berth networks take one IPv4 subnet"));
        }
        let user = cfgs.pop().unwrap_or_default();
        let others: Vec<Ipv4Net> = st.networks.values().filter_map(|n| n.subnet).collect();
        let _lock = HostLock::take();
        let (subnet, user_ipam) = match user.subnet.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let sub = ipam::parse_net(s)
                    .map_err(|_| BusError::invalid(format!("invalid CIDR address: {s}")))?;
                if others.iter().any(|o| ipam::overlaps(o, &sub)) {
                    return Err(BusError::forbidden(
                        "Pool overlaps with other one on this address space",
                    ));
                }
                (sub, true)
            }
            None => {
                if user.ip_range.as_deref().is_some_and(|s| !s.is_empty())
                    || user.gateway.as_deref().is_some_and(|s| !s.is_empty())
                {
                    return Err(BusError::invalid(
                        "a subnet is required with --ip-range or --gateway",
                    ));
                }
                let s = ipam::pick_subnet(&self.cfg.pools, &others, &ipam::host_routes())
                    .map_err(|e| BusError::forbidden(e.to_string()))?;
                (s, false)
            }
        };
        let gateway = match user.gateway.as_deref().filter(|s| !s.is_empty()) {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| BusError::invalid(format!("invalid gateway address {g}")))?;
                if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                    return Err(BusError::invalid(format!(
                        "no matching subnet for gateway {g}"
                    )));
                }
                g
            }
            None => ipam::first_host(&subnet),
        };
        let ip_range = match user.ip_range.as_deref().filter(|s| !s.is_empty()) {
            Some(r) => {
                let r = ipam::parse_net(r)
                    .map_err(|_| BusError::invalid(format!("invalid CIDR address: {r}")))?;
                if !subnet.contains(&r.network()) || r.prefix_len() < subnet.prefix_len() {
                    return Err(BusError::invalid(format!(
                        "no matching subnet for range {r}"
                    )));
                }
                Some(r)
            }
            None => None,
        };
        let mut aux = BTreeMap::new();
        for (k, v) in user.auxiliary_addresses.clone().unwrap_or_default() {
            let a: Ipv4Addr = v
                .parse()
                .map_err(|_| BusError::invalid(format!("invalid auxiliary address {v}")))?;
            if !subnet.contains(&a) {
                return Err(BusError::invalid(format!(
                    "no matching subnet for aux-address {a}"
                )));
            }
            aux.insert(k, a);
        }
        let n = NetworkRecord {
            id: id.clone(),
            name,
            driver,
            created: store::now_rfc3339(),
            internal: body.internal.unwrap_or(false),
            attachable: body.attachable.unwrap_or(false),
            options,
            labels,
            ipam_options: ipam
                .options
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            subnet: Some(subnet),
            gateway: Some(gateway),
            ip_range,
            aux,
            user_ipam,
            bridge,
            default_bridge: false,
            masquerade,
            icc,
            mtu,
            host_ip,
            last_ip: None,
        };
        self.ensure_bridge(&n).await.map_err(internal)?;
        drop(_lock);
        if let Err(e) = self.store.save_network(&n) {
            let _ = self.nl.delete(&n.bridge).await;
            return Err(e.into());
        }
        st.networks.insert(id.clone(), n.clone());
        if let Err(e) = self.apply_firewall(st).await {
            st.networks.remove(&id);
            let _ = self.store.delete_network(&id);
            let _ = self.nl.delete(&n.bridge).await;
            return Err(e);
        }
        self.dns.set_network(&n.id, &n.name, n.internal);
        if let Err(e) = self.dns.start(&n.id, gateway, self.cfg.dns_port).await {
            tracing::warn!(network = %n.name, error = %e, "cannot start the embedded DNS");
        }
        self.event(Action::Create, &n, None);
        Ok(docker::NetworkCreateResponse {
            id,
            warning: String::new(),
        })
    }

    async fn remove_network(&self, st: &mut State, key: &str) -> Result<(), BusError> {
        let n = st.find_network(key)?.clone();
        if n.predefined() {
            return Err(BusError::forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                n.name
            )));
        }
        if st.endpoints_on(&n.id).next().is_some() {
            return Err(BusError::forbidden(format!(
                "error while removing network: network {} id {} has active endpoints",
                n.name, n.id
            )));
        }
        self.dns.remove_network(&n.id);
        st.networks.remove(&n.id);
        self.store.delete_network(&n.id)?;
        if let Err(e) = self.apply_firewall(st).await {
            tracing::warn!(error = %e, "firewall update after network removal failed");
        }
        if let Err(e) = self.nl.delete(&n.bridge).await {
            tracing::warn!(bridge = %n.bridge, error = %e, "cannot delete bridge");
        }
        self.event(Action::Destroy, &n, None);
        Ok(())
    }

    fn list_filtered(
        &self,
        st: &State,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<docker::NetworkInspect>, BusError> {
        for k in filters.keys() {
            if !["driver", "id", "label", "name", "scope", "type", "dangling"].contains(&k.as_str())
            {
                return Err(BusError::invalid(format!("invalid filter '{k}'")));
            }
        }
        if let Some(v) = filters.get("type") {
            for t in v {
                if t != "custom" && t != "builtin" {
                    return Err(BusError::invalid(format!("invalid filter: 'type'='{t}'")));
                }
            }
        }
        let dangling = match filters.get("dangling").and_then(|v| v.first()) {
            None => None,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => return Err(BusError::invalid(format!("invalid filter 'dangling={v}'"))),
            },
        };
        let mut out = Vec::new();
        let mut nets: Vec<&NetworkRecord> = st.networks.values().collect();
        nets.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        for n in nets {
            let any = |k: &str, f: &dyn Fn(&str) -> bool| {
                filters
                    .get(k)
                    .is_none_or(|v| v.is_empty() || v.iter().any(|x| f(x)))
            };
            if !any("driver", &|d| n.driver == d) {
                continue;
            }
            if !any("id", &|i| n.id.starts_with(i)) {
                continue;
            }
            if !any("name", &|x| n.name.contains(x)) {
                continue;
            }
            if !any("scope", &|s| s == "local") {
                continue;
            }
            if !any("type", &|t| (t == "builtin") == n.predefined()) {
                continue;
            }
            if let Some(ls) = filters.get("label") {
                if !ls.iter().all(|l| label_match(&n.labels, l)) {
                    continue;
                }
            }
            if let Some(d) = dangling {
                let used = st.endpoints_on(&n.id).next().is_some();
                let is_dangling = !used && !n.predefined();
                if d != is_dangling {
                    continue;
                }
            }
            out.push(self.inspect_of(st, n, false));
        }
        Ok(out)
    }
}

fn label_match(labels: &BTreeMap<String, String>, f: &str) -> bool {
    match f.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(f),
    }
}

fn empty_endpoint(net_id: &str) -> EndpointRecord {
    EndpointRecord {
        network_id: net_id.to_string(),
        endpoint_id: store::new_id(),
        ifname: String::new(),
        host_veth: String::new(),
        mac: String::new(),
        ip: None,
        prefix: 0,
        gateway: None,
        aliases: vec![],
        dns_names: vec![],
        links: vec![],
        driver_opts: BTreeMap::new(),
        gw_priority: 0,
        requested_ip: None,
    }
}

fn port_err(e: PortError) -> BusError {
    BusError::invalid(e.to_string())
}

/// A host-wide lock around choosing a subnet and putting it on a bridge, so that two
/// nodes starting at once on one host never pick the same subnet.
struct HostLock(Option<std::fs::File>);

impl HostLock {
    fn take() -> HostLock {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open("/run/berth-network-ipam.lock")
            .ok();
        if let Some(f) = &f {
            // SAFETY: flock on an fd we own.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        }
        HostLock(f)
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        if let Some(f) = &self.0 {
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

impl bus_schema::network::NetworkApi for NetworkService {
    async fn network_create(
        &self,
        r: NetworkCreate,
    ) -> Result<docker::NetworkCreateResponse, BusError> {
        let mut st = self.state.lock().await;
        self.create_network(&mut st, r.body).await
    }

    async fn network_inspect(&self, r: NetworkInspect) -> Result<docker::NetworkInspect, BusError> {
        let st = self.state.lock().await;
        let n = st.find_network(&r.id)?;
        Ok(self.inspect_of(&st, n, true))
    }

    async fn network_list(&self, r: NetworkList) -> Result<Vec<docker::NetworkInspect>, BusError> {
        let st = self.state.lock().await;
        self.list_filtered(&st, &r.filters)
    }

    async fn network_remove(&self, r: NetworkRemove) -> Result<(), BusError> {
        let mut st = self.state.lock().await;
        self.remove_network(&mut st, &r.id).await
    }

    async fn network_prune(
        &self,
        r: NetworkPrune,
    ) -> Result<docker::NetworkPruneResponse, BusError> {
        let mut st = self.state.lock().await;
        for k in r.filters.keys() {
            if !["until", "label", "label!"].contains(&k.as_str()) {
                return Err(BusError::invalid(format!("invalid filter '{k}'")));
            }
        }
        let until = match r.filters.get("until").and_then(|v| v.first()) {
            None => None,
            Some(u) => Some(
                parse_until(u)
                    .ok_or_else(|| BusError::invalid(format!("invalid filter 'until={u}'")))?,
            ),
        };
        let candidates: Vec<NetworkRecord> = st
            .networks
            .values()
            .filter(|n| !n.predefined())
            .filter(|n| st.endpoints_on(&n.id).next().is_none())
            .filter(|n| {
                r.filters
                    .get("label")
                    .is_none_or(|ls| ls.iter().all(|l| label_match(&n.labels, l)))
            })
            .filter(|n| {
                r.filters
                    .get("label!")
                    .is_none_or(|ls| ls.iter().all(|l| !label_match(&n.labels, l)))
            })
            .filter(|n| {
                until.is_none_or(|u| {
                    time::OffsetDateTime::parse(
                        &n.created,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map(|c| c.unix_timestamp() < u)
                    .unwrap_or(false)
                })
            })
            .cloned()
            .collect();
        let mut deleted = Vec::new();
        for n in candidates {
            match self.remove_network(&mut st, &n.id).await {
                Ok(()) => deleted.push(n.name.clone()),
                Err(e) => tracing::warn!(network = %n.name, error = %e, "prune: cannot remove"),
            }
        }
        Ok(docker::NetworkPruneResponse {
            networks_deleted: Some(deleted),
        })
    }

    async fn network_resolve(&self, r: NetworkResolve) -> Result<NetworkRef, BusError> {
        let st = self.state.lock().await;
        let n = st.find_network(&r.id)?;
        Ok(NetworkRef {
            id: n.id.clone(),
            name: n.name.clone(),
            driver: n.driver.clone(),
        })
    }

    async fn sandbox_create(&self, r: SandboxCreate) -> Result<Sandbox, BusError> {
        let mut st = self.state.lock().await;
        self.create_sandbox(&mut st, r).await
    }

    async fn sandbox_remove(&self, r: SandboxRemove) -> Result<(), BusError> {
        let mut st = self.state.lock().await;
        self.remove_sandbox(&mut st, &r.container_id).await
    }

    async fn sandbox_rename(&self, r: SandboxRename) -> Result<(), BusError> {
        let mut st = self.state.lock().await;
        let Some(mut rec) = st.sandboxes.get(&r.container_id).cloned() else {
            return Err(BusError::not_found(format!(
                "no sandbox for container {}",
                r.container_id
            )));
        };
        let new = r.name.trim_start_matches('/').to_string();
        for e in rec.endpoints.iter_mut() {
            for n in e.dns_names.iter_mut() {
                if *n == rec.name {
                    *n = new.clone();
                }
            }
        }
        rec.name = new;
        self.store.save_sandbox(&rec)?;
        st.sandboxes.insert(rec.container_id.clone(), rec.clone());
        self.dns_register(&st, &rec);
        Ok(())
    }

    async fn endpoint_create(
        &self,
        r: EndpointCreate,
    ) -> Result<docker::EndpointSettings, BusError> {
        let mut st = self.state.lock().await;
        let mut rec = st.sandboxes.get(&r.container_id).cloned().ok_or_else(|| {
            BusError::not_found(format!("no sandbox for container {}", r.container_id))
        })?;
        if !rec.owns_netns || rec.endpoints.iter().any(|e| e.ifname.is_empty()) {
            return Err(BusError::forbidden(
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        }
        let n = st.find_network(&r.endpoint.network)?.clone();
        if !n.is_bridge() {
            return Err(BusError::forbidden(
                "container cannot be disconnected from host network or connected to host network",
            ));
        }
        if rec.endpoints.iter().any(|e| e.network_id == n.id) {
            return Err(BusError::forbidden(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, n.name
            )));
        }
        let used: BTreeSet<String> = rec.endpoints.iter().map(|e| e.ifname.clone()).collect();
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|x| !used.contains(x))
            .unwrap();
        let want_gw = !n.internal && !rec.endpoints.iter().any(|e| e.gateway.is_some());
        let path = PathBuf::from(&rec.key);
        let sock = netns::netlink_in(path.clone()).await?;
        let inner = Netlink::from_fd(sock)?;
        let nsfile = std::fs::File::open(&path)?;
        let before = rec.endpoints.len();
        if let Err(e) = self
            .attach(
                &mut st,
                &mut rec,
                &n.id,
                &r.endpoint.settings,
                &inner,
                &nsfile,
                &ifname,
                want_gw,
            )
            .await
        {
            if rec.endpoints.len() > before {
                if let Some(ep) = rec.endpoints.pop() {
                    let _ = self.nl.delete(&ep.host_veth).await;
                }
            }
            return Err(e);
        }
        self.store.save_sandbox(&rec)?;
        st.sandboxes.insert(rec.container_id.clone(), rec.clone());
        self.dns_register(&st, &rec);
        self.event(Action::Connect, &n, Some(&rec.container_id));
        let ep = rec.endpoints.last().expect("attached");
        Ok(self.endpoint_settings(&st, ep))
    }

    async fn endpoint_remove(&self, r: EndpointRemove) -> Result<(), BusError> {
        let mut st = self.state.lock().await;
        let Some(mut rec) = st.sandboxes.get(&r.container_id).cloned() else {
            return Ok(());
        };
        let n = st.find_network(&r.network)?.clone();
        let Some(pos) = rec.endpoints.iter().position(|e| e.network_id == n.id) else {
            return Err(BusError::forbidden(format!(
                "container {} is not connected to network {}",
                rec.container_id, n.name
            )));
        };
        if rec.endpoints[pos].ifname.is_empty() {
            return Err(BusError::forbidden(
                "container cannot be disconnected from host network or connected to host network",
            ));
        }
        let ep = rec.endpoints.remove(pos);
        let _ = self.nl.delete(&ep.host_veth).await;
        let mut fw = false;
        if rec.ports_network.as_deref() == Some(n.id.as_str()) {
            // the ports went to this endpoint: they go with it
            rec.ports.clear();
            rec.ports_network = None;
            st.reservations.remove(&rec.container_id);
            fw = true;
        }
        st.sandboxes.insert(rec.container_id.clone(), rec.clone());
        if fw {
            self.apply_firewall(&st).await?;
        }
        self.store.save_sandbox(&rec)?;
        self.dns_register(&st, &rec);
        self.event(Action::Disconnect, &n, Some(&rec.container_id));
        Ok(())
    }
}

/// `until`: a Unix timestamp, an RFC 3339 time, or a Go duration (`24h`, `10m`) ago.
fn parse_until(s: &str) -> Option<i64> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Ok(t) = s.parse::<f64>() {
        return Some(t as i64);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "ms" => n / 1000.0,
        _ => return None,
    };
    Some(now - secs as i64)
}

/// Deletes host links from a blocking thread, over a connection of its own.
fn delete_links_blocking(names: &[String]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_forms() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(parse_until("1700000000"), Some(1_700_000_000));
        assert!((parse_until("1h").unwrap() - (now - 3600)).abs() < 5);
        assert_eq!(parse_until("2024-01-01T00:00:00Z"), Some(1_704_067_200));
        assert_eq!(parse_until("x"), None);
    }

    #[test]
    fn labels() {
        let l = BTreeMap::from([("a".to_string(), "b".to_string())]);
        assert!(label_match(&l, "a"));
        assert!(label_match(&l, "a=b"));
        assert!(!label_match(&l, "a=c"));
        assert!(!label_match(&l, "c"));
    }

    #[test]
    fn config_from_daemon_json() {
        let d = berth_config::DaemonConfig::parse(
            r#"{"bridge":"bx0","bip":"10.9.0.1/24","fixed-cidr":"10.9.0.128/25","icc":false,"ip":"127.0.0.1",
                "default-address-pools":[{"base":"10.10.0.0/16","size":24}],"mtu":1400,"iptables":false}"#,
            "t",
        )
        .unwrap();
        let c = Config::from_daemon(&d, Path::new("/r"), "n1").unwrap();
        assert_eq!(c.bridge.as_deref(), Some("bx0"));
        assert_eq!(c.bip, Some((Ipv4Addr::new(10, 9, 0, 1), 24)));
        assert_eq!(c.fixed_cidr, Some("10.9.0.128/25".parse().unwrap()));
        assert!(!c.icc);
        assert!(!c.firewall);
        assert_eq!(c.mtu, 1400);
        assert_eq!(c.default_host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(c.dir, PathBuf::from("/r/network"));
        let none = berth_config::DaemonConfig::parse(r#"{"bridge":"none"}"#, "t").unwrap();
        assert_eq!(
            Config::from_daemon(&none, Path::new("/r"), "n")
                .unwrap()
                .bridge,
            None
        );
        let dflt = berth_config::DaemonConfig::default();
        assert_eq!(
            Config::from_daemon(&dflt, Path::new("/r"), "n")
                .unwrap()
                .bridge
                .as_deref(),
            Some("berth0")
        );
    }
}
