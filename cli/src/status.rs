//! `berth status`: each process of a running node, its pid and health.

use crate::node::{self, NodeState};
use berth_config::Paths;
use std::path::PathBuf;

pub fn status(root: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = node::load_config(&node::config_path(config))?;
    let paths = Paths::new(root.unwrap_or_else(|| cfg.data_root()));
    let f = paths.run().join("node.json");
    let text = std::fs::read_to_string(&f)
        .map_err(|_| anyhow::anyhow!("no node is running on {} (no {})", paths.root().display(), f.display()))?;
    let st: NodeState = serde_json::from_str(&text)?;
    let alive = |pid: u32| unsafe { libc::kill(pid as i32, 0) == 0 };
    if !alive(st.pid) {
        anyhow::bail!("the node on {} is not running (berth up pid {} is gone)", paths.root().display(), st.pid);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let health = rt.block_on(async {
        match node::connect_admin(&st.nats_url, &Some(paths.bus().join("creds")), &st.node).await {
            Ok(bus) => node::services_healthy(&bus).await,
            Err(_) => Vec::new(),
        }
    });
    println!("node {}  berth up pid {}  bus {}  api {}", st.node, st.pid, st.nats_url, st.hosts.join(","));
    println!("{:<12} {:>8}  {}", "SERVICE", "PID", "HEALTH");
    for (name, pid) in &st.services {
        let h = if !alive(*pid) {
            "down"
        } else if name == "nats-server" {
            if health.is_empty() { "unreachable" } else { "ok" }
        } else if name == "gateway" {
            let sock = st.hosts.iter().find_map(|h| h.strip_prefix("unix://").map(PathBuf::from));
            match sock {
                Some(s) if rt.block_on(node::ping_socket(&s)) => "ok",
                Some(_) => "not answering",
                None => "running",
            }
        } else {
            match health.iter().find(|(s, _)| s.name() == name) {
                Some((_, true)) => "ok",
                _ => "not answering",
            }
        };
        println!("{name:<12} {pid:>8}  {h}");
    }
    Ok(())
}
