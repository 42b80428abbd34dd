//! `docker stop`: the stop signal, then SIGKILL after the timeout.

use bus_schema::event::Action;
use std::sync::Arc;
use std::time::Duration;

use bus_schema::BusError;

use crate::engine::{Entry, Runtime};
use crate::state::Status;

use super::parse_signal;

impl<D: crate::deps::Deps> Runtime<D> {
    /// `docker stop`: the stop signal, then SIGKILL after the timeout.
    pub async fn stop(self: &Arc<Self>, key: &str, signal: Option<String>, timeout: Option<i64>) -> Result<(), BusError> {
        let e = self.find(key)?;
        e.get().can_stop()?;
        self.stop_entry(&e, signal, timeout).await?;
        let c = e.get();
        self.event(&c, Action::Stop, &[]).await;
        Ok(())
    }

    pub(crate) async fn stop_entry(self: &Arc<Self>, e: &Arc<Entry>, signal: Option<String>, timeout: Option<i64>) -> Result<(), BusError> {
        let c = e.get();
        e.update(|c| c.manually_stopped = true);
        let _ = e.save();
        if c.state.status == Status::Restarting {
            // a pending restart is cancelled by the flag
            e.update(|c| c.state.status = Status::Exited);
            let _ = e.save();
            return Ok(());
        }
        let sig = match signal.as_deref().filter(|s| !s.is_empty()).or(c.config.stop_signal.as_deref().filter(|s| !s.is_empty())) {
            Some(s) => parse_signal(s)?,
            None => 15,
        };
        let t = timeout.or(c.config.stop_timeout).unwrap_or(10);
        let mut life = e.life.subscribe();
        let exits = life.borrow().exits;
        if c.state.status == Status::Paused {
            let _ = crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await;
        }
        if t != 0 {
            self.send_signal(e, sig).await?;
        }
        let exited = |life: &mut tokio::sync::watch::Receiver<crate::engine::Life>| {
            let l = life.borrow();
            l.exits > exits || !l.running
        };
        let waited = if t < 0 {
            let _ = life.wait_for(|l| l.exits > exits || !l.running).await;
            true
        } else {
            tokio::time::timeout(Duration::from_secs(t as u64), life.wait_for(|l| l.exits > exits || !l.running))
                .await
                .is_ok()
        };
        if !waited && !exited(&mut life) {
            self.send_signal(e, 9).await?;
            let _ = tokio::time::timeout(Duration::from_secs(30), life.wait_for(|l| l.exits > exits || !l.running)).await;
        }
        Ok(())
    }

    pub(crate) async fn send_signal(&self, e: &Arc<Entry>, sig: i32) -> Result<(), BusError> {
        let c = e.get();
        if let Some(shim) = e.shim() {
            shim.kill(sig, false).await.map_err(|err| BusError::internal(format!("cannot kill container {}: {err}", c.id)))?;
        } else if c.state.pid > 0 {
            unsafe { libc::kill(c.state.pid as i32, sig) };
        }
        self.event(&c, Action::Kill, &[("signal", sig.to_string())]).await;
        Ok(())
    }
}
