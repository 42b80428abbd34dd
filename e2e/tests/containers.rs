//! Containers through the docker CLI: the runtime service dying under a running
//! container, create/start/stop/rm cycles leaving nothing behind, storage-driver
//! switching and volumes that outlive containers and node restarts.

use berth_e2e::fixtures::{node_with_busybox, node_with_busybox_opts};
use berth_e2e::{require_root, Node, NodeOpts};
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_container_outlives_a_killed_runtime_and_loses_no_line() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    let id = node
        .docker_ok(&["run", "-d", "--name", "ticker", &img, "sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done"])
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(800));
    let old = node.service_pid("runtime").expect("runtime pid");
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_for("a new runtime", || node.service_pid("runtime").is_some_and(|p| p != old));
    wait_for("the runtime to answer", || node.docker(&["inspect", "ticker"]).status.success());
    std::thread::sleep(Duration::from_millis(800));
    let st = node.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.Id}}", "ticker"]);
    assert_eq!(st.trim(), format!("running {id}"));
    let out = node.docker_ok(&["stop", "-t", "1", "ticker"]);
    assert_eq!(out.trim(), "ticker");
    let code = node.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "ticker"]);
    assert_eq!(code.trim(), "137");
    let logs = node.docker_ok(&["logs", "ticker"]);
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() > 15, "too few lines: {}", lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line-{i}"), "gap or reorder in the log at {i}");
    }
    node.docker_ok(&["rm", "ticker"]);
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
}

#[test]
fn two_hundred_cycles_leave_nothing_behind() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    for i in 0..200 {
        let name = format!("cycle{i}");
        node.docker_ok(&["create", "--name", &name, &img, "sleep", "60"]);
        node.docker_ok(&["start", &name]);
        node.docker_ok(&["stop", "-t", "0", &name]);
        node.docker_ok(&["rm", &name]);
    }
    assert_eq!(node.docker_ok(&["ps", "-aq"]).trim(), "");
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
    // no veth stays on the node's bridge (the kernel deletes them with their
    // namespaces, in the background)
    let brif = format!("/sys/class/net/be{}/brif", node.name);
    wait_for("the bridge's veths to go", || std::fs::read_dir(&brif).map(|d| d.count() == 0).unwrap_or(true));
}

#[test]
fn switching_storage_drivers_hides_and_brings_back_images() {
    require_root!();
    let (mut node, _reg, img) = node_with_busybox();
    node.docker_ok(&["volume", "create", "keep"]);
    node.docker_ok(&["run", "--name", "writer", "-v", "keep:/data", &img, "sh", "-c", "echo kept > /data/f"]);
    let out = node.docker_ok(&["run", "--rm", "-v", "keep:/data", &img, "cat", "/data/f"]);
    assert_eq!(out.trim(), "kept");
    assert_eq!(node.docker_ok(&["info", "-f", "{{.Driver}}"]).trim(), "overlay2");

    let set_driver = |node: &mut Node, d: &str| {
        node.shutdown();
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&node.config).unwrap()).unwrap();
        cfg["storage-driver"] = d.into();
        std::fs::write(&node.config, cfg.to_string()).unwrap();
        node.boot();
    };
    set_driver(&mut node, "vfs");
    assert_eq!(node.docker_ok(&["info", "-f", "{{.Driver}}"]).trim(), "vfs");
    assert_eq!(node.docker_ok(&["images", "-q"]).trim(), "", "vfs sees overlay2's images");
    assert_eq!(node.docker_ok(&["ps", "-aq"]).trim(), "", "vfs sees overlay2's containers");

    set_driver(&mut node, "overlay2");
    assert_eq!(node.docker_ok(&["info", "-f", "{{.Driver}}"]).trim(), "overlay2");
    assert!(node.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).contains(&img));
    assert_eq!(node.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]).trim(), "writer");
    let df = node.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(df.contains("Images 1") && df.contains("Containers 1") && df.contains("Local Volumes 1"), "{df}");
    // the volume kept its content across runs and restarts
    let out = node.docker_ok(&["run", "--rm", "-v", "keep:/data", &img, "cat", "/data/f"]);
    assert_eq!(out.trim(), "kept");
    node.docker_ok(&["rm", "writer"]);
}

#[test]
fn healthchecks_stats_update_and_oom() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    node.docker_ok(&[
        "run", "-d", "--name", "hc", "--health-cmd", "test -f /tmp/ok", "--health-interval", "200ms",
        "--health-retries", "2", &img, "sleep", "600",
    ]);
    let health = || node.docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", "hc"]).trim().to_string();
    wait_for("unhealthy", || health() == "unhealthy");
    node.docker_ok(&["exec", "hc", "touch", "/tmp/ok"]);
    wait_for("healthy", || health() == "healthy");
    assert!(node.docker_ok(&["ps", "--format", "{{.Status}}"]).contains("(healthy)"));
    assert_eq!(node.docker_ok(&["ps", "-q", "--filter", "health=healthy"]).lines().count(), 1);
    let log = node.docker_ok(&["inspect", "-f", "{{range .State.Health.Log}}{{.ExitCode}} {{end}}", "hc"]);
    assert!(log.trim().ends_with('0') && log.contains('1'), "{log}");
    let t1 = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1).to_string();
    let ev = node.docker_ok(&["events", "--since", &t0, "--until", &t1, "--filter", "container=hc", "--format", "{{.Action}}"]);
    let hs: Vec<&str> = ev.lines().filter(|l| l.starts_with("health_status")).collect();
    assert_eq!(hs, ["health_status: unhealthy", "health_status: healthy"], "{ev}");

    // update changes the live cgroup and the record
    node.docker_ok(&["update", "--memory", "64m", "--memory-swap", "128m", "--pids-limit", "50", "hc"]);
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}", "hc"]).trim(), "67108864 50");
    let st = node.docker_ok(&["stats", "--no-stream", "--format", "{{.Name}}|{{.MemUsage}}|{{.PIDs}}", "hc"]);
    let parts: Vec<&str> = st.trim().split('|').collect();
    assert_eq!(parts[0], "hc", "{st}");
    assert!(parts[1].ends_with("/ 64MiB"), "{st}");
    assert!(!parts[1].starts_with("0B"), "{st}");
    assert_ne!(parts[2], "0", "{st}");
    let o = node.docker(&["update", "--memory", "1m", "hc"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Minimum memory limit allowed is 6MB"));
    node.docker_ok(&["rm", "-f", "hc"]);

    // the memory limit kills, and the kill is recorded
    let o = node.docker(&["run", "--name", "oom", "--memory", "16m", "--memory-swap", "16m", &img, "sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived"]);
    assert_eq!(o.status.code(), Some(137), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}}", "oom"]).trim(), "true 137");
    node.docker_ok(&["rm", "oom"]);
}

/// Restart policies are applied again when the node comes back, as dockerd does at
/// start (without live-restore the node's shutdown stops every container): `always`
/// and `unless-stopped` come back, a container stopped by hand and one without a
/// policy stay down.
#[test]
fn restart_policies_apply_when_the_node_restarts() {
    require_root!();
    let (mut node, _reg, img) = node_with_busybox();
    node.docker_ok(&["run", "-d", "--name", "always", "--restart", "always", &img, "sleep", "600"]);
    node.docker_ok(&["run", "-d", "--name", "unless", "--restart", "unless-stopped", &img, "sleep", "600"]);
    node.docker_ok(&["run", "-d", "--name", "unless-stopped-by-hand", "--restart", "unless-stopped", &img, "sleep", "600"]);
    node.docker_ok(&["stop", "-t", "0", "unless-stopped-by-hand"]);
    node.docker_ok(&["run", "-d", "--name", "nopolicy", &img, "sleep", "600"]);
    node.shutdown();
    assert!(node.leftovers().iter().all(|l| !l.starts_with("shim")), "the shutdown stops containers: {:?}", node.leftovers());
    node.boot();
    let state = |n: &str| node.docker_ok(&["inspect", "-f", "{{.State.Status}}", n]).trim().to_string();
    wait_for("the policies to start containers", || state("always") == "running" && state("unless") == "running");
    assert_eq!(state("unless-stopped-by-hand"), "exited");
    assert_eq!(state("nopolicy"), "exited");
    // and they work: exec into one that came back
    assert_eq!(node.docker_ok(&["exec", "always", "echo", "back"]).trim(), "back");
    node.docker_ok(&["rm", "-f", "always", "unless", "unless-stopped-by-hand", "nopolicy"]);
}

/// The soft and hard open-files limits of a process.
fn nofile(pid: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let l = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    let f: Vec<&str> = l.split_whitespace().collect();
    (f.get(3).unwrap_or(&"").to_string(), f.get(4).unwrap_or(&"").to_string())
}

/// The node's services run with the hard open-files limit (the runtime keeps a
/// connection per running container, the gateway one per client); containers keep the
/// limit the node was started with, and `--ulimit` still sets theirs.
#[test]
fn the_node_raises_its_open_files_limit_but_not_its_containers() {
    require_root!();
    let (_, hard) = nofile("self");
    let soft: u64 = 1024;
    if hard.parse::<u64>().map(|h| h <= soft).unwrap_or(false) {
        eprintln!("skipped: the hard open-files limit is {hard}");
        return;
    }
    let (node, _reg, img) = node_with_busybox_opts(NodeOpts { nofile: Some(soft), ..Default::default() });
    assert_eq!(node.docker_ok(&["run", "--rm", &img, "sh", "-c", "ulimit -n"]).trim(), "1024");
    let ul = node.docker_ok(&["run", "--rm", "--ulimit", "nofile=2048:4096", &img, "sh", "-c", "ulimit -n; ulimit -Hn"]);
    assert_eq!(ul.split_whitespace().collect::<Vec<_>>(), ["2048", "4096"]);
    node.docker_ok(&["run", "-d", "--name", "nf", &img, "sleep", "60"]);
    assert_eq!(node.docker_ok(&["exec", "nf", "sh", "-c", "ulimit -n"]).trim(), "1024");
    node.docker_ok(&["rm", "-f", "nf"]);
    // this node's runtime service: soft raised to hard
    let runtime = node.service_pid("runtime").expect("the node's runtime service").to_string();
    let (s, h) = nofile(&runtime);
    assert_eq!(s, h, "the runtime's open-files limit");
}

/// `until` in prune filters takes what Moby's `GetTimestamp` takes, the same in every
/// service (the runtime, images and network services each had their own parser, and
/// refused forms the others took), and `label!` excludes only what every `label!`
/// value matches (Moby's `matchLabels`).
#[test]
fn prune_filters_read_until_and_label_not_as_moby_does() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    node.docker_ok(&["create", "--name", "old", "--label", "a=1", &img, "true"]);
    node.docker_ok(&["network", "create", "spare"]);
    // dates cut short, in the daemon's zone or with one: nothing was created before 2000
    for until in ["2000-01-01", "2000-01-01T00", "2000-01-01T00:00", "2000-01-01T00:00:00.5", "2000-01-01Z", "946684800.5"] {
        let f = format!("until={until}");
        let o = node.docker_ok(&["container", "prune", "-f", "--filter", &f]);
        assert!(!o.contains("Deleted Containers"), "{until}: {o}");
        node.docker_ok(&["network", "prune", "-f", "--filter", &f]);
        node.docker_ok(&["image", "prune", "-f", "--filter", &f]);
    }
    assert_eq!(node.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]).trim(), "old");
    assert!(node.docker_ok(&["network", "ls", "--format", "{{.Name}}"]).contains("spare"));
    // a bad value is the client's error, with Moby's words
    for cmd in [["container", "prune"], ["network", "prune"], ["image", "prune"]] {
        let o = node.docker(&[cmd[0], cmd[1], "-f", "--filter", "until=soon"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("invalid value for 'until' filter"), "{cmd:?}: {err}");
    }
    // label!=a and label!=b: "old" has a but not b, so Docker prunes it
    let o = node.docker_ok(&["container", "prune", "-f", "--filter", "label!=a", "--filter", "label!=b", "--filter", "until=2999-01-01T00:00"]);
    assert!(o.contains("Deleted Containers:"), "{o}");
    assert_eq!(node.docker_ok(&["ps", "-aq"]).trim(), "");
    node.docker_ok(&["network", "prune", "-f", "--filter", "until=-1h"]);
    assert!(!node.docker_ok(&["network", "ls", "--format", "{{.Name}}"]).contains("spare"));
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
}
