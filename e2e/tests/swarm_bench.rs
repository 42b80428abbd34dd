//! The swarm bench of issue 18 ("Numbers"), `#[ignore]`d (CI does not run it):
//!
//!     cargo test --release -p berth-e2e --features bench --test swarm_bench -- --ignored --nocapture
//!
//! or `e2e/bench/swarm.sh`. Every engine runs in a network namespace of the bench's
//! (`berth_e2e::netns::Underlay`): three berth nodes in one swarm (a manager, two
//! workers), one berth node alone in a swarm of its own, and — when `dockerd` is
//! installed and `BENCH_MOBY` is not 0 — a Moby alone in a single-node swarm, with its
//! default networking (iptables, docker0, docker_gwbridge, ingress), all of it inside its
//! namespace and gone with it. The same busybox image (a docker-archive of the e2e
//! fixture) is loaded into every engine with `docker load`.
//!
//! Measures (printed as a table of lines starting with `bench:`; no time asserted):
//! 1. `service create -d --no-resolve-image --replicas 30` until `service ls` shows
//!    30/30 (polled every 100 ms, alike for every engine): berth's three nodes, berth's
//!    single node and Moby's single node, in rounds whose order rotates; medians.
//! 2. One worker's whole node SIGKILLed (berth, three nodes): time until the node is
//!    Down and until the service has its 30 tasks Running on the two other nodes.
//! 3. Requests per second through a published port: a fixed number of HTTP GETs by
//!    concurrent clients (threads of this process moved into the node's namespace with
//!    setns), each a new connection to the node's own address, to a busybox httpd
//!    service with 3 replicas published `-p 8080:80` (the routing mesh): berth's single
//!    node paired with Moby's; berth's three nodes with the clients spread over the
//!    three nodes' addresses. And, as a reference Moby can serve on any kernel, a
//!    host-mode published port (`--publish mode=host`, one replica) on both single nodes.
//!
//! Moby is told not to pull images it has (`DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`, its
//! own knob): its namespaces reach no registry, and its task controller otherwise tries
//! to pull before every task (a DNS timeout each), where berth pulls only a missing
//! image. Knobs: BENCH_REPLICAS (30), BENCH_ROUNDS (3), BENCH_REQUESTS (5000),
//! BENCH_CLIENTS (8), BENCH_MOBY (1).

use berth_e2e::netns::Underlay;
use berth_e2e::{fixtures, output_within, require_root, Node};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// One engine as the bench drives it: the docker host of its (first) manager, those of
/// every node of its swarm, and the namespaces and addresses its clients use.
struct Engine {
    label: &'static str,
    host: String,
    hosts: Vec<String>,
    ns: Vec<String>,
    addrs: Vec<String>,
    cfg: tempfile::TempDir,
}

impl Engine {
    fn new(label: &'static str, nodes: &[&Node], u: &Underlay, idx: &[usize]) -> Engine {
        Engine {
            label,
            host: nodes[0].host(),
            hosts: nodes.iter().map(|n| n.host()).collect(),
            ns: idx.iter().map(|i| u.nodes[*i].clone()).collect(),
            addrs: idx.iter().map(|i| u.addrs[*i].clone()).collect(),
            cfg: tempfile::tempdir().unwrap(),
        }
    }

    fn docker_on(&self, host: &str, args: &[&str]) -> Output {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", host)
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.cfg.path())
            .args(args)
            .stdin(Stdio::null());
        output_within(&mut c, berth_e2e::cmd_deadline())
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker_on(&self.host, args);
        assert!(o.status.success(), "{}: docker {args:?}: {}", self.label, out(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Containers of service `name` on every node of the swarm.
    fn containers(&self, name: &str) -> usize {
        let f = format!("label=com.docker.swarm.service.name={name}");
        self.hosts
            .iter()
            .map(|h| lines(&String::from_utf8_lossy(&self.docker_on(h, &["ps", "-q", "--filter", &f]).stdout)).len())
            .sum()
    }

    /// `service ls`'s REPLICAS column for `name`.
    fn replicas(&self, name: &str) -> String {
        self.ok(&["service", "ls", "--filter", &format!("name={name}"), "--format", "{{.Name}} {{.Replicas}}"])
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(|r| r.trim().to_string()))
            .unwrap_or_default()
    }

    /// `service create -d` + poll `service ls` until n/n: seconds from the create.
    fn create(&self, name: &str, n: usize, extra: &[&str], cmd: &[&str]) -> f64 {
        let reps = n.to_string();
        let mut args = vec!["service", "create", "-d", "--no-resolve-image", "--replicas", &reps, "--name", name];
        args.extend_from_slice(extra);
        args.push("busybox:latest");
        args.extend_from_slice(cmd);
        let t = Instant::now();
        self.ok(&args);
        let want = format!("{n}/{n}");
        loop {
            if self.replicas(name) == want {
                return t.elapsed().as_secs_f64();
            }
            assert!(t.elapsed() < Duration::from_secs(300), "{}: {name} not {want} in 300 s: {}", self.label, self.replicas(name));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `service create` without `-d`: the CLI's own wait until converged (with its
    /// check that the tasks stay up); seconds until it returns.
    fn create_cli(&self, name: &str, n: usize) -> f64 {
        let reps = n.to_string();
        let t = Instant::now();
        let o = self.ok(&["service", "create", "--no-resolve-image", "--replicas", &reps, "--name", name, "busybox:latest", "sleep", "1d"]);
        let s = t.elapsed().as_secs_f64();
        assert!(o.contains("converged"), "{}: {o}", self.label);
        s
    }

    /// `service rm` and wait until its containers are gone from every node.
    fn remove(&self, name: &str) {
        self.ok(&["service", "rm", name]);
        let t = Instant::now();
        while self.containers(name) > 0 {
            assert!(t.elapsed() < Duration::from_secs(120), "{}: containers of {name} still there after 120 s", self.label);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Client k in namespace k % nodes, to its own node's address on `port`.
    fn clients(&self, k: usize, port: u16) -> Vec<(String, SocketAddr)> {
        (0..k)
            .map(|i| (self.ns[i % self.ns.len()].clone(), format!("{}:{port}", self.addrs[i % self.addrs.len()]).parse().unwrap()))
            .collect()
    }
}

/// One GET on a new connection (HTTP/1.0: the server closes); true on a 200.
fn get(addr: &SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(3)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n").is_err() {
        return false;
    }
    let mut b = Vec::with_capacity(512);
    s.read_to_end(&mut b).is_ok() && (b.starts_with(b"HTTP/1.1 200") || b.starts_with(b"HTTP/1.0 200"))
}

use berth_e2e::netns::enter;

/// `total` GETs shared by the clients (one thread each): (requests per second, failed).
fn load(clients: &[(String, SocketAddr)], total: usize) -> (f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(clients.len() + 1));
    let hs: Vec<_> = clients
        .iter()
        .cloned()
        .map(|(ns, addr)| {
            let (next, failed, go) = (next.clone(), failed.clone(), go.clone());
            std::thread::spawn(move || {
                enter(&ns);
                go.wait();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    if !get(&addr) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    go.wait();
    let t = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    (total as f64 / t.elapsed().as_secs_f64(), failed.load(Ordering::Relaxed))
}

/// Every client's address answers 5 times in a row, within `secs`.
fn answers(clients: &[(String, SocketAddr)], secs: u64) -> bool {
    let t = Instant::now();
    let mut seen: Vec<(String, SocketAddr)> = clients.to_vec();
    seen.sort();
    seen.dedup();
    while t.elapsed() < Duration::from_secs(secs) {
        let ok = seen.iter().all(|c| {
            let c = c.clone();
            std::thread::spawn(move || {
                enter(&c.0);
                (0..5).all(|_| get(&c.1))
            })
            .join()
            .unwrap()
        });
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    false
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// `busybox:latest` on `nodes` (berth) and on the Moby at `moby` (if any): a
/// docker-archive of the busybox fixture, loaded with the CLI.
fn load_busybox(u: &Underlay, nodes: &[&Node], moby: Option<&Engine>) {
    let tar = berth_e2e::netns::path(u, "busybox.tar");
    fixtures::run(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:latest", fixtures::busybox_layout().display()))
            .arg(format!("docker-archive:{}:busybox:latest", tar.display())),
    );
    for n in nodes {
        n.docker_ok(&["load", "-q", "-i", tar.to_str().unwrap()]);
    }
    if let Some(m) = moby {
        m.ok(&["load", "-q", "-i", tar.to_str().unwrap()]);
    }
}

/// A Moby dockerd run in namespace `i` of the underlay, its data and exec roots in a
/// directory of its own, its containers under a cgroup parent of its own. Dropping it
/// leaves the swarm, stops it and removes all it made (the namespace goes with the
/// underlay: iptables chains, docker0, docker_gwbridge, the ingress sandbox).
struct Moby<'a> {
    u: &'a Underlay,
    i: usize,
    dir: PathBuf,
    cgroup: String,
    child: std::process::Child,
    engine: Engine,
}

impl<'a> Moby<'a> {
    fn start(u: &'a Underlay, i: usize) -> Moby<'a> {
        // short: containerd's socket path under the exec root must fit a sockaddr_un
        let dir = tempfile::Builder::new().prefix("bswm-").tempdir_in("/var/tmp").unwrap().keep();
        let cgroup = format!("bsw{}-moby", u.id);
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let w = u.wrapper(i);
        let sock = dir.join("d.sock");
        let child = Command::new(&w[0])
            .args(&w[1..])
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--containerd-namespace", &cgroup, "--containerd-plugins-namespace", &format!("{cgroup}-p")])
            .args(["--cgroup-parent", &cgroup, "--exec-opt", "native.cgroupdriver=cgroupfs"])
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        let engine = Engine {
            label: "moby",
            host: format!("unix://{}", sock.display()),
            hosts: vec![format!("unix://{}", sock.display())],
            ns: vec![u.nodes[i].clone()],
            addrs: vec![u.addrs[i].clone()],
            cfg: tempfile::tempdir().unwrap(),
        };
        let m = Moby { u, i, dir, cgroup, child, engine };
        let t = Instant::now();
        while !m.engine.docker_on(&m.engine.host, &["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not start:\n{}",
                std::fs::read_to_string(m.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    }
}

impl Drop for Moby<'_> {
    fn drop(&mut self) {
        // leaving removes the swarm's containers; stopping dockerd stops any other
        let _ = self.engine.docker_on(&self.engine.host, &["swarm", "leave", "--force"]);
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // containerd and its shims (in the namespace), then any container left
        self.u.kill_processes(self.i);
        berth_e2e::kill_cgroup(&self.cgroup);
        std::thread::sleep(Duration::from_millis(500));
        berth_e2e::cleanup_root(&self.dir, &self.cgroup);
        if std::env::var_os("BENCH_KEEP_MOBY_LOG").is_some() {
            eprintln!("moby log: {}", self.dir.join("dockerd.log").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const PAGE: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

/// The rows of the summary: measure, berth, Moby, ratio (berth/Moby) and a note.
struct Table(Vec<[String; 5]>);

impl Table {
    fn row(&mut self, what: &str, berth: String, moby: String, ratio: String, note: &str) {
        eprintln!("bench row: {what}: berth {berth}, moby {moby}, ratio {ratio} {note}");
        self.0.push([what.into(), berth, moby, ratio, note.into()]);
    }
    fn print(&self) {
        let w: Vec<usize> = (0..4).map(|c| self.0.iter().map(|r| r[c].len()).max().unwrap_or(0).max(5)).collect();
        println!(
            "bench: {:<w0$} | {:>w1$} | {:>w2$} | {:>w3$} | note",
            "measure",
            "berth",
            "Moby",
            "ratio",
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
        for r in &self.0 {
            println!(
                "bench: {:<w0$} | {:>w1$} | {:>w2$} | {:>w3$} | {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            );
        }
    }
}

fn secs(v: f64) -> String {
    format!("{v:.2} s")
}

fn ratio(a: f64, b: Option<f64>) -> String {
    b.filter(|b| *b > 0.0 && b.is_finite()).map(|b| format!("{:.2}", a / b)).unwrap_or_else(|| "n/a".into())
}

#[test]
#[ignore = "bench (issue 18): run with --ignored --nocapture, or e2e/bench/swarm.sh"]
fn swarm_bench() {
    require_root!();
    let replicas = env_num("BENCH_REPLICAS", 30);
    let rounds = env_num("BENCH_ROUNDS", 3);
    let requests = env_num("BENCH_REQUESTS", 5000);
    let nclients = env_num("BENCH_CLIENTS", 8);
    let want_moby = std::env::var("BENCH_MOBY").map(|v| v != "0").unwrap_or(true)
        && Command::new("sh")
            .args(["-c", "command -v dockerd"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);

    // namespaces 0-2: berth's three nodes; 3: berth alone; 4: Moby
    let u = Underlay::new(5);
    let mut nodes: Vec<Node> = (0..4).map(|i| u.start_node(i, Default::default())).collect();
    let moby = want_moby.then(|| Moby::start(&u, 4));
    if moby.is_none() {
        eprintln!("(no Moby: dockerd not installed or BENCH_MOBY=0)");
    }
    load_busybox(&u, &nodes.iter().collect::<Vec<_>>(), moby.as_ref().map(|m| &m.engine));

    let addr = format!("{}:2377", u.addrs[0]);
    nodes[0].docker_ok(&["swarm", "init", "--advertise-addr", &u.addrs[0]]);
    let token = nodes[0].docker_ok(&["swarm", "join-token", "-q", "worker"]).trim().to_string();
    for n in &nodes[1..3] {
        n.docker_ok(&["swarm", "join", "--token", &token, &addr]);
    }
    nodes[3].docker_ok(&["swarm", "init", "--advertise-addr", &u.addrs[3]]);
    if let Some(m) = &moby {
        m.engine.ok(&["swarm", "init", "--advertise-addr", &u.addrs[4]]);
    }
    let host = |i: usize| format!("bsw{}-{}", u.id, i + 1);
    let t = Instant::now();
    loop {
        let ls = lines(&nodes[0].docker_ok(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]));
        if (0..3).all(|i| ls.contains(&format!("{} Ready", host(i)))) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "three nodes not Ready: {ls:?}\n{}", nodes[0].logs());
        std::thread::sleep(Duration::from_millis(300));
    }

    let b3 = Engine::new("berth x3", &[&nodes[0], &nodes[1], &nodes[2]], &u, &[0, 1, 2]);
    let b1 = Engine::new("berth x1", &[&nodes[3]], &u, &[3]);
    let mut engines: Vec<&Engine> = vec![&b3, &b1];
    if let Some(m) = &moby {
        engines.push(&m.engine);
    }
    let mut table = Table(Vec::new());

    // 1. create --replicas N until N/N, rounds in rotating order
    let mut created: Vec<Vec<f64>> = vec![Vec::new(); engines.len()];
    for r in 0..rounds {
        for k in 0..engines.len() {
            let e = (r + k) % engines.len();
            let name = format!("cr{r}");
            let s = engines[e].create(&name, replicas, &[], &["sleep", "1d"]);
            // (not timed) what `service ls` said: that many containers up on the nodes
            let up = engines[e].containers(&name);
            eprintln!("round {r}: {}: {replicas} replicas {replicas}/{replicas} in {s:.2} s ({up} containers up then)", engines[e].label);
            created[e].push(s);
            engines[e].remove(&name);
        }
    }
    // the same through the CLI's own convergence wait (what `service create` takes)
    let mut waited: Vec<Vec<f64>> = vec![Vec::new(); engines.len()];
    for r in 0..rounds {
        for k in 0..engines.len() {
            let e = (r + k) % engines.len();
            let name = format!("cw{r}");
            let s = engines[e].create_cli(&name, replicas);
            eprintln!("round {r}: {}: service create --replicas {replicas} (CLI wait) returned in {s:.2} s", engines[e].label);
            waited[e].push(s);
            engines[e].remove(&name);
        }
    }
    let med: Vec<f64> = created.iter().map(|v| median(v)).collect();
    let moby_create = moby.as_ref().map(|_| med[2]);
    let fmt_all = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" ");
    let moby_col = |v: Option<f64>| v.map(secs).unwrap_or_else(|| "n/a".into());
    table.row(
        &format!("create --replicas {replicas} -> {replicas}/{replicas}, berth 3 nodes vs Moby 1"),
        secs(med[0]),
        moby_col(moby_create),
        ratio(med[0], moby_create),
        &format!(
            "target <= 0.5; rounds berth [{}]{}",
            fmt_all(&created[0]),
            moby.as_ref().map(|_| format!(" Moby [{}]", fmt_all(&created[2]))).unwrap_or_default()
        ),
    );
    table.row(
        &format!("create --replicas {replicas} -> {replicas}/{replicas}, 1 node each"),
        secs(med[1]),
        moby_col(moby_create),
        ratio(med[1], moby_create),
        &format!("same workload on both; rounds berth [{}]", fmt_all(&created[1])),
    );

    let wmed: Vec<f64> = waited.iter().map(|v| median(v)).collect();
    let moby_wait = moby.as_ref().map(|_| wmed[2]);
    table.row(
        &format!("service create --replicas {replicas} (CLI's convergence wait), berth 3 nodes vs Moby 1"),
        secs(wmed[0]),
        moby_col(moby_wait),
        ratio(wmed[0], moby_wait),
        &format!(
            "berth 1 node {:.2} s; rounds berth x3 [{}]{}",
            wmed[1],
            fmt_all(&waited[0]),
            moby.as_ref().map(|_| format!(" Moby [{}]", fmt_all(&waited[2]))).unwrap_or_default()
        ),
    );

    // 3. requests per second through the routing mesh (3 replicas, -p 8080:80)
    let rps_round = |label: &str, pairs: &[(&Engine, Vec<(String, SocketAddr)>)], table: &mut Table, note: &str| {
        // a warm-up, then rounds alternating the engines' order
        let mut res: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
        let mut fails = vec![0usize; pairs.len()];
        for (_, c) in pairs {
            load(c, 200);
        }
        for r in 0..rounds {
            for k in 0..pairs.len() {
                let e = if r % 2 == 0 { k } else { pairs.len() - 1 - k };
                let (v, f) = load(&pairs[e].1, requests);
                eprintln!("round {r}: {label}: {}: {v:.0} req/s ({f} failed)", pairs[e].0.label);
                res[e].push(v);
                fails[e] += f;
            }
        }
        let b = median(&res[0]);
        let m = (pairs.len() > 1).then(|| median(&res[1]));
        let fails_note = if fails.iter().any(|f| *f > 0) {
            format!("; failed requests berth {} Moby {}", fails[0], fails.get(1).copied().unwrap_or(0))
        } else {
            String::new()
        };
        table.row(
            label,
            format!("{b:.0}/s"),
            m.map(|m| format!("{m:.0}/s")).unwrap_or_else(|| "n/a".into()),
            ratio(b, m),
            &format!("{note}{fails_note}"),
        );
    };
    let mesh = ["-p", "8080:80"];
    for e in &engines {
        e.create("web", 3, &mesh, &["sh", "-c", PAGE]);
    }
    let load_note = format!("{requests} GETs, {nclients} clients, new connection each, median of {rounds}");
    let b1c = b1.clients(nclients, 8080);
    assert!(answers(&b1c, 60), "berth's mesh does not answer on one node\n{}", nodes[3].logs());
    let moby_mesh = moby.as_ref().and_then(|m| {
        let c = m.engine.clients(nclients, 8080);
        if answers(&c, 20) {
            Some((&m.engine, c))
        } else {
            eprintln!(
                "Moby's routing mesh does not answer in 20 s ({})",
                if std::path::Path::new("/proc/net/ip_vs").exists() {
                    "IPVS present"
                } else {
                    "no IPVS in this kernel"
                }
            );
            None
        }
    });
    let ipvs_note = if moby.is_some() && moby_mesh.is_none() {
        "; Moby's mesh refuses: no IPVS in this kernel (CONFIG_IP_VS unset)"
    } else {
        ""
    };
    let mut pairs = vec![(&b1, b1c.clone())];
    pairs.extend(moby_mesh.clone());
    rps_round(
        "req/s via routing mesh, 3 replicas, 1 node each",
        &pairs,
        &mut table,
        &format!("target >= Moby; {load_note}{ipvs_note}"),
    );
    let b3c = b3.clients(nclients, 8080);
    assert!(answers(&b3c, 60), "berth's mesh does not answer on three nodes\n{}", nodes[0].logs());
    rps_round(
        "req/s via routing mesh, 3 replicas, berth 3 nodes",
        &[(&b3, b3c)],
        &mut table,
        &format!("clients spread over the 3 nodes, each to its own node's address; {load_note}"),
    );
    for e in &engines {
        e.remove("web");
    }

    // the reference both engines serve here: a host-mode published port, one replica
    let hostmode = ["--publish", "mode=host,published=8080,target=80"];
    let single: Vec<&Engine> = engines.iter().copied().filter(|e| e.label != "berth x3").collect();
    for e in &single {
        e.create("hweb", 1, &hostmode, &["sh", "-c", PAGE]);
    }
    let mut pairs = Vec::new();
    for e in &single {
        let c = e.clients(nclients, 8080);
        assert!(answers(&c, 60), "{}: the host-mode port does not answer", e.label);
        pairs.push((*e, c));
    }
    rps_round(
        "req/s via host-mode port (mode=host), 1 replica, 1 node each",
        &pairs,
        &mut table,
        &format!("reference (no mesh); {load_note}"),
    );
    for e in &single {
        e.remove("hweb");
    }

    // 2. a worker's whole node SIGKILLed: its tasks back on the two others
    b3.create("fo", replicas, &[], &["sleep", "1d"]);
    let ps = |e: &Engine| lines(&e.ok(&["service", "ps", "fo", "--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}"]));
    let lost = ps(&b3).iter().filter(|l| l.starts_with(&format!("{} ", host(2)))).count();
    let victim = host(2);
    u.kill_node(2, &mut nodes[2]);
    let t = Instant::now();
    let (mut down, mut placed, mut running) = (None, None, None);
    while running.is_none() || down.is_none() {
        if down.is_none() && b3.ok(&["node", "inspect", &victim, "--format", "{{.Status.State}}"]).trim() == "down" {
            down = Some(t.elapsed().as_secs_f64());
        }
        let l = ps(&b3);
        // tasks on the two living nodes (a task not yet assigned shows no node)
        let others: Vec<&String> = l.iter().filter(|l| l.starts_with(&format!("{} ", host(0))) || l.starts_with(&format!("{} ", host(1)))).collect();
        if placed.is_none() && others.len() >= replicas {
            placed = Some(t.elapsed().as_secs_f64());
        }
        if running.is_none() && others.iter().filter(|l| l.split_whitespace().nth(1) == Some("Running")).count() >= replicas {
            running = Some(t.elapsed().as_secs_f64());
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "not rescheduled in 180 s: down {down:?} placed {placed:?}\n{l:?}\n{}",
            nodes[0].logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (down, placed, running) = (down.unwrap(), placed.unwrap(), running.unwrap());
    let up: usize = [&nodes[0], &nodes[1]]
        .iter()
        .map(|n| lines(&n.docker_ok(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=fo"])).len())
        .sum();
    eprintln!("node loss: down {down:.2} s, placed {placed:.2} s, running {running:.2} s; {up} containers up on the two living nodes");
    table.row(
        &format!("worker node SIGKILLed -> {replicas}/{replicas} Running on the others"),
        secs(running),
        "n/a".into(),
        "n/a".into(),
        &format!("target <= 10 s (Moby: 5 s heartbeat + grace; single-node here); {lost} tasks lost; node Down at {down:.2} s, all {replicas} placed at {placed:.2} s"),
    );
    b3.remove("fo");

    table.print();
    drop(moby);
}
