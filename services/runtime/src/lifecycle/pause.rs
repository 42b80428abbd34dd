//! `docker pause`/`unpause`: the container's cgroup frozen or thawed.

use bus_schema::event::Action;
use std::sync::Arc;

use bus_schema::BusError;

use crate::engine::Runtime;
use crate::state::Status;

impl<D: crate::deps::Deps> Runtime<D> {
    pub fn cgroup_rel(&self, id: &str) -> String {
        format!("{}/{}", self.cgroup_parent, id)
    }

    pub async fn pause(self: &Arc<Self>, key: &str, pause: bool) -> Result<(), BusError> {
        let e = self.find(key)?;
        let _g = e.op.lock().await;
        let c = e.get();
        if pause {
            c.can_pause()?;
            if let Err(err) = crate::cgroups::freeze(&self.cgroup_rel(&c.id)).await {
                // its cgroup is gone: the process exited and its exit is not
                // recorded yet (a `start` then `commit` of a short command)
                if err.kind() == std::io::ErrorKind::NotFound {
                    return Err(BusError::conflict(format!("container {} is not running", c.id)));
                }
                return Err(BusError::internal(format!("cannot pause container {}: {err}", c.id)));
            }
            e.update(|c| c.state.status = Status::Paused);
        } else {
            c.can_unpause()?;
            crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await.map_err(|err| BusError::internal(format!("cannot unpause container {}: {err}", c.id)))?;
            e.update(|c| c.state.status = Status::Running);
        }
        let _ = e.save();
        let c = e.get();
        self.event(&c, if pause { Action::Pause } else { Action::Unpause }, &[]).await;
        Ok(())
    }
}
