//! The shim's life: start the container, then a single-threaded poll loop.

mod server;
use berth_shim::init::{self as container, process, trace_mark, trace_start};
use berth_shim::sys;

use berth_shim::bpf;
use berth_shim::caps;
use berth_shim::cgroups::{Cgroup, Layout};
use berth_shim::jsonlog::LogWriter;
use berth_shim::oci::{ShimConfig, Spec};
use berth_shim::proto::{Event, StartErrorKind};
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

pub use server::Server;

/// Writes a line to shim.log (our stderr).
macro_rules! log {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "{} berth-shim: {}", berth_shim::jsonlog::Time::now().format(false), format!($($t)*));
    }};
}
pub(crate) use log;

/// Sends a start failure on the spawn socket (or logs it) and returns the exit code.
fn fail(spawn: Option<&OwnedFd>, kind: StartErrorKind, message: String) -> i32 {
    log!("start failed: {message}");
    if let Some(s) = spawn {
        let _ = sys::write_all(
            s.as_raw_fd(),
            &Event::StartFailed { kind, message }.to_bytes(),
        );
    }
    1
}

/// The inherited stdin, when it is a socket: the spawn connection.
fn take_spawn_socket() -> Option<OwnedFd> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(0, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return None;
    }
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn redirect_stdio(bundle: &Path) {
    unsafe {
        let null = c"/dev/null";
        let n = libc::open(null.as_ptr(), libc::O_RDWR);
        if n >= 0 {
            libc::dup2(n, 0);
            libc::dup2(n, 1);
            if n > 2 {
                libc::close(n);
            }
        }
    }
    if let Ok(f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle.join("shim.log"))
    {
        unsafe {
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

/// The shim's ends of the container's stdio.
pub enum ParentStdio {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        master: OwnedFd,
    },
}

/// Forks a child into `pidns` (None: ours), running `child` there; the parent gets
/// the pid. The shim's own pid namespace is restored right after the fork. With a
/// cgroup that has a unified (v2) directory, the child is cloned straight into it
/// (clone3 CLONE_INTO_CGROUP: no migration, no grace period) and `child` is told so;
/// kernels without it get a plain fork.
fn fork_in_pidns(
    pidns: PidNs,
    cgroup: Option<&Cgroup>,
    child: impl FnOnce(bool) -> i32,
) -> std::io::Result<i32> {
    let own = match pidns {
        PidNs::Same => None,
        _ => Some(sys::open(
            Path::new("/proc/self/ns/pid"),
            libc::O_RDONLY,
            0,
        )?),
    };
    let cgroup_dir = cgroup
        .and_then(|c| c.v2_dir())
        .and_then(|d| sys::open(&d, libc::O_RDONLY | libc::O_DIRECTORY, 0).ok());
    match pidns {
        PidNs::Same => {}
        PidNs::New => sys::cvt(unsafe { libc::unshare(libc::CLONE_NEWPID) }).map(|_| ())?,
        PidNs::Join(fd) => sys::setns(fd, libc::CLONE_NEWPID)?,
    }
    let (pid, v2_joined) = match cgroup_dir.as_ref().map(|d| sys::clone_into_cgroup(d.as_raw_fd())) {
        Some(Ok(pid)) => (pid, true),
        _ => (unsafe { libc::fork() }, false),
    };
    if pid == 0 {
        let code = child(v2_joined);
        unsafe { libc::_exit(code) };
    }
    let err = std::io::Error::last_os_error();
    if let Some(own) = own {
        sys::setns(own.as_raw_fd(), libc::CLONE_NEWPID)?;
    }
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

pub enum PidNs {
    Same,
    New,
    Join(RawFd),
}

/// Runs `body` in a forked child and reports its error on the sync socket.
pub fn child_main(
    sync: RawFd,
    body: impl FnOnce() -> process::CResult<std::convert::Infallible>,
) -> i32 {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let (kind, msg) = match r {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => (e.kind, e.message),
        Err(_) => (
            StartErrorKind::Other,
            "the container's init panicked".to_string(),
        ),
    };
    let mut m = vec![
        b'E',
        match kind {
            StartErrorKind::NotFound => 1,
            StartErrorKind::PermissionDenied => 2,
            StartErrorKind::Other => 3,
        },
    ];
    m.extend_from_slice(msg.as_bytes());
    let _ = sys::send_with_fd(sync, &m, None);
    127
}

/// Reads the child's sync socket to EOF: a pty master (`P` + fd), an error (`E`), or
/// nothing (the child exec'd: the socket closed on exec).
pub fn await_exec(sync: &OwnedFd) -> Result<Option<OwnedFd>, (StartErrorKind, String)> {
    let mut pty = None;
    let mut buf = vec![0u8; 8192];
    loop {
        let (n, fd) = sys::recv_with_fd(sync.as_raw_fd(), &mut buf)
            .map_err(|e| (StartErrorKind::Other, format!("reading from init: {e}")))?;
        if let Some(fd) = fd {
            pty = Some(fd);
        }
        if n == 0 {
            return Ok(pty);
        }
        match buf[0] {
            b'P' => continue,
            b'E' if n >= 2 => {
                let kind = match buf[1] {
                    1 => StartErrorKind::NotFound,
                    2 => StartErrorKind::PermissionDenied,
                    _ => StartErrorKind::Other,
                };
                return Err((kind, String::from_utf8_lossy(&buf[2..n]).into_owned()));
            }
            _ => return Err((StartErrorKind::Other, "unexpected message from init".into())),
        }
    }
}

pub fn run(bundle: &Path) -> i32 {
    let bundle = match fs::canonicalize(bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("berth-shim: bundle {}: {e}", bundle.display());
            return 2;
        }
    };
    unsafe {
        libc::setsid();
    }
    let spawn = take_spawn_socket();
    redirect_stdio(&bundle);
    let _ = std::env::set_current_dir(&bundle);
    // the runtime spawns us while it prepares the layer and the network, and says
    // go once config.json is written; a closed socket means the start was given up
    if let Some(s) = &spawn {
        let mut b = [0u8; 1];
        match sys::read(s.as_raw_fd(), &mut b) {
            Ok(1) if b[0] == berth_shim::proto::GO => {}
            _ => return 0,
        }
    }

    let cfg: ShimConfig = match fs::read(bundle.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            return fail(
                spawn.as_ref(),
                StartErrorKind::Other,
                format!("reading shim.json: {e}"),
            )
        }
    };
    let spec: Spec = match fs::read(bundle.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            return fail(
                spawn.as_ref(),
                StartErrorKind::Other,
                format!("reading config.json: {e}"),
            )
        }
    };
    match start(&bundle, cfg, spec, spawn) {
        Ok(code) => code,
        Err(code) => code,
    }
}

fn start(bundle: &Path, cfg: ShimConfig, spec: Spec, spawn: Option<OwnedFd>) -> Result<i32, i32> {
    trace_start();
    let fail = |spawn: &Option<OwnedFd>, kind, msg: String| fail(spawn.as_ref(), kind, msg);
    let sock_path = bundle.join("shim.sock");
    let _ = fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path).map_err(|e| {
        fail(
            &spawn,
            StartErrorKind::Other,
            format!("binding {}: {e}", sock_path.display()),
        )
    })?;
    let _ = fs::remove_file(bundle.join("exit.json"));

    let linux = spec.linux.clone().unwrap_or_default();
    let process = spec.process.clone().unwrap_or_default();
    let tty = process.terminal.unwrap_or(cfg.tty);

    // cgroup
    let cgroup: Option<Cgroup> = match linux
        .cgroups_path
        .as_deref()
        .filter(|p| !p.trim_matches('/').is_empty())
    {
        Some(p) => {
            let layout = cfg.cgroups.clone().map(Ok).unwrap_or_else(Layout::detect).map_err(|e| {
                fail(
                    &spawn,
                    StartErrorKind::Other,
                    format!("reading cgroup mounts: {e}"),
                )
            })?;
            let cg = layout.cgroup(p);
            if let Err(e) = cg.create() {
                return Err(fail(
                    &spawn,
                    StartErrorKind::Other,
                    format!("creating cgroup: {e}"),
                ));
            }
            if let Some(r) = &linux.resources {
                if let Err(e) = cg.apply(r) {
                    let _ = cg.remove();
                    return Err(fail(
                        &spawn,
                        StartErrorKind::Other,
                        format!("applying cgroup configuration: {e}"),
                    ));
                }
            }
            Some(cg)
        }
        None => None,
    };
    let cleanup_cg = |cg: &Option<Cgroup>| {
        if let Some(cg) = cg {
            let _ = cg.remove();
        }
    };

    // seccomp, compiled once here and reused by every exec.
    let seccomp: Option<(Vec<bpf::SockFilter>, u32)> = match &linux.seccomp {
        Some(s) => match bpf::compile(s) {
            Ok(p) => Some((p, bpf::flags(s))),
            Err(e) => {
                cleanup_cg(&cgroup);
                return Err(fail(&spawn, StartErrorKind::Other, e.to_string()));
            }
        },
        None => None,
    };
    let host_bounding = caps::host_bounding();
    trace_mark("cgroup and seccomp ready");

    // stdio
    let (child_stdio, parent_pipes) = if tty {
        (container::Stdio::Pty, None)
    } else {
        let mk = || sys::pipe().map_err(|e| e.to_string());
        let r = (|| -> Result<_, String> {
            let (in_r, in_w) = if cfg.stdin {
                let (r, w) = mk()?;
                (r, Some(w))
            } else {
                (
                    sys::open(Path::new("/dev/null"), libc::O_RDONLY, 0)
                        .map_err(|e| e.to_string())?,
                    None,
                )
            };
            let (out_r, out_w) = mk()?;
            let (err_r, err_w) = mk()?;
            Ok((
                container::Stdio::Fds([in_r, out_w, err_w]),
                Some((in_w, out_r, err_r)),
            ))
        })();
        match r {
            Ok(v) => v,
            Err(e) => {
                cleanup_cg(&cgroup);
                return Err(fail(
                    &spawn,
                    StartErrorKind::Other,
                    format!("creating stdio pipes: {e}"),
                ));
            }
        }
    };

    let (sync_parent, sync_child) = match sys::socketpair() {
        Ok(p) => p,
        Err(e) => {
            cleanup_cg(&cgroup);
            return Err(fail(
                &spawn,
                StartErrorKind::Other,
                format!("socketpair: {e}"),
            ));
        }
    };
    let new_pidns = linux
        .namespaces
        .iter()
        .any(|n| n.typ == "pid" && n.path.is_none());
    let join_pidns = match linux
        .namespaces
        .iter()
        .find(|n| n.typ == "pid")
        .and_then(|n| n.path.as_ref())
    {
        Some(p) => match sys::open(p, libc::O_RDONLY, 0) {
            Ok(fd) => Some(fd),
            Err(e) => {
                cleanup_cg(&cgroup);
                return Err(fail(
                    &spawn,
                    StartErrorKind::Other,
                    format!("open pid namespace {}: {e}", p.display()),
                ));
            }
        },
        None => None,
    };
    let pidns = match (&join_pidns, new_pidns) {
        (Some(fd), _) => PidNs::Join(fd.as_raw_fd()),
        (None, true) => PidNs::New,
        (None, false) => PidNs::Same,
    };
    let sigfd = match sys::sigchld_fd() {
        Ok(f) => f,
        Err(e) => {
            cleanup_cg(&cgroup);
            return Err(fail(
                &spawn,
                StartErrorKind::Other,
                format!("signalfd: {e}"),
            ));
        }
    };

    let sync_raw = sync_child.as_raw_fd();
    let forked = fork_in_pidns(pidns, cgroup.as_ref(), |v2_joined| {
        child_main(sync_raw, || {
            container::init(&berth_shim::init::Linux, container::InitCtx {
                spec: &spec,
                cgroup: cgroup.as_ref(),
                v2_joined,
                stdio: child_stdio,
                sync: sync_raw,
                seccomp: seccomp.as_ref().map(|(p, f)| (p.as_slice(), *f)),
                host_bounding,
            })
        })
    });
    drop(sync_child);
    drop(join_pidns);
    trace_mark("forked");
    let pid = match forked {
        Ok(p) => p,
        Err(e) => {
            cleanup_cg(&cgroup);
            return Err(fail(&spawn, StartErrorKind::Other, format!("fork: {e}")));
        }
    };
    let stdio = match await_exec(&sync_parent) {
        Ok(pty) => match (parent_pipes, pty) {
            (Some((stdin, stdout, stderr)), _) => ParentStdio::Pipes {
                stdin,
                stdout,
                stderr,
            },
            (None, Some(master)) => ParentStdio::Pty { master },
            (None, None) => {
                reap(pid);
                cleanup_cg(&cgroup);
                return Err(fail(
                    &spawn,
                    StartErrorKind::Other,
                    "the container's init exited before starting".into(),
                ));
            }
        },
        Err((kind, msg)) => {
            reap(pid);
            cleanup_cg(&cgroup);
            let _ = fs::remove_file(&sock_path);
            return Err(fail(&spawn, kind, msg));
        }
    };
    drop(sync_parent);
    trace_mark("exec'd");

    let log = match &cfg.log_path {
        Some(p) => match LogWriter::open(p, cfg.log_max_size, cfg.log_max_file) {
            Ok(w) => match &cfg.log_fifo {
                Some(f) => match berth_shim::logdriver::FifoSink::open(f) {
                    Ok(sink) => Some(w.with_plugin(match cfg.log_max_buffer {
                        Some(n) => sink.with_max_pending(n as usize),
                        None => sink,
                    })),
                    Err(e) => {
                        log!("opening the log plugin's fifo {} in {}: {e}", f.path, f.root.display());
                        Some(w)
                    }
                },
                None => Some(w),
            },
            Err(e) => {
                log!("opening log {}: {e}", p.display());
                None
            }
        },
        None => None,
    };
    let _ = fs::write(bundle.join("init.pid"), pid.to_string());

    let namespaces: Vec<libc::c_int> = linux
        .namespaces
        .iter()
        .filter_map(|n| container::ns_flag(&n.typ))
        .collect();
    let server = Server::new(server::Init {
        cfg,
        bundle: bundle.to_path_buf(),
        sock_path,
        listener,
        sigfd,
        spawn,
        pid,
        stdio,
        log,
        cgroup,
        seccomp,
        host_bounding,
        namespaces,
        new_pidns: new_pidns || linux.namespaces.iter().any(|n| n.typ == "pid"),
    });
    drop(spec);
    unsafe {
        libc::malloc_trim(0);
    }
    Ok(server.run())
}

fn reap(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}
