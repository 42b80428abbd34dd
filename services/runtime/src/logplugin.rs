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
//!   removed.
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
    /// The FIFO on the host.
    pub fifo: PathBuf,
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

impl Runtime {
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

    /// At start: the FIFO and StartLogging. The returned fd (the FIFO opened
    /// read-write) is held until the shim has opened its own.
    pub async fn start_logging(&self, c: &Container, driver: &str) -> Result<(LogPluginRun, OwnedFd), BusError> {
        // Moby's wording at start (container.startLogging, logger factory.get)
        let p = self.log_plugin(driver).await.map_err(|e| {
            BusError::internal(format!(
                "failed to initialize logging driver: failed to get logging factory: logger: no log driver named '{driver}' is registered: {}",
                e.message
            ))
        })?;
        let rootfs = self.find(&p.id).map(|e| e.get().rootfs).unwrap_or_default();
        if rootfs.is_empty() {
            return Err(BusError::internal(format!("log plugin {}: its container is not running", p.name)));
        }
        let run = self.paths.plugin_run(&p.id);
        let propagated = Some(p.config.propagated_mount.clone()).filter(|m| !m.is_empty());
        let prop_host = run.join("propagated-mount");
        let dir = berth_pluginproto::scoped_path(Path::new(&rootfs), propagated.as_deref().map(|m| (m, prop_host.as_path())), LOGGING_DIR_IN_PLUGIN);
        let id = random_id();
        let file = format!("{LOGGING_DIR_IN_PLUGIN}/{id}");
        let fifo = dir.join(&id);
        let fd = make_fifo(&dir, &fifo).map_err(|e| BusError::internal(format!("error creating i/o pipe for log plugin: {}: {e}", p.name)))?;
        let lp = LogPluginRun {
            plugin: p.name.clone(),
            plugin_id: p.id.clone(),
            sock: run.join("sock").join(&p.config.interface.socket),
            file,
            fifo,
        };
        let opts = c.host_config.log_config.as_ref().and_then(|l| l.config.clone()).unwrap_or_default();
        let info = Info {
            config: &opts,
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
        };
        // Moby asks first (and ignores a failure); a plugin that reads logs back
        // is not asked by `docker logs` here: the local copy answers
        if let Ok(b) = berth_pluginproto::call_raw(&lp.sock, "LogDriver.Capabilities", &serde_json::json!({}), CALL_TIMEOUT).await {
            if serde_json::from_slice::<serde_json::Value>(&b).ok().and_then(|v| v.pointer("/Cap/ReadLogs").and_then(|r| r.as_bool())) == Some(true) {
                tracing::debug!(plugin = %lp.plugin, "the plugin reads logs back; docker logs reads the local copy");
            }
        }
        let body = serde_json::json!({ "File": lp.file, "Info": info });
        if let Err(e) = berth_pluginproto::call::<ErrAnswer>(&lp.sock, "LogDriver.StartLogging", &body, CALL_TIMEOUT).await {
            let _ = std::fs::remove_file(&lp.fifo);
            return Err(BusError::internal(format!("failed to initialize logging driver: error creating logger: {e}")));
        }
        Ok((lp, fd))
    }

    /// At exit: StopLogging, then the FIFO goes (in the background: a plugin that
    /// does not answer never holds the exit up).
    pub fn stop_logging(self: &Arc<Self>, lp: LogPluginRun) {
        tokio::spawn(async move {
            let body = serde_json::json!({ "File": lp.file });
            if let Err(e) = berth_pluginproto::call::<ErrAnswer>(&lp.sock, "LogDriver.StopLogging", &body, CALL_TIMEOUT).await {
                tracing::warn!(plugin = %lp.plugin, error = %e, "StopLogging");
            }
            let _ = std::fs::remove_file(&lp.fifo);
        });
    }

    /// Containers logging to the plugin `name` now (the images service's check
    /// before a disable).
    pub fn log_plugin_users(&self, name: &str) -> Vec<String> {
        self.all().into_iter().filter(|e| e.get().log_plugin.is_some_and(|l| l.plugin == name)).map(|e| e.id.clone()).collect()
    }
}

/// 64 hex digits (Moby's stringid.GenerateRandomID).
fn random_id() -> String {
    let mut b = [0u8; 32];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `mkdir -p` the plugin's logging directory, make the FIFO, open it read-write
/// and non-blocking (Moby's openPluginStream).
fn make_fifo(dir: &Path, fifo: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    if unsafe { libc::mkfifo(c.as_ptr(), 0o700) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // the plugin owns its rootfs: a link or a file swapped in for the FIFO is
    // refused (berth_shim's open_fifo: no final link followed, a FIFO or nothing)
    match berth_shim::logdriver::open_fifo(fifo) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let _ = std::fs::remove_file(fifo);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn fifo_opens_without_a_reader() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run/docker/logging");
        let f = dir.join("x");
        let _fd = make_fifo(&dir, &f).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&f).unwrap().file_type().is_fifo());
    }
}
