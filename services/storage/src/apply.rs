//! Applying a layer diff (an OCI/Docker tar) into a directory, shared by every driver.
//!
//! Safety: every path is resolved inside the target with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from a directory descriptor of the
//! target, and the final component is always handled with `*at` calls that do not
//! follow it. Absolute names, `..` components, parents that are symlinks, hard links
//! to anything outside the layer, symlinks that climb above the root, device nodes
//! where they are not allowed, reserved overlay xattrs and absurd headers are
//! refused with an error naming the entry.
//!
//! Whiteouts depend on the driver ([`Whiteouts`]): overlay2 records them as 0/0
//! character devices and `trusted.overlay.opaque=y`; vfs and btrfs apply them to the
//! copy of the parent they write into.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::driver::Whiteouts;
use crate::split::SplitWriter;
use crate::tarfmt::{Entry, EntryType, TarError, TarReader};

pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
pub const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A hostile or unsafe entry.
    #[error("refusing to apply layer: {0}")]
    Refused(String),
    /// Malformed data (bad headers, truncated stream, unsupported format).
    #[error("invalid layer data: {0}")]
    Invalid(String),
    #[error("applying layer: {context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl From<TarError> for ApplyError {
    fn from(e: TarError) -> Self {
        match e {
            TarError::Invalid(m) => ApplyError::Invalid(m),
            TarError::Io(e) => ApplyError::Io {
                context: "reading layer data".into(),
                source: e,
            },
        }
    }
}

impl From<ApplyError> for bus_schema::BusError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Refused(_) | ApplyError::Invalid(_) => {
                bus_schema::BusError::invalid(e.to_string())
            }
            ApplyError::Io { .. } => bus_schema::BusError::internal(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ApplyOpts {
    pub whiteouts: Whiteouts,
    /// Character and block devices are allowed (layers applied as root; never volumes).
    pub devices: bool,
    /// Record a tar-split to reproduce the stream on export.
    pub split: bool,
}

#[derive(Debug, Default)]
pub struct Applied {
    /// Bytes of file data in the layer (Docker's layer size).
    pub size: u64,
    pub split: Option<Vec<u8>>,
    pub entries: u64,
}

fn q(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn cstring(b: &[u8]) -> CString {
    // Names were checked for NUL bytes by the tar reader.
    CString::new(b).unwrap_or_default()
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

fn openat2(dir: RawFd, path: &CStr, flags: i32, resolve: u64) -> std::io::Result<OwnedFd> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// A directory descriptor for the root of a tree to work in.
pub fn open_root(p: &Path) -> std::io::Result<OwnedFd> {
    let c = crate::copy::cstr(p.as_os_str())?;
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a file for reading at `rel` inside `root`, never following a symlink.
pub fn open_in_root(root: &OwnedFd, rel: &[u8]) -> std::io::Result<File> {
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    let fd = openat2(
        root.as_raw_fd(),
        &cstring(rel),
        libc::O_RDONLY | libc::O_NOFOLLOW,
        RESOLVE,
    )?;
    Ok(File::from(fd))
}

/// Open a directory at `rel` inside `root` without following symlinks.
pub fn open_dir_in_root(root: &OwnedFd, rel: &[u8]) -> std::io::Result<OwnedFd> {
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    openat2(
        root.as_raw_fd(),
        &cstring(rel),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        RESOLVE,
    )
}

/// Split a tar name into clean components, refusing absolute names and `..`.
pub fn clean_name(name: &[u8]) -> Result<Vec<&[u8]>, ApplyError> {
    if name.first() == Some(&b'/') {
        return Err(ApplyError::Refused(format!(
            "entry {} has an absolute path",
            q(name)
        )));
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(ApplyError::Refused(format!(
                    "entry {} escapes the layer",
                    q(name)
                )))
            }
            c if c.len() > 255 => {
                return Err(ApplyError::Invalid(format!(
                    "entry {} has a name component longer than 255 bytes",
                    q(name)
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

/// Walks and creates parent directories, caching the last one.
struct Dirs {
    root: OwnedFd,
    /// The last parent: its path, its descriptor, and whether it may still be used.
    /// A removal marks it stale but keeps the descriptor open until the next lookup,
    /// so a caller holding its raw fd is never left with a closed one.
    cached: Option<(Vec<u8>, OwnedFd, bool)>,
}

impl Dirs {
    fn invalidate(&mut self) {
        if let Some(c) = self.cached.as_mut() {
            c.2 = false;
        }
    }

    /// The parent directory `parts` (relative to the root), created (0755) when missing.
    fn parent(&mut self, parts: &[&[u8]], entry: &[u8]) -> Result<RawFd, ApplyError> {
        if parts.is_empty() {
            return Ok(self.root.as_raw_fd());
        }
        let path = join(parts);
        if let Some((p, fd, true)) = &self.cached {
            if *p == path {
                return Ok(fd.as_raw_fd());
            }
        }
        let fd = match openat2(
            self.root.as_raw_fd(),
            &cstring(&path),
            libc::O_RDONLY | libc::O_DIRECTORY,
            RESOLVE,
        ) {
            Ok(fd) => fd,
            Err(e) if errno(&e) == libc::ENOENT => self.create_parents(parts, entry)?,
            Err(e) => return Err(parent_error(e, parts, entry)),
        };
        let raw = fd.as_raw_fd();
        self.cached = Some((path, fd, true));
        Ok(raw)
    }

    fn create_parents(&mut self, parts: &[&[u8]], entry: &[u8]) -> Result<OwnedFd, ApplyError> {
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in parts.iter().enumerate() {
            let dir = cur
                .as_ref()
                .map(|f| f.as_raw_fd())
                .unwrap_or(self.root.as_raw_fd());
            let cc = cstring(c);
            let fd = match openat2(dir, &cc, libc::O_RDONLY | libc::O_DIRECTORY, RESOLVE) {
                Ok(fd) => fd,
                Err(e) if errno(&e) == libc::ENOENT => {
                    if unsafe { libc::mkdirat(dir, cc.as_ptr(), 0o755) } != 0 {
                        let e = last_err();
                        if errno(&e) != libc::EEXIST {
                            return Err(io_err(format!("creating parent of {}", q(entry)), e));
                        }
                    }
                    openat2(dir, &cc, libc::O_RDONLY | libc::O_DIRECTORY, RESOLVE)
                        .map_err(|e| parent_error(e, &parts[..=i], entry))?
                }
                Err(e) => return Err(parent_error(e, &parts[..=i], entry)),
            };
            cur = Some(fd);
        }
        Ok(cur.expect("non-empty parts"))
    }
}

fn parent_error(e: std::io::Error, parts: &[&[u8]], entry: &[u8]) -> ApplyError {
    match errno(&e) {
        libc::ELOOP => ApplyError::Refused(format!(
            "entry {} has a symlinked parent {} (symlinks are not followed in a layer)",
            q(entry),
            q(&join(parts))
        )),
        libc::EXDEV => ApplyError::Refused(format!("entry {} escapes the layer", q(entry))),
        libc::ENOTDIR => ApplyError::Invalid(format!(
            "entry {}: parent {} is not a directory",
            q(entry),
            q(&join(parts))
        )),
        _ => io_err(format!("opening parent of {}", q(entry)), e),
    }
}

fn io_err(context: String, source: std::io::Error) -> ApplyError {
    ApplyError::Io { context, source }
}

/// lstat of `name` in `dir`.
fn stat_at(dir: RawFd, name: &CStr) -> std::io::Result<Option<libc::stat>> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        let e = last_err();
        return if errno(&e) == libc::ENOENT {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(st))
}

/// Remove `name` in `dir` and, for a directory, everything under it (no symlink is followed).
pub fn remove_at(dir: RawFd, name: &CStr) -> std::io::Result<()> {
    if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = last_err();
    match errno(&e) {
        libc::ENOENT => return Ok(()),
        libc::EISDIR | libc::EPERM => {}
        _ => return Err(e),
    }
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for child in list_dir(&fd)? {
        remove_at(fd.as_raw_fd(), &child)?;
    }
    if unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let e = last_err();
        if errno(&e) != libc::ENOENT {
            return Err(e);
        }
    }
    Ok(())
}

/// Names in a directory (without `.` and `..`).
pub fn list_dir(fd: &OwnedFd) -> std::io::Result<Vec<CString>> {
    let dup = nix::unistd::dup(fd).map_err(std::io::Error::from)?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(std::io::Error::from)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(std::io::Error::from)?;
        let n = e.file_name();
        if n.to_bytes() == b"." || n.to_bytes() == b".." {
            continue;
        }
        out.push(n.to_owned());
    }
    Ok(out)
}

fn proc_path(dir: RawFd, name: &[u8]) -> CString {
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name);
    cstring(&p)
}

struct Applier<'a> {
    dirs: Dirs,
    opts: &'a ApplyOpts,
    unpacked: HashSet<Vec<u8>>,
    dir_times: Vec<(Vec<u8>, [libc::timespec; 2])>,
    buf: Vec<u8>,
}

fn times(e: &Entry) -> [libc::timespec; 2] {
    let m = e.mtime;
    let a = match e.atime {
        Some(a) if a >= m => a,
        _ => m,
    };
    [
        libc::timespec {
            tv_sec: a.0 as _,
            tv_nsec: a.1 as _,
        },
        libc::timespec {
            tv_sec: m.0 as _,
            tv_nsec: m.1 as _,
        },
    ]
}

/// Apply the tar read from `r` into `target`.
pub fn apply_tar<R: Read>(
    r: R,
    target: &Path,
    opts: &ApplyOpts,
) -> Result<(Applied, R), ApplyError> {
    let root = open_root(target).map_err(|e| io_err(format!("opening {}", target.display()), e))?;
    let mut a = Applier {
        dirs: Dirs { root, cached: None },
        opts,
        unpacked: HashSet::new(),
        dir_times: Vec::new(),
        buf: vec![0u8; 1 << 20],
    };
    let mut tr = TarReader::new(r);
    let mut split = opts.split.then(SplitWriter::new);
    let mut out = Applied::default();
    while let Some(e) = tr.next_entry()? {
        if let Some(s) = split.as_mut() {
            s.raw(&tr.raw);
        }
        tr.raw.clear();
        out.entries += 1;
        if let Some(data_path) = a.entry(&e, &mut tr)? {
            out.size += e.size;
            if let Some(s) = split.as_mut() {
                s.file(&data_path, e.size);
            }
        }
    }
    if let Some(s) = split.as_mut() {
        s.raw(&tr.raw);
    }
    a.finish()?;
    out.split = match split {
        Some(s) => Some(
            s.finish()
                .map_err(|e| io_err("recording tar-split".into(), e))?,
        ),
        None => None,
    };
    Ok((out, tr.into_inner()))
}

impl Applier<'_> {
    /// Apply one entry; answers the clean path when its data was extracted.
    fn entry<R: Read>(
        &mut self,
        e: &Entry,
        tr: &mut TarReader<R>,
    ) -> Result<Option<Vec<u8>>, ApplyError> {
        if e.typ == EntryType::GlobalHeader {
            return Ok(None);
        }
        let parts = clean_name(&e.name)?;
        let Some((base, parents)) = parts.split_last() else {
            return Ok(None); // the root itself
        };
        // aufs metadata (`.wh..wh.plnk` and the like) is skipped, as Docker does.
        if parents.iter().any(|p| p.starts_with(WHITEOUT_META_PREFIX))
            || (base.starts_with(WHITEOUT_META_PREFIX) && *base != WHITEOUT_OPAQUE)
        {
            return Ok(None);
        }
        for (k, _) in &e.xattrs {
            if k.starts_with("trusted.overlay.") {
                return Err(ApplyError::Refused(format!(
                    "entry {} sets the reserved xattr {k}",
                    q(&e.name)
                )));
            }
        }
        let parent = self.dirs.parent(parents, &e.name)?;
        if *base == WHITEOUT_OPAQUE {
            return self.opaque(parent, parents, e).map(|_| None);
        }
        if let Some(victim) = base.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(parent, victim, e).map(|_| None);
        }
        let name = cstring(base);
        let full = join(&parts);
        let is_dir = e.typ == EntryType::Dir;
        // Replace what is there, unless a directory meets a directory.
        let keep_dir = match stat_at(parent, &name)
            .map_err(|x| io_err(format!("inspecting {}", q(&e.name)), x))?
        {
            Some(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR && is_dir => true,
            Some(_) => {
                remove_at(parent, &name)
                    .map_err(|x| io_err(format!("replacing {}", q(&e.name)), x))?;
                self.dirs.invalidate();
                false
            }
            None => false,
        };
        let mut data = None;
        match e.typ {
            EntryType::File => {
                self.file(parent, &name, e, tr)?;
                data = Some(full.clone());
            }
            EntryType::Dir => {
                if !keep_dir && unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) } != 0 {
                    return Err(io_err(
                        format!("creating directory {}", q(&e.name)),
                        last_err(),
                    ));
                }
                let fd = unsafe {
                    libc::openat(
                        parent,
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(io_err(
                        format!("opening directory {}", q(&e.name)),
                        last_err(),
                    ));
                }
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                self.owner_mode_xattrs_fd(fd.as_raw_fd(), e)?;
                self.dir_times.push((full.clone(), times(e)));
            }
            EntryType::Symlink => {
                self.check_symlink(parents, e)?;
                let target = cstring(&e.linkname);
                if unsafe { libc::symlinkat(target.as_ptr(), parent, name.as_ptr()) } != 0 {
                    return Err(io_err(
                        format!("creating symlink {}", q(&e.name)),
                        last_err(),
                    ));
                }
                self.meta_at(parent, base, &name, e, true)?;
            }
            EntryType::HardLink => self.hardlink(parent, &name, e)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match e.typ {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if e.typ != EntryType::Fifo {
                    if !self.opts.devices {
                        return Err(ApplyError::Refused(format!(
                            "entry {} is a device node, which is not allowed here",
                            q(&e.name)
                        )));
                    }
                    if self.opts.whiteouts == Whiteouts::Overlay
                        && e.typ == EntryType::Char
                        && e.devmajor == 0
                        && e.devminor == 0
                    {
                        return Err(ApplyError::Refused(format!(
                            "entry {} is a 0/0 character device, which is reserved for whiteouts",
                            q(&e.name)
                        )));
                    }
                }
                let dev = libc::makedev(e.devmajor, e.devminor);
                if unsafe {
                    libc::mknodat(
                        parent,
                        name.as_ptr(),
                        kind | (e.mode & 0o7777) as libc::mode_t,
                        dev,
                    )
                } != 0
                {
                    return Err(io_err(format!("creating {}", q(&e.name)), last_err()));
                }
                self.meta_at(parent, base, &name, e, false)?;
            }
            EntryType::GlobalHeader => {}
        }
        if self.opts.whiteouts == Whiteouts::Apply {
            self.unpacked.insert(full);
        }
        Ok(data)
    }

    fn file<R: Read>(
        &mut self,
        parent: RawFd,
        name: &CStr,
        e: &Entry,
        tr: &mut TarReader<R>,
    ) -> Result<(), ApplyError> {
        let fd = unsafe {
            libc::openat(
                parent,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io_err(format!("creating {}", q(&e.name)), last_err()));
        }
        let mut f = unsafe { File::from_raw_fd(fd) };
        loop {
            let n = tr.read_data(&mut self.buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n])
                .map_err(|x| io_err(format!("writing {}", q(&e.name)), x))?;
        }
        self.owner_mode_xattrs_fd(f.as_raw_fd(), e)?;
        let t = times(e);
        if unsafe { libc::futimens(f.as_raw_fd(), t.as_ptr()) } != 0 {
            return Err(io_err(
                format!("setting times of {}", q(&e.name)),
                last_err(),
            ));
        }
        Ok(())
    }

    fn ids(e: &Entry) -> Result<(u32, u32), ApplyError> {
        let uid = u32::try_from(e.uid).map_err(|_| {
            ApplyError::Invalid(format!("entry {}: uid {} out of range", q(&e.name), e.uid))
        })?;
        let gid = u32::try_from(e.gid).map_err(|_| {
            ApplyError::Invalid(format!("entry {}: gid {} out of range", q(&e.name), e.gid))
        })?;
        Ok((uid, gid))
    }

    fn owner_mode_xattrs_fd(&self, fd: RawFd, e: &Entry) -> Result<(), ApplyError> {
        let (uid, gid) = Self::ids(e)?;
        if unsafe { libc::fchown(fd, uid, gid) } != 0 {
            return Err(io_err(
                format!("changing owner of {}", q(&e.name)),
                last_err(),
            ));
        }
        for (k, v) in &e.xattrs {
            let kc = cstring(k.as_bytes());
            if unsafe { libc::fsetxattr(fd, kc.as_ptr(), v.as_ptr().cast(), v.len(), 0) } != 0 {
                xattr_error(e, k)?;
            }
        }
        // After chown, which clears set-id bits.
        if unsafe { libc::fchmod(fd, (e.mode & 0o7777) as libc::mode_t) } != 0 {
            return Err(io_err(
                format!("changing mode of {}", q(&e.name)),
                last_err(),
            ));
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of a non-regular, non-directory entry by name.
    fn meta_at(
        &self,
        parent: RawFd,
        base: &[u8],
        name: &CStr,
        e: &Entry,
        symlink: bool,
    ) -> Result<(), ApplyError> {
        let (uid, gid) = Self::ids(e)?;
        if unsafe { libc::fchownat(parent, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }
            != 0
        {
            return Err(io_err(
                format!("changing owner of {}", q(&e.name)),
                last_err(),
            ));
        }
        if !e.xattrs.is_empty() {
            let p = proc_path(parent, base);
            for (k, v) in &e.xattrs {
                let kc = cstring(k.as_bytes());
                if unsafe {
                    libc::lsetxattr(p.as_ptr(), kc.as_ptr(), v.as_ptr().cast(), v.len(), 0)
                } != 0
                {
                    xattr_error(e, k)?;
                }
            }
        }
        if !symlink
            && unsafe {
                libc::fchmodat(parent, name.as_ptr(), (e.mode & 0o7777) as libc::mode_t, 0)
            } != 0
        {
            return Err(io_err(
                format!("changing mode of {}", q(&e.name)),
                last_err(),
            ));
        }
        let t = times(e);
        if unsafe { libc::utimensat(parent, name.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }
            != 0
        {
            return Err(io_err(
                format!("setting times of {}", q(&e.name)),
                last_err(),
            ));
        }
        Ok(())
    }

    /// A relative symlink may not climb above the layer's root (Docker's breakout check).
    fn check_symlink(&self, parents: &[&[u8]], e: &Entry) -> Result<(), ApplyError> {
        if e.linkname.is_empty() {
            return Err(ApplyError::Invalid(format!(
                "symlink {} has an empty target",
                q(&e.name)
            )));
        }
        if e.linkname.first() == Some(&b'/') {
            return Ok(()); // resolved inside the container's root
        }
        let mut depth = parents.len() as i64;
        for c in e.linkname.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(ApplyError::Refused(format!(
                            "symlink {} -> {} points outside the layer",
                            q(&e.name),
                            q(&e.linkname)
                        )));
                    }
                }
                _ => depth += 1,
            }
        }
        Ok(())
    }

    fn hardlink(&mut self, parent: RawFd, name: &CStr, e: &Entry) -> Result<(), ApplyError> {
        let refused = || {
            ApplyError::Refused(format!(
                "hardlink {} -> {} points outside the layer",
                q(&e.name),
                q(&e.linkname)
            ))
        };
        if e.linkname.first() == Some(&b'/') {
            return Err(refused());
        }
        let tparts = clean_name(&e.linkname).map_err(|_| refused())?;
        let Some((tbase, tparents)) = tparts.split_last() else {
            return Err(refused());
        };
        let tdir =
            if tparents.is_empty() {
                None
            } else {
                Some(open_dir_in_root(&self.dirs.root, &join(tparents)).map_err(
                    |x| match errno(&x) {
                        libc::ELOOP | libc::EXDEV => refused(),
                        libc::ENOTDIR if self.has_symlink(tparents) => refused(),
                        libc::ENOENT | libc::ENOTDIR => ApplyError::Invalid(format!(
                            "hardlink {} -> {}: target not found in the layer",
                            q(&e.name),
                            q(&e.linkname)
                        )),
                        _ => io_err(format!("resolving hardlink target of {}", q(&e.name)), x),
                    },
                )?)
            };
        let tdirfd = tdir
            .as_ref()
            .map(|f| f.as_raw_fd())
            .unwrap_or(self.dirs.root.as_raw_fd());
        let tname = cstring(tbase);
        match stat_at(tdirfd, &tname)
            .map_err(|x| io_err(format!("resolving hardlink target of {}", q(&e.name)), x))?
        {
            None => {
                return Err(ApplyError::Invalid(format!(
                    "hardlink {} -> {}: target not found in the layer",
                    q(&e.name),
                    q(&e.linkname)
                )))
            }
            Some(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR => {
                return Err(ApplyError::Refused(format!(
                    "hardlink {} -> {} points to a directory",
                    q(&e.name),
                    q(&e.linkname)
                )))
            }
            Some(_) => {}
        }
        if unsafe { libc::linkat(tdirfd, tname.as_ptr(), parent, name.as_ptr(), 0) } != 0 {
            return Err(io_err(
                format!("creating hardlink {}", q(&e.name)),
                last_err(),
            ));
        }
        Ok(())
    }

    /// Whether a component of `parts` is a symlink (to tell a hostile path from a
    /// missing one when a lookup fails with ENOTDIR).
    fn has_symlink(&self, parts: &[&[u8]]) -> bool {
        for i in 0..parts.len() {
            let (dirs, last) = parts[..=i].split_at(i);
            let dir = if dirs.is_empty() {
                open_dir_in_root(&self.dirs.root, b"")
            } else {
                open_dir_in_root(&self.dirs.root, &join(dirs))
            };
            let Ok(dir) = dir else { return false };
            match stat_at(dir.as_raw_fd(), &cstring(last[0])) {
                Ok(Some(st)) if (st.st_mode & libc::S_IFMT) == libc::S_IFLNK => return true,
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
        false
    }

    fn whiteout(&mut self, parent: RawFd, victim: &[u8], e: &Entry) -> Result<(), ApplyError> {
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(ApplyError::Refused(format!(
                "whiteout {} names no file in its directory",
                q(&e.name)
            )));
        }
        let vname = cstring(victim);
        match self.opts.whiteouts {
            Whiteouts::Overlay => {
                if stat_at(parent, &vname)
                    .map_err(|x| io_err(format!("inspecting {}", q(&e.name)), x))?
                    .is_some()
                {
                    remove_at(parent, &vname)
                        .map_err(|x| io_err(format!("applying whiteout {}", q(&e.name)), x))?;
                    self.dirs.invalidate();
                }
                if unsafe { libc::mknodat(parent, vname.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                    return Err(io_err(
                        format!("creating whiteout {}", q(&e.name)),
                        last_err(),
                    ));
                }
                let (uid, gid) = Self::ids(e)?;
                if unsafe {
                    libc::fchownat(parent, vname.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                } != 0
                {
                    return Err(io_err(
                        format!("creating whiteout {}", q(&e.name)),
                        last_err(),
                    ));
                }
            }
            Whiteouts::Apply => {
                remove_at(parent, &vname)
                    .map_err(|x| io_err(format!("applying whiteout {}", q(&e.name)), x))?;
                self.dirs.invalidate();
            }
        }
        Ok(())
    }

    fn opaque(&mut self, parent: RawFd, parents: &[&[u8]], e: &Entry) -> Result<(), ApplyError> {
        match self.opts.whiteouts {
            Whiteouts::Overlay => {
                let k = cstring(OVERLAY_OPAQUE_XATTR.as_bytes());
                if unsafe { libc::fsetxattr(parent, k.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
                    return Err(io_err(format!("marking {} opaque", q(&e.name)), last_err()));
                }
            }
            Whiteouts::Apply => {
                // Everything below the directory that this layer did not write goes.
                let fd = unsafe { libc::dup(parent) };
                if fd < 0 {
                    return Err(io_err("dup".into(), last_err()));
                }
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                self.clear_not_unpacked(&fd, &join(parents))
                    .map_err(|x| io_err(format!("applying opaque whiteout {}", q(&e.name)), x))?;
                self.dirs.invalidate();
            }
        }
        Ok(())
    }

    fn clear_not_unpacked(&self, dir: &OwnedFd, path: &[u8]) -> std::io::Result<()> {
        for child in list_dir(dir)? {
            let mut p = path.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(child.to_bytes());
            if !self.unpacked.contains(&p) {
                remove_at(dir.as_raw_fd(), &child)?;
                continue;
            }
            if let Some(st) = stat_at(dir.as_raw_fd(), &child)? {
                if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR {
                    let fd = unsafe {
                        libc::openat(
                            dir.as_raw_fd(),
                            child.as_ptr(),
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        return Err(last_err());
                    }
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    self.clear_not_unpacked(&fd, &p)?;
                }
            }
        }
        Ok(())
    }

    /// Directory times last: writing into a directory changes its mtime.
    fn finish(&mut self) -> Result<(), ApplyError> {
        for (path, t) in self.dir_times.iter().rev() {
            match open_dir_in_root(&self.dirs.root, path) {
                Ok(fd) => {
                    if unsafe { libc::futimens(fd.as_raw_fd(), t.as_ptr()) } != 0 {
                        return Err(io_err(format!("setting times of {}", q(path)), last_err()));
                    }
                }
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {}
                Err(e) => return Err(io_err(format!("setting times of {}", q(path)), e)),
            }
        }
        Ok(())
    }
}

fn xattr_error(e: &Entry, k: &str) -> Result<(), ApplyError> {
    let err = last_err();
    match errno(&err) {
        // Not every filesystem takes every namespace; Docker skips these too.
        libc::ENOTSUP | libc::EPERM => {
            tracing::debug!(entry = %String::from_utf8_lossy(&e.name), xattr = k, "xattr not supported here, skipped");
            Ok(())
        }
        _ => Err(io_err(format!("setting xattr {k} on {}", q(&e.name)), err)),
    }
}
