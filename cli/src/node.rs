//! `berth up`: one node in the foreground. Starts nats-server (unless `--nats`), then
//! every service, then the gateway; prints `ready` once `/_ping` answers and every
//! service has answered its health ping; restarts what dies, with backoff; stops
//! everything on SIGTERM/SIGINT within 10 s.

use anyhow::{bail, Context};
use berth_bus::{Bus, Creds};
use berth_config::{env, DaemonConfig, Paths};
use bus_schema::{system::ServicePing, Service};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(clap::Args, Clone)]
pub struct UpArgs {
    /// Data root (default: data-root from daemon.json, else /var/lib/berth).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Where the Docker API listens (unix:///path or tcp://host:port with TLS); repeatable.
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
}

struct Proc {
    name: String,
    child: Option<Child>,
    /// The running child's pid (the child forgets it once reaped).
    pid: u32,
    started: Instant,
    restarts: u32,
    total_restarts: u32,
    next_start: Option<Instant>,
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

fn bin(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join(name);
            if p.is_file() {
                return p;
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

/// Take the root's lock so two nodes never share a data root.
fn lock_root(paths: &Paths) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(paths.run().join("berth.lock"))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another berth node is running on {}", paths.root().display());
    }
    Ok(f)
}

pub fn up(a: UpArgs) -> anyhow::Result<()> {
    let cfg_path = config_path(a.config.clone());
    let cfg = load_config(&cfg_path)?;
    let root = a.root.clone().unwrap_or_else(|| cfg.data_root());
    let paths = Paths::new(&root);
    for d in [paths.root().to_path_buf(), paths.run(), paths.logs(), paths.bus()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(paths.root(), std::fs::Permissions::from_mode(0o711))?;
    let _lock = lock_root(&paths)?;
    let node = node_id(&paths)?;
    let container_nofile = raise_nofile();
    let hosts = if !a.host.is_empty() {
        a.host.clone()
    } else if !cfg.hosts.is_empty() {
        cfg.hosts.clone()
    } else {
        vec!["unix:///var/run/docker.sock".to_string()]
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(a, cfg_path, paths, node, hosts, container_nofile))
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

async fn run(
    a: UpArgs,
    cfg_path: Option<PathBuf>,
    paths: Paths,
    node: String,
    hosts: Vec<String>,
    container_nofile: Option<u64>,
) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;

    // 1. The bus.
    let (nats_url, creds_dir, mut nats) = match &a.nats {
        Some(url) => (url.clone(), a.nats_creds.clone(), None),
        None => {
            let port = match a.nats_port {
                Some(p) => p,
                None => free_port()?,
            };
            let conf = crate::nats::write_config(&paths.bus(), port, &node)?;
            let mut cmd = Command::new(crate::nats::nats_server_bin()?);
            cmd.arg("-c").arg(&conf);
            let mut p = Proc { name: "nats-server".into(), child: None, pid: 0, started: Instant::now(), restarts: 0, total_restarts: 0, next_start: None };
            spawn(&mut p, &mut cmd, &paths)?;
            (format!("nats://127.0.0.1:{port}"), Some(paths.bus().join("creds")), Some((p, cmd)))
        }
    };
    let admin = connect_admin(&nats_url, &creds_dir, &node).await?;
    ensure_event_stream(&admin).await;

    // 2. The services, then the gateway.
    let mut procs: Vec<(Proc, Command)> = Vec::new();
    let order: Vec<Service> = Service::BACKENDS.into_iter().chain([Service::Gateway]).collect();
    for svc in &order {
        let mut cmd = Command::new(bin(&format!("berth-{}", svc.name())));
        cmd.env(env::ROOT, paths.root())
            .env(env::NATS_URL, &nats_url)
            .env(env::NODE, &node)
            .env(env::CONFIG, cfg_path.clone().unwrap_or_default());
        if let Some(d) = &creds_dir {
            cmd.env(env::NATS_CREDS, d.join(svc.name()));
        }
        if a.debug {
            cmd.env(env::LOG, "debug");
        }
        if let Some(n) = container_nofile {
            cmd.env(env::CONTAINER_NOFILE, n.to_string());
        }
        if *svc == Service::Gateway {
            cmd.env(env::HOSTS, hosts.join(","));
        }
        let mut p = Proc { name: svc.name().into(), child: None, pid: 0, started: Instant::now(), restarts: 0, total_restarts: 0, next_start: None };
        spawn(&mut p, &mut cmd, &paths)?;
        procs.push((p, cmd));
    }
    write_state(&paths, &node, &nats_url, &hosts, &nats, &procs);

    // 3. Ready when every service answers and the API answers /_ping.
    let t0 = Instant::now();
    let sock = hosts.iter().find_map(|h| h.strip_prefix("unix://").map(PathBuf::from));
    loop {
        for (p, _) in procs.iter_mut() {
            if exited(p) {
                let log = paths.logs().join(format!("{}.log", p.name));
                // the service's own words first (`Error: ...`, e.g. a bridge another node owns)
                let last = std::fs::read_to_string(&log).unwrap_or_default();
                let why = last.lines().rev().find(|l| l.starts_with("Error: ")).unwrap_or("").trim_start_matches("Error: ");
                bail!("{} exited during start-up: {why}; see {}", p.name, log.display());
            }
        }
        let services_ok = services_healthy(&admin).await.iter().all(|(_, ok)| *ok);
        let api_ok = match &sock {
            Some(s) => ping_socket(s).await,
            None => true,
        };
        if services_ok && api_ok {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the node did not become ready within 60 s; see {}", paths.logs().display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "berth node {node} ready in {:.2}s on {} (root {})",
        t0.elapsed().as_secs_f64(),
        hosts.join(", "),
        paths.root().display()
    );

    // 4. Supervise until told to stop.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {
                let mut changed = false;
                if let Some((p, cmd)) = nats.as_mut() {
                    changed |= supervise(p, cmd, &paths).is_some();
                }
                for (p, cmd) in procs.iter_mut() {
                    if let Some(pid) = supervise(p, cmd, &paths) {
                        changed = true;
                        announce_exit(&admin, &node, &p.name, pid).await;
                    }
                }
                if changed {
                    write_state(&paths, &node, &nats_url, &hosts, &nats, &procs);
                }
            }
        }
    }

    // 5. Stop: the gateway first, then the services that use the others (the
    // runtime stops its containers and gives back their sandboxes and layers), then
    // the rest, then the bus; within 10 s.
    eprintln!("berth: stopping node {node}");
    let gw = procs.pop();
    if let Some((mut p, _)) = gw {
        stop(&mut p, Duration::from_secs(1)).await;
    }
    let (users, rest): (Vec<_>, Vec<_>) =
        procs.into_iter().partition(|(p, _)| matches!(p.name.as_str(), "runtime" | "builder" | "swarm"));
    for (wave, grace) in [(users, 4), (rest, 3)] {
        let mut stops = Vec::new();
        for (mut p, _) in wave {
            stops.push(tokio::spawn(async move { stop(&mut p, Duration::from_secs(grace)).await }));
        }
        for s in stops {
            let _ = s.await;
        }
    }
    if let Some((mut p, _)) = nats {
        stop(&mut p, Duration::from_secs(1)).await;
    }
    let _ = std::fs::remove_file(paths.run().join("node.json"));
    Ok(())
}

fn spawn(p: &mut Proc, cmd: &mut Command, paths: &Paths) -> anyhow::Result<()> {
    let log = log_file(paths, &p.name)?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Own process group: a terminal's ^C reaches only `berth up`, which stops the
    // services in order. PDEATHSIG: if `berth up` is killed, the services go too
    // (containers do not: their shims are not our children).
    cmd.process_group(0);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {}", p.name))?;
    p.pid = child.id().unwrap_or(0);
    p.child = Some(child);
    p.started = Instant::now();
    Ok(())
}

fn exited(p: &mut Proc) -> bool {
    match p.child.as_mut() {
        Some(c) => matches!(c.try_wait(), Ok(Some(_))),
        None => false,
    }
}

/// Restart a process that died: at once the first time, then with doubling delays
/// up to 5 s; the delay resets after 30 s of good health. Some(pid) when it found the
/// process dead, Some(0) when it restarted it.
fn supervise(p: &mut Proc, cmd: &mut Command, paths: &Paths) -> Option<u32> {
    if let Some(at) = p.next_start {
        if Instant::now() >= at {
            p.next_start = None;
            match spawn(p, cmd, paths) {
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
    let Some(c) = p.child.as_mut() else { return None };
    if let Ok(Some(status)) = c.try_wait() {
        if p.started.elapsed() > Duration::from_secs(30) {
            p.restarts = 0;
        }
        let delay = if p.restarts == 0 { Duration::ZERO } else { Duration::from_millis((100u64 << p.restarts.min(6)).min(5000)) };
        p.restarts += 1;
        p.total_restarts += 1;
        eprintln!("berth: {} exited ({status}); restarting in {:?}", p.name, delay);
        p.child = None;
        p.next_start = Some(Instant::now() + delay);
        return Some(p.pid);
    }
    None
}

/// Tell the node that a service's instance is gone: requests and streams it served
/// fail at once (see berth_bus's liveness). Published before the next instance starts.
async fn announce_exit(admin: &Bus, node: &str, name: &str, pid: u32) {
    let Some(service) = Service::from_name(name).filter(|_| pid != 0) else { return };
    let n = bus_schema::system::ServiceExited { service, node: node.to_string(), pid, at_mono_ns: berth_bus::mono_ns() };
    let subject = bus_schema::subject::instance_subject(node, service, bus_schema::subject::InstanceEvent::Exited);
    if let Ok(b) = bus_schema::encode(&n) {
        // no flush: with the bus down it would wait, and this loop restarts the bus
        let _ = admin.client().publish(subject, b.into()).await;
    }
}

async fn stop(p: &mut Proc, grace: Duration) {
    let Some(c) = p.child.as_mut() else { return };
    if let Some(pid) = c.id() {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(grace, c.wait()).await.is_err() {
        let _ = c.kill().await;
    }
}

fn write_state(paths: &Paths, node: &str, nats_url: &str, hosts: &[String], nats: &Option<(Proc, Command)>, procs: &[(Proc, Command)]) {
    let mut services = BTreeMap::new();
    let mut restarts = BTreeMap::new();
    for p in nats.iter().map(|x| &x.0).chain(procs.iter().map(|x| &x.0)) {
        restarts.insert(p.name.clone(), p.total_restarts);
    }
    if let Some((p, _)) = nats {
        if let Some(pid) = p.child.as_ref().and_then(|c| c.id()) {
            services.insert(p.name.clone(), pid);
        }
    }
    for (p, _) in procs {
        if let Some(pid) = p.child.as_ref().and_then(|c| c.id()) {
            services.insert(p.name.clone(), pid);
        }
    }
    let st = NodeState { node: node.into(), pid: std::process::id(), nats_url: nats_url.into(), hosts: hosts.to_vec(), services, restarts };
    let _ = berth_config::paths::write_atomic(&paths.run().join("node.json"), serde_json::to_string_pretty(&st).unwrap().as_bytes());
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
    let b = bus.with_timeout(Duration::from_millis(500));
    let futs = Service::ALL.into_iter().filter(|s| *s != Service::Gateway).map(|svc| {
        let b = b.clone();
        async move { (svc, b.request_system(svc, &ServicePing {}).await.is_ok()) }
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
