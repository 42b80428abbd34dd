//! Metadata copied onto a path the storage service owns (a directory it makes in a
//! writable layer). Trees are copied by berth_fsutil::copy::Copier.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Owner, mode (not for symlinks) and times of `m` onto `dst`.
pub fn copy_meta(dst: &Path, m: &std::fs::Metadata) -> std::io::Result<()> {
    let c = cstr(dst.as_os_str())?;
    let is_link = m.file_type().is_symlink();
    if unsafe { libc::lchown(c.as_ptr(), m.uid(), m.gid()) } != 0 {
        return Err(std::io::Error::last_os_error());
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

pub fn cstr(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}
