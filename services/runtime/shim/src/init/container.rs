//! The container's init, between fork and exec: namespaces, cgroup, mounts, devices,
//! pivot_root, masked and read-only paths, hostname, sysctls, stdio or pty, then
//! `process::finish_and_exec`.

use super::process::{self, CResult, CapSets, ChildError, Ctx, Finish};
use super::syscall::Syscall;
use crate::sys::{self, cstr};
use crate::bpf::SockFilter;
use crate::cgroups::{Cgroup, Layout};
pub use crate::fsutil::secure_join;
use crate::oci::{Mount, Spec};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Namespace flags by OCI type name.
pub fn ns_flag(typ: &str) -> Option<libc::c_int> {
    Some(match typ {
        "pid" => libc::CLONE_NEWPID,
        "network" => libc::CLONE_NEWNET,
        "mount" => libc::CLONE_NEWNS,
        "ipc" => libc::CLONE_NEWIPC,
        "uts" => libc::CLONE_NEWUTS,
        "cgroup" => libc::CLONE_NEWCGROUP,
        "user" => libc::CLONE_NEWUSER,
        "time" => 0x80, // CLONE_NEWTIME
        _ => return None,
    })
}

/// /proc/PID/ns/<name> for a flag.
pub fn ns_proc_name(flag: libc::c_int) -> &'static str {
    match flag {
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWNET => "net",
        libc::CLONE_NEWNS => "mnt",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWUSER => "user",
        _ => "time",
    }
}

/// The container's stdio as the child sees it.
pub enum Stdio {
    /// stdin (pipe or /dev/null), stdout, stderr.
    Fds([OwnedFd; 3]),
    /// Open a pty in the container's devpts and send the master back over the sync socket.
    Pty,
}

pub struct InitCtx<'a> {
    pub spec: &'a Spec,
    pub cgroup: Option<&'a Cgroup>,
    /// Cloned into the cgroup's v2 directory already.
    pub v2_joined: bool,
    pub stdio: Stdio,
    pub sync: RawFd,
    pub seccomp: Option<(&'a [SockFilter], u32)>,
    pub host_bounding: u64,
}

/// Runs in the forked child (already in the new pid namespace when asked).
pub fn init(sc: &dyn Syscall, ctx: InitCtx) -> CResult<std::convert::Infallible> {
    let spec = ctx.spec;
    let linux = spec.linux.clone().unwrap_or_default();
    let process = spec.process.clone().unwrap_or_default();
    let root = spec
        .root
        .as_ref()
        .ok_or_else(|| ChildError::other("config.json: no root"))?;
    let rootfs = fs::canonicalize(&root.path).ctx(|| format!("rootfs {}", root.path.display()))?;

    let mark = super::trace_mark;
    mark("init");
    sc.umask(0);
    // Join the namespaces given by path, create the others (pid is the parent's job,
    // cgroup comes after joining the cgroup so that it becomes the namespace's root).
    let mut new_flags = 0;
    let mut new_cgroupns = false;
    for ns in &linux.namespaces {
        let flag = ns_flag(&ns.typ)
            .ok_or_else(|| ChildError::other(format!("unknown namespace {:?}", ns.typ)))?;
        match (&ns.path, flag) {
            (_, libc::CLONE_NEWPID) => {}
            (None, libc::CLONE_NEWCGROUP) => new_cgroupns = true,
            (None, f) => new_flags |= f,
            (Some(p), f) => {
                let fd = sys::open(p, libc::O_RDONLY, 0)
                    .ctx(|| format!("open namespace {}", p.display()))?;
                sc.setns(fd.as_raw_fd(), f).ctx(|| format!("setns {}", p.display()))?;
            }
        }
    }
    if new_flags != 0 {
        sc.unshare(new_flags).ctx(|| "unshare namespaces".into())?;
    }
    mark("namespaces");
    if let Some(cg) = ctx.cgroup {
        cg.join_self(ctx.v2_joined).ctx(|| "joining the container's cgroup".into())?;
    }
    mark("cgroup joined");
    if new_cgroupns {
        sc.unshare(libc::CLONE_NEWCGROUP)
            .ctx(|| "unshare cgroup namespace".into())?;
    }

    let mut console: Option<(OwnedFd, u32)> = None;
    if new_flags & libc::CLONE_NEWNS != 0 {
        setup_rootfs(sc, spec, &rootfs, new_cgroupns, ctx.cgroup.map(|c| &c.layout))?;
        mark("mounts");
        pivot_root(sc, &rootfs)?;
        mark("pivot_root");
        // the root's propagation, applied to the new root once it is `/` (runc:
        // applied before, it would reach the host's mount namespace)
        let prop = propagation_flag(linux.rootfs_propagation.as_deref().unwrap_or("rprivate"));
        if prop & (libc::MS_SHARED | libc::MS_SLAVE) != 0 {
            sc.mount(None, Path::new("/"), None, prop, None).ctx(|| "setting the root's propagation".into())?;
        }
        if matches!(ctx.stdio, Stdio::Pty) {
            console = Some(open_console(sc, &process, ctx.sync)?);
        }
        for p in &linux.masked_paths {
            mask_path(sc, p)?;
        }
        mark("masked");
        for p in &linux.readonly_paths {
            readonly_path(sc, Path::new(p))?;
        }
        mark("readonly");
        make_workdir(&process)?;
        if root.readonly == Some(true) {
            remount_ro(sc, Path::new("/")).ctx(|| "remounting the rootfs read-only".into())?;
        }
    } else {
        if matches!(ctx.stdio, Stdio::Pty) {
            console = Some(open_console(sc, &process, ctx.sync)?);
        }
        make_workdir(&process)?;
    }

    if new_flags & libc::CLONE_NEWUTS != 0 {
        if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
            sc.sethostname(h)
                .ctx(|| "sethostname".into())?;
        }
        if let Some(d) = spec.domainname.as_deref().filter(|d| !d.is_empty()) {
            sc.setdomainname(d)
                .ctx(|| "setdomainname".into())?;
        }
    }
    mark("hostname");
    for (k, v) in &linux.sysctl {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        sc.write_proc(&p, v).ctx(|| format!("write sysctl key {k}"))?;
    }

    // stdio: a new session; the pty slave as controlling terminal.
    sc.setsid();
    match (ctx.stdio, console) {
        (_, Some((slave, _))) => super::console_stdio(sc, &slave)?,
        (Stdio::Fds(fds), None) => super::fds_stdio(sc, &fds)?,
        (Stdio::Pty, None) => return Err(ChildError::other("no console")),
    }

    mark("ready to exec");
    let caps = CapSets::of(&process, ctx.host_bounding);
    process::finish_and_exec(sc, Finish {
        process: &process,
        caps,
        seccomp: ctx.seccomp,
    })
}

/// Allocates the container's console in its own devpts, sends the master to the shim,
/// binds the slave at /dev/console.
pub fn open_console(sc: &dyn Syscall, p: &crate::oci::Process, sync: RawFd) -> CResult<(OwnedFd, u32)> {
    open_pty(sc, p, sync, true)
}

/// An exec's terminal: like the init's, without taking over /dev/console.
pub fn open_console_exec(sc: &dyn Syscall, p: &crate::oci::Process, sync: RawFd) -> CResult<(OwnedFd, u32)> {
    open_pty(sc, p, sync, false)
}

fn open_pty(
    sc: &dyn Syscall,
    p: &crate::oci::Process,
    sync: RawFd,
    bind_console: bool,
) -> CResult<(OwnedFd, u32)> {
    let ptmx = if Path::new("/dev/pts/ptmx").exists() {
        "/dev/pts/ptmx"
    } else {
        "/dev/ptmx"
    };
    let (master, slave, n) = sys::openpty(Path::new(ptmx)).ctx(|| "allocating a pty".into())?;
    if let Some(cs) = p.console_size {
        if cs.height > 0 && cs.width > 0 {
            let _ = sys::set_winsize(master.as_raw_fd(), cs.height as u16, cs.width as u16);
        }
    }
    sys::send_with_fd(sync, b"P", Some(master.as_raw_fd())).ctx(|| "sending the console".into())?;
    drop(master);
    let console = Path::new("/dev/console");
    let slave_path = PathBuf::from(format!("/dev/pts/{n}"));
    if bind_console && slave_path.exists() {
        if !console.exists() {
            let _ = fs::File::create(console);
        }
        if console.exists() {
            let _ = sc.mount(Some(&slave_path), console, None, libc::MS_BIND, None);
        }
    }
    Ok((slave, n))
}

struct MountOpts {
    flags: libc::c_ulong,
    clear: libc::c_ulong,
    propagation: libc::c_ulong,
    data: Vec<String>,
    /// Bind this directory inside the source instead (`SUBPATH_OPTION`).
    subpath: Option<String>,
}

fn parse_options(opts: &[String]) -> MountOpts {
    let mut m = MountOpts {
        flags: 0,
        clear: 0,
        propagation: 0,
        data: vec![],
        subpath: None,
    };
    for o in opts {
        let (set, clr): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "private" => {
                m.propagation = libc::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                m.propagation = libc::MS_PRIVATE | libc::MS_REC;
                continue;
            }
            "shared" => {
                m.propagation = libc::MS_SHARED;
                continue;
            }
            "rshared" => {
                m.propagation = libc::MS_SHARED | libc::MS_REC;
                continue;
            }
            "slave" => {
                m.propagation = libc::MS_SLAVE;
                continue;
            }
            "rslave" => {
                m.propagation = libc::MS_SLAVE | libc::MS_REC;
                continue;
            }
            "unbindable" => {
                m.propagation = libc::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                m.propagation = libc::MS_UNBINDABLE | libc::MS_REC;
                continue;
            }
            "tmpcopyup" | "defaults" => continue,
            other if other.starts_with(crate::oci::SUBPATH_OPTION) => {
                m.subpath = Some(other[crate::oci::SUBPATH_OPTION.len()..].to_string());
                continue;
            }
            other => {
                m.data.push(other.to_string());
                continue;
            }
        };
        m.flags |= set;
        m.flags &= !clr;
        m.clear |= clr;
    }
    m
}

fn propagation_flag(name: &str) -> libc::c_ulong {
    match name {
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "private" => libc::MS_PRIVATE,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => libc::MS_PRIVATE | libc::MS_REC,
    }
}

/// `layout`: the host's cgroup hierarchies when the parent has them (else read here).
fn setup_rootfs(sc: &dyn Syscall, spec: &Spec, rootfs: &Path, cgroupns: bool, layout: Option<&Layout>) -> CResult<()> {
    let linux = spec.linux.clone().unwrap_or_default();
    let prop = propagation_flag(linux.rootfs_propagation.as_deref().unwrap_or("rprivate"));
    sc.mount(None, Path::new("/"), None, prop, None).ctx(|| "making / private".into())?;
    if prop & libc::MS_SHARED != 0 {
        // shared, the host's mounts stay peers of the host's (a bind with `rshared`
        // propagation, a plugin's PropagatedMount, reaches the host); the mount the
        // rootfs is on is made private so that binding the rootfs does not
        // propagate, and pivot_root accepts it (runc's rootfsParentMountPrivate)
        let mi = fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading mountinfo".into())?;
        if let Some(parent) = parent_mount(&mi, rootfs) {
            sc.mount(None, &parent, None, libc::MS_PRIVATE, None).ctx(|| format!("making {} private", parent.display()))?;
        }
    }
    sc.mount(
        Some(rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .ctx(|| "binding the rootfs".into())?;

    let mut dev_is_tmpfs = false;
    // mount points are resolved by the kernel inside the rootfs (openat2
    // RESOLVE_IN_ROOT) and made on descriptors: a volume shared with a running
    // container may have links swapped into it while this one starts
    let root = berth_fsutil::InRoot::open(rootfs).ctx(|| "opening the rootfs".into())?;
    for m in &spec.mounts {
        if m.destination == "/dev" && m.typ.as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(sc, &root, m, cgroupns, layout).map_err(|e| {
            ChildError::other(format!(
                "error mounting \"{}\" to rootfs at \"{}\": {}",
                m.source.as_deref().unwrap_or(""),
                m.destination,
                e.message
            ))
        })?;
    }
    if dev_is_tmpfs {
        create_devices(sc, spec, rootfs)?;
    }
    Ok(())
}

/// The mount point of the mount `path` is on (the longest mount point that holds
/// it), from /proc/self/mountinfo; shared mounts only (the others need nothing).
fn parent_mount(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    let mut best: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(mp) = f.get(4) else { continue };
        let mp = PathBuf::from(berth_fsutil::unescape_mountinfo(mp));
        if !path.starts_with(&mp) {
            continue;
        }
        let shared = f.iter().skip(6).take_while(|x| **x != "-").any(|x| x.starts_with("shared:"));
        // a later line of the same mount point is stacked on top: it wins
        if best.as_ref().is_none_or(|(b, _)| mp.components().count() >= b.components().count()) {
            best = Some((mp, shared));
        }
    }
    best.filter(|(_, shared)| *shared).map(|(p, _)| p)
}

/// The magic link naming an open descriptor: a path for mount(2) that leads to that
/// inode and nowhere else.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The mount point `dest` inside the root: a directory (made where missing) or, for a
/// file bind, a file (made empty where missing), as a descriptor.
fn mount_point(root: &berth_fsutil::InRoot, dest: &str, dir: bool) -> io::Result<OwnedFd> {
    if dir {
        return root.mkdir_all(dest, 0o755);
    }
    match root.resolve(dest) {
        Ok(fd) => Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (parent, name) = berth_fsutil::split(dest);
            let d = root.mkdir_all(&parent, 0o755)?;
            use std::os::fd::AsFd;
            let flags = rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::EXCL;
            match berth_fsutil::at::open(d.as_fd(), std::ffi::OsStr::new(&name), flags, 0o644) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            root.resolve(dest)
        }
        Err(e) => Err(e),
    }
}

fn mount_one(sc: &dyn Syscall, root: &berth_fsutil::InRoot, m: &Mount, cgroupns: bool, layout: Option<&Layout>) -> CResult<()> {
    let typ = m.typ.as_deref().unwrap_or("none");
    let o = parse_options(&m.options);
    let is_bind = o.flags & libc::MS_BIND != 0 || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroups(sc, root, &m.destination, &o, cgroupns, layout);
    }
    // after mounting, the destination is resolved again: the descriptor taken before
    // names the directory under the new mount, remounts and propagation go to the mount
    let again = || -> CResult<OwnedFd> { root.resolve(&m.destination).ctx(|| format!("resolving {}", m.destination)) };
    if is_bind {
        let src = PathBuf::from(m.source.as_deref().unwrap_or(""));
        // held open until the bind is made: the subpath the mount follows
        let sub_fd = match &o.subpath {
            Some(rel) => Some(open_subpath(&src, rel).ctx(|| format!("cannot access subpath {rel} of {}", src.display()))?),
            None => None,
        };
        let src = match &sub_fd {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))),
            None => src,
        };
        let meta = fs::metadata(&src).ctx(|| format!("stat {}", src.display()))?;
        let fd = mount_point(root, &m.destination, meta.is_dir()).ctx(|| format!("creating {}", m.destination))?;
        let rec = o.flags & libc::MS_REC;
        sc.mount(Some(&src), &fd_path(&fd), None, libc::MS_BIND | rec, None).ctx(|| "bind".into())?;
        let extra = o.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            let top = again()?; // open while its magic link is used
            let dest = fd_path(&top);
            let keep = locked_flags(&dest);
            sc.mount(
                None,
                &dest,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | extra | keep,
                None,
            )
            .ctx(|| "remount".into())?;
        }
    } else {
        let fd = mount_point(root, &m.destination, true).ctx(|| format!("mkdir {}", m.destination))?;
        let dest = fd_path(&fd);
        let src = m.source.as_deref().map(Path::new).unwrap_or(Path::new(typ));
        let data = o.data.join(",");
        let r = sc.mount(Some(src), &dest, Some(typ), o.flags, Some(&data));
        match r {
            // mqueue/sysfs may be refused (e.g. in a joined netns without privilege): tolerate
            // sysfs like runc does by binding the host's read-only.
            Err(e)
                if typ == "sysfs"
                    && matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EBUSY)) =>
            {
                sc.mount(
                    Some(Path::new("/sys")),
                    &dest,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )
                .ctx(|| "bind /sys".into())?;
                let top = again()?; // open while its magic link is used
            let dest = fd_path(&top);
                sc.mount(
                    None,
                    &dest,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | o.flags,
                    None,
                )
                .ctx(|| "remount /sys".into())?;
            }
            r => r.ctx(|| format!("mount {typ}"))?,
        }
    }
    if o.propagation != 0 {
        let top = again()?; // open while its magic link is used
            let dest = fd_path(&top);
        sc.mount(None, &dest, None, o.propagation, None).ctx(|| "setting propagation".into())?;
    }
    Ok(())
}

/// `rel` inside `base`, resolved by the kernel as if `base` were the root (symlinks
/// and `..` cannot leave it), as an `O_PATH` descriptor.
fn open_subpath(base: &Path, rel: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let root = fs::File::open(base)?;
    let c = std::ffi::CString::new(std::ffi::OsStr::new(rel).as_bytes()).map_err(std::io::Error::other)?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
    // SAFETY: a plain syscall with a valid fd, a NUL-terminated path and its struct
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, root.as_raw_fd(), c.as_ptr(), &how as *const libc::open_how, std::mem::size_of::<libc::open_how>())
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Flags a bind remount must keep (the kernel refuses to drop them when locked and
/// they should not silently disappear anyway).
fn locked_flags(p: &Path) -> libc::c_ulong {
    let c = match cstr(p) {
        Ok(c) => c,
        Err(_) => return 0,
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms;
        }
    }
    out
}

fn remount_ro(sc: &dyn Syscall, p: &Path) -> io::Result<()> {
    let keep = locked_flags(p);
    sc.mount(
        None,
        p,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
        None,
    )
}

/// /sys/fs/cgroup in the container: with a cgroup namespace each hierarchy is mounted
/// anew (so the container sees its own cgroup as the root); without one, the host's
/// hierarchies are bound.
fn mount_cgroups(
    sc: &dyn Syscall,
    root: &berth_fsutil::InRoot,
    destination: &str,
    o: &MountOpts,
    cgroupns: bool,
    layout: Option<&Layout>,
) -> CResult<()> {
    let detected;
    let layout = match layout {
        Some(l) => l,
        None => {
            detected = Layout::detect().ctx(|| "reading cgroup mounts".into())?;
            &detected
        }
    };
    let flags = o.flags & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME);
    let ro = o.flags & libc::MS_RDONLY;
    let point = mount_point(root, destination, true).ctx(|| format!("mkdir {destination}"))?;
    let dest = &fd_path(&point);
    // the mount on the point, once made (see mount_one)
    let mounted = || -> CResult<OwnedFd> { root.resolve(destination).ctx(|| format!("resolving {destination}")) };
    if layout.is_pure_v2() {
        if cgroupns {
            sc.mount(
                Some(Path::new("cgroup2")),
                dest,
                Some("cgroup2"),
                flags | ro,
                None,
            )
            .ctx(|| "mount cgroup2".into())?;
        } else {
            let h = &layout.hierarchies[0];
            sc.mount(
                Some(&h.mount),
                dest,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            .ctx(|| "bind cgroup2".into())?;
            let top = mounted()?;
            sc.mount(
                None,
                &fd_path(&top),
                None,
                libc::MS_BIND | libc::MS_REMOUNT | flags | ro,
                None,
            )
            .ctx(|| "remount cgroup2".into())?;
        }
        return Ok(());
    }
    sc.mount(
        Some(Path::new("tmpfs")),
        dest,
        Some("tmpfs"),
        flags,
        Some("mode=755"),
    )
    .ctx(|| "mount cgroup tmpfs".into())?;
    // the tmpfs itself from here on
    let top = mounted()?;
    let dest = &fd_path(&top);
    for h in &layout.hierarchies {
        let name = h
            .mount
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| h.controllers.join(","));
        let sub = dest.join(&name);
        fs::create_dir_all(&sub).ctx(|| format!("mkdir {}", sub.display()))?;
        let r = if cgroupns {
            if h.v2 {
                sc.mount(
                    Some(Path::new("cgroup2")),
                    &sub,
                    Some("cgroup2"),
                    flags | ro,
                    None,
                )
            } else {
                sc.mount(
                    Some(Path::new("cgroup")),
                    &sub,
                    Some("cgroup"),
                    flags | ro,
                    Some(&h.controllers.join(",")),
                )
            }
        } else {
            sc.mount(
                Some(&h.mount),
                &sub,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            .and_then(|_| {
                sc.mount(
                    None,
                    &sub,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | flags | ro,
                    None,
                )
            })
        };
        r.ctx(|| format!("mount cgroup {name}"))?;
    }
    if ro != 0 {
        sc.mount(
            None,
            dest,
            None,
            libc::MS_REMOUNT | ro | flags,
            Some("mode=755"),
        )
        .ctx(|| "remount cgroup tmpfs".into())?;
    }
    Ok(())
}

/// runc's default devices, made when the spec gives /dev as a tmpfs.
const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn create_devices(sc: &dyn Syscall, spec: &Spec, rootfs: &Path) -> CResult<()> {
    let linux = spec.linux.clone().unwrap_or_default();
    let mut devs: Vec<(String, libc::mode_t, u32, u32, u32, u32)> = Vec::new();
    for (p, ma, mi) in DEFAULT_DEVICES {
        if !linux.devices.iter().any(|d| d.path == *p) {
            devs.push((p.to_string(), libc::S_IFCHR | 0o666, *ma, *mi, 0, 0));
        }
    }
    for d in &linux.devices {
        let kind = match d.typ.as_str() {
            "c" | "u" => libc::S_IFCHR,
            "b" => libc::S_IFBLK,
            "p" => libc::S_IFIFO,
            t => return Err(ChildError::other(format!("unknown device type {t:?}"))),
        };
        devs.push((
            d.path.clone(),
            kind | d.file_mode.unwrap_or(0o666) & 0o7777,
            d.major as u32,
            d.minor as u32,
            d.uid.unwrap_or(0),
            d.gid.unwrap_or(0),
        ));
    }
    for (p, mode, ma, mi, uid, gid) in devs {
        let dest = secure_join(rootfs, Path::new(&p)).ctx(|| format!("resolving {p}"))?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).ctx(|| format!("mkdir {}", parent.display()))?;
        }
        if let Err(e) = sc.mknod(&dest, mode, libc::makedev(ma, mi)) {
            if e.raw_os_error() == Some(libc::EEXIST) {
                continue;
            }
            // Without the right to mknod, bind the host's node (runc does the same).
            if e.raw_os_error() == Some(libc::EPERM) && Path::new(&p).exists() {
                fs::File::create(&dest).ctx(|| format!("creating {}", dest.display()))?;
                sc.mount(Some(Path::new(&p)), &dest, None, libc::MS_BIND, None)
                    .ctx(|| format!("bind {p}"))?;
                continue;
            }
            return Err(ChildError::other(format!(
                "mknod {p}: {}",
                process::describe(&e)
            )));
        }
        let _ = sc.chown(&dest, uid, gid);
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        let dest = rootfs.join(&link[1..]);
        if let Err(e) = std::os::unix::fs::symlink(target, &dest) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(ChildError::other(format!(
                    "symlink {link}: {}",
                    process::describe(&e)
                )));
            }
        }
    }
    if Path::new("/proc/kcore").exists() {
        let _ = std::os::unix::fs::symlink("/proc/kcore", rootfs.join("dev/core"));
    }
    Ok(())
}

fn pivot_root(sc: &dyn Syscall, rootfs: &Path) -> CResult<()> {
    let old =
        sys::open(Path::new("/"), libc::O_DIRECTORY | libc::O_RDONLY, 0).ctx(|| "open /".into())?;
    let new =
        sys::open(rootfs, libc::O_DIRECTORY | libc::O_RDONLY, 0).ctx(|| "open rootfs".into())?;
    sc.fchdir(new.as_raw_fd()).ctx(|| "chdir rootfs".into())?;
    let dot = Path::new(".");
    sc.pivot_root(dot, dot).ctx(|| "pivot_root".into())?;
    sc.fchdir(old.as_raw_fd()).ctx(|| "fchdir old root".into())?;
    sc.mount(
        None,
        Path::new("."),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )
    .ctx(|| "making the old root slave".into())?;
    sc.umount2(dot, libc::MNT_DETACH)
        .ctx(|| "unmounting the old root".into())?;
    process::chdir(sc, "/").ctx(|| "chdir /".into())?;
    Ok(())
}

fn mask_path(sc: &dyn Syscall, p: &str) -> CResult<()> {
    let path = Path::new(p);
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ChildError::other(format!(
            "masking {p}: {}",
            process::describe(&e)
        ))),
        Ok(m) if m.is_dir() => sc.mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            libc::MS_RDONLY,
            None,
        )
        .ctx(|| format!("masking {p}")),
        Ok(_) => match sc.mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            libc::MS_BIND,
            None,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r.ctx(|| format!("masking {p}")),
        },
    }
}

fn readonly_path(sc: &dyn Syscall, p: &Path) -> CResult<()> {
    match sc.mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        r => r.ctx(|| format!("binding {} read-only", p.display()))?,
    }
    remount_ro(sc, p).ctx(|| format!("remounting {} read-only", p.display()))
}

/// `-w` is created when missing (Docker creates it, owned by the user).
fn make_workdir(p: &crate::oci::Process) -> CResult<()> {
    if p.cwd.is_empty() || p.cwd == "/" {
        return Ok(());
    }
    let cwd = Path::new(&p.cwd);
    if cwd.exists() {
        return Ok(());
    }
    let root = Path::new("/");
    let dest = secure_join(root, cwd).ctx(|| format!("resolving {}", p.cwd))?;
    // Create each missing level, owned by the process's user.
    let mut cur = PathBuf::from("/");
    for c in dest.components().skip(1) {
        cur.push(c);
        if !cur.exists() {
            match fs::create_dir(&cur) {
                Ok(()) => {
                    let _ = fs::set_permissions(&cur, fs::Permissions::from_mode(0o755));
                    let _ = std::os::unix::fs::chown(&cur, Some(p.user.uid), Some(p.user.gid));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(ChildError::other(format!(
                        "mkdir {}: {}",
                        cur.display(),
                        process::describe(&e)
                    )))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rootfs_parent_mount() {
        let mi = "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n\
                  30 22 0:40 / /var/lib/x rw shared:5 - tmpfs tmpfs rw\n\
                  31 30 0:41 / /var/lib/x/c\\040d/rootfs rw shared:6 - overlay overlay rw\n\
                  32 22 0:42 / /priv rw - tmpfs tmpfs rw\n";
        assert_eq!(parent_mount(mi, Path::new("/var/lib/x/c d/rootfs")), Some(PathBuf::from("/var/lib/x/c d/rootfs")));
        assert_eq!(parent_mount(mi, Path::new("/var/lib/x/plugins/r")), Some(PathBuf::from("/var/lib/x")));
        assert_eq!(parent_mount(mi, Path::new("/var/lib/xy")), Some(PathBuf::from("/")));
        assert_eq!(parent_mount(mi, Path::new("/priv/r")), None, "private: nothing to do");
    }

    #[test]
    fn mount_options() {
        let o = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "rbind".into(),
            "rprivate".into(),
            "size=65536k".into(),
            "mode=755".into(),
        ]);
        assert_eq!(
            o.flags,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_BIND | libc::MS_REC
        );
        assert_eq!(o.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(o.data, vec!["size=65536k", "mode=755"]);
    }
}
