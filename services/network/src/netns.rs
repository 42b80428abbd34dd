//! Network namespaces kept alive by a bind mount of `/proc/thread-self/ns/net` on a
//! file under `<root>/network/netns/`, as `ip netns add` does.
//!
//! Namespace switches happen only on a dedicated, short-lived std thread: a tokio
//! worker must never change namespace, because every later task on it would run
//! there. A netlink socket opened on such a thread stays bound to the namespace it
//! was opened in, so the async side can configure the namespace through it.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Make `dir` a shared mount point (bind-mounting it on itself if needed), so that
/// unmounting a namespace file also unmounts its copies in containers' mount
/// namespaces and the namespace is freed.
pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mounted = berth_fsutil::mountinfo::mountinfo_lists(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        dir,
    );
    if !mounted {
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(io)?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(io)?;
    Ok(())
}

fn io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Run `f` on a fresh thread and wait for it without blocking the async runtime.
async fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(std::io::Error::other)?;
    rx.await
        .map_err(|_| std::io::Error::other("netns thread died"))?
}

/// A netlink route socket (raw fd), opened in the calling thread's namespace.
fn netlink_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: a plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Create a namespace pinned at `path`; returns a netlink socket inside it.
pub async fn create(path: PathBuf) -> std::io::Result<OwnedFd> {
    on_thread(move || {
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let r = (|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io)?;
            // berth networks are IPv4 only: the interfaces that come into the
            // namespace get no IPv6 (as Docker's eth0 on an IPv4-only network), so no
            // DAD, MLD and router solicitations, which the bridge floods to every
            // other container; `lo` (there already) keeps ::1. No IPv6 on the host at
            // all: nothing to turn off.
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
            netlink_socket()
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        r
    })
    .await
}

/// A netlink socket inside the namespace pinned at `path`.
pub async fn netlink_in(path: PathBuf) -> std::io::Result<OwnedFd> {
    on_thread(move || {
        let f = std::fs::File::open(&path)?;
        setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io)?;
        netlink_socket()
    })
    .await
}

/// Run `f` inside the namespace pinned at `path` (on its own thread).
pub async fn run_in<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    on_thread(move || {
        let ns = std::fs::File::open(&path)?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io)?;
        f()
    })
    .await
}

/// Unpin and delete a namespace file. Idempotent.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(io(e)),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Undo [`prepare_dir`]: unmount the directory's bind mount of itself (when nothing
/// is pinned under it any more). Idempotent.
pub fn release_dir(dir: &Path) -> std::io::Result<()> {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// Whether a process lives in the namespace pinned at `path` (a thread's namespace
/// is its process's for every process berth's containers run).
pub fn in_use(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let want = format!("net:[{}]", m.ino());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .any(|e| {
            std::fs::read_link(e.path().join("ns/net"))
                .is_ok_and(|l| l.as_os_str() == want.as_str())
        })
}

/// Whether `path` is a live namespace file (a mount of an nsfs inode).
pub fn is_pinned(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    lists_nsfs(&text, path)
}

/// Whether `mountinfo` has an nsfs mount at `path` (the mount point unescaped: a
/// data root with a space in its path is `\040` there).
fn lists_nsfs(mountinfo: &str, path: &Path) -> bool {
    mountinfo.lines().any(|l| {
        let fstype = l.split_once(" - ").and_then(|(_, rest)| rest.split(' ').next());
        fstype == Some("nsfs")
            && l.split(' ').nth(4).is_some_and(|m| {
                Path::new(&berth_fsutil::unescape_mountinfo(m)) == path
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mount points are compared unescaped: a namespace file under a directory
    /// with a space in its name is found.
    #[test]
    fn nsfs_mount_points_are_unescaped() {
        let info = "601 30 0:4 net:[4026532281] /var/lib/my\\040root/netns/c1 rw shared:1 - nsfs nsfs rw\n\
                    602 30 0:4 / /var/lib/other rw shared:1 - ext4 /dev/sda1 rw\n";
        assert!(lists_nsfs(info, Path::new("/var/lib/my root/netns/c1")));
        assert!(!lists_nsfs(info, Path::new("/var/lib/my\\040root/netns/c1")));
        assert!(!lists_nsfs(info, Path::new("/var/lib/other")));
    }

    #[tokio::test]
    async fn create_enter_remove() {
        berth_test_support::require_root!();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("netns");
        prepare_dir(&dir).unwrap();
        let p = dir.join("c1");
        let _sock = create(p.clone()).await.unwrap();
        assert!(is_pinned(&p));
        // inside: a different namespace than ours, with only lo
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let theirs = run_in(p.clone(), || std::fs::read_link("/proc/thread-self/ns/net"))
            .await
            .unwrap();
        assert_ne!(mine, theirs);
        let dev = run_in(p.clone(), || {
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })
        .await
        .unwrap();
        let ifs: Vec<&str> = dev
            .lines()
            .skip(2)
            .map(|l| l.split(':').next().unwrap().trim())
            .collect();
        assert_eq!(ifs, vec!["lo"]);
        // interfaces coming in get no IPv6; lo keeps it
        if Path::new("/proc/sys/net/ipv6").exists() {
            let v6 = run_in(p.clone(), || {
                Ok((
                    std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/disable_ipv6")?,
                    std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")?,
                ))
            })
            .await
            .unwrap();
            assert_eq!((v6.0.trim(), v6.1.trim()), ("1", "0"));
        }
        // this thread did not move
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            mine
        );
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
        assert!(!is_pinned(&p));
        let _ = umount2(&dir, MntFlags::MNT_DETACH);
    }
}
