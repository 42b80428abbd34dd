//! The runtime service: containers, through a per-container shim that owns the
//! container's processes, stdio and log, and outlives this service.
//!
//! Lifecycle walkthrough: `create` records the container and its read-write layer;
//! `start` mounts the rootfs, asks the network service for a sandbox, writes the
//! container's /etc files and OCI spec, and spawns a shim, which reports the exec of
//! the user's process; a monitor task waits for the shim's exit report and records it
//! (`on_exit`), giving back the sandbox and mount, then removes (`--rm`) or restarts
//! (restart policy) the container. A restarted service reconnects to live shims and
//! reads the exit files of those that ended while it was away.

pub mod archive;
pub mod claims;
pub mod create;
pub mod deps;
pub mod engine;
pub mod health;
pub mod io;
pub mod lifecycle;
pub mod links;
pub mod logplugin;
pub mod mounts;
pub mod names;
pub mod netconn;
pub mod query;
pub mod reconcile;
pub mod state;
pub mod stats;
pub mod top;
pub mod validate;

pub mod cgroups;
pub mod logs;
pub mod seccomp;
pub mod shim_client;
pub mod spec;
pub mod user;

#[cfg(test)]
mod lifecycle_tests;

use std::sync::Arc;
use std::time::Duration;

use berth_bus::runtime::RuntimeApi;
use berth_bus::{answer, answer_duplex, Bus, Server};
use berth_config::{DaemonConfig, Paths};
use bus_schema::runtime::*;
use bus_schema::stream::{ByteChunk, StdinChunk, StdioChunk};
use bus_schema::{docker, BusError, BusStream, Service};

pub use engine::Runtime;

/// Build the runtime, recover what is on disk, and register every handler.
pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    Ok(serve_with(bus, cfg).await?.0)
}

pub async fn serve_with(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<(Server, Arc<Runtime>)> {
    let root = std::env::var(berth_config::env::ROOT).map(Into::into).unwrap_or_else(|_| cfg.data_root());
    let mut rt = Runtime::new(bus.clone(), cfg, Paths::new(root));
    std::fs::create_dir_all(rt.containers_dir())?;
    rt.cgroup_parent = rt.node_cgroup_parent()?;
    let rt = Arc::new(rt);
    rt.recover().await;
    rt.reconcile().await;
    rt.follow_peers();

    let info_rt = rt.clone();
    let metrics_rt = rt.clone();
    let server = Server::new(bus, Service::Runtime)
        .metrics(move || {
            let rt = metrics_rt.clone();
            async move { rt.update_metrics() }
        })
        .info(move || {
            let rt = info_rt.clone();
            async move { rt.info() }
        });
    Ok((
        berth_bus::runtime::serve_runtime(server, Arc::new(Api(rt.clone()))),
        rt,
    ))
}

/// The runtime's operations (its table in `bus_schema::runtime`), served by
/// `serve_runtime`: each one a call of [`Runtime`].
pub struct Api(pub Arc<Runtime>);

impl RuntimeApi for Api {
    async fn container_create(
        &self,
        r: ContainerCreate,
    ) -> Result<docker::ContainerCreateResponse, BusError> {
        self.0.create(r).await
    }
    async fn container_start(&self, r: ContainerStart) -> Result<(), BusError> {
        self.0.start(&r.id).await
    }
    async fn container_stop(&self, r: ContainerStop) -> Result<(), BusError> {
        self.0.stop(&r.id, r.signal, r.timeout).await
    }
    async fn container_restart(&self, r: ContainerRestart) -> Result<(), BusError> {
        self.0.restart(&r.id, r.signal, r.timeout).await
    }
    async fn container_kill(&self, r: ContainerKill) -> Result<(), BusError> {
        self.0.kill(&r.id, r.signal).await
    }
    async fn container_wait(
        &self,
        r: ContainerWait,
    ) -> Result<((), BusStream<docker::ContainerWaitResponse>), BusError> {
        let rt = self.0.clone();
        answer(move |resp| async move { rt.wait(r, resp).await }).await
    }
    async fn container_remove(&self, r: ContainerRemove) -> Result<(), BusError> {
        if r.link {
            return self.0.remove_link(&r.id).await;
        }
        self.0.remove(&r.id, r.force, r.volumes).await
    }
    async fn container_inspect(
        &self,
        r: ContainerInspect,
    ) -> Result<docker::ContainerInspectResponse, BusError> {
        self.0.inspect(&r.id, r.size).await
    }
    async fn container_list(
        &self,
        r: ContainerList,
    ) -> Result<Vec<docker::ContainerSummary>, BusError> {
        self.0.list(r).await
    }
    async fn container_logs(
        &self,
        r: ContainerLogs,
    ) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let rt = self.0.clone();
        answer(move |resp| async move { rt.logs(r, resp).await }).await
    }
    async fn container_attach(
        &self,
        r: ContainerAttach,
        input: BusStream<StdinChunk>,
    ) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let rt = self.0.clone();
        answer_duplex(input, move |resp| async move { rt.attach(r, resp).await }).await
    }
    async fn container_resize(&self, r: ContainerResize) -> Result<(), BusError> {
        self.0.resize(&r.id, r.height, r.width).await
    }
    async fn exec_create(&self, r: ExecCreate) -> Result<docker::IdResponse, BusError> {
        self.0.exec_create(r).await
    }
    async fn exec_start(
        &self,
        r: ExecStart,
        input: BusStream<StdinChunk>,
    ) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let rt = self.0.clone();
        answer_duplex(
            input,
            move |resp| async move { rt.exec_start(r, resp).await },
        )
        .await
    }
    async fn exec_resize(&self, r: ExecResize) -> Result<(), BusError> {
        self.0.exec_resize(&r.id, r.height, r.width).await
    }
    async fn exec_inspect(&self, r: ExecInspect) -> Result<docker::ExecInspectResponse, BusError> {
        self.0.exec_inspect(r).await
    }
    async fn container_top(
        &self,
        r: ContainerTop,
    ) -> Result<docker::ContainerTopResponse, BusError> {
        self.0.top(&r.id, r.ps_args).await
    }
    async fn container_stats(
        &self,
        r: ContainerStats,
    ) -> Result<((), BusStream<StatsSample>), BusError> {
        let rt = self.0.clone();
        answer(move |resp| async move { rt.stats(r, resp).await }).await
    }
    async fn container_update(
        &self,
        r: ContainerUpdate,
    ) -> Result<docker::ContainerUpdateResponse, BusError> {
        self.0.update(r).await
    }
    async fn container_rename(&self, r: ContainerRename) -> Result<(), BusError> {
        self.0.rename(&r.id, &r.name).await
    }
    async fn container_pause(&self, r: ContainerPause) -> Result<(), BusError> {
        self.0.pause(&r.id, true).await
    }
    async fn container_unpause(&self, r: ContainerUnpause) -> Result<(), BusError> {
        self.0.pause(&r.id, false).await
    }
    async fn container_prune(
        &self,
        r: ContainerPrune,
    ) -> Result<docker::ContainerPruneResponse, BusError> {
        self.0.prune(r).await
    }
    async fn container_changes(
        &self,
        r: ContainerChanges,
    ) -> Result<Vec<docker::FilesystemChange>, BusError> {
        self.0.changes(&r.id).await
    }
    async fn container_export(
        &self,
        r: ContainerExport,
    ) -> Result<((), BusStream<ByteChunk>), BusError> {
        let rt = self.0.clone();
        answer(move |resp| async move { rt.export(r, resp).await }).await
    }
    async fn container_archive_stat(&self, r: ContainerArchiveStat) -> Result<PathStat, BusError> {
        self.0.archive_stat(&r.id, &r.path).await
    }
    async fn container_archive_get(
        &self,
        r: ContainerArchiveGet,
    ) -> Result<(PathStat, BusStream<ByteChunk>), BusError> {
        let rt = self.0.clone();
        answer(move |resp| async move { rt.archive_get(r, resp).await }).await
    }
    async fn container_archive_put(
        &self,
        r: ContainerArchivePut,
        input: BusStream<ByteChunk>,
    ) -> Result<((), BusStream<()>), BusError> {
        let rt = self.0.clone();
        answer_duplex(
            input,
            move |resp| async move { rt.archive_put(r, resp).await },
        )
        .await
    }
    async fn containers_using_image(
        &self,
        r: ContainersUsingImage,
    ) -> Result<Vec<String>, BusError> {
        Ok(self.0.using_image(&r.image_id))
    }
    async fn plugin_container(&self, r: PluginContainer) -> Result<Option<docker::ContainerInspectResponse>, BusError> {
        // the plugin's own container, by its full ID: nothing else is reached this way
        let e = self.0.find_any(&r.id).ok().filter(|e| e.plugin && e.id == r.id).ok_or_else(|| BusError::not_found(format!("No such container: {}", r.id)))?;
        let rt = self.0.clone();
        crate::engine::PLUGIN_MANAGER
            .scope((), async move {
                match r.action {
                    PluginContainerAction::Start => rt.start(&e.id).await.map(|_| None),
                    PluginContainerAction::Stop { timeout } => rt.stop(&e.id, None, Some(timeout)).await.map(|_| None),
                    PluginContainerAction::Remove => rt.remove(&e.id, true, false).await.map(|_| None),
                    PluginContainerAction::Inspect => rt.inspect(&e.id, false).await.map(Some),
                }
            })
            .await
    }
    async fn log_plugin_users(&self, r: LogPluginUsers) -> Result<Vec<String>, BusError> {
        Ok(self.0.log_plugin_users(&r.name))
    }
    async fn container_network_connect(&self, r: ContainerNetworkConnect) -> Result<(), BusError> {
        self.0.network_connect(r).await
    }
    async fn container_network_disconnect(
        &self,
        r: ContainerNetworkDisconnect,
    ) -> Result<(), BusError> {
        self.0.network_disconnect(r).await
    }
    async fn container_df(
        &self,
        _r: ContainerDf,
    ) -> Result<Vec<docker::ContainerSummary>, BusError> {
        self.0
            .list(ContainerList {
                all: true,
                limit: None,
                size: true,
                filters: Default::default(),
            })
            .await
    }
}

impl Runtime {
    /// Gauges refreshed before each scrape.
    pub fn update_metrics(&self) {
        let mut counts = std::collections::BTreeMap::new();
        for s in ["created", "running", "paused", "restarting", "removing", "exited", "dead"] {
            counts.insert(s, 0u64);
        }
        for e in self.all() {
            *counts.entry(e.get().state.status.as_str()).or_default() += 1;
        }
        for (s, n) in counts {
            berth_telemetry::metrics::gauge_set("berth_containers", "Containers by state.", &[("state", s)], n as f64);
        }
    }

    /// After a restart of this service (or of the node): reconnect to shims that still
    /// run, record the exits of those that ended meanwhile, finish interrupted
    /// removals, and start containers whose restart policy says so.
    pub async fn recover(self: &Arc<Self>) {
        let mut others_ready = false;
        let entries = self.load();
        // nothing starts before this loop: a log FIFO no record names is stale
        self.sweep_log_fifos(&entries);
        for e in entries {
            let c = e.get();
            // giving back (below) needs the storage and network services, which may
            // still be starting with this one (a node started again)
            let gives_back = c.state.status == state::Status::Removing || c.state.running() || c.state.status == state::Status::Restarting;
            if gives_back && !others_ready {
                self.wait_for_give_back_services().await;
                others_ready = true;
            }
            match c.state.status {
                state::Status::Removing => {
                    // an interrupted removal (`--rm` gives back in the background)
                    self.remove_sandbox(&c.id).await;
                    if c.host_config.auto_remove.unwrap_or(false) {
                        // gone for the API already
                        self.forget(&c.id);
                        let rt = self.clone();
                        tokio::spawn(async move { rt.finish_removal(&e, Some(true)).await });
                    } else {
                        e.update(|c| c.state.status = state::Status::Dead);
                        if let Err(err) = self.remove_entry(&e, false).await {
                            tracing::warn!(id = %c.id, error = %err, "finishing an interrupted removal");
                        }
                    }
                }
                s if c.state.running() || s == state::Status::Restarting => {
                    let bundle = self.bundle_dir(&c.id);
                    match shim_client::Shim::connect(&bundle).await {
                        Ok(shim) => {
                            let shim = Arc::new(shim);
                            e.set_shim(Some(shim.clone()));
                            self.recover_execs(&e, Some(&shim)).await;
                            self.spawn_health(e.clone());
                            let rt = self.clone();
                            tokio::spawn(async move { rt.monitor(e, shim).await });
                        }
                        Err(_) => {
                            self.recover_execs(&e, None).await;
                            let st = shim_client::read_exit(&bundle).unwrap_or(shim_client::ExitStatus {
                                code: 255,
                                signal: None,
                                oom_killed: false,
                                finished_at: berth_rules::clock::now_rfc3339(),
                            });
                            e.update(|c| {
                                if c.state.status == state::Status::Restarting {
                                    c.state.status = state::Status::Running;
                                }
                            });
                            self.on_exit(&e, st).await;
                        }
                    }
                }
                _ => {
                    // a start the previous instance did not finish recording (it died
                    // between the shim's `go` and the record): the container runs for
                    // no record. The start did not happen for the API (its client got
                    // an error, inspect says not running): its process goes, and the
                    // reconciliation then gives its mount back (seen in the fault soak)
                    if let Ok(shim) = shim_client::Shim::connect(&self.bundle_dir(&c.id)).await {
                        tracing::warn!(id = %c.id, "killing the container of a start that was never recorded");
                        let _ = shim.kill(libc::SIGKILL, true).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), shim.wait()).await;
                    }
                    self.recover_execs(&e, None).await;
                    // stopped by a node shutdown: the policy may bring it back
                    let rp = c.host_config.restart_policy.as_ref().and_then(|p| p.name).map(|n| n.to_string()).unwrap_or_default();
                    if c.has_been_started && !c.manually_stopped && (rp == "always" || rp == "unless-stopped") {
                        let rt = self.clone();
                        tokio::spawn(async move {
                            // the other services of the node may still be starting:
                            // wait for them (Unavailable) for up to a minute
                            let mut delay = std::time::Duration::from_millis(50);
                            let t0 = std::time::Instant::now();
                            loop {
                                let res = {
                                    let _g = e.op.lock().await;
                                    if e.get().manually_stopped || e.get().state.running() {
                                        return;
                                    }
                                    rt.start_locked(&e).await
                                };
                                match res {
                                    // Moby's start-up restore sends `start`, not `restart`
                                    Ok(()) => return,
                                    Err(err) if err.kind == bus_schema::ErrorKind::Unavailable && t0.elapsed() < std::time::Duration::from_secs(60) => {
                                        tokio::time::sleep(delay).await;
                                        delay = (delay * 2).min(std::time::Duration::from_secs(1));
                                    }
                                    Err(err) => {
                                        tracing::warn!(id = %e.id, error = %err, "restart at start-up failed");
                                        return;
                                    }
                                }
                            }
                        });
                    }
                }
            }
        }
    }

    /// Waits (up to 30 s in all) until the storage and network services answer.
    async fn wait_for_give_back_services(&self) {
        let t0 = std::time::Instant::now();
        let sys = berth_bus::SystemClient::new(self.bus.clone()).with_timeout(Duration::from_millis(500));
        for svc in [Service::Storage, Service::Network] {
            while sys.ping(svc).await.is_err() && t0.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// On SIGTERM without live-restore: stop every container (their stop signal, a
    /// short grace, then SIGKILL) so the node stops within its 10 s budget. With
    /// live-restore, or when `berth up` is gone or hands over to a new instance
    /// (detached), containers keep running for the next instance to adopt.
    pub async fn shutdown(self: &Arc<Self>) {
        // removals answered already but still giving back (`--rm`) finish first
        let _ = tokio::time::timeout(Duration::from_secs(5), self.background.write()).await;
        if self.cfg.live_restore || berth_bus::service::detached() {
            return;
        }
        // daemon.json `shutdown-timeout` given: each container gets its stop timeout, at
        // most that long (`berth up` waits for it); else 3 s, to stop within 10 s
        let (cap, budget) = match self.cfg.shutdown_timeout {
            Some(t) => (t as i64, Duration::from_secs(t as u64 + 2)),
            None => (3, Duration::from_secs(5)),
        };
        let mut tasks = Vec::new();
        for e in self.all() {
            if !e.get().state.running() {
                continue;
            }
            let rt = self.clone();
            tasks.push(tokio::spawn(async move {
                let c = e.get();
                let t = c.config.stop_timeout.unwrap_or(10).clamp(0, cap);
                let manually = c.manually_stopped;
                let _ = rt.stop_entry(&e, None, Some(t)).await;
                // a shutdown is not a manual stop: restart policies apply at the next start
                e.update(|c| c.manually_stopped = manually);
                let _ = e.save();
            }));
        }
        let _ = tokio::time::timeout(budget, futures_util::future::join_all(tasks)).await;
    }
}
