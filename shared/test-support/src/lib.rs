//! Test helpers that start real parts. [`Nats`] spawns Debian's `nats-server` on a
//! free loopback port with JetStream in a temp dir; dropping it kills the server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail
    unsafe { libc::geteuid() == 0 }
}

/// `BERTH_SKIP_ROOT_TESTS=1`: tests that need root skip themselves (and say so)
/// instead of failing. Unset (CI, which runs as root), they fail when not root.
pub fn skip_root_tests() -> bool {
    std::env::var("BERTH_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1")
}

/// The first line of a test that needs root: fails when not root, so a run without
/// root never counts such a test as passed; returns early (a skip, printed) only
/// when `BERTH_SKIP_ROOT_TESTS=1` asks for it.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            assert!(
                $crate::skip_root_tests(),
                "this test needs root (run as root, or set BERTH_SKIP_ROOT_TESTS=1 to skip the tests that need it)"
            );
            eprintln!("skipped: needs root (BERTH_SKIP_ROOT_TESTS=1)");
            return;
        }
    };
}

/// A free TCP port on 127.0.0.1 (released before returning; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Find `nats-server` on PATH or in /usr/sbin (Debian installs it there).
pub fn nats_server_bin() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("nats-server not found: install Debian's nats-server package");
}

pub struct Nats {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Nats {
    /// Start a nats-server with JetStream and no authentication.
    pub fn start() -> Nats {
        Self::start_with_config(None)
    }

    /// Start a nats-server with extra config text (e.g. `authorization { ... }`).
    pub fn start_with_config(extra: Option<&str>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        // The server picks its own port (`-1`) and writes it to a ports file: a port
        // chosen here and handed over could be taken in between (by another test's
        // server or a client's source port), and then the readiness check would
        // connect to somebody else's server (a CI failure of stop 26).
        let conf = dir.path().join("nats.conf");
        let body = format!("jetstream {{ store_dir: \"{}\" }}\nports_file_dir: \"{}\"\n{}\n", dir.path().join("js").display(), dir.path().display(), extra.unwrap_or(""));
        std::fs::write(&conf, format!("listen: \"127.0.0.1:-1\"\n{body}")).unwrap();
        let mut child = Self::spawn(&conf);
        let port = Self::wait_port(&mut child, dir.path());
        // a restart listens on the same port
        std::fs::write(&conf, format!("listen: \"127.0.0.1:{port}\"\n{body}")).unwrap();
        let mut n = Nats { child, port, dir, conf };
        n.wait_ready();
        n
    }

    fn spawn(conf: &Path) -> Child {
        Command::new(nats_server_bin())
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server")
    }

    /// The client port from the server's ports file (`<exe>_<pid>.ports`, JSON with a
    /// `nats` list of URLs), written once it listens.
    fn wait_port(child: &mut Child, dir: &Path) -> u16 {
        let t = Instant::now();
        let suffix = format!("_{}.ports", child.id());
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("nats-server exited at start: {st}");
            }
            let file = std::fs::read_dir(dir).ok().and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(&suffix)));
            let port = file.and_then(|f| std::fs::read_to_string(f).ok()).and_then(|s| {
                let v: serde_json::Value = serde_json::from_str(&s).ok()?;
                v["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
            });
            if let Some(p) = port {
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nats-server wrote no ports file in {}", dir.display());
    }

    /// SIGKILL the server, as a crash would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port (after [`Nats::crash`]); waits until it listens.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.conf);
        self.wait_ready();
    }

    /// Until our server (not one that took the port) accepts connections.
    fn wait_ready(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("nats-server exited: {st} (port {} taken?)", self.port);
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary data root, removed on drop.
pub fn temp_root() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("berth-test-").tempdir().unwrap()
}
