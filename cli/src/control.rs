//! `berth upgrade` and `berth down`: act on the node running on a data root, through
//! the `berth up` pid in `<root>/run/node.json`.

use crate::node::{self, NodeState};
use anyhow::{bail, Context};
use berth_config::Paths;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which node a command acts on.
#[derive(clap::Args)]
pub struct Target {
    /// Data root of the node (default: data-root from daemon.json, else /var/lib/berth).
    #[arg(long)]
    root: Option<PathBuf>,
    /// daemon.json to read data-root from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Succeed quietly when no node runs (package scripts).
    #[arg(long)]
    if_running: bool,
}

/// The node running on the target's root; None (nothing to do) when none runs and
/// `--if-running` says that is fine.
fn running(t: Target) -> anyhow::Result<Option<(Paths, NodeState)>> {
    let cfg = node::load_config(&node::config_path(t.config))?;
    let paths = Paths::new(t.root.unwrap_or_else(|| cfg.data_root()));
    let st = match std::fs::read_to_string(paths.run().join("node.json")) {
        Ok(text) => Some(serde_json::from_str::<NodeState>(&text).context("reading node.json")?),
        Err(_) => None,
    };
    let st = st.filter(|st| {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", st.pid)).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.first().is_some_and(|a| a.ends_with(b"berth")) && args.iter().any(|a| *a == b"up")
    });
    match st {
        Some(st) => Ok(Some((paths, st))),
        None if t.if_running => Ok(None),
        None => bail!("no node is running on {}", paths.root().display()),
    }
}

fn read_state(paths: &Paths) -> Option<NodeState> {
    serde_json::from_str(&std::fs::read_to_string(paths.run().join("node.json")).ok()?).ok()
}

/// Make the running node re-execute the installed `berth` and replace its services
/// one at a time (containers keep running); wait until it has.
pub fn upgrade(t: Target) -> anyhow::Result<()> {
    let Some((paths, st)) = running(t)? else { return Ok(()) };
    let t0 = Instant::now();
    // SAFETY: a signal to the node's `berth up`
    if unsafe { libc::kill(st.pid as i32, libc::SIGUSR2) } != 0 {
        bail!("signalling berth up (pid {}): {}", st.pid, std::io::Error::last_os_error());
    }
    loop {
        if let Some(now) = read_state(&paths).filter(|n| n.generation > st.generation) {
            if let Some(e) = now.upgrade_error {
                bail!("the upgrade of node {} failed: {e}", now.node);
            }
            println!(
                "berth: node {} upgraded from {} to {} in {:.2}s; containers kept running",
                now.node,
                st.version,
                now.version,
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(180) {
            bail!("the node on {} did not finish its upgrade within 180 s; see {}", paths.root().display(), paths.logs().display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop the running node as SIGTERM does (without live-restore its containers stop).
pub fn down(t: Target) -> anyhow::Result<()> {
    let Some((_, st)) = running(t)? else { return Ok(()) };
    unsafe { libc::kill(st.pid as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    // gone, or a zombie its parent has yet to reap
    let alive = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        !stat.is_empty() && stat.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')).unwrap_or(true)
    };
    while alive(st.pid) {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("berth up (pid {}) did not stop within 120 s", st.pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("berth: node {} stopped", st.node);
    Ok(())
}
