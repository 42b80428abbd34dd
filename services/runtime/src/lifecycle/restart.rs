//! `docker restart`, and the restart policies' delays.

use bus_schema::event::Action;
use std::sync::Arc;
use std::time::Duration;

use berth_rules::clock;
use bus_schema::BusError;

use crate::engine::Runtime;
use crate::state::{Container, Status};

/// How long to wait before restarting, or None when the policy says no.
pub fn restart_delay(c: &Container, exit_code: i64) -> Option<Duration> {
    if c.manually_stopped {
        return None;
    }
    let rp = c.host_config.restart_policy.clone().unwrap_or_default();
    let name = rp.name.map(|n| n.to_string()).unwrap_or_default();
    let restart = match name.as_str() {
        "always" | "unless-stopped" => true,
        "on-failure" => {
            let max = rp.maximum_retry_count.unwrap_or(0);
            exit_code != 0 && (max == 0 || c.restart_count < max)
        }
        _ => false,
    };
    if !restart {
        return None;
    }
    // Docker's backoff: 100 ms doubling per quick restart, reset after 10 s of running.
    let ran = match (clock::parse_rfc3339(&c.state.started_at), clock::parse_rfc3339(&c.state.finished_at)) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0,
    };
    let n = if ran >= 10 { 0 } else { c.restart_count.min(10) as u32 };
    Some(Duration::from_millis((100u64 << n).min(60_000)))
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// `docker restart`: stop (if running), then start.
    pub async fn restart(self: &Arc<Self>, key: &str, signal: Option<String>, timeout: Option<i64>) -> Result<(), BusError> {
        let e = self.find(key)?;
        if e.get().state.running() {
            self.stop_entry(&e, signal, timeout).await?;
            let c = e.get();
            self.event(&c, Action::Stop, &[]).await;
        }
        let _g = e.op.lock().await;
        e.update(|c| {
            c.manually_stopped = false;
            if c.state.status == Status::Restarting {
                c.state.status = Status::Exited;
            }
        });
        self.start_locked(&e).await?;
        let c = e.get();
        self.event(&c, Action::Restart, &[]).await;
        Ok(())
    }
}
