//! Paths inside a container's root filesystem (or a layer, or a volume), as the engine
//! walks them on the host. The kernel resolves every path: [`InRoot`] wraps a
//! directory descriptor of the root and resolves with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` (through libpathrs), so a symlink to `/` or `../../..`
//! that a container planted lands inside the root, atomically, even while the
//! container renames things under us. Everything after resolution is done with `*at`
//! calls on the descriptors obtained that way ([`at`]), never with a host path string.
//!
//! - [`at`]: the descriptor-relative calls (stat, open without following, mkdir,
//!   remove a tree, list a directory).
//! - [`tree`]: a tree (or one entry) written as a tar by walking descriptors.
//! - [`untar`]: a tar extracted into a directory of a root, parents resolved in the
//!   root, every entry created with `*at` calls that never follow its last component.
//! - [`copy`]: a tree copied from one descriptor to another (volume copy-up, builds).
//! - [`mountinfo`]: /proc/self/mountinfo's escaped fields, and whether a path is a
//!   mount point.
//! - [`view`]: a container's filesystem as a process inside it sees it (its rootfs with
//!   its volumes and bind mounts on top), assembled in a private mount namespace of a
//!   short-lived thread.

pub mod at;
pub mod copy;
pub mod mountinfo;
pub mod tree;
pub mod untar;
pub mod view;

pub use mountinfo::{is_mountpoint, unescape_mountinfo};

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A root directory that paths are resolved in, as the kernel resolves them for a
/// process chrooted there.
pub struct InRoot {
    root: pathrs::Root,
}

/// A pathrs error as an io::Error, keeping the errno when there is one.
pub fn io_err(e: pathrs::error::Error) -> io::Error {
    match e.kind() {
        pathrs::error::ErrorKind::OsError(Some(n)) => io::Error::from_raw_os_error(n),
        _ => io::Error::other(e.to_string()),
    }
}

/// `p` as a relative path under the root (leading slashes dropped; `""` is the root).
fn rel(p: &str) -> &str {
    let r = p.trim_start_matches('/');
    if r.is_empty() {
        "."
    } else {
        r
    }
}

impl InRoot {
    /// Open `path` (a trusted host path: a mounted rootfs, a layer, a volume) as a root.
    pub fn open(path: &Path) -> io::Result<InRoot> {
        Ok(InRoot { root: pathrs::Root::open(path).map_err(io_err)? })
    }

    /// Open a process's root as a root: `/proc/PID/root` is a magic link, which
    /// [`InRoot::open`] does not follow; the directory it leads to is opened first.
    pub fn open_proc_root(pid: i64) -> io::Result<InRoot> {
        let dir = rustix::fs::open(format!("/proc/{pid}/root"), rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())?;
        Ok(InRoot { root: pathrs::Root::from_fd(dir) })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// An O_PATH descriptor of `path`, following symlinks (the last one too) inside the root.
    pub fn resolve(&self, path: &str) -> io::Result<OwnedFd> {
        self.root.resolve(rel(path)).map(OwnedFd::from).map_err(io_err)
    }

    /// Like [`InRoot::resolve`], not following a symlink in the last component.
    pub fn resolve_nofollow(&self, path: &str) -> io::Result<OwnedFd> {
        self.root.resolve_nofollow(rel(path)).map(OwnedFd::from).map_err(io_err)
    }

    /// `path` as a directory (created with `mode` where missing, symlinks resolved in
    /// the root), as a descriptor.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> io::Result<OwnedFd> {
        self.root
            .mkdir_all(rel(path), &std::fs::Permissions::from_mode(mode & 0o1777))
            .map(OwnedFd::from)
            .map_err(io_err)
    }

    /// The directory holding `path`'s last component (resolved in the root, following
    /// symlinks) and that component. `/` and paths ending in `.` have no parent: their
    /// name is `.` in the directory itself.
    pub fn parent(&self, path: &str) -> io::Result<(OwnedFd, String)> {
        let (dir, name) = split(path);
        Ok((self.resolve(&dir)?, name))
    }

    /// Where `path` leads inside the root, following every symlink, as an absolute path
    /// in the root's terms (Docker's `linkTarget`, also for a dangling link): a string to
    /// show, never used for I/O here (a client that uses it sends it back as a new path,
    /// resolved by the kernel again). Each component is looked up without following it
    /// and links are expanded by reading them, as Moby's FollowSymlinkInScope does.
    pub fn real_path(&self, path: &str) -> io::Result<String> {
        use std::collections::VecDeque;
        let mut todo: VecDeque<String> = path.split('/').map(str::to_string).collect();
        let mut cur: Vec<String> = Vec::new();
        let mut links = 0;
        let mut exists = true;
        while let Some(c) = todo.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            if !exists {
                continue;
            }
            let p = format!("/{}", cur.join("/"));
            let fd = match self.resolve_nofollow(&p) {
                Ok(fd) => fd,
                Err(_) => {
                    exists = false;
                    continue;
                }
            };
            let st = at::fstat(fd.as_fd())?;
            if at::file_type(&st) != rustix::fs::FileType::Symlink {
                continue;
            }
            links += 1;
            if links > 255 {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = rustix::fs::readlinkat(fd.as_fd(), "", Vec::new())?;
            let target = String::from_utf8_lossy(target.as_bytes()).into_owned();
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            for (i, part) in target.split('/').enumerate() {
                todo.insert(i, part.to_string());
            }
        }
        Ok(format!("/{}", cur.join("/")))
    }
}

/// The clean components of a path (`.` dropped, `..` applied, never above the root).
pub fn components(p: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x.to_string()),
        }
    }
    out
}

/// `p` made absolute and clean, as a path inside a root.
pub use berth_rules::path::clean_in_root as clean;

/// (parent directory, last component) of a path inside a root. The last component
/// is taken as written (a trailing `..` is applied first, so never `..`); `/` and a
/// trailing `/.` give `.`.
pub fn split(path: &str) -> (String, String) {
    if path.ends_with("/.") || path == "." {
        return (clean(path), ".".into());
    }
    let mut parts = components(path);
    match parts.pop() {
        None => ("/".into(), ".".into()),
        Some(last) => (format!("/{}", parts.join("/")), last),
    }
}

/// Make `rel` (an absolute path inside the container) a directory under `rootfs`,
/// creating missing parts (0755); symlinks are resolved inside the rootfs by the kernel.
pub fn mkdir_in_root(rootfs: &Path, rel: &str) -> io::Result<()> {
    InRoot::open(rootfs)?.mkdir_all(rel, 0o755).map(|_| ())
}

/// Read a whole file at `path` inside `rootfs` (symlinks resolved inside it).
pub fn read_in_root(rootfs: &Path, path: &str) -> io::Result<Vec<u8>> {
    let r = InRoot::open(rootfs)?;
    r.read(path)
}

impl InRoot {
    /// The content of the regular file at `path` (symlinks followed inside the root).
    pub fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let fd = self.resolve(path)?;
        let mut f = at::reopen_file(fd.as_fd())?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Rewrite the regular file at `path` (symlinks followed inside the root) in place
    /// with `f` of its content: for a file that is a mount point (a container's
    /// /etc/hosts), which cannot be replaced by a rename.
    pub fn rewrite(&self, path: &str, f: impl FnOnce(&[u8]) -> Vec<u8>) -> io::Result<()> {
        use std::io::{Read, Seek, Write};
        let fd = self.resolve(path)?;
        let mut file = at::reopen_file_rw(fd.as_fd())?;
        let mut cur = Vec::new();
        file.read_to_end(&mut cur)?;
        let new = f(&cur);
        if new != cur {
            file.seek(std::io::SeekFrom::Start(0))?;
            file.set_len(0)?;
            file.write_all(&new)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("root");
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), b"inside\n").unwrap();
        (d, r)
    }

    #[test]
    fn mkdir_stays_inside() {
        let (_d, root) = root();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        symlink("/../../../../tmp", root.join("evil")).unwrap();
        mkdir_in_root(&root, "/evil/x/y").unwrap();
        // a dangling link is not a directory to create through (as in a chroot)
        symlink("/nowhere", root.join("dangling")).unwrap();
        assert!(mkdir_in_root(&root, "/dangling/x").is_err());
        assert!(root.join("tmp/x/y").is_dir());
        mkdir_in_root(&root, "/app/work").unwrap();
        assert!(root.join("app/work").is_dir());
        assert!(mkdir_in_root(&root, "/etc/../../..").is_ok());
    }

    #[test]
    fn absolute_and_relative_links_resolve_inside() {
        let (d, root) = root();
        // a marker beside the root that an escape would reach
        std::fs::write(d.path().join("outside"), b"host\n").unwrap();
        symlink("/", root.join("up")).unwrap();
        symlink("../../../..", root.join("etc/dotdot")).unwrap();
        symlink("/etc/passwd", root.join("abs")).unwrap();
        let r = InRoot::open(&root).unwrap();
        assert_eq!(r.read("/abs").unwrap(), b"inside\n");
        assert_eq!(r.read("/up/etc/passwd").unwrap(), b"inside\n");
        assert_eq!(r.read("/etc/dotdot/etc/passwd").unwrap(), b"inside\n");
        assert_eq!(r.read("/../../../etc/passwd").unwrap(), b"inside\n");
        assert!(r.read("/../outside").is_err());
        assert!(r.read("/etc/dotdot/outside").is_err());
        assert_eq!(r.real_path("/abs").unwrap(), "/etc/passwd");
        assert_eq!(r.real_path("/etc/dotdot/etc").unwrap(), "/etc");
        assert_eq!(r.real_path("/up/nope/x").unwrap(), "/nope/x");
        symlink("/nowhere/x", root.join("dangling")).unwrap();
        assert_eq!(r.real_path("/dangling").unwrap(), "/nowhere/x");
        assert_eq!(r.real_path("/etc/dotdot/dangling/../y").unwrap(), "/nowhere/y");
    }

    #[test]
    fn loops_fail() {
        let (_d, root) = root();
        symlink("loop", root.join("loop")).unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let r = InRoot::open(&root).unwrap();
        assert_eq!(r.resolve("/loop").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(r.resolve("/a/x").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert!(r.resolve_nofollow("/loop").is_ok());
        assert!(mkdir_in_root(&root, "/a/x").is_err());
    }

    #[test]
    fn magic_links_refused() {
        let (_d, root) = root();
        // a container's link into the host's procfs must never be followed
        std::fs::create_dir_all(root.join("p")).unwrap();
        symlink("/proc/self/root", root.join("self-root")).unwrap();
        let r = InRoot::open(&root).unwrap();
        // inside the root /proc/self/root does not exist
        assert!(r.resolve("/self-root/etc/passwd").is_err());
        // and a root that is procfs itself refuses magic links
        let p = InRoot::open(Path::new("/proc")).unwrap();
        let e = p.resolve("/self/root/etc/passwd").unwrap_err();
        assert!(matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)), "{e}");
    }

    #[test]
    fn split_paths() {
        assert_eq!(split("/a/b"), ("/a".into(), "b".into()));
        assert_eq!(split("/a/b/."), ("/a/b".into(), ".".into()));
        assert_eq!(split("/"), ("/".into(), ".".into()));
        assert_eq!(split("/a/../.."), ("/".into(), ".".into()));
        assert_eq!(split("a//b/"), ("/a".into(), "b".into()));
        assert_eq!(clean("/a/../../b/./c/"), "/b/c");
    }

    #[test]
    fn a_process_root_opens() {
        // /proc/PID/root is a magic link: InRoot::open refuses it (ENOTDIR)
        assert!(InRoot::open(Path::new(&format!("/proc/{}/root", std::process::id()))).is_err());
        let r = InRoot::open_proc_root(std::process::id() as i64).unwrap();
        assert!(!r.read("/proc/self/status").unwrap().is_empty());
    }

    #[test]
    fn rewrite_stays_in_the_root() {
        let (_d, r) = root();
        // an absolute link climbing out: resolved inside the root, as the container sees it
        symlink("/../../../etc/passwd", r.join("etc/hosts")).unwrap();
        let root = InRoot::open(&r).unwrap();
        root.rewrite("/etc/hosts", |c| [c, b"more\n"].concat()).unwrap();
        assert_eq!(std::fs::read(r.join("etc/passwd")).unwrap(), b"inside\nmore\n");
        std::fs::create_dir(r.join("etc/dir")).unwrap();
        assert!(root.rewrite("/etc/dir", |c| c.to_vec()).is_err(), "not a regular file");
    }
}
