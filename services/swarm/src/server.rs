//! The swarm server process: a nats-server child of the swarm service, started with
//! the config natsconf writes, reloaded (SIGHUP) when its users change, restarted when
//! its shape changes (standalone → cluster, leaf remotes), stopped on leave.
//!
//! It is a child with PDEATHSIG: a swarm service that dies takes its server with it and
//! the restarted service starts it again from the files it left (the JetStream store,
//! the config). Killing a node's whole process tree kills it too, as it should.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct SwarmServer {
    child: Option<Child>,
    conf: PathBuf,
    log: PathBuf,
    /// Where to check that it accepts connections.
    probe: String,
    /// Secrets the config reads from the environment ([`crate::natsconf::ServerConfig::env`]).
    env: Vec<(String, String)>,
}

/// Find nats-server on PATH or in Debian's places (as `berth up` does for the node's bus).
pub fn nats_server_bin() -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join("nats-server"))
        .find(|p| p.is_file())
}

impl SwarmServer {
    /// Start nats-server with `conf`, logging to `log`; ready when `probe` (host:port)
    /// accepts TCP connections.
    pub async fn start(conf: &Path, log: &Path, probe: &str, env: Vec<(String, String)>) -> anyhow::Result<SwarmServer> {
        let mut s = SwarmServer { child: None, conf: conf.to_path_buf(), log: log.to_path_buf(), probe: probe.to_string(), env };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = nats_server_bin().ok_or_else(|| anyhow::anyhow!("nats-server not found: install it (apt-get install nats-server)"))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(bin);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("-c").arg(&self.conf).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.kill_on_drop(true);
        self.child = Some(cmd.spawn()?);
        let t0 = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(&self.probe).await.is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    anyhow::bail!("the swarm server exited ({st}) during start-up; see {}", self.log.display());
                }
            }
            if t0.elapsed() > Duration::from_secs(15) {
                anyhow::bail!("the swarm server did not listen on {} within 15 s; see {}", self.probe, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Start it again if it died.
    pub async fn ensure(&mut self) -> anyhow::Result<bool> {
        if self.alive() {
            return Ok(false);
        }
        tracing::warn!("the swarm server exited; starting it again");
        self.spawn().await?;
        Ok(true)
    }

    /// Re-read the config (users, routes): SIGHUP.
    pub fn reload(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        }
    }

    /// Stop and start with the (rewritten) config; `probe` may change.
    pub async fn restart(&mut self, probe: &str) -> anyhow::Result<()> {
        self.stop().await;
        self.probe = probe.to_string();
        self.spawn().await
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub async fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if let Some(pid) = c.id() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
}
