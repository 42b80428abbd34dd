//! The fault soak (issue 14): 10 clients (the docker CLI) doing create, start, logs,
//! exec, stop and rm at the same time, for `BERTH_SOAK_SECS` (300), while a random
//! process of the node (a service, the gateway or nats-server) is SIGKILLed every
//! 10 s and `berth up` starts it again. Three containers print a counter every
//! 100 ms all along.
//!
//! Fails when a call does not answer within [`HANG`] (a hang, not a speed: an error is
//! an answer), when a counter's log has a gap, or when, after the soak and a node
//! restart, a mount, shim, cgroup, veth, nft rule or layer is left that no existing
//! container explains. Prints the latency of every call and of the calls a kill hit
//! (p50/p99/p100), and a `SOAK` line that e2e/bench/soak.sh reads.
//!
//! `BERTH_SOAK_FAULTS=0` runs the same load without kills (the bench's baseline);
//! `BERTH_SOAK_CLIENTS` sets the number of clients.

use berth_e2e::fixtures::node_with_busybox;
use berth_e2e::{require_root, Node};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A call without an answer by then hangs.
const HANG: Duration = Duration::from_secs(5);
/// What is killed: every process of the node that serves these calls.
const TARGETS: [&str; 7] = ["images", "storage", "runtime", "network", "builder", "gateway", "nats-server"];
/// The containers printing a counter (their logs must have no gap).
const TICKERS: [&str; 3] = ["tick0", "tick1", "tick2"];

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The processes of the node a call of `op` goes through (besides the gateway and
/// nats-server, which every call does).
fn uses(op: &str, target: &str) -> bool {
    match target {
        "gateway" | "nats-server" | "runtime" => true,
        "images" => op == "create",
        "storage" => matches!(op, "create" | "start" | "stop" | "rm" | "rm -f"),
        "network" => matches!(op, "start" | "stop" | "rm" | "rm -f"),
        _ => false,
    }
}

struct Call {
    op: &'static str,
    start: Instant,
    end: Instant,
    ok: bool,
    hung: bool,
    what: String,
}

struct Kill {
    target: &'static str,
    at: Instant,
}

/// Run a docker command with the hang guard: (exit ok, stdout, stderr, hung).
fn guarded(node: &Node, args: &[&str]) -> (bool, String, String, bool) {
    let c = node.cmd().args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = c.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait_with_output());
    });
    let (o, hung) = match rx.recv_timeout(HANG) {
        Ok(o) => (o.unwrap(), false),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (rx.recv().unwrap().unwrap(), true)
        }
    };
    let t = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.success() && !hung, t(&o.stdout), t(&o.stderr), hung)
}

/// One client: container after container, each through its whole life; a failed step
/// ends the container's life early (rm -f, retried until it answers yes).
fn client(node: &Node, img: &str, n: usize, until: Instant, calls: &Mutex<Vec<Call>>) {
    let mut i = 0;
    while Instant::now() < until {
        let name = format!("soak{n}-{i}");
        i += 1;
        let script = "trap 'exit 0' TERM; i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done";
        let port = if n % 2 == 0 { "127.0.0.1::80" } else { "" };
        let mut create = vec!["create", "--name", &name];
        if !port.is_empty() {
            create.extend(["-p", port]);
        }
        create.extend([img, "sh", "-c", script]);
        let steps: [(&'static str, Vec<&str>); 6] = [
            ("create", create),
            ("start", vec!["start", &name]),
            ("logs", vec!["logs", &name]),
            ("exec", vec!["exec", &name, "echo", "hi"]),
            ("stop", vec!["stop", "-t", "3", &name]),
            ("rm", vec!["rm", &name]),
        ];
        let mut failed = false;
        for (op, args) in steps {
            let start = Instant::now();
            let (mut ok, out, err, hung) = guarded(node, &args);
            let end = Instant::now();
            let mut what = err.trim().to_string();
            if ok && op == "exec" && out != "hi\n" {
                ok = false;
                what = format!("exec answered {out:?} instead of \"hi\\n\"");
            }
            if op == "create" && ok {
                what = out.trim().to_string();
            }
            calls.lock().unwrap().push(Call { op, start, end, ok, hung, what: format!("docker {}: {what}", args.join(" ")) });
            if !ok {
                failed = true;
                break;
            }
        }
        if failed {
            // gone for sure before the next container (a node restarting answers with
            // errors for a moment)
            for _ in 0..10 {
                let start = Instant::now();
                let (ok, _, err, hung) = guarded(node, &["rm", "-f", &name]);
                let end = Instant::now();
                calls.lock().unwrap().push(Call { op: "rm -f", start, end, ok, hung, what: format!("docker rm -f {name}: {}", err.trim()) });
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}


fn wait_healthy(node: &Node) {
    let t = Instant::now();
    while !node.healthy() {
        assert!(t.elapsed() < Duration::from_secs(60), "the node is not healthy again:\n{}", node.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines missing from a counter's log (0, 1, 2, ... with no gap); panics on garbage.
fn lost_lines(node: &Node, name: &str) -> (usize, usize) {
    let logs = node.docker_ok(&["logs", name]);
    let mut lost = 0;
    let mut next = 0u64;
    let mut n = 0;
    for l in logs.lines() {
        let v: u64 = l.parse().unwrap_or_else(|_| panic!("{name}: not a counter line: {l:?}"));
        assert!(v >= next, "{name}: line {v} after {} (a repeat or a reorder)", next as i64 - 1);
        lost += (v - next) as usize;
        next = v + 1;
        n += 1;
    }
    (n, lost)
}

/// What is left on the host that the containers still there do not explain: each
/// shim (its bundle: the short id), cgroup and layer record must name an existing
/// container; root filesystem mounts (named by the driver's own ids) and veths may be
/// as many as running containers; no DNAT rule (no remaining container publishes a
/// port).
fn unexplained(node: &Node) -> Vec<String> {
    let ids = node.docker_ok(&["ps", "-aq", "--no-trunc"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let running = node.docker_ok(&["ps", "-q"]).lines().count();
    let left = node.leftovers_all();
    let storage = format!("mount {}", node.root.join("storage").display());
    let per_running = |l: &String| l.starts_with("veth ") || l.starts_with(&storage);
    let veths = left.iter().filter(|l| l.starts_with("veth ")).count();
    let rootfs = left.iter().filter(|l| l.starts_with(&storage)).count();
    let mut out: Vec<String> = left.iter().filter(|l| !per_running(l) && !ids.iter().any(|id| l.contains(&id[..12]))).cloned().collect();
    if veths > running || rootfs > running {
        out.push(format!("{veths} veths and {rootfs} storage mounts for {running} running containers: {left:?}"));
    }
    out
}

/// For a leak: the calls on the containers whose ids (12 hex digits) the leftovers
/// name, and every log line of the node that mentions them.
fn story(node: &Node, calls: &[Call], left: &[String]) -> String {
    let mut ids: Vec<String> = Vec::new();
    for l in left {
        for w in l.split(|c: char| !c.is_ascii_hexdigit()).filter(|w| w.len() >= 12) {
            if !ids.iter().any(|i| i == &w[..12]) {
                ids.push(w[..12].to_string());
            }
        }
    }
    let mut out = String::new();
    for id in &ids {
        let Some(name) = calls.iter().find(|c| c.op == "create" && c.what.contains(id.as_str())).and_then(|c| c.what.split_whitespace().nth(3)) else {
            continue;
        };
        for c in calls.iter().filter(|c| c.what.contains(&format!(" {name}")) || c.what.contains(&format!(" {name}:"))) {
            out.push_str(&format!("call {} ok={} {:?}: {}\n", c.op, c.ok, c.end - c.start, c.what));
        }
    }
    for e in std::fs::read_dir(node.root.join("logs")).into_iter().flatten().flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in t.lines().filter(|l| ids.iter().any(|i| l.contains(i.as_str()))) {
            out.push_str(&format!("{}: {l}\n", e.file_name().to_string_lossy()));
        }
    }
    out.push_str(&node.logs());
    out
}

#[test]
fn fault_soak() {
    require_root!();
    let secs = env_num("BERTH_SOAK_SECS", 300);
    let faults = env_num("BERTH_SOAK_FAULTS", 1) != 0;
    let clients = env_num("BERTH_SOAK_CLIENTS", 10) as usize;
    let (mut node, _reg, img) = node_with_busybox();
    for t in TICKERS {
        node.docker_ok(&["run", "-d", "--name", t, &img, "sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"]);
    }

    let calls = Mutex::new(Vec::<Call>::new());
    let mut kills = Vec::<Kill>::new();
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for n in 0..clients {
            let (node, img, calls) = (&node, img.as_str(), &calls);
            s.spawn(move || client(node, img, n, until, calls));
        }
        // the killer: one random process every 10 s, the node healthy before each
        let mut next = t0 + Duration::from_secs(10);
        while faults && next + Duration::from_secs(2) < until {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += Duration::from_secs(10);
            let mut r = [0u8; 1];
            getrandom::fill(&mut r).unwrap();
            let target = TARGETS[r[0] as usize % TARGETS.len()];
            if !node.healthy() {
                eprintln!("soak: the node is not healthy at {:?}: no kill", t0.elapsed());
                continue;
            }
            let Some(pid) = node.service_pid(target) else { continue };
            let at = Instant::now();
            unsafe { libc::kill(pid, libc::SIGKILL) };
            eprintln!("soak: killed {target} (pid {pid}) at {:.1} s", (at - t0).as_secs_f64());
            kills.push(Kill { target, at });
        }
    });
    let calls = calls.into_inner().unwrap();
    wait_healthy(&node);

    // latencies: every call, and the calls a kill of a process they use hit
    let mut all: Vec<Duration> = calls.iter().map(|c| c.end - c.start).collect();
    let mut died: Vec<Duration> = Vec::new();
    let mut died_after: Vec<Duration> = Vec::new();
    let mut died_what = Vec::new();
    let window = Duration::from_secs(3);
    let mut unexpected = Vec::new();
    for c in &calls {
        if let Some(k) = kills.iter().find(|k| k.at > c.start && k.at < c.end && uses(c.op, k.target)) {
            died.push(c.end - c.start);
            died_after.push(c.end - k.at);
            died_what.push((c.end - k.at, format!("{} killed under {}", k.target, c.what)));
        }
        // failed with no fault near it: a bug even if it answered
        let near = kills.iter().any(|k| k.at < c.end && k.at + window > c.start);
        if !c.ok && !near {
            unexpected.push(c.what.clone());
        }
    }
    let ok = calls.iter().filter(|c| c.ok).count();
    let hung: Vec<&str> = calls.iter().filter(|c| c.hung).map(|c| c.what.as_str()).collect();
    eprintln!(
        "soak: {} s, {clients} clients, faults {faults}: {} calls ({ok} ok, {} failed, {} hung), {} kills",
        secs,
        calls.len(),
        calls.len() - ok,
        hung.len(),
        kills.len()
    );
    for op in ["create", "start", "logs", "exec", "stop", "rm", "rm -f"] {
        let mut v: Vec<Duration> = calls.iter().filter(|c| c.op == op).map(|c| c.end - c.start).collect();
        let f = calls.iter().filter(|c| c.op == op && !c.ok).count();
        let n = v.len();
        eprintln!(
            "soak:   {op:7} {n:5} calls {f:4} failed  p50 {:7.1} ms  p99 {:7.1} ms  p100 {:7.1} ms",
            ms(pct(&mut v, 0.5)),
            ms(pct(&mut v, 0.99)),
            ms(pct(&mut v, 1.0))
        );
    }
    died_what.sort();
    for (_, w) in died_what.iter().rev().take(5) {
        eprintln!("soak: slowest answer after a kill: {w}");
    }
    for w in unexpected.iter().take(20) {
        eprintln!("soak: failed with no fault near it: {w}");
    }
    let (a50, a99, a100) = (pct(&mut all, 0.5), pct(&mut all, 0.99), pct(&mut all, 1.0));
    let (d50, d99, d100) = (pct(&mut died, 0.5), pct(&mut died, 0.99), pct(&mut died, 1.0));
    let (k50, k99, k100) = (pct(&mut died_after, 0.5), pct(&mut died_after, 0.99), pct(&mut died_after, 1.0));
    eprintln!("soak: all calls            p50 {:.1} ms  p99 {:.1} ms  p100 {:.1} ms", ms(a50), ms(a99), ms(a100));
    eprintln!(
        "soak: calls whose service died ({}): p50 {:.1} ms  p99 {:.1} ms  p100 {:.1} ms; after the kill: p50 {:.1} ms  p99 {:.1} ms  p100 {:.1} ms",
        died.len(),
        ms(d50),
        ms(d99),
        ms(d100),
        ms(k50),
        ms(k99),
        ms(k100)
    );

    // the counters: still running, no line lost
    let mut lost = 0;
    for t in TICKERS {
        assert_eq!(node.docker_ok(&["inspect", "-f", "{{.State.Status}}", t]).trim(), "running", "{t} still runs");
        let (n, l) = lost_lines(&node, t);
        eprintln!("soak: {t}: {n} lines, {l} lost");
        lost += l;
    }
    println!(
        "SOAK faults={} secs={secs} clients={clients} calls={} failed={} hung={} unexpected={} kills={} all_p50_ms={:.1} all_p99_ms={:.1} all_p100_ms={:.1} died={} died_p50_ms={:.1} died_p99_ms={:.1} died_p100_ms={:.1} after_kill_p100_ms={:.1} lost_lines={lost}",
        faults as u8,
        calls.len(),
        calls.len() - ok,
        hung.len(),
        unexpected.len(),
        kills.len(),
        ms(a50),
        ms(a99),
        ms(a100),
        died.len(),
        ms(d50),
        ms(d99),
        ms(d100),
        ms(k100)
    );
    assert!(hung.is_empty(), "{} calls without an answer in {HANG:?}:\n{}\n{}", hung.len(), hung.join("\n"), node.logs());
    assert_eq!(lost, 0, "log lines lost");

    // what the soak's containers left: nothing beyond the counters'
    let extra = node.docker_ok(&["ps", "-aq", "--filter", "name=soak"]);
    let extra: Vec<&str> = extra.split_whitespace().collect();
    if !extra.is_empty() {
        eprintln!("soak: {} containers of the clients are left (their rm -f failed): removing", extra.len());
        let mut args = vec!["rm", "-f"];
        args.extend(extra);
        node.docker_ok(&args);
    }
    let settle = |node: &Node| {
        let t = Instant::now();
        while !unexplained(node).is_empty() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
        }
        unexplained(node)
    };
    let left = settle(&node);
    assert!(left.is_empty(), "left behind after the soak: {left:?}\n{}", story(&node, &calls, &left));

    // a node restart (berth down, berth up): reconciled, the counters stopped with
    // their logs whole, nothing else left
    node.shutdown();
    node.boot();
    let left = settle(&node);
    assert!(left.is_empty(), "left behind after a restart: {left:?}\n{}", story(&node, &calls, &left));
    for t in TICKERS {
        let (n, l) = lost_lines(&node, t);
        assert_eq!(l, 0, "{t}: {l} lines lost (of {n}) after the restart");
    }
    node.docker_ok(&["rm", "-f", TICKERS[0], TICKERS[1], TICKERS[2]]);
    let t = Instant::now();
    while !node.leftovers_all().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.leftovers_all().is_empty(), "left behind: {:?}\n{}", node.leftovers_all(), node.logs());
}
