//! The last steps of every process the shim starts in a container (the init and
//! each exec): rlimits, user and groups, capabilities, no_new_privs, seccomp, the
//! executable's lookup in the container's PATH, and execve.

use super::syscall::Syscall;
use crate::sys::cstr;
use crate::bpf::SockFilter;
use crate::caps;
use crate::oci::Process;
use crate::proto::StartErrorKind;
use std::ffi::CString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A start failure, worded as Docker words it.
#[derive(Debug)]
pub struct ChildError {
    pub kind: StartErrorKind,
    pub message: String,
}

impl ChildError {
    pub fn other(message: impl Into<String>) -> ChildError {
        ChildError {
            kind: StartErrorKind::Other,
            message: message.into(),
        }
    }
}

pub type CResult<T> = Result<T, ChildError>;

/// Adds context to an io error.
pub trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> CResult<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> CResult<T> {
        self.map_err(|e| ChildError::other(format!("{}: {}", what(), describe(&e))))
    }
}

/// Go's wording of an errno ("no such file or directory").
pub fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    // std renders "No such file or directory (os error 2)".
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => s,
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn is_executable(p: &Path) -> Option<bool> {
    let m = std::fs::metadata(p).ok()?;
    Some(!m.is_dir() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `args[0]` as Go's exec.LookPath does, in the container's PATH.
pub fn look_path(arg0: &str, env: &[String]) -> CResult<PathBuf> {
    if arg0.is_empty() {
        return Err(ChildError {
            kind: StartErrorKind::NotFound,
            message: "exec: \"\": executable file not found in $PATH".into(),
        });
    }
    if arg0.contains('/') {
        let p = Path::new(arg0);
        return match std::fs::metadata(p) {
            Err(e) => Err(ChildError {
                kind: if e.kind() == io::ErrorKind::NotFound {
                    StartErrorKind::NotFound
                } else {
                    StartErrorKind::Other
                },
                message: format!("exec: \"{arg0}\": stat {arg0}: {}", describe(&e)),
            }),
            Ok(_) if is_executable(p) == Some(true) => Ok(p.to_path_buf()),
            Ok(_) => Err(ChildError {
                kind: StartErrorKind::PermissionDenied,
                message: format!("exec: \"{arg0}\": permission denied"),
            }),
        };
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if is_executable(&cand) == Some(true) {
            return Ok(cand);
        }
    }
    Err(ChildError {
        kind: StartErrorKind::NotFound,
        message: format!("exec: \"{arg0}\": executable file not found in $PATH"),
    })
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// The soft open-files limit for containers when the node raised its own (see
/// `berth_config::env::CONTAINER_NOFILE`): what the node was started with.
const CONTAINER_NOFILE: &str = "BERTH_CONTAINER_NOFILE";

pub fn set_rlimits(sc: &dyn Syscall, p: &Process) -> CResult<()> {
    if !p.rlimits.iter().any(|r| r.typ == "RLIMIT_NOFILE") {
        if let Some(soft) = std::env::var(CONTAINER_NOFILE).ok().and_then(|v| v.parse::<u64>().ok()) {
            if let Ok(lim) = sc.getrlimit(libc::RLIMIT_NOFILE) {
                if soft < lim.rlim_cur {
                    sc.setrlimit(libc::RLIMIT_NOFILE, soft, lim.rlim_max)
                        .ctx(|| "error setting rlimit type RLIMIT_NOFILE".into())?;
                }
            }
        }
    }
    for r in &p.rlimits {
        let res = rlimit_resource(&r.typ)
            .ok_or_else(|| ChildError::other(format!("unknown rlimit type {:?}", r.typ)))?;
        sc.setrlimit(res, r.soft, r.hard)
            .ctx(|| format!("error setting rlimit type {}", r.typ))?;
    }
    Ok(())
}

pub fn set_oom_score_adj(sc: &dyn Syscall, p: &Process) -> CResult<()> {
    if let Some(v) = p.oom_score_adj {
        let path = Path::new("/proc/self/oom_score_adj");
        let cur = std::fs::read_to_string(path).unwrap_or_default();
        if cur.trim() != v.to_string() {
            sc.write_proc(path, &v.to_string()).ctx(|| "setting oom_score_adj".into())?;
        }
    }
    Ok(())
}

/// The five capability sets as masks, each limited to what this host allows.
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

fn known_mask(names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| caps::number(n))
        .fold(0, |m, i| m | (1 << i))
}

impl CapSets {
    pub fn of(p: &Process, host_bounding: u64) -> CapSets {
        let c = p.capabilities.clone().unwrap_or_default();
        CapSets {
            bounding: known_mask(&c.bounding) & host_bounding,
            effective: known_mask(&c.effective) & host_bounding,
            permitted: known_mask(&c.permitted) & host_bounding,
            inheritable: known_mask(&c.inheritable) & host_bounding,
            ambient: known_mask(&c.ambient) & host_bounding,
        }
    }
}

/// Bounding set, user and groups, then the other capability sets (runc's order).
pub fn set_user_and_caps(sc: &dyn Syscall, p: &Process, c: &CapSets) -> CResult<()> {
    sc.set_keepcaps(true).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    for cap in 0..64u64 {
        if c.bounding & (1 << cap) == 0 {
            if let Err(e) = sc.drop_bounding_cap(cap) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break; // past the kernel's last capability
                }
            }
        }
    }
    let u = &p.user;
    sc.setgroups(&u.additional_gids).ctx(|| "setgroups".into())?;
    sc.setresgid(u.gid).ctx(|| format!("setgid {}", u.gid))?;
    sc.setresuid(u.uid).ctx(|| format!("setuid {}", u.uid))?;
    sc.capset(c.effective, c.permitted, c.inheritable)
        .ctx(|| "unable to apply caps: capset".into())?;
    sc.clear_ambient_caps();
    for cap in 0..64u64 {
        if c.ambient & (1 << cap) != 0 {
            sc.raise_ambient_cap(cap).ctx(|| {
                format!(
                    "raising ambient capability {}",
                    caps::NAMES.get(cap as usize).unwrap_or(&"?")
                )
            })?;
        }
    }
    let _ = sc.set_keepcaps(false);
    Ok(())
}

pub fn set_no_new_privs(sc: &dyn Syscall) -> CResult<()> {
    sc.set_no_new_privs()
        .ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())
}

pub fn load_seccomp(sc: &dyn Syscall, prog: &[SockFilter], flags: u32) -> CResult<()> {
    sc.seccomp(prog, flags).ctx(|| "error loading seccomp filter".into())
}

/// chdir to the process's cwd (retried after the user switch by the caller when
/// permission is denied as root-squashed).
pub fn chdir(sc: &dyn Syscall, cwd: &str) -> io::Result<()> {
    sc.chdir(Path::new(if cwd.is_empty() { "/" } else { cwd }))
}

/// What the process needs from the caller to finish and exec.
pub struct Finish<'a> {
    pub process: &'a Process,
    pub caps: CapSets,
    pub seccomp: Option<(&'a [SockFilter], u32)>,
}

/// User, capabilities, no_new_privs, seccomp (last when no_new_privs), exec.
pub fn finish_and_exec(sc: &dyn Syscall, f: Finish) -> CResult<std::convert::Infallible> {
    let p = f.process;
    let args: Vec<CString> = p
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = p
        .env
        .iter()
        .filter_map(|e| CString::new(e.as_bytes()).ok())
        .collect();
    let arg0 = p.args.first().cloned().unwrap_or_default();
    let path = look_path(&arg0, &p.env)?;
    let path_c = cstr(&path).map_err(|e| ChildError::other(e.to_string()))?;
    let nnp = p.no_new_privileges.unwrap_or(false);
    let mark = super::trace_mark;

    set_rlimits(sc, p)?;
    set_oom_score_adj(sc, p)?;
    let cwd_ok = chdir(sc, &p.cwd).is_ok();
    if let (false, Some((prog, fl))) = (nnp, f.seccomp) {
        load_seccomp(sc, prog, fl)?;
    }
    mark("seccomp");
    set_user_and_caps(sc, p, &f.caps)?;
    mark("caps");
    if !cwd_ok {
        chdir(sc, &p.cwd).ctx(|| format!("chdir to cwd (\"{}\") set in config.json failed", p.cwd))?;
    }
    sc.umask(p.user.umask.unwrap_or(0o022) as libc::mode_t);
    if nnp {
        set_no_new_privs(sc)?;
    }
    if let (true, Some((prog, fl))) = (nnp, f.seccomp) {
        load_seccomp(sc, prog, fl)?;
    }

    sc.reset_signals();
    mark("execve");
    let e = sc.execve(&path_c, &args, &env);
    let kind = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => StartErrorKind::PermissionDenied,
        Some(libc::ENOENT) => StartErrorKind::NotFound,
        _ => StartErrorKind::Other,
    };
    let message = match kind {
        StartErrorKind::PermissionDenied => format!("exec: \"{arg0}\": permission denied"),
        StartErrorKind::NotFound => format!(
            "exec: \"{arg0}\": stat {}: no such file or directory",
            path.display()
        ),
        StartErrorKind::Other => format!("exec {}: {}", path.display(), describe(&e)),
    };
    Err(ChildError { kind, message })
}
