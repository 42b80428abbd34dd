//! Log-driver plugins (`docker run --log-driver <plugin>`, daemon.json
//! `log-driver`), as Moby 20.10 runs them (daemon/logger/plugin.go, adapter.go):
//!
//! * at create, a driver that is not built in must name an enabled managed plugin
//!   of type `docker.logdriver/1.0` (by name, `name:latest` or ID prefix), else
//!   Moby's `error looking up logging plugin X: ...`;
//! * at each start: a FIFO `/run/docker/logging/<64 hex>` in the plugin's rootfs
//!   (Moby's ScopedPath; the plugin sees that path), opened here read-write and
//!   non-blocking as Moby opens it (a plugin that opens its side blocking in
//!   `StartLogging` does not hang), then `/LogDriver.StartLogging` {File, Info};
//!   the shim opens the FIFO too and writes every message there as a framed
//!   LogEntry (berth_shim::logdriver), besides the json-file copy `docker logs`
//!   reads (Moby's dual logging);
//! * at exit (or a failed start): `/LogDriver.StopLogging` {File}, then the FIFO is
//!   removed;
//! * `docker logs` goes through a logger (Moby's getLogger): the running
//!   container's, else a new one for the read (StartLogging on a new FIFO, then
//!   StopLogging): a plugin disabled or gone fails it with Moby's error;
//! * at the runtime's start, FIFOs no container record names are swept.
//!
//! While a container logs to it, the plugin is in use: the images service refuses
//! to disable it (`plugin X is in use`), as Moby's reference count does.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_bus::images::ImagesApi as _;
use bus_schema::plugin::{Plugin, PluginInspect};
use bus_schema::{BusError, ErrorKind};
use serde::{Deserialize, Serialize};

use berth_shim::logdriver::LogFifo;

use crate::engine::Runtime;
use crate::state::Container;

pub const LOG_DRIVER: &str = "docker.logdriver/1.0";
/// Where the FIFOs are, as the plugin sees them (Moby's unscopedPath).
pub const LOGGING_DIR_IN_PLUGIN: &str = "/run/docker/logging";
/// Moby's plugin client timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The log drivers Moby builds in; any other name is a plugin's.
pub const BUILTIN: [&str; 12] =
    ["awslogs", "etwlogs", "fluentd", "gcplogs", "gelf", "journald", "json-file", "local", "logentries", "none", "splunk", "syslog"];

pub fn is_builtin(driver: &str) -> bool {
    BUILTIN.contains(&driver)
}

/// Moby 20.10's `docker info` Plugins.Log on Linux: the drivers it registers
/// (daemon/logdrivers_linux.go), sorted (logger.ListDrivers). `none` is not a
/// registered driver; managed log plugins are looked up, never registered, so an
/// enabled one is not listed either.
pub const MOBY_INFO_LOG: [&str; 10] =
    ["awslogs", "fluentd", "gcplogs", "gelf", "journald", "json-file", "local", "logentries", "splunk", "syslog"];

/// berth's `docker info` Plugins.Log: the drivers of Moby's list berth serves
/// (`json-file`; `local`, accepted and read back, its copy kept in json-file's
/// format), in Moby's order. The others are refused at create ("not supported by
/// this engine"), so they are not listed; log plugins are not, as in Moby.
pub fn info_log_drivers() -> Vec<String> {
    MOBY_INFO_LOG.iter().filter(|d| matches!(**d, "json-file" | "local")).map(|d| d.to_string()).collect()
}

/// A container logging to a plugin, kept in its record while it runs (StopLogging
/// at its exit, also after the service started again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPluginRun {
    /// The plugin's name (`x:latest`): what disable checks.
    pub plugin: String,
    pub plugin_id: String,
    /// The plugin's socket.
    pub sock: PathBuf,
    /// The FIFO as the plugin sees it (`File`).
    pub file: String,
    /// The FIFO on the host (shown; never opened by this path).
    pub fifo: PathBuf,
    /// The FIFO in the plugin's root, where it is made, opened and removed
    /// (resolved in that root). None in a record of an older berth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<LogFifo>,
}

/// Moby's Info (daemon/logger/loginfo.go), as StartLogging sends it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Info<'a> {
    config: &'a std::collections::HashMap<String, String>,
    #[serde(rename = "ContainerID")]
    container_id: &'a str,
    container_name: String,
    container_entrypoint: &'a str,
    container_args: &'a [String],
    #[serde(rename = "ContainerImageID")]
    container_image_id: &'a str,
    container_image_name: &'a str,
    container_created: &'a str,
    container_env: &'a Option<Vec<String>>,
    container_labels: &'a Option<std::collections::HashMap<String, String>>,
    log_path: &'a str,
    daemon_name: &'a str,
}

impl<'a> Info<'a> {
    fn of(c: &'a Container, opts: &'a std::collections::HashMap<String, String>) -> Info<'a> {
        Info {
            config: opts,
            container_id: &c.id,
            container_name: format!("/{}", c.name),
            container_entrypoint: &c.path,
            container_args: &c.args,
            container_image_id: &c.image_id,
            container_image_name: c.config.image.as_deref().unwrap_or_default(),
            container_created: &c.created,
            container_env: &c.config.env,
            container_labels: &c.config.labels,
            log_path: "",
            daemon_name: "docker",
        }
    }
}

fn log_opts(c: &Container) -> std::collections::HashMap<String, String> {
    c.host_config.log_config.as_ref().and_then(|l| l.config.clone()).unwrap_or_default()
}

/// Moby's ReadConfig, as `/LogDriver.ReadLogs` sends it: Go's times (the zero time
/// for none), `Tail` -1 for all.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReadConfig {
    pub since: String,
    pub until: String,
    pub tail: i64,
    pub follow: bool,
}

/// Go's JSON of a `time.Time` from Unix seconds (RFC 3339 with the nanoseconds'
/// trailing zeros cut, in UTC); 0 is Go's zero time.
pub fn go_time(unix: f64) -> String {
    if unix <= 0.0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let secs = unix.floor();
    let nanos = (((unix - secs) * 1e9).round() as u32).min(999_999_999);
    berth_shim::jsonlog::Time { secs: secs as i64, nanos }.format(false)
}

/// Whether the plugin behind `sock` answers `{"Cap":{"ReadLogs":true}}` (a
/// failure: no, as Moby ignores it).
async fn reads_logs(sock: &Path) -> bool {
    match berth_pluginproto::call_raw(sock, "LogDriver.Capabilities", &serde_json::json!({}), CALL_TIMEOUT).await {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b).ok().and_then(|v| v.pointer("/Cap/ReadLogs").and_then(|r| r.as_bool())) == Some(true),
        Err(_) => false,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrAnswer {
    #[serde(rename = "Err", alias = "err")]
    err: String,
}

impl berth_pluginproto::HasErr for ErrAnswer {
    fn err(&self) -> Option<&str> {
        Some(&self.err)
    }
}

fn lookup_err(driver: &str, m: impl std::fmt::Display) -> String {
    format!("error looking up logging plugin {driver}: {m}")
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// The enabled log-driver plugin `driver` names, with Moby's lookup errors.
    pub async fn log_plugin(&self, driver: &str) -> Result<Plugin, BusError> {
        let p = match self.images.plugin_inspect(PluginInspect { name: driver.to_string() }).await {
            Ok(p) => p,
            Err(e) if e.is(ErrorKind::NotFound) => {
                return Err(BusError::invalid(lookup_err(driver, format!("plugin {driver:?} not found"))))
            }
            Err(e) => return Err(BusError::internal(lookup_err(driver, e.message))),
        };
        if !p.enabled {
            return Err(BusError::invalid(lookup_err(driver, format!("plugin {driver} found but disabled"))));
        }
        if !p.config.interface.types.iter().flatten().any(|t| t == LOG_DRIVER) {
            return Err(BusError::invalid(lookup_err(driver, "plugin does not provide \"logdriver\" capability")));
        }
        Ok(p)
    }

    /// At start: the FIFO and StartLogging (Moby's container start wraps the
    /// logger's error in `failed to initialize logging driver: `). The returned fd
    /// (the FIFO opened read-write) is held until the shim has opened its own.
    pub async fn start_logging(&self, c: &Container, driver: &str) -> Result<(LogPluginRun, OwnedFd), BusError> {
        self.new_logger(c, driver).await.map_err(|e| BusError::internal(format!("failed to initialize logging driver: {}", e.message)))
    }

    /// A new logger of the plugin `driver` for `c` (Moby's container.StartLogger
    /// with the plugin adapter, and its errors): the FIFO and StartLogging.
    pub async fn new_logger(&self, c: &Container, driver: &str) -> Result<(LogPluginRun, OwnedFd), BusError> {
        // Moby's logger factory.get, then StartLogger's wrap
        let p = self.log_plugin(driver).await.map_err(|e| {
            BusError::internal(format!(
                "failed to get logging factory: logger: no log driver named '{driver}' is registered: {}",
                e.message
            ))
        })?;
        let rootfs = self.find_any(&p.id).map(|e| e.get().rootfs).unwrap_or_default();
        if rootfs.is_empty() {
            return Err(BusError::internal(format!("log plugin {}: its container is not running", p.name)));
        }
        let run = self.paths.plugin_run(&p.id);
        let propagated = Some(p.config.propagated_mount.clone()).filter(|m| !m.is_empty());
        let prop_host = run.join("propagated-mount");
        let id = random_id();
        let file = format!("{LOGGING_DIR_IN_PLUGIN}/{id}");
        let scoped = propagated.as_deref().map(|m| (m, prop_host.as_path()));
        let fifo = berth_pluginproto::scoped_path(Path::new(&rootfs), scoped, &file);
        let (root, path) = berth_pluginproto::scoped_root(Path::new(&rootfs), scoped, &file);
        let at = LogFifo { root, path };
        let fd = make_fifo(&at).map_err(|e| BusError::internal(format!("error creating i/o pipe for log plugin: {}: {e}", p.name)))?;
        let lp = LogPluginRun {
            plugin: p.name.clone(),
            plugin_id: p.id.clone(),
            sock: run.join("sock").join(&p.config.interface.socket),
            file,
            fifo,
            at: Some(at),
        };
        let opts = log_opts(c);
        let info = Info::of(c, &opts);
        // Moby asks first (and ignores a failure); `docker logs` asks again
        // (Runtime::log_source)
        if reads_logs(&lp.sock).await {
            tracing::debug!(plugin = %lp.plugin, "the plugin reads logs back: docker logs asks it");
        }
        let body = serde_json::json!({ "File": lp.file, "Info": info });
        if let Err(e) = berth_pluginproto::call::<ErrAnswer>(&lp.sock, "LogDriver.StartLogging", &body, CALL_TIMEOUT).await {
            remove_fifo(&lp);
            return Err(BusError::internal(format!("error creating logger: {e}")));
        }
        Ok((lp, fd))
    }

    /// At exit: StopLogging, then the FIFO goes (in the background: a plugin that
    /// does not answer never holds the exit up).
    pub fn stop_logging(self: &Arc<Self>, lp: LogPluginRun) {
        self.stop_logging_fd(lp, None)
    }

    /// StopLogging, then the FIFO held by `fd` (if any) is closed and removed, in
    /// that order (Moby's pluginAdapter.Close).
    pub fn stop_logging_fd(self: &Arc<Self>, lp: LogPluginRun, fd: Option<OwnedFd>) {
        tokio::spawn(async move {
            let body = serde_json::json!({ "File": lp.file });
            if let Err(e) = berth_pluginproto::call::<ErrAnswer>(&lp.sock, "LogDriver.StopLogging", &body, CALL_TIMEOUT).await {
                tracing::warn!(plugin = %lp.plugin, error = %e, "StopLogging");
            }
            drop(fd);
            remove_fifo(&lp);
        });
    }

    /// What `docker logs` of `c` reads, as Moby's getLogger and ContainerLogs
    /// decide: a built-in driver, the local copy; a plugin, through the
    /// container's logger while it runs, else through a new logger (StartLogging on
    /// a new FIFO now, StopLogging when the returned [`CreatedLogger`] drops, after
    /// the read) — a plugin that is disabled or gone fails as Moby cannot make the
    /// logger, whether it reads logs or not. The socket is the plugin's when it
    /// reads logs back (`Cap.ReadLogs`: Moby's pluginAdapterWithRead); None: the
    /// local copy answers (Moby's dual-logging cache).
    pub async fn log_source(self: &Arc<Self>, c: &Container, running: bool) -> Result<(Option<PathBuf>, Option<CreatedLogger<D>>), BusError> {
        let Some(driver) = c.host_config.log_config.as_ref().and_then(|l| l.typ.clone()).filter(|t| !t.is_empty() && !is_builtin(t)) else {
            return Ok((None, None));
        };
        if let Some(lp) = c.log_plugin.as_ref().filter(|_| running) {
            return Ok((reads_logs(&lp.sock).await.then(|| lp.sock.clone()), None));
        }
        let (lp, fd) = self.new_logger(c, &driver).await?;
        let sock = lp.sock.clone();
        let created = CreatedLogger { rt: self.clone(), lp: Some(lp), fd: Some(fd) };
        Ok((reads_logs(&sock).await.then_some(sock), Some(created)))
    }

    /// `docker logs` of a plugin that reads: `/LogDriver.ReadLogs` {Info, Config},
    /// its answer a stream of LogEntry frames (the FIFO's framing), each message
    /// sent as it comes, filtered by stream and `since`/`until` and formatted as
    /// the local copy's (Moby checks since and until again: "plugin should handle
    /// this"). The line is the plugin's as it is (Moby adds no newline). The tail
    /// and following are the plugin's.
    pub async fn read_logs(
        &self,
        c: &Container,
        sock: &Path,
        cfg: ReadConfig,
        o: &crate::logs::LogOptions,
        tx: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
    ) -> Result<(), BusError> {
        let opts = log_opts(c);
        let body = serde_json::json!({ "Info": Info::of(c, &opts), "Config": cfg });
        let mut st = berth_pluginproto::call_stream(sock, "LogDriver.ReadLogs", &body, CALL_TIMEOUT)
            .await
            .map_err(|e| BusError::internal(format!("error getting log reader: {e}")))?;
        let mut buf = Vec::new();
        while let Some(chunk) = st.chunk().await {
            let chunk = chunk.map_err(|e| BusError::internal(format!("error decoding log message: {e}")))?;
            buf.extend_from_slice(&chunk);
            let (entries, used) = berth_shim::logdriver::decode_frames(&buf)
                .map_err(|e| BusError::internal(format!("error decoding log message: {e}")))?;
            buf.drain(..used);
            for e in entries {
                let stream = if e.source == "stderr" { 2 } else { 1 };
                let t = berth_shim::jsonlog::Time { secs: e.time_nano.div_euclid(1_000_000_000), nanos: e.time_nano.rem_euclid(1_000_000_000) as u32 };
                if !crate::logs::send_message(stream, t, e.line, o, &tx).await {
                    return Ok(());
                }
            }
        }
        if !buf.is_empty() {
            return Err(BusError::internal("error decoding log message: unexpected EOF"));
        }
        Ok(())
    }

    /// Containers logging to the plugin `name` now (the images service's check
    /// before a disable).
    pub fn log_plugin_users(&self, name: &str) -> Vec<String> {
        self.all().into_iter().filter(|e| e.get().log_plugin.is_some_and(|l| l.plugin == name)).map(|e| e.id.clone()).collect()
    }
}

/// A logger made for one `docker logs` of a container that is not running
/// (Runtime::log_source): dropped, it stops (StopLogging, the FIFO closed and
/// removed).
pub struct CreatedLogger<D: crate::deps::Deps = crate::deps::Live> {
    rt: Arc<Runtime<D>>,
    lp: Option<LogPluginRun>,
    fd: Option<OwnedFd>,
}

impl<D: crate::deps::Deps> Drop for CreatedLogger<D> {
    fn drop(&mut self) {
        if let Some(lp) = self.lp.take() {
            self.rt.stop_logging_fd(lp, self.fd.take());
        }
    }
}

/// 64 hex digits (Moby's stringid.GenerateRandomID).
fn random_id() -> String {
    let mut b = [0u8; 32];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The FIFO goes, inside the plugin's root (a record of an older berth: left).
fn remove_fifo(lp: &LogPluginRun) {
    if let Some(at) = &lp.at {
        if let Err(e) = berth_shim::logdriver::remove_fifo(at) {
            tracing::debug!(plugin = %lp.plugin, error = %e, "removing the log FIFO");
        }
    }
}

/// The FIFOs in `root`'s `/run/docker/logging` (resolved in the root: the plugin
/// owns it) that no container logs through: FIFOs with a 64-hex name (those this
/// module makes) whose name is not in `live`, removed. What a runtime killed
/// between StartLogging and the shim's start (or before a StopLogging's removal)
/// left behind. Anything else there is the plugin's and stays. The names removed.
pub fn sweep_fifos(root: &Path, live: &std::collections::HashSet<String>) -> std::io::Result<Vec<String>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let root = berth_shim::sys::open(root, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let rel = LOGGING_DIR_IN_PLUGIN.trim_start_matches('/');
    let dir = match berth_shim::sys::openat2(root.as_raw_fd(), Path::new(rel), libc::O_RDONLY | libc::O_DIRECTORY, 0, berth_shim::sys::RESOLVE_IN_ROOT) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut gone = Vec::new();
    for ent in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?.flatten() {
        let name = ent.file_name();
        let Some(n) = name.to_str().filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) && !live.contains(*n)) else {
            continue;
        };
        let c = std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: stat is plain data, filled by the kernel
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            continue;
        }
        berth_shim::sys::unlinkat(dir.as_raw_fd(), Path::new(n))?;
        gone.push(n.to_string());
    }
    Ok(gone)
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// At this service's start, before any container starts: every running log
    /// plugin's stale FIFOs go (see [`sweep_fifos`]); those of the containers
    /// recorded as logging to a plugin stay.
    pub fn sweep_log_fifos(&self, entries: &[Arc<crate::engine::Entry>]) {
        let recs: Vec<Container> = entries.iter().map(|e| e.get()).collect();
        let live: std::collections::HashSet<String> = recs
            .iter()
            .filter_map(|c| c.log_plugin.as_ref())
            .filter_map(|lp| lp.file.rsplit('/').next().map(String::from))
            .collect();
        for c in recs.iter().filter(|c| c.plugin && !c.rootfs.is_empty()) {
            match sweep_fifos(Path::new(&c.rootfs), &live) {
                Ok(gone) if !gone.is_empty() => tracing::info!(plugin = %c.id, fifos = ?gone, "removed log FIFOs no container uses"),
                Ok(_) => {}
                Err(e) => tracing::debug!(plugin = %c.id, error = %e, "sweeping the log FIFOs"),
            }
        }
    }
}

/// `mkdir -p` the plugin's logging directory, make the FIFO, open it read-write
/// and non-blocking (Moby's openPluginStream). The plugin owns its rootfs: every
/// step resolves in that root (a link the plugin put on the way leads inside it,
/// never to a host directory), a link or a file at the FIFO's name is refused.
fn make_fifo(at: &LogFifo) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsFd, AsRawFd};
    let (dir, name) = berth_fsutil::split(&at.path);
    let root = berth_fsutil::InRoot::open(&at.root)?;
    let dir = root.mkdir_all(&dir, 0o700)?;
    let name = Path::new(&name);
    berth_shim::sys::mkfifoat(dir.as_raw_fd(), name, 0o700)?;
    match berth_shim::logdriver::open_fifo_at(dir.as_fd(), name) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let _ = berth_shim::sys::unlinkat(dir.as_raw_fd(), name);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docker info` lists only drivers berth serves, in Moby's order; `none` and
    /// plugins are not in Moby's list.
    #[test]
    fn info_lists_the_served_drivers() {
        let got = info_log_drivers();
        assert_eq!(got, ["json-file", "local"]);
        let mut sorted = MOBY_INFO_LOG.to_vec();
        sorted.sort();
        assert_eq!(sorted, MOBY_INFO_LOG, "Moby sorts them");
        let cfg = berth_config::DaemonConfig::default();
        for d in &got {
            assert!(MOBY_INFO_LOG.contains(&d.as_str()) && is_builtin(d));
            // each is accepted at create
            let mut hc = bus_schema::docker::HostConfig {
                log_config: Some(bus_schema::docker::HostConfigLogConfig { typ: Some(d.clone()), config: None }),
                ..Default::default()
            };
            crate::validate::host_config(&mut hc, &cfg).unwrap();
        }
    }

    /// ReadLogs' Config as Go marshals Moby's ReadConfig.
    #[test]
    fn read_config_as_go_marshals_it() {
        let c = ReadConfig { since: go_time(0.0), until: go_time(1_700_000_000.5), tail: -1, follow: true };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"Since":"0001-01-01T00:00:00Z","Until":"2023-11-14T22:13:20.5Z","Tail":-1,"Follow":true}"#
        );
        assert_eq!(go_time(1_700_000_000.0), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn info_has_mobys_keys() {
        let cfg = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
        let env = Some(vec!["A=1".to_string()]);
        let args = vec!["hello".to_string()];
        let i = Info {
            config: &cfg,
            container_id: "abc",
            container_name: "/n".into(),
            container_entrypoint: "echo",
            container_args: &args,
            container_image_id: "sha256:x",
            container_image_name: "busybox",
            container_created: "2026-01-01T00:00:00Z",
            container_env: &env,
            container_labels: &None,
            log_path: "",
            daemon_name: "docker",
        };
        assert_eq!(
            serde_json::to_string(&i).unwrap(),
            r#"{"Config":{"k":"v"},"ContainerID":"abc","ContainerName":"/n","ContainerEntrypoint":"echo","ContainerArgs":["hello"],"ContainerImageID":"sha256:x","ContainerImageName":"busybox","ContainerCreated":"2026-01-01T00:00:00Z","ContainerEnv":["A=1"],"ContainerLabels":null,"LogPath":"","DaemonName":"docker"}"#
        );
    }

    /// Stale FIFOs go; a live one, the plugin's other files and a link to a host
    /// FIFO stay.
    #[test]
    fn sweep_removes_only_stale_fifos() {
        use std::os::unix::fs::FileTypeExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        let stale = "a".repeat(64);
        let live = "b".repeat(64);
        let file = "c".repeat(64);
        let link = "d".repeat(64);
        let host = d.path().join("hostfifo");
        let dir = root.join("run/docker/logging");
        std::fs::create_dir_all(&dir).unwrap();
        for n in [&stale, &live, &"notours".to_string()] {
            drop(make_fifo(&LogFifo { root: root.clone(), path: format!("{LOGGING_DIR_IN_PLUGIN}/{n}") }).unwrap());
        }
        std::fs::write(dir.join(&file), "plugin's").unwrap();
        berth_shim::sys::mkfifoat(libc::AT_FDCWD, &host, 0o600).unwrap();
        std::os::unix::fs::symlink(&host, dir.join(&link)).unwrap();
        let gone = sweep_fifos(&root, &std::collections::HashSet::from([live.clone()])).unwrap();
        assert_eq!(gone, [stale.clone()]);
        assert!(!dir.join(&stale).exists());
        for n in [&live, &"notours".to_string(), &file] {
            assert!(dir.join(n).exists(), "{n}");
        }
        assert!(std::fs::symlink_metadata(dir.join(&link)).unwrap().file_type().is_symlink());
        assert!(std::fs::metadata(&host).unwrap().file_type().is_fifo());
        // a root without the directory: nothing to do
        assert!(sweep_fifos(d.path(), &Default::default()).unwrap().is_empty());
    }

    fn at(root: &Path) -> LogFifo {
        LogFifo { root: root.to_path_buf(), path: "/run/docker/logging/x".into() }
    }

    #[test]
    fn fifo_opens_without_a_reader() {
        let d = tempfile::tempdir().unwrap();
        let _fd = make_fifo(&at(d.path())).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(d.path().join("run/docker/logging/x")).unwrap().file_type().is_fifo());
    }

    /// The plugin's `run/docker/logging` a link to a host directory (absolute, or
    /// climbing with `..`): the FIFO is made inside the rootfs, never in the host's
    /// directory; a file or link at its name is refused.
    #[test]
    fn fifo_is_made_inside_the_root() {
        use std::os::unix::fs::FileTypeExt;
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("run/docker")).unwrap();
        let inside = rootfs.join(host.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        for target in [host.clone(), PathBuf::from(format!("{}{}", "../".repeat(20), host.display()))] {
            let _ = std::fs::remove_file(rootfs.join("run/docker/logging"));
            std::os::unix::fs::symlink(&target, rootfs.join("run/docker/logging")).unwrap();
            let _fd = make_fifo(&at(&rootfs)).unwrap();
            assert!(!host.join("x").exists(), "{target:?}: nothing made in the host's directory");
            assert!(std::fs::symlink_metadata(inside.join("x")).unwrap().file_type().is_fifo(), "{target:?}");
            std::fs::remove_file(inside.join("x")).unwrap();
        }
        // a name taken by a link to a host file: refused, the file untouched
        std::fs::write(host.join("file"), "secret").unwrap();
        std::os::unix::fs::symlink(host.join("file"), inside.join("x")).unwrap();
        assert!(make_fifo(&at(&rootfs)).is_err());
        assert_eq!(std::fs::read_to_string(host.join("file")).unwrap(), "secret");
    }
}
