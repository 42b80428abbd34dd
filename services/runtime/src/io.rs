//! Streams of a container: wait, logs, attach, exec.

use bus_schema::event::Action;
use futures_util::StreamExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use bus_schema::runtime::{ContainerAttach, ContainerLogs, ContainerWait, ExecCreate, ExecInspect, ExecStart, StreamInfo};
use bus_schema::stream::{StdinChunk, StdioChunk, MAX_CHUNK};
use bus_schema::{docker, BusError};
use tokio::sync::watch;

use crate::engine::{Entry, Life, Runtime};
use crate::logs::{read_log, LogOptions};
use crate::shim_client::{Exec, ExecSpec, StartError};
use crate::state::Status;

/// An exec instance, kept for the container's life (`docker exec inspect`). Recorded
/// on disk beside the container's record (`execs/<id>.json`) so that a runtime that
/// restarts still answers for it: an exec that ran meanwhile is adopted from the shim,
/// one that ended has its exit in the bundle.
pub struct ExecEntry {
    pub id: String,
    pub container_id: String,
    pub config: docker::ExecConfig,
    pub state: Mutex<ExecState>,
    pub handle: Mutex<Option<Arc<Exec>>>,
    /// Where the record is kept.
    pub record: PathBuf,
    created: u128,
}

#[derive(Default, Clone, Serialize, Deserialize)]
pub struct ExecState {
    pub started: bool,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: u32,
}

/// An exec's record on disk.
#[derive(Serialize, Deserialize)]
struct ExecRecord {
    id: String,
    container_id: String,
    config: docker::ExecConfig,
    /// Nanoseconds since the epoch at its create: the order of the container's ExecIDs.
    #[serde(default)]
    created: u128,
    #[serde(flatten)]
    state: ExecState,
}

impl ExecEntry {
    fn new(id: String, container_id: String, config: docker::ExecConfig, container_dir: &Path) -> ExecEntry {
        let record = container_dir.join("execs").join(format!("{id}.json"));
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        ExecEntry { id, container_id, config, state: Mutex::new(ExecState::default()), handle: Mutex::new(None), record, created }
    }

    /// Change the state and persist it (a failure to persist is logged: the exec
    /// itself goes on, only a restart would forget it).
    pub fn set(&self, f: impl FnOnce(&mut ExecState)) {
        let state = {
            let mut st = self.state.lock().unwrap();
            f(&mut st);
            st.clone()
        };
        let rec = ExecRecord { id: self.id.clone(), container_id: self.container_id.clone(), config: self.config.clone(), created: self.created, state };
        let res = std::fs::create_dir_all(self.record.parent().unwrap()).and_then(|()| {
            let text = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
            // a runtime's crash is what it outlives, not the machine's: no fsync
            berth_config::paths::write_replace(&self.record, &text)
        });
        if let Err(e) = res {
            tracing::warn!(exec = %self.id, error = %e, "recording an exec");
        }
    }
}

/// Resolves when the container's current (or next, if it is not running) run ends,
/// or when it is removed.
fn run_ended(e: &Arc<Entry>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut life: watch::Receiver<Life> = e.life.subscribe();
    let l0 = life.borrow().clone();
    async move {
        if !l0.running {
            let _ = life.wait_for(|l| l.starts > l0.starts || l.removed).await;
        }
        let _ = life.wait_for(|l| l.exits > l0.exits || l.removed).await;
    }
}

async fn send_chunks(w: &mut berth_bus::Sink<StdioChunk>, stream: u8, data: Vec<u8>) -> Result<(), BusError> {
    if data.len() <= MAX_CHUNK {
        return w.send(StdioChunk { stream, data }).await;
    }
    for part in data.chunks(MAX_CHUNK) {
        w.send(StdioChunk { stream, data: part.to_vec() }).await?;
    }
    Ok(())
}

fn cmd_text(cfg: &docker::ExecConfig) -> String {
    cfg.cmd.clone().unwrap_or_default().join(" ")
}

impl<D: crate::deps::Deps> Runtime<D> {
    pub async fn wait(self: &Arc<Self>, r: ContainerWait, resp: berth_bus::Answer<ContainerWait>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let mut life = e.life.subscribe();
        let l0 = life.borrow().clone();
        let mut w = resp.accept(()).await?;
        let exited = async {
            match r.condition.as_str() {
                "next-exit" => life.wait_for(|l| l.exits > l0.exits || l.removed).await.map(|l| l.exit_code),
                "removed" => life.wait_for(|l| l.removed).await.map(|l| l.exit_code),
                _ => {
                    if !l0.running && e.get().state.status != Status::Restarting {
                        Ok(e.get().state.exit_code)
                    } else {
                        life.wait_for(|l| l.exits > l0.exits || l.removed).await.map(|l| l.exit_code)
                    }
                }
            }
            .unwrap_or(-1)
        };
        // the client may leave first (`docker run -d` does, once started)
        let code = tokio::select! {
            code = exited => code,
            _ = w.cancelled() => return Ok(()),
        };
        w.send(docker::ContainerWaitResponse { status_code: code, error: None }).await?;
        w.end().await
    }

    pub async fn logs(self: &Arc<Self>, r: ContainerLogs, resp: berth_bus::Answer<ContainerLogs>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        let lc = c.host_config.log_config.clone().unwrap_or_default();
        if lc.typ.as_deref() == Some("none") {
            return Err(BusError::not_implemented("configured logging driver does not support reading"));
        }
        let tail = match r.tail.as_str() {
            "" | "all" => None,
            n => Some(n.parse::<i64>().map_err(|_| BusError::invalid(format!("invalid value for tail: {n}")))?.max(0) as usize),
        };
        let opts = LogOptions {
            follow: r.follow,
            stdout: r.stdout,
            stderr: r.stderr,
            since: r.since,
            until: r.until,
            timestamps: r.timestamps,
            tail,
        };
        let running = c.state.running() || c.state.status == Status::Restarting;
        // a log plugin's logger (a new one for a container that is not running,
        // stopped once the read ends): a plugin that is not there fails the request
        let (plugin_reads, _created) = self.log_source(&c, running).await?;
        let follow_plugin = r.follow && running && _created.is_none();
        let mut w = resp.accept(StreamInfo { tty: c.is_tty() }).await?;
        let stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = if r.follow && running {
            let mut life = e.life.subscribe();
            let l0 = life.borrow().clone();
            Box::pin(async move {
                let _ = life.wait_for(|l| l.exits > l0.exits || l.removed).await;
            })
        } else {
            Box::pin(async {})
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let reader = match plugin_reads {
            // a log plugin that reads logs back answers (Moby asks it, with the
            // tail; it follows only through a running container's logger)
            Some(sock) => {
                let cfg = crate::logplugin::ReadConfig {
                    since: crate::logplugin::go_time(r.since),
                    until: crate::logplugin::go_time(r.until),
                    tail: tail.map(|n| n as i64).unwrap_or(-1),
                    follow: follow_plugin,
                };
                let rt = self.clone();
                tokio::spawn(async move { rt.read_logs(&c, &sock, cfg, &opts, tx).await })
            }
            None => {
                let path = std::path::PathBuf::from(&c.log_path);
                tokio::spawn(async move {
                    match read_log(&path, opts, stop, tx).await {
                        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(BusError::internal(format!("reading the log: {err}"))),
                        _ => Ok(()),
                    }
                })
            }
        };
        loop {
            // a follower of a quiet container may leave before its next line
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = w.cancelled() => {
                    reader.abort();
                    return Ok(());
                }
            };
            let Some((stream, data)) = next else { break };
            if let Err(err) = send_chunks(&mut w, stream, data).await {
                reader.abort();
                return Err(err);
            }
        }
        match reader.await {
            Ok(Ok(())) | Err(_) => w.end().await,
            Ok(Err(err)) => w.fail(err).await,
        }
    }

    pub async fn attach(self: &Arc<Self>, r: ContainerAttach, resp: berth_bus::Answer<ContainerAttach>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        let ended = run_ended(&e);
        let (mut w, mut input) = resp.accept_duplex(StreamInfo { tty: c.is_tty() }).await?;
        self.event(&c, Action::Attach, &[]).await;
        let attach_stdin = r.stdin && c.config.open_stdin.unwrap_or(false);
        let stdin_once = c.config.stdin_once.unwrap_or(false);

        // stdin: delivered once the container runs
        let e_in = e.clone();
        let stdin_task = tokio::spawn(async move {
            let mut life = e_in.life.subscribe();
            while let Some(item) = input.next().await {
                let Ok(chunk) = item else { break };
                if !attach_stdin {
                    continue;
                }
                let _ = life.wait_for(|l| l.running || l.removed).await;
                let Some(shim) = e_in.shim() else { break };
                match chunk {
                    StdinChunk::Data(d) => {
                        if shim.write_stdin(&d).await.is_err() {
                            break;
                        }
                    }
                    StdinChunk::Resize { height, width } => {
                        let _ = shim.resize(height, width).await;
                    }
                    StdinChunk::Close => {
                        if stdin_once {
                            let _ = shim.close_stdin().await;
                        }
                        break;
                    }
                }
            }
        });

        let result = if r.stream || r.logs {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let opts = LogOptions {
                follow: r.stream,
                stdout: r.stdout,
                stderr: r.stderr,
                since: 0.0,
                until: 0.0,
                timestamps: false,
                tail: if r.logs { None } else { Some(0) },
            };
            let path = std::path::PathBuf::from(&c.log_path);
            let stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                if r.stream { Box::pin(ended) } else { Box::pin(async {}) };
            let reader = tokio::spawn(async move { read_log(&path, opts, stop, tx).await });
            let mut res = Ok(());
            while let Some((stream, data)) = rx.recv().await {
                if let Err(err) = send_chunks(&mut w, stream, data).await {
                    res = Err(err);
                    break;
                }
            }
            reader.abort();
            res
        } else {
            Ok(())
        };
        stdin_task.abort();
        match result {
            Ok(()) => w.end().await,
            Err(err) => Err(err),
        }
    }

    pub async fn exec_create(self: &Arc<Self>, r: ExecCreate) -> Result<docker::IdResponse, BusError> {
        let e = self.find(&r.container)?;
        let c = e.get();
        c.can_exec()?;
        let id = crate::names::new_id();
        let ex = Arc::new(ExecEntry::new(id.clone(), c.id.clone(), r.config, &e.dir));
        ex.set(|_| {});
        let text = cmd_text(&ex.config);
        self.execs.lock().unwrap().insert(id.clone(), ex);
        e.update(|c| c.exec_ids.push(id.clone()));
        self.event_with(&c, Action::ExecCreate, &text, &[("execID", id.clone())]).await;
        Ok(docker::IdResponse { id })
    }

    fn exec_entry(&self, id: &str) -> Result<Arc<ExecEntry>, BusError> {
        self.execs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| BusError::not_found(format!("No such exec instance: {id}")))
    }

    pub async fn exec_start(self: &Arc<Self>, r: ExecStart, resp: berth_bus::Answer<ExecStart>) -> Result<(), BusError> {
        let ex = self.exec_entry(&r.id)?;
        {
            let mut st = ex.state.lock().unwrap();
            if st.started {
                return Err(BusError::conflict(format!("Error: Exec command {} is already running", ex.id)));
            }
            st.started = true;
        }
        let e = self.find(&ex.container_id)?;
        let c = e.get();
        c.can_exec_start()?;
        let shim = e.shim().ok_or_else(|| BusError::conflict(format!("container {} is not running", c.id)))?;
        // the process's terminal is the exec's (`ec.Tty` in Moby); the start
        // request's Tty only says how the gateway frames the output
        let tty = ex.config.tty.unwrap_or(false);
        let process = self.exec_process(&c, &ex.config, tty)?;
        let stdin = ex.config.attach_stdin.unwrap_or(false) && !r.detach;
        let exec = match shim.exec(ExecSpec { exec_id: ex.id.clone(), process, stdin, detach: r.detach }).await {
            Ok(x) => Arc::new(x),
            Err(se) => {
                let (code, m) = match &se {
                    StartError::NotFound(m) => (127, m.clone()),
                    StartError::PermissionDenied(m) => (126, m.clone()),
                    StartError::Other(m) => (126, m.clone()),
                };
                ex.set(|st| st.exit_code = Some(code));
                return Err(BusError::invalid(format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: {m}: unknown"
                )));
            }
        };
        if let Some((h, w)) = r.console_size {
            if tty && h > 0 && w > 0 {
                let _ = exec.resize(h, w).await;
            }
        }
        ex.set(|st| {
            st.running = true;
            st.pid = exec.pid();
        });
        *ex.handle.lock().unwrap() = Some(exec.clone());
        let text = cmd_text(&ex.config);
        self.event_with(&c, Action::ExecStart, &text, &[("execID", ex.id.clone())]).await;

        let (mut w, mut input) = resp.accept_duplex(StreamInfo { tty }).await?;
        let ex_in = exec.clone();
        let stdin_task = tokio::spawn(async move {
            while let Some(Ok(chunk)) = input.next().await {
                match chunk {
                    StdinChunk::Data(d) => {
                        if stdin && ex_in.write_stdin(&d).await.is_err() {
                            break;
                        }
                    }
                    StdinChunk::Resize { height, width } => {
                        let _ = ex_in.resize(height, width).await;
                    }
                    StdinChunk::Close => {
                        if stdin {
                            let _ = ex_in.close_stdin().await;
                        }
                        break;
                    }
                }
            }
        });
        let mut out_rx = exec.take_output();
        let mut res = Ok(());
        if let Some(rx) = out_rx.as_mut() {
            while let Some((stream, data)) = rx.recv().await {
                if r.detach {
                    continue;
                }
                if let Err(err) = send_chunks(&mut w, stream, data).await {
                    res = Err(err);
                    break;
                }
            }
        }
        let code = exec.wait().await.unwrap_or(126) as i64;
        stdin_task.abort();
        ex.set(|st| {
            st.running = false;
            st.exit_code = Some(code);
        });
        self.event(&c, Action::ExecDie, &[("execID", ex.id.clone()), ("exitCode", code.to_string())]).await;
        match res {
            Ok(()) => w.end().await,
            Err(err) => Err(err),
        }
    }

    /// The process of an exec: the container's process with the exec's command,
    /// env, working dir, user and terminal.
    pub(crate) fn exec_process(&self, c: &crate::state::Container, cfg: &docker::ExecConfig, tty: bool) -> Result<berth_shim::oci::Process, BusError> {
        let mut exec = cfg.clone();
        exec.tty = Some(tty);
        // the links' variables as they are now (Moby's exec computes them again: a
        // child that stopped fails the exec)
        let links = self.link_plan(c)?;
        let input = crate::spec::ExecInput {
            rootfs: std::path::Path::new(&c.rootfs),
            config: &c.config,
            host_config: &c.host_config,
            exec: &exec,
            no_new_privileges: self.cfg.no_new_privileges.unwrap_or(false),
            linked_env: &links.env,
        };
        crate::spec::exec_process(&input).map_err(|e| BusError::invalid(e.to_string()))
    }

    pub async fn exec_inspect(self: &Arc<Self>, r: ExecInspect) -> Result<docker::ExecInspectResponse, BusError> {
        let ex = self.exec_entry(&r.id)?;
        let st = ex.state.lock().unwrap().clone();
        let cmd = ex.config.cmd.clone().unwrap_or_default();
        Ok(docker::ExecInspectResponse {
            can_remove: Some(false),
            detach_keys: Some(ex.config.detach_keys.clone().unwrap_or_default()),
            id: Some(ex.id.clone()),
            running: Some(st.running),
            exit_code: st.exit_code,
            process_config: Some(docker::ProcessConfig {
                privileged: Some(ex.config.privileged.unwrap_or(false)),
                user: Some(ex.config.user.clone().unwrap_or_default()),
                tty: Some(ex.config.tty.unwrap_or(false)),
                entrypoint: cmd.first().cloned(),
                arguments: Some(cmd.iter().skip(1).cloned().collect()),
            }),
            open_stdin: Some(ex.config.attach_stdin.unwrap_or(false)),
            open_stderr: Some(ex.config.attach_stderr.unwrap_or(false)),
            open_stdout: Some(ex.config.attach_stdout.unwrap_or(false)),
            container_id: Some(ex.container_id.clone()),
            pid: Some(st.pid as i64),
        })
    }

    /// After a restart: the container's exec records, back in the index. Those that
    /// were running are adopted from the shim when it still runs them (their end is
    /// recorded when it comes), or get the exit the shim recorded for them.
    pub(crate) async fn recover_execs(self: &Arc<Self>, e: &Arc<Entry>, shim: Option<&Arc<crate::shim_client::Shim>>) {
        let Ok(rd) = std::fs::read_dir(e.dir.join("execs")) else { return };
        let bundle = self.bundle_dir(&e.id);
        let mut recs = Vec::new();
        for f in rd.flatten().filter(|f| f.path().extension().is_some_and(|x| x == "json")) {
            match std::fs::read(f.path()).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<ExecRecord>(&b).map_err(|e| e.to_string())) {
                Ok(r) => recs.push(r),
                Err(err) => tracing::warn!(file = %f.path().display(), error = %err, "unreadable exec record"),
            }
        }
        // the records are the container's execs (its own record is not saved at each)
        recs.sort_by_key(|r| r.created);
        e.update(|c| c.exec_ids = recs.iter().map(|r| r.id.clone()).collect());
        for rec in recs {
            let mut ex = ExecEntry::new(rec.id.clone(), rec.container_id, rec.config, &e.dir);
            ex.created = rec.created;
            let ex = Arc::new(ex);
            *ex.state.lock().unwrap() = rec.state.clone();
            self.execs.lock().unwrap().insert(rec.id.clone(), ex.clone());
            if !rec.state.running {
                continue;
            }
            let adopted = match shim {
                Some(s) => s.exec_wait(&ex.id).await.ok().flatten(),
                None => None,
            };
            match adopted {
                Some(exec) => {
                    let exec = Arc::new(exec);
                    *ex.handle.lock().unwrap() = Some(exec.clone());
                    let rt = self.clone();
                    let e = e.clone();
                    let ex = ex.clone();
                    tokio::spawn(async move {
                        // its client is gone: the output goes nowhere
                        drop(exec.take_output());
                        let code = exec.wait().await.unwrap_or(126) as i64;
                        ex.set(|st| {
                            st.running = false;
                            st.exit_code = Some(code);
                        });
                        rt.event(&e.get(), Action::ExecDie, &[("execID", ex.id.clone()), ("exitCode", code.to_string())]).await;
                    });
                }
                None => {
                    // ended meanwhile; without a recorded exit (the container went
                    // with the shim) it was killed with the container
                    let code = crate::shim_client::read_exec_exit(&bundle, &ex.id).map(|st| st.code).unwrap_or(137);
                    ex.set(|st| {
                        st.running = false;
                        st.exit_code = Some(code as i64);
                    });
                }
            }
            if let Some(p) = berth_shim::proto::exec_exit_file(&bundle, &ex.id) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    pub async fn exec_resize(self: &Arc<Self>, id: &str, h: u16, w: u16) -> Result<(), BusError> {
        let ex = self.exec_entry(id)?;
        let handle = ex.handle.lock().unwrap().clone();
        match handle {
            Some(x) => x.resize(h, w).await.map_err(|e| BusError::internal(e.to_string())),
            None => Err(BusError::conflict(format!("Exec {id} is not running"))),
        }
    }

    pub async fn resize(self: &Arc<Self>, key: &str, h: u16, w: u16) -> Result<(), BusError> {
        let e = self.find(key)?;
        match e.shim() {
            // no terminal to resize: nothing to do (containerd's runc shim answers nil)
            Some(_) if e.get().config.tty != Some(true) => Ok(()),
            Some(s) => s.resize(h, w).await.map_err(|err| BusError::internal(err.to_string())),
            None => Err(BusError::conflict(format!("Container {} is not running", e.id))),
        }
    }
}
