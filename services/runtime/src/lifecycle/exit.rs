//! A container's exit: recorded, what it held given back, then removed (`--rm`) or
//! restarted as its policy says.

use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
use std::sync::Arc;

use berth_rules::clock;
use bus_schema::storage::RwLayerUnmount;
use bus_schema::docker;

use crate::deps::ShimProcess;
use crate::engine::{Entry, Runtime};
use crate::shim_client::ExitStatus;
use crate::state::Status;

use super::restart_delay;

impl<D: crate::deps::Deps> Runtime<D> {
    /// Wait for the shim to report the exit, then record it.
    pub(crate) async fn monitor(self: Arc<Self>, e: Arc<Entry>, shim: Arc<dyn ShimProcess>) {
        let st = match shim.wait().await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(id = %e.id, error = %err, "lost the shim; reading its exit file");
                crate::shim_client::read_exit(&self.bundle_dir(&e.id)).unwrap_or(ExitStatus {
                    code: 137,
                    signal: Some(9),
                    oom_killed: false,
                    finished_at: clock::now_rfc3339(),
                })
            }
        };
        self.on_exit(&e, st).await;
    }

    /// Record an exit, give back what the running container held, then remove or
    /// restart it as its configuration says.
    pub(crate) async fn on_exit(self: &Arc<Self>, e: &Arc<Entry>, st: ExitStatus) {
        let c = {
            let _g = e.op.lock().await;
            let c = e.get();
            if !c.state.running() {
                return;
            }
            // `--rm`: the network and the layer go with the removal (auto_remove)
            let auto_remove = c.host_config.auto_remove.unwrap_or(false);
            if !auto_remove {
                // an unmount that storage cannot do now is done when it is back
                // (reconcile_storage), and so is a sandbox the network cannot remove
                let layer = RwLayerUnmount { id: c.id.clone() };
                let _ = tokio::join!(
                    self.remove_sandbox(&c.id),
                    self.storage.rw_layer_unmount(layer),
                    crate::mounts::unmount(self, &c.id, &c.mounts)
                );
            }
            e.set_shim(None);
            e.update(|c| {
                c.state.status = Status::Exited;
                c.state.pid = 0;
                c.state.exit_code = st.code as i64;
                c.state.oom_killed = st.oom_killed;
                c.state.finished_at = st.finished_at.clone();
                c.state.health = c.state.health.take().map(|mut h| {
                    h.status = Some(docker::HealthStatusEnum::UNHEALTHY);
                    h
                });
                c.sandbox_key.clear();
                c.networks.clear();
                c.ports.clear();
            });
            if let Some(lp) = c.log_plugin.clone() {
                e.update(|c| c.log_plugin = None);
                self.stop_logging(lp);
            }
            // `--rm` marks the record Removing at once (auto_remove): one write, not two
            if !auto_remove {
                let _ = e.save();
            }
            e.get()
        };
        if st.oom_killed {
            self.event(&c, Action::Oom, &[]).await;
        }
        self.event(&c, Action::Die, &[("exitCode", st.code.to_string())]).await;
        e.signal(|l| {
            l.exits += 1;
            l.running = false;
            l.exit_code = st.code as i64;
        });
        if c.host_config.auto_remove.unwrap_or(false) {
            self.auto_remove(e).await;
            return;
        }
        if let Some(delay) = restart_delay(&c, st.code as i64) {
            e.update(|c| c.state.status = Status::Restarting);
            let _ = e.save();
            let rt = self.clone();
            let e2 = e.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _g = e2.op.lock().await;
                let c = e2.get();
                if c.state.status != Status::Restarting || c.manually_stopped {
                    return;
                }
                e2.update(|c| {
                    c.restart_count += 1;
                    c.state.status = Status::Exited;
                });
                if let Err(err) = rt.start_locked(&e2).await {
                    tracing::warn!(id = %e2.id, error = %err, "restart failed");
                } else {
                    let c = e2.get();
                    rt.event(&c, Action::Restart, &[]).await;
                }
            });
        }
    }
}
