//! A tree written as a tar by walking descriptors: each directory is opened from its
//! parent's descriptor with O_NOFOLLOW, each file is opened the same way and checked
//! to be the inode that was listed, so a container swapping a directory for a symlink
//! while it is archived gets the swap archived as a symlink, never followed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags};

use crate::at::{self, Stat};

/// Writes entries into a tar stream.
pub struct TarWriter<W: Write> {
    b: tar::Builder<W>,
    links: HashMap<(u64, u64), PathBuf>,
    /// Do not descend into other filesystems (mounts inside a rootfs).
    pub one_filesystem: Option<u64>,
}

/// Reads exactly `left` bytes: a file that shrank while archived is padded with
/// zeros, one that grew is cut, so the stream stays valid (as Moby's archiver does).
struct Exact<R> {
    r: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.left) as usize;
        let n = self.r.read(&mut buf[..want])?;
        let n = if n == 0 {
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

fn header_for(st: &Stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        TarWriter { b: tar::Builder::new(w), links: HashMap::new(), one_filesystem: None }
    }

    /// `name` in `dir`, archived as `arc` (and, for a directory, everything under it
    /// when `recurse`).
    pub fn append(&mut self, dir: BorrowedFd<'_>, name: &OsStr, arc: &Path, recurse: bool) -> io::Result<()> {
        let st = match at::lstat(dir, name)? {
            Some(s) => s,
            None => return Ok(()), // removed while we walked: nothing to archive
        };
        self.append_stat(dir, name, &st, arc, recurse)
    }

    fn append_stat(&mut self, dir: BorrowedFd<'_>, name: &OsStr, st: &Stat, arc: &Path, recurse: bool) -> io::Result<()> {
        let mut h = header_for(st);
        match at::file_type(st) {
            FileType::Directory => {
                let sub = at::open_dir(dir, name)?;
                let now = at::fstat(sub.as_fd())?;
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                    return Ok(()); // replaced while we walked
                }
                self.append_dir_fd(sub.as_fd(), &now, arc, recurse)?;
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                        h.set_entry_type(tar::EntryType::Link);
                        let first = first.clone();
                        return self.b.append_link(&mut h, arc, first);
                    }
                }
                let fd = at::open(dir, name, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, 0)?;
                let now = at::fstat(fd.as_fd())?;
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) || at::file_type(&now) != FileType::RegularFile {
                    return Ok(());
                }
                if st.st_nlink > 1 {
                    self.links.insert((st.st_dev, st.st_ino), arc.to_path_buf());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(now.st_size as u64);
                let r = Exact { r: std::fs::File::from(fd), left: now.st_size as u64 };
                self.b.append_data(&mut h, arc, r)?;
            }
            FileType::Symlink => {
                let target = at::readlink(dir, name)?;
                h.set_entry_type(tar::EntryType::Symlink);
                self.b.append_link(&mut h, arc, Path::new(&target))?;
            }
            t @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                h.set_entry_type(match t {
                    FileType::CharacterDevice => tar::EntryType::Char,
                    FileType::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                if t != FileType::Fifo {
                    h.set_device_major(rustix::fs::major(st.st_rdev))?;
                    h.set_device_minor(rustix::fs::minor(st.st_rdev))?;
                }
                self.b.append_data(&mut h, arc, io::empty())?;
            }
            _ => {} // sockets are not archived
        }
        Ok(())
    }

    /// The directory open as `fd` archived as `arc` (`arc` empty: only its content).
    pub fn append_dir_fd(&mut self, fd: BorrowedFd<'_>, st: &Stat, arc: &Path, recurse: bool) -> io::Result<()> {
        if !arc.as_os_str().is_empty() {
            let mut h = header_for(st);
            h.set_entry_type(tar::EntryType::Directory);
            let mut name = arc.as_os_str().to_owned();
            name.push("/");
            self.b.append_data(&mut h, Path::new(&name), io::empty())?;
        }
        if !recurse || self.one_filesystem.is_some_and(|d| d != st.st_dev) {
            return Ok(());
        }
        for child in at::list(fd)? {
            let Some(cst) = at::lstat(fd, &child)? else { continue };
            let carc = arc.join(&child);
            self.append_stat(fd, &child, &cst, &carc, true)?;
        }
        Ok(())
    }

    pub fn finish(self) -> io::Result<W> {
        self.b.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn archives_links_as_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/f"), b"hello").unwrap();
        std::fs::hard_link(r.join("a/f"), r.join("a/b/h")).unwrap();
        symlink("/etc", r.join("a/etc")).unwrap();
        let root = std::fs::File::open(r).unwrap();
        let mut w = TarWriter::new(Vec::new());
        w.append(root.as_fd(), OsStr::new("a"), Path::new("a"), true).unwrap();
        let out = w.finish().unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let t = e.header().entry_type();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            let l = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
            seen.push(format!("{p} {t:?} {body}{l}"));
        }
        assert_eq!(seen, vec!["a/ Directory ", "a/b/ Directory ", "a/b/h Regular hello", "a/etc Symlink /etc", "a/f Link a/b/h"]);
    }
}
