//! Start, exit, stop, kill, restart, pause, remove: the container state machine.
//!
//! Locking: `Entry::op` serialises changes to one container. Nobody holds it while
//! waiting for a process to exit: stop sends its signal under the lock, then waits on
//! the container's `life` signal without it, so the exit monitor can take the lock
//! to record the exit.

use berth_bus::network::NetworkApi as _;
use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use berth_rules::clock;
use bus_schema::network::{EndpointRequest, SandboxCreate, SandboxRemove};
use bus_schema::storage::{RwLayerMount, RwLayerRemove, RwLayerUnmount};
use bus_schema::{docker, BusError, ErrorKind};

use crate::engine::{mkdir_in_root, Entry, Runtime};
use crate::deps::ShimProcess;
use crate::shim_client::{ExitStatus, ShimOptions, StartError};
use crate::spec::{MountKind, ResolvedMount, SpecInput};
use crate::state::{Container, Status};

/// Parse a signal as Docker accepts it: `9`, `KILL`, `SIGKILL`, `sigkill`.
pub fn parse_signal(s: &str) -> Result<i32, BusError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(BusError::invalid(format!("Invalid signal: {s}")));
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        n if n.starts_with("RTMIN+") => 34 + n[6..].parse::<i32>().map_err(|_| BusError::invalid(format!("Invalid signal: {s}")))?,
        _ => return Err(BusError::invalid(format!("Invalid signal: {s}"))),
    };
    Ok(n)
}

fn start_error_message(e: &StartError) -> String {
    let inner = match e {
        StartError::NotFound(m) | StartError::PermissionDenied(m) | StartError::Other(m) => m.clone(),
    };
    format!("failed to create task for container: failed to create shim task: OCI runtime create failed: berth-shim: unable to start container process: {inner}: unknown")
}

impl<D: crate::deps::Deps> Runtime<D> {
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<(), BusError> {
        let e = self.find(key)?;
        let _g = e.op.lock().await;
        e.update(|c| c.manually_stopped = false);
        self.start_locked(&e).await
    }

    /// Start with `op` held. Boxed: start -> monitor -> exit -> restart -> start is a
    /// cycle the compiler cannot size otherwise.
    pub(crate) fn start_locked<'a>(
        self: &'a Arc<Self>,
        e: &'a Arc<Entry>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BusError>> + Send + 'a>> {
        Box::pin(self.start_locked_inner(e))
    }

    async fn start_locked_inner(self: &Arc<Self>, e: &Arc<Entry>) -> Result<(), BusError> {
        let c = e.get();
        c.can_start()?;
        match self.do_start(e, &c).await {
            Ok(()) => Ok(()),
            Err((err, code)) => {
                e.update(|c| {
                    c.state.error = err.message.clone();
                    c.state.exit_code = code;
                    if c.state.status == Status::Restarting {
                        c.state.status = Status::Exited;
                    }
                });
                let _ = e.save();
                if c.host_config.auto_remove.unwrap_or(false) {
                    let rt = self.clone();
                    let e2 = e.clone();
                    tokio::spawn(async move {
                        let _ = rt.remove_entry(&e2, true).await;
                    });
                }
                Err(err)
            }
        }
    }

    /// Mount, network, files, spec, shim. On failure everything taken is given back;
    /// the error comes with the exit code Docker records (127, 126, 128).
    async fn do_start(self: &Arc<Self>, e: &Arc<Entry>, c: &Container) -> Result<(), (BusError, i64)> {
        let lc = c.host_config.log_config.clone().unwrap_or_default();
        // a log-driver plugin: its FIFO and StartLogging first (crate::logplugin)
        let plugin = match lc.typ.as_deref().filter(|t| !crate::logplugin::is_builtin(t)) {
            Some(t) => Some(self.start_logging(c, t).await.map_err(|err| (err, 128i64))?),
            None => None,
        };
        let run = plugin.as_ref().map(|(lp, _)| lp.clone());
        let res = self.do_start_logged(e, c, run.clone()).await;
        drop(plugin); // the shim holds the FIFO open now (or did not start)
        if let (Err(_), Some(lp)) = (&res, run) {
            self.stop_logging(lp);
        }
        res
    }

    async fn do_start_logged(
        self: &Arc<Self>,
        e: &Arc<Entry>,
        c: &Container,
        log_plugin: Option<crate::logplugin::LogPluginRun>,
    ) -> Result<(), (BusError, i64)> {
        let fail = |err: BusError| (err, 128i64);
        let lc = c.host_config.log_config.clone().unwrap_or_default();
        let opts_map = lc.config.clone().unwrap_or_default();
        let log_on = lc.typ.as_deref() != Some("none");
        let opts = ShimOptions {
            log_fifo: log_plugin.as_ref().and_then(|l| l.at.clone()),
            // checked at create (crate::validate)
            // blocking (Moby's default) unless non-blocking, whose buffer is
            // max-buffer-size or Moby's 1 MiB
            log_max_buffer: opts_map.get("mode").filter(|m| *m == "non-blocking").map(|_| {
                opts_map
                    .get("max-buffer-size")
                    .and_then(|s| crate::validate::ram_in_bytes(s).ok())
                    .map(|n| n.max(0) as u64)
                    .unwrap_or(berth_shim::logdriver::MAX_PENDING as u64)
            }),
            id: c.id.clone(),
            bundle: self.bundle_dir(&c.id),
            log_path: if log_on { Some(c.log_path.clone().into()) } else { None },
            log_max_size: opts_map.get("max-size").and_then(|s| parse_size(s)),
            log_max_file: opts_map.get("max-file").and_then(|s| s.parse().ok()).unwrap_or(1),
            stdin: c.config.open_stdin.unwrap_or(false),
            stdin_once: c.config.stdin_once.unwrap_or(false),
            tty: c.is_tty(),
            attach_stdout: false,
            attach_stderr: false,
        };
        // the layer, the network and the shim are independent: all at once (the
        // requests go out first, then the spawn, which blocks until the exec). The
        // shim makes the bundle directory, gets ready and waits for `go` (after
        // config.json); dropped instead, it exits without doing anything.
        let mode = c.network_mode();
        // legacy links: every child running, before anything is taken
        let links = self.link_plan(c).map_err(fail)?;
        let (mounted, sandbox, pending) = tokio::join!(
            self.storage.rw_layer_mount(RwLayerMount { id: c.id.clone() }),
            self.sandbox(c, &mode, &links.hosts),
            self.shims.spawn(&opts).instrument(tracing::info_span!("shim.spawn"))
        );
        let undo_mount = || async {
            let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: c.id.clone() }).await;
        };
        let undo_sandbox = || self.remove_sandbox(&c.id);
        let (rootfs, sandbox) = match (mounted, sandbox) {
            (Ok(m), Ok(s)) => (m.path, s),
            (Err(err), s) => {
                // a sandbox made by a network service that died before answering
                // may exist: give it back (now, or when the network is back)
                if s.is_ok() || s.as_ref().is_err_and(maybe_done) {
                    undo_sandbox().await;
                }
                return Err(fail(err));
            }
            (Ok(_), Err(err)) => {
                undo_mount().await;
                if maybe_done(&err) {
                    undo_sandbox().await;
                }
                return Err(fail(err));
            }
        };
        let mut mounts = c.mounts.clone();
        if let Err(err) = crate::mounts::acquire(self, &c.id, &mut mounts).await {
            undo_sandbox().await;
            undo_mount().await;
            return Err(fail(err));
        }
        let undo_all = || async {
            undo_sandbox().await;
            undo_mount().await;
        };

        // files and the spec
        let prep = tracing::info_span!("spec.build").in_scope(|| -> Result<oci_spec::runtime::Spec, BusError> {
            std::fs::write(&c.hostname_path, format!("{}\n", c.config.hostname.clone().unwrap_or_default()))?;
            std::fs::write(&c.hosts_path, &sandbox.hosts)?;
            std::fs::write(&c.resolv_path, &sandbox.resolv_conf)?;
            if let Some(wd) = c.config.working_dir.as_deref().filter(|w| !w.is_empty()) {
                mkdir_in_root(std::path::Path::new(&rootfs), wd)
                    .map_err(|err| BusError::invalid(format!("mkdir {wd}: {err}")))?;
            }
            let resolved: Vec<ResolvedMount> = mounts
                .iter()
                .map(|m| ResolvedMount {
                    source: m.source.clone(),
                    destination: m.destination.clone(),
                    kind: if m.typ == "tmpfs" { MountKind::Tmpfs { options: m.options.clone() } } else { MountKind::Bind },
                    read_only: !m.rw,
                    propagation: if m.propagation.is_empty() { None } else { Some(m.propagation.clone()) },
                    subpath: m.subpath.clone(),
                })
                .collect();
            let cgroup_path = format!("{}/{}", self.cgroup_parent, c.id);
            let netns = if sandbox.key.is_empty() { None } else { Some(sandbox.key.as_str()) };
            let init = if c.host_config.init.unwrap_or(false) || (c.host_config.init.is_none() && self.cfg.init.unwrap_or(false)) {
                Some(self.init_binary())
            } else {
                None
            };
            let ipc = self.ns_of(c.host_config.ipc_mode.as_deref(), "ipc")?;
            let pid = self.ns_of(c.host_config.pid_mode.as_deref(), "pid")?;
            let input = SpecInput {
                ipc_ns: ipc.as_deref(),
                pid_ns: pid.as_deref(),
                id: &c.id,
                rootfs: std::path::Path::new(&rootfs),
                config: &c.config,
                host_config: &c.host_config,
                netns,
                etc_hosts: std::path::Path::new(&c.hosts_path),
                etc_hostname: std::path::Path::new(&c.hostname_path),
                etc_resolv: std::path::Path::new(&c.resolv_path),
                mounts: &resolved,
                cgroup_path: &cgroup_path,
                init_binary: init.as_deref(),
                no_new_privileges: self.cfg.no_new_privileges.unwrap_or(false),
                linked_env: &links.env,
            };
            crate::spec::check_propagation(&resolved, || std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
                .and_then(|_| crate::spec::build(&input))
                .map_err(|err| match err {
                    crate::spec::SpecError::NoDeviceDriver(m) => BusError::internal(m),
                    err => BusError::invalid(err.to_string()),
                })
        });
        let spec = match prep {
            Ok(s) => s,
            Err(err) => {
                undo_all().await;
                return Err(fail(err));
            }
        };
        // the shim's spawn made the bundle directory and cleared exit.json
        let wrote = tracing::info_span!("bundle.write").in_scope(|| -> std::io::Result<()> {
            let text = serde_json::to_vec(&spec).map_err(std::io::Error::other)?;
            // rewritten at every start and read only by this start's shim: atomic,
            // not durable (after a crash of the machine no container runs from it)
            berth_config::paths::write_replace(&opts.bundle.join("config.json"), &text)
        });
        if let Err(err) = wrote {
            undo_all().await;
            return Err(fail(BusError::internal(format!("writing the bundle: {err}"))));
        }

        let started = match pending {
            Ok(p) => p.go().instrument(tracing::info_span!("shim.start")).await,
            Err(e) => Err(e),
        };
        let (shim, pid) = match started {
            Ok(x) => x,
            Err(se) => {
                undo_all().await;
                let code = match se {
                    StartError::NotFound(_) => 127,
                    StartError::PermissionDenied(_) => 126,
                    StartError::Other(_) => 128,
                };
                let msg = start_error_message(&se);
                let err = if code == 128 { BusError::internal(msg) } else { BusError::invalid(msg) };
                return Err((err, code));
            }
        };
        e.set_shim(Some(shim.clone()));
        e.update(|c| {
            c.state.status = Status::Running;
            c.state.pid = pid;
            c.state.started_at = clock::now_rfc3339();
            c.state.error.clear();
            c.state.oom_killed = false;
            c.state.exit_code = 0;
            c.has_been_started = true;
            if c.host_config.runtime.as_deref().is_none_or(str::is_empty) {
                // the default runtime, written at the first start as Moby 20.10 does (the
                // gateway shows it from create on to API 1.42+ clients)
                c.host_config.runtime = Some(self.cfg.default_runtime_name().to_string());
            }
            c.sandbox_key = sandbox.key.clone();
            c.networks = sandbox.networks.clone();
            c.ports = sandbox.ports.clone();
            c.mounts = mounts.clone();
            c.rootfs = rootfs.clone();
            c.log_plugin = log_plugin.clone();
        });
        let _ = e.save();
        e.signal(|l| {
            l.starts += 1;
            l.running = true;
        });
        let rt = self.clone();
        let e2 = e.clone();
        tokio::spawn(async move { rt.monitor(e2, shim).await });
        let c2 = e.get();
        self.event(&c2, Action::Start, &[]).await;
        self.spawn_health(e.clone());
        Ok(())
    }

    /// The endpoints a container asks for, then the sandbox from the network service.
    /// `link_hosts`: the /etc/hosts entries of its legacy links, after the
    /// `--add-host` ones (Moby gives both to libnetwork as extra hosts).
    async fn sandbox(
        self: &Arc<Self>,
        c: &Container,
        mode: &str,
        link_hosts: &[String],
    ) -> Result<bus_schema::network::Sandbox, BusError> {
        let mut network_mode = mode.to_string();
        let mut endpoints = Vec::new();
        if let Some(other) = mode.strip_prefix("container:") {
            let o = self.find(other)?;
            if !o.get().state.running() {
                return Err(BusError::conflict(format!("cannot join network namespace of a non running container: container {} is exited", o.id)));
            }
            network_mode = format!("container:{}", o.id);
        } else if mode != "host" && mode != "none" {
            let mut eps: Vec<(String, docker::EndpointSettings)> = c.endpoints.clone().into_iter().collect();
            if !c.mode_network_detached && !eps.iter().any(|(n, _)| n == mode) {
                eps.insert(0, (mode.to_string(), docker::EndpointSettings::default()));
            }
            eps.sort_by_key(|(n, _)| (n != mode, n.clone()));
            for (network, settings) in eps {
                endpoints.push(EndpointRequest { network, settings });
            }
            if c.mode_network_detached {
                // off the mode's network: the first other network leads, or none at all
                network_mode = endpoints
                    .first()
                    .map(|e| e.network.clone())
                    .unwrap_or_else(|| bus_schema::network::MODE_DETACHED.into());
            }
        }
        let hc = &c.host_config;
        self.network
            .sandbox_create(SandboxCreate {
                container_id: c.id.clone(),
                name: c.name.clone(),
                hostname: c.config.hostname.clone().unwrap_or_default(),
                domainname: c.config.domainname.clone().unwrap_or_default(),
                network_mode,
                endpoints,
                port_bindings: hc.port_bindings.clone().unwrap_or_default(),
                publish_all: hc.publish_all_ports.unwrap_or(false),
                exposed_ports: c.config.exposed_ports.clone().unwrap_or_default(),
                dns: hc.dns.clone().unwrap_or_default(),
                dns_search: hc.dns_search.clone().unwrap_or_default(),
                dns_options: hc.dns_options.clone().unwrap_or_default(),
                extra_hosts: hc.extra_hosts.iter().flatten().chain(link_hosts).cloned().collect(),
            })
            .await
    }

    /// The static init bound at /sbin/docker-init for `--init`.
    pub fn init_binary(&self) -> std::path::PathBuf {
        crate::shim_client::install_init(&self.paths.runtime()).unwrap_or_else(|_| self.paths.runtime().join("berth-init"))
    }

    /// `container:<name>` IPC/PID modes: the other container's namespace path.
    fn ns_of(&self, mode: Option<&str>, kind: &str) -> Result<Option<String>, BusError> {
        let Some(other) = mode.and_then(|m| m.strip_prefix("container:")) else { return Ok(None) };
        let o = self.find(other)?.get();
        if !o.state.running() || o.state.pid == 0 {
            return Err(BusError::conflict(format!("cannot join {kind} namespace of a non running container: container {} is not running", o.id)));
        }
        Ok(Some(format!("/proc/{}/ns/{kind}", o.state.pid)))
    }

    /// Wait for the shim to report the exit, then record it.
    pub(crate) async fn monitor(self: Arc<Self>, e: Arc<Entry>, shim: Arc<dyn ShimProcess>) {
        let st = match shim.wait().await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(id = %e.id, error = %err, "lost the shim; reading its exit file");
                crate::shim_client::read_exit(&self.bundle_dir(&e.id)).unwrap_or(ExitStatus {
                    code: 137,
                    signal: Some(9),
                    oom_killed: false,
                    finished_at: clock::now_rfc3339(),
                })
            }
        };
        self.on_exit(&e, st).await;
    }

    /// Record an exit, give back what the running container held, then remove or
    /// restart it as its configuration says.
    pub(crate) async fn on_exit(self: &Arc<Self>, e: &Arc<Entry>, st: ExitStatus) {
        let c = {
            let _g = e.op.lock().await;
            let c = e.get();
            if !c.state.running() {
                return;
            }
            // `--rm`: the network and the layer go with the removal (auto_remove)
            let auto_remove = c.host_config.auto_remove.unwrap_or(false);
            if !auto_remove {
                // an unmount that storage cannot do now is done when it is back
                // (reconcile_storage), and so is a sandbox the network cannot remove
                let layer = RwLayerUnmount { id: c.id.clone() };
                let _ = tokio::join!(
                    self.remove_sandbox(&c.id),
                    self.storage.rw_layer_unmount(layer),
                    crate::mounts::unmount(self, &c.id, &c.mounts)
                );
            }
            e.set_shim(None);
            e.update(|c| {
                c.state.status = Status::Exited;
                c.state.pid = 0;
                c.state.exit_code = st.code as i64;
                c.state.oom_killed = st.oom_killed;
                c.state.finished_at = st.finished_at.clone();
                c.state.health = c.state.health.take().map(|mut h| {
                    h.status = Some(docker::HealthStatusEnum::UNHEALTHY);
                    h
                });
                c.sandbox_key.clear();
                c.networks.clear();
                c.ports.clear();
            });
            if let Some(lp) = c.log_plugin.clone() {
                e.update(|c| c.log_plugin = None);
                self.stop_logging(lp);
            }
            // `--rm` marks the record Removing at once (auto_remove): one write, not two
            if !auto_remove {
                let _ = e.save();
            }
            e.get()
        };
        if st.oom_killed {
            self.event(&c, Action::Oom, &[]).await;
        }
        self.event(&c, Action::Die, &[("exitCode", st.code.to_string())]).await;
        e.signal(|l| {
            l.exits += 1;
            l.running = false;
            l.exit_code = st.code as i64;
        });
        if c.host_config.auto_remove.unwrap_or(false) {
            self.auto_remove(e).await;
            return;
        }
        if let Some(delay) = restart_delay(&c, st.code as i64) {
            e.update(|c| c.state.status = Status::Restarting);
            let _ = e.save();
            let rt = self.clone();
            let e2 = e.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _g = e2.op.lock().await;
                let c = e2.get();
                if c.state.status != Status::Restarting || c.manually_stopped {
                    return;
                }
                e2.update(|c| {
                    c.restart_count += 1;
                    c.state.status = Status::Exited;
                });
                if let Err(err) = rt.start_locked(&e2).await {
                    tracing::warn!(id = %e2.id, error = %err, "restart failed");
                } else {
                    let c = e2.get();
                    rt.event(&c, Action::Restart, &[]).await;
                }
            });
        }
    }

    /// `docker stop`: the stop signal, then SIGKILL after the timeout.
    pub async fn stop(self: &Arc<Self>, key: &str, signal: Option<String>, timeout: Option<i64>) -> Result<(), BusError> {
        let e = self.find(key)?;
        e.get().can_stop()?;
        self.stop_entry(&e, signal, timeout).await?;
        let c = e.get();
        self.event(&c, Action::Stop, &[]).await;
        Ok(())
    }

    pub(crate) async fn stop_entry(self: &Arc<Self>, e: &Arc<Entry>, signal: Option<String>, timeout: Option<i64>) -> Result<(), BusError> {
        let c = e.get();
        e.update(|c| c.manually_stopped = true);
        let _ = e.save();
        if c.state.status == Status::Restarting {
            // a pending restart is cancelled by the flag
            e.update(|c| c.state.status = Status::Exited);
            let _ = e.save();
            return Ok(());
        }
        let sig = match signal.as_deref().filter(|s| !s.is_empty()).or(c.config.stop_signal.as_deref().filter(|s| !s.is_empty())) {
            Some(s) => parse_signal(s)?,
            None => 15,
        };
        let t = timeout.or(c.config.stop_timeout).unwrap_or(10);
        let mut life = e.life.subscribe();
        let exits = life.borrow().exits;
        if c.state.status == Status::Paused {
            let _ = crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await;
        }
        if t != 0 {
            self.send_signal(e, sig).await?;
        }
        let exited = |life: &mut tokio::sync::watch::Receiver<crate::engine::Life>| {
            let l = life.borrow();
            l.exits > exits || !l.running
        };
        let waited = if t < 0 {
            let _ = life.wait_for(|l| l.exits > exits || !l.running).await;
            true
        } else {
            tokio::time::timeout(Duration::from_secs(t as u64), life.wait_for(|l| l.exits > exits || !l.running))
                .await
                .is_ok()
        };
        if !waited && !exited(&mut life) {
            self.send_signal(e, 9).await?;
            let _ = tokio::time::timeout(Duration::from_secs(30), life.wait_for(|l| l.exits > exits || !l.running)).await;
        }
        Ok(())
    }

    async fn send_signal(&self, e: &Arc<Entry>, sig: i32) -> Result<(), BusError> {
        let c = e.get();
        if let Some(shim) = e.shim() {
            shim.kill(sig, false).await.map_err(|err| BusError::internal(format!("cannot kill container {}: {err}", c.id)))?;
        } else if c.state.pid > 0 {
            unsafe { libc::kill(c.state.pid as i32, sig) };
        }
        self.event(&c, Action::Kill, &[("signal", sig.to_string())]).await;
        Ok(())
    }

    /// `docker kill`.
    pub async fn kill(self: &Arc<Self>, key: &str, signal: Option<String>) -> Result<(), BusError> {
        let e = self.find(key)?;
        let sig = parse_signal(signal.as_deref().filter(|s| !s.is_empty()).unwrap_or("KILL"))?;
        let c = e.get();
        c.can_kill(key)?;
        if sig == 9 || sig == 15 || sig == 2 {
            e.update(|c| c.manually_stopped = true);
            let _ = e.save();
        }
        if c.state.status == Status::Paused && sig == 9 {
            let _ = crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await;
        }
        if sig != 9 {
            return self.send_signal(&e, sig).await;
        }
        // SIGKILL answers once the container is dead, as Moby's `daemon.Kill` does, so
        // a `kill` then `rm` is not refused "container is running"
        let mut life = e.life.subscribe();
        let exits = life.borrow().exits;
        self.send_signal(&e, sig).await?;
        if tokio::time::timeout(Duration::from_secs(30), life.wait_for(|l| l.exits > exits || !l.running))
            .await
            .is_err()
        {
            return Err(BusError::internal(format!("could not kill container {}: it did not exit within 30 s of SIGKILL", c.id)));
        }
        Ok(())
    }

    /// `docker restart`: stop (if running), then start.
    pub async fn restart(self: &Arc<Self>, key: &str, signal: Option<String>, timeout: Option<i64>) -> Result<(), BusError> {
        let e = self.find(key)?;
        if e.get().state.running() {
            self.stop_entry(&e, signal, timeout).await?;
            let c = e.get();
            self.event(&c, Action::Stop, &[]).await;
        }
        let _g = e.op.lock().await;
        e.update(|c| {
            c.manually_stopped = false;
            if c.state.status == Status::Restarting {
                c.state.status = Status::Exited;
            }
        });
        self.start_locked(&e).await?;
        let c = e.get();
        self.event(&c, Action::Restart, &[]).await;
        Ok(())
    }

    pub fn cgroup_rel(&self, id: &str) -> String {
        format!("{}/{}", self.cgroup_parent, id)
    }

    pub async fn pause(self: &Arc<Self>, key: &str, pause: bool) -> Result<(), BusError> {
        let e = self.find(key)?;
        let _g = e.op.lock().await;
        let c = e.get();
        if pause {
            c.can_pause()?;
            if let Err(err) = crate::cgroups::freeze(&self.cgroup_rel(&c.id)).await {
                // its cgroup is gone: the process exited and its exit is not
                // recorded yet (a `start` then `commit` of a short command)
                if err.kind() == std::io::ErrorKind::NotFound {
                    return Err(BusError::conflict(format!("container {} is not running", c.id)));
                }
                return Err(BusError::internal(format!("cannot pause container {}: {err}", c.id)));
            }
            e.update(|c| c.state.status = Status::Paused);
        } else {
            c.can_unpause()?;
            crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await.map_err(|err| BusError::internal(format!("cannot unpause container {}: {err}", c.id)))?;
            e.update(|c| c.state.status = Status::Running);
        }
        let _ = e.save();
        let c = e.get();
        self.event(&c, if pause { Action::Pause } else { Action::Unpause }, &[]).await;
        Ok(())
    }

    /// `docker rm`.
    pub async fn remove(self: &Arc<Self>, key: &str, force: bool, volumes: bool) -> Result<(), BusError> {
        let e = self.find(key)?;
        // an operation in progress decides whether the container runs (a start whose
        // client left — its gateway or the bus died — goes on): wait for it, or the
        // removal below would take the layer and the record of a container whose shim
        // still runs (seen in the fault soak)
        drop(e.op.lock().await);
        let c = e.get();
        c.can_remove(force)?;
        if c.state.running() || c.state.status == Status::Restarting {
            if c.state.status == Status::Restarting {
                e.update(|c| {
                    c.manually_stopped = true;
                    c.state.status = Status::Exited;
                });
            } else {
                self.kill_and_wait(&e).await?;
            }
        }
        self.remove_entry(&e, volumes).await
    }

    async fn kill_and_wait(self: &Arc<Self>, e: &Arc<Entry>) -> Result<(), BusError> {
        let mut life = e.life.subscribe();
        let exits = life.borrow().exits;
        e.update(|c| c.manually_stopped = true);
        let c = e.get();
        if c.state.status == Status::Paused {
            let _ = crate::cgroups::thaw(&self.cgroup_rel(&c.id)).await;
        }
        if let Err(err) = self.send_signal(e, 9).await {
            // a shim that went away with its container (the exit is being recorded:
            // `rm -f` racing the container's own end, or a shim that died) is not an
            // error when the exit follows
            let exited = tokio::time::timeout(Duration::from_secs(5), life.wait_for(|l| l.exits > exits || !l.running)).await;
            return if exited.is_ok_and(|r| r.is_ok()) { Ok(()) } else { Err(err) };
        }
        if tokio::time::timeout(Duration::from_secs(30), life.wait_for(|l| l.exits > exits || !l.running))
            .await
            .is_err()
        {
            return Err(BusError::internal(format!("could not kill container {}", e.id)));
        }
        Ok(())
    }

    /// Remove a stopped container: its layers, volume references, files, record. The
    /// record says Removing on disk first (a restart finishes the removal). When
    /// storage cannot give the layers back (it is down), nothing is lost or leaked:
    /// the container stays, marked Dead with the error, as Docker marks it, and a
    /// later `docker rm` tries again.
    pub(crate) async fn remove_entry(self: &Arc<Self>, e: &Arc<Entry>, volumes: bool) -> Result<(), BusError> {
        let _g = e.op.lock().await;
        let c = e.get();
        if c.state.status == Status::Removing {
            return Ok(());
        }
        if c.state.running() || c.state.status == Status::Restarting {
            // started again since the caller looked (a start took the lock first)
            return Err(BusError::conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                c.name
            )));
        }
        e.update(|c| c.state.status = Status::Removing);
        // the exit gave the sandbox back already, unless the network service could not
        // be reached then (idempotent: nothing to do in the network service otherwise)
        let _ = self.network.sandbox_remove(SandboxRemove { container_id: c.id.clone() }).await;
        let _ = e.save();
        if let Err(err) = self.give_back(e, &c, Some(volumes)).await {
            let err = BusError::internal(format!(
                "container {}: driver \"{}\" failed to remove root filesystem: {}",
                c.id, self.driver, err.message
            ));
            e.update(|c| {
                c.state.status = Status::Dead;
                c.state.error = err.message.clone();
            });
            let _ = e.save();
            return Err(err);
        }
        self.forget(&c.id);
        for id in &c.exec_ids {
            self.execs.lock().unwrap().remove(id);
        }
        self.event(&c, Action::Destroy, &[]).await;
        e.signal(|l| l.removed = true);
        Ok(())
    }

    /// `--rm` after the exit: the container is gone for the API at once (record
    /// marked Removing on disk, forgotten, anonymous volumes and sandbox removed,
    /// `destroy`, waiters answered), and its layers and files are given back in the
    /// background. A restart of the service in between finishes the removal from
    /// the Removing record.
    async fn auto_remove(self: &Arc<Self>, e: &Arc<Entry>) {
        let c = {
            let _g = e.op.lock().await;
            let c = e.get();
            if c.state.status == Status::Removing {
                return;
            }
            e.update(|c| c.state.status = Status::Removing);
            let _ = e.save();
            self.forget(&c.id);
            for id in &c.exec_ids {
                self.execs.lock().unwrap().remove(id);
            }
            c
        };
        // anonymous volumes go before the answer, as in Docker (`volume ls` after
        // `run --rm -v /x` shows none); no bus call when there are none
        crate::mounts::release(self, &c.id, &c.mounts, true).await;
        // the network goes before the answer too: a node stopped right after must not
        // find the sandbox still there (its table and FORWARD rules would stay)
        self.remove_sandbox(&c.id).await;
        self.event(&c, Action::Destroy, &[]).await;
        e.signal(|l| l.removed = true);
        let (rt, e) = (self.clone(), e.clone());
        let bg = self.background.clone().read_owned().await;
        tokio::spawn(async move {
            let _bg = bg;
            rt.finish_removal(&e, None).await;
        });
    }

    /// Give back what a container that is gone for the API (Removing) held. When
    /// storage cannot take its layers now, the record stays Removing and the removal
    /// is finished when storage is back ([`Runtime::reconcile`]).
    pub(crate) async fn finish_removal(self: &Arc<Self>, e: &Arc<Entry>, volumes: Option<bool>) {
        let _g = e.op.lock().await;
        let c = e.get();
        match self.give_back(e, &c, volumes).await {
            Ok(()) => {
                self.pending_removals.lock().unwrap().remove(&c.id);
            }
            Err(err) => {
                tracing::warn!(id = %c.id, error = %err, "giving back a removed container's layers failed; again when storage is back");
                self.pending_removals.lock().unwrap().insert(c.id.clone(), (e.clone(), volumes));
            }
        }
    }

    /// What a removed container held: its layers, volume references (and anonymous
    /// volumes with `Some(true)`; None when they were given back already), its files.
    /// Nothing but the layers is touched when they cannot be given back.
    async fn give_back(self: &Arc<Self>, e: &Arc<Entry>, c: &Container, volumes: Option<bool>) -> Result<(), BusError> {
        match self.storage.rw_layer_remove(RwLayerRemove { id: c.id.clone() }).await {
            Ok(()) => {}
            Err(err) if err.is(ErrorKind::NotFound) => {}
            Err(err) => return Err(err),
        }
        if let Some(v) = volumes {
            crate::mounts::release(self, &c.id, &c.mounts, v).await;
        }
        let _ = std::fs::remove_dir_all(&e.dir);
        let _ = std::fs::remove_dir_all(self.bundle_dir(&c.id));
        Ok(())
    }

    /// Give a container's sandbox back to the network service; when it cannot take it
    /// now (down, or it died under the request), again when it is back
    /// ([`Runtime::reconcile_network`]).
    pub(crate) async fn remove_sandbox(&self, id: &str) {
        match self.network.sandbox_remove(SandboxRemove { container_id: id.to_string() }).await {
            Ok(()) => {}
            Err(err) if err.is(ErrorKind::NotFound) => {}
            Err(err) => {
                tracing::warn!(id, error = %err, "giving back a sandbox failed; again when the network is back");
                self.pending_sandboxes.lock().unwrap().insert(id.to_string());
            }
        }
    }

    /// `docker rename`.
    pub async fn rename(self: &Arc<Self>, key: &str, new: &str) -> Result<(), BusError> {
        let e = self.find(key)?;
        let _g = e.op.lock().await;
        let new = new.strip_prefix('/').unwrap_or(new);
        if !crate::names::valid(new) {
            return Err(BusError::invalid(format!("Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")));
        }
        let old = e.get().name;
        if old == new {
            return Err(BusError::invalid("Renaming a container with the same name as its current name"));
        }
        self.reserve_name(new, &e.id)?;
        self.release_name(&old, &e.id);
        // its link names follow (`/<new>/<alias>`), as Moby moves them
        self.release_links(&old, &e.get().links);
        e.update(|c| c.name = new.to_string());
        self.restore_links(&e.get());
        let _ = e.save();
        if e.get().state.running() {
            let _ = self
                .network
                .sandbox_rename(bus_schema::network::SandboxRename { container_id: e.id.clone(), name: new.to_string() })
                .await;
        }
        let c = e.get();
        self.event(&c, Action::Rename, &[("oldName", format!("/{old}"))]).await;
        Ok(())
    }
}

/// An error that leaves unknown whether the other side did the work (it died under
/// the request, or the bus dropped, or it did not answer in time).
fn maybe_done(e: &BusError) -> bool {
    matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
}

/// How long to wait before restarting, or None when the policy says no.
pub fn restart_delay(c: &Container, exit_code: i64) -> Option<Duration> {
    if c.manually_stopped {
        return None;
    }
    let rp = c.host_config.restart_policy.clone().unwrap_or_default();
    let name = rp.name.map(|n| n.to_string()).unwrap_or_default();
    let restart = match name.as_str() {
        "always" | "unless-stopped" => true,
        "on-failure" => {
            let max = rp.maximum_retry_count.unwrap_or(0);
            exit_code != 0 && (max == 0 || c.restart_count < max)
        }
        _ => false,
    };
    if !restart {
        return None;
    }
    // Docker's backoff: 100 ms doubling per quick restart, reset after 10 s of running.
    let ran = match (clock::parse_rfc3339(&c.state.started_at), clock::parse_rfc3339(&c.state.finished_at)) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0,
    };
    let n = if ran >= 10 { 0 } else { c.restart_count.min(10) as u32 };
    Some(Duration::from_millis((100u64 << n).min(60_000)))
}

/// Docker's size strings for log options: `10m`, `1g`, `512k`, `100`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.trim_end_matches('b').chars().last()? {
        'k' => (&s[..s.find('k')?], 1u64 << 10),
        'm' => (&s[..s.find('m')?], 1 << 20),
        'g' => (&s[..s.find('g')?], 1 << 30),
        _ => (s.trim_end_matches('b'), 1),
    };
    num.trim().parse::<f64>().ok().map(|n| (n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn signals() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("HUP").unwrap(), 1);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
    #[test]
    fn sizes() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("2g"), Some(2 << 30));
    }
}
