//! Healthchecks (image HEALTHCHECK and `--health-*`): a probe exec'd in the
//! container on Docker's schedule, `State.Health`, and `health_status` events.

use bus_schema::event::Action;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_rules::clock;
use bus_schema::docker;

use crate::engine::{Entry, Runtime};
use crate::shim_client::ExecSpec;

const MAX_LOG: usize = 5;
const MAX_OUTPUT: usize = 4096;

struct Plan {
    cmd: Vec<String>,
    interval: Duration,
    timeout: Duration,
    start_period: Duration,
    start_interval: Duration,
    retries: i64,
}

fn plan(hc: &docker::HealthConfig) -> Option<Plan> {
    let test = hc.test.clone().unwrap_or_default();
    let cmd = match test.first().map(|s| s.as_str()) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")],
        _ => return None,
    };
    if cmd.is_empty() {
        return None;
    }
    let d = |v: Option<i64>, def: u64| Duration::from_nanos(v.filter(|x| *x > 0).map(|x| x as u64).unwrap_or(def));
    Some(Plan {
        cmd,
        interval: d(hc.interval, 30_000_000_000),
        timeout: d(hc.timeout, 30_000_000_000),
        start_period: d(hc.start_period, 0),
        start_interval: d(hc.start_interval, 5_000_000_000),
        retries: hc.retries.filter(|r| *r > 0).unwrap_or(3),
    })
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// Starts the probes for this run of the container (no-op without a healthcheck).
    pub(crate) fn spawn_health(self: &Arc<Self>, e: Arc<Entry>) {
        let c = e.get();
        let Some(p) = c.config.healthcheck.as_ref().and_then(plan) else { return };
        e.update(|c| {
            c.state.health = Some(docker::Health {
                status: Some(docker::HealthStatusEnum::STARTING),
                failing_streak: Some(0),
                log: Some(vec![]),
            })
        });
        let _ = e.save();
        let starts = e.life.borrow().starts;
        let rt = self.clone();
        tokio::spawn(async move {
            let begun = Instant::now();
            let mut life = e.life.subscribe();
            loop {
                let in_start = begun.elapsed() < p.start_period;
                let wait = if in_start { p.start_interval.min(p.interval) } else { p.interval };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = life.wait_for(|l| l.starts != starts || !l.running || l.removed) => return,
                }
                {
                    let l = life.borrow();
                    if l.starts != starts || !l.running || l.removed {
                        return;
                    }
                }
                if e.get().state.status == crate::state::Status::Paused {
                    continue;
                }
                let start = clock::now_rfc3339();
                let (code, output) = rt.probe(&e, &p).await;
                let end = clock::now_rfc3339();
                if life.borrow().starts != starts {
                    return;
                }
                let in_start = begun.elapsed() < p.start_period;
                let (old, new) = e.update(|c| {
                    let h = c.state.health.get_or_insert_with(Default::default);
                    let old = h.status;
                    let log = h.log.get_or_insert_with(Vec::new);
                    log.push(docker::HealthcheckResult { start: Some(start), end: Some(end), exit_code: Some(code), output: Some(output) });
                    if log.len() > MAX_LOG {
                        log.remove(0);
                    }
                    if code == 0 {
                        h.failing_streak = Some(0);
                        h.status = Some(docker::HealthStatusEnum::HEALTHY);
                    } else if !(in_start && old == Some(docker::HealthStatusEnum::STARTING)) {
                        // failures during the start period do not count while starting
                        let s = h.failing_streak.unwrap_or(0) + 1;
                        h.failing_streak = Some(s);
                        if s >= p.retries {
                            h.status = Some(docker::HealthStatusEnum::UNHEALTHY);
                        }
                    }
                    (old, h.status)
                });
                let _ = e.save();
                if old != new {
                    if let Some(s) = new {
                        let c = e.get();
                        rt.event_with(&c, Action::HealthStatus, &s.to_string(), &[]).await;
                    }
                }
            }
        });
    }

    /// Runs the probe once: (exit code, output). -1 when it could not run or timed out.
    async fn probe(&self, e: &Arc<Entry>, p: &Plan) -> (i64, String) {
        let c = e.get();
        let Some(shim) = e.shim() else { return (-1, "container is not running".into()) };
        let cfg = docker::ExecConfig { cmd: Some(p.cmd.clone()), ..Default::default() };
        let process = match self.exec_process(&c, &cfg, false) {
            Ok(pr) => pr,
            Err(err) => return (-1, err.to_string()),
        };
        let id = format!("health-{}", &crate::names::new_id()[..12]);
        let exec = match shim.exec(ExecSpec { exec_id: id, process, stdin: false, detach: false }).await {
            Ok(x) => x,
            Err(err) => return (-1, format!("OCI runtime exec failed: {err:?}")),
        };
        let mut out = Vec::new();
        let run = async {
            if let Some(mut rx) = exec.take_output() {
                while let Some((_, data)) = rx.recv().await {
                    if out.len() < MAX_OUTPUT {
                        out.extend_from_slice(&data[..data.len().min(MAX_OUTPUT - out.len())]);
                    }
                }
            }
            exec.wait().await.unwrap_or(-1) as i64
        };
        match tokio::time::timeout(p.timeout, run).await {
            Ok(code) => (code, String::from_utf8_lossy(&out).into_owned()),
            Err(_) => {
                let _ = exec.kill(libc::SIGKILL).await;
                (-1, format!("Health check exceeded timeout ({:?})", p.timeout))
            }
        }
    }
}
