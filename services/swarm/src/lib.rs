//! The swarm service of a node: swarm mode on NATS clustering and JetStream.
//!
//! Layout (docs/swarm.md has the whole picture):
//! - [`SwarmService`] answers the node's gateway (`berth.v1.swarm.<node>.<Op>`): init,
//!   join, leave, and — when this node is a manager — the cluster API from the store.
//! - [`cluster::Cluster`] is a running membership: the node's swarm server
//!   ([`server`], configured by [`natsconf`]), the store ([`store`]) and its watched
//!   copies ([`cache`]), and the loops: heartbeat, the agent ([`agent`]), and on
//!   managers the leader lease with the orchestrator and scheduler ([`leader`],
//!   [`orchestrator`]), events ([`events`]) and the server's user list.
//! - [`api`] is Docker's manager API over the store; [`convert`] shapes its answers.
//! - [`node_bus`] is every request made on the node's own bus (runtime, images).

pub mod agent;
pub mod api;
pub mod ca;
pub mod cache;
pub mod cluster;
pub mod convert;
pub mod dns;
pub mod events;
pub mod filters;
pub mod ids;
pub mod join;
pub mod leader;
pub mod local;
pub mod lock;
pub mod migrate;
pub mod model;
pub mod natsconf;
pub mod networks;
pub mod node_bus;
pub mod orchestrator;
pub mod overlay;
pub mod ports;
pub mod role;
pub mod server;
pub mod store;
pub mod taskfiles;
pub mod tls;
pub mod xstream;

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::swarm::*;
use bus_schema::runtime::StreamInfo;
use bus_schema::stream::StdioChunk;
use bus_schema::{docker, BusError, BusStream, Service};
use std::sync::{Arc, RwLock};

/// Docker's answer when this node is in no swarm (503).
pub const ERR_NO_SWARM_MANAGER: &str =
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
/// Docker's answer on a worker (503).
pub const ERR_WORKER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
/// Docker's answer to init/join when already in a swarm (503).
pub const ERR_SWARM_EXISTS: &str = "This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.";
/// Docker's answer to leave when in no swarm (503).
pub const ERR_NO_SWARM: &str = "This node is not part of a swarm";

/// RFC 3339 with nanoseconds, UTC (Docker's timestamps).
/// An error text as the daemon passes swarmkit's gRPC errors on.
pub fn rpc(code: &str, desc: impl std::fmt::Display) -> String {
    format!("rpc error: code = {code} desc = {desc}")
}

pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the node describes of itself in `docker node inspect`.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    pub ncpu: i64,
    pub memory: i64,
}

impl HostFacts {
    pub fn probe() -> HostFacts {
        let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        let ncpu = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
        HostFacts { hostname, ncpu, memory: berth_config::host_mem_total() as i64 }
    }

    pub fn description(&self) -> docker::NodeDescription {
        let plugin = |t: &str, n: &str| docker::EngineDescriptionPlugins { typ: Some(t.into()), name: Some(n.into()) };
        docker::NodeDescription {
            hostname: Some(self.hostname.clone()),
            platform: Some(docker::Platform { architecture: Some(std::env::consts::ARCH.into()), os: Some("linux".into()) }),
            resources: Some(docker::ResourceObject { nano_cpus: Some(self.ncpu * 1_000_000_000), memory_bytes: Some(self.memory), generic_resources: None }),
            engine: Some(docker::EngineDescription {
                engine_version: Some(berth_config::VERSION.into()),
                labels: None,
                plugins: Some(vec![
                    plugin("Log", "json-file"),
                    plugin("Network", "bridge"),
                    plugin("Network", "host"),
                    plugin("Network", "null"),
                    plugin("Network", "overlay"),
                    plugin("Volume", "local"),
                ]),
            }),
            tls_info: None,
        }
    }
}

/// The swarm service of this node.
pub struct SwarmService {
    pub(crate) nb: node_bus::NodeBus,
    pub(crate) files: natsconf::Files,
    pub(crate) logs: std::path::PathBuf,
    /// Where tasks' secrets and configs are mounted (tmpfs each, see [`taskfiles`]).
    pub(crate) task_files: std::path::PathBuf,
    pub(crate) host: HostFacts,
    /// Serialises init, join, leave and start-up.
    transition: tokio::sync::Mutex<()>,
    active: RwLock<Option<Arc<cluster::Cluster>>>,
    /// The store is being moved into the managers' cluster ([`migrate`]): the manager
    /// API answers as Docker's does while its raft has no leader.
    pub(crate) moving: std::sync::atomic::AtomicBool,
    /// Why the swarm this node belongs to is not running (Docker's `Swarm.Error`).
    error: RwLock<String>,
    /// A manager restarted with autolock on: its sealed state, until `swarm unlock`.
    locked: RwLock<Option<local::LocalState>>,
}

impl SwarmService {
    pub fn new(bus: Bus, root: &std::path::Path) -> Arc<SwarmService> {
        let paths = berth_config::Paths::new(root);
        Arc::new(SwarmService {
            nb: node_bus::NodeBus::new(bus),
            files: natsconf::Files::new(&paths.swarm()),
            logs: paths.logs(),
            task_files: paths.run().join("swarm-files"),
            host: HostFacts::probe(),
            transition: tokio::sync::Mutex::new(()),
            active: RwLock::new(None),
            moving: std::sync::atomic::AtomicBool::new(false),
            error: RwLock::new(String::new()),
            locked: RwLock::new(None),
        })
    }

    /// The running membership, if any.
    pub fn active(&self) -> Option<Arc<cluster::Cluster>> {
        self.active.read().unwrap().clone()
    }

    /// The running membership when this node is a manager; Docker's 503 otherwise.
    /// The active cluster of this manager, its copies caught up with the store (once).
    pub async fn manager(&self) -> Result<Arc<cluster::Cluster>, BusError> {
        let c = self.manager_now()?;
        c.sync_reads().await;
        Ok(c)
    }

    fn manager_now(&self) -> Result<Arc<cluster::Cluster>, BusError> {
        match self.active() {
            None if self.is_locked() => Err(BusError::unavailable(lock::ERR_LOCKED)),
            None if self.moving.load(std::sync::atomic::Ordering::SeqCst) => Err(BusError::internal(store::NO_QUORUM)),
            None => Err(BusError::unavailable(ERR_NO_SWARM_MANAGER)),
            Some(c) if !c.is_manager() => Err(BusError::unavailable(ERR_WORKER)),
            // Without a quorum swarmkit refuses reads too (they go through the raft
            // leader): the store has taken no write of this manager for a while.
            Some(c) if !c.has_quorum() => Err(BusError::internal(store::NO_QUORUM)),
            Some(c) => Ok(c),
        }
    }

    /// Whether this manager waits for `docker swarm unlock`.
    pub fn is_locked(&self) -> bool {
        self.locked.read().unwrap().is_some()
    }

    /// `docker swarm unlock`: open the sealed keys with `key` and rejoin; Docker's
    /// answers when nothing is locked (409), for a malformed key (400), the wrong one (401).
    pub async fn unlock(self: &Arc<Self>, key: &str) -> Result<(), BusError> {
        let _g = self.transition.lock().await;
        let Some(mut local) = self.locked.read().unwrap().clone() else {
            return match self.active() {
                Some(c) if c.is_manager() => Err(BusError::conflict(lock::ERR_NOT_LOCKED)),
                Some(_) => Err(BusError::unavailable(ERR_WORKER)),
                None => Err(BusError::unavailable(ERR_NO_SWARM_MANAGER)),
            };
        };
        local.unseal(key)?;
        let c = cluster::Cluster::start(self.clone(), local.clone()).await?;
        *self.active.write().unwrap() = Some(c);
        *self.locked.write().unwrap() = None;
        self.error.write().unwrap().clear();
        tracing::info!(node = %local.node_id, "unlocked; rejoined the swarm");
        Ok(())
    }

    /// Rejoin the swarm this node was part of (after a restart of the service or node).
    pub async fn resume(self: &Arc<Self>) {
        let _g = self.transition.lock().await;
        let local = match local::LocalState::load(&self.files.state()) {
            Ok(Some(l)) => l,
            Ok(None) => {
                // In no swarm: no task of this node is live, none of their files is.
                crate::taskfiles::release_all(&self.task_files);
                return;
            }
            Err(e) => {
                *self.error.write().unwrap() = format!("reading swarm state: {e}");
                return;
            }
        };
        // Autolock: the keys stay sealed until `docker swarm unlock` (its tasks keep running).
        if local.is_manager() && local.is_sealed() {
            tracing::info!(node = %local.node_id, "the swarm is locked: waiting for `docker swarm unlock`");
            *self.locked.write().unwrap() = Some(local);
            return;
        }
        // Killed in the middle of moving the store into the managers' cluster: finish it.
        if local.is_manager() && local.clustered && self.resume_move(local.clone()).await {
            return;
        }
        loop {
            match cluster::Cluster::start(self.clone(), local.clone()).await {
                Ok(c) => {
                    *self.active.write().unwrap() = Some(c);
                    self.error.write().unwrap().clear();
                    tracing::info!(node = %local.node_id, role = %local.role, "rejoined the swarm");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rejoining the swarm failed; trying again");
                    *self.error.write().unwrap() = e.to_string();
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    pub async fn init(self: &Arc<Self>, req: docker::SwarmInitRequest) -> Result<String, BusError> {
        let _g = self.transition.lock().await;
        if self.active().is_some() || self.files.state().exists() {
            return Err(BusError::unavailable(ERR_SWARM_EXISTS));
        }
        let c = cluster::init(self.clone(), req).await?;
        let id = c.node_id();
        *self.active.write().unwrap() = Some(c);
        Ok(id)
    }

    pub async fn join(self: &Arc<Self>, req: docker::SwarmJoinRequest) -> Result<(), BusError> {
        let _g = self.transition.lock().await;
        if self.active().is_some() || self.files.state().exists() {
            return Err(BusError::unavailable(ERR_SWARM_EXISTS));
        }
        let c = join::join(self.clone(), req).await?;
        *self.active.write().unwrap() = Some(c);
        Ok(())
    }

    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<(), BusError> {
        let _g = self.transition.lock().await;
        let Some(c) = self.active() else {
            if self.is_locked() && !force {
                return Err(BusError::unavailable(lock::ERR_LEAVE_LOCKED));
            }
            *self.locked.write().unwrap() = None;
            if self.files.state().exists() {
                // A membership that never came back up: leaving forgets it.
                crate::taskfiles::release_all(&self.task_files);
                let _ = std::fs::remove_dir_all(&self.files.dir);
                return Ok(());
            }
            return Err(BusError::unavailable(ERR_NO_SWARM));
        };
        c.leave(force).await?;
        *self.active.write().unwrap() = None;
        Ok(())
    }

    /// `docker info`'s Swarm section.
    pub async fn info(&self) -> docker::SystemInfo {
        let locked = self.locked.read().unwrap().as_ref().map(|l| l.advertise_addr.clone());
        let swarm = match self.active() {
            Some(c) => c.info().await,
            // Moby's answer while locked: no node ID yet, its address, the lock as the error
            None if locked.is_some() => docker::SwarmInfo {
                node_id: Some(String::new()),
                node_addr: locked,
                local_node_state: Some(docker::LocalNodeState::LOCKED),
                control_available: Some(false),
                error: Some(lock::ERR_LOCKED.into()),
                remote_managers: None,
                ..Default::default()
            },
            None => docker::SwarmInfo {
                node_id: Some(String::new()),
                node_addr: Some(String::new()),
                local_node_state: Some(if self.error.read().unwrap().is_empty() { docker::LocalNodeState::INACTIVE } else { docker::LocalNodeState::ERROR }),
                control_available: Some(false),
                error: Some(self.error.read().unwrap().clone()),
                remote_managers: None,
                ..Default::default()
            },
        };
        docker::SystemInfo { swarm: Some(swarm), ..Default::default() }
    }

    /// `/_ping`'s `Swarm` header.
    pub fn status(&self) -> String {
        match self.active() {
            None if self.is_locked() => "locked".into(),
            None => "inactive".into(),
            Some(c) if c.is_manager() => "active/manager".into(),
            Some(_) => "active/worker".into(),
        }
    }

    /// Stop the membership's loops and server (the service is stopping; the node stays
    /// in the swarm).
    pub async fn shutdown(&self) {
        if let Some(c) = self.active.write().unwrap().take() {
            c.stop().await;
        }
    }
}

/// Start the service on `bus`: rejoin a swarm this node is part of, serve requests.
pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    Ok(start(bus, cfg).await?.0)
}

/// Like [`serve`], also returning the service (for [`SwarmService::shutdown`]).
pub async fn start(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<(Server, Arc<SwarmService>)> {
    let root = std::env::var_os(berth_config::env::ROOT).map(std::path::PathBuf::from).unwrap_or_else(|| cfg.data_root());
    let svc = SwarmService::new(bus.clone(), &root);
    {
        let s = svc.clone();
        tokio::spawn(async move { s.resume().await });
    }
    let s = svc.clone();
    let server = Server::new(bus, Service::Swarm).info(move || {
        let s = s.clone();
        async move { s.info().await }
    });
    Ok((register(server, svc.clone()), svc))
}

/// The swarm table's operations, answered by this node's swarm service: the
/// membership requests by the service itself, the rest by the manager (Docker's 503
/// on a worker or outside a swarm).
struct Api(Arc<SwarmService>);

impl SwarmApi for Api {
    async fn swarm_init(&self, r: SwarmInit) -> Result<String, BusError> {
        self.0.init(r.req).await
    }
    async fn swarm_join(&self, r: SwarmJoin) -> Result<(), BusError> {
        self.0.join(r.req).await
    }
    async fn swarm_leave(&self, r: SwarmLeave) -> Result<(), BusError> {
        self.0.leave(r.force).await
    }
    async fn swarm_inspect(&self, _r: SwarmInspect) -> Result<SwarmObject, BusError> {
        self.0.manager().await?.swarm_inspect().await
    }
    async fn swarm_update(&self, r: SwarmUpdate) -> Result<(), BusError> {
        self.0.manager().await?.swarm_update(r).await
    }
    async fn swarm_unlock_key(&self, _r: SwarmUnlockKey) -> Result<docker::UnlockKeyResponse, BusError> {
        self.0.manager().await?.swarm_unlock_key().await
    }
    async fn swarm_unlock(&self, r: SwarmUnlock) -> Result<(), BusError> {
        self.0.unlock(&r.key).await
    }
    async fn swarm_status(&self, _r: SwarmStatus) -> Result<String, BusError> {
        Ok(self.0.status())
    }
    async fn node_list(&self, r: NodeList) -> Result<Vec<docker::Node>, BusError> {
        self.0.manager().await?.node_list(r.filters).await
    }
    async fn node_inspect(&self, r: NodeInspect) -> Result<docker::Node, BusError> {
        self.0.manager().await?.node_inspect(&r.id).await
    }
    async fn node_update(&self, r: NodeUpdate) -> Result<(), BusError> {
        self.0.manager().await?.node_update(r).await
    }
    async fn node_remove(&self, r: NodeRemove) -> Result<(), BusError> {
        self.0.manager().await?.node_remove(&r.id, r.force).await
    }
    async fn service_create(&self, r: ServiceCreate) -> Result<docker::ServiceCreateResponse, BusError> {
        self.0.manager().await?.service_create(r.spec, r.auth).await
    }
    async fn service_list(&self, r: ServiceList) -> Result<Vec<ServiceObject>, BusError> {
        self.0.manager().await?.service_list(r.filters, r.status).await
    }
    async fn service_inspect(&self, r: ServiceInspect) -> Result<ServiceObject, BusError> {
        self.0.manager().await?.service_inspect(&r.id, r.insert_defaults).await
    }
    async fn service_update(&self, r: ServiceUpdate) -> Result<docker::ServiceUpdateResponse, BusError> {
        self.0.manager().await?.service_update(r).await
    }
    async fn service_remove(&self, r: ServiceRemove) -> Result<(), BusError> {
        self.0.manager().await?.service_remove(&r.id).await
    }
    async fn service_logs(&self, r: ServiceLogs) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        self.0.manager().await?.service_logs(r).await
    }
    async fn task_list(&self, r: TaskList) -> Result<Vec<TaskObject>, BusError> {
        self.0.manager().await?.task_list(r.filters).await
    }
    async fn task_inspect(&self, r: TaskInspect) -> Result<TaskObject, BusError> {
        self.0.manager().await?.task_inspect(&r.id).await
    }
    async fn task_logs(&self, r: TaskLogs) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        self.0.manager().await?.task_logs(r).await
    }
    async fn secret_create(&self, r: SecretCreate) -> Result<docker::IdResponse, BusError> {
        self.0.manager().await?.secret_create(r.spec).await
    }
    async fn secret_list(&self, r: SecretList) -> Result<Vec<docker::Secret>, BusError> {
        self.0.manager().await?.secret_list(r.filters).await
    }
    async fn secret_inspect(&self, r: SecretInspect) -> Result<docker::Secret, BusError> {
        self.0.manager().await?.secret_inspect(&r.id).await
    }
    async fn secret_update(&self, r: SecretUpdate) -> Result<(), BusError> {
        self.0.manager().await?.secret_update(r).await
    }
    async fn secret_remove(&self, r: SecretRemove) -> Result<(), BusError> {
        self.0.manager().await?.secret_remove(&r.id).await
    }
    async fn config_create(&self, r: ConfigCreate) -> Result<docker::IdResponse, BusError> {
        self.0.manager().await?.config_create(r.spec).await
    }
    async fn config_list(&self, r: ConfigList) -> Result<Vec<docker::Config>, BusError> {
        self.0.manager().await?.config_list(r.filters).await
    }
    async fn config_inspect(&self, r: ConfigInspect) -> Result<docker::Config, BusError> {
        self.0.manager().await?.config_inspect(&r.id).await
    }
    async fn config_update(&self, r: ConfigUpdate) -> Result<(), BusError> {
        self.0.manager().await?.config_update(r).await
    }
    async fn config_remove(&self, r: ConfigRemove) -> Result<(), BusError> {
        self.0.manager().await?.config_remove(&r.id).await
    }
    async fn swarm_network_create(&self, r: SwarmNetworkCreate) -> Result<docker::NetworkCreateResponse, BusError> {
        // Moby's daemon answers this (500) on a worker as in no swarm
        match self.0.active() {
            Some(c) if c.is_manager() => c.network_create(r.req).await,
            _ => Err(BusError::internal(ERR_NO_SWARM_MANAGER)),
        }
    }
    async fn swarm_network_list(&self, r: SwarmNetworkList) -> Result<Vec<docker::NetworkInspect>, BusError> {
        match self.0.active() {
            Some(c) => c.network_list(&r.filters),
            None => Ok(Vec::new()),
        }
    }
    async fn swarm_network_inspect(&self, r: SwarmNetworkInspect) -> Result<docker::NetworkInspect, BusError> {
        match self.0.active() {
            Some(c) => c.network_inspect(&r.id).await,
            None => Err(BusError::not_found(format!("network {} not found", r.id))),
        }
    }
    async fn swarm_network_attach(&self, r: SwarmNetworkAttach) -> Result<SwarmAttachment, BusError> {
        // on any node of a swarm (workers too); outside one the network service's own
        // "not found" stands
        match self.0.active() {
            Some(c) => overlay::attach_container(&c, &r).await,
            None => Err(BusError::not_found(format!("network {} not found", r.network))),
        }
    }
    async fn swarm_network_detach(&self, r: SwarmNetworkDetach) -> Result<(), BusError> {
        match self.0.active() {
            Some(c) => overlay::detach_container(&c, &r.network_id, &r.container_id).await,
            None => Ok(()),
        }
    }
    async fn swarm_network_remove(&self, r: SwarmNetworkRemove) -> Result<(), BusError> {
        match self.0.active() {
            Some(c) if c.is_manager() => c.network_remove(&r.id).await,
            Some(_) => Err(BusError::unavailable(ERR_WORKER)),
            None => Err(BusError::not_found(format!("network {} not found", r.id))),
        }
    }
}

/// Serve every swarm request on `server` with `svc`.
pub fn register(server: Server, svc: Arc<SwarmService>) -> Server {
    berth_bus::swarm::serve_swarm(server, Arc::new(Api(svc)))
}
