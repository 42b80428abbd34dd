//! berth as Docker users install it: the .deb from `deploy/package.sh` in a fresh
//! Debian (debootstrap from the archive this machine's apt uses), its dependencies from
//! the archive, the units `systemd-analyze verify` accepts, socket activation with the
//! unit's command line, the socket's group, an upgrade to a newer package while
//! containers run, and `dpkg -r`/`dpkg -P` leaving nothing but what the user keeps.
//!
//! The chroot is cached (outside git) as target/e2e-fixtures/debian-<suite>.tgz: the
//! first run pays debootstrap (~2-3 min here), later ones unpack it (~10 s).

use berth_e2e::{bin_dir, free_port, http_get, require_root, uniq};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cache_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-fixtures");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The host's Debian suite and the Debian archive mirror its apt uses (deb822 `.sources`
/// or `sources.list`; the one whose release file apt fetched says `Origin: Debian`),
/// for debootstrap.
fn host_archive() -> (String, String) {
    let osr = std::fs::read_to_string("/etc/os-release").unwrap();
    let suite = osr.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).unwrap_or("bookworm").trim_matches('"').to_string();
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    for e in std::fs::read_dir("/etc/apt/sources.list.d").into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "list" || x == "sources") {
            texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    let mut candidates = Vec::new();
    for t in &texts {
        for l in t.lines().map(str::trim) {
            if let Some(u) = l.strip_prefix("URIs:") {
                candidates.extend(u.split_whitespace().map(str::to_string));
            } else {
                let f: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with('[')).collect();
                if f.first() == Some(&"deb") && f.len() > 2 {
                    candidates.push(f[1].to_string());
                }
            }
        }
    }
    let is_debian = |u: &str| {
        let name = u.split_once("://").map(|x| x.1).unwrap_or(u).trim_end_matches('/').replace('/', "_");
        ["InRelease", "Release"].iter().any(|f| {
            std::fs::read_to_string(format!("/var/lib/apt/lists/{name}_dists_{suite}_{f}"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "Origin: Debian"))
        })
    };
    let mirror = candidates
        .iter()
        .find(|u| u.starts_with("http") && is_debian(u))
        .cloned()
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string());
    (suite, mirror)
}

/// A fresh Debian (minbase plus systemd, as a Debian system has) unpacked in `dir`.
fn debian_root(dir: &Path) {
    let (suite, mirror) = host_archive();
    let cached = cache_dir().join(format!("debian-{suite}.tgz"));
    if !cached.exists() {
        let build = cache_dir().join(format!("debian-{suite}.build"));
        let _ = std::fs::remove_dir_all(&build);
        let t = Instant::now();
        ok(
            Command::new("debootstrap")
                .args(["--variant=minbase", "--include=systemd", &suite])
                .arg(&build)
                .arg(&mirror)
                .output()
                .expect("debootstrap (apt-get install debootstrap)"),
            "debootstrap",
        );
        eprintln!("debootstrap {suite} from {mirror}: {:?}", t.elapsed());
        let tmp = cached.with_extension("tmp");
        ok(Command::new("tar").arg("-C").arg(&build).args(["-czf"]).arg(&tmp).arg(".").output().unwrap(), "tar");
        std::fs::rename(&tmp, &cached).unwrap();
        let _ = std::fs::remove_dir_all(&build);
    }
    ok(Command::new("tar").arg("-C").arg(dir).arg("-xzf").arg(&cached).output().unwrap(), "untar");
}

/// The chroot, mounted as a root file system is (itself a mount point, /proc, /sys,
/// /dev); dropping it stops what runs in it and undoes the mounts.
struct Chroot {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cgroup_parent: String,
}

impl Chroot {
    fn new() -> Chroot {
        let tmp = tempfile::Builder::new().prefix("berth-e2e-deb-").tempdir_in(berth_e2e::tmp_base()).unwrap();
        let dir = tmp.path().join("root");
        std::fs::create_dir_all(&dir).unwrap();
        debian_root(&dir);
        let c = Chroot { _tmp: tmp, dir, cgroup_parent: format!("berth-e2e-{}", uniq()) };
        let d = c.dir.display().to_string();
        for args in [
            vec!["--bind", &d, &d],
            vec!["-t", "proc", "proc", &format!("{d}/proc")],
            vec!["--rbind", "/sys", &format!("{d}/sys")],
            vec!["--make-rslave", &format!("{d}/sys")],
            vec!["--rbind", "/dev", &format!("{d}/dev")],
            vec!["--make-rslave", &format!("{d}/dev")],
        ] {
            ok(Command::new("mount").args(&args).output().unwrap(), "mount");
        }
        // apt's lists and downloaded packages kept between runs (a fresh Debian would
        // fetch them again: the same files)
        for (keep, inside) in [("apt-lists", "/var/lib/apt/lists"), ("apt-archives", "/var/cache/apt/archives")] {
            let k = cache_dir().join(format!("debian-{keep}"));
            std::fs::create_dir_all(k.join("partial")).unwrap();
            ok(Command::new("mount").arg("--bind").arg(&k).arg(c.path(inside)).output().unwrap(), "mount");
        }
        c
    }

    /// `apt-get install`, with the kept lists, else after `apt-get update`.
    fn apt_install(&self, what: &[&str]) {
        let args = [&["apt-get", "install", "-y", "-qq", "--no-install-recommends"][..], what].concat();
        if self.cmd(&args).output().unwrap().status.success() {
            return;
        }
        self.run(&["apt-get", "update", "-qq"]);
        self.run(&args);
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.dir).args(args).env("DEBIAN_FRONTEND", "noninteractive").env("LC_ALL", "C").stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> String {
        ok(self.cmd(args).output().unwrap(), &args.join(" "))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    /// Every file and directory of the chroot (but the mounted /proc, /sys, /dev).
    fn files(&self) -> std::collections::BTreeSet<String> {
        let out = self.run(&["find", "/", "-xdev", "-path", "/proc", "-prune", "-o", "-path", "/sys", "-prune", "-o", "-path", "/dev", "-prune", "-o", "-print"]);
        out.lines().map(str::to_string).collect()
    }

    /// Processes whose root is this chroot.
    fn processes(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if std::fs::read_link(e.path().join("root")).is_ok_and(|r| r == self.dir) {
                v.push(pid);
            }
        }
        v
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        // a node still running (a failed test): an orderly stop first, so its network
        // goes with it; then whatever is left
        if let Ok(st) = std::fs::read_to_string(self.path("/var/lib/berth/run/node.json")) {
            if let Some(pid) = serde_json::from_str::<serde_json::Value>(&st).ok().and_then(|v| v["pid"].as_i64()) {
                if self.processes().contains(&(pid as i32)) {
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    let t = Instant::now();
                    while self.processes().contains(&(pid as i32)) && t.elapsed() < Duration::from_secs(15) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        for _ in 0..50 {
            let ps = self.processes();
            if ps.is_empty() {
                break;
            }
            for p in ps {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        berth_e2e::cleanup_root(&self.path("/var/lib/berth"), &self.cgroup_parent);
        let _ = Command::new("umount").arg("-R").arg("-l").arg(&self.dir).output();
    }
}

/// Files a package run may leave that are not the package's: dpkg's and apt's own
/// state and logs, what was copied to /tmp, /run (a tmpfs on a real system).
fn outside_the_package(p: &str) -> bool {
    ["/var/lib/dpkg/", "/var/lib/apt/", "/var/cache/", "/var/log/", "/tmp/", "/run/"].iter().any(|x| p.starts_with(x))
}

fn build_package(out: &Path, version: Option<&str>) -> PathBuf {
    let mut c = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/package.sh"));
    c.arg("--no-build").arg("--out").arg(out);
    if let Some(v) = version {
        // the upgrade's package: the same files, uncompressed (quicker to make)
        c.args(["--version", v, "--no-compress"]);
    }
    let stdout = ok(c.output().unwrap(), "deploy/package.sh");
    PathBuf::from(stdout.lines().last().expect("the package's path"))
}

#[test]
fn the_package_installs_activates_upgrades_and_removes_cleanly() {
    require_root!();
    let t_all = Instant::now();
    let c = Chroot::new();
    eprintln!("chroot ready: {:?}", t_all.elapsed());
    // N and N+1: the same binaries, a higher version
    let debs = c.path("/tmp");
    let version = ok(Command::new(bin_dir().join("berth")).arg("--version").output().unwrap(), "berth --version").trim().trim_start_matches("berth ").to_string();
    let next = {
        let (debs, v) = (debs.clone(), format!("{version}+1"));
        std::thread::spawn(move || build_package(&debs, Some(&v)))
    };
    let deb = build_package(&debs, None);
    assert!(deb.ends_with(format!("berth_{version}_amd64.deb")), "{}", deb.display());
    let next = next.join().unwrap();
    let deb_in = format!("/tmp/{}", deb.file_name().unwrap().to_str().unwrap());
    let next_in = format!("/tmp/{}", next.file_name().unwrap().to_str().unwrap());
    let fresh = c.files();
    // the package's metadata: Debian's nats-server, the conffile
    let field = |f: &str| ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f).output().unwrap(), "dpkg-deb -f");
    assert!(field("Depends").split(',').any(|d| d.trim().starts_with("nats-server")), "{}", field("Depends"));
    assert_eq!(field("Package").trim(), "berth");

    // 1. installed with its dependencies from the archive
    let t = Instant::now();
    c.apt_install(&[&deb_in]);
    eprintln!("apt-get install of the package with its dependencies: {:?}", t.elapsed());
    let group = c.run(&["getent", "group", "docker"]);
    let docker_gid: u32 = group.trim().split(':').nth(2).unwrap().parse().unwrap();
    assert!(c.run(&["dpkg-query", "-W", "-f=${Conffiles}", "berth"]).contains("/etc/berth/daemon.json"));
    // the units as docker.service/docker.socket are, with berth's names
    let unit_lines = |u: &str| std::fs::read_to_string(c.path(&format!("/lib/systemd/system/{u}"))).unwrap().lines().map(str::to_string).collect::<Vec<_>>();
    let service = unit_lines("berth.service");
    for l in ["Type=notify", "Delegate=yes", "KillMode=process", "LimitNOFILE=1048576", "Requires=berth.socket"] {
        assert!(service.iter().any(|x| x == l), "berth.service lacks {l}");
    }
    let socket = unit_lines("berth.socket");
    for l in ["ListenStream=/run/docker.sock", "SocketGroup=docker", "SocketMode=0660"] {
        assert!(socket.iter().any(|x| x == l), "berth.socket lacks {l}");
    }
    // 2. systemd accepts the units (offline, with the chroot's systemd)
    let v = c.cmd(&["systemd-analyze", "verify", "/lib/systemd/system/berth.socket", "/lib/systemd/system/berth.service"]).output().unwrap();
    assert!(v.status.success() && v.stderr.is_empty(), "systemd-analyze verify:\n{}", String::from_utf8_lossy(&v.stderr));
    // a purge of a package never started leaves no trace of it
    c.run(&["dpkg", "-P", "berth"]);
    let base = c.files();
    let traces: Vec<&String> = base.difference(&fresh).filter(|p| p.contains("berth") && !outside_the_package(p)).collect();
    assert!(traces.is_empty(), "{traces:?}");

    // 3. install (dependencies present) to `docker run hello-world` through socket
    // activation, with the unit's own command line
    let t_install = Instant::now();
    c.run(&["dpkg", "-i", &deb_in]);
    let name = uniq();
    std::fs::write(
        c.path("/etc/berth/daemon.json"),
        format!(r#"{{"cgroup-parent":"{}","bridge":"be{name}"}}"#, c.cgroup_parent),
    )
    .unwrap();
    let unit = std::fs::read_to_string(c.path("/lib/systemd/system/berth.service")).unwrap();
    let exec: Vec<String> = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap().split_whitespace().map(str::to_string).collect();
    let socket_unit = std::fs::read_to_string(c.path("/lib/systemd/system/berth.socket")).unwrap();
    let listen = socket_unit.lines().find_map(|l| l.strip_prefix("ListenStream=")).unwrap().to_string();
    // Type=notify: the test is systemd's notification socket
    let notify = std::os::unix::net::UnixDatagram::bind(c.path("/run/berth-e2e-notify.sock")).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut act = c.cmd(
        &[&["systemd-socket-activate", "-E", "NOTIFY_SOCKET=/run/berth-e2e-notify.sock", "-l", &listen][..], &exec.iter().map(String::as_str).collect::<Vec<_>>()]
            .concat(),
    );
    let log = std::fs::File::create(c.path("/tmp/up.log")).unwrap();
    let act = act.stdout(Stdio::null()).stderr(log).spawn().unwrap();
    // reaped as soon as it ends (`berth down` in the prerm waits for it to be gone)
    let act = std::thread::spawn(move || {
        let mut act = act;
        act.wait()
    });
    let sock = c.path(&listen);
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no socket {}", sock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let host = format!("unix://{}", sock.display());
    let cli_cfg = c.path("/tmp/cli");
    let docker = |args: &[&str]| {
        Command::new("docker").env("DOCKER_HOST", &host).env("DOCKER_CONFIG", &cli_cfg).args(args).stdin(Stdio::null()).output().unwrap()
    };
    let up_log = || {
        let mut s = std::fs::read_to_string(c.path("/tmp/up.log")).unwrap_or_default();
        for e in std::fs::read_dir(c.path("/var/lib/berth/logs")).into_iter().flatten().flatten() {
            let t = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(15).collect();
            s.push_str(&format!("--- {}\n{}\n", e.file_name().to_string_lossy(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        s
    };
    let hello = docker(&["run", "--rm", "hello-world"]);
    let install_to_hello = t_install.elapsed();
    assert!(String::from_utf8_lossy(&hello.stdout).contains("Hello from Docker!"), "{}\n{}", String::from_utf8_lossy(&hello.stderr), up_log());
    eprintln!("package install (dpkg -i) to `docker run hello-world` answered: {install_to_hello:?}");
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| panic!("no sd_notify READY: {e}\n{}", up_log()));
    assert!(String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1"), "{}", String::from_utf8_lossy(&buf[..n]));

    // 4. the socket as berth.socket makes it (systemd-socket-activate cannot set a
    // mode or group: done here with the unit's SocketMode/SocketGroup): a user in the
    // group the package made uses it, another cannot
    let mode = socket_unit.lines().find_map(|l| l.strip_prefix("SocketMode=")).unwrap();
    assert_eq!(socket_unit.lines().find_map(|l| l.strip_prefix("SocketGroup=")), Some("docker"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(u32::from_str_radix(mode, 8).unwrap())).unwrap();
    std::os::unix::fs::chown(&sock, Some(0), Some(docker_gid)).unwrap();
    for d in [c.dir.parent().unwrap(), &c.dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let as_user = |groups: Option<u32>| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "4243", "--regid", "4243"]);
        match groups {
            Some(g) => cmd.args(["--groups", &g.to_string()]),
            None => cmd.arg("--clear-groups"),
        };
        cmd.args(["docker", "version", "--format", "{{.Server.Version}}"])
            .env("DOCKER_HOST", &host)
            .env("DOCKER_CONFIG", "/nonexistent")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap()
    };
    let member = as_user(Some(docker_gid));
    assert!(member.status.success(), "{}", String::from_utf8_lossy(&member.stderr));
    let other = as_user(None);
    assert!(!other.status.success() && String::from_utf8_lossy(&other.stderr).contains("permission denied"));

    // 5. the upgrade to N+1 while containers run (the postinst hands the node over)
    let bb = c.path("/tmp/busybox.tar");
    let layout = berth_e2e::fixtures::busybox_layout();
    ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker-archive:{}:busybox:latest", bb.display()))
            .output()
            .unwrap(),
        "skopeo",
    );
    ok(docker(&["load", "-q", "-i", bb.to_str().unwrap()]), "docker load");
    let port = free_port();
    ok(docker(&["run", "-d", "--name", "ticker", "busybox", "sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done"]), "run ticker");
    ok(
        docker(&["run", "-d", "--name", "web", "-p", &format!("127.0.0.1:{port}:80"), "busybox", "sh", "-c", "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www"]),
        "run web",
    );
    ok(docker(&["volume", "create", "keep"]), "volume");
    let t = Instant::now();
    while http_get(port, "/").is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "the published port");
        std::thread::sleep(Duration::from_millis(50));
    }
    let snapshot = || {
        [&["ps", "-aq", "--no-trunc"][..], &["images", "-q", "--no-trunc"], &["volume", "ls", "-q"], &["network", "ls", "-q", "--no-trunc"]]
            .iter()
            .map(|a| ok(docker(a), &a.join(" ")))
            .chain([ok(docker(&["inspect", "-f", "{{.State.Pid}} {{.State.StartedAt}}", "ticker", "web"]), "inspect")])
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let node_before: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.path("/var/lib/berth/run/node.json")).unwrap()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (stop, host, cli_cfg) = (stop.clone(), host.clone(), cli_cfg.clone());
        std::thread::spawn(move || {
            let (mut calls, mut failed, mut longest, mut since) = (0, 0, Duration::ZERO, None::<Instant>);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                calls += 1;
                let v = Command::new("docker").env("DOCKER_HOST", &host).env("DOCKER_CONFIG", &cli_cfg).args(["version", "--format", "{{.Server.Version}}"]).output().unwrap();
                let up = http_get(port, "/").is_some();
                if v.status.success() && up {
                    if let Some(s) = since.take() {
                        longest = longest.max(s.elapsed());
                    }
                } else {
                    failed += 1;
                    since.get_or_insert_with(Instant::now);
                }
            }
            (calls, failed, longest)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let up = c.run(&["dpkg", "-i", &next_in]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failed, longest) = probe.join().unwrap();
    eprintln!("upgrade {version} -> {version}+1: {calls} `docker version` + port calls, {failed} failed, longest failing window {longest:?}");
    assert!(up.contains("upgraded"), "{up}\n{}", up_log());
    assert_eq!(failed, 0, "calls failed during the upgrade");
    assert_eq!(snapshot(), before);
    let node_after: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.path("/var/lib/berth/run/node.json")).unwrap()).unwrap();
    assert_eq!(node_after["pid"], node_before["pid"]);
    for svc in ["gateway", "images", "storage", "runtime", "network", "builder", "swarm"] {
        let pid = node_after["services"][svc].as_i64().unwrap();
        assert_ne!(Some(pid), node_before["services"][svc].as_i64(), "{svc}");
        // running the installed (new) file, not the replaced one
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(!exe.to_string_lossy().ends_with("(deleted)"), "{svc}: {}", exe.display());
    }
    let exe = std::fs::read_link(format!("/proc/{}/exe", node_after["pid"])).unwrap();
    assert!(!exe.to_string_lossy().ends_with("(deleted)"), "berth up: {}", exe.display());
    let logs = ok(docker(&["logs", "ticker"]), "logs");
    for (i, l) in logs.lines().enumerate() {
        assert_eq!(l, format!("line-{i}"), "a gap in the log");
    }
    assert!(logs.lines().count() > 10);

    // 6. dpkg -r: the node stops (prerm, as systemctl stop: the containers stop);
    // the conffile and the data root stay, nothing else of the package
    c.run(&["dpkg", "-r", "berth"]);
    let st = act.join().unwrap().unwrap();
    assert!(st.success(), "berth up: {st}\n{}", up_log());
    let removed = c.files();
    let left: Vec<&String> = removed
        .difference(&base)
        .filter(|p| !outside_the_package(p) && !p.starts_with("/var/lib/berth") && !["/etc/berth", "/etc/berth/daemon.json"].contains(&p.as_str()))
        .collect();
    assert!(left.is_empty(), "dpkg -r left: {left:?}");
    assert!(removed.contains("/etc/berth/daemon.json") && removed.contains("/var/lib/berth/images"));
    // 7. dpkg -P: the configuration goes too; the data root stays, as with Docker
    c.run(&["dpkg", "-P", "berth"]);
    let purged = c.files();
    let left: Vec<&String> = purged.difference(&base).filter(|p| !outside_the_package(p) && !p.starts_with("/var/lib/berth")).collect();
    assert!(left.is_empty(), "dpkg -P left: {left:?}");
    assert!(purged.contains("/var/lib/berth/images"));
    eprintln!("package test: {:?}", t_all.elapsed());
}
