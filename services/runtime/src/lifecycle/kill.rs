//! `docker kill`, and the signal names Docker accepts.

use std::sync::Arc;
use std::time::Duration;

use bus_schema::BusError;

use crate::engine::Runtime;
use crate::state::Status;

/// Parse a signal as Docker accepts it: `9`, `KILL`, `SIGKILL`, `sigkill`.
pub fn parse_signal(s: &str) -> Result<i32, BusError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(BusError::invalid(format!("Invalid signal: {s}")));
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        n if n.starts_with("RTMIN+") => 34 + n[6..].parse::<i32>().map_err(|_| BusError::invalid(format!("Invalid signal: {s}")))?,
        _ => return Err(BusError::invalid(format!("Invalid signal: {s}"))),
    };
    Ok(n)
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// `docker kill`.
    pub async fn kill(self: &Arc<Self>, key: &str, signal: Option<String>) -> Result<(), BusError> {
        let e = self.find(key)?;
        let sig = parse_signal(signal.as_deref().filter(|s| !s.is_empty()).unwrap_or("KILL"))?;
        let c = e.get();
        c.can_kill(key)?;
        if sig == 9 || sig == 15 || sig == 2 {
            e.update(|c| c.manually_stopped = true);
            let _ = e.save();
        }
        if c.state.status == Status::Paused && sig == 9 {
            let _ = crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await;
        }
        if sig != 9 {
            return self.send_signal(&e, sig).await;
        }
        // SIGKILL answers once the container is dead, as Moby's `daemon.Kill` does, so
        // a `kill` then `rm` is not refused "container is running"
        let mut life = e.life.subscribe();
        let exits = life.borrow().exits;
        self.send_signal(&e, sig).await?;
        if tokio::time::timeout(Duration::from_secs(30), life.wait_for(|l| l.exits > exits || !l.running))
            .await
            .is_err()
        {
            return Err(BusError::internal(format!("could not kill container {}: it did not exit within 30 s of SIGKILL", c.id)));
        }
        Ok(())
    }
}
