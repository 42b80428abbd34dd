//! A container's filesystem as a process in it sees it: its rootfs with its volumes,
//! bind mounts and the engine's /etc/hosts, /etc/hostname and /etc/resolv.conf on top
//! (what Moby mounts for `docker cp`). Assembled, as Moby does, in a private mount
//! namespace of a short-lived thread: the thread unshares its filesystem context and
//! mount namespace (`unshare(CLONE_FS | CLONE_NEWNS)`, allowed for one thread of a
//! threaded process), makes every mount a slave (nothing it mounts reaches the host,
//! the host's unmounts still reach it), then mounts each source on its destination.
//! Destinations are resolved by the kernel inside the rootfs (openat2 RESOLVE_IN_ROOT
//! through [`InRoot`]) and the mount goes onto the resolved descriptor (open_tree +
//! move_mount), so a container racing symlinks can only misplace a mount inside its
//! own root, in a namespace nobody else sees. The work then runs on that thread
//! against an [`InRoot`] of the assembled tree: openat2 crosses into the mounts as a
//! path walk in the container would. When the thread ends, its namespace and every
//! mount in it go away.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::InRoot;

#[derive(Debug, Clone)]
pub struct ViewMount {
    /// Host path (a volume's data, a bind source, the engine's hosts file): trusted.
    pub source: PathBuf,
    /// Where the container sees it.
    pub destination: String,
    pub read_only: bool,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn set_read_only(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // rustix has no mount_setattr; AT_EMPTY_PATH | AT_RECURSIVE on the detached tree
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mount `m` inside `root` (in the calling thread's private namespace).
fn mount_one(root: &InRoot, m: &ViewMount) -> io::Result<()> {
    let src_is_dir = std::fs::metadata(&m.source)?.is_dir();
    let target = if src_is_dir {
        root.mkdir_all(&m.destination, 0o755)?
    } else {
        match root.resolve(&m.destination) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Moby creates a missing file mount point (the container's start does too)
                let (dir, name) = crate::split(&m.destination);
                let d = root.mkdir_all(&dir, 0o755)?;
                let _ = crate::at::open(d.as_fd(), std::ffi::OsStr::new(&name), rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::EXCL, 0o644);
                root.resolve(&m.destination)?
            }
            Err(e) => return Err(e),
        }
    };
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        &m.source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_RECURSIVE,
    )?;
    if m.read_only {
        set_read_only(tree.as_fd())?;
    }
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        target.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// Run `f` on the view of `rootfs` with `mounts` on top, on a thread of its own.
/// Mounts are applied shortest destination first (a volume at /data before a bind at
/// /data/sub). A mount that cannot be made fails the whole call.
pub fn in_view<R: Send + 'static>(
    rootfs: &Path,
    mounts: &[ViewMount],
    f: impl FnOnce(&InRoot) -> R + Send + 'static,
) -> io::Result<R> {
    let rootfs = rootfs.to_path_buf();
    let mut mounts = mounts.to_vec();
    mounts.sort_by_key(|m| crate::components(&m.destination).len());
    let t = std::thread::Builder::new().name("berth-fsview".into()).spawn(move || -> io::Result<R> {
        if !mounts.is_empty() {
            // SAFETY: CLONE_FS and CLONE_NEWNS only change this thread's filesystem
            // context (root, cwd, umask) and mount namespace; no descriptor table is
            // unshared, and the thread ends with the closure.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS | rustix::thread::UnshareFlags::NEWNS) }?;
            rustix::mount::mount_change("/", rustix::mount::MountPropagationFlags::DOWNSTREAM | rustix::mount::MountPropagationFlags::REC)?;
        }
        let root = InRoot::open(&rootfs)?;
        for m in &mounts {
            mount_one(&root, m).map_err(|e| io::Error::new(e.kind(), format!("mounting {} at {}: {e}", m.source.display(), m.destination)))?;
        }
        Ok(f(&root))
    })?;
    t.join().map_err(|_| io::Error::other("filesystem view thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Needs root (CAP_SYS_ADMIN for the private namespace): fails, never skips.
    #[test]
    fn volumes_appear_and_nothing_leaks() {
        assert!(rustix::process::geteuid().is_root(), "this test needs root");
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        let vol = d.path().join("vol");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(vol.join("in-volume"), b"v").unwrap();
        let hostname = d.path().join("hostname");
        std::fs::write(&hostname, b"abc\n").unwrap();
        // a container link: the mount point resolves inside the rootfs
        symlink("/", rootfs.join("data")).unwrap();
        let mounts = vec![
            ViewMount { source: vol.clone(), destination: "/data/vol".into(), read_only: true },
            ViewMount { source: hostname.clone(), destination: "/etc/hostname".into(), read_only: false },
        ];
        let (a, b, c) = in_view(&rootfs, &mounts, |r| {
            let a = r.read("/vol/in-volume").map(|v| String::from_utf8_lossy(&v).into_owned());
            let b = r.read("/data/etc/hostname").map(|v| String::from_utf8_lossy(&v).into_owned());
            let (dir, _) = r.parent("/vol/new").unwrap();
            let c = crate::at::open(dir.as_fd(), "new".as_ref(), rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY, 0o644).map(|_| ());
            (a, b, c)
        })
        .unwrap();
        assert_eq!(a.unwrap(), "v");
        assert_eq!(b.unwrap(), "abc\n");
        assert_eq!(c.unwrap_err().raw_os_error(), Some(libc::EROFS));
        // the mount points exist in the rootfs; the mounts themselves are gone
        assert!(rootfs.join("vol").is_dir());
        assert!(!rootfs.join("vol/in-volume").exists());
        assert_eq!(std::fs::read(rootfs.join("etc/hostname")).unwrap(), b"");
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mi.contains(&rootfs.display().to_string()));
    }
}
