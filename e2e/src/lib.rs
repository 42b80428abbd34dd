//! The e2e harness: a node started by `berth up` with a temp root, socket, bridge and
//! cgroup parent of its own, driven by the real docker CLI. Dropping a [`Node`] stops
//! it and removes what it left: mounts, cgroups, processes, the root.

pub mod fixtures;
pub mod netns;

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

/// A short random hex token for unique names.
pub fn uniq() -> String {
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Skip (return early) when not root: such tests run in CI, which is root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub sock: PathBuf,
    pub config: PathBuf,
    pub name: String,
    child: Option<Child>,
    pub env: Vec<(String, String)>,
    nofile: Option<u64>,
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
    /// Run `berth up` through this command prefix (e.g. into a network namespace, see
    /// [`netns::Underlay`]).
    pub wrap: Option<Vec<String>>,
}

impl Node {
    pub fn start() -> Node {
        Self::start_opts(NodeOpts::default())
    }

    pub fn start_opts(opts: NodeOpts) -> Node {
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
        let mut n = Node { dir, root, sock, config, name, child: None, env: opts.env, nofile: opts.nofile, wrap: opts.wrap };
        n.boot();
        n
    }

    /// Start (or start again) `berth up` on this node's root; waits for `ready`.
    pub fn boot(&mut self) {
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
                        panic!("berth up exited ({st}) before ready:\n{}", self.logs());
                    }
                    if t.elapsed() > Duration::from_secs(60) {
                        let _ = child.kill();
                        panic!("berth up not ready in 60 s:\n{}", self.logs());
                    }
                }
            }
        }
        self.child = Some(child);
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

    /// The node was killed from outside: reap `berth up` without signalling it.
    pub fn forget_child(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether `berth up` is running (it may have been killed).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
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

    pub fn docker(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().expect("run docker")
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
        cleanup_root(&self.root, &format!("berth-e2e-{}", self.name));
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
