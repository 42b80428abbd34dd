//! Streams of a container: wait, logs, attach, exec.

use std::sync::{Arc, Mutex};

use berth_bus::Responder;
use bus_schema::runtime::{ContainerAttach, ContainerLogs, ContainerWait, ExecCreate, ExecInspect, ExecStart, StreamInfo};
use bus_schema::stream::{StdinChunk, StdioChunk, MAX_CHUNK};
use bus_schema::{docker, BusError};
use tokio::sync::watch;

use crate::engine::{Entry, Life, Runtime};
use crate::logs::{read_log, LogOptions};
use crate::shim_client::{Exec, ExecSpec, StartError};
use crate::state::Status;

/// An exec instance (Docker keeps them in memory only).
pub struct ExecEntry {
    pub id: String,
    pub container_id: String,
    pub config: docker::ExecConfig,
    pub state: Mutex<ExecState>,
    pub handle: Mutex<Option<Arc<Exec>>>,
}

#[derive(Default, Clone)]
pub struct ExecState {
    pub started: bool,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: u32,
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

async fn send_chunks(w: &mut berth_bus::StreamWriter<StdioChunk>, stream: u8, data: Vec<u8>) -> Result<(), BusError> {
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

impl Runtime {
    pub async fn wait(self: &Arc<Self>, r: ContainerWait, resp: Responder<ContainerWait>) -> Result<(), BusError> {
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

    pub async fn logs(self: &Arc<Self>, r: ContainerLogs, resp: Responder<ContainerLogs>) -> Result<(), BusError> {
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
        let mut w = resp.accept(StreamInfo { tty: c.is_tty() }).await?;
        let running = c.state.running() || c.state.status == Status::Restarting;
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
        let path = std::path::PathBuf::from(&c.log_path);
        let reader = tokio::spawn(async move { read_log(&path, opts, stop, tx).await });
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
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => w.end().await,
            Ok(Err(err)) => w.fail(BusError::internal(format!("reading the log: {err}"))).await,
        }
    }

    pub async fn attach(self: &Arc<Self>, r: ContainerAttach, resp: Responder<ContainerAttach>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        let ended = run_ended(&e);
        let (mut w, mut input) = resp.accept_duplex(StreamInfo { tty: c.is_tty() }).await?;
        self.event(&c, "attach", &[]).await;
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
        match c.state.status {
            Status::Running => {}
            Status::Paused => {
                return Err(BusError::conflict(format!("Container {} is paused, unpause the container before exec", c.id)))
            }
            Status::Restarting => return Err(BusError::conflict(format!("Container {} is restarting, wait until the container is running", c.id))),
            _ => return Err(BusError::conflict(format!("container {} is not running", c.id))),
        }
        let id = crate::names::new_id();
        let ex = Arc::new(ExecEntry {
            id: id.clone(),
            container_id: c.id.clone(),
            config: r.config,
            state: Mutex::new(ExecState::default()),
            handle: Mutex::new(None),
        });
        let text = cmd_text(&ex.config);
        self.execs.lock().unwrap().insert(id.clone(), ex);
        e.update(|c| c.exec_ids.push(id.clone()));
        self.event(&c, &format!("exec_create: {text}"), &[("execID", id.clone())]).await;
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

    pub async fn exec_start(self: &Arc<Self>, r: ExecStart, resp: Responder<ExecStart>) -> Result<(), BusError> {
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
        if c.state.status != Status::Running {
            return Err(BusError::conflict(format!("container {} is not running", c.id)));
        }
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
                {
                    let mut st = ex.state.lock().unwrap();
                    st.exit_code = Some(code);
                }
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
        {
            let mut st = ex.state.lock().unwrap();
            st.running = true;
            st.pid = exec.pid();
        }
        *ex.handle.lock().unwrap() = Some(exec.clone());
        let text = cmd_text(&ex.config);
        self.event(&c, &format!("exec_start: {text}"), &[("execID", ex.id.clone())]).await;

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
        {
            let mut st = ex.state.lock().unwrap();
            st.running = false;
            st.exit_code = Some(code);
        }
        self.event(&c, "exec_die", &[("execID", ex.id.clone()), ("exitCode", code.to_string())]).await;
        match res {
            Ok(()) => w.end().await,
            Err(err) => Err(err),
        }
    }

    /// The process of an exec: the container's process with the exec's command,
    /// env, working dir, user and terminal.
    pub(crate) fn exec_process(&self, c: &crate::state::Container, cfg: &docker::ExecConfig, tty: bool) -> Result<oci_spec::runtime::Process, BusError> {
        let mut exec = cfg.clone();
        exec.tty = Some(tty);
        let input = crate::spec::ExecInput {
            rootfs: std::path::Path::new(&c.rootfs),
            config: &c.config,
            host_config: &c.host_config,
            exec: &exec,
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
            Some(s) => s.resize(h, w).await.map_err(|err| BusError::internal(err.to_string())),
            None => Err(BusError::conflict(format!("Container {} is not running", e.id))),
        }
    }
}
