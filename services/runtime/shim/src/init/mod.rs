//! What runs in a container's process between the shim's fork and its exec: the
//! init's set-up (`container`: namespaces, cgroup, mounts, devices, pivot_root, masked
//! and read-only paths, hostname, sysctls, stdio) and the last steps every process
//! takes (`process`: rlimits, user and groups, capabilities, no_new_privs, seccomp,
//! cwd, exec). The `berth-shim` binary forks and calls `container::init` or
//! `exec_child` with `syscall::Linux`; the unit tests run them over
//! `syscall::test::TestSyscall`, which records the calls instead of making them.

pub mod container;
pub mod process;
pub mod syscall;

pub use container::{init, ns_flag, ns_proc_name, InitCtx, Stdio};
pub use process::{CResult, CapSets, ChildError, Ctx, Finish};
pub use syscall::{Linux, Syscall};

use crate::bpf::SockFilter;
use crate::cgroups::Cgroup;
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// With BERTH_SHIM_TRACE set, the start's phases are timed into shim.log, all from
/// the moment the start began: the container's init (a fork) marks its own phases on
/// the same clock, through a copy of the log's fd that closes at its exec.
static TRACE: std::sync::OnceLock<(std::time::Instant, RawFd)> = std::sync::OnceLock::new();

/// Starts the trace's clock (when BERTH_SHIM_TRACE is set).
pub fn trace_start() {
    if std::env::var_os("BERTH_SHIM_TRACE").is_some() {
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 10) };
        let _ = TRACE.set((std::time::Instant::now(), fd));
    }
}

/// A phase of the start, when traced (see `TRACE`); safe in the forked init.
pub fn trace_mark(what: &str) {
    if let Some((t, fd)) = TRACE.get() {
        let line = format!(
            "{} berth-shim[{}]: trace {:>8.3} ms {what}\n",
            crate::jsonlog::Time::now().format(false),
            std::process::id(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        let _ = sys::write_all(*fd, line.as_bytes());
    }
}

/// An exec's process, in the forked child: the container's cgroup and namespaces,
/// a new session, its stdio (`None`: a pty of its own), then `process::finish_and_exec`.
pub fn exec_child(
    sc: &dyn Syscall,
    p: &crate::oci::Process,
    // the cgroup, and whether the child was cloned into its v2 directory already
    cgroup: Option<(&Cgroup, bool)>,
    ns: &[(OwnedFd, libc::c_int)],
    fds: Option<[OwnedFd; 3]>,
    sync: RawFd,
    seccomp: Option<(&[SockFilter], u32)>,
    host_bounding: u64,
) -> CResult<std::convert::Infallible> {
    if let Some((cg, v2_joined)) = cgroup {
        cg.join_self(v2_joined).ctx(|| "joining the container's cgroup".into())?;
    }
    for (fd, flag) in ns {
        sc.setns(fd.as_raw_fd(), *flag).ctx(|| format!("setns {}", ns_proc_name(*flag)))?;
    }
    process::chdir(sc, "/").ctx(|| "chdir /".into())?;
    sc.setsid();
    match fds {
        None => {
            let (slave, _) = container::open_console_exec(sc, p, sync)?;
            console_stdio(sc, &slave)?;
        }
        Some(fds) => fds_stdio(sc, &fds)?,
    }
    let caps = CapSets::of(p, host_bounding);
    process::finish_and_exec(sc, Finish {
        process: p,
        caps,
        seccomp,
    })
}

/// The pty slave as the new session's controlling terminal, and as stdin, stdout and stderr.
pub(crate) fn console_stdio(sc: &dyn Syscall, slave: &OwnedFd) -> CResult<()> {
    sc.set_controlling_tty(slave.as_raw_fd()).ctx(|| "TIOCSCTTY".into())?;
    for fd in 0..3 {
        sc.dup2(slave.as_raw_fd(), fd).ctx(|| "dup2 console".into())?;
    }
    Ok(())
}

/// `fds` as stdin, stdout and stderr: moved above 2 first, so that no dup2 clobbers
/// one still to be moved.
pub(crate) fn fds_stdio(sc: &dyn Syscall, fds: &[OwnedFd; 3]) -> CResult<()> {
    let high: Vec<RawFd> = fds.iter().map(|f| sc.dup_above(f.as_raw_fd(), 10)).collect::<io::Result<_>>().ctx(|| "dup stdio".into())?;
    for (i, fd) in high.iter().enumerate() {
        sc.dup2(*fd, i as RawFd).ctx(|| "dup2 stdio".into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
