//! `docker rename`.

use berth_bus::network::NetworkApi as _;
use bus_schema::event::Action;
use std::sync::Arc;

use bus_schema::BusError;

use crate::engine::Runtime;

impl<D: crate::deps::Deps> Runtime<D> {
    /// `docker rename`.
    pub async fn rename(self: &Arc<Self>, key: &str, new: &str) -> Result<(), BusError> {
        let e = self.find(key)?;
        let _g = e.op.lock().await;
        let new = new.strip_prefix('/').unwrap_or(new);
        if !crate::names::valid(new) {
            return Err(BusError::invalid(format!("Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")));
        }
        let old = e.get().name;
        if old == new {
            return Err(BusError::invalid("Renaming a container with the same name as its current name"));
        }
        self.reserve_name(new, &e.id)?;
        self.release_name(&old, &e.id);
        // its link names follow (`/<new>/<alias>`), as Moby moves them
        self.release_links(&old, &e.get().links);
        e.update(|c| c.name = new.to_string());
        self.restore_links(&e.get());
        let _ = e.save();
        if e.get().state.running() {
            let _ = self
                .network
                .sandbox_rename(bus_schema::network::SandboxRename { container_id: e.id.clone(), name: new.to_string() })
                .await;
        }
        let c = e.get();
        self.event(&c, Action::Rename, &[("oldName", format!("/{old}"))]).await;
        Ok(())
    }
}
