//! The node as Docker users run it: containers outlive a killed `berth up` and the next
//! one adopts them (their mounts and network sandboxes reused, not leaked);
//! `live-restore` as Docker defines it.

use berth_e2e::fixtures::{node_with_busybox, node_with_busybox_opts};
use berth_e2e::{free_port, http_get, processes_of_root, require_root, Node, NodeOpts};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TICKER: &str = "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done";
const HTTPD: &str = "mkdir -p /www && echo hello-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log of `name`: consecutive `line-N` from 0, no gap; returns how many.
fn assert_no_gap(node: &Node, name: &str) -> usize {
    let logs = node.docker_ok(&["logs", name]);
    let lines: Vec<&str> = logs.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line-{i}"), "gap or reorder in the log at {i}");
    }
    lines.len()
}

/// Mounts under the node's root (but the network service's own netns directory).
fn mounts_under(node: &Node) -> Vec<String> {
    let rs = node.root.to_string_lossy().to_string();
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v: Vec<String> = mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&rs) && !m.ends_with("/network/netns"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// berth-shim processes of this node.
fn shims(node: &Node) -> Vec<i32> {
    let rs = node.root.to_string_lossy().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        if cmd.contains("berth-shim") && cmd.contains(&rs) {
            v.push(pid);
        }
    }
    v.sort();
    v
}

/// Each service of the node's root runs exactly once (nats-server aside: it has no
/// BERTH_ROOT).
fn one_set_of_services(node: &Node) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (_, comm) in processes_of_root(&node.root) {
        if comm.starts_with("berth-") && comm != "berth-shim" {
            *count.entry(comm).or_default() += 1;
        }
    }
    assert_eq!(count.len(), 7, "every service runs: {count:?}");
    assert!(count.values().all(|n| *n == 1), "one instance of each service: {count:?}");
}

fn veths_on_bridge(node: &Node) -> usize {
    std::fs::read_dir(format!("/sys/class/net/be{}/brif", node.name)).map(|d| d.count()).unwrap_or(0)
}

/// SIGKILL of `berth up` while a container prints every 100 ms and another serves a
/// published port: both keep running with no node at all; the next `berth up` on the
/// root adopts them (same processes, same mounts, same sandboxes), their logs have
/// every line, the port answers throughout, and removing them leaves nothing.
#[test]
fn containers_outlive_a_killed_node_and_the_next_node_adopts_them() {
    require_root!();
    let (mut node, _reg, img) = node_with_busybox();
    let port = free_port();
    node.docker_ok(&["run", "-d", "--name", "ticker", &img, "sh", "-c", TICKER]);
    node.docker_ok(&["run", "-d", "--name", "web", "-p", &format!("127.0.0.1:{port}:80"), &img, "sh", "-c", HTTPD]);
    wait_for("the published port", || http_get(port, "/").is_some());
    let pid_of = |node: &Node, n: &str| node.docker_ok(&["inspect", "-f", "{{.State.Pid}} {{.State.StartedAt}}", n]);
    let before = (pid_of(&node, "ticker"), pid_of(&node, "web"));
    let mounts = mounts_under(&node);
    let shim_pids = shims(&node);
    assert_eq!(shim_pids.len(), 2);
    assert_eq!(veths_on_bridge(&node), 2);
    let services: Vec<i32> = processes_of_root(&node.root).into_iter().filter(|(_, c)| c != "berth-shim").map(|(p, _)| p).collect();

    node.kill();
    // the services notice and go, without touching the containers
    wait_for("the killed node's services to exit", || {
        services.iter().all(|p| unsafe { libc::kill(*p, 0) } != 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(shims(&node), shim_pids, "the shims live on\n{}", node.logs());
    assert!(http_get(port, "/").is_some_and(|b| b.starts_with("hello-")), "the port answers with no node");
    assert_eq!(mounts_under(&node), mounts, "mounts stay as they were");

    node.boot();
    one_set_of_services(&node);
    assert_eq!((pid_of(&node, "ticker"), pid_of(&node, "web")), before, "the same containers, adopted");
    let ps = node.docker_ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert_eq!(ps.lines().filter(|l| l.contains(" Up ")).count(), 2, "{ps}");
    assert!(http_get(port, "/").is_some_and(|b| b.starts_with("hello-")));
    assert_eq!(node.docker_ok(&["exec", "web", "echo", "adopted"]).trim(), "adopted");
    // the sandboxes and mounts were reused, not made again
    assert_eq!(mounts_under(&node), mounts);
    assert_eq!(veths_on_bridge(&node), 2);
    let bridge = node.docker_ok(&["network", "inspect", "-f", "{{len .Containers}}", "bridge"]);
    assert_eq!(bridge.trim(), "2");
    std::thread::sleep(Duration::from_millis(500));
    let n = assert_no_gap(&node, "ticker");
    assert!(n > 20, "too few lines: {n}");
    // a published port is still exclusive
    let o = node.docker(&["run", "-d", "-p", &format!("127.0.0.1:{port}:80"), &img, "true"]);
    assert!(!o.status.success(), "the adopted container's port was given again");

    node.docker_ok(&["rm", "-f", "ticker", "web"]);
    wait_for("the containers' mounts to go", || mounts_under(&node).is_empty());
    assert!(shims(&node).is_empty());
    wait_for("the veths to go", || veths_on_bridge(&node) == 0);
}

/// Whether `pid` runs `cmd` (not a zombie).
fn runs(pid: i32, cmd: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !stat.rsplit_once(") ").is_none_or(|(_, r)| r.starts_with('Z')) && String::from_utf8_lossy(&cmdline).replace('\0', " ").trim() == cmd
}

/// Issue 14's case: two `sleep` containers, `berth up` SIGKILLed. Their processes run
/// on with no node; the next `berth up` on the root lists them running, execs in one
/// and `docker stop` stops it (137, as Docker: sleep ignores SIGTERM as pid 1); its
/// orderly stop (no live-restore, the default) stops the other, as dockerd does; then
/// nothing of the containers is left on the host and no process of the root runs.
/// Two more exit while there is no node (told to through a file the test writes in
/// their root): the next node records the exit code of one and removes the `--rm` one.
#[test]
fn a_killed_nodes_sleep_containers_are_adopted_stopped_and_leave_nothing() {
    require_root!();
    let (mut node, _reg, img) = node_with_busybox();
    // what the node holds with no container: layer directories, container records
    let held = |node: &Node| -> Vec<String> {
        ["storage/overlay2", "runtime/containers", "runtime/b", "network/netns"]
            .iter()
            .flat_map(|d| std::fs::read_dir(node.root.join(d)).into_iter().flatten().flatten().map(move |e| format!("{d}/{}", e.file_name().to_string_lossy())))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    // the image's init layer, shared by its containers, stays with the image
    node.docker_ok(&["run", "--rm", &img, "true"]);
    wait_for("--rm to give back", || !held(&node).iter().any(|h| h.starts_with("runtime/b/")));
    let held_before = held(&node);
    let mut pids = Vec::new();
    for n in ["s1", "s2"] {
        node.docker_ok(&["run", "-d", "--name", n, &img, "sleep", "600"]);
        pids.push(node.docker_ok(&["inspect", "-f", "{{.State.Pid}}", n]).trim().parse::<i32>().unwrap());
    }
    assert!(pids.iter().all(|p| runs(*p, "sleep 600")), "{pids:?}");
    const ON_GO: &str = "while [ ! -e /go ]; do sleep 0.05; done; exit 3";
    node.docker_ok(&["run", "-d", "--name", "exits", &img, "sh", "-c", ON_GO]);
    node.docker_ok(&["run", "-d", "--rm", "--name", "exits-rm", &img, "sh", "-c", ON_GO]);
    let exiting: Vec<i32> =
        ["exits", "exits-rm"].iter().map(|n| node.docker_ok(&["inspect", "-f", "{{.State.Pid}}", n]).trim().parse().unwrap()).collect();
    let services: Vec<i32> = processes_of_root(&node.root).into_iter().filter(|(_, c)| c != "berth-shim").map(|(p, _)| p).collect();

    node.kill();
    wait_for("the killed node's services to exit", || services.iter().all(|p| unsafe { libc::kill(*p, 0) } != 0));
    assert!(pids.iter().all(|p| runs(*p, "sleep 600")), "the containers run on with no node\n{}", node.logs());
    for p in &exiting {
        std::fs::write(format!("/proc/{p}/root/go"), "").unwrap();
    }
    wait_for("the containers told to exit to exit", || exiting.iter().all(|p| !runs(*p, &format!("sh -c {ON_GO}"))));

    node.boot();
    one_set_of_services(&node);
    let ps = node.docker_ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    for n in ["s1", "s2"] {
        assert!(ps.lines().any(|l| l.starts_with(&format!("{n} Up "))), "{n} in docker ps:\n{ps}");
    }
    for (n, p) in ["s1", "s2"].iter().zip(&pids) {
        assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Pid}}", n]).trim(), p.to_string(), "{n}: the same process");
    }
    assert_eq!(node.docker_ok(&["exec", "s1", "echo", "adopted"]).trim(), "adopted");
    // the one that exited with no node: its exit recorded, the --rm one gone
    wait_for("the exit with no node to be recorded", || {
        node.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "exits"]).trim() == "exited 3"
    });
    wait_for("the --rm container to be removed", || !node.docker(&["inspect", "exits-rm"]).status.success());
    node.docker_ok(&["rm", "exits"]);
    node.docker_ok(&["stop", "-t", "1", "s1"]);
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "s1"]).trim(), "exited 137");
    assert!(!runs(pids[0], "sleep 600"));
    assert!(runs(pids[1], "sleep 600"), "stopping one stopped the other");

    let st = node.shutdown();
    assert!(st.is_some_and(|s| s.success()), "berth up's orderly stop: {st:?}\n{}", node.logs());
    assert!(!runs(pids[1], "sleep 600"), "an orderly stop without live-restore stops the adopted container");
    assert_eq!(node.leftovers(), Vec::<String>::new(), "{}", node.logs());
    assert_eq!(processes_of_root(&node.root), vec![], "processes of the root after the stop");
    assert!(!std::path::Path::new(&format!("/sys/class/net/be{}", node.name)).exists(), "the node's bridge after the stop");
    // and the records say so: removing them gives back the rest
    node.boot();
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Status}}", "s2"]).trim(), "exited");
    node.docker_ok(&["rm", "s1", "s2"]);
    assert_eq!(held(&node), held_before, "layers, records, namespaces of removed containers\n{}", node.logs());
    assert_eq!(node.leftovers(), Vec::<String>::new());
}

/// `live-restore: true`: an orderly stop (SIGTERM, as `systemctl stop`) leaves the
/// containers running and the next node adopts them, logs complete. Without it (the
/// default, `restart_policies_apply_when_the_node_restarts` in containers.rs) the stop
/// stops them.
#[test]
fn with_live_restore_an_orderly_stop_leaves_containers_running() {
    require_root!();
    let mut opts = NodeOpts::default();
    opts.config.insert("live-restore".into(), true.into());
    let (mut node, _reg, img) = node_with_busybox_opts(opts);
    node.docker_ok(&["run", "-d", "--name", "ticker", &img, "sh", "-c", TICKER]);
    std::thread::sleep(Duration::from_millis(500));
    let pid = node.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "ticker"]);
    assert!(node.shutdown().is_some_and(|s| s.success()));
    let shim_pids = shims(&node);
    assert_eq!(shim_pids.len(), 1, "the container runs on");
    std::thread::sleep(Duration::from_millis(500));
    node.boot();
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "ticker"]), pid);
    assert_eq!(node.docker_ok(&["info", "-f", "{{.LiveRestoreEnabled}}"]).trim(), "true");
    assert!(assert_no_gap(&node, "ticker") > 8);
    node.docker_ok(&["rm", "-f", "ticker"]);
}

/// Probes the API (`GET /version` on the socket, what `docker version` asks) and a
/// published port from threads, counting failures, until stopped.
struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, usize, Duration)>>,
}

impl Probe {
    fn start(sock: std::path::PathBuf, port: u16) -> Probe {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        let api = move || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(b"GET /version HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n").is_err() {
                return false;
            }
            let mut b = Vec::new();
            let _ = s.read_to_end(&mut b);
            b.starts_with(b"HTTP/1.1 200")
        };
        let checks: Vec<Box<dyn Fn() -> bool + Send>> = vec![Box::new(api), Box::new(move || http_get(port, "/").is_some())];
        for check in checks {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let (mut calls, mut failed, mut longest) = (0, 0, Duration::ZERO);
                let mut failing_since: Option<Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    calls += 1;
                    if check() {
                        if let Some(t) = failing_since.take() {
                            longest = longest.max(t.elapsed());
                        }
                    } else {
                        failed += 1;
                        failing_since.get_or_insert_with(Instant::now);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if let Some(t) = failing_since {
                    longest = longest.max(t.elapsed());
                }
                (calls, failed, longest)
            }));
        }
        Probe { stop, threads }
    }

    /// (calls, failed, longest failing window) for the API, then for the port.
    fn finish(self) -> Vec<(usize, usize, Duration)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
}

/// An upgrade in place (`berth upgrade`, what the package's postinst runs): `berth up`
/// re-executes its binary and replaces every service one at a time while a container
/// prints every 100 ms and another serves a published port. The API never fails (the
/// socket stays open; the new gateway serves before the old one stops), the port
/// answers throughout, the containers are the same processes with every log line, and
/// `docker ps`, images and volumes are unchanged.
#[test]
fn an_upgrade_replaces_every_service_while_containers_run() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    let port = free_port();
    node.docker_ok(&["volume", "create", "keep"]);
    node.docker_ok(&["run", "-d", "--name", "ticker", "-v", "keep:/data", &img, "sh", "-c", TICKER]);
    node.docker_ok(&["run", "-d", "--name", "web", "-p", &format!("127.0.0.1:{port}:80"), &img, "sh", "-c", HTTPD]);
    wait_for("the published port", || http_get(port, "/").is_some());
    let snapshot = |node: &Node| {
        [
            node.docker_ok(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Image}} {{.Ports}}"]),
            node.docker_ok(&["images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"]),
            node.docker_ok(&["volume", "ls", "--format", "{{.Name}}"]),
            node.docker_ok(&["network", "ls", "--no-trunc", "--format", "{{.ID}} {{.Name}}"]),
            node.docker_ok(&["inspect", "-f", "{{.State.Pid}} {{.State.StartedAt}}", "ticker", "web"]),
        ]
    };
    let before = snapshot(&node);
    let st = node.state();
    let up_pid = node.up_pid().unwrap();

    let probe = Probe::start(node.sock.clone(), port);
    std::thread::sleep(Duration::from_millis(300));
    let out = std::process::Command::new(berth_e2e::bin_dir().join("berth"))
        .args(["upgrade", "--root"])
        .arg(&node.root)
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = probe.finish();
    assert!(out.status.success(), "berth upgrade: {}\n{}", String::from_utf8_lossy(&out.stderr), node.logs());
    assert!(String::from_utf8_lossy(&out.stdout).contains("upgraded"), "{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("upgrade: API {} calls, {} failed, longest failing {:?}; port {} calls, {} failed", r[0].0, r[0].1, r[0].2, r[1].0, r[1].1);
    assert_eq!(r[0].1, 0, "API calls failed during the upgrade (longest window {:?})", r[0].2);
    assert_eq!(r[1].1, 0, "the published port failed during the upgrade");

    // the same berth up, every service replaced, the bus kept
    assert_eq!(node.up_pid(), Some(up_pid));
    let now = node.state();
    assert_eq!(now["generation"], st["generation"].as_u64().unwrap_or(0) + 1);
    for svc in ["gateway", "images", "storage", "runtime", "network", "builder", "swarm"] {
        assert_ne!(now["services"][svc], st["services"][svc], "{svc} was not replaced");
    }
    assert_eq!(now["services"]["nats-server"], st["services"]["nats-server"]);
    one_set_of_services(&node);
    assert_eq!(snapshot(&node), before);
    assert_eq!(node.docker_ok(&["exec", "web", "echo", "after"]).trim(), "after");
    std::thread::sleep(Duration::from_millis(300));
    assert!(assert_no_gap(&node, "ticker") > 10);
    // and the upgraded node works as before
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "keep:/data", &img, "echo", "new"]).trim(), "new");
    node.docker_ok(&["rm", "-f", "ticker", "web"]);
}

/// Records written by a newer berth (a downgrade) stop `berth up` before anything
/// starts, with a message that says what and why; nothing is changed.
#[test]
fn a_downgrade_refuses_newer_records() {
    let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir_in(berth_e2e::tmp_base()).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("runtime")).unwrap();
    let stamp = r#"{"format":99,"berth":"9.0.0"}"#;
    std::fs::write(root.join("runtime/FORMAT"), stamp).unwrap();
    std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
    let out = std::process::Command::new(berth_e2e::bin_dir().join("berth"))
        .args(["up", "--root"])
        .arg(&root)
        .args(["-H", &format!("unix://{}", dir.path().join("d.sock").display()), "--config"])
        .arg(dir.path().join("daemon.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the runtime records in {} are format 99, written by berth 9.0.0", root.join("runtime").display())),
        "{err}"
    );
    assert!(err.contains("downgrading is not supported"), "{err}");
    assert_eq!(std::fs::read_to_string(root.join("runtime/FORMAT")).unwrap(), stamp);
    assert!(!dir.path().join("d.sock").exists());
}

/// Socket activation as berth.socket does it: the service's command line
/// (`berth up -H fd://`, berth.service's ExecStart) started by systemd's own
/// `systemd-socket-activate` on the first connection answers `docker version` (that
/// first call waits in the socket's queue while the node starts) and runs
/// `docker run hello-world`.
#[test]
fn socket_activation_starts_the_node_and_serves_the_api() {
    require_root!();
    let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir_in(berth_e2e::tmp_base()).unwrap();
    let name = berth_e2e::uniq();
    let (root, sock, cfg) = (dir.path().join("root"), dir.path().join("docker.sock"), dir.path().join("daemon.json"));
    std::fs::write(&cfg, format!(r#"{{"cgroup-parent":"berth-e2e-{name}","bridge":"be{name}"}}"#)).unwrap();
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/berth.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let mut args: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert_eq!(args[..4], ["/usr/bin/berth", "up", "-H", "fd://"], "{exec}");
    args[0] = berth_e2e::bin_dir().join("berth").display().to_string();
    // this node's own root and config instead of the package's
    let i = args.iter().position(|a| a == "--config").unwrap();
    args.drain(i..i + 2);
    args.extend(["--root".into(), root.display().to_string(), "--config".into(), cfg.display().to_string()]);
    // Type=notify: systemd's notification socket, here the test's
    let notify = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
    notify.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut act = std::process::Command::new("systemd-socket-activate")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", dir.path().join("notify.sock").display()))
        .arg("-l")
        .arg(&sock)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("up.log")).unwrap())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    wait_for("the socket", || sock.exists());
    let docker = |a: &[&str]| {
        std::process::Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", dir.path().join("cli"))
            .args(a)
            .output()
            .unwrap()
    };
    let t0 = Instant::now();
    let v = docker(&["version", "--format", "{{.Server.Version}}"]);
    let first = t0.elapsed();
    let log = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    assert!(v.status.success(), "{}\n{}", String::from_utf8_lossy(&v.stderr), log());
    eprintln!("socket activation: the first `docker version` answered in {first:?}");
    // Type=notify: READY=1 once every service and the API answer
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| panic!("no sd_notify message: {e}\n{}", log()));
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    let hello = docker(&["run", "--rm", "hello-world"]);
    assert!(String::from_utf8_lossy(&hello.stdout).contains("Hello from Docker!"), "{}\n{}", String::from_utf8_lossy(&hello.stderr), log());
    // systemd-socket-activate became `berth up` (same pid): an orderly stop
    unsafe { libc::kill(act.id() as i32, libc::SIGTERM) };
    let st = act.wait().unwrap();
    assert!(st.success(), "{st}\n{}", log());
    // the socket was systemd's: berth leaves it
    assert!(sock.exists());
    berth_e2e::cleanup_root(&root, &format!("berth-e2e-{name}"));
}

/// The API socket as dockerd makes it: mode 0660, group from daemon.json's `group` (a
/// name or a number); a user in that group can use it, another cannot.
#[test]
fn the_socket_belongs_to_daemon_jsons_group() {
    require_root!();
    let mut opts = NodeOpts::default();
    opts.config.insert("group".into(), "4242".into());
    let node = Node::start_opts(opts);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let m = std::fs::metadata(&node.sock).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o660, 0, 4242));
    let as_user = |groups: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", "4243", "--regid", "4243"]);
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.args(["--groups", &groups.join(",")]);
        }
        c.args(["docker", "version", "--format", "{{.Server.Os}}"])
            .env("DOCKER_HOST", node.host())
            .env("DOCKER_CONFIG", "/nonexistent")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap()
    };
    let member = as_user(&["4242"]);
    assert!(member.status.success(), "{}", String::from_utf8_lossy(&member.stderr));
    assert_eq!(String::from_utf8_lossy(&member.stdout).trim(), "linux");
    let other = as_user(&[]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("permission denied"), "{}", String::from_utf8_lossy(&other.stderr));
}
