//! `berth doctor`: what a node needs from this host (kernel, cgroups, the storage
//! driver, nats-server, nftables, berth's own binaries, the API socket, its group,
//! daemon.json), one line per check and, for each problem, the command that fixes it.
//! Exits 1 when a check fails (a warning does not).

use crate::node::{self, NodeState};
use berth_config::hosts::{self, Host};
use berth_config::{DaemonConfig, Paths};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

enum Verdict {
    Good(String),
    Warn(String, String),
    Fail(String, String),
}
use Verdict::*;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Data root (default: data-root from daemon.json, else /var/lib/berth).
    #[arg(long)]
    root: Option<PathBuf>,
    /// daemon.json (default: /etc/berth/daemon.json when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where `berth up` would listen (as its -H).
    #[arg(short = 'H', long = "host")]
    host: Vec<String>,
}

pub fn doctor(a: DoctorArgs) -> anyhow::Result<()> {
    let cfg_path = node::config_path(a.config);
    let (cfg, cfg_check) = match node::load_config(&cfg_path) {
        Ok(c) => {
            let shown = cfg_path.as_ref().map_or("none (defaults)".to_string(), |p| p.display().to_string());
            (c, Ok(shown))
        }
        Err(e) => (
            DaemonConfig::default(),
            Err((format!("{e:#}"), format!("edit {} (dockerd's keys only)", cfg_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()))),
        ),
    };
    let root = a.root.unwrap_or_else(|| cfg.data_root());
    let mut checks: Vec<(&str, Verdict)> = vec![
        ("user", user()),
        ("daemon.json", match cfg_check { Ok(s) => Good(s), Err((p, f)) => Fail(p, f) }),
        ("kernel", kernel()),
        ("cgroups", cgroups()),
        ("storage", storage(&cfg, &root)),
        ("nats-server", nats_server()),
        ("nftables", nftables(&cfg)),
        ("binaries", binaries()),
    ];
    checks.extend(sockets(&a.host, &cfg, &cfg_path, &root));
    checks.push(("group", group(&cfg)));
    let mut failed = 0;
    for (name, v) in &checks {
        match v {
            Good(d) => println!("ok    {name:<12} {d}"),
            Warn(p, fix) => println!("warn  {name:<12} {p}\n      {:<12} fix: {fix}", ""),
            Fail(p, fix) => {
                failed += 1;
                println!("FAIL  {name:<12} {p}\n      {:<12} fix: {fix}", "");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} problem(s) found");
    }
    Ok(())
}

fn user() -> Verdict {
    // SAFETY: no arguments
    if unsafe { libc::geteuid() } == 0 {
        Good("root".into())
    } else {
        Fail("not root: berth up needs root, as dockerd does".into(), "run it as root (sudo berth up), or use the package's berth.socket".into())
    }
}

fn kernel() -> Verdict {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a zeroed utsname to fill
    unsafe { libc::uname(&mut u) };
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned();
    let mut it = rel.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<u32>().ok());
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if v < (4, 18) {
        return Fail(format!("Linux {rel}: berth needs 4.18 or newer (overlayfs, cgroup v2, nftables)"), "upgrade the kernel (apt-get install linux-image-amd64) and reboot".into());
    }
    Good(format!("Linux {rel}"))
}

fn cgroups() -> Verdict {
    let unified = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].into_iter().find(|d| Path::new(d).join("cgroup.controllers").exists());
    let v2: Vec<String> = unified
        .and_then(|d| std::fs::read_to_string(Path::new(d).join("cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    // v1 hierarchies: /proc/cgroups' enabled column, those mounted
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let v1: Vec<String> = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1" && f[1] != "0").then(|| f[0].to_string())
        })
        .filter(|c| mounts.lines().any(|m| m.split_whitespace().nth(2) == Some("cgroup") && m.split_whitespace().nth(3).is_some_and(|o| o.split(',').any(|x| x == c))))
        .collect();
    let mode = match (unified, v1.is_empty()) {
        (Some("/sys/fs/cgroup"), _) => "v2",
        (Some(_), false) => "hybrid (v1 + v2 at /sys/fs/cgroup/unified)",
        (None, false) => "v1",
        _ => return Fail("no cgroup file system mounted".into(), "mount -t cgroup2 none /sys/fs/cgroup".into()),
    };
    let have = |c: &str| v2.iter().any(|x| x == c) || v1.iter().any(|x| x == c) || (c == "io" && v1.iter().any(|x| x == "blkio"));
    let missing: Vec<&str> = ["cpu", "memory", "pids", "io"].into_iter().filter(|c| !have(c)).collect();
    if !missing.is_empty() {
        return Fail(
            format!("cgroup {mode}: controller(s) {} not available: limits on them fail", missing.join(", ")),
            format!("enable them on the kernel command line (e.g. cgroup_enable={} in GRUB_CMDLINE_LINUX, then update-grub and reboot)", missing.join(",")),
        );
    }
    Good(format!("{mode}; cpu, memory, pids, io available"))
}

const OVERLAYFS_MAGIC: i64 = 0x794c7630;
const BTRFS_MAGIC: i64 = 0x9123683e;

/// The file system type of the closest existing ancestor of `p`.
fn fs_magic(p: &Path) -> Option<i64> {
    let mut p = p.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a struct to fill
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0).then_some(s.f_type as i64)
}

fn storage(cfg: &DaemonConfig, root: &Path) -> Verdict {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let fs = fs_magic(root);
    match cfg.storage_driver() {
        "overlay2" => {
            if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
                return Fail("overlay2: the kernel has no overlay file system".into(), "modprobe overlay (and add overlay to /etc/modules)".into());
            }
            if fs == Some(OVERLAYFS_MAGIC) {
                return Fail(
                    format!("overlay2: the data root {} is on overlayfs, which cannot hold overlay2's upper layers", root.display()),
                    "put data-root on ext4 or xfs (daemon.json \"data-root\"), or use \"storage-driver\": \"vfs\"".into(),
                );
            }
            Good(format!("overlay2, data root {}", root.display()))
        }
        "btrfs" if fs != Some(BTRFS_MAGIC) => Fail(
            format!("btrfs: the data root {} is not on a btrfs file system", root.display()),
            "put data-root on btrfs (mkfs.btrfs, mount), or use \"storage-driver\": \"overlay2\"".into(),
        ),
        d => Good(format!("{d}, data root {}", root.display())),
    }
}

fn nats_server() -> Verdict {
    let bin = match crate::nats::nats_server_bin() {
        Ok(b) => b,
        Err(_) => return Fail("nats-server not found".into(), "apt-get install nats-server (2.9 or newer), or run berth up --nats URL".into()),
    };
    let out = Command::new(&bin).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let ver = out.split_whitespace().find_map(|w| w.strip_prefix('v')).unwrap_or("").to_string();
    let mut it = ver.split('.').filter_map(|x| x.parse::<u32>().ok());
    if (it.next().unwrap_or(0), it.next().unwrap_or(0)) < (2, 9) {
        return Fail(format!("{} is version {:?}: berth needs 2.9 or newer", bin.display(), ver), "apt-get install nats-server (Debian 12 has 2.9)".into());
    }
    Good(format!("{} v{ver}", bin.display()))
}

fn nftables(cfg: &DaemonConfig) -> Verdict {
    if cfg.iptables == Some(false) {
        return Good("not used (\"iptables\": false)".into());
    }
    match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Good(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        _ => Fail("nft not found: published ports and network isolation need it".into(), "apt-get install nftables".into()),
    }
}

fn binaries() -> Verdict {
    let missing: Vec<String> = ["gateway", "images", "storage", "runtime", "network", "builder", "swarm", "shim"]
        .iter()
        .map(|s| format!("berth-{s}"))
        .filter(|b| !node::bin(b).is_file())
        .collect();
    if !missing.is_empty() {
        return Fail(
            format!("not found beside berth or in ../libexec/berth: {}", missing.join(", ")),
            "apt-get install --reinstall berth, or build them: cargo build --release --workspace --bins".into(),
        );
    }
    Good(format!("services in {}", node::bin("berth-gateway").parent().map(|p| p.display().to_string()).unwrap_or_default()))
}

/// Each unix socket the API would listen on: free, this root's node's, or another
/// engine's.
fn sockets(flag: &[String], cfg: &DaemonConfig, cfg_path: &Option<PathBuf>, root: &Path) -> Vec<(&'static str, Verdict)> {
    let list = match node::resolve_hosts(flag, cfg, cfg_path) {
        Ok(l) => l,
        Err(e) => return vec![("api socket", Fail(format!("{e:#}"), "give hosts either with -H or in daemon.json, not both".into()))],
    };
    let ours: Option<NodeState> = std::fs::read_to_string(Paths::new(root).run().join("node.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|s: &NodeState| unsafe { libc::kill(s.pid as i32, 0) } == 0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let mut out = Vec::new();
    for h in list {
        let v = match hosts::parse_host(&h) {
            Err(e) => Fail(e.to_string(), "use unix:///path, tcp://host:port or fd://".into()),
            Ok(Host::Fd(_)) => Good(format!("{h}: sockets from systemd (berth.socket)")),
            Ok(Host::Tcp(a)) => {
                if cfg.tlscert.is_none() || cfg.tlskey.is_none() {
                    Fail(format!("tcp://{a} without TLS: berth up refuses it"), "set tlscert and tlskey (and tlscacert, tlsverify) in daemon.json".into())
                } else {
                    Good(format!("tcp://{a} with TLS"))
                }
            }
            Ok(Host::Unix(p)) => {
                let mine = ours.as_ref().is_some_and(|s| s.hosts.iter().any(|x| x == &format!("unix://{}", p.display())));
                if mine {
                    Good(format!("{}: served by the node on {} (berth up pid {})", p.display(), root.display(), ours.as_ref().unwrap().pid))
                } else if !p.exists() {
                    Good(format!("{}: free", p.display()))
                } else if rt.block_on(node::ping_socket(&p)) {
                    Fail(
                        format!("{}: another engine answers on it (Docker?)", p.display()),
                        "stop it (systemctl stop docker.socket docker), or let berth listen elsewhere: berth up -H unix:///run/berth/docker.sock".into(),
                    )
                } else if std::os::unix::net::UnixStream::connect(&p).is_ok() {
                    Fail(format!("{}: in use by a process that is not a Docker engine", p.display()), format!("find it (ss -xlp | grep {}) and stop it, or use another -H", p.display()))
                } else {
                    Warn(format!("{}: a stale socket file (nothing listens)", p.display()), "none needed: berth up replaces it".into())
                }
            }
        };
        out.push(("api socket", v));
    }
    out
}

fn group(cfg: &DaemonConfig) -> Verdict {
    let g = cfg.group.clone().unwrap_or_else(|| hosts::DEFAULT_GROUP.to_string());
    let c = CString::new(g.clone()).unwrap_or_default();
    // SAFETY: a valid C string; the result is only compared with null
    if unsafe { libc::getgrnam(c.as_ptr()) }.is_null() {
        return Warn(
            format!("group {g:?} does not exist: the API socket will be root's only"),
            format!("groupadd --system {g}, then usermod -aG {g} $USER (log in again)"),
        );
    }
    Good(format!("{g:?}: members use the API socket"))
}
