//! Copying a tree with everything a layer carries: ownership, modes, times, xattrs,
//! hard links, symlinks, device nodes and fifos. Used by the vfs driver (a layer is a
//! copy of its parent) and to fill a new volume from the image (without devices).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct CopyOpts {
    /// Copy character and block devices (vfs layers); otherwise they are skipped.
    pub devices: bool,
    /// Copy extended attributes.
    pub xattrs: bool,
}

/// Copy the contents of `src` into the existing directory `dst`, then give `dst` the
/// mode, owner and times of `src`. Does not cross into other filesystems.
pub fn copy_tree(src: &Path, dst: &Path, opts: CopyOpts) -> std::io::Result<()> {
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    let top = std::fs::symlink_metadata(src)?;
    copy_dir(src, dst, &top, top.dev(), opts, &mut links)
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    meta: &std::fs::Metadata,
    dev: u64,
    opts: CopyOpts,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let s = e.path();
        let d = dst.join(e.file_name());
        let m = std::fs::symlink_metadata(&s)?;
        let ft = m.file_type();
        if ft.is_dir() {
            if m.dev() != dev {
                continue;
            }
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        && std::fs::symlink_metadata(&d)?.is_dir() => {}
                Err(e) => return Err(e),
            }
            copy_dir(&s, &d, &m, dev, opts, links)?;
            continue;
        }
        if m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                std::fs::hard_link(first, &d)?;
                continue;
            }
        }
        if ft.is_file() {
            std::fs::copy(&s, &d)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&s)?, &d)?;
        } else if ft.is_fifo() || ((ft.is_char_device() || ft.is_block_device()) && opts.devices) {
            let c = cstr(d.as_os_str())?;
            if unsafe {
                libc::mknod(
                    c.as_ptr(),
                    m.mode() as libc::mode_t,
                    m.rdev() as libc::dev_t,
                )
            } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        } else {
            continue; // sockets, and devices where not allowed
        }
        if m.nlink() > 1 {
            links.insert((m.dev(), m.ino()), d.clone());
        }
        copy_meta(&s, &d, &m, opts)?;
    }
    copy_meta(src, dst, meta, opts)
}

/// Owner, mode (not for symlinks), xattrs and times of `src` onto `dst`.
pub fn copy_meta(
    src: &Path,
    dst: &Path,
    m: &std::fs::Metadata,
    opts: CopyOpts,
) -> std::io::Result<()> {
    let c = cstr(dst.as_os_str())?;
    let is_link = m.file_type().is_symlink();
    if unsafe { libc::lchown(c.as_ptr(), m.uid(), m.gid()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if opts.xattrs {
        copy_xattrs(src, &c)?;
    }
    if !is_link && unsafe { libc::chmod(c.as_ptr(), (m.mode() & 0o7777) as libc::mode_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let times = [
        libc::timespec {
            tv_sec: m.atime() as _,
            tv_nsec: m.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: m.mtime() as _,
            tv_nsec: m.mtime_nsec() as _,
        },
    ];
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn copy_xattrs(src: &Path, dst: &CString) -> std::io::Result<()> {
    let s = cstr(src.as_os_str())?;
    let names = list_xattrs(&s)?;
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name).map_err(std::io::Error::other)?;
        if let Some(v) = get_xattr(&s, &n)? {
            if unsafe { libc::lsetxattr(dst.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }
                != 0
            {
                let e = std::io::Error::last_os_error();
                // Filesystems without a namespace (e.g. trusted.* unprivileged) are skipped.
                if e.raw_os_error() != Some(libc::ENOTSUP) && e.raw_os_error() != Some(libc::EPERM)
                {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

pub fn list_xattrs(p: &CString) -> std::io::Result<Vec<u8>> {
    let n = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTSUP) {
            Ok(vec![])
        } else {
            Err(e)
        };
    }
    if n == 0 {
        return Ok(vec![]);
    }
    let mut buf = vec![0u8; n as usize + 256];
    let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn get_xattr(p: &CString, name: &CString) -> std::io::Result<Option<Vec<u8>>> {
    let n = unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    let mut buf = vec![0u8; n as usize + 64];
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

pub fn cstr(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_links_modes_and_times() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("s");
        let dst = d.path().join("d");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("a/f"), src.join("a/b/g")).unwrap();
        std::os::unix::fs::symlink("../f", src.join("a/b/l")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.join("a/f"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::fs::create_dir(&dst).unwrap();
        copy_tree(
            &src,
            &dst,
            CopyOpts {
                devices: true,
                xattrs: true,
            },
        )
        .unwrap();
        let m = std::fs::metadata(dst.join("a/f")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o751);
        assert_eq!(m.nlink(), 2);
        assert_eq!(
            std::fs::read_link(dst.join("a/b/l")).unwrap(),
            Path::new("../f")
        );
        assert_eq!(std::fs::read(dst.join("a/b/g")).unwrap(), b"hello");
        let sm = std::fs::metadata(src.join("a")).unwrap();
        let dm = std::fs::metadata(dst.join("a")).unwrap();
        assert_eq!((sm.mtime(), sm.mtime_nsec()), (dm.mtime(), dm.mtime_nsec()));
    }
}
