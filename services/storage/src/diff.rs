//! Diffs out of a layer: Docker's change list (`docker diff`) and tar streams of a
//! snapshot's changes (commit, push of a committed container) or of a whole tree
//! (`docker export`). overlay2 diffs come natively from the upper directory, its
//! whiteouts turned back into `.wh.` entries; vfs and btrfs compare two trees.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_fsutil::at::{self, Stat};
use rustix::fs::{FileType, OFlags};

use bus_schema::storage::Change;

use crate::driver::DiffSource;
use crate::tarfmt::{self, Entry, EntryType};

pub const CHANGE_MODIFY: u8 = 0;
pub const CHANGE_ADD: u8 = 1;
pub const CHANGE_DELETE: u8 = 2;

#[derive(Debug, Clone, Default)]
pub struct DiffOpts {
    /// Paths (absolute, as `/etc/hosts`) left out of the result.
    pub exclude: Vec<String>,
}

fn is_whiteout(m: &Stat) -> bool {
    at::file_type(m) == FileType::CharacterDevice && m.st_rdev == 0
}

fn is_opaque(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    matches!(at::lgetxattr(dir, name, crate::apply::OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// Sorted children of a directory open as `dir` (Go's WalkDir order), lstat'ed there.
fn children(dir: BorrowedFd<'_>) -> std::io::Result<Vec<(String, OsString, Stat)>> {
    let mut v = Vec::new();
    for n in at::list(dir)? {
        let Some(st) = at::lstat(dir, &n)? else { continue };
        v.push((n.to_string_lossy().into_owned(), n, st));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// The directory `name` in `dir`, if it is still the one that was listed.
fn subdir(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> std::io::Result<Option<OwnedFd>> {
    let d = match at::open_dir(dir, name) {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let now = at::fstat(d.as_fd())?;
    Ok(((now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)).then_some(d))
}

fn open_tree(p: &Path) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open(p)?))
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

fn parent_of(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

/// Docker's change list for a snapshot against its parent.
pub fn changes(src: &DiffSource, opts: &DiffOpts) -> std::io::Result<Vec<Change>> {
    let mut out = match src {
        DiffSource::Native { upper, lowers } => native_changes(upper, lowers)?,
        DiffSource::Naive { dir, parent } => naive_changes(dir, parent.as_deref())?,
    };
    out.retain(|c| !opts.exclude.iter().any(|x| *x == c.path));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// moby `archive.OverlayChanges`: walk the upper dir; whiteouts and opaque directories
/// that hid something are deletions; what exists below is a modification.
fn native_changes(upper: &Path, lowers: &[PathBuf]) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    let mut changed_dirs = std::collections::HashSet::new();
    let mut stack = vec![("/".to_string(), open_tree(upper)?)];
    // the lowers are image layers nobody writes to: plain paths are fine there
    let in_lower = |path: &str| lowers.iter().find_map(|l| std::fs::metadata(l.join(&path[1..])).ok());
    while let Some((rel, dir)) = stack.pop() {
        let kids = children(dir.as_fd())?;
        for (name, os, m) in kids.into_iter().rev() {
            let path = child_path(&rel, &name);
            let is_dir = at::is_dir(&m);
            let kind;
            if is_whiteout(&m) {
                kind = CHANGE_DELETE;
            } else if is_dir && is_opaque(dir.as_fd(), &os) && in_lower(&path).is_some() {
                kind = CHANGE_DELETE;
            } else {
                match in_lower(&path) {
                    None => kind = CHANGE_ADD,
                    Some(lm) => {
                        if lm.is_dir()
                            && is_dir
                            && lm.size() == m.st_size as u64
                            && lm.mode() == m.st_mode
                            && (lm.mtime(), lm.mtime_nsec()) == (m.st_mtime, m.st_mtime_nsec as i64)
                        {
                            if let Some(d) = subdir(dir.as_fd(), &os, &m)? {
                                stack.push((path, d));
                            }
                            continue;
                        }
                        kind = CHANGE_MODIFY;
                    }
                }
            }
            if is_dir {
                changed_dirs.insert(path.clone());
                if let Some(d) = subdir(dir.as_fd(), &os, &m)? {
                    stack.push((path.clone(), d));
                }
            }
            if kind != CHANGE_MODIFY {
                let par = parent_of(&path).to_string();
                if par != "/" && changed_dirs.insert(par.clone()) {
                    out.push(Change {
                        path: par,
                        kind: CHANGE_MODIFY,
                    });
                }
            }
            out.push(Change { path, kind });
        }
    }
    Ok(out)
}

fn stat_different(a: &Stat, b: &Stat) -> bool {
    a.st_mode != b.st_mode
        || a.st_uid != b.st_uid
        || a.st_gid != b.st_gid
        || a.st_rdev != b.st_rdev
        || (!at::is_dir(a)
            && ((a.st_mtime, a.st_mtime_nsec) != (b.st_mtime, b.st_mtime_nsec) || a.st_size != b.st_size))
}

/// moby `archive.ChangesDirs`: compare two full trees.
fn naive_changes(dir: &Path, parent: Option<&Path>) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    let new = open_tree(dir)?;
    let old = parent.map(open_tree).transpose()?;
    naive_walk(new.as_fd(), old.as_ref().map(|o| o.as_fd()), "/", false, &mut out)?;
    Ok(out)
}

fn naive_walk(
    new: BorrowedFd<'_>,
    old: Option<BorrowedFd<'_>>,
    rel: &str,
    added: bool,
    out: &mut Vec<Change>,
) -> std::io::Result<()> {
    let at_entry = out.len();
    let mut old_kids: BTreeMap<String, (OsString, Stat)> = match old {
        Some(o) => children(o)?.into_iter().map(|(n, os, m)| (n, (os, m))).collect(),
        None => BTreeMap::new(),
    };
    for (name, os, m) in children(new)? {
        let path = child_path(rel, &name);
        let mut child_added = false;
        let old_child = old_kids.remove(&name);
        match (&old_child, old) {
            (Some((oos, om)), Some(o)) => {
                if stat_different(om, &m) || capability(o, oos) != capability(new, &os) {
                    out.push(Change {
                        path: path.clone(),
                        kind: CHANGE_MODIFY,
                    });
                    child_added = true;
                }
            }
            _ => {
                out.push(Change {
                    path: path.clone(),
                    kind: CHANGE_ADD,
                });
                child_added = true;
            }
        }
        if at::is_dir(&m) {
            let Some(nd) = subdir(new, &os, &m)? else { continue };
            let od = match (&old_child, old) {
                (Some((oos, om)), Some(o)) if at::is_dir(om) => subdir(o, oos, om)?,
                _ => None,
            };
            naive_walk(nd.as_fd(), od.as_ref().map(|d| d.as_fd()), &path, child_added, out)?;
        }
    }
    for name in old_kids.keys() {
        out.push(Change {
            path: child_path(rel, name),
            kind: CHANGE_DELETE,
        });
    }
    if out.len() > at_entry && !added && rel != "/" {
        out.insert(
            at_entry,
            Change {
                path: rel.to_string(),
                kind: CHANGE_MODIFY,
            },
        );
    }
    Ok(())
}

fn capability(dir: BorrowedFd<'_>, name: &OsStr) -> Option<Vec<u8>> {
    at::lgetxattr(dir, name, "security.capability").ok().flatten()
}

/// Writes tar entries to a sink in chunks.
struct TarOut<'a> {
    buf: Vec<u8>,
    chunk: usize,
    out: &'a mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
    links: HashMap<(u64, u64), Vec<u8>>,
    data: Vec<u8>,
}

impl TarOut<'_> {
    fn flush_if_full(&mut self) -> std::io::Result<()> {
        while self.buf.len() >= self.chunk {
            let rest = self.buf.split_off(self.chunk);
            let full = std::mem::replace(&mut self.buf, rest);
            (self.out)(full)?;
        }
        Ok(())
    }

    /// `fname` in `dir` (stat `m`) as a tar entry named `name` (a hard link to an
    /// earlier one if so). The file is opened from the directory's descriptor without
    /// following it, and skipped if it is no longer the inode that was listed.
    fn add(&mut self, name: &[u8], dir: BorrowedFd<'_>, fname: &OsStr, m: &Stat) -> std::io::Result<()> {
        let ft = at::file_type(m);
        let mut e = Entry {
            typ: EntryType::File,
            name: name.to_vec(),
            linkname: vec![],
            mode: m.st_mode & 0o7777,
            uid: m.st_uid as u64,
            gid: m.st_gid as u64,
            size: 0,
            mtime: (m.st_mtime, 0),
            atime: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
        };
        if let Some(cap) = capability(dir, fname) {
            e.xattrs.push(("security.capability".into(), cap));
        }
        let mut file = None;
        match ft {
            FileType::Directory => {
                e.typ = EntryType::Dir;
                if !e.name.ends_with(b"/") {
                    e.name.push(b'/');
                }
            }
            FileType::Symlink => {
                e.typ = EntryType::Symlink;
                e.linkname = at::readlink(dir, fname)?.as_bytes().to_vec();
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                e.typ = if ft == FileType::CharacterDevice {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                e.devmajor = libc::major(m.st_rdev) as u32;
                e.devminor = libc::minor(m.st_rdev) as u32;
            }
            FileType::Fifo => e.typ = EntryType::Fifo,
            FileType::RegularFile => {
                if m.st_nlink > 1 {
                    if let Some(first) = self.links.get(&(m.st_dev, m.st_ino)) {
                        e.typ = EntryType::HardLink;
                        e.linkname = first.clone();
                        tarfmt::write_header(&mut self.buf, &e);
                        return self.flush_if_full();
                    }
                }
                let fd = match at::open(dir, fname, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, 0) {
                    Ok(fd) => fd,
                    // replaced by a link or removed since listed: not archived
                    Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ELOOP)) => return Ok(()),
                    Err(err) => return Err(err),
                };
                let now = at::fstat(fd.as_fd())?;
                if (now.st_dev, now.st_ino) != (m.st_dev, m.st_ino) {
                    return Ok(());
                }
                if m.st_nlink > 1 {
                    self.links.insert((m.st_dev, m.st_ino), name.to_vec());
                }
                e.size = m.st_size as u64;
                file = Some(std::fs::File::from(fd));
            }
            _ => return Ok(()), // sockets are not archived
        }
        tarfmt::write_header(&mut self.buf, &e);
        if let Some(mut f) = file.filter(|_| e.size > 0) {
            let mut left = e.size;
            while left > 0 {
                let n = f.read(&mut self.data)?;
                if n == 0 {
                    // The file shrank while archived: pad with zeros to keep the stream valid.
                    let z = vec![0u8; left.min(self.data.len() as u64) as usize];
                    self.buf.extend_from_slice(&z);
                    left -= z.len() as u64;
                } else {
                    let n = (n as u64).min(left) as usize;
                    self.buf.extend_from_slice(&self.data[..n]);
                    left -= n as u64;
                }
                self.flush_if_full()?;
            }
            tarfmt::pad(&mut self.buf, e.size);
        }
        self.flush_if_full()
    }

    fn whiteout(
        &mut self,
        name: &[u8],
        m: Option<&Stat>,
        mode: u32,
    ) -> std::io::Result<()> {
        let mtime = m
            .map(|m| m.st_mtime)
            .unwrap_or_else(|| crate::util::now_unix_nanos() / 1_000_000_000);
        let e = Entry {
            typ: EntryType::File,
            name: name.to_vec(),
            linkname: vec![],
            mode,
            uid: m.map(|m| m.st_uid as u64).unwrap_or(0),
            gid: m.map(|m| m.st_gid as u64).unwrap_or(0),
            size: 0,
            mtime: (mtime, 0),
            atime: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
        };
        tarfmt::write_header(&mut self.buf, &e);
        self.flush_if_full()
    }

    fn finish(mut self) -> std::io::Result<()> {
        tarfmt::trailer(&mut self.buf);
        let chunk = self.chunk;
        while !self.buf.is_empty() {
            let rest = if self.buf.len() > chunk {
                self.buf.split_off(chunk)
            } else {
                Vec::new()
            };
            let part = std::mem::replace(&mut self.buf, rest);
            (self.out)(part)?;
        }
        Ok(())
    }
}

fn tar_out<'a>(out: &'a mut dyn FnMut(Vec<u8>) -> std::io::Result<()>) -> TarOut<'a> {
    TarOut {
        buf: Vec::with_capacity(256 << 10),
        chunk: 128 << 10,
        out,
        links: HashMap::new(),
        data: vec![0u8; 128 << 10],
    }
}

fn rel_name(path: &str) -> Vec<u8> {
    path.trim_start_matches('/').as_bytes().to_vec()
}

/// The snapshot's changes as a layer tar (whiteouts as `.wh.` entries).
pub fn write_diff_tar(
    src: &DiffSource,
    opts: &DiffOpts,
    out: &mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut t = tar_out(out);
    match src {
        DiffSource::Native { upper, .. } => {
            let d = open_tree(upper)?;
            native_tar(&mut t, d.as_fd(), "/", opts)?
        }
        DiffSource::Naive { dir, parent } => {
            let mut ch = naive_changes(dir, parent.as_deref())?;
            ch.retain(|c| !opts.exclude.contains(&c.path));
            ch.sort_by(|a, b| a.path.cmp(&b.path));
            // each changed path resolved by the kernel inside the snapshot
            let root = berth_fsutil::InRoot::open(dir)?;
            for c in ch {
                if c.kind == CHANGE_DELETE {
                    let par = parent_of(&c.path);
                    let base = &c.path[c.path.rfind('/').map(|i| i + 1).unwrap_or(0)..];
                    t.whiteout(&rel_name(&child_path(par, &format!(".wh.{base}"))), None, 0)?;
                    continue;
                }
                let Ok((pfd, name)) = root.parent(&c.path) else { continue };
                let name = OsString::from(name);
                let Some(m) = at::lstat(pfd.as_fd(), &name)? else { continue };
                t.add(&rel_name(&c.path), pfd.as_fd(), &name, &m)?;
            }
        }
    }
    t.finish()
}

/// moby's overlay whiteout converter over a depth-first walk of the upper dir.
fn native_tar(t: &mut TarOut<'_>, dir: BorrowedFd<'_>, rel: &str, opts: &DiffOpts) -> std::io::Result<()> {
    for (name, os, m) in children(dir)? {
        let path = child_path(rel, &name);
        if opts.exclude.contains(&path) {
            continue;
        }
        if is_whiteout(&m) {
            t.whiteout(
                &rel_name(&child_path(rel, &format!(".wh.{name}"))),
                Some(&m),
                0o600,
            )?;
            continue;
        }
        t.add(&rel_name(&path), dir, &os, &m)?;
        if at::is_dir(&m) {
            if is_opaque(dir, &os) {
                t.whiteout(
                    &rel_name(&child_path(&path, ".wh..wh..opq")),
                    Some(&m),
                    m.st_mode & 0o777,
                )?;
            }
            if let Some(d) = subdir(dir, &os, &m)? {
                native_tar(t, d.as_fd(), &path, opts)?;
            }
        }
    }
    Ok(())
}

/// A whole tree as a tar (`docker export`), in name order, without its root entry.
/// Walked by descriptors: a running container renaming and linking under the walk can
/// only get its own files archived.
pub fn write_tree_tar(
    root: &Path,
    out: &mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut t = tar_out(out);
    let d = open_tree(root)?;
    let dev = at::fstat(d.as_fd())?.st_dev;
    walk_tree(&mut t, d.as_fd(), "/", dev)?;
    t.finish()
}

fn walk_tree(t: &mut TarOut<'_>, dir: BorrowedFd<'_>, rel: &str, dev: u64) -> std::io::Result<()> {
    for (name, os, m) in children(dir)? {
        let path = child_path(rel, &name);
        t.add(&rel_name(&path), dir, &os, &m)?;
        // Mounts inside the rootfs (proc, binds) are not the container's filesystem.
        if at::is_dir(&m) && m.st_dev == dev {
            if let Some(d) = subdir(dir, &os, &m)? {
                walk_tree(t, d.as_fd(), &path, dev)?;
            }
        }
    }
    Ok(())
}
