//! `docker start`: the layer, the sandbox, the files, the spec, then the shim.

use berth_bus::network::NetworkApi as _;
use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
use std::sync::Arc;
use tracing::Instrument;

use berth_rules::clock;
use bus_schema::network::{EndpointRequest, SandboxCreate};
use bus_schema::storage::{RwLayerMount, RwLayerUnmount};
use bus_schema::{docker, BusError, ErrorKind};

use crate::engine::{mkdir_in_root, Entry, Runtime};
use crate::shim_client::{ShimOptions, StartError};
use crate::spec::{MountKind, ResolvedMount, SpecInput};
use crate::state::{Container, Status};

use super::parse_size;

fn start_error_message(e: &StartError) -> String {
    let inner = match e {
        StartError::NotFound(m) | StartError::PermissionDenied(m) | StartError::Other(m) => m.clone(),
    };
    format!("failed to create task for container: failed to create shim task: OCI runtime create failed: berth-shim: unable to start container process: {inner}: unknown")
}

/// An error that leaves unknown whether the other side did the work (it died under
/// the request, or the bus dropped, or it did not answer in time).
fn maybe_done(e: &BusError) -> bool {
    matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
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
        let prep = tracing::info_span!("spec.build").in_scope(|| -> Result<berth_shim::oci::Spec, BusError> {
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
}
