//! A bad day: a service (or nats-server) SIGKILLed under a client's call. The client
//! answers (an error is an answer) instead of hanging; the container and its log are
//! intact; once the node has reconciled, nothing is left behind.
//!
//! A call is caught "in flight" for sure by freezing the service (SIGSTOP) before the
//! call, so the request waits in its socket, then SIGKILLing it. The time each client
//! took to answer after the kill is printed (`answered in`); the test only fails on a
//! hang (no answer in [`HANG`]); e2e/bench/soak.sh measures the numbers.

use berth_e2e::fixtures::{node_with_busybox, Registry};
use berth_e2e::{require_root, Node};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// A client that has not answered by then hangs (it used to: 30 s to forever).
const HANG: Duration = Duration::from_secs(10);

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_docker(node: &Node, args: &[&str]) -> Child {
    node.cmd().args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Wait for a client; panics when it hangs.
fn answer(mut c: Child, what: &str) -> Output {
    let t = Instant::now();
    loop {
        if c.try_wait().unwrap().is_some() {
            return c.wait_with_output().unwrap();
        }
        if t.elapsed() > HANG {
            let _ = c.kill();
            let o = c.wait_with_output().unwrap();
            panic!("{what}: no answer in {HANG:?} (hung)\nstdout: {}\nstderr: {}", text(&o.stdout), text(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}


/// SIGKILL `target` (a process of node.json: a service or nats-server) while the
/// docker call `args` is in its hands; `freeze` holds it (SIGSTOP) from before the
/// call, `settle` is how long the call runs before the kill. Returns the client's
/// output once the node is healthy again.
fn kill_under(node: &Node, target: &str, freeze: bool, settle: Duration, args: &[&str]) -> Output {
    let old = node.service_pid(target).unwrap_or_else(|| panic!("no {target} in node.json"));
    if freeze {
        unsafe { libc::kill(old, libc::SIGSTOP) };
    }
    let c = spawn_docker(node, args);
    std::thread::sleep(settle);
    unsafe { libc::kill(old, libc::SIGKILL) };
    let t = Instant::now();
    let what = format!("{target} killed under docker {}", args.join(" "));
    let o = answer(c, &what);
    eprintln!(
        "{what}: answered in {:?} (exit {}): {}",
        t.elapsed(),
        o.status.code().unwrap_or(-1),
        text(&o.stderr).trim()
    );
    wait_for(&format!("a new {target}"), || node.service_pid(target).is_some_and(|p| p != old));
    wait_for("the node to be healthy again", || node.healthy());
    o
}

/// A container printing `line-<i>` every 50 ms: its log must never have a gap.
fn ticker(node: &Node, img: &str, name: &str) {
    node.docker_ok(&["run", "-d", "--name", name, img, "sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.05; done"]);
}

fn assert_log_intact(node: &Node, name: &str) {
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Status}}", name]).trim(), "running", "{name} still runs");
    let logs = node.docker_ok(&["logs", name]);
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() > 20, "too few lines: {}", lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line-{i}"), "gap or reorder in {name}'s log at line {i}");
    }
}

/// Remove every container and check that nothing stays (the kernel deletes veths with
/// their namespaces in the background: wait a little for them).
fn assert_clean(node: &Node) {
    let ids = node.docker_ok(&["ps", "-aq"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        node.docker_ok(&args);
    }
    let t = Instant::now();
    while !node.leftovers_all().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.leftovers_all().is_empty(), "left behind: {:?}\n{}", node.leftovers_all(), node.logs());
}

/// The runtime dies under exec, logs -f, stop and an attached run.
#[test]
fn runtime_killed_under_exec_logs_stop_and_run() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    ticker(&node, &img, "tick");
    // PID 1 ignores SIGTERM: a stop waits its whole timeout
    node.docker_ok(&["run", "-d", "--name", "sleeper", &img, "sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(300));

    const GONE: &str = "the runtime service exited";
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 1;
    // a detached exec runs through the kill too: both keep their records
    node.docker_ok(&["exec", "-d", "tick", "sh", "-c", "sleep 3; exit 3"]);
    let o = kill_under(&node, "runtime", false, Duration::from_millis(500), &["exec", "tick", "sleep", "2"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains(GONE), "{}", text(&o.stderr));
    // `exec inspect` answers for both (it was 404: the records were in memory only),
    // and records their ends, which came after the restart or during it. Their IDs
    // come from the exec_create events (ExecIDs lists running execs only, as Moby's).
    // (the next whole second: `until` takes events at or before it, and both execs may
    // have begun within the second now is in)
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let ev = berth_e2e::http(&node.sock, "GET", &format!("/events?since={since}&until={until}"), &[], None);
    let ids: Vec<String> = serde_json::Deserializer::from_slice(ev.text().as_bytes())
        .into_iter::<serde_json::Value>()
        .filter_map(Result::ok)
        .filter(|e| e["Action"].as_str().is_some_and(|a| a.starts_with("exec_create")))
        .filter_map(|e| e["Actor"]["Attributes"]["execID"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    for (id, code) in ids.iter().zip([3, 0]) {
        let mut last = serde_json::Value::Null;
        wait_for(&format!("exec {id} to end"), || {
            let a = berth_e2e::http(&node.sock, "GET", &format!("/exec/{id}/json"), &[], None);
            assert_eq!(a.status, 200, "exec inspect {id}: {}", a.text());
            last = a.json();
            last["Running"] == false
        });
        assert_eq!(last["ExitCode"], code, "{last}");
        assert!(last["Pid"].as_i64().unwrap() > 0, "{last}");
    }
    let o = kill_under(&node, "runtime", false, Duration::from_millis(500), &["logs", "-f", "tick"]);
    assert!(text(&o.stdout).starts_with("line-0\n"), "logs -f printed the log before the fault");
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains(&format!("error from daemon in stream: {GONE}")), "{}", text(&o.stderr));
    let o = kill_under(&node, "runtime", false, Duration::from_millis(500), &["stop", "-t", "3", "sleeper"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains(GONE), "{}", text(&o.stderr));
    // the stop either happened or did not: inspect tells, and a second stop finishes it
    let st = node.docker_ok(&["inspect", "-f", "{{.State.Status}}", "sleeper"]);
    assert!(["running", "exited"].contains(&st.trim()), "{st}");
    node.docker_ok(&["stop", "-t", "1", "sleeper"]);
    let o = kill_under(&node, "runtime", false, Duration::from_millis(700), &["run", "--name", "att", &img, "sh", "-c", "echo hi; sleep 2"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains(GONE), "{}", text(&o.stderr));
    node.docker_ok(&["inspect", "att"]);
    assert_log_intact(&node, "tick");
    assert_clean(&node);
}

/// nats-server dies under exec, logs -f, stop and run: calls in flight fail at once,
/// every process reconnects, and the node works on.
#[test]
fn bus_killed_under_exec_logs_stop_and_run() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    ticker(&node, &img, "tick");
    node.docker_ok(&["run", "-d", "--name", "sleeper", &img, "sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(300));

    const LOST: &str = "the bus connection was lost";
    for args in [
        &["exec", "tick", "sleep", "3"][..],
        &["logs", "-f", "tick"],
        &["stop", "-t", "3", "sleeper"],
        &["run", "--name", "att", &img, "sh", "-c", "echo hi; sleep 2"],
    ] {
        let o = kill_under(&node, "nats-server", false, Duration::from_millis(600), args);
        // an error that says what happened (it used to be silence for 30 s, or an exit 0)
        assert!(!o.status.success(), "docker {args:?}: {}", text(&o.stdout));
        assert!(text(&o.stderr).contains(LOST), "docker {args:?}: {}", text(&o.stderr));
    }
    node.docker_ok(&["stop", "-t", "1", "sleeper"]);
    node.docker_ok(&["inspect", "att"]);
    // a new container works end to end after the bus came back
    assert_eq!(node.docker_ok(&["run", "--rm", &img, "echo", "after"]).trim(), "after");
    assert_log_intact(&node, "tick");
    assert_clean(&node);
}

/// The network, storage and images services die under the calls that need them.
#[test]
fn network_storage_and_images_killed_under_run_stop_and_pull() {
    require_root!();
    let (node, reg, img) = node_with_busybox();
    ticker(&node, &img, "tick");

    // create: the runtime waits for the frozen storage (the container's layer)
    let o = kill_under(&node, "storage", true, Duration::from_millis(400), &["create", "--name", "made", &img, "sleep", "1000"]);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert!(!node.docker(&["inspect", "made"]).status.success(), "a failed create leaves no container");
    // start: the runtime waits for the frozen network (sandbox) or storage (mount)
    for target in ["network", "storage"] {
        let name = format!("start-{target}");
        node.docker_ok(&["create", "--name", &name, &img, "sleep", "1000"]);
        let o = kill_under(&node, target, true, Duration::from_millis(400), &["start", &name]);
        assert!(!o.status.success(), "{}", text(&o.stdout));
        // the start failed and gave back what it took; a second start works
        node.docker_ok(&["start", &name]);
        node.docker_ok(&["rm", "-f", &name]);
    }
    // stop: the exit gives the sandbox back to a frozen network
    node.docker_ok(&["run", "-d", "--name", "stop-net", &img, "sleep", "1000"]);
    kill_under(&node, "network", true, Duration::from_millis(400), &["stop", "-t", "0", "stop-net"]);
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Status}}", "stop-net"]).trim(), "exited");

    // pull: the images service (the stream), then storage (the layer apply)
    for (i, target) in ["images", "storage"].into_iter().enumerate() {
        let tag = format!("{}/fault{i}:latest", reg.addr());
        push_distinct(&reg, &format!("fault{i}"));
        let o = kill_under(&node, target, true, Duration::from_millis(400), &["pull", &tag]);
        assert!(!o.status.success(), "{}", text(&o.stdout));
        // nothing half-made stays: a second pull works
        node.docker_ok(&["pull", "-q", &tag]);
        node.docker_ok(&["run", "--rm", &tag, "cat", "/fault"]);
    }
    assert_log_intact(&node, "tick");
    assert_clean(&node);
}

/// An image with a layer of its own (busybox plus `/fault`), pushed as `<name>:latest`.
fn push_distinct(reg: &Registry, name: &str) {
    let layout = berth_e2e::fixtures::umoci_image(
        name,
        |rootfs| {
            berth_e2e::fixtures::busybox_rootfs(rootfs);
            std::fs::write(rootfs.join("fault"), name).unwrap();
        },
        &["--config.cmd", "sh"],
    );
    reg.push_oci(&layout, "latest", &format!("{name}:latest"));
}

/// A label file of about `bytes` bytes (1 KiB labels).
fn label_file(dir: &Path, name: &str, bytes: usize) -> std::path::PathBuf {
    let p = dir.join(name);
    let v = "v".repeat(1000);
    let s: String = (0..bytes / 1024).map(|i| format!("l{i}={v}\n")).collect();
    std::fs::write(&p, s).unwrap();
    p
}

/// 10 MB of labels over two containers: the create bodies (5 MB each), `ps -a`,
/// `inspect` and `system df` answer as on Moby (they failed with 500 after 30 s,
/// `max payload size exceeded`: one bus message is 1 MiB).
#[test]
fn answers_and_bodies_larger_than_one_bus_message() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    for c in ["big1", "big2"] {
        let f = label_file(node.dir.path(), c, 5 << 20);
        node.docker_ok(&["create", "--name", c, "--label-file", f.to_str().unwrap(), &img, "true"]);
    }
    let ps = node.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.Label \"l4000\"}}"]);
    let mut lines: Vec<&str> = ps.lines().collect();
    lines.sort();
    let v = "v".repeat(1000);
    assert_eq!(lines, vec![format!("big1 {v}"), format!("big2 {v}")]);
    let n = node.docker_ok(&["inspect", "-f", "{{len .Config.Labels}}", "big1", "big2"]);
    assert_eq!(n.split_whitespace().collect::<Vec<_>>(), vec!["5120", "5120"]);
    let df = node.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(df.lines().any(|l| l == "Containers 2"), "{df}");
    let o = node.docker_ok(&["ps", "-aq", "--no-trunc", "--filter", "label=l5000"]);
    assert_eq!(o.lines().count(), 2);
    // their events are published (without the labels that do not fit one message)
    let until = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1).to_string();
    let ev = node.docker_ok(&["events", "--since", "0", "--until", &until, "--filter", "event=create", "--format", "{{.Actor.Attributes.name}}"]);
    let mut names: Vec<&str> = ev.lines().collect();
    names.sort();
    assert_eq!(names, vec!["big1", "big2"]);
    node.docker_ok(&["rm", "big1", "big2"]);
}

/// `docker rm` while storage cannot give the layers back: the removal fails with
/// Docker's message (the container stays, Dead, as Moby marks it) instead of
/// succeeding and leaking the layers; a later `rm` removes it. A `--rm` container
/// whose layers storage could not take back is finished when storage is back.
#[test]
fn rm_while_storage_is_down_leaks_nothing() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    node.docker_ok(&["create", "--name", "victim", &img, "true"]);
    let o = kill_under(&node, "storage", true, Duration::from_millis(400), &["rm", "victim"]);
    assert!(!o.status.success(), "rm with storage dying under it must not claim success");
    let err = text(&o.stderr);
    assert!(err.contains("failed to remove root filesystem") && err.contains("storage service exited"), "{err}");
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Status}}", "victim"]).trim(), "dead");
    node.docker_ok(&["rm", "victim"]);

    // --rm: gone for the API at the exit; its layers go when storage is back
    node.docker_ok(&["run", "-d", "--rm", "--name", "auto", &img, "sleep", "1"]);
    let st = node.service_pid("storage").unwrap();
    unsafe { libc::kill(st, libc::SIGSTOP) };
    wait_for("the --rm container to be gone", || !node.docker(&["inspect", "auto"]).status.success());
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(st, libc::SIGKILL) };
    wait_for("a new storage", || node.service_pid("storage").is_some_and(|p| p != st));
    wait_for("the node to be healthy again", || node.healthy());
    wait_for("the --rm container's layers to go", || node.leftovers_all().is_empty());
    assert_clean(&node);
}

/// A container layer no record knows (a create cut in two: storage made the layer,
/// the runtime died before writing its record) is removed when the runtime starts.
#[test]
fn runtime_restart_removes_orphan_layers() {
    require_root!();
    let (node, _reg, img) = node_with_busybox();
    node.docker_ok(&["create", "--name", "kept", &img, "true"]);
    let url = node.state()["nats_url"].as_str().unwrap().to_string();
    let id = node.state()["node"].as_str().unwrap().to_string();
    let creds = berth_bus::Creds::load(&node.root.join("bus/creds/runtime")).unwrap();
    let orphan = "ab".repeat(32);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let bus = berth_bus::Bus::connect(&url, Some(creds), &id, "runtime").await.unwrap();
        bus.request(&bus_schema::storage::RwLayerCreate { id: orphan.clone(), parent: None }).await.unwrap();
    });
    let layers = |n: &Node| n.leftovers_all().into_iter().filter(|l| l.starts_with("container layer")).collect::<Vec<_>>();
    assert!(layers(&node).iter().any(|l| l.contains(&orphan)), "the orphan was made: {:?}", layers(&node));
    let old = node.service_pid("runtime").unwrap();
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_for("a new runtime", || node.service_pid("runtime").is_some_and(|p| p != old));
    wait_for("the node to be healthy again", || node.healthy());
    wait_for("the orphan layer to go", || !layers(&node).iter().any(|l| l.contains(&orphan)));
    // the recorded container keeps its layer and starts
    assert_eq!(layers(&node).len(), 1, "{:?}", layers(&node));
    node.docker_ok(&["start", "kept"]);
    assert_clean(&node);
}

/// Each process a pull or a build goes through, SIGKILLed under it (held first, so the
/// call is in its hands for sure; the gateway and nats-server are killed as they run):
/// the client answers, nothing half-made stays (the same pull or build again works, its
/// image runs), the counter's log is whole and nothing is left behind.
#[test]
fn every_process_killed_under_pull_and_build() {
    require_root!();
    let (node, reg, img) = node_with_busybox();
    ticker(&node, &img, "tick");
    push_distinct(&reg, "pulled");
    let tag = format!("{}/pulled:latest", reg.addr());
    let ctx = node.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {img}\nRUN sleep 0.3 && echo built > /built\n")).unwrap();
    let ctx = ctx.to_str().unwrap();
    let table: &[(&str, &[&str])] = &[
        ("pull", &["images", "storage", "gateway", "nats-server"]),
        ("build", &["builder", "images", "storage", "runtime", "gateway", "nats-server"]),
    ];
    for (op, targets) in table {
        for target in *targets {
            let freeze = !matches!(*target, "gateway" | "nats-server");
            let (call, again): (Vec<&str>, Vec<&str>) = match *op {
                "pull" => {
                    let _ = node.docker(&["rmi", "-f", &tag]);
                    (vec!["pull", &tag], vec!["run", "--rm", &tag, "cat", "/fault"])
                }
                _ => (vec!["build", "--no-cache", "-t", "built", ctx], vec!["run", "--rm", "built", "cat", "/built"]),
            };
            let o = kill_under(&node, target, freeze, Duration::from_millis(400), &call);
            if freeze {
                assert!(!o.status.success(), "{op} with {target} killed under it: {}", text(&o.stdout));
            }
            // again, then its image runs
            let mut retry = call.clone();
            retry.insert(1, "-q");
            node.docker_ok(&retry);
            node.docker_ok(&again);
        }
    }
    assert_log_intact(&node, "tick");
    // no build container, layer or mount of the builds stays
    assert_clean(&node);
}
