//! The differential acceptance scenarios (../shared/acceptance): docker-CLI scripts
//! whose outputs Moby recorded. They run against a berth node whose docker.io
//! mirror is a local docker-registry on 127.0.0.1:5000 holding busybox, alpine and
//! hello-world made from Debian parts (umoci, skopeo, gcc -static), as the
//! scenarios expect. Fails when the harness cannot be found (see `harness`).

use berth_e2e::fixtures::{busybox_layout, hello_layout, Registry};
use berth_e2e::{Node, NodeOpts};
use std::path::Path;

/// The harness: `BERTH_ACCEPTANCE`, else `shared/acceptance` beside the repository or
/// one of its parents (a worktree's), else the team's copy on this host
/// (`/work/shared/acceptance`: CI's clean clone may live anywhere).
fn harness() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_ACCEPTANCE") {
        return Some(p.into());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/acceptance"))
        .chain([Path::new("/work/shared/acceptance").to_path_buf()])
        .find(|p| p.join("run.py").exists())
}

#[test]
fn acceptance_scenarios_pass() {
    berth_e2e::require_root!();
    // a test that did not run must not pass
    let dir = harness().expect("the acceptance harness (shared/acceptance/run.py) is not beside the repository nor in /work/shared: set BERTH_ACCEPTANCE");
    if std::net::TcpListener::bind("127.0.0.1:5000").is_err() {
        panic!("127.0.0.1:5000 is taken: the scenarios need their registry there");
    }
    let reg = Registry::start_on(5000);
    let bb = busybox_layout();
    reg.push_oci(&bb, "latest", "library/busybox:latest");
    reg.push_oci(&bb, "latest", "library/alpine:3.10");
    reg.push_oci(&bb, "latest", "library/alpine:latest");
    reg.push_oci(&hello_layout(), "latest", "library/hello-world:latest");
    let mut cfg = serde_json::Map::new();
    cfg.insert("registry-mirrors".into(), serde_json::json!(["http://127.0.0.1:5000"]));
    cfg.insert("insecure-registries".into(), serde_json::json!(["127.0.0.1:5000"]));
    let node = Node::start_opts(NodeOpts { config: cfg, ..Default::default() });
    let only = std::env::var("BERTH_ACCEPTANCE_ONLY").unwrap_or_else(|_| ".".into());
    let out = std::process::Command::new("python3")
        .arg(dir.join("run.py"))
        .args(["--host", &node.host(), "-v", "--timeout", "120", "--only", &only])
        .env("DOCKER_CONFIG", node.dir.path().join("docker-cli-config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    let last = text.lines().last().unwrap_or("");
    assert!(last.ends_with(" 0 failed"), "acceptance: {last}\n{}", node.logs());
}
