//! A tar extracted into a directory inside a root, as Moby's untar does it in a
//! chroot: every entry's parent is resolved (and created) by the kernel inside the
//! root, then the entry is made with `*at` calls on that directory's descriptor that
//! never follow its last component (O_CREAT|O_EXCL|O_NOFOLLOW, mkdirat, symlinkat,
//! linkat, fchownat/utimensat with AT_SYMLINK_NOFOLLOW). A container swapping a
//! directory for a symlink mid-extraction can only redirect an entry to another place
//! inside its own root.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, OFlags};

use crate::{at, clean, components, InRoot};

#[derive(Debug)]
pub enum UntarError {
    /// The archive is malformed or an entry is refused (Docker answers 400).
    Invalid(String),
    Io(String, io::Error),
}

impl std::fmt::Display for UntarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UntarError::Invalid(m) => f.write_str(m),
            UntarError::Io(c, e) => write!(f, "{c}: {e}"),
        }
    }
}

impl std::error::Error for UntarError {}

#[derive(Debug, Clone, Default)]
pub struct UntarOpts {
    /// Refuse to replace a directory with a non-directory or the reverse.
    pub no_overwrite_dir_non_dir: bool,
    /// Owner for every entry; `None` keeps the archive's.
    pub owner: Option<(u32, u32)>,
}

fn ioe(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> UntarError {
    let c = ctx.into();
    move |e| UntarError::Io(c, e)
}

/// Extract `r` into the directory `dest` (a path inside `root`, symlinks followed).
/// Messages are Moby's untar's, without the caller's prefix.
pub fn untar<R: Read>(root: &InRoot, dest: &str, r: R, opts: &UntarOpts) -> Result<u64, UntarError> {
    let dest = clean(dest);
    let mut ar = tar::Archive::new(r);
    let mut dirs: Vec<(String, String, rustix::fs::Timestamps)> = Vec::new();
    let mut cache: Option<(String, OwnedFd)> = None;
    let mut n = 0u64;
    let bad = |e: io::Error| UntarError::Invalid(e.to_string());
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let hdr = entry.header().clone();
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        // `..` may not climb above the extraction point (Moby's breakout check)
        let mut depth = 0i32;
        for c in name.split('/') {
            match c {
                "" | "." => {}
                ".." => depth -= 1,
                _ => depth += 1,
            }
            if depth < 0 {
                return Err(UntarError::Invalid(format!("{name:?} is outside of {dest:?}")));
            }
        }
        let full = clean(&format!("{dest}/{name}"));
        let mut parts = components(&full);
        let Some(last) = parts.pop() else { continue };
        if full == dest {
            continue; // the extraction point itself ("./")
        }
        let parent = format!("/{}", parts.join("/"));
        let pfd = match &cache {
            Some((p, fd)) if *p == parent => fd.try_clone().map_err(ioe("dup"))?,
            _ => {
                let fd = root.mkdir_all(&parent, 0o755).map_err(ioe(format!("mkdir {parent}")))?;
                cache = Some((parent.clone(), fd.try_clone().map_err(ioe("dup"))?));
                fd
            }
        };
        let pfd = pfd.as_fd();
        let lname = OsStr::new(&last);
        let typ = hdr.entry_type();
        let is_dir = typ.is_dir();
        let existing = at::lstat(pfd, lname).map_err(ioe(format!("stat {full}")))?;
        if let Some(st) = &existing {
            let ex_dir = at::is_dir(st);
            if opts.no_overwrite_dir_non_dir && ex_dir && !is_dir {
                return Err(UntarError::Invalid(format!("cannot overwrite directory {full:?} with non-directory {dest:?}")));
            }
            if opts.no_overwrite_dir_non_dir && !ex_dir && is_dir {
                return Err(UntarError::Invalid(format!("cannot overwrite non-directory {full:?} with directory {dest:?}")));
            }
            if !(ex_dir && is_dir) {
                at::remove_all(pfd, lname).map_err(ioe(format!("removing {full}")))?;
            }
        }
        let (uid, gid) = opts.owner.unwrap_or((hdr.uid().unwrap_or(0) as u32, hdr.gid().unwrap_or(0) as u32));
        let mode = hdr.mode().unwrap_or(0o644) & 0o7777;
        let mtime = (hdr.mtime().unwrap_or(0) as i64, 0i64);
        let times = at::timestamps(mtime, mtime);
        n += 1;
        match typ {
            tar::EntryType::Directory => {
                if existing.as_ref().is_none_or(|s| !at::is_dir(s)) {
                    at::mkdir(pfd, lname, 0o700).map_err(ioe(format!("mkdir {full}")))?;
                }
                let d = at::open_dir(pfd, lname).map_err(ioe(format!("open {full}")))?;
                at::fchown(d.as_fd(), uid, gid).map_err(ioe(format!("chown {full}")))?;
                at::fchmod(d.as_fd(), mode).map_err(ioe(format!("chmod {full}")))?;
                dirs.push((parent.clone(), last.clone(), times));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = at::open(pfd, lname, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
                    .map_err(ioe(format!("creating {full}")))?;
                let mut f = std::fs::File::from(fd);
                io::copy(&mut entry, &mut f).map_err(ioe(format!("writing {full}")))?;
                at::fchown(f.as_fd(), uid, gid).map_err(ioe(format!("chown {full}")))?;
                at::fchmod(f.as_fd(), mode).map_err(ioe(format!("chmod {full}")))?;
                at::futimes(f.as_fd(), &times).map_err(ioe(format!("utimes {full}")))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                let t = String::from_utf8_lossy(&target).into_owned();
                // Moby refuses links whose target, joined to the link's directory, leaves
                // the extraction point (absolute targets join as relative ones there)
                if !within(&dest, &clean(&format!("{parent}/{t}"))) {
                    return Err(UntarError::Invalid(format!("invalid symlink {full:?} -> {t:?}")));
                }
                at::symlink(OsStr::new(&t), pfd, lname).map_err(ioe(format!("symlink {full}")))?;
                at::lchown(pfd, lname, uid, gid).map_err(ioe(format!("lchown {full}")))?;
                at::lutimes(pfd, lname, &times).map_err(ioe(format!("utimes {full}")))?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                let t = String::from_utf8_lossy(&target).into_owned();
                if !within(&dest, &clean(&format!("{dest}/{t}"))) {
                    return Err(UntarError::Invalid(format!("invalid hardlink {full:?} -> {t:?}")));
                }
                let src = root
                    .resolve_nofollow(&format!("{dest}/{t}"))
                    .map_err(ioe(format!("hard link target {t}")))?;
                at::link_fd(src.as_fd(), pfd, lname).map_err(ioe(format!("link {full}")))?;
            }
            t @ (tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo) => {
                let (ft, dev) = match t {
                    tar::EntryType::Char => (FileType::CharacterDevice, dev_of(&hdr)),
                    tar::EntryType::Block => (FileType::BlockDevice, dev_of(&hdr)),
                    _ => (FileType::Fifo, 0),
                };
                at::mknod(pfd, lname, ft, mode, dev).map_err(ioe(format!("mknod {full}")))?;
                at::lchown(pfd, lname, uid, gid).map_err(ioe(format!("lchown {full}")))?;
                let p = at::open(pfd, lname, OFlags::PATH, 0).map_err(ioe(format!("open {full}")))?;
                at::chmod_opath(p.as_fd(), mode).map_err(ioe(format!("chmod {full}")))?;
                at::lutimes(pfd, lname, &times).map_err(ioe(format!("utimes {full}")))?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(UntarError::Invalid(format!("unhandled tar header type {:?}", other.as_byte() as char)));
            }
        }
    }
    // directory times last: the entries written into them changed them
    for (parent, name, times) in dirs.iter().rev() {
        if let Ok(p) = root.resolve(parent) {
            let _ = at::lutimes(p.as_fd(), OsStr::new(name), times);
        }
    }
    Ok(n)
}

/// `p` is `dest` or under it (both clean).
fn within(dest: &str, p: &str) -> bool {
    dest == "/" || p == dest || p.starts_with(&format!("{dest}/"))
}

fn dev_of(h: &tar::Header) -> u64 {
    let ma = h.device_major().ok().flatten().unwrap_or(0);
    let mi = h.device_minor().ok().flatten().unwrap_or(0);
    rustix::fs::makedev(ma, mi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, t, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_mode(0o644);
            match t {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, name, data).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    // raw name bytes: the tar crate refuses to write `..` itself
                    let n = &mut h.as_old_mut().name;
                    n.fill(0);
                    n[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn stays_inside_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("tmp/evil")).unwrap();
        symlink("/", root.join("tmp/up")).unwrap();
        std::fs::write(root.join("tmp/old"), b"x").unwrap();
        let t = tar_of(&[
            ("evil/x.txt", tar::EntryType::Regular, "hi\n"),
            ("up/y.txt", tar::EntryType::Regular, "y\n"),
            ("old", tar::EntryType::Regular, "new"),
            ("d/", tar::EntryType::Directory, ""),
            ("d/l", tar::EntryType::Symlink, "../old"),
            ("d/h", tar::EntryType::Link, "old"),
        ]);
        let r = InRoot::open(&root).unwrap();
        untar(&r, "/tmp", &t[..], &UntarOpts { owner: Some((0, 0)), ..Default::default() }).unwrap();
        assert_eq!(std::fs::read(root.join("etc/x.txt")).unwrap(), b"hi\n");
        assert_eq!(std::fs::read(root.join("y.txt")).unwrap(), b"y\n");
        assert!(!Path::new("/y.txt").exists() && !Path::new("/etc/x.txt").exists());
        assert_eq!(std::fs::read(root.join("tmp/old")).unwrap(), b"new");
        assert_eq!(std::fs::read_link(root.join("tmp/d/l")).unwrap(), Path::new("../old"));
        assert_eq!(std::fs::read(root.join("tmp/d/h")).unwrap(), b"new");
    }

    #[test]
    fn refuses_breakouts_and_dir_swaps() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("tmp/dir")).unwrap();
        let r = InRoot::open(&root).unwrap();
        let e = untar(&r, "/tmp", &tar_of(&[("../../x", tar::EntryType::Regular, "x")])[..], &UntarOpts::default()).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = untar(&r, "/tmp", &tar_of(&[("l", tar::EntryType::Symlink, "../../../etc")])[..], &UntarOpts::default()).unwrap_err();
        assert!(e.to_string().contains("invalid symlink"), "{e}");
        let o = UntarOpts { no_overwrite_dir_non_dir: true, ..Default::default() };
        let e = untar(&r, "/tmp", &tar_of(&[("dir", tar::EntryType::Regular, "x")])[..], &o).unwrap_err();
        assert_eq!(e.to_string(), "cannot overwrite directory \"/tmp/dir\" with non-directory \"/tmp\"");
        assert!(root.join("tmp/dir").is_dir());
    }

    use std::path::Path;
}
