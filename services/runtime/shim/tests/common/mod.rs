//! Helpers for shim tests (root): a busybox rootfs, a Docker-like spec, a blocking
//! client, and cleanup that runs even when a test fails.
#![allow(dead_code)]

use berth_shim::proto::{self, Event, Request};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");

/// A busybox rootfs shared by the tests of one binary (read-only use: tests that
/// write use their own upper via a read-write bind of a copy).
pub fn rootfs() -> PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        // Built once per target dir and reused: a finished tree is renamed into place.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("busybox-rootfs");
        if !dir.join("bin/sh").exists() {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("busybox-rootfs.{}", std::process::id()));
            make_rootfs(&tmp);
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        dir
    })
    .clone()
}

pub fn make_rootfs(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
        "var/empty",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for app in String::from_utf8_lossy(&list.stdout).lines() {
        if app != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(app));
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nextra:x:2000:user\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
}

/// A unique name for this test run.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub const CG_PARENT: &str = "berth-shim-test";

fn caps_default() -> Vec<&'static str> {
    vec![
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
}

/// A spec shaped like Docker's defaults (without seccomp).
pub fn spec(id: &str, rootfs: &Path, args: &[&str]) -> Value {
    let caps = caps_default();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=shimtest"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "shimtest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
        ],
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "pid"}, {"type": "ipc"}, {"type": "cgroup"}],
            "cgroupsPath": format!("/{CG_PARENT}/{id}"),
            "resources": {"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"}, {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"}, {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"}, {"allow": true, "type": "c", "major": 136, "access": "rwm"}, {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"}]},
            "maskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        }
    })
}

/// A bundle directory with its cleanup (cgroup, processes, files) on drop.
pub struct Bundle {
    pub id: String,
    pub dir: tempfile::TempDir,
}

impl Bundle {
    pub fn new(id: &str, spec: &Value, shim: Value) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("berth-shim-bundle")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(spec).unwrap(),
        )
        .unwrap();
        let mut sj = json!({"id": id, "log_path": dir.path().join("log.json"), "log_max_file": 1, "stdin": false, "stdin_once": false, "tty": false});
        if let (Some(a), Some(b)) = (sj.as_object_mut(), shim.as_object()) {
            for (k, v) in b {
                a.insert(k.clone(), v.clone());
            }
        }
        std::fs::write(
            dir.path().join("shim.json"),
            serde_json::to_vec(&sj).unwrap(),
        )
        .unwrap();
        Bundle {
            id: id.to_string(),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path().join("log.json"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The stdout (or a stream's) text from the log.
    pub fn log_text(&self, stream: &str) -> String {
        self.log()
            .iter()
            .filter(|e| e["stream"] == stream)
            .map(|e| e["log"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn exit(&self) -> Option<Value> {
        let b = std::fs::read(self.path().join("exit.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Kill anything left in the cgroup, then remove it.
        if let Ok(layout) = berth_shim::cgroups::Layout::detect() {
            let cg = layout.cgroup(&format!("{CG_PARENT}/{}", self.id));
            let _ = cg.kill_all(libc::SIGKILL);
            let _ = cg.remove();
            // The shared parent goes when the last test using it is done.
            let _ = layout.cgroup(CG_PARENT).remove_if_empty();
        }
        if let Ok(pid) = std::fs::read_to_string(self.path().join("init.pid")) {
            if let Ok(p) = pid.trim().parse::<i32>() {
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
    }
}

/// A running shim: the spawn connection and its process.
pub struct Running {
    pub conn: UnixStream,
    pub child: std::process::Child,
    pub pid: u32,
}

/// Spawns the shim and waits for Started (Err: StartFailed's kind and message).
pub fn spawn(b: &Bundle) -> Result<Running, (proto::StartErrorKind, String)> {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let child = Command::new(SHIM)
        .arg(b.path())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = mine;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // the bundle is complete: go
    std::io::Write::write_all(&mut conn, &[proto::GO]).unwrap();
    match proto::read_event(&mut conn) {
        Ok(Event::Started { pid }) => Ok(Running { conn, child, pid }),
        Ok(Event::StartFailed { kind, message }) => {
            let mut child = child;
            let _ = child.wait();
            Err((kind, message))
        }
        other => panic!(
            "unexpected start reply: {other:?}; shim.log: {}",
            std::fs::read_to_string(b.path().join("shim.log")).unwrap_or_default()
        ),
    }
}

impl Running {
    /// Reads events to Exited; returns (output by stream, exit).
    pub fn wait_exit(&mut self) -> (Vec<(u8, Vec<u8>)>, proto::ExitStatus) {
        let mut out = Vec::new();
        loop {
            match proto::read_event(&mut self.conn).expect("reading from the shim") {
                Event::Output { stream, data } => out.push((stream, data)),
                Event::Exited(st) => {
                    let _ = self.child.wait();
                    return (out, st);
                }
                e => panic!("unexpected event {e:?}"),
            }
        }
    }
}

/// A control connection to a running shim.
pub fn connect(b: &Bundle) -> UnixStream {
    let s = UnixStream::connect(b.path().join("shim.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

pub fn request(s: &mut UnixStream, r: Request) -> Event {
    s.write_all(&r.to_bytes()).unwrap();
    proto::read_event(s).unwrap()
}

pub fn send(s: &mut UnixStream, r: Request) {
    s.write_all(&r.to_bytes()).unwrap();
}

/// Runs a container to its end: (stdout+stderr text from the log, exit).
pub fn run(args: &[&str]) -> (String, proto::ExitStatus, Bundle) {
    run_with(args, |_| {})
}

pub fn run_with(
    args: &[&str],
    edit: impl FnOnce(&mut Value),
) -> (String, proto::ExitStatus, Bundle) {
    let id = unique("run");
    let mut s = spec(&id, &rootfs(), args);
    edit(&mut s);
    let b = Bundle::new(&id, &s, json!({}));
    let mut r = spawn(&b).unwrap_or_else(|e| panic!("start failed: {e:?}"));
    let (_, st) = r.wait_exit();
    let text = b
        .log()
        .iter()
        .map(|e| e["log"].as_str().unwrap().to_string())
        .collect();
    (text, st, b)
}

pub fn read_all(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}
