//! The kernel calls a container's set-up makes, behind a trait: `Linux` makes them,
//! `test::TestSyscall` (unit tests) records them in order and fails the ones it is
//! told to, so that the set-up's sequencing is tested without root.
//!
//! Reads that cannot change the host (stat, statvfs, readlink, mountinfo, opening a
//! directory or a namespace file, openat2 lookups in the rootfs) stay direct calls.

use crate::bpf::SockFilter;
use crate::sys::{self, cstr, cvt};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

/// The operations, one kernel call (or one fixed short sequence) each.
pub trait Syscall {
    fn umask(&self, mask: libc::mode_t);
    fn unshare(&self, flags: libc::c_int) -> io::Result<()>;
    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> io::Result<()>;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount2(&self, target: &Path, flags: libc::c_int) -> io::Result<()>;
    /// pivot_root(2) of `new_root`, the old root put at `put_old`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    fn fchdir(&self, fd: RawFd) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()>;
    fn chown(&self, path: &Path, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn setdomainname(&self, name: &str) -> io::Result<()>;
    /// Writes a kernel setting under /proc (a sysctl, oom_score_adj).
    fn write_proc(&self, path: &Path, value: &str) -> io::Result<()>;
    fn setsid(&self);
    /// TIOCSCTTY: `fd` (a terminal) becomes the controlling terminal.
    fn set_controlling_tty(&self, fd: RawFd) -> io::Result<()>;
    /// F_DUPFD_CLOEXEC: a copy of `fd` at `min` or above.
    fn dup_above(&self, fd: RawFd, min: RawFd) -> io::Result<RawFd>;
    fn dup2(&self, from: RawFd, to: RawFd) -> io::Result<()>;
    fn getrlimit(&self, resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit>;
    fn setrlimit(
        &self,
        resource: libc::__rlimit_resource_t,
        soft: u64,
        hard: u64,
    ) -> io::Result<()>;
    fn set_keepcaps(&self, on: bool) -> io::Result<()>;
    /// PR_CAPBSET_DROP (EINVAL past the kernel's last capability).
    fn drop_bounding_cap(&self, cap: u64) -> io::Result<()>;
    fn setgroups(&self, gids: &[libc::gid_t]) -> io::Result<()>;
    fn setresgid(&self, gid: libc::gid_t) -> io::Result<()>;
    fn setresuid(&self, uid: libc::uid_t) -> io::Result<()>;
    /// capset(2) of the effective, permitted and inheritable masks.
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()>;
    fn clear_ambient_caps(&self);
    fn raise_ambient_cap(&self, cap: u64) -> io::Result<()>;
    fn set_no_new_privs(&self) -> io::Result<()>;
    fn seccomp(&self, prog: &[SockFilter], flags: u32) -> io::Result<()>;
    /// Default dispositions and an empty mask.
    fn reset_signals(&self);
    /// execve(2): returns only on failure.
    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> io::Error;
}

/// The real calls.
pub struct Linux;

impl Syscall for Linux {
    fn umask(&self, mask: libc::mode_t) {
        unsafe {
            libc::umask(mask);
        }
    }

    fn unshare(&self, flags: libc::c_int) -> io::Result<()> {
        cvt(unsafe { libc::unshare(flags) }).map(|_| ())
    }

    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
        sys::setns(fd, nstype)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        sys::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        let c = cstr(target)?;
        cvt(unsafe { libc::umount2(c.as_ptr(), flags) }).map(|_| ())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        let (n, o) = (cstr(new_root)?, cstr(put_old)?);
        sys::cvt_l(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) })
            .map(|_| ())
    }

    fn fchdir(&self, fd: RawFd) -> io::Result<()> {
        cvt(unsafe { libc::fchdir(fd) }).map(|_| ())
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        let c = cstr(path)?;
        cvt(unsafe { libc::chdir(c.as_ptr()) }).map(|_| ())
    }

    fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        let c = cstr(path)?;
        cvt(unsafe { libc::mknod(c.as_ptr(), mode, dev) }).map(|_| ())
    }

    fn chown(&self, path: &Path, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
        let c = cstr(path)?;
        cvt(unsafe { libc::chown(c.as_ptr(), uid, gid) }).map(|_| ())
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(|_| ())
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        cvt(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }).map(|_| ())
    }

    fn write_proc(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }

    fn setsid(&self) {
        unsafe {
            libc::setsid();
        }
    }

    fn set_controlling_tty(&self, fd: RawFd) -> io::Result<()> {
        cvt(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(|_| ())
    }

    fn dup_above(&self, fd: RawFd, min: RawFd) -> io::Result<RawFd> {
        cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
    }

    fn dup2(&self, from: RawFd, to: RawFd) -> io::Result<()> {
        sys::dup2(from, to)
    }

    fn getrlimit(&self, resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        cvt(unsafe { libc::getrlimit(resource, &mut lim) })?;
        Ok(lim)
    }

    fn setrlimit(
        &self,
        resource: libc::__rlimit_resource_t,
        soft: u64,
        hard: u64,
    ) -> io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        cvt(unsafe { libc::setrlimit(resource, &lim) }).map(|_| ())
    }

    fn set_keepcaps(&self, on: bool) -> io::Result<()> {
        cvt(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0, 0, 0) }).map(|_| ())
    }

    fn drop_bounding_cap(&self, cap: u64) -> io::Result<()> {
        cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })
            .map(|_| ())
    }

    fn setgroups(&self, gids: &[libc::gid_t]) -> io::Result<()> {
        cvt(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) }).map(|_| ())
    }

    fn setresgid(&self, gid: libc::gid_t) -> io::Result<()> {
        cvt(unsafe { libc::setresgid(gid, gid, gid) }).map(|_| ())
    }

    fn setresuid(&self, uid: libc::uid_t) -> io::Result<()> {
        cvt(unsafe { libc::setresuid(uid, uid, uid) }).map(|_| ())
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let hdr = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
        let data = [false, true].map(|hi| Data {
            effective: half(effective, hi),
            permitted: half(permitted, hi),
            inheritable: half(inheritable, hi),
        });
        sys::cvt_l(unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) })
            .map(|_| ())
    }

    fn clear_ambient_caps(&self) {
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
        }
    }

    fn raise_ambient_cap(&self, cap: u64) -> io::Result<()> {
        cvt(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        })
        .map(|_| ())
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(|_| ())
    }

    fn seccomp(&self, prog: &[SockFilter], flags: u32) -> io::Result<()> {
        crate::bpf::install(prog, flags)
    }

    fn reset_signals(&self) {
        sys::reset_signals()
    }

    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> io::Error {
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        io::Error::last_os_error()
    }
}

/// The recording double.
#[cfg(test)]
pub mod test {
    use super::*;
    use std::cell::RefCell;
    use std::path::PathBuf;

    /// One recorded call. Paths given as `/proc/self/fd/N` (the set-up mounts on
    /// descriptors) are recorded as the path the descriptor names, and so is the
    /// directory an `fchdir` goes to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Umask(libc::mode_t),
        Unshare(libc::c_int),
        Setns {
            path: PathBuf,
            nstype: libc::c_int,
        },
        Mount {
            source: Option<PathBuf>,
            target: PathBuf,
            fstype: Option<String>,
            flags: libc::c_ulong,
            data: Option<String>,
        },
        Umount2 {
            target: PathBuf,
            flags: libc::c_int,
        },
        PivotRoot {
            new_root: PathBuf,
            put_old: PathBuf,
        },
        Fchdir(PathBuf),
        Chdir(PathBuf),
        Mknod {
            path: PathBuf,
            mode: libc::mode_t,
            dev: libc::dev_t,
        },
        Chown {
            path: PathBuf,
            uid: libc::uid_t,
            gid: libc::gid_t,
        },
        Sethostname(String),
        Setdomainname(String),
        WriteProc {
            path: PathBuf,
            value: String,
        },
        Setsid,
        SetControllingTty,
        DupAbove {
            fd: RawFd,
            min: RawFd,
        },
        Dup2 {
            from: RawFd,
            to: RawFd,
        },
        Setrlimit {
            resource: libc::__rlimit_resource_t,
            soft: u64,
            hard: u64,
        },
        SetKeepcaps(bool),
        DropBoundingCap(u64),
        Setgroups(Vec<libc::gid_t>),
        Setresgid(libc::gid_t),
        Setresuid(libc::uid_t),
        Capset {
            effective: u64,
            permitted: u64,
            inheritable: u64,
        },
        ClearAmbientCaps,
        RaiseAmbientCap(u64),
        SetNoNewPrivs,
        Seccomp {
            len: usize,
            flags: u32,
        },
        ResetSignals,
        Execve {
            path: PathBuf,
            args: Vec<String>,
            env: Vec<String>,
        },
    }

    type Matcher = Box<dyn Fn(&Call) -> bool>;

    /// Records every call in order and changes nothing on the host. Calls succeed
    /// unless `fail_when` matches them (then they are recorded and fail with its
    /// errno); `execve` always fails (ENOEXEC unless told otherwise), as a set-up
    /// that returns did not exec.
    pub struct TestSyscall {
        calls: RefCell<Vec<Call>>,
        fail: RefCell<Vec<(Matcher, i32)>>,
        /// The last capability the "kernel" knows (PR_CAPBSET_DROP is EINVAL past it).
        pub last_cap: u64,
        /// What getrlimit answers.
        pub rlimit: libc::rlimit,
        next_fd: std::cell::Cell<RawFd>,
    }

    impl Default for TestSyscall {
        fn default() -> Self {
            TestSyscall {
                calls: RefCell::default(),
                fail: RefCell::default(),
                last_cap: 40,
                rlimit: libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 4096,
                },
                next_fd: std::cell::Cell::new(100),
            }
        }
    }

    fn named(p: &Path) -> PathBuf {
        if p.starts_with("/proc/self/fd") {
            if let Ok(t) = std::fs::read_link(p) {
                return t;
            }
        }
        p.to_path_buf()
    }

    impl TestSyscall {
        pub fn new() -> Self {
            Self::default()
        }

        /// The calls that match `when` fail with `errno` from now on.
        pub fn fail_when(&self, when: impl Fn(&Call) -> bool + 'static, errno: i32) {
            self.fail.borrow_mut().push((Box::new(when), errno));
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }

        fn record(&self, c: Call) -> io::Result<()> {
            let errno = self
                .fail
                .borrow()
                .iter()
                .find(|(m, _)| m(&c))
                .map(|(_, e)| *e);
            self.calls.borrow_mut().push(c);
            match errno {
                Some(e) => Err(io::Error::from_raw_os_error(e)),
                None => Ok(()),
            }
        }
    }

    impl Syscall for TestSyscall {
        fn umask(&self, mask: libc::mode_t) {
            let _ = self.record(Call::Umask(mask));
        }
        fn unshare(&self, flags: libc::c_int) -> io::Result<()> {
            self.record(Call::Unshare(flags))
        }
        fn setns(&self, fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
            let path = named(Path::new(&format!("/proc/self/fd/{fd}")));
            self.record(Call::Setns { path, nstype })
        }
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: libc::c_ulong,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.record(Call::Mount {
                source: source.map(named),
                target: named(target),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.filter(|d| !d.is_empty()).map(str::to_string),
            })
        }
        fn umount2(&self, target: &Path, flags: libc::c_int) -> io::Result<()> {
            self.record(Call::Umount2 {
                target: target.to_path_buf(),
                flags,
            })
        }
        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
            self.record(Call::PivotRoot {
                new_root: new_root.to_path_buf(),
                put_old: put_old.to_path_buf(),
            })
        }
        fn fchdir(&self, fd: RawFd) -> io::Result<()> {
            self.record(Call::Fchdir(named(Path::new(&format!(
                "/proc/self/fd/{fd}"
            )))))
        }
        fn chdir(&self, path: &Path) -> io::Result<()> {
            self.record(Call::Chdir(path.to_path_buf()))
        }
        fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
            self.record(Call::Mknod {
                path: path.to_path_buf(),
                mode,
                dev,
            })
        }
        fn chown(&self, path: &Path, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
            self.record(Call::Chown {
                path: path.to_path_buf(),
                uid,
                gid,
            })
        }
        fn sethostname(&self, name: &str) -> io::Result<()> {
            self.record(Call::Sethostname(name.into()))
        }
        fn setdomainname(&self, name: &str) -> io::Result<()> {
            self.record(Call::Setdomainname(name.into()))
        }
        fn write_proc(&self, path: &Path, value: &str) -> io::Result<()> {
            self.record(Call::WriteProc {
                path: path.to_path_buf(),
                value: value.into(),
            })
        }
        fn setsid(&self) {
            let _ = self.record(Call::Setsid);
        }
        fn set_controlling_tty(&self, _fd: RawFd) -> io::Result<()> {
            self.record(Call::SetControllingTty)
        }
        fn dup_above(&self, fd: RawFd, min: RawFd) -> io::Result<RawFd> {
            self.record(Call::DupAbove { fd, min })?;
            let n = self.next_fd.get();
            self.next_fd.set(n + 1);
            Ok(n)
        }
        fn dup2(&self, from: RawFd, to: RawFd) -> io::Result<()> {
            self.record(Call::Dup2 { from, to })
        }
        fn getrlimit(&self, _resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
            Ok(self.rlimit)
        }
        fn setrlimit(
            &self,
            resource: libc::__rlimit_resource_t,
            soft: u64,
            hard: u64,
        ) -> io::Result<()> {
            self.record(Call::Setrlimit {
                resource,
                soft,
                hard,
            })
        }
        fn set_keepcaps(&self, on: bool) -> io::Result<()> {
            self.record(Call::SetKeepcaps(on))
        }
        fn drop_bounding_cap(&self, cap: u64) -> io::Result<()> {
            if cap > self.last_cap {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.record(Call::DropBoundingCap(cap))
        }
        fn setgroups(&self, gids: &[libc::gid_t]) -> io::Result<()> {
            self.record(Call::Setgroups(gids.to_vec()))
        }
        fn setresgid(&self, gid: libc::gid_t) -> io::Result<()> {
            self.record(Call::Setresgid(gid))
        }
        fn setresuid(&self, uid: libc::uid_t) -> io::Result<()> {
            self.record(Call::Setresuid(uid))
        }
        fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
            self.record(Call::Capset {
                effective,
                permitted,
                inheritable,
            })
        }
        fn clear_ambient_caps(&self) {
            let _ = self.record(Call::ClearAmbientCaps);
        }
        fn raise_ambient_cap(&self, cap: u64) -> io::Result<()> {
            self.record(Call::RaiseAmbientCap(cap))
        }
        fn set_no_new_privs(&self) -> io::Result<()> {
            self.record(Call::SetNoNewPrivs)
        }
        fn seccomp(&self, prog: &[SockFilter], flags: u32) -> io::Result<()> {
            self.record(Call::Seccomp {
                len: prog.len(),
                flags,
            })
        }
        fn reset_signals(&self) {
            let _ = self.record(Call::ResetSignals);
        }
        fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> io::Error {
            let s = |c: &CString| c.to_string_lossy().into_owned();
            let c = Call::Execve {
                path: PathBuf::from(path.to_string_lossy().into_owned()),
                args: args.iter().map(s).collect(),
                env: env.iter().map(s).collect(),
            };
            match self.record(c) {
                Err(e) => e,
                Ok(()) => io::Error::from_raw_os_error(libc::ENOEXEC),
            }
        }
    }
}
