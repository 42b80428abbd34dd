//! The runtime service's side of a container's shim (tokio).
//!
//! Lifecycle: `Shim::start` writes `<bundle>/shim.json`, spawns `berth-shim <bundle>`
//! with one end of a socket pair as its stdin and returns once the container's
//! process has been exec'd (or with the start error, worded as Docker words it). The
//! shim detaches into its own session and outlives the runtime; after a restart the
//! runtime calls `Shim::connect(bundle)` for a running container, or `read_exit(bundle)`
//! for one whose shim already ended. `wait` resolves when the init has exited and all
//! its output is in the log. Each `exec` and `attach` gets its own connection, so one
//! slow reader never holds up another; output is relayed with backpressure.

use berth_shim::oci::ShimConfig;
use berth_shim::proto::{self, Event, ExecRequest, Request, StartErrorKind};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Mutex};

pub use berth_shim::proto::ExitStatus;

/// How to start a container's shim.
#[derive(Debug, Clone, Default)]
pub struct ShimOptions {
    pub id: String,
    /// Holds config.json; the shim keeps shim.json, shim.sock, shim.log, exit.json there.
    pub bundle: PathBuf,
    /// None: log-driver none.
    pub log_path: Option<PathBuf>,
    pub log_max_size: Option<u64>,
    pub log_max_file: u32,
    /// A log-driver plugin's FIFO (crate::logplugin).
    pub log_fifo: Option<berth_shim::logdriver::LogFifo>,
    /// `mode=non-blocking`: what may wait (`max-buffer-size`, else 1 MiB); None:
    /// blocking.
    pub log_max_buffer: Option<u64>,
    /// Keep stdin open (OpenStdin).
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// Relay the output from its first byte (an attach waiting for the start); read it
    /// with `Shim::take_output`.
    pub attach_stdout: bool,
    pub attach_stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// `exec: "x": executable file not found in $PATH`, `stat /x: no such file or
    /// directory`: the CLI exits 127.
    #[error("{0}")]
    NotFound(String),
    /// `permission denied`: the CLI exits 126.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Other(String),
}

impl StartError {
    fn from_kind(kind: StartErrorKind, msg: String) -> StartError {
        match kind {
            StartErrorKind::NotFound => StartError::NotFound(msg),
            StartErrorKind::PermissionDenied => StartError::PermissionDenied(msg),
            StartErrorKind::Other => StartError::Other(msg),
        }
    }
}

/// Output chunks: (1 stdout | 2 stderr, bytes).
pub type Output = mpsc::Receiver<(u8, Vec<u8>)>;

/// How many chunks (32 KiB at most each) may wait between a reader task and its consumer.
const CHANNEL: usize = 16;

async fn read_event(r: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Event> {
    let len = r.read_u32_le().await? as usize;
    if len == 0 || len > proto::MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "shim protocol: bad frame length",
        ));
    }
    let tag = r.read_u8().await?;
    let mut p = vec![0u8; len - 1];
    r.read_exact(&mut p).await?;
    Event::decode(tag, &p)
}

/// Reads events to the end: output to `out` (dropped once nobody listens), the exit
/// status to `exit`. Falls back to exit.json when the shim went away silently.
async fn pump(
    mut r: OwnedReadHalf,
    out: Option<mpsc::Sender<(u8, Vec<u8>)>>,
    exit: Option<watch::Sender<Option<ExitStatus>>>,
    bundle: PathBuf,
) {
    let mut out = out;
    loop {
        match read_event(&mut r).await {
            Ok(Event::Output { stream, data }) => {
                if let Some(tx) = &out {
                    if tx.send((stream, data)).await.is_err() {
                        out = None;
                        if exit.is_none() {
                            return; // an attach nobody reads any more: hang up
                        }
                    }
                }
            }
            Ok(Event::Exited(st)) | Ok(Event::ExecExited(st)) => {
                if let Some(e) = &exit {
                    let _ = e.send(Some(st));
                }
                return;
            }
            Ok(_) => {}
            Err(_) => {
                if let (Some(e), Some(st)) = (&exit, read_exit(&bundle)) {
                    let _ = e.send(Some(st));
                }
                return;
            }
        }
    }
}

/// A container's running shim.
pub struct Shim {
    bundle: PathBuf,
    pid: u32,
    ctl: Mutex<Option<UnixStream>>,
    exit: watch::Receiver<Option<ExitStatus>>,
    output: std::sync::Mutex<Option<Output>>,
}

impl Shim {
    /// Spawns the shim (it detaches itself; the runtime's death does not kill it) and
    /// waits until the container's process has been exec'd. Returns the init's pid.
    pub async fn start(shim_bin: &Path, opts: &ShimOptions) -> Result<(Shim, u32), StartError> {
        Shim::spawn(shim_bin, opts).await?.go().await
    }

    /// Spawns the shim, which gets ready (process, log, socket) and waits for `go`
    /// before it reads the bundle's config.json: the caller writes that meanwhile.
    /// Dropping the result instead makes the shim exit without doing anything.
    pub async fn spawn(shim_bin: &Path, opts: &ShimOptions) -> Result<PendingShim, StartError> {
        let other = |e: io::Error, what: &str| StartError::Other(format!("{what}: {e}"));
        let cfg = ShimConfig {
            id: opts.id.clone(),
            log_path: opts.log_path.clone(),
            log_max_size: opts.log_max_size,
            log_max_file: opts.log_max_file.max(1),
            log_fifo: opts.log_fifo.clone(),
            log_max_buffer: opts.log_max_buffer,
            stdin: opts.stdin,
            stdin_once: opts.stdin_once,
            tty: opts.tty,
            attach_stdout: opts.attach_stdout,
            attach_stderr: opts.attach_stderr,
            cgroups: crate::cgroups::layout().ok().cloned(),
        };
        let json = serde_json::to_vec(&cfg).map_err(|e| StartError::Other(e.to_string()))?;
        tokio::fs::create_dir_all(&opts.bundle).await.map_err(|e| other(e, "creating the bundle"))?;
        tokio::fs::write(opts.bundle.join("shim.json"), json)
            .await
            .map_err(|e| other(e, "writing shim.json"))?;
        let _ = tokio::fs::remove_file(opts.bundle.join("exit.json")).await;
        let (mine, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| other(e, "socketpair"))?;
        let mut child = tokio::process::Command::new(shim_bin)
            .arg(&opts.bundle)
            .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| other(e, &format!("starting {}", shim_bin.display())))?;
        // Reap the shim when it ends (if we are still around then).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        mine.set_nonblocking(true).map_err(|e| other(e, "socket"))?;
        let conn = UnixStream::from_std(mine).map_err(|e| other(e, "socket"))?;
        Ok(PendingShim { conn, bundle: opts.bundle.clone(), attach: opts.attach_stdout || opts.attach_stderr })
    }
}

/// A shim spawned and waiting for `go` (see `Shim::spawn`).
pub struct PendingShim {
    conn: UnixStream,
    bundle: PathBuf,
    attach: bool,
}

impl PendingShim {
    /// Lets the shim start the container from the bundle; waits until the container's
    /// process has been exec'd. Returns the init's pid.
    pub async fn go(self) -> Result<(Shim, u32), StartError> {
        let PendingShim { conn, bundle, attach } = self;
        let (mut r, mut w) = conn.into_split();
        if let Err(e) = w.write_all(&[proto::GO]).await {
            return Err(StartError::Other(format!("the shim ended before starting the container: {e}")));
        }
        let pid = match read_event(&mut r).await {
            Ok(Event::Started { pid }) => pid,
            Ok(Event::StartFailed { kind, message }) => {
                return Err(StartError::from_kind(kind, message))
            }
            Ok(e) => {
                return Err(StartError::Other(format!(
                    "unexpected reply from the shim: {e:?}"
                )))
            }
            Err(e) => {
                let log = tokio::fs::read_to_string(bundle.join("shim.log"))
                    .await
                    .unwrap_or_default();
                let last = log.lines().last().unwrap_or("").to_string();
                return Err(StartError::Other(format!(
                    "the shim ended before starting the container: {e} {last}"
                )));
            }
        };
        let (etx, erx) = watch::channel(None);
        let (output, otx) = if attach {
            let (tx, rx) = mpsc::channel(CHANNEL);
            (Some(rx), Some(tx))
        } else {
            (None, None)
        };
        let pump_bundle = bundle.clone();
        tokio::spawn(async move {
            let _w = w; // keep the connection open until the end
            pump(r, otx, Some(etx), pump_bundle).await;
        });
        Ok((
            Shim {
                bundle,
                pid,
                ctl: Mutex::new(None),
                exit: erx,
                output: std::sync::Mutex::new(output),
            },
            pid,
        ))
    }
}

impl Shim {
    /// Reconnects to a running shim (after a runtime restart); Err if it is gone
    /// (then `read_exit` has its exit status).
    pub async fn connect(bundle: &Path) -> io::Result<Shim> {
        let s = UnixStream::connect(bundle.join("shim.sock")).await?;
        let (mut r, mut w) = s.into_split();
        w.write_all(&Request::State.to_bytes()).await?;
        let pid = match read_event(&mut r).await? {
            Event::State(st) => st.pid,
            e => {
                return Err(io::Error::other(format!(
                    "unexpected reply from the shim: {e:?}"
                )))
            }
        };
        w.write_all(&Request::Wait.to_bytes()).await?;
        let (etx, erx) = watch::channel(None);
        let b = bundle.to_path_buf();
        tokio::spawn(async move {
            let _w = w;
            pump(r, None, Some(etx), b).await;
        });
        Ok(Shim {
            bundle: bundle.to_path_buf(),
            pid,
            ctl: Mutex::new(None),
            exit: erx,
            output: std::sync::Mutex::new(None),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// The output relayed since the start, when `attach_stdout/err` asked for it.
    pub fn take_output(&self) -> Option<Output> {
        self.output.lock().unwrap().take()
    }

    /// The exit status once known (without waiting).
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }

    async fn control(&self, req: Request, reply: bool) -> io::Result<()> {
        let mut g = self.ctl.lock().await;
        if g.is_none() {
            *g = Some(UnixStream::connect(self.bundle.join("shim.sock")).await?);
        }
        let s = g.as_mut().unwrap();
        let r = async {
            s.write_all(&req.to_bytes()).await?;
            if !reply {
                return Ok(());
            }
            match read_event(s).await? {
                Event::Ok => Ok(()),
                Event::Error(m) => Err(io::Error::other(m)),
                e => Err(io::Error::other(format!(
                    "unexpected reply from the shim: {e:?}"
                ))),
            }
        }
        .await;
        if r.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::Other) {
            *g = None; // broken connection: reconnect next time
        }
        r
    }

    /// Signals the init, or every process of the container with `all`. Err with
    /// "process already finished" when it has exited.
    pub async fn kill(&self, signal: i32, all: bool) -> io::Result<()> {
        self.control(Request::Kill { signal, all }, true).await
    }

    pub async fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        for c in data.chunks(proto::CHUNK) {
            self.control(Request::Stdin(c.to_vec()), false).await?;
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> io::Result<()> {
        self.control(Request::CloseStdin, true).await
    }

    pub async fn resize(&self, height: u16, width: u16) -> io::Result<()> {
        self.control(Request::Resize { height, width }, true).await
    }

    /// Resolves when the init has exited (all output already in the log).
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        let mut rx = self.exit.clone();
        loop {
            if let Some(st) = rx.borrow_and_update().clone() {
                return Ok(st);
            }
            if rx.changed().await.is_err() {
                return read_exit(&self.bundle)
                    .ok_or_else(|| io::Error::other("the shim went away without an exit status"));
            }
        }
    }

    /// The container's live output from now on (its own connection).
    pub async fn attach(&self, stdout: bool, stderr: bool) -> io::Result<Output> {
        let s = UnixStream::connect(self.bundle.join("shim.sock")).await?;
        let (r, mut w) = s.into_split();
        w.write_all(&Request::Attach { stdout, stderr }.to_bytes())
            .await?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let b = self.bundle.clone();
        tokio::spawn(async move {
            let _w = w;
            pump(r, Some(tx), None, b).await;
        });
        Ok(rx)
    }

    /// Starts a process in the container (`docker exec`).
    pub async fn exec(&self, spec: ExecSpec) -> Result<Exec, StartError> {
        let other = |e: io::Error| StartError::Other(format!("exec: {e}"));
        let s = UnixStream::connect(self.bundle.join("shim.sock"))
            .await
            .map_err(other)?;
        let (mut r, mut w) = s.into_split();
        let process =
            serde_json::to_value(&spec.process).map_err(|e| StartError::Other(e.to_string()))?;
        let req = Request::Exec(Box::new(ExecRequest {
            exec_id: spec.exec_id,
            process,
            stdin: spec.stdin,
            detach: spec.detach,
        }));
        w.write_all(&req.to_bytes()).await.map_err(other)?;
        let pid = match read_event(&mut r).await.map_err(other)? {
            Event::ExecStarted { pid } => pid,
            Event::StartFailed { kind, message } => {
                return Err(StartError::from_kind(kind, message))
            }
            Event::Error(m) => return Err(StartError::Other(m)),
            e => {
                return Err(StartError::Other(format!(
                    "unexpected reply from the shim: {e:?}"
                )))
            }
        };
        Ok(self.exec_conn(r, w, pid))
    }

    /// Becomes the client of an exec that a previous runtime started: None when the
    /// shim runs no such exec (it ended: [`read_exec_exit`]).
    pub async fn exec_wait(&self, exec_id: &str) -> io::Result<Option<Exec>> {
        let s = UnixStream::connect(self.bundle.join("shim.sock")).await?;
        let (mut r, mut w) = s.into_split();
        w.write_all(&Request::ExecWait { exec_id: exec_id.to_string() }.to_bytes())
            .await?;
        match read_event(&mut r).await? {
            Event::ExecStarted { pid } => Ok(Some(self.exec_conn(r, w, pid))),
            _ => Ok(None),
        }
    }

    fn exec_conn(&self, r: OwnedReadHalf, w: OwnedWriteHalf, pid: u32) -> Exec {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (etx, erx) = watch::channel(None);
        let b = self.bundle.clone();
        tokio::spawn(pump(r, Some(tx), Some(etx), b));
        Exec {
            pid,
            output: std::sync::Mutex::new(Some(rx)),
            w: Arc::new(Mutex::new(w)),
            exit: erx,
        }
    }
}

/// The exit of an exec that ended while no runtime was its client (the shim wrote it).
pub fn read_exec_exit(bundle: &Path, exec_id: &str) -> Option<ExitStatus> {
    let b = std::fs::read(berth_shim::proto::exec_exit_file(bundle, exec_id)?).ok()?;
    serde_json::from_slice(&b).ok()
}

/// What `Shim::exec` runs.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub exec_id: String,
    /// args, env, cwd, user, capabilities, terminal (see `spec::exec_process`).
    pub process: berth_shim::oci::Process,
    pub stdin: bool,
    /// Nothing will read the output (`docker exec -d`): it goes to /dev/null.
    pub detach: bool,
}

/// A running exec: its output, its stdin and its end.
pub struct Exec {
    pid: u32,
    output: std::sync::Mutex<Option<Output>>,
    w: Arc<Mutex<OwnedWriteHalf>>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Exec {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exec's output; drop it to discard the rest (the exit code still arrives).
    pub fn take_output(&self) -> Option<Output> {
        self.output.lock().unwrap().take()
    }

    async fn send(&self, r: Request) -> io::Result<()> {
        self.w.lock().await.write_all(&r.to_bytes()).await
    }

    pub async fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        for c in data.chunks(proto::CHUNK) {
            self.send(Request::Stdin(c.to_vec())).await?;
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> io::Result<()> {
        self.send(Request::CloseStdin).await
    }

    pub async fn resize(&self, height: u16, width: u16) -> io::Result<()> {
        self.send(Request::Resize { height, width }).await
    }

    pub async fn kill(&self, signal: i32) -> io::Result<()> {
        self.send(Request::Kill { signal, all: false }).await
    }

    /// The exit code once the process has exited and its output is drained.
    pub async fn wait(&self) -> io::Result<i32> {
        let mut rx = self.exit.clone();
        loop {
            if let Some(st) = rx.borrow_and_update().clone() {
                return Ok(st.code);
            }
            if rx.changed().await.is_err() {
                return Err(io::Error::other(
                    "the shim closed the exec's connection without an exit code",
                ));
            }
        }
    }
}

/// Exit status recorded by a shim that already ended (read from the bundle).
pub fn read_exit(bundle: &Path) -> Option<ExitStatus> {
    let b = std::fs::read(bundle.join("exit.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Writes berth-init (for `--init`) into `dir` when missing or different; returns its path.
pub fn install_init(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("berth-init");
    if std::fs::read(&p).is_ok_and(|b| b == berth_shim::INIT_BINARY) {
        return Ok(p);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".berth-init.{}", std::process::id()));
    std::fs::write(&tmp, berth_shim::INIT_BINARY)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &p)?;
    Ok(p)
}
