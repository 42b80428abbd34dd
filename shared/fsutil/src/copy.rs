//! A tree copied between two directory descriptors with what a layer carries:
//! ownership, modes, times, extended attributes, hard links, symlinks (copied as
//! links, never followed), fifos and (when asked) devices. Both sides are walked by
//! descriptors, so neither a container racing in the source nor one sharing the
//! destination (a volume) can make the copy read or write outside them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, OFlags};

use crate::at::{self, Stat};

#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOpts {
    /// Copy character and block devices; otherwise they are skipped.
    pub devices: bool,
    /// Copy extended attributes.
    pub xattrs: bool,
    /// Owner of everything copied; `None` keeps the source's.
    pub owner: Option<(u32, u32)>,
    /// Do not descend into directories on another filesystem (mounts).
    pub one_filesystem: bool,
    /// Permission bits of everything copied (`COPY --chmod`); `None` keeps the source's.
    pub mode: Option<u32>,
}

/// Copies, remembering hard links already made.
pub struct Copier {
    opts: CopyOpts,
    /// (dev, ino) of a source with several links -> (dest dir, name) of its first copy.
    links: HashMap<(u64, u64), (OwnedFd, OsString)>,
}

fn times_of(st: &Stat) -> rustix::fs::Timestamps {
    at::timestamps((st.st_atime, st.st_atime_nsec as i64), (st.st_mtime, st.st_mtime_nsec as i64))
}

impl Copier {
    pub fn new(opts: CopyOpts) -> Copier {
        Copier { opts, links: HashMap::new() }
    }

    fn owner(&self, st: &Stat) -> (u32, u32) {
        self.opts.owner.unwrap_or((st.st_uid, st.st_gid))
    }

    fn mode(&self, st: &Stat) -> u32 {
        self.opts.mode.unwrap_or(st.st_mode & 0o7777)
    }

    fn xattrs(&self, sdir: BorrowedFd<'_>, sname: &OsStr, ddir: BorrowedFd<'_>, dname: &OsStr) -> io::Result<()> {
        if !self.opts.xattrs {
            return Ok(());
        }
        for a in at::llistxattr(sdir, sname)? {
            if let Some(v) = at::lgetxattr(sdir, sname, &a)? {
                match at::lsetxattr(ddir, dname, &a, &v) {
                    Ok(()) => {}
                    // filesystems without that namespace (trusted.*, user.* on links)
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Copy the content of the directory `src` into the directory `dst`, then give
    /// `dst` the owner, mode and times of `src`.
    pub fn copy_dir(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
        let st = at::fstat(src)?;
        self.children(src, &st, dst)?;
        let (u, g) = self.owner(&st);
        at::fchown(dst, u, g)?;
        at::fchmod(dst, self.mode(&st))?;
        if self.opts.xattrs {
            self.xattrs(src, OsStr::new("."), dst, OsStr::new("."))?;
        }
        at::futimes(dst, &times_of(&st))
    }

    /// Copy the content of the directory `src` into the directory `dst`, leaving
    /// `dst` itself as it is.
    pub fn copy_children(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
        let st = at::fstat(src)?;
        self.children(src, &st, dst)
    }

    fn children(&mut self, src: BorrowedFd<'_>, st: &Stat, dst: BorrowedFd<'_>) -> io::Result<()> {
        for name in at::list(src)? {
            let Some(cst) = at::lstat(src, &name)? else { continue };
            if self.opts.one_filesystem && at::is_dir(&cst) && cst.st_dev != st.st_dev {
                continue;
            }
            self.copy_entry(src, &name, &cst, dst, &name)?;
        }
        Ok(())
    }

    /// Copy `sname` in `sdir` (stat `st`) to `dname` in `ddir`, replacing a
    /// non-directory there (an existing directory is merged into).
    pub fn copy_entry(&mut self, sdir: BorrowedFd<'_>, sname: &OsStr, st: &Stat, ddir: BorrowedFd<'_>, dname: &OsStr) -> io::Result<()> {
        let existing = at::lstat(ddir, dname)?;
        let ft = at::file_type(st);
        if let Some(e) = &existing {
            if !(at::is_dir(e) && ft == FileType::Directory) {
                at::remove_all(ddir, dname)?;
            }
        }
        let (uid, gid) = self.owner(st);
        let times = times_of(st);
        if ft != FileType::Directory && st.st_nlink > 1 {
            if let Some((fdir, fname)) = self.links.get(&(st.st_dev, st.st_ino)) {
                return at::link(fdir.as_fd(), fname, ddir, dname);
            }
        }
        match ft {
            FileType::Directory => {
                if existing.as_ref().is_none_or(|e| !at::is_dir(e)) {
                    at::mkdir(ddir, dname, 0o700)?;
                }
                let s = at::open_dir(sdir, sname)?;
                let now = at::fstat(s.as_fd())?;
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                    return Ok(()); // replaced while we walked
                }
                let d = at::open_dir(ddir, dname)?;
                self.children(s.as_fd(), &now, d.as_fd())?;
                at::fchown(d.as_fd(), uid, gid)?;
                at::fchmod(d.as_fd(), self.mode(st))?;
                self.xattrs(sdir, sname, ddir, dname)?;
                at::futimes(d.as_fd(), &times)?;
                return Ok(());
            }
            FileType::RegularFile => {
                let s = at::open(sdir, sname, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, 0)?;
                let now = at::fstat(s.as_fd())?;
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) || at::file_type(&now) != FileType::RegularFile {
                    return Ok(());
                }
                let d = at::open(ddir, dname, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)?;
                let mut sf = std::fs::File::from(s);
                let mut df = std::fs::File::from(d);
                io::copy(&mut sf, &mut df)?;
                at::fchown(df.as_fd(), uid, gid)?;
                at::fchmod(df.as_fd(), self.mode(st))?;
                self.xattrs(sdir, sname, ddir, dname)?;
                at::futimes(df.as_fd(), &times)?;
            }
            FileType::Symlink => {
                let t = at::readlink(sdir, sname)?;
                at::symlink(&t, ddir, dname)?;
                at::lchown(ddir, dname, uid, gid)?;
                self.xattrs(sdir, sname, ddir, dname)?;
                at::lutimes(ddir, dname, &times)?;
            }
            FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
                if ft != FileType::Fifo && !self.opts.devices {
                    return Ok(());
                }
                at::mknod(ddir, dname, ft, st.st_mode, st.st_rdev)?;
                at::lchown(ddir, dname, uid, gid)?;
                let p = at::open(ddir, dname, OFlags::PATH, 0)?;
                at::chmod_opath(p.as_fd(), self.mode(st))?;
                self.xattrs(sdir, sname, ddir, dname)?;
                at::lutimes(ddir, dname, &times)?;
            }
            _ => return Ok(()), // sockets
        }
        if st.st_nlink > 1 {
            let dup = rustix::io::dup(ddir)?;
            self.links.insert((st.st_dev, st.st_ino), (dup, dname.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn copies_links_modes_and_times() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("s");
        let dst = d.path().join("d");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("a/f"), src.join("a/b/g")).unwrap();
        symlink("/etc", src.join("a/b/l")).unwrap();
        std::fs::set_permissions(src.join("a/f"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::fs::create_dir(&dst).unwrap();
        // a symlink planted in the destination is replaced, never written through
        symlink("/tmp", dst.join("a")).unwrap();
        let s = std::fs::File::open(&src).unwrap();
        let t = std::fs::File::open(&dst).unwrap();
        Copier::new(CopyOpts { devices: true, xattrs: true, ..Default::default() }).copy_dir(s.as_fd(), t.as_fd()).unwrap();
        let m = std::fs::metadata(dst.join("a/f")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o751);
        assert_eq!(m.nlink(), 2);
        assert_eq!(std::fs::read_link(dst.join("a/b/l")).unwrap(), std::path::Path::new("/etc"));
        assert_eq!(std::fs::read(dst.join("a/b/g")).unwrap(), b"hello");
        let sm = std::fs::metadata(src.join("a")).unwrap();
        let dm = std::fs::symlink_metadata(dst.join("a")).unwrap();
        assert!(dm.is_dir());
        assert_eq!((sm.mtime(), sm.mtime_nsec()), (dm.mtime(), dm.mtime_nsec()));
    }
}
