//! What the runtime owns on the host, compared with its records: when the service
//! starts (after `recover`) and whenever storage starts again (its instance notice).
//!
//! * removals that storage could not finish (it was down) are finished;
//! * container read-write layers in storage (64-hex ids: the builder's are `build-*`)
//!   that no record knows, nor a create in flight (it holds its name), are removed:
//!   a create or a removal a fault cut in two;
//! * mounted layers of containers that do not run (their exit could not unmount:
//!   storage was down) are unmounted;
//! * at start: bundle directories without a record (their shim, if any, kills its
//!   container first) and container cgroups without a running container go.
//!
//! Each step skips a container whose lifecycle lock is held: a start or a removal in
//! progress owns its layer and mount.

use std::sync::Arc;

use berth_bus::storage::StorageApi as _;
use bus_schema::storage::{RwLayerList, RwLayerRemove, RwLayerUnmount};
use bus_schema::Service;
use futures_util::StreamExt;

use crate::engine::Runtime;
use crate::state::Status;

/// Container ids are 64 hex digits; other container layers are not the runtime's.
fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Runtime {
    /// Reconcile with storage again each time it starts.
    pub fn follow_peers(self: &Arc<Self>) {
        let rt = self.clone();
        tokio::spawn(async move {
            let mut notices = match rt.bus.instance_notices().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the node's services");
                    return;
                }
            };
            while let Some(n) = notices.next().await {
                if let berth_bus::InstanceNotice::Started(s) = n {
                    if s.service == Service::Storage {
                        tracing::info!(pid = s.pid, "storage started: reconciling container layers");
                        rt.reconcile_storage().await;
                    } else if s.service == Service::Network {
                        rt.reconcile_network().await;
                    }
                }
            }
        });
    }
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// Everything, at the service's start.
    pub async fn reconcile(self: &Arc<Self>) {
        self.reconcile_storage().await;
        self.reconcile_bundles().await;
        self.reconcile_cgroups();
    }

    /// Finish pending removals, then remove orphan layers and unmount stray mounts.
    pub async fn reconcile_storage(self: &Arc<Self>) {
        let pending: Vec<_> = self.pending_removals.lock().unwrap().values().cloned().collect();
        for (e, volumes) in pending {
            self.finish_removal(&e, volumes).await;
        }
        let layers = match self.storage.rw_layer_list(RwLayerList {}).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list container layers");
                return;
            }
        };
        for l in layers.into_iter().filter(|l| is_container_id(&l.id)) {
            if !self.knows(&l.id) && !self.pending_removals.lock().unwrap().contains_key(&l.id) {
                tracing::info!(id = %l.id, "removing a container layer no record knows");
                if let Err(e) = self.storage.rw_layer_remove(RwLayerRemove { id: l.id.clone() }).await {
                    tracing::warn!(id = %l.id, error = %e, "removing an orphan container layer");
                }
                continue;
            }
            if l.mounts == 0 {
                continue;
            }
            let Ok(e) = self.find_any(&l.id) else { continue };
            let Ok(_g) = e.op.try_lock() else { continue };
            let c = e.get();
            if c.state.running() || c.state.status == Status::Restarting {
                continue;
            }
            tracing::info!(id = %l.id, "unmounting the layer of a container that does not run");
            for _ in 0..l.mounts {
                if let Err(err) = self.storage.rw_layer_unmount(RwLayerUnmount { id: l.id.clone() }).await {
                    tracing::warn!(id = %l.id, error = %err, "unmounting a stray container layer");
                    break;
                }
            }
        }
    }

    /// Sandboxes the network service could not take back: given back now, unless their
    /// container runs again (checked under its lifecycle lock).
    pub async fn reconcile_network(self: &Arc<Self>) {
        let ids: Vec<String> = self.pending_sandboxes.lock().unwrap().drain().collect();
        for id in ids {
            if let Some(e) = self.find_any(&id).ok().filter(|e| e.id == id) {
                let _g = e.op.lock().await;
                if e.get().state.running() {
                    continue;
                }
                tracing::info!(id = %id, "giving back a sandbox the network could not take before");
                self.remove_sandbox(&id).await;
            } else {
                tracing::info!(id = %id, "giving back the sandbox of a removed container");
                self.remove_sandbox(&id).await;
            }
        }
    }

    /// Bundle directories (`<root>/runtime/b/<short id>`) no record owns.
    async fn reconcile_bundles(self: &Arc<Self>) {
        let dir = self.paths.runtime().join("b");
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        let owned: std::collections::HashSet<String> = self
            .all()
            .iter()
            .map(|e| e.id[..12].to_string())
            .chain(self.pending_removals.lock().unwrap().keys().map(|id| id[..12].to_string()))
            .collect();
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if owned.contains(&name) || !ent.path().is_dir() {
                continue;
            }
            let bundle = ent.path();
            if let Ok(shim) = crate::shim_client::Shim::connect(&bundle).await {
                tracing::info!(bundle = %bundle.display(), "killing the container of a shim no record knows");
                let _ = shim.kill(9, true).await;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), shim.wait()).await;
            }
            tracing::info!(bundle = %bundle.display(), "removing a bundle no record knows");
            let _ = std::fs::remove_dir_all(&bundle);
        }
    }

    /// Container cgroups under the cgroup parent with no running container: empty
    /// ones are removed (a shim that died cannot remove its own).
    fn reconcile_cgroups(self: &Arc<Self>) {
        let Ok(layout) = crate::cgroups::layout() else { return };
        let parent = layout.cgroup(&self.cgroup_parent);
        let mut names = std::collections::BTreeSet::new();
        for h in &layout.hierarchies {
            if let Ok(rd) = std::fs::read_dir(parent.dir(h)) {
                names.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()));
            }
        }
        for name in names.into_iter().filter(|n| is_container_id(n)) {
            let running = self.find(&name).is_ok_and(|e| e.get().state.running());
            if !running {
                let cg = layout.cgroup(&format!("{}/{name}", self.cgroup_parent));
                if cg.procs().map(|p| p.is_empty()).unwrap_or(true) {
                    tracing::info!(id = %name, "removing the cgroup of a container that does not run");
                    let _ = cg.remove_if_empty();
                }
            }
        }
    }
}
