//! The network service: its parts, how it starts, and [`NetworkApi`] over them.
//!
//! The logic is split by concern, each an `impl NetworkService` block of its own:
//! `networks` (create, remove, prune, the predefined networks and their bridges),
//! `sandboxes` (namespaces, endpoints, ports, DNS names, connect/disconnect),
//! `reconcile` (the kernel against the records at start, the firewall, shutdown) and
//! `inspect` (Docker's JSON and list filters). The records live in [`State`] behind
//! one lock (reads share it); the kernel is reached only through [`Kernel`], so the
//! whole service runs on fakes in unit tests.

use bus_schema::event::{Action, Event, EventType};
use bus_schema::network::*;
use bus_schema::{docker, BusError};
use std::sync::Arc;

use crate::config::Config;
use crate::dns::{self, Dns};
use crate::files::ResolvConf;
use crate::firewall;
use crate::kernel::Kernel;
use crate::state::State;
use crate::store::{NetworkRecord, Store};

/// Where events go (the bus in production, a recorder in tests).
pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// The network service.
pub struct NetworkService {
    pub(crate) cfg: Config,
    pub(crate) store: Store,
    pub(crate) k: Kernel,
    pub(crate) dns: Dns,
    pub(crate) table: String,
    events: Events,
    pub(crate) state: tokio::sync::RwLock<State>,
    /// The bridges iptables' FORWARD chain last got accept rules for.
    pub(crate) forward_synced: tokio::sync::Mutex<Option<Vec<String>>>,
    /// The swarm's attachable overlay networks (none: this node's networks only).
    pub(crate) swarm: std::sync::OnceLock<Arc<dyn crate::swarm::SwarmNets>>,
}

pub(crate) fn internal(e: impl std::fmt::Display) -> BusError {
    BusError::internal(e.to_string())
}

impl NetworkService {
    /// Load the records, reconcile the kernel with them, create the predefined
    /// networks, and start the DNS servers.
    pub async fn start(cfg: Config, events: Events) -> Result<Arc<NetworkService>, BusError> {
        let k = Kernel::host()?;
        Self::start_on(cfg, events, k).await
    }

    /// [`start`](Self::start) on the given kernel (fakes in tests).
    pub async fn start_on(
        cfg: Config,
        events: Events,
        k: Kernel,
    ) -> Result<Arc<NetworkService>, BusError> {
        let store = Store::open(&cfg.dir)?;
        k.ns.prepare_dir(&store.netns_dir())?;
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
            k,
            dns,
            table,
            events,
            state: Default::default(),
            forward_synced: Default::default(),
            swarm: Default::default(),
        });
        svc.reconcile().await?;
        Ok(svc)
    }

    /// Reach the swarm's overlay networks through `s` (a container asking for a
    /// network this node does not know).
    pub fn set_swarm(&self, s: Arc<dyn crate::swarm::SwarmNets>) {
        let _ = self.swarm.set(s);
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

    pub(crate) fn event(&self, action: Action, net: &NetworkRecord, container: Option<&str>) {
        let mut e = Event::now(EventType::Network, action, net.id.clone())
            .attr("name", net.name.clone())
            .attr("type", net.driver.clone());
        if let Some(c) = container {
            e = e.attr("container", c);
        }
        (self.events)(e);
    }

    /// A container's connect/disconnect on a swarm network (Moby's event: the
    /// network's ID, name and driver `overlay`).
    pub(crate) fn swarm_event(
        &self,
        action: Action,
        e: &crate::store::EndpointRecord,
        container: &str,
    ) {
        let Some(name) = &e.swarm_network else { return };
        let ev = Event::now(EventType::Network, action, e.network_id.clone())
            .attr("name", name.clone())
            .attr("type", "overlay")
            .attr("container", container);
        (self.events)(ev);
    }
}

/// A host-wide lock around choosing a subnet and putting it on a bridge, so that two
/// nodes starting at once on one host never pick the same subnet.
pub(crate) struct HostLock(Option<std::fs::File>);

impl HostLock {
    pub(crate) fn take() -> HostLock {
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
        let mut st = self.state.write().await;
        self.create_network(&mut st, r.body).await
    }

    async fn network_inspect(&self, r: NetworkInspect) -> Result<docker::NetworkInspect, BusError> {
        let st = self.state.read().await;
        let n = st.find_network(&r.id)?;
        Ok(self.inspect_of(&st, n, true))
    }

    async fn network_list(&self, r: NetworkList) -> Result<Vec<docker::NetworkInspect>, BusError> {
        let st = self.state.read().await;
        self.list_filtered(&st, &r.filters)
    }

    async fn network_remove(&self, r: NetworkRemove) -> Result<(), BusError> {
        let mut st = self.state.write().await;
        self.remove_network(&mut st, &r.id).await
    }

    async fn network_prune(
        &self,
        r: NetworkPrune,
    ) -> Result<docker::NetworkPruneResponse, BusError> {
        let mut st = self.state.write().await;
        self.prune_networks(&mut st, &r.filters).await
    }

    async fn network_resolve(&self, r: NetworkResolve) -> Result<NetworkRef, BusError> {
        let st = self.state.read().await;
        let err = match st.find_network(&r.id) {
            Ok(n) => {
                return Ok(NetworkRef {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    driver: n.driver.clone(),
                })
            }
            Err(e) => e,
        };
        drop(st);
        // a swarm network (`network connect`/`disconnect` of an overlay)
        match self.swarm.get() {
            Some(s) if err.is(bus_schema::ErrorKind::NotFound) => {
                match s.inspect(r.id.clone()).await {
                    Ok(n) => Ok(NetworkRef {
                        id: n.id.unwrap_or_default(),
                        name: n.name.unwrap_or_default(),
                        driver: n.driver.unwrap_or_default(),
                    }),
                    Err(e) if crate::swarm::is_absent(&e) => Err(err),
                    Err(e) => Err(e),
                }
            }
            _ => Err(err),
        }
    }

    async fn sandbox_create(&self, r: SandboxCreate) -> Result<Sandbox, BusError> {
        let mut st = self.state.write().await;
        self.create_sandbox(&mut st, r).await
    }

    async fn sandbox_remove(&self, r: SandboxRemove) -> Result<(), BusError> {
        let mut st = self.state.write().await;
        self.remove_sandbox(&mut st, &r.container_id).await
    }

    async fn sandbox_rename(&self, r: SandboxRename) -> Result<(), BusError> {
        let mut st = self.state.write().await;
        self.rename_sandbox(&mut st, &r.container_id, &r.name)
    }

    async fn endpoint_create(
        &self,
        r: EndpointCreate,
    ) -> Result<docker::EndpointSettings, BusError> {
        let mut st = self.state.write().await;
        self.connect(&mut st, &r.container_id, &r.endpoint).await
    }

    async fn endpoint_remove(&self, r: EndpointRemove) -> Result<(), BusError> {
        let mut st = self.state.write().await;
        self.disconnect(&mut st, &r.container_id, &r.network).await
    }
}
