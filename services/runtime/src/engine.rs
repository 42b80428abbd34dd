//! The runtime's core: the container index, records on disk, lookups by ID, name or
//! prefix, and each container's lifecycle signals (for wait, attach, logs).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use berth_bus::images::ImagesClient;
use berth_bus::network::NetworkClient;
use berth_bus::storage::StorageClient;
use berth_bus::Bus;
use berth_config::{DaemonConfig, Paths};
use bus_schema::event::{Action, Event, EventType};
use bus_schema::BusError;
use tokio::sync::watch;

use crate::deps::{Deps, Events as _, Live, LiveShims, ShimProcess, Shims};
use crate::state::Container;

/// What waiters watch: counters move forward, never back.
#[derive(Debug, Clone, Default)]
pub struct Life {
    pub starts: u64,
    pub exits: u64,
    pub exit_code: i64,
    pub running: bool,
    pub removed: bool,
}

tokio::task_local! {
    /// Set while the plugin manager's call ([`crate::Api::plugin_container`]) runs:
    /// only then does [`Runtime::find`] see managed plugins' containers.
    pub static PLUGIN_MANAGER: ();
}

pub struct Entry {
    pub id: String,
    /// A managed plugin's container: found only by the plugin manager ([`PLUGIN_MANAGER`]).
    pub plugin: bool,
    pub dir: PathBuf,
    rec: Mutex<Container>,
    /// Serialises lifecycle operations (start, stop, remove, ...) on one container.
    pub op: tokio::sync::Mutex<()>,
    shim: Mutex<Option<Arc<dyn ShimProcess>>>,
    pub life: watch::Sender<Life>,
}

impl Entry {
    pub fn new(rec: Container, dir: PathBuf) -> Arc<Entry> {
        let life = Life { running: rec.state.running(), exit_code: rec.state.exit_code, ..Default::default() };
        Arc::new(Entry {
            id: rec.id.clone(),
            plugin: rec.plugin,
            dir,
            rec: Mutex::new(rec),
            op: tokio::sync::Mutex::new(()),
            shim: Mutex::new(None),
            life: watch::channel(life).0,
        })
    }

    /// A copy of the record.
    pub fn get(&self) -> Container {
        self.rec.lock().unwrap().clone()
    }

    /// Change the record in memory (call `save` to persist).
    pub fn update<T>(&self, f: impl FnOnce(&mut Container) -> T) -> T {
        f(&mut self.rec.lock().unwrap())
    }

    /// Persist the record atomically.
    pub fn save(&self) -> Result<(), BusError> {
        let text = serde_json::to_vec(&*self.rec.lock().unwrap()).map_err(|e| BusError::internal(e.to_string()))?;
        berth_config::paths::write_atomic(&self.dir.join("config.v2.json"), &text)
            .map_err(|e| BusError::internal(format!("saving container {}: {e}", self.id)))
    }

    pub fn shim(&self) -> Option<Arc<dyn ShimProcess>> {
        self.shim.lock().unwrap().clone()
    }

    pub fn set_shim(&self, s: Option<Arc<dyn ShimProcess>>) {
        *self.shim.lock().unwrap() = s;
    }

    pub fn signal(&self, f: impl FnOnce(&mut Life)) {
        self.life.send_modify(f);
    }
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, Arc<Entry>>,
    by_name: HashMap<String, String>,
}

/// The runtime, generic over the services it calls ([`Deps`]; [`Live`]: over the bus).
pub struct Runtime<D: Deps = Live> {
    pub bus: D::Bus,
    pub storage: D::Storage,
    pub network: D::Network,
    pub images: D::Images,
    /// Launches the containers' shims ([`LiveShims`]: `shim_bin`).
    pub shims: Arc<dyn Shims>,
    pub cfg: DaemonConfig,
    pub paths: Paths,
    /// `<root>/runtime/<driver>`: containers are recorded per storage driver.
    pub dir: PathBuf,
    pub driver: String,
    pub shim_bin: PathBuf,
    pub cgroup_parent: String,
    index: RwLock<Index>,
    pub execs: Mutex<HashMap<String, Arc<crate::io::ExecEntry>>>,
    /// Held (read) by work that goes on after an answer (`--rm` giving back its
    /// sandbox and layers); the service's shutdown takes it (write) to let it finish.
    pub background: Arc<tokio::sync::RwLock<()>>,
    /// Containers gone for the API whose layers storage could not take back yet
    /// (their records say Removing): finished when storage is back.
    pub pending_removals: Mutex<HashMap<String, (Arc<Entry>, Option<bool>)>>,
    /// Containers whose sandbox the network service could not take back (it was
    /// down): given back when it is back, unless the container runs again.
    pub pending_sandboxes: Mutex<std::collections::HashSet<String>>,
}

impl Runtime {
    pub fn new(bus: Bus, cfg: DaemonConfig, paths: Paths) -> Runtime {
        let shim_bin = std::env::var_os(berth_config::env::SHIM)
            .map(PathBuf::from)
            .unwrap_or_else(|| sibling_binary("berth-shim"));
        Runtime::with_deps(
            StorageClient::new(bus.clone()),
            NetworkClient::new(bus.clone()),
            ImagesClient::new(bus.clone()),
            bus,
            Arc::new(LiveShims(shim_bin.clone())),
            shim_bin,
            cfg,
            paths,
        )
    }
}

impl<D: Deps> Runtime<D> {
    #[allow(clippy::too_many_arguments)]
    pub fn with_deps(
        storage: D::Storage,
        network: D::Network,
        images: D::Images,
        bus: D::Bus,
        shims: Arc<dyn Shims>,
        shim_bin: PathBuf,
        cfg: DaemonConfig,
        paths: Paths,
    ) -> Runtime<D> {
        let driver = cfg.storage_driver().to_string();
        let dir = paths.runtime().join(&driver);
        let cgroup_parent = cfg
            .other
            .get("cgroup-parent")
            .and_then(|v| v.as_str())
            .map(|s| s.trim_matches('/').to_string())
            .unwrap_or_else(|| "berth".to_string());
        Runtime {
            storage,
            network,
            images,
            bus,
            shims,
            cfg,
            paths,
            dir,
            driver,
            shim_bin,
            cgroup_parent,
            index: RwLock::new(Index::default()),
            execs: Mutex::new(HashMap::new()),
            background: Default::default(),
            pending_removals: Default::default(),
            pending_sandboxes: Default::default(),
        }
    }

    /// The cgroup parent of this node's containers, claimed host-wide so that two
    /// nodes on one host never share one (see `claims`); remembered in the data root
    /// so that a node keeps its own across restarts.
    pub fn node_cgroup_parent(&self) -> anyhow::Result<String> {
        let configured = self
            .cfg
            .other
            .get("cgroup-parent")
            .and_then(|v| v.as_str())
            .map(|s| s.trim_matches('/').to_string())
            .filter(|s| !s.is_empty());
        let file = self.paths.runtime().join("cgroup-parent");
        let previous = std::fs::read_to_string(&file).ok().map(|s| s.trim().to_string());
        let p = crate::claims::cgroup_parent(
            std::path::Path::new(crate::claims::DIR),
            configured.as_deref(),
            previous.as_deref(),
            self.bus.node(),
            self.paths.root(),
        )
        .map_err(|t| anyhow::anyhow!("{t}: give this node a \"cgroup-parent\" of its own in daemon.json"))?;
        if configured.is_none() && previous.as_deref() != Some(p.as_str()) {
            berth_config::paths::write_atomic(&file, p.as_bytes())?;
        }
        Ok(p)
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.dir.join("containers")
    }

    /// A container's short bundle dir for the shim: unix socket paths are limited to
    /// 108 bytes, so it lives under `<root>/runtime/b/<short id>`.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.paths.runtime().join("b").join(&id[..12])
    }

    /// Load every recorded container.
    pub fn load(&self) -> Vec<Arc<Entry>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.containers_dir()) else { return out };
        for e in rd.flatten() {
            let dir = e.path();
            let Ok(text) = std::fs::read(dir.join("config.v2.json")) else { continue };
            match serde_json::from_slice::<Container>(&text) {
                Ok(rec) => {
                    let entry = Entry::new(rec, dir);
                    self.insert(entry.clone());
                    out.push(entry);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "unreadable container record"),
            }
        }
        // link names once every child is known
        for e in &out {
            self.restore_links(&e.get());
        }
        out
    }

    pub fn insert(&self, e: Arc<Entry>) {
        let name = e.get().name;
        let mut ix = self.index.write().unwrap();
        ix.by_name.insert(name, e.id.clone());
        ix.by_id.insert(e.id.clone(), e);
    }

    /// Drop a container from the index with its names: its own, its links' (as the
    /// parent) and the link names that name it (as a child; the parent keeps the link,
    /// which then fails its start as Moby's does).
    pub fn forget(&self, id: &str) {
        let mut ix = self.index.write().unwrap();
        if let Some(e) = ix.by_id.remove(id) {
            let name = e.get().name;
            if ix.by_name.get(&name).map(|x| x == id).unwrap_or(false) {
                ix.by_name.remove(&name);
            }
            let prefix = format!("{name}/");
            ix.by_name.retain(|n, v| !(n.contains('/') && (v.as_str() == id || n.starts_with(&prefix))));
        }
    }

    /// Reserve `name` for `id`; Conflict if another container has it.
    pub fn reserve_name(&self, name: &str, id: &str) -> Result<(), BusError> {
        let mut ix = self.index.write().unwrap();
        if let Some(other) = ix.by_name.get(name) {
            if other != id {
                return Err(BusError::conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
        }
        ix.by_name.insert(name.to_string(), id.to_string());
        Ok(())
    }

    pub fn release_name(&self, name: &str, id: &str) {
        let mut ix = self.index.write().unwrap();
        if ix.by_name.get(name).map(|x| x == id).unwrap_or(false) {
            ix.by_name.remove(name);
        }
    }

    /// A container with this exact id is recorded, or being created (its name is held).
    pub fn knows(&self, id: &str) -> bool {
        let ix = self.index.read().unwrap();
        ix.by_id.contains_key(id) || ix.by_name.values().any(|v| v == id)
    }

    pub fn name_taken(&self, name: &str) -> bool {
        self.index.read().unwrap().by_name.contains_key(name)
    }

    /// Find by name only (with or without its leading '/'; link names too).
    pub fn find_name(&self, name: &str) -> Option<Arc<Entry>> {
        let ix = self.index.read().unwrap();
        let id = ix.by_name.get(name.strip_prefix('/').unwrap_or(name))?;
        ix.by_id.get(id).cloned()
    }

    /// Link names (`/<parent>/<alias>`) by the ID of the container they name.
    pub fn link_names(&self) -> HashMap<String, Vec<String>> {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (n, id) in self.index.read().unwrap().by_name.iter().filter(|(n, _)| n.contains('/')) {
            m.entry(id.clone()).or_default().push(format!("/{n}"));
        }
        m
    }

    /// A container by full ID, name (with or without '/') or unique ID prefix, as the
    /// container API finds one: a
    /// managed plugin's container only inside [`PLUGIN_MANAGER`] (Moby keeps plugins in
    /// containerd's plugin namespace, out of `docker inspect`/`rm`/`stop`).
    pub fn find(&self, key: &str) -> Result<Arc<Entry>, BusError> {
        let plugins = PLUGIN_MANAGER.try_with(|_| ()).is_ok();
        self.find_where(key, |e| plugins || !e.plugin)
    }

    /// Any container, a plugin's too: the runtime's own lookups.
    pub fn find_any(&self, key: &str) -> Result<Arc<Entry>, BusError> {
        self.find_where(key, |_| true)
    }

    fn find_where(&self, key: &str, visible: impl Fn(&Entry) -> bool) -> Result<Arc<Entry>, BusError> {
        let ix = self.index.read().unwrap();
        if let Some(e) = ix.by_id.get(key).filter(|e| visible(e)) {
            return Ok(e.clone());
        }
        let name = key.strip_prefix('/').unwrap_or(key);
        if let Some(id) = ix.by_name.get(name) {
            if let Some(e) = ix.by_id.get(id).filter(|e| visible(e)) {
                return Ok(e.clone());
            }
        }
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut hits = ix.by_id.iter().filter(|(id, e)| id.starts_with(key) && visible(e));
            if let Some((_, e)) = hits.next() {
                if hits.next().is_some() {
                    return Err(BusError::invalid(format!("multiple IDs found with provided prefix: {key}")));
                }
                return Ok(e.clone());
            }
        }
        Err(BusError::not_found(format!("No such container: {key}")))
    }

    pub fn all(&self) -> Vec<Arc<Entry>> {
        self.index.read().unwrap().by_id.values().cloned().collect()
    }

    /// Publish a container event with Docker's attributes (image, name, labels, extra).
    pub async fn event(&self, c: &Container, action: Action, extra: &[(&str, String)]) {
        self.publish(c, Event::now(EventType::Container, action, c.id.clone()), extra).await
    }

    /// An event whose action carries Docker's detail (`exec_start: sh -c true`).
    pub async fn event_with(&self, c: &Container, action: Action, detail: &str, extra: &[(&str, String)]) {
        self.publish(c, Event::now(EventType::Container, action, c.id.clone()).detail(detail), extra).await
    }

    async fn publish(&self, c: &Container, ev: Event, extra: &[(&str, String)]) {
        if c.plugin {
            return; // a managed plugin's container: not the user's (Moby's plugin namespace)
        }
        let mut ev = ev
            .attr("image", c.config.image.clone().unwrap_or_default())
            .attr("name", c.name.clone());
        if let Some(l) = &c.config.labels {
            for (k, v) in l {
                ev = ev.attr(k.clone(), v.clone());
            }
        }
        for (k, v) in extra {
            ev = ev.attr(*k, v.clone());
        }
        self.bus.publish_event(&ev).await;
    }
}

fn sibling_binary(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

pub use berth_fsutil::mkdir_in_root;
