//! Diffs out of a layer: Docker's change list (`docker diff`) and tar streams of a
//! snapshot's changes (commit, push of a committed container) or of a whole tree
//! (`docker export`). overlay2 diffs come natively from the upper directory, its
//! whiteouts turned back into `.wh.` entries; vfs and btrfs compare two trees.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    let Ok(c) = crate::copy::cstr(p.as_os_str()) else {
        return false;
    };
    let k = CString::new(crate::apply::OVERLAY_OPAQUE_XATTR).unwrap();
    matches!(crate::copy::get_xattr(&c, &k), Ok(Some(v)) if v == b"y")
}

/// Sorted children of a directory (Go's WalkDir order).
fn children(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, std::fs::Metadata)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(e.path())?;
        v.push((name, e.path(), m));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
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
    let mut stack = vec![("/".to_string(), upper.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let kids = children(&dir)?;
        for (name, p, m) in kids.into_iter().rev() {
            let path = child_path(&rel, &name);
            let in_lower = |path: &str| {
                lowers
                    .iter()
                    .find_map(|l| std::fs::metadata(l.join(&path[1..])).ok())
            };
            let kind;
            if is_whiteout(&m) {
                kind = CHANGE_DELETE;
            } else if m.is_dir() && is_opaque(&p) && in_lower(&path).is_some() {
                kind = CHANGE_DELETE;
            } else {
                match in_lower(&path) {
                    None => kind = CHANGE_ADD,
                    Some(lm) => {
                        if lm.is_dir()
                            && m.is_dir()
                            && lm.size() == m.size()
                            && lm.mode() == m.mode()
                            && (lm.mtime(), lm.mtime_nsec()) == (m.mtime(), m.mtime_nsec())
                        {
                            stack.push((path, p));
                            continue;
                        }
                        kind = CHANGE_MODIFY;
                    }
                }
            }
            if m.is_dir() {
                changed_dirs.insert(path.clone());
                stack.push((path.clone(), p));
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

fn stat_different(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
        || a.rdev() != b.rdev()
        || (!a.is_dir()
            && ((a.mtime(), a.mtime_nsec()) != (b.mtime(), b.mtime_nsec()) || a.size() != b.size()))
}

/// moby `archive.ChangesDirs`: compare two full trees.
fn naive_changes(dir: &Path, parent: Option<&Path>) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    naive_walk(dir, parent, "/", false, &mut out)?;
    Ok(out)
}

fn naive_walk(
    new: &Path,
    old: Option<&Path>,
    rel: &str,
    added: bool,
    out: &mut Vec<Change>,
) -> std::io::Result<()> {
    let at_entry = out.len();
    let mut old_kids: BTreeMap<String, (PathBuf, std::fs::Metadata)> = match old {
        Some(o) => children(o)?
            .into_iter()
            .map(|(n, p, m)| (n, (p, m)))
            .collect(),
        None => BTreeMap::new(),
    };
    for (name, p, m) in children(new)? {
        let path = child_path(rel, &name);
        let mut child_added = false;
        let old_child = old_kids.remove(&name);
        match &old_child {
            None => {
                out.push(Change {
                    path: path.clone(),
                    kind: CHANGE_ADD,
                });
                child_added = true;
            }
            Some((op, om)) => {
                if stat_different(om, &m) || capability(op) != capability(&p) {
                    out.push(Change {
                        path: path.clone(),
                        kind: CHANGE_MODIFY,
                    });
                    child_added = true;
                }
            }
        }
        if m.is_dir() {
            let old_dir = old_child
                .as_ref()
                .filter(|(_, om)| om.is_dir())
                .map(|(op, _)| op.as_path());
            naive_walk(&p, old_dir, &path, child_added, out)?;
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

fn capability(p: &Path) -> Option<Vec<u8>> {
    let c = crate::copy::cstr(p.as_os_str()).ok()?;
    crate::copy::get_xattr(&c, &CString::new("security.capability").unwrap())
        .ok()
        .flatten()
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

    /// One filesystem object as a tar entry (a hard link to an earlier one if so).
    fn add(&mut self, name: &[u8], p: &Path, m: &std::fs::Metadata) -> std::io::Result<()> {
        let ft = m.file_type();
        let mut e = Entry {
            typ: EntryType::File,
            name: name.to_vec(),
            linkname: vec![],
            mode: m.mode() & 0o7777,
            uid: m.uid() as u64,
            gid: m.gid() as u64,
            size: 0,
            mtime: (m.mtime(), 0),
            atime: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
        };
        if let Some(cap) = capability(p) {
            e.xattrs.push(("security.capability".into(), cap));
        }
        if ft.is_dir() {
            e.typ = EntryType::Dir;
            if !e.name.ends_with(b"/") {
                e.name.push(b'/');
            }
        } else if ft.is_symlink() {
            e.typ = EntryType::Symlink;
            e.linkname = std::fs::read_link(p)?.as_os_str().as_bytes().to_vec();
        } else if ft.is_char_device() || ft.is_block_device() {
            e.typ = if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            e.devmajor = libc::major(m.rdev()) as u32;
            e.devminor = libc::minor(m.rdev()) as u32;
        } else if ft.is_fifo() {
            e.typ = EntryType::Fifo;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                    e.typ = EntryType::HardLink;
                    e.linkname = first.clone();
                    tarfmt::write_header(&mut self.buf, &e);
                    return self.flush_if_full();
                }
                self.links.insert((m.dev(), m.ino()), name.to_vec());
            }
            e.size = m.size();
        } else {
            return Ok(()); // sockets are not archived
        }
        tarfmt::write_header(&mut self.buf, &e);
        if e.size > 0 {
            let mut f = std::fs::File::open(p)?;
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
        m: Option<&std::fs::Metadata>,
        mode: u32,
    ) -> std::io::Result<()> {
        let mtime = m
            .map(|m| m.mtime())
            .unwrap_or_else(|| crate::util::now_unix_nanos() / 1_000_000_000);
        let e = Entry {
            typ: EntryType::File,
            name: name.to_vec(),
            linkname: vec![],
            mode,
            uid: m.map(|m| m.uid() as u64).unwrap_or(0),
            gid: m.map(|m| m.gid() as u64).unwrap_or(0),
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
        DiffSource::Native { upper, .. } => native_tar(&mut t, upper, "/", opts)?,
        DiffSource::Naive { dir, parent } => {
            let mut ch = naive_changes(dir, parent.as_deref())?;
            ch.retain(|c| !opts.exclude.contains(&c.path));
            ch.sort_by(|a, b| a.path.cmp(&b.path));
            for c in ch {
                if c.kind == CHANGE_DELETE {
                    let par = parent_of(&c.path);
                    let base = &c.path[c.path.rfind('/').map(|i| i + 1).unwrap_or(0)..];
                    t.whiteout(&rel_name(&child_path(par, &format!(".wh.{base}"))), None, 0)?;
                    continue;
                }
                let p = dir.join(&c.path[1..]);
                let m = std::fs::symlink_metadata(&p)?;
                t.add(&rel_name(&c.path), &p, &m)?;
            }
        }
    }
    t.finish()
}

/// moby's overlay whiteout converter over a depth-first walk of the upper dir.
fn native_tar(t: &mut TarOut<'_>, dir: &Path, rel: &str, opts: &DiffOpts) -> std::io::Result<()> {
    for (name, p, m) in children(dir)? {
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
        t.add(&rel_name(&path), &p, &m)?;
        if m.is_dir() {
            if is_opaque(&p) {
                t.whiteout(
                    &rel_name(&child_path(&path, ".wh..wh..opq")),
                    Some(&m),
                    m.mode() & 0o777,
                )?;
            }
            native_tar(t, &p, &path, opts)?;
        }
    }
    Ok(())
}

/// A whole tree as a tar (`docker export`), in name order, without its root entry.
pub fn write_tree_tar(
    root: &Path,
    out: &mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut t = tar_out(out);
    let dev = std::fs::symlink_metadata(root)?.dev();
    walk_tree(&mut t, root, "/", dev)?;
    t.finish()
}

fn walk_tree(t: &mut TarOut<'_>, dir: &Path, rel: &str, dev: u64) -> std::io::Result<()> {
    for (name, p, m) in children(dir)? {
        let path = child_path(rel, &name);
        t.add(&rel_name(&path), &p, &m)?;
        // Mounts inside the rootfs (proc, binds) are not the container's filesystem.
        if m.is_dir() && m.dev() == dev {
            walk_tree(t, &p, &path, dev)?;
        }
    }
    Ok(())
}
