//! `docker rm`, `--rm`, and the removals finished when storage is back.

use berth_bus::network::NetworkApi as _;
use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
use std::sync::Arc;
use std::time::Duration;

use bus_schema::network::SandboxRemove;
use bus_schema::storage::RwLayerRemove;
use bus_schema::{BusError, ErrorKind};

use crate::engine::{Entry, Runtime};
use crate::state::{Container, Status};

impl<D: crate::deps::Deps> Runtime<D> {
    /// `docker rm`.
    pub async fn remove(self: &Arc<Self>, key: &str, force: bool, volumes: bool) -> Result<(), BusError> {
        let e = self.find(key)?;
        // an operation in progress decides whether the container runs (a start whose
        // client left — its gateway or the bus died — goes on): wait for it, or the
        // removal below would take the layer and the record of a container whose shim
        // still runs (seen in the fault soak)
        drop(e.op.lock().await);
        let c = e.get();
        c.can_remove(force)?;
        if c.state.running() || c.state.status == Status::Restarting {
            if c.state.status == Status::Restarting {
                e.update(|c| {
                    c.manually_stopped = true;
                    c.state.status = Status::Exited;
                });
            } else {
                self.kill_and_wait(&e).await?;
            }
        }
        self.remove_entry(&e, volumes).await
    }

    async fn kill_and_wait(self: &Arc<Self>, e: &Arc<Entry>) -> Result<(), BusError> {
        let mut life = e.life.subscribe();
        let exits = life.borrow().exits;
        e.update(|c| c.manually_stopped = true);
        let c = e.get();
        if c.state.status == Status::Paused {
            let _ = crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await;
        }
        if let Err(err) = self.send_signal(e, 9).await {
            // a shim that went away with its container (the exit is being recorded:
            // `rm -f` racing the container's own end, or a shim that died) is not an
            // error when the exit follows
            let exited = tokio::time::timeout(Duration::from_secs(5), life.wait_for(|l| l.exits > exits || !l.running)).await;
            return if exited.is_ok_and(|r| r.is_ok()) { Ok(()) } else { Err(err) };
        }
        if tokio::time::timeout(Duration::from_secs(30), life.wait_for(|l| l.exits > exits || !l.running))
            .await
            .is_err()
        {
            return Err(BusError::internal(format!("could not kill container {}", e.id)));
        }
        Ok(())
    }

    /// Remove a stopped container: its layers, volume references, files, record. The
    /// record says Removing on disk first (a restart finishes the removal). When
    /// storage cannot give the layers back (it is down), nothing is lost or leaked:
    /// the container stays, marked Dead with the error, as Docker marks it, and a
    /// later `docker rm` tries again.
    pub(crate) async fn remove_entry(self: &Arc<Self>, e: &Arc<Entry>, volumes: bool) -> Result<(), BusError> {
        let _g = e.op.lock().await;
        let c = e.get();
        if c.state.status == Status::Removing {
            return Ok(());
        }
        if c.state.running() || c.state.status == Status::Restarting {
            // started again since the caller looked (a start took the lock first)
            return Err(BusError::conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                c.name
            )));
        }
        e.update(|c| c.state.status = Status::Removing);
        // the exit gave the sandbox back already, unless the network service could not
        // be reached then (idempotent: nothing to do in the network service otherwise)
        let _ = self.network.sandbox_remove(SandboxRemove { container_id: c.id.clone() }).await;
        let _ = e.save();
        if let Err(err) = self.give_back(e, &c, Some(volumes)).await {
            let err = BusError::internal(format!(
                "container {}: driver \"{}\" failed to remove root filesystem: {}",
                c.id, self.driver, err.message
            ));
            e.update(|c| {
                c.state.status = Status::Dead;
                c.state.error = err.message.clone();
            });
            let _ = e.save();
            return Err(err);
        }
        self.forget(&c.id);
        for id in &c.exec_ids {
            self.execs.lock().unwrap().remove(id);
        }
        self.event(&c, Action::Destroy, &[]).await;
        e.signal(|l| l.removed = true);
        Ok(())
    }

    /// `--rm` after the exit: the container is gone for the API at once (record
    /// marked Removing on disk, forgotten, anonymous volumes and sandbox removed,
    /// `destroy`, waiters answered), and its layers and files are given back in the
    /// background. A restart of the service in between finishes the removal from
    /// the Removing record.
    pub(crate) async fn auto_remove(self: &Arc<Self>, e: &Arc<Entry>) {
        let c = {
            let _g = e.op.lock().await;
            let c = e.get();
            if c.state.status == Status::Removing {
                return;
            }
            e.update(|c| c.state.status = Status::Removing);
            let _ = e.save();
            self.forget(&c.id);
            for id in &c.exec_ids {
                self.execs.lock().unwrap().remove(id);
            }
            c
        };
        // anonymous volumes go before the answer, as in Docker (`volume ls` after
        // `run --rm -v /x` shows none); no bus call when there are none
        crate::mounts::release(self, &c.id, &c.mounts, true).await;
        // the network goes before the answer too: a node stopped right after must not
        // find the sandbox still there (its table and FORWARD rules would stay)
        self.remove_sandbox(&c.id).await;
        self.event(&c, Action::Destroy, &[]).await;
        e.signal(|l| l.removed = true);
        let (rt, e) = (self.clone(), e.clone());
        let bg = self.background.clone().read_owned().await;
        tokio::spawn(async move {
            let _bg = bg;
            rt.finish_removal(&e, None).await;
        });
    }

    /// Give back what a container that is gone for the API (Removing) held. When
    /// storage cannot take its layers now, the record stays Removing and the removal
    /// is finished when storage is back ([`Runtime::reconcile`]).
    pub(crate) async fn finish_removal(self: &Arc<Self>, e: &Arc<Entry>, volumes: Option<bool>) {
        let _g = e.op.lock().await;
        let c = e.get();
        match self.give_back(e, &c, volumes).await {
            Ok(()) => {
                self.pending_removals.lock().unwrap().remove(&c.id);
            }
            Err(err) => {
                tracing::warn!(id = %c.id, error = %err, "giving back a removed container's layers failed; again when storage is back");
                self.pending_removals.lock().unwrap().insert(c.id.clone(), (e.clone(), volumes));
            }
        }
    }

    /// What a removed container held: its layers, volume references (and anonymous
    /// volumes with `Some(true)`; None when they were given back already), its files.
    /// Nothing but the layers is touched when they cannot be given back.
    async fn give_back(self: &Arc<Self>, e: &Arc<Entry>, c: &Container, volumes: Option<bool>) -> Result<(), BusError> {
        match self.storage.rw_layer_remove(RwLayerRemove { id: c.id.clone() }).await {
            Ok(()) => {}
            Err(err) if err.is(ErrorKind::NotFound) => {}
            Err(err) => return Err(err),
        }
        if let Some(v) = volumes {
            crate::mounts::release(self, &c.id, &c.mounts, v).await;
        }
        let _ = std::fs::remove_dir_all(&e.dir);
        let _ = std::fs::remove_dir_all(self.bundle_dir(&c.id));
        Ok(())
    }

    /// Give a container's sandbox back to the network service; when it cannot take it
    /// now (down, or it died under the request), again when it is back
    /// ([`Runtime::reconcile_network`]).
    pub(crate) async fn remove_sandbox(&self, id: &str) {
        match self.network.sandbox_remove(SandboxRemove { container_id: id.to_string() }).await {
            Ok(()) => {}
            Err(err) if err.is(ErrorKind::NotFound) => {}
            Err(err) => {
                tracing::warn!(id, error = %err, "giving back a sandbox failed; again when the network is back");
                self.pending_sandboxes.lock().unwrap().insert(id.to_string());
            }
        }
    }
}
