//! A running swarm membership: this node's swarm server, the bus connection to it,
//! the store and its watched copies, and the loops that act on them.
//!
//! [`init`] makes a new swarm (CA, tokens, the store), [`join`] enters one through a
//! manager's join handshake, [`Cluster::start`] brings a membership up from what the
//! node remembers (`<root>/swarm/`), which is also how a restarted service resumes.

use crate::cache::{self, Table};
use crate::local::{self, LocalState};
use crate::model::*;
use crate::natsconf::{self, Kind, ServerConfig};
use crate::server::SwarmServer;
use crate::store::{self, buckets, Bucket, Store};
use crate::{ids, SwarmService};
use async_nats::jetstream;
use bus_schema::{docker, BusError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often a node writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A node whose heartbeat has not moved for this long is down. Long enough for a
/// worker's leaf to reach another manager when the one it was connected to dies (2.5 s
/// was not, now and then, in e2e `a_worker_outlives_the_manager_it_joined`); short
/// enough that a lost node's tasks run elsewhere within the 10 s.
pub const NODE_DOWN_AFTER: Duration = Duration::from_millis(4000);
/// A manager whose heartbeat the store has not taken for this long has no quorum.
pub const QUORUM_LOST_AFTER: Duration = Duration::from_secs(3);

/// The watched copies of the buckets.
pub struct Tables {
    pub cluster: Arc<Table<ClusterRecord>>,
    pub nodes: Arc<Table<NodeRecord>>,
    pub heartbeats: Arc<Table<Heartbeat>>,
    pub services: Arc<Table<ServiceRecord>>,
    pub tasks: Arc<Table<TaskRecord>>,
    pub task_status: Arc<Table<TaskStatusRecord>>,
    pub secrets: Arc<Table<BlobRecord>>,
    pub configs: Arc<Table<BlobRecord>>,
    pub networks: Arc<Table<NetworkRecord>>,
    pub leader: Arc<Table<Lease>>,
}

pub struct Cluster {
    pub svc: Arc<SwarmService>,
    pub local: RwLock<LocalState>,
    pub client: async_nats::Client,
    pub store: Store,
    pub t: Tables,
    pub server: tokio::sync::Mutex<SwarmServer>,
    /// Whether this node holds the leader lease now.
    pub is_leader: tokio::sync::watch::Sender<bool>,
    /// When this node's heartbeat last reached the store (a write committed by the
    /// managers' quorum).
    store_ok: Mutex<std::time::Instant>,
    loops: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// [`Cluster::sync_reads`]'s attempts so far (SYNC_TRIES once they caught up).
    reads_synced: std::sync::atomic::AtomicU8,
}

/// How long a manager's first reads wait for its copies, and how many wait at most.
const SYNC_WITHIN: Duration = Duration::from_secs(5);
const SYNC_TRIES: u8 = 3;

fn internal(e: impl std::fmt::Display) -> BusError {
    BusError::internal(e.to_string())
}

/// The address to dial a server listening on `addr` from this host.
pub(crate) fn dial_addr(addr: &str) -> String {
    dial(addr)
}

fn dial(addr: &str) -> String {
    let (ip, port) = local::host_port(addr);
    let ip = if ip == "0.0.0.0" || ip.is_empty() { "127.0.0.1".to_string() } else if ip == "::" { "::1".to_string() } else { ip };
    local::join(&ip, port)
}

impl Cluster {
    pub fn node_id(&self) -> String {
        self.local.read().unwrap().node_id.clone()
    }

    pub fn is_manager(&self) -> bool {
        self.local.read().unwrap().is_manager()
    }

    /// Whether the store takes writes: always for a lone manager's standalone store;
    /// in a cluster, this node's heartbeat was committed within [`QUORUM_LOST_AFTER`].
    pub fn has_quorum(&self) -> bool {
        !self.local.read().unwrap().clustered || self.store_ok.lock().unwrap().elapsed() < QUORUM_LOST_AFTER
    }

    pub fn leader_id(&self) -> Option<String> {
        self.t.leader.get("leader").map(|(l, _)| l.node_id)
    }

    pub fn node_bus(&self) -> &crate::node_bus::NodeBus {
        &self.svc.nb
    }

    fn server_config(local: &LocalState, files: &natsconf::Files, users: Vec<natsconf::User>) -> ServerConfig {
        let kind = if local.is_manager() {
            let (client, leaf, route) = local.ports();
            let routes: Vec<String> = if local.clustered {
                local.managers.iter().filter(|m| m.node_id != local.node_id).map(|m| m.route.clone()).collect()
            } else {
                Vec::new()
            };
            Kind::Manager {
                client,
                leaf,
                route,
                routes,
                cluster_name: format!("berth-swarm-{}", &local.cluster_id[..local.cluster_id.len().min(12)]),
                route_user: local.route_user.clone(),
                route_password: local.route_password.clone(),
                users,
                sys_password: local.sys_password.clone(),
            }
        } else {
            Kind::Worker {
                client: format!("127.0.0.1:{}", local.local_port),
                managers: local.managers.iter().map(|m| m.leaf.clone()).collect(),
                user: local.user.clone(),
                password: local.password.clone(),
            }
        };
        ServerConfig {
            node_id: local.node_id.clone(),
            files: files.clone(),
            kind,
            local_user: local.local_user.clone(),
            local_password: local.local_password.clone(),
            store_key: local.store_key.clone(),
            key_file: local.key_file(files),
        }
    }

    fn probe_addr(local: &LocalState) -> String {
        if local.is_manager() {
            dial(&local.ports().0)
        } else {
            format!("127.0.0.1:{}", local.local_port)
        }
    }

    /// Bring the membership up from `local` (and the files next to it).
    pub async fn start(svc: Arc<SwarmService>, local: LocalState) -> Result<Arc<Cluster>, BusError> {
        let c = Self::start_quiet(svc, local).await?;
        c.start_loops();
        Ok(c)
    }

    /// The server, the connection and the store, without the loops (the store's move
    /// writes its records back before anything acts on them, see [`crate::migrate`]).
    pub async fn start_quiet(svc: Arc<SwarmService>, local: LocalState) -> Result<Arc<Cluster>, BusError> {
        let files = svc.files.clone();
        // The users other nodes log in with come from the store once connected; the
        // config keeps the last list it had until then.
        let users = previous_users(&files);
        let conf = Self::server_config(&local, &files, users);
        natsconf::write_private(&files.conf(), &natsconf::render(&conf)).map_err(internal)?;
        let probe = Self::probe_addr(&local);
        let server = SwarmServer::start(&files.conf(), &svc.logs.join("swarm-server.log"), &probe, conf.env()).await.map_err(internal)?;
        let client = connect(&local, &files, &probe).await?;
        let mut js = if local.is_manager() { jetstream::new(client.clone()) } else { jetstream::with_domain(client.clone(), natsconf::DOMAIN) };
        js.set_timeout(Duration::from_secs(5));
        let store = open_store(&js, &local).await?;
        let t = Tables {
            cluster: Table::new(),
            nodes: Table::new(),
            heartbeats: Table::new(),
            services: Table::new(),
            tasks: Table::new(),
            task_status: Table::new(),
            secrets: Table::new(),
            configs: Table::new(),
            networks: Table::new(),
            leader: Table::new(),
        };
        let c = Arc::new(Cluster {
            svc,
            local: RwLock::new(local),
            client,
            store,
            t,
            server: tokio::sync::Mutex::new(server),
            is_leader: tokio::sync::watch::channel(false).0,
            store_ok: Mutex::new(std::time::Instant::now()),
            loops: Mutex::new(Vec::new()),
            reads_synced: std::sync::atomic::AtomicU8::new(0),
        });
        Ok(c)
    }

    /// Before a manager's first answer from its copies: wait until they hold what the
    /// store held when asked. swarmkit answers from the raft leader's store; a manager
    /// that had just joined answered `service ps web` with "no such service" while its
    /// services copy was still catching up (seen in CI). When the first manager moves
    /// the store into the managers' cluster it writes the swarm record last, so the
    /// wait starts once the cluster copy has it. Bounded: when the store does not
    /// answer, the copies answer as they are (and the next request tries again).
    pub async fn sync_reads(&self) {
        use std::sync::atomic::Ordering;
        if self.reads_synced.load(Ordering::SeqCst) >= SYNC_TRIES {
            return;
        }
        let t0 = std::time::Instant::now();
        let (s, t) = (&self.store, &self.t);
        let synced = tokio::time::timeout(SYNC_WITHIN, async {
            let mut gen = t.cluster.subscribe();
            while t.cluster.get("swarm").is_none() {
                if gen.changed().await.is_err() {
                    return false;
                }
            }
            cache::caught_up(&s.bucket(buckets::CLUSTER), &t.cluster).await
                && cache::caught_up(&s.bucket(buckets::NODES), &t.nodes).await
                && cache::caught_up(&s.bucket(buckets::SERVICES), &t.services).await
                && cache::caught_up(&s.bucket(buckets::TASKS), &t.tasks).await
                && cache::caught_up(&s.bucket(buckets::TASK_STATUS), &t.task_status).await
                && cache::caught_up(&s.bucket(buckets::NETWORKS), &t.networks).await
                && cache::caught_up(&s.bucket(buckets::SECRETS), &t.secrets).await
                && cache::caught_up(&s.bucket(buckets::CONFIGS), &t.configs).await
        })
        .await
        .unwrap_or(false);
        if synced {
            self.reads_synced.store(SYNC_TRIES, Ordering::SeqCst);
        } else {
            // a store that does not answer: a few requests wait for it, not every one
            self.reads_synced.fetch_add(1, Ordering::SeqCst);
            tracing::info!(waited = ?t0.elapsed(), "the copies did not catch up with the store: answering from them as they are");
        }
    }

    pub fn start_loops(self: &Arc<Self>) {
        self.spawn_loops();
    }

    /// Stop the loops; the server keeps running.
    pub fn stop_loops(&self) {
        for h in self.loops.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.loops.lock().unwrap().push(tokio::spawn(f));
    }

    fn follow<T>(&self, bucket: &str, table: &Arc<Table<T>>)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let b: Bucket<T> = self.store.bucket(bucket);
        self.spawn(cache::follow(b, table.clone()));
    }

    fn spawn_loops(self: &Arc<Self>) {
        let manager = self.is_manager();
        self.follow(buckets::TASKS, &self.t.tasks);
        self.follow(buckets::CLUSTER, &self.t.cluster);
        self.follow(buckets::LEADER, &self.t.leader);
        self.follow(buckets::NODES, &self.t.nodes);
        self.follow(buckets::NETWORKS, &self.t.networks);
        // every node: the routing mesh forwards each published port to the running
        // tasks of every node (Moby's workers learn these bindings by gossip)
        self.follow(buckets::SERVICES, &self.t.services);
        self.follow(buckets::TASK_STATUS, &self.t.task_status);
        if manager {
            self.follow(buckets::HEARTBEATS, &self.t.heartbeats);
            self.follow(buckets::SECRETS, &self.t.secrets);
            self.follow(buckets::CONFIGS, &self.t.configs);
            self.spawn(crate::leader::run(self.clone()));
            self.spawn(crate::events::run(self.clone()));
            self.spawn(sync_server(self.clone()));
            self.spawn(follow_unlock_key(self.clone()));
            self.spawn(crate::join::serve(self.clone()));
            self.spawn(crate::taskfiles::serve(self.clone()));
            self.spawn(crate::networks::serve_addresses(self.clone()));
            self.spawn(crate::role::follow_managers(self.clone()));
            if !self.local.read().unwrap().clustered {
                self.spawn(crate::migrate::watch(self.clone()));
            }
        } else {
            self.spawn(crate::role::remember_managers(self.clone()));
        }
        self.spawn(heartbeat(self.clone()));
        self.spawn(crate::agent::run(self.clone()));
        // every node: the logs of its tasks for the managers' `docker service logs`
        self.spawn(crate::agent::serve_logs(self.clone()));
        self.spawn(crate::overlay::run(self.clone()));
        self.spawn(watch_server(self.clone()));
        self.spawn(crate::role::watch(self.clone()));
    }

    /// Stop the loops and the server; the node stays a member (files kept).
    pub async fn stop(&self) {
        self.stop_loops();
        self.server.lock().await.stop().await;
    }

    /// `docker swarm leave`: Docker's refusals for managers without `--force`, then
    /// this node's task containers go, the server stops and the node forgets the swarm.
    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<(), BusError> {
        if self.is_manager() && !force {
            let managers = self.t.nodes.filter(|n| n.role == "manager");
            let reachable = managers.iter().filter(|n| n.state == "ready").count();
            let unreachable = managers.len() - reachable;
            let mut msg = String::from("You are attempting to leave the swarm on a node that is participating as a manager. ");
            if reachable <= 1 && unreachable == 0 {
                msg += "Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ";
                return Err(BusError::unavailable(msg));
            }
            if reachable - 1 <= (reachable + unreachable) / 2 {
                msg += &format!(
                    "Removing this node leaves {} managers out of {}. Without a Raft quorum your swarm will be inaccessible. ",
                    reachable - 1,
                    reachable + unreachable
                );
            }
            msg += "The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.";
            return Err(BusError::unavailable(msg));
        }
        let me = self.node_id();
        self.stop().await;
        // Docker removes the node's task containers when it leaves.
        if let Ok(list) = self.node_bus().list_labelled(&format!("com.docker.swarm.node.id={me}")).await {
            for c in list {
                if let Some(id) = c.id {
                    let _ = self.node_bus().remove(&id).await;
                }
            }
        }
        crate::taskfiles::release_all(&self.svc.task_files);
        // and its overlay devices
        crate::overlay::remove_all().await;
        std::fs::remove_dir_all(&self.svc.files.dir).map_err(internal)?;
        Ok(())
    }

    /// `docker info`'s Swarm section.
    pub async fn info(&self) -> docker::SwarmInfo {
        let local = self.local.read().unwrap().clone();
        let remote: Vec<docker::PeerNode> = local
            .managers
            .iter()
            .map(|m| docker::PeerNode { node_id: Some(m.node_id.clone()), addr: Some(m.client.clone()) })
            .collect();
        let mut info = docker::SwarmInfo {
            node_id: Some(local.node_id.clone()),
            node_addr: Some(local.advertise_addr.clone()),
            local_node_state: Some(docker::LocalNodeState::ACTIVE),
            control_available: Some(local.is_manager()),
            error: Some(String::new()),
            remote_managers: Some(remote),
            ..Default::default()
        };
        if local.is_manager() {
            let nodes = self.t.nodes.values();
            info.nodes = Some(nodes.len() as i64);
            info.managers = Some(nodes.iter().filter(|(_, n, _)| n.role == "manager").count() as i64);
            if let Some((c, rev)) = self.t.cluster.get("swarm") {
                let s = crate::convert::swarm(&c, rev, false);
                info.cluster = Some(docker::ClusterInfo {
                    id: Some(s.id),
                    version: Some(s.version),
                    created_at: Some(s.created_at),
                    updated_at: Some(s.updated_at),
                    spec: Some(s.spec),
                    tls_info: Some(s.tls_info),
                    root_rotation_in_progress: Some(false),
                    data_path_port: Some(s.data_path_port),
                    default_addr_pool: s.default_addr_pool,
                    subnet_size: Some(s.subnet_size),
                });
            }
        }
        info
    }

    pub fn bucket<T>(&self, name: &str) -> Bucket<T> {
        self.store.bucket(name)
    }
}

/// Answer every request on `subject` (one of queue group `queue`'s members answers
/// each, when given) with `handle`, each in a task of its own, given the request and
/// its reply subject; subscribed again when the subscription fails or ends.
pub async fn serve_requests<F, Fut>(c: Arc<Cluster>, subject: String, queue: Option<&str>, handle: F)
where
    F: Fn(Arc<Cluster>, async_nats::Message, async_nats::Subject) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures_util::StreamExt;
    loop {
        let sub = match queue {
            Some(q) => c.client.queue_subscribe(subject.clone(), q.to_string()).await,
            None => c.client.subscribe(subject.clone()).await,
        };
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%subject, error = %e, "subscribing the requests; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply.clone() else { continue };
            tokio::spawn(handle(c.clone(), msg, reply));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Managers: answer the nodes' asks on `<swarm prefix>.<what>.<node>` (a subject only
/// that node may publish on, so `node` is who asks): the JSON request given to
/// `answer` with the asking node, its `Ok`/`Err` sent back as JSON. The other side of
/// [`ask_managers`].
pub async fn serve_node_asks<Q, A, F, Fut>(c: Arc<Cluster>, what: &str, answer: F)
where
    Q: serde::de::DeserializeOwned + Send + 'static,
    A: serde::Serialize + Send + 'static,
    F: Fn(Arc<Cluster>, String, Q) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<A, String>> + Send + 'static,
{
    let pattern = format!("{}.{what}.*", bus_schema::swarm::cluster::PREFIX);
    serve_requests(c, pattern, Some("managers"), move |c, msg, reply| {
        let answer = answer.clone();
        async move {
            let node = msg.subject.rsplit('.').next().unwrap_or_default().to_string();
            let ans: Result<A, String> = match serde_json::from_slice::<Q>(&msg.payload) {
                Ok(r) => answer(c.clone(), node, r).await,
                Err(e) => Err(format!("bad request: {e}")),
            };
            let _ = c.client.publish(reply, serde_json::to_vec(&ans).unwrap_or_default().into()).await;
        }
    })
    .await
}

/// A worker's request to the managers on a subject only it may publish (its tasks'
/// files, its overlay addresses), answered `Ok(T)` or why not; the failures to ask in
/// Docker-facing words naming `what` was asked for.
pub async fn ask_managers<Q: serde::Serialize, T: serde::de::DeserializeOwned>(c: &Cluster, subject: String, q: &Q, what: &str) -> Result<Result<T, String>, BusError> {
    use berth_bus::cluster::AskError;
    match berth_bus::cluster::ask_json::<_, Result<T, String>>(&c.client, subject, q, Duration::from_secs(10)).await {
        Ok(a) => Ok(a),
        Err(AskError::NoAnswer) => Err(BusError::unavailable(format!("the managers did not answer for {what}"))),
        Err(AskError::Failed(e)) => Err(BusError::unavailable(format!("asking the managers for {what}: {e}"))),
        Err(AskError::Undecodable(e)) => Err(BusError::internal(format!("the managers' answer: {e}"))),
    }
}

/// The users of the last config written (kept until the store answers).
fn previous_users(_files: &natsconf::Files) -> Vec<natsconf::User> {
    Vec::new()
}

async fn connect(local: &LocalState, files: &natsconf::Files, addr: &str) -> Result<async_nats::Client, BusError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("swarm-{}", local.node_id))
        .user_and_password(local.local_user.clone(), local.local_password.clone())
        // the node's own inboxes: a worker receives nothing else from the managers
        .custom_inbox_prefix(natsconf::node_inbox_prefix(&local.node_id))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .ignore_discovered_servers()
        .max_reconnects(None);
    let url = if local.is_manager() {
        let ca = std::fs::read_to_string(files.ca()).map_err(internal)?;
        opts = opts.tls_client_config(crate::tls::client_config(&ca, None).map_err(BusError::internal)?).require_tls(true);
        format!("tls://{addr}")
    } else {
        format!("nats://{addr}")
    };
    opts.connect(url).await.map_err(|e| BusError::unavailable(format!("connecting to the swarm server: {e}")))
}

async fn open_store(js: &jetstream::Context, local: &LocalState) -> Result<Store, BusError> {
    // A manager makes the buckets (first start) or scales them (managers came or went);
    // JetStream may need a moment after its server starts.
    let replicas = if local.clustered { local.managers.len().clamp(1, 3) } else { 1 };
    let mut last = None;
    for _ in 0..100 {
        let r = if local.is_manager() { store::open(js, replicas).await } else { store::bind(js).await };
        match r {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::debug!(error = %e, "store not ready yet");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(last.map(BusError::from).unwrap_or_else(|| BusError::internal("store not ready")))
}

/// Write this node's heartbeat every [`HEARTBEAT`].
async fn heartbeat(c: Arc<Cluster>) {
    let b: Bucket<Heartbeat> = c.bucket(buckets::HEARTBEATS);
    let id = c.node_id();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        seq += 1;
        match b.put(&id, &Heartbeat { node_id: id.clone(), at_ms: crate::now_ms(), seq }).await {
            Ok(_) => *c.store_ok.lock().unwrap() = std::time::Instant::now(),
            Err(e) => tracing::debug!(error = %e, "heartbeat not written"),
        }
    }
}

/// Restart the swarm server if it dies.
async fn watch_server(c: Arc<Cluster>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = c.server.lock().await.ensure().await {
            tracing::warn!(error = %e, "the swarm server could not be started again");
        }
    }
}

impl Cluster {
    /// The swarm server's config as it should be now: this node's state, every node's user.
    fn server_config_text(&self) -> String {
        let users: Vec<natsconf::User> = self
            .t
            .nodes
            .values()
            .into_iter()
            .map(|(_, n, _)| natsconf::User {
                name: n.bus.user.clone(),
                password: n.bus.password_hash.clone(),
                role: if n.role == "manager" { natsconf::Role::Manager } else { natsconf::Role::Worker },
            })
            .filter(|u| !u.name.is_empty())
            .collect();
        let local = self.local.read().unwrap().clone();
        natsconf::render(&Cluster::server_config(&local, &self.svc.files, users))
    }

    /// Autolock: seal this manager's keys at rest with the swarm's unlock key (empty:
    /// autolock off, keys back in clear). The TLS key moves to memory and the config
    /// names it there before the key file goes (the running server keeps its keys).
    pub fn apply_unlock_key(&self, unlock_key: &str) -> Result<(), BusError> {
        let want = if unlock_key.is_empty() { None } else { Some(crate::lock::kek(unlock_key).map_err(internal)?) };
        if self.local.read().unwrap().kek == want {
            return Ok(());
        }
        let files = &self.svc.files;
        self.local.write().unwrap().set_unlock_key(files, unlock_key).map_err(internal)?;
        natsconf::write_private(&files.conf(), &self.server_config_text()).map_err(internal)?;
        let local = self.local.read().unwrap().clone();
        local.save(&files.state()).map_err(internal)?;
        tracing::info!(autolock = want.is_some(), "this manager's keys at rest follow the swarm's unlock key");
        Ok(())
    }
}

/// Managers: follow the swarm's unlock key (set, rotated or cleared on any manager).
async fn follow_unlock_key(c: Arc<Cluster>) {
    let b: Bucket<PkiRecord> = c.bucket(buckets::PKI);
    loop {
        match b.get("ca").await {
            Ok(Some((pki, _))) => {
                if let Err(e) = c.apply_unlock_key(&pki.unlock_key) {
                    tracing::warn!(error = %e, "sealing this manager's keys");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the unlock key"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Managers: keep the server's user list (every node's credentials) in step with the
/// nodes in the store; a change is a reload (SIGHUP).
async fn sync_server(c: Arc<Cluster>) {
    let mut rx = c.t.nodes.subscribe();
    let mut last = String::new();
    c.t.nodes.wait_ready().await;
    loop {
        let text = c.server_config_text();
        if text != last {
            match natsconf::write_private(&c.svc.files.conf(), &text) {
                Ok(()) => {
                    c.server.lock().await.reload();
                    last = text;
                }
                Err(e) => tracing::warn!(error = %e, "writing the swarm server config"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The IP to advertise when none is given: the listen IP, else the address of the
/// interface of the default route.
fn default_advertise(listen_ip: &str) -> Result<String, BusError> {
    if listen_ip != "0.0.0.0" && listen_ip != "::" && !listen_ip.is_empty() {
        return Ok(listen_ip.to_string());
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    if let Some(i) = iface {
        if let Some(ip) = iface_ip(&i) {
            return Ok(ip);
        }
    }
    Err(BusError::invalid("could not find the system's IP address - specify one with --advertise-addr"))
}

fn iface_ip(name: &str) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != name {
            return None;
        }
        a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip().to_string()))
    })
}

/// An `--advertise-addr` as Docker takes it: an IP, `ip:port`, or an interface name.
pub(crate) fn advertise_ip(given: &str, listen_ip: &str) -> Result<String, BusError> {
    if given.is_empty() {
        return default_advertise(listen_ip);
    }
    let (host, _) = local::host_port(given);
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host);
    }
    iface_ip(&host).ok_or_else(|| BusError::invalid(format!("interface {host} has no usable IPv4 address")))
}

/// `docker swarm init`.
pub async fn init(svc: Arc<SwarmService>, req: docker::SwarmInitRequest) -> Result<Arc<Cluster>, BusError> {
    let listen = req.listen_addr.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "0.0.0.0:2377".into());
    let (lip, lport) = local::host_port(&listen);
    let listen = local::join(&lip, lport);
    let advertise = advertise_ip(req.advertise_addr.as_deref().unwrap_or(""), &lip)?;
    let cluster_id = ids::new_id();
    let node_id = ids::new_id();
    let ca = crate::ca::Ca::generate().map_err(BusError::internal)?;
    let cert = ca.sign_node(&node_id, &cluster_id, true, &[advertise.clone(), lip.clone()]).map_err(BusError::internal)?;
    let files = svc.files.clone();
    let cleanup = |e: BusError| {
        let _ = std::fs::remove_dir_all(&files.dir);
        e
    };
    write_tls(&files, &ca.cert_pem, &cert.chain_pem, &cert.key_pem).map_err(|e| cleanup(internal(e)))?;
    let local = LocalState {
        node_id: node_id.clone(),
        cluster_id: cluster_id.clone(),
        role: "manager".into(),
        advertise_addr: advertise.clone(),
        listen_addr: listen.clone(),
        user: format!("n-{node_id}"),
        password: ids::random_hex(24),
        local_user: "local".into(),
        local_password: ids::random_hex(24),
        store_key: ids::random_hex(32),
        sys_password: ids::random_hex(24),
        route_user: "route".into(),
        route_password: ids::random_hex(24),
        managers: Vec::new(),
        clustered: false,
        local_port: 0,

        ..Default::default()
    };
    let mut local = local;
    local.managers = vec![local.own_addr()];
    local.save(&files.state()).map_err(|e| cleanup(internal(e)))?;
    let c = match Cluster::start(svc.clone(), local.clone()).await {
        Ok(c) => c,
        Err(e) => return Err(cleanup(e)),
    };
    if let Err(e) = seed(&c, &req, &ca, &local).await {
        c.stop().await;
        return Err(cleanup(e));
    }
    // Docker's init answers once the node leads its new swarm.
    let mut leading = c.is_leader.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l)).await;
    Ok(c)
}

pub(crate) fn write_tls(files: &natsconf::Files, ca: &str, chain: &str, key: &str) -> std::io::Result<()> {
    natsconf::write_private(&files.ca(), ca)?;
    natsconf::write_private(&files.cert(), chain)?;
    natsconf::write_private(&files.key(), key)
}

/// Docker's defaults for a new swarm's spec, over what the client sent.
fn swarm_spec(given: Option<docker::SwarmSpec>) -> docker::SwarmSpec {
    let mut s = given.unwrap_or_default();
    if s.name.as_deref().unwrap_or("").is_empty() {
        s.name = Some("default".into());
    }
    s.labels.get_or_insert_with(Default::default);
    let o = s.orchestration.get_or_insert_with(Default::default);
    if o.task_history_retention_limit.is_none() {
        o.task_history_retention_limit = Some(5);
    }
    let r = s.raft.get_or_insert_with(Default::default);
    r.snapshot_interval = Some(r.snapshot_interval.filter(|v| *v > 0).unwrap_or(10000));
    r.keep_old_snapshots.get_or_insert(0);
    r.log_entries_for_slow_followers = Some(r.log_entries_for_slow_followers.filter(|v| *v > 0).unwrap_or(500));
    r.election_tick = Some(r.election_tick.filter(|v| *v > 0).unwrap_or(10));
    r.heartbeat_tick = Some(r.heartbeat_tick.filter(|v| *v > 0).unwrap_or(1));
    let d = s.dispatcher.get_or_insert_with(Default::default);
    d.heartbeat_period = Some(d.heartbeat_period.filter(|v| *v > 0).unwrap_or(5_000_000_000));
    let ca = s.ca_config.get_or_insert_with(Default::default);
    ca.node_cert_expiry = Some(ca.node_cert_expiry.filter(|v| *v > 0).unwrap_or(7_776_000_000_000_000));
    s.task_defaults.get_or_insert_with(Default::default);
    let e = s.encryption_config.get_or_insert_with(Default::default);
    e.auto_lock_managers.get_or_insert(false);
    s
}

/// The first records of a new swarm: the cluster, the PKI, this node.
async fn seed(c: &Arc<Cluster>, req: &docker::SwarmInitRequest, ca: &crate::ca::Ca, local: &LocalState) -> Result<(), BusError> {
    let now = crate::now();
    let digest = crate::tls::ca_digest(&ca.cert_pem).map_err(BusError::internal)?;
    let (subject, pk) = ca.issuer_info().map_err(BusError::internal)?;
    let spec = swarm_spec(req.spec.clone());
    let unlock_key = if spec.encryption_config.as_ref().and_then(|e| e.auto_lock_managers).unwrap_or(false) { crate::lock::new_unlock_key() } else { String::new() };
    let rec = ClusterRecord {
        id: local.cluster_id.clone(),
        created_at: now.clone(),
        updated_at: now.clone(),
        spec,
        ca_cert: ca.cert_pem.clone(),
        ca_subject: subject,
        ca_public_key: pk,
        worker_token: ids::join_token(&digest),
        manager_token: ids::join_token(&digest),
        default_addr_pool: addr_pool(req.default_addr_pool.as_deref(), req.subnet_size).0,
        subnet_size: addr_pool(req.default_addr_pool.as_deref(), req.subnet_size).1,
        data_path_port: req.data_path_port.filter(|p| *p > 0).unwrap_or(4789),
        managers_epoch: 1,
    };
    let rev = c.bucket::<ClusterRecord>(buckets::CLUSTER).put("swarm", &rec).await?;
    c.t.cluster.note_put("swarm", rec, rev);
    let pki = PkiRecord {
        ca_key: ca.key_pem.clone(),
        route_user: local.route_user.clone(),
        route_password: local.route_password.clone(),
        unlock_key: unlock_key.clone(),
    };
    c.bucket::<PkiRecord>(buckets::PKI).put("ca", &pki).await?;
    c.apply_unlock_key(&unlock_key)?;
    let node = self_record(c, local, "manager", docker::NodeSpecAvailabilityEnum::ACTIVE)?;
    let rev = c.bucket::<NodeRecord>(buckets::NODES).put(&local.node_id, &node).await?;
    c.t.nodes.note_put(&local.node_id, node, rev);
    c.create_ingress().await
}

/// This node's record as it inits with `role` (what [`node_record`] makes of it).
pub fn self_record(c: &Cluster, local: &LocalState, role: &str, availability: docker::NodeSpecAvailabilityEnum) -> Result<NodeRecord, BusError> {
    node_record(&local.node_id, role, availability, c.svc.host.description(), &local.advertise_addr, &local.listen_addr, &local.user, &local.password)
}

/// A node's record as it enters the swarm (init, or a manager accepting its join):
/// its spec, its description, its address and its bus user on the managers' servers
/// (the password kept only as a bcrypt hash).
#[allow(clippy::too_many_arguments)]
pub fn node_record(
    node_id: &str,
    role: &str,
    availability: docker::NodeSpecAvailabilityEnum,
    description: docker::NodeDescription,
    advertise_addr: &str,
    listen_addr: &str,
    user: &str,
    password: &str,
) -> Result<NodeRecord, BusError> {
    let now = crate::now();
    let (client, leaf, route) = local::advertised(listen_addr, advertise_addr);
    Ok(NodeRecord {
        id: node_id.to_string(),
        created_at: now.clone(),
        updated_at: now,
        spec: docker::NodeSpec {
            name: None,
            labels: Some(Default::default()),
            role: Some(if role == "manager" { docker::NodeSpecRoleEnum::MANAGER } else { docker::NodeSpecRoleEnum::WORKER }),
            availability: Some(availability),
        },
        description,
        state: "ready".into(),
        message: String::new(),
        addr: advertise_addr.to_string(),
        role: role.into(),
        in_store: None,
        bus: NodeBus {
            user: user.to_string(),
            password_hash: bcrypt::hash(password, 6).map_err(internal)?,
            client_addr: client,
            leaf_addr: leaf,
            route_addr: route,
        },
    })
}

/// The default address pool a swarm keeps from `swarm init`, as Moby 20.10 keeps it
/// (answers recorded side by side): no pool (absent or null) is swarmkit's default
/// 10.0.0.0/8 with /24 subnets, whatever SubnetSize says; a pool given, even an empty
/// one (the docker CLI sends `[]`: `docker info` then shows `null`), is kept as given
/// with SubnetSize as given (0 when absent: docker-py fills 24 itself).
pub fn addr_pool(pool: Option<&[String]>, subnet_size: Option<u32>) -> (Vec<String>, u32) {
    match pool {
        None => (vec!["10.0.0.0/8".to_string()], 24),
        Some(p) => (p.to_vec(), subnet_size.unwrap_or(0)),
    }
}

#[cfg(test)]
mod addr_pool_tests {
    use super::addr_pool;

    #[test]
    fn default_address_pool_as_moby_keeps_it() {
        let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (request, what Moby 20.10.24 answered in GET /swarm)
        assert_eq!(addr_pool(None, None), (v(&["10.0.0.0/8"]), 24));
        assert_eq!(addr_pool(None, Some(0)), (v(&["10.0.0.0/8"]), 24));
        assert_eq!(addr_pool(None, Some(16)), (v(&["10.0.0.0/8"]), 24));
        assert_eq!(addr_pool(Some(&[]), None), (v(&[]), 0));
        assert_eq!(addr_pool(Some(&[]), Some(24)), (v(&[]), 24));
        assert_eq!(addr_pool(Some(&[]), Some(20)), (v(&[]), 20));
        assert_eq!(addr_pool(Some(&v(&["2.0.0.0/16"])), None), (v(&["2.0.0.0/16"]), 0));
    }
}
