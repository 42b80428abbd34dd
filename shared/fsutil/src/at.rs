//! Calls relative to a directory descriptor, each on one name (no `/`), never
//! following a symlink in that name: what is left to do once the kernel resolved
//! the directory inside the root.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

pub use rustix::fs::Stat;

fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad name {name:?}")));
    }
    Ok(())
}

/// lstat of `name` in `dir`; `None` when it does not exist.
pub fn lstat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

pub fn is_dir(st: &Stat) -> bool {
    file_type(st) == FileType::Directory
}

/// Open `name` in `dir` with `flags` (O_NOFOLLOW and O_CLOEXEC always added).
pub fn open(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    check_name(name).or_else(|e| if name == "." { Ok(()) } else { Err(e) })?;
    Ok(rustix::fs::openat(dir, name, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::from_raw_mode(mode))?)
}

/// The directory `name` in `dir`, for reading (a symlink there is an error).
pub fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, 0)
}

/// An O_PATH descriptor reopened for reading, refusing anything but a regular file
/// (a fifo would block, a device is not a file to copy).
pub fn reopen_file(fd: BorrowedFd<'_>) -> io::Result<File> {
    reopen_file_as(fd, OFlags::RDONLY)
}

/// [`reopen_file`] for reading and writing.
pub fn reopen_file_rw(fd: BorrowedFd<'_>) -> io::Result<File> {
    reopen_file_as(fd, OFlags::RDWR)
}

fn reopen_file_as(fd: BorrowedFd<'_>, access: OFlags) -> io::Result<File> {
    let st = fstat(fd)?;
    if file_type(&st) != FileType::RegularFile {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    // openat(fd, "", O_EMPTYPATH) does not exist; the fd's magic link is the inode itself
    let f = File::from(rustix::fs::openat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        access | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?);
    let st2 = fstat(f.as_fd())?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return Err(io::Error::other("file changed while opened"));
    }
    Ok(f)
}

/// The path the kernel has for a descriptor (for messages and `linkTarget` only).
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<String> {
    let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(p.to_string_lossy().into_owned())
}

pub fn readlink(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let c = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(OsString::from_vec(c.into_bytes()))
}

pub fn mkdir(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    check_name(name)?;
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

/// Names in a directory, sorted, without `.` and `..`.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        out.push(OsString::from_vec(n.to_vec()));
    }
    out.sort();
    Ok(out)
}

/// Remove `name` in `dir` and, for a directory, everything under it. Nothing is
/// followed: a symlink is removed, not what it points to.
pub fn remove_all(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = open_dir(dir, name)?;
    for child in list(sub.as_fd())? {
        remove_all(sub.as_fd(), &child)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Owner of `name` in `dir` (a symlink itself, never its target).
pub fn lchown(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    Ok(rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))?)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?)
}

/// chmod of the inode an O_PATH descriptor holds (fchmod refuses O_PATH; its magic
/// link names that inode and nothing else, so no symlink can redirect it).
pub fn chmod_opath(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::chmodat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )?)
}

pub fn timestamps(atime: (i64, i64), mtime: (i64, i64)) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: atime.0, tv_nsec: atime.1 as _ },
        last_modification: rustix::fs::Timespec { tv_sec: mtime.0, tv_nsec: mtime.1 as _ },
    }
}

/// Times of `name` in `dir` (a symlink itself).
pub fn lutimes(dir: BorrowedFd<'_>, name: &OsStr, t: &rustix::fs::Timestamps) -> io::Result<()> {
    Ok(rustix::fs::utimensat(dir, name, t, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub fn futimes(fd: BorrowedFd<'_>, t: &rustix::fs::Timestamps) -> io::Result<()> {
    Ok(rustix::fs::futimens(fd, t)?)
}

pub fn symlink(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

/// A hard link `name` in `dir` to the inode `src` (an O_PATH descriptor).
pub fn link_fd(src: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    Ok(rustix::fs::linkat(src, "", dir, name, AtFlags::EMPTY_PATH)?)
}

/// A hard link `name` in `dir` to `src_name` in `src_dir` (neither followed).
pub fn link(src_dir: BorrowedFd<'_>, src_name: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    check_name(src_name)?;
    Ok(rustix::fs::linkat(src_dir, src_name, dir, name, AtFlags::empty())?)
}

pub fn mknod(dir: BorrowedFd<'_>, name: &OsStr, ft: FileType, mode: u32, dev: u64) -> io::Result<()> {
    check_name(name)?;
    Ok(rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(mode & 0o7777), dev)?)
}

/// An extended attribute of `name` in `dir`, not following it (through the
/// directory's magic link and a single component: nothing to redirect).
pub fn lgetxattr(dir: BorrowedFd<'_>, name: &OsStr, attr: &str) -> io::Result<Option<Vec<u8>>> {
    check_name(name)?;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    let path = OsStr::from_bytes(&p);
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, attr, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 16 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Set an extended attribute on `name` in `dir`, not following it.
pub fn lsetxattr(dir: BorrowedFd<'_>, name: &OsStr, attr: &str, value: &[u8]) -> io::Result<()> {
    check_name(name)?;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    Ok(rustix::fs::lsetxattr(OsStr::from_bytes(&p), attr, value, rustix::fs::XattrFlags::empty())?)
}

/// Names of the extended attributes of `name` in `dir`, not following it.
pub fn llistxattr(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<String>> {
    check_name(name)?;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    let path = OsStr::from_bytes(&p);
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut buf) {
            Ok(n) => break n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(vec![]),
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 8, 0),
            Err(e) => return Err(e.into()),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}
