//! `berth up`: one node in the foreground. Starts nats-server (unless `--nats`), then
//! every service, then the gateway; prints `ready` (and tells systemd, `Type=notify`)
//! once `/_ping` answers and every service has answered its health ping; restarts what
//! dies, with backoff; stops everything on SIGTERM/SIGINT within 10 s.
//!
//! Containers outlive every berth process: the services are not tied to `berth up` by a
//! parent-death signal but by a link (a socket pair per child, [`env::SUPERVISOR_FD`]).
//! When `berth up` dies its ends close and each service stops serving and exits without
//! touching containers, sandboxes or mounts; the next `berth up` on the root waits for
//! them to be gone, and its runtime adopts the containers through their shims. Only an
//! orderly stop (SIGTERM/^C) without `live-restore` stops containers, as dockerd does.
//! `berth up` owns the API's listening sockets (bound here or passed by systemd) and
//! hands them to the gateway, so a gateway restart never closes them.

use anyhow::{bail, Context};
use berth_bus::{Bus, Creds};
use berth_config::hosts::{self, Host, SocketKind};
use berth_config::{env, DaemonConfig, Paths};
use bus_schema::Service;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct UpArgs {
    /// Data root (default: data-root from daemon.json, else /var/lib/berth).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Where the Docker API listens (unix:///path, tcp://host:port with TLS, fd:// or
    /// fd://N for sockets passed by systemd); repeatable.
    #[arg(short = 'H', long = "host")]
    pub host: Vec<String>,
    /// daemon.json (default: /etc/berth/daemon.json when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Use this nats-server instead of starting one.
    #[arg(long)]
    pub nats: Option<String>,
    /// Directory of credential files (one `user:password` file per service) for --nats.
    #[arg(long)]
    pub nats_creds: Option<PathBuf>,
    /// Port for the node's own nats-server (default: a free port).
    #[arg(long)]
    pub nats_port: Option<u16>,
    /// Debug logging in every service.
    #[arg(short = 'D', long)]
    pub debug: bool,
    /// Rotate a process's log in <root>/logs once larger than this (Docker's max-size
    /// syntax: 10m, 1g).
    #[arg(long, default_value = "20m", value_parser = crate::logs::parse_size)]
    pub log_max_size: u64,
    /// Log files kept per process, the live one included (Docker's max-file).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub log_max_file: u32,
}

pub const DEFAULT_CONFIG: &str = "/etc/berth/daemon.json";

/// What `berth status` reads: `<root>/run/node.json`.
#[derive(serde::Serialize, serde::Deserialize, Default, Debug)]
pub struct NodeState {
    pub node: String,
    pub pid: u32,
    pub nats_url: String,
    pub hosts: Vec<String>,
    pub services: BTreeMap<String, u32>,
    /// Restarts of each process since the node started.
    #[serde(default)]
    pub restarts: BTreeMap<String, u32>,
    /// The berth version running.
    #[serde(default)]
    pub version: String,
    /// Upgrades done by this node (`berth upgrade` waits for it to grow).
    #[serde(default)]
    pub generation: u64,
    /// What went wrong in the last upgrade, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_error: Option<String>,
}

/// How to start a process afresh (each start gets a command of its own: the fds a
/// start hands over are that start's).
type Recipe = Box<dyn Fn() -> Command + Send>;

/// A process `berth up` runs: a child of this process, known by pid.
struct Proc {
    name: String,
    make: Recipe,
    pid: Option<i32>,
    /// This side of the child's supervisor link (none for nats-server).
    link: Option<UnixStream>,
    started: Instant,
    restarts: u32,
    total_restarts: u32,
    next_start: Option<Instant>,
}

impl Proc {
    fn new(name: &str, make: Recipe) -> Proc {
        Proc { name: name.into(), make, pid: None, link: None, started: Instant::now(), restarts: 0, total_restarts: 0, next_start: None }
    }
}

pub fn config_path(arg: Option<PathBuf>) -> Option<PathBuf> {
    arg.or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()))
}

pub fn load_config(path: &Option<PathBuf>) -> anyhow::Result<DaemonConfig> {
    match path {
        Some(p) if !p.exists() => bail!("daemon.json not found: {}", p.display()),
        Some(p) => Ok(DaemonConfig::load(p)?),
        None => Ok(DaemonConfig::default()),
    }
}

fn node_id(paths: &Paths) -> anyhow::Result<String> {
    let f = paths.node_id_file();
    if let Ok(s) = std::fs::read_to_string(&f) {
        let s = s.trim().to_string();
        if bus_schema::subject::valid_node(&s) {
            return Ok(s);
        }
    }
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let id = hex::encode(b);
    berth_config::paths::write_atomic(&f, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// A service's binary: beside `berth` (a build tree), in `../libexec/berth` (the
/// package: /usr/bin/berth, /usr/libexec/berth/berth-*), else from PATH.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            for p in [dir.join(name), dir.join("../libexec/berth").join(name)] {
                if p.is_file() {
                    return p;
                }
            }
        }
    }
    PathBuf::from(name)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(paths: &Paths, name: &str) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new().create(true).append(true).open(paths.logs().join(format!("{name}.log")))?)
}

/// Reap `p`, waiting for it.
fn reap_blocking(p: &mut Proc) {
    if let Some(pid) = p.pid.take() {
        let mut st = 0;
        // SAFETY: waitpid on our own child
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    p.link = None;
}

/// Take the root's lock so two nodes never share a data root.
fn lock_root(paths: &Paths) -> anyhow::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(paths.run().join("berth.lock"))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another berth node is running on {}", paths.root().display());
    }
    Ok(f)
}

/// The hosts to listen on: `-H` or daemon.json's `hosts` (both is an error, as with
/// dockerd), else Docker's default socket.
pub fn resolve_hosts(flag: &[String], cfg: &DaemonConfig, cfg_path: &Option<PathBuf>) -> anyhow::Result<Vec<String>> {
    match (flag.is_empty(), cfg.hosts.is_empty()) {
        (false, false) => bail!(
            "unable to configure the berth daemon with file {}: the following directives are specified both as a flag and in the configuration file: hosts: (from flag: [{}], from file: [{}])",
            cfg_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            flag.join(" "),
            cfg.hosts.join(" ")
        ),
        (false, true) => Ok(flag.to_vec()),
        (true, false) => Ok(cfg.hosts.clone()),
        (true, true) => Ok(vec![format!("unix://{}", hosts::DEFAULT_SOCKET)]),
    }
}

/// A listening socket of the API, held by `berth up` for the gateway.
struct ApiSocket {
    fd: OwnedFd,
    /// `unix:///path` or `tcp://addr`, for `berth status` and the readiness ping.
    addr: String,
    /// A socket file this process bound (removed at an orderly stop).
    own_file: Option<PathBuf>,
}

/// Bind (or take from systemd) every host, as dockerd does.
fn open_hosts(list: &[String], cfg: &DaemonConfig) -> anyhow::Result<Vec<ApiSocket>> {
    let group = cfg.group.clone().unwrap_or_else(|| hosts::DEFAULT_GROUP.to_string());
    let tls = cfg.tlscert.is_some() && cfg.tlskey.is_some();
    let activated = hosts::activated_fds();
    let mut out = Vec::new();
    for h in list {
        match hosts::parse_host(h)? {
            Host::Unix(p) => {
                let (l, warning) = hosts::bind_unix(&p, &group)?;
                if let Some(w) = warning {
                    eprintln!("berth: warning: {w}");
                }
                out.push(ApiSocket { fd: l.into(), addr: format!("unix://{}", p.display()), own_file: Some(p) });
            }
            Host::Tcp(a) => {
                if !tls {
                    bail!("refusing to listen on tcp://{a} without TLS: set tlscert and tlskey (and tlsverify, tlscacert) in daemon.json");
                }
                out.push(ApiSocket { fd: hosts::bind_tcp(&a)?.into(), addr: format!("tcp://{a}"), own_file: None });
            }
            Host::Fd(n) => {
                for fd in hosts::select_activated(n, &activated)? {
                    // SAFETY: systemd passed this fd to this process
                    let owned: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
                    let addr = match hosts::socket_kind(owned.as_fd())? {
                        SocketKind::Unix(p) => format!("unix://{}", p.display()),
                        SocketKind::Tcp(a) => {
                            if !tls {
                                bail!("refusing to listen on tcp://{a} without TLS: set tlscert and tlskey (and tlsverify, tlscacert) in daemon.json");
                            }
                            format!("tcp://{a}")
                        }
                    };
                    out.push(ApiSocket { fd: owned, addr, own_file: None });
                }
            }
        }
    }
    Ok(out)
}

pub fn up(a: UpArgs) -> anyhow::Result<()> {
    let cfg_path = config_path(a.config.clone());
    let cfg = load_config(&cfg_path)?;
    let root = a.root.clone().unwrap_or_else(|| cfg.data_root());
    let paths = Paths::new(&root);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let rotation = crate::logs::Rotation { max_size: a.log_max_size, max_file: a.log_max_file };
    if let Ok(h) = std::env::var(HANDOVER) {
        crate::logs::spawn_rotation(paths.logs(), rotation);
        // this process re-executed itself for an upgrade: take over, replace the
        // services one by one
        let h: Handover = serde_json::from_str(&h).context("the handover state")?;
        let records_ok = berth_config::records::FORMATS
            .iter()
            .map(|(svc, _)| berth_config::records::check(&paths.service(svc), svc))
            .collect::<Result<Vec<_>, _>>();
        let mut sup = resume(h, &a, cfg_path, paths)?;
        rt.block_on(async {
            let sigs = Signals::new()?;
            match records_ok {
                Ok(_) => {
                    let admin = connect_admin(&sup.nats_url, &sup.creds_dir, &sup.node).await?;
                    sup.replace_all(&admin).await;
                }
                Err(e) => {
                    eprintln!("berth: upgrade refused, the services keep running: {e}");
                    sup.upgrade_error = Some(e.to_string());
                }
            }
            sup.generation += 1;
            sup.write_state();
            serve(sup, sigs).await
        })?;
        return Ok(());
    }
    for d in [paths.root().to_path_buf(), paths.run(), paths.logs(), paths.bus()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(paths.root(), std::fs::Permissions::from_mode(0o711))?;
    let lock = lock_root(&paths)?;
    crate::logs::spawn_rotation(paths.logs(), rotation);
    // daemon.json `pidfile`, as dockerd writes it (removed at an orderly stop)
    if let Some(f) = pidfile(&cfg) {
        std::fs::write(&f, format!("{}", std::process::id())).with_context(|| format!("writing the pidfile {}", f.display()))?;
    }
    let node = node_id(&paths)?;
    // records newer than this berth (a downgrade): refuse before anything starts
    for (svc, _) in berth_config::records::FORMATS {
        berth_config::records::check(&paths.service(svc), svc)?;
    }
    wait_for_previous(&paths);
    let container_nofile = raise_nofile();
    let host_list = resolve_hosts(&a.host, &cfg, &cfg_path)?;
    let sockets = open_hosts(&host_list, &cfg)?;
    let own: Vec<PathBuf> = sockets.iter().filter_map(|s| s.own_file.clone()).collect();
    let res = rt.block_on(async {
        // the handlers first: a SIGTERM while the services start is an orderly stop once
        // they have, not the default action's death of `berth up` alone
        let sigs = Signals::new()?;
        let sup = start(&a, cfg_path, paths, node, lock, sockets, container_nofile).await?;
        serve(sup, sigs).await
    });
    if res.is_err() {
        for p in own {
            let _ = std::fs::remove_file(p);
        }
    }
    res.map(|_| ())
}

/// The processes of a previous `berth up` on this root that may still be finishing
/// (a killed node's services stop serving and exit on their own): wait for them, so
/// the root never has two sets of services; after 10 s they are killed.
fn wait_for_previous(paths: &Paths) {
    let Ok(text) = std::fs::read_to_string(paths.run().join("node.json")) else { return };
    let Ok(old) = serde_json::from_str::<NodeState>(&text) else { return };
    let ours = |pid: u32| -> bool {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let want = format!("{}={}", env::ROOT, paths.root().display());
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).into_owned();
        environ.split(|b| *b == 0).any(|v| v == want.as_bytes())
            || cmdline.contains(&paths.bus().join("nats.conf").display().to_string())
    };
    let left: Vec<u32> = old.services.values().copied().filter(|p| ours(*p)).collect();
    if left.is_empty() {
        return;
    }
    eprintln!("berth: waiting for {} process(es) of the previous node on {} to exit", left.len(), paths.root().display());
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if !left.iter().any(|p| ours(*p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in left.into_iter().filter(|p| ours(*p)) {
        eprintln!("berth: killing process {p} of the previous node");
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}

/// Raises the soft open-files limit to the hard one (as Go programs, and so Moby, do):
/// the runtime holds a connection per running container, the gateway per client. The
/// services inherit it; the limit it had is returned when raised, for containers.
fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a local struct
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= lim.rlim_max {
        return None;
    }
    let soft = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return None;
    }
    Some(soft)
}

/// How the node ended.
enum Exit {
    /// SIGTERM/SIGINT: everything stopped in order.
    Orderly,
}

/// How to start a backend service or the gateway.
#[allow(clippy::too_many_arguments)]
fn service_recipe(
    svc: Service,
    paths: &Paths,
    nats_url: &str,
    node: &str,
    cfg_path: &Option<PathBuf>,
    creds_dir: &Option<PathBuf>,
    debug: bool,
    container_nofile: Option<u64>,
    api_fds: &[RawFd],
) -> Recipe {
    let (paths, nats_url, node, cfg_path, creds_dir, api_fds) =
        (paths.clone(), nats_url.to_string(), node.to_string(), cfg_path.clone(), creds_dir.clone(), api_fds.to_vec());
    Box::new(move || {
        let mut cmd = Command::new(bin(&format!("berth-{}", svc.name())));
        cmd.env(env::ROOT, paths.root())
            .env(env::NATS_URL, &nats_url)
            .env(env::NODE, &node)
            .env(env::CONFIG, cfg_path.clone().unwrap_or_default());
        if let Some(d) = &creds_dir {
            cmd.env(env::NATS_CREDS, d.join(svc.name()));
        }
        if debug {
            cmd.env(env::LOG, "debug");
        }
        if let Some(n) = container_nofile {
            cmd.env(env::CONTAINER_NOFILE, n.to_string());
        }
        if svc == Service::Gateway {
            let hosts: Vec<String> = api_fds.iter().map(|fd| format!("fd://{fd}")).collect();
            cmd.env(env::HOSTS, hosts.join(","));
            let fds = api_fds.clone();
            // SAFETY: only fcntl (async-signal-safe) between fork and exec
            unsafe {
                cmd.pre_exec(move || {
                    for fd in &fds {
                        libc::fcntl(*fd, libc::F_SETFD, 0);
                    }
                    Ok(())
                });
            }
        }
        cmd
    })
}

/// The environment variable a re-executed `berth up` finds its predecessor's state in.
const HANDOVER: &str = "BERTH_HANDOVER";

/// What `berth up` hands to the new binary when it re-executes itself for an upgrade:
/// the same pid keeps its children, the root's lock, the API's sockets and the links.
#[derive(serde::Serialize, serde::Deserialize)]
struct Handover {
    exe: PathBuf,
    node: String,
    nats_url: String,
    creds_dir: Option<PathBuf>,
    nats_pid: Option<i32>,
    /// (name, pid, this side of its link, restarts) of each service, in start order.
    procs: Vec<(String, i32, Option<RawFd>, u32)>,
    /// (fd, address, socket file bound by this node) of each API socket.
    sockets: Vec<(RawFd, String, Option<PathBuf>)>,
    lock_fd: RawFd,
    container_nofile: Option<u64>,
    generation: u64,
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on an fd this process holds
    unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
}

/// Everything a running `berth up` holds.
struct Supervisor {
    paths: Paths,
    node: String,
    nats_url: String,
    creds_dir: Option<PathBuf>,
    cfg_path: Option<PathBuf>,
    debug: bool,
    container_nofile: Option<u64>,
    exe: PathBuf,
    lock: std::fs::File,
    sockets: Vec<ApiSocket>,
    nats: Option<Proc>,
    procs: Vec<Proc>,
    /// Instances an upgrade replaced, finishing what they serve.
    retiring: Vec<Proc>,
    generation: u64,
    upgrade_error: Option<String>,
}

impl Supervisor {
    fn api_fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(|s| s.fd.as_raw_fd()).collect()
    }

    fn hosts(&self) -> Vec<String> {
        self.sockets.iter().map(|s| s.addr.clone()).collect()
    }

    fn recipe(&self, svc: Service) -> Recipe {
        service_recipe(svc, &self.paths, &self.nats_url, &self.node, &self.cfg_path, &self.creds_dir, self.debug, self.container_nofile, &self.api_fds())
    }

    fn write_state(&self) {
        let mut services = BTreeMap::new();
        let mut restarts = BTreeMap::new();
        for p in self.nats.iter().chain(self.procs.iter()) {
            restarts.insert(p.name.clone(), p.total_restarts);
            if let Some(pid) = p.pid {
                services.insert(p.name.clone(), pid as u32);
            }
        }
        let st = NodeState {
            node: self.node.clone(),
            pid: std::process::id(),
            nats_url: self.nats_url.clone(),
            hosts: self.hosts(),
            services,
            restarts,
            version: berth_config::VERSION.into(),
            generation: self.generation,
            upgrade_error: self.upgrade_error.clone(),
        };
        let _ = berth_config::paths::write_atomic(&self.paths.run().join("node.json"), serde_json::to_string_pretty(&st).unwrap().as_bytes());
    }

    /// Restart what died (telling the node first that its instance is gone); reap
    /// what an upgrade retired.
    async fn supervise(&mut self, admin: &Bus) {
        let mut changed = false;
        if let Some(p) = self.nats.as_mut() {
            changed |= supervise(p, &self.paths).is_some();
        }
        for p in self.procs.iter_mut() {
            if let Some(pid) = supervise(p, &self.paths) {
                changed = true;
                announce_exit(admin, &self.node, &p.name, pid).await;
            }
        }
        self.retiring.retain_mut(|p| reap(p).is_none());
        if changed {
            self.write_state();
        }
    }

    /// Re-execute the `berth` binary now on disk with this node's state (the upgrade's
    /// first half; [`Supervisor::resume`] is the second). Returns only if the exec failed.
    fn reexec(&mut self) -> anyhow::Error {
        let h = Handover {
            exe: self.exe.clone(),
            node: self.node.clone(),
            nats_url: self.nats_url.clone(),
            creds_dir: self.creds_dir.clone(),
            nats_pid: self.nats.as_ref().and_then(|p| p.pid),
            procs: self
                .procs
                .iter()
                .chain(self.retiring.iter())
                .filter_map(|p| Some((p.name.clone(), p.pid?, p.link.as_ref().map(|l| l.as_raw_fd()), p.total_restarts)))
                .collect(),
            sockets: self.sockets.iter().map(|s| (s.fd.as_raw_fd(), s.addr.clone(), s.own_file.clone())).collect(),
            lock_fd: self.lock.as_raw_fd(),
            container_nofile: self.container_nofile,
            generation: self.generation,
        };
        let mut fds: Vec<RawFd> = vec![h.lock_fd];
        fds.extend(h.sockets.iter().map(|s| s.0));
        fds.extend(h.procs.iter().filter_map(|p| p.2));
        for fd in &fds {
            set_cloexec(*fd, false);
        }
        let json = serde_json::to_string(&h).expect("handover state");
        let err = Command::new(&self.exe).args(std::env::args_os().skip(1)).env(HANDOVER, json).exec();
        for fd in &fds {
            set_cloexec(*fd, true);
        }
        anyhow::anyhow!("re-executing {}: {err}", self.exe.display())
    }

    /// A backend replaced by a new instance of its binary: the new one starts (and
    /// waits for the service's lock), the old one is let go (it stops serving and exits
    /// without touching containers), and the new one takes over once it answers.
    async fn replace_backend(&mut self, i: usize, admin: &Bus) -> anyhow::Result<()> {
        let svc = Service::from_name(&self.procs[i].name).context("unknown service")?;
        let mut new = Proc::new(svc.name(), self.recipe(svc));
        new.total_restarts = self.procs[i].total_restarts;
        spawn(&mut new, &self.paths, true)?;
        let mut old = std::mem::replace(&mut self.procs[i], new);
        old.link = None;
        let t0 = Instant::now();
        while reap(&mut old).is_none() {
            if t0.elapsed() > Duration::from_secs(15) {
                if let Some(pid) = old.pid {
                    eprintln!("berth: the old {} (pid {pid}) did not exit in 15 s: killing it", svc.name());
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let b = berth_bus::SystemClient::new(admin.clone()).with_timeout(Duration::from_millis(500));
        let t0 = Instant::now();
        loop {
            if b.ping(svc).await.is_ok() {
                return Ok(());
            }
            if self.procs[i].pid.is_none() || reap(&mut self.procs[i]).is_some() {
                bail!("the new {} exited at start; see {}", svc.name(), self.paths.logs().join(format!("{}.log", svc.name())).display());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the new {} did not answer within 60 s", svc.name());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The gateway replaced with no gap: the new one serves on the same sockets before
    /// the old one stops accepting (and finishes the requests it has).
    async fn replace_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let mut new = Proc::new("gateway", self.recipe(Service::Gateway));
        new.total_restarts = self.procs[i].total_restarts;
        spawn(&mut new, &self.paths, true)?;
        let link = new.link.as_ref().context("gateway link")?.try_clone()?;
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let _ = link.set_read_timeout(Some(Duration::from_secs(60)));
            let mut b = [0u8; 1];
            matches!((&link).read(&mut b), Ok(1))
        });
        if !ready.await.unwrap_or(false) {
            // keep the old one serving
            if let Some(pid) = new.pid {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            reap_blocking(&mut new);
            bail!("the new gateway did not start serving; see {}", self.paths.logs().join("gateway.log").display());
        }
        let mut old = std::mem::replace(&mut self.procs[i], new);
        old.link = None;
        self.retiring.push(old);
        Ok(())
    }

    /// The upgrade's second half, in the re-executed binary: every service replaced by
    /// its new binary, one at a time, in start order; the gateway last.
    async fn replace_all(&mut self, admin: &Bus) {
        let t0 = Instant::now();
        let mut errors = Vec::new();
        for i in 0..self.procs.len() {
            let name = self.procs[i].name.clone();
            let r = if name == "gateway" { self.replace_gateway(i).await } else { self.replace_backend(i, admin).await };
            match r {
                Ok(()) => eprintln!("berth: upgrade: {name} replaced"),
                Err(e) => {
                    eprintln!("berth: upgrade: {name}: {e:#}");
                    errors.push(format!("{name}: {e:#}"));
                }
            }
            self.write_state();
        }
        eprintln!("berth: upgrade to {} done in {:.2}s", berth_config::VERSION, t0.elapsed().as_secs_f64());
        self.upgrade_error = (!errors.is_empty()).then(|| errors.join("; "));
    }
}

/// The new binary's start after [`Supervisor::reexec`]: take over what the old one held.
fn resume(h: Handover, a: &UpArgs, cfg_path: Option<PathBuf>, paths: Paths) -> anyhow::Result<Supervisor> {
    use std::os::fd::FromRawFd;
    for fd in [h.lock_fd].into_iter().chain(h.sockets.iter().map(|s| s.0)).chain(h.procs.iter().filter_map(|p| p.2)) {
        set_cloexec(fd, true);
    }
    // SAFETY: the fds were handed over by this process's previous image for these uses
    let lock = unsafe { std::fs::File::from_raw_fd(h.lock_fd) };
    let sockets = h
        .sockets
        .iter()
        .map(|(fd, addr, own)| ApiSocket { fd: unsafe { OwnedFd::from_raw_fd(*fd) }, addr: addr.clone(), own_file: own.clone() })
        .collect();
    let mut sup = Supervisor {
        paths,
        node: h.node,
        nats_url: h.nats_url,
        creds_dir: h.creds_dir,
        cfg_path,
        debug: a.debug,
        container_nofile: h.container_nofile,
        exe: h.exe,
        lock,
        sockets,
        nats: None,
        procs: Vec::new(),
        retiring: Vec::new(),
        generation: h.generation,
        upgrade_error: None,
    };
    if let Some(pid) = h.nats_pid {
        let port = sup.nats_url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let (conf, changed) = crate::nats::write_config_keeping(&sup.paths.bus(), port, &sup.node)?;
        let mut p = Proc::new("nats-server", nats_recipe(crate::nats::nats_server_bin()?, conf));
        p.pid = Some(pid);
        if changed {
            // the new permissions, for connections old and new
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
        sup.nats = Some(p);
    }
    let services: Vec<&str> = Service::BACKENDS.iter().chain([Service::Gateway].iter()).map(|s| s.name()).collect();
    for (name, pid, link, restarts) in h.procs {
        let Some(svc) = Service::from_name(&name) else { continue };
        let mut p = Proc::new(&name, sup.recipe(svc));
        p.pid = Some(pid);
        p.link = link.map(|fd| unsafe { UnixStream::from_raw_fd(fd) });
        p.total_restarts = restarts;
        if link.is_some() && !sup.procs.iter().any(|q| q.name == name) {
            sup.procs.push(p);
        } else {
            sup.retiring.push(p);
        }
    }
    sup.procs.sort_by_key(|p| services.iter().position(|s| *s == p.name));
    Ok(sup)
}

fn nats_recipe(server: PathBuf, conf: PathBuf) -> Recipe {
    Box::new(move || {
        let mut cmd = Command::new(&server);
        cmd.arg("-c").arg(&conf);
        // The bus goes with `berth up`: a killed node's services stop anyway, and the
        // next node writes new credentials.
        // SAFETY: prctl is async-signal-safe
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd
    })
}

/// A first start: the bus, the services, the gateway.
async fn start(
    a: &UpArgs,
    cfg_path: Option<PathBuf>,
    paths: Paths,
    node: String,
    lock: std::fs::File,
    sockets: Vec<ApiSocket>,
    container_nofile: Option<u64>,
) -> anyhow::Result<Supervisor> {
    let exe = std::env::current_exe().context("the berth binary's path")?;
    let (nats_url, creds_dir, nats) = match &a.nats {
        Some(url) => (url.clone(), a.nats_creds.clone(), None),
        None => {
            let port = match a.nats_port {
                Some(p) => p,
                None => free_port()?,
            };
            let conf = crate::nats::write_config(&paths.bus(), port, &node)?;
            let mut p = Proc::new("nats-server", nats_recipe(crate::nats::nats_server_bin()?, conf));
            spawn(&mut p, &paths, false)?;
            (format!("nats://127.0.0.1:{port}"), Some(paths.bus().join("creds")), Some(p))
        }
    };
    let mut sup = Supervisor {
        paths,
        node,
        nats_url,
        creds_dir,
        cfg_path,
        debug: a.debug,
        container_nofile,
        exe,
        lock,
        sockets,
        nats,
        procs: Vec::new(),
        retiring: Vec::new(),
        generation: 0,
        upgrade_error: None,
    };
    let admin = connect_admin(&sup.nats_url, &sup.creds_dir, &sup.node).await?;
    ensure_event_stream(&admin).await;
    let t0 = Instant::now();
    let hosts = sup.hosts();
    let sock = hosts.iter().find_map(|h| h.strip_prefix("unix://").map(PathBuf::from));
    // The services, then (once they all answer) the gateway: the API's first request
    // (with socket activation, the one that started the node, waiting in the socket's
    // queue) finds every service there.
    for svc in Service::BACKENDS {
        let mut p = Proc::new(svc.name(), sup.recipe(svc));
        spawn(&mut p, &sup.paths, true)?;
        sup.procs.push(p);
    }
    sup.write_state();
    let mut gateway_started = false;
    loop {
        for p in sup.procs.iter_mut() {
            if reap(p).is_some() {
                let log = sup.paths.logs().join(format!("{}.log", p.name));
                // the service's own words first (`Error: ...`, e.g. a bridge another node owns)
                let last = std::fs::read_to_string(&log).unwrap_or_default();
                let why = last.lines().rev().find(|l| l.starts_with("Error: ")).unwrap_or("").trim_start_matches("Error: ");
                bail!("{} exited during start-up: {why}; see {}", p.name, log.display());
            }
        }
        if !gateway_started && services_healthy(&admin).await.iter().all(|(_, ok)| *ok) {
            let mut p = Proc::new(Service::Gateway.name(), sup.recipe(Service::Gateway));
            spawn(&mut p, &sup.paths, true)?;
            sup.procs.push(p);
            sup.write_state();
            gateway_started = true;
        }
        if gateway_started
            && match &sock {
                Some(s) => ping_socket(s).await,
                None => true,
            }
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the node did not become ready within 60 s; see {}", sup.paths.logs().display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "berth node {} ready in {:.2}s on {} (root {})",
        sup.node,
        t0.elapsed().as_secs_f64(),
        hosts.join(", "),
        sup.paths.root().display()
    );
    Ok(sup)
}

/// Supervise until SIGTERM/SIGINT (then stop everything in order) or SIGUSR2 (then
/// re-execute the binary on disk: an upgrade).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())?, usr2: signal(SignalKind::user_defined2())? })
    }
}

async fn serve(mut sup: Supervisor, sigs: Signals) -> anyhow::Result<Exit> {
    let Signals { term: mut sigterm, int: mut sigint, usr2: mut sigusr2 } = sigs;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let admin = connect_admin(&sup.nats_url, &sup.creds_dir, &sup.node).await?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sigusr2.recv() => {
                eprintln!("berth: upgrade: re-executing {}", sup.exe.display());
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                let e = sup.reexec();
                eprintln!("berth: upgrade failed: {e:#}");
                sup.upgrade_error = Some(format!("{e:#}"));
                sup.generation += 1;
                sup.write_state();
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            _ = tick.tick() => sup.supervise(&admin).await,
        }
    }

    // Stop: the gateway first, then the services that use the others (the runtime
    // stops its containers unless live-restore, and gives back their sandboxes and
    // layers), then the rest, then the bus; within 10 s.
    eprintln!("berth: stopping node {}", sup.node);
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    for mut p in std::mem::take(&mut sup.retiring) {
        stop(&mut p, Duration::from_secs(1)).await;
    }
    if let Some(i) = sup.procs.iter().position(|p| p.name == "gateway") {
        let mut p = sup.procs.remove(i);
        stop(&mut p, Duration::from_secs(1)).await;
    }
    let (users, rest): (Vec<_>, Vec<_>) =
        std::mem::take(&mut sup.procs).into_iter().partition(|p| matches!(p.name.as_str(), "runtime" | "builder" | "swarm"));
    // daemon.json `shutdown-timeout`: the runtime stops containers for that long
    let users_grace = load_config(&sup.cfg_path).ok().and_then(|c| c.shutdown_timeout).map_or(4, |t| t as u64 + 4);
    for (wave, grace) in [(users, users_grace), (rest, 3)] {
        let mut stops = Vec::new();
        for mut p in wave {
            stops.push(tokio::spawn(async move { stop(&mut p, Duration::from_secs(grace)).await }));
        }
        for s in stops {
            let _ = s.await;
        }
    }
    if let Some(mut p) = sup.nats.take() {
        stop(&mut p, Duration::from_secs(1)).await;
    }
    let _ = std::fs::remove_file(sup.paths.run().join("node.json"));
    if let Some(f) = load_config(&sup.cfg_path).ok().as_ref().and_then(pidfile) {
        let _ = std::fs::remove_file(f);
    }
    for s in &sup.sockets {
        if let Some(p) = &s.own_file {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(Exit::Orderly)
}

fn pidfile(cfg: &DaemonConfig) -> Option<PathBuf> {
    cfg.other.get("pidfile").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// Tell systemd (`Type=notify`) when run by it; nothing otherwise.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(state);
}

/// Start `p`. Services get their supervisor link; none inherits systemd's variables.
fn spawn(p: &mut Proc, paths: &Paths, linked: bool) -> anyhow::Result<()> {
    let log = log_file(paths, &p.name)?;
    let mut cmd = (p.make)();
    for v in hosts::SYSTEMD_VARS {
        cmd.env_remove(v);
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Own process group: a terminal's ^C reaches only `berth up`, which stops the
    // services in order.
    cmd.process_group(0);
    let theirs = if linked {
        let (ours, theirs) = UnixStream::pair().context("supervisor link")?;
        let fd = theirs.as_raw_fd();
        cmd.env(env::SUPERVISOR_FD, fd.to_string());
        // SAFETY: only fcntl (async-signal-safe) between fork and exec
        unsafe {
            cmd.pre_exec(move || {
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
        p.link = Some(ours);
        Some(theirs)
    } else {
        None
    };
    let child = cmd.spawn().with_context(|| format!("starting {}", p.name))?;
    drop(theirs);
    p.pid = Some(child.id() as i32);
    p.started = Instant::now();
    Ok(())
}

/// The exit status of `p` if it has exited (and is reaped now).
fn reap(p: &mut Proc) -> Option<std::process::ExitStatus> {
    let pid = p.pid?;
    let mut status = 0;
    // SAFETY: waitpid on our own child
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid || (r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)) {
        p.pid = None;
        p.link = None;
        use std::os::unix::process::ExitStatusExt;
        return Some(std::process::ExitStatus::from_raw(status));
    }
    None
}

/// Restart a process that died: at once the first time, then with doubling delays
/// up to 5 s; the delay resets after 30 s of good health. Some(pid) when it found the
/// process dead, Some(0) when it restarted it.
fn supervise(p: &mut Proc, paths: &Paths) -> Option<i32> {
    if let Some(at) = p.next_start {
        if Instant::now() >= at {
            p.next_start = None;
            let linked = p.name != "nats-server";
            match spawn(p, paths, linked) {
                Ok(()) => eprintln!("berth: restarted {} (restart #{})", p.name, p.restarts),
                Err(e) => {
                    eprintln!("berth: restarting {} failed: {e:#}", p.name);
                    p.next_start = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            return Some(0);
        }
        return None;
    }
    let pid = p.pid.unwrap_or(0);
    if let Some(status) = reap(p) {
        if p.started.elapsed() > Duration::from_secs(30) {
            p.restarts = 0;
        }
        let delay = if p.restarts == 0 { Duration::ZERO } else { Duration::from_millis((100u64 << p.restarts.min(6)).min(5000)) };
        p.restarts += 1;
        p.total_restarts += 1;
        eprintln!("berth: {} exited ({status}); restarting in {:?}", p.name, delay);
        p.next_start = Some(Instant::now() + delay);
        return Some(pid);
    }
    None
}

/// Tell the node that a service's instance is gone: requests and streams it served
/// fail at once (see berth_bus's liveness). Published before the next instance starts.
async fn announce_exit(admin: &Bus, node: &str, name: &str, pid: i32) {
    let Some(service) = Service::from_name(name).filter(|_| pid > 0) else { return };
    let n = bus_schema::system::ServiceExited { service, node: node.to_string(), pid: pid as u32, at_mono_ns: berth_bus::mono_ns() };
    let subject = bus_schema::subject::instance_subject(node, service, bus_schema::subject::InstanceEvent::Exited);
    if let Ok(b) = bus_schema::encode(&n) {
        // no flush: with the bus down it would wait, and this loop restarts the bus
        let _ = admin.client().publish(subject, b.into()).await;
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn stop(p: &mut Proc, grace: Duration) {
    let Some(pid) = p.pid else { return };
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t0 = Instant::now();
    while reap(p).is_none() {
        if t0.elapsed() > grace {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap_blocking(p);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn connect_admin(url: &str, creds_dir: &Option<PathBuf>, node: &str) -> anyhow::Result<Bus> {
    let creds = match creds_dir {
        Some(d) if d.join("admin").exists() => Some(Creds::load(&d.join("admin"))?),
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Bus::connect(url, creds.clone(), node, "admin").await {
            Ok(b) => return Ok(b),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("{e}"),
        }
    }
}

/// Ping every service: (name, healthy).
pub async fn services_healthy(bus: &Bus) -> Vec<(Service, bool)> {
    let b = berth_bus::SystemClient::new(bus.clone()).with_timeout(Duration::from_millis(500));
    let futs = Service::ALL.into_iter().filter(|s| *s != Service::Gateway).map(|svc| {
        let b = b.clone();
        async move { (svc, b.ping(svc).await.is_ok()) }
    });
    let mut v = Vec::new();
    for f in futs {
        v.push(f.await);
    }
    v
}

/// GET /_ping over a unix socket.
pub async fn ping_socket(sock: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(500), tokio::net::UnixStream::connect(sock)).await else {
        return false;
    };
    if s.write_all(b"GET /_ping HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}

/// The JetStream stream that keeps events for `docker events --since`.
async fn ensure_event_stream(bus: &Bus) {
    let js = berth_bus::async_nats::jetstream::new(bus.client().clone());
    let cfg = berth_bus::async_nats::jetstream::stream::Config {
        name: bus_schema::subject::EVENTS_STREAM.to_string(),
        subjects: vec![bus_schema::subject::EVENTS_WILDCARD.to_string()],
        max_age: Duration::from_secs(7 * 24 * 3600),
        max_bytes: 64 << 20,
        storage: berth_bus::async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    if let Err(e) = js.get_or_create_stream(cfg).await {
        eprintln!("berth: warning: could not create the events stream: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_the_flag_or_the_file_not_both() {
        let cfg = DaemonConfig::parse(r#"{"hosts":["unix:///a.sock"]}"#, "t").unwrap();
        let p = Some(PathBuf::from("/etc/berth/daemon.json"));
        assert_eq!(resolve_hosts(&[], &cfg, &p).unwrap(), vec!["unix:///a.sock"]);
        assert_eq!(resolve_hosts(&["fd://".into()], &DaemonConfig::default(), &p).unwrap(), vec!["fd://"]);
        assert_eq!(resolve_hosts(&[], &DaemonConfig::default(), &p).unwrap(), vec!["unix:///var/run/docker.sock"]);
        let e = resolve_hosts(&["fd://".into()], &cfg, &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to configure the berth daemon with file /etc/berth/daemon.json: the following directives are specified both as a flag and in the configuration file: hosts: (from flag: [fd://], from file: [unix:///a.sock])"
        );
    }
}
