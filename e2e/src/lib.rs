//! The e2e harness: a node started by `berth up` with a temp root, socket, bridge and
//! cgroup parent of its own, driven by the real docker CLI. Dropping a [`Node`] stops
//! it and removes what it left: mounts, cgroups, processes, the root.

pub mod fixtures;
pub mod netns;
pub mod pytest;
pub mod shapes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the berth binaries are: `BERTH_BIN_DIR`, else target/{release,debug}.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(d);
    }
    // .cargo/config.toml builds for an explicit target (non-PIE executables).
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("x86_64-unknown-linux-gnu");
    let prof = if cfg!(debug_assertions) { "debug" } else { "release" };
    let p = target.join(prof);
    if p.join("berth").is_file() {
        return p;
    }
    let other = target.join(if prof == "debug" { "release" } else { "debug" });
    if other.join("berth").is_file() {
        return other;
    }
    panic!("berth binaries not found in {}: run `cargo build --release --bins` first", p.display());
}

/// How long one docker command of a test may take: `BERTH_E2E_CMD_SECS`, else 300 s.
/// Commands that wait for convergence (`service create`, `service scale`) would
/// otherwise block for ever on a swarm that never converges.
pub fn cmd_deadline() -> Duration {
    Duration::from_secs(std::env::var("BERTH_E2E_CMD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300))
}

/// `cmd.output()`, but the child is SIGKILLed after `limit`: its output so far is
/// returned with a line saying so on stderr (and a failed status).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn command");
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let t = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if t.elapsed() > limit && !killed {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // (a grandchild holding the pipes open would keep the readers: not waited for then)
    let join = |h: std::thread::JoinHandle<Vec<u8>>| {
        let t = Instant::now();
        while !h.is_finished() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() { h.join().unwrap_or_default() } else { Vec::new() }
    };
    let stdout = join(out);
    let mut stderr = join(err);
    if killed {
        stderr.extend_from_slice(format!("\nberth-e2e: {:?} killed after {:?}\n", cmd, limit).as_bytes());
    }
    Output { status, stdout, stderr }
}

/// A short random hex token for unique names.
pub fn uniq() -> String {
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// `require_root!()` first in a test that needs root: it fails when not root (CI
/// is root) unless `BERTH_SKIP_ROOT_TESTS=1` asks to skip.
pub use berth_test_support::{is_root, require_root};

pub struct Node {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub sock: PathBuf,
    pub config: PathBuf,
    pub name: String,
    child: Option<Child>,
    pub env: Vec<(String, String)>,
    nofile: Option<u64>,
    hosts: Vec<String>,
    wrap: Option<Vec<String>>,
}

#[derive(Default, Clone)]
pub struct NodeOpts {
    /// Extra daemon.json keys.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Extra environment for `berth up` (and so every service).
    pub env: Vec<(String, String)>,
    /// Keep this root (for restart tests): start on an existing dir.
    pub dir: Option<PathBuf>,
    /// Start `berth up` with this soft open-files limit (at most the hard one).
    pub nofile: Option<u64>,
    /// More `-H` addresses besides the node's unix socket (`tcp://...`).
    pub hosts: Vec<String>,
    /// Run `berth up` through this command prefix (into a network namespace of the
    /// test's, see [`netns::Underlay`]).
    pub wrap: Option<Vec<String>>,
}

impl Node {
    pub fn start() -> Node {
        Self::start_opts(NodeOpts::default())
    }

    pub fn start_opts(opts: NodeOpts) -> Node {
        let mut n = Self::prepare(opts);
        n.boot();
        n
    }

    /// A node's files and daemon.json, not started. A key set to `null` in
    /// `opts.config` (`bridge`, `cgroup-parent`) leaves berth's default.
    fn prepare(opts: NodeOpts) -> Node {
        let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir_in(tmp_base()).unwrap();
        let base = opts.dir.clone().unwrap_or_else(|| dir.path().to_path_buf());
        let name = uniq();
        let root = base.join("root");
        let sock = base.join("docker.sock");
        let config = base.join("daemon.json");
        let mut cfg = serde_json::Map::new();
        cfg.insert("cgroup-parent".into(), format!("berth-e2e-{name}").into());
        cfg.insert("bridge".into(), format!("be{name}").into());
        for (k, v) in opts.config {
            cfg.insert(k, v);
        }
        std::fs::write(&config, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        Node { dir, root, sock, config, name, child: None, env: opts.env, nofile: opts.nofile, hosts: opts.hosts, wrap: opts.wrap }
    }

    /// Start (or start again) `berth up` on this node's root; waits for `ready`.
    pub fn boot(&mut self) {
        if let Err(e) = self.try_boot() {
            panic!("{e}");
        }
    }

    /// A node whose `berth up` is expected to refuse to start: its stderr when it
    /// exits before `ready` (Err with the logs when it becomes ready).
    pub fn start_failing(opts: NodeOpts) -> Result<String, String> {
        let mut n = Self::prepare(opts);
        match n.try_boot() {
            Ok(()) => Err(format!("berth up started:\n{}", n.logs())),
            Err(_) => Ok(std::fs::read_to_string(n.root.parent().unwrap().join("up.log")).unwrap_or_default()),
        }
    }

    /// [`boot`](Self::boot), with the failure as an error.
    pub fn try_boot(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.parent().unwrap().join("up.log"))
            .unwrap();
        let mut cmd = match &self.wrap {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(bin_dir().join("berth"));
                c
            }
            None => Command::new(bin_dir().join("berth")),
        };
        cmd.arg("up")
            .arg("--root")
            .arg(&self.root)
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--config")
            .arg(&self.config)
            .args(self.hosts.iter().flat_map(|h| ["-H", h.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(soft) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec
            unsafe {
                cmd.pre_exec(move || {
                    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
                    l.rlim_cur = soft.min(l.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn berth up");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let t = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains("ready") => break,
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(format!("berth up exited ({st}) before ready:\n{}", self.logs()));
                    }
                    if t.elapsed() > Duration::from_secs(60) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("berth up not ready in 60 s:\n{}", self.logs()));
                    }
                }
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stop `berth up` with SIGTERM and wait for it (as a user would with ^C).
    pub fn shutdown(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// SIGKILL `berth up` (a crash) and reap it; its services are left to notice.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The pid of `berth up`, while it runs.
    pub fn up_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// A docker CLI command against this node.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", self.host())
            .env("DOCKER_CLI_HINTS", "false")
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.dir.path().join("docker-cli-config"));
        c
    }

    /// Run docker, killed after [`cmd_deadline`] (a hung command fails its test instead
    /// of hanging the whole run; the kill is said on stderr and in the status).
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args).stdin(Stdio::null());
        output_within(&mut c, cmd_deadline())
    }

    /// Run docker; panic with its stderr and the node's logs unless it succeeds.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        if !o.status.success() {
            panic!(
                "docker {:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
                args,
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.logs()
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The node's state file (`run/node.json`).
    pub fn state(&self) -> serde_json::Value {
        let t = std::fs::read_to_string(self.root.join("run/node.json")).unwrap_or_default();
        serde_json::from_str(&t).unwrap_or(serde_json::Value::Null)
    }

    pub fn service_pid(&self, name: &str) -> Option<i32> {
        self.state()["services"][name].as_i64().map(|p| p as i32)
    }

    /// What the node's containers hold on the host: mounts under the root (but the
    /// network service's own netns directory), berth-shim processes of this root, and
    /// cgroups under the node's cgroup parent. Empty once every container is gone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let rs = self.root.to_string_lossy().to_string();
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for m in mi.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(&rs) && !m.ends_with("/network/netns") {
                out.push(format!("mount {m}"));
            }
        }
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("berth-shim") && cmd.contains(&rs) {
                out.push(format!("shim {cmd}"));
            }
        }
        let parent = format!("berth-e2e-{}", self.name);
        for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"] {
            if let Ok(rd) = std::fs::read_dir(Path::new(base).join(&parent)) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    out.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        out
    }

    /// [`leftovers`](Self::leftovers) and what storage and the network hold for
    /// containers: container layers (the records of each storage driver), veths on the
    /// node's bridge and DNAT rules in the node's nft table. Empty once every container
    /// is gone; a stopped container keeps only its layer.
    pub fn leftovers_all(&self) -> Vec<String> {
        let mut out = self.leftovers();
        if let Ok(rd) = std::fs::read_dir(self.root.join("storage")) {
            for d in rd.flatten() {
                for r in std::fs::read_dir(d.path().join("mounts")).into_iter().flatten().flatten() {
                    out.push(format!("container layer {}", r.path().display()));
                }
            }
        }
        for e in std::fs::read_dir(format!("/sys/class/net/be{}/brif", self.name)).into_iter().flatten().flatten() {
            out.push(format!("veth {}", e.file_name().to_string_lossy()));
        }
        let id = std::fs::read_to_string(self.root.join("node-id")).unwrap_or_default();
        if !id.trim().is_empty() {
            let nft = Command::new("nft").args(["list", "table", "ip", &format!("berth_{}", id.trim())]).output();
            if let Ok(o) = nft {
                for l in String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("dnat to")) {
                    out.push(format!("nft rule {}", l.trim()));
                }
            }
        }
        out
    }

    /// Every process of the node answers (`berth status` says ok for each).
    pub fn healthy(&self) -> bool {
        let o = Command::new(bin_dir().join("berth"))
            .args(["status", "--root"])
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success() && out.lines().skip(2).count() >= 8 && out.lines().skip(2).all(|l| l.trim_end().ends_with(" ok"))
    }

    /// The tail of every log of the node, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let up = self.root.parent().unwrap().join("up.log");
        s.push_str(&format!("--- up.log\n{}\n", tail(&up, 30)));
        if let Ok(rd) = std::fs::read_dir(self.root.join("logs")) {
            for e in rd.flatten() {
                s.push_str(&format!("--- {}\n{}\n", e.file_name().to_string_lossy(), tail(&e.path(), 30)));
            }
        }
        s
    }
}

fn tail(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on 127.0.0.1 (for published ports in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0): the body of a 200 answer, or None.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")).then(|| body.to_string())
}

/// Processes whose environment names `root` as their data root (a node's services),
/// as (pid, executable name).
pub fn processes_of_root(root: &Path) -> Vec<(i32, String)> {
    let want = format!("BERTH_ROOT={}", root.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_string();
            out.push((pid, comm));
        }
    }
    out
}

/// Temp dirs for nodes: on the root filesystem (overlayfs cannot stack on tmpfs
/// upper dirs in every kernel, and /tmp may be tmpfs).
pub fn tmp_base() -> PathBuf {
    let p = std::env::var_os("BERTH_E2E_TMP").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
        // a node on berth's default cgroup parent records the one it got
        match std::fs::read_to_string(self.root.join("runtime/cgroup-parent")) {
            // `berth` may be shared with nodes of others: only this node's containers
            Ok(p) if p.trim() == "berth" => {
                let ids: Vec<String> = std::fs::read_dir(self.root.join("runtime"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|d| std::fs::read_dir(d.path().join("containers")).ok())
                    .flatten()
                    .flatten()
                    .map(|c| c.file_name().to_string_lossy().into_owned())
                    .collect();
                for id in ids {
                    cleanup_root(&self.root, &format!("berth/{id}"));
                }
                // and `berth` itself once empty (rmdir refuses a cgroup with children
                // or processes, so another node's stays)
                for base in cgroup_bases() {
                    let _ = std::fs::remove_dir(base.join("berth"));
                }
            }
            Ok(p) => cleanup_root(&self.root, p.trim()),
            Err(_) => cleanup_root(&self.root, &format!("berth-e2e-{}", self.name)),
        }
    }
}

/// Remove what a node left behind: processes whose cgroup is under `cgroup_parent`,
/// mounts under `root` (deepest first), the cgroups themselves.
pub fn cleanup_root(root: &Path, cgroup_parent: &str) {
    // processes in the node's cgroups
    for base in cgroup_bases() {
        let dir = base.join(cgroup_parent);
        if dir.is_dir() {
            kill_cgroup_tree(&dir);
        }
    }
    // mounts
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let rs = root.to_string_lossy().to_string();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount))
        .filter(|m| m.starts_with(&rs))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let c = std::ffi::CString::new(t).unwrap();
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    for base in cgroup_bases() {
        let dir = base.join(cgroup_parent);
        if dir.is_dir() {
            remove_cgroup_tree(&dir);
        }
    }
}

/// SIGKILL every process in the cgroups under `cgroup_parent` (a node's containers).
pub fn kill_cgroup(cgroup_parent: &str) {
    for base in cgroup_bases() {
        let dir = base.join(cgroup_parent);
        if dir.is_dir() {
            kill_cgroup_tree(&dir);
        }
    }
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn cgroup_bases() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            v.push(e.path());
        }
    }
    v.push(PathBuf::from("/sys/fs/cgroup"));
    v
}

fn kill_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                kill_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in t.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 exchange on a unix socket, the way a strict client sees it: the
/// status, the header lines as sent, and the body (de-chunked). The connection is
/// closed by the request (`Connection: close`) or by the server after an upgrade.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `method path` (with `extra` header lines and a JSON `body`) to the API on `sock`.
pub fn http(sock: &Path, method: &str, path: &str, extra: &[(&str, &str)], body: Option<&str>) -> HttpAnswer {
    http_raw(sock, method, path, extra, body.map(|b| (b.as_bytes(), "application/json")))
}

/// [`http`] with a body of any type: (bytes, content type).
pub fn http_raw(sock: &Path, method: &str, path: &str, extra: &[(&str, &str)], body: Option<(&[u8], &str)>) -> HttpAnswer {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\n");
    let upgrade = extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("upgrade"));
    if !upgrade {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let b: &[u8] = body.map(|(b, _)| b).unwrap_or(b"");
    if let Some((_, ct)) = body {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
    // an engine may answer (an error) and close before reading the whole body, as
    // Go's server does: the answer is what counts, not a write that found it closed
    if let Err(e) = s.write_all(req.as_bytes()).and_then(|_| s.write_all(b)) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing the request: {e}");
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_http(&raw)
}

fn parse_http(raw: &[u8]) -> HttpAnswer {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..(i + 2 + n).min(rest.len())]);
            rest = &rest[(i + 4 + n).min(rest.len())..];
        }
        body = out;
    }
    HttpAnswer { status, headers, body }
}

/// Docker's multiplexed stream `[stream, 0, 0, 0, size BE]` split into frames.
pub fn demux(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let n = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        out.push((b[0], b[8..(8 + n).min(b.len())].to_vec()));
        b = &b[(8 + n).min(b.len())..];
    }
    out
}
