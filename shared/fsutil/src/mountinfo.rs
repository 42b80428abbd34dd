//! /proc/self/mountinfo: its fields' escapes, and whether a path is a mount point.

use std::io;
use std::path::Path;

/// A field of /proc/self/mountinfo (a mount point, a root, a source) with the
/// kernel's octal escapes undone: the kernel writes a space, a tab, a newline and a
/// backslash in a path as `\040`, `\011`, `\012` and `\134`
/// (fs/proc_namespace.c, `mangle`). A backslash not followed by three octal digits
/// of a byte value (`\0`..`\377`) is left as it is. Only ASCII is escaped by the
/// kernel, so the result of a field read as UTF-8 is UTF-8; an escape that decodes to
/// something else is replaced lossily.
pub fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Whether `mountinfo` (the text of /proc/self/mountinfo) lists `path` as a mount
/// point (its fifth field, unescaped).
pub fn mountinfo_lists(mountinfo: &str, path: &Path) -> bool {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape_mountinfo(m)) == path)
}

/// The mount that holds `path` in `mountinfo` (the text of /proc/self/mountinfo): its
/// mount point, the longest that is `path` or one of its parents (the last listed of
/// equal ones: the mount on top), and its optional fields (`shared:N`, `master:N`, ...)
/// joined by spaces, as Moby's getSourceMount answers them.
pub fn source_mount(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    let mut best: Option<(String, String)> = None;
    for l in mountinfo.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() < 7 {
            continue;
        }
        let point = unescape_mountinfo(f[4]);
        if !path.starts_with(&point) {
            continue;
        }
        let optional: Vec<&str> = f[6..].iter().take_while(|x| **x != "-").copied().collect();
        if best.as_ref().is_none_or(|(b, _)| point.len() >= b.len()) {
            best = Some((point, optional.join(" ")));
        }
    }
    best
}

/// Whether `path` is a mount point, as Moby's mountinfo.Mounted decides it: opening
/// its last component with `RESOLVE_NO_XDEV` fails with EXDEV exactly at a mount
/// point (a bind mount of the same filesystem included, a btrfs subvolume excluded);
/// where that cannot tell (no openat2, a missing path), a device that differs from
/// its parent's is a mount point, else /proc/self/mountinfo must list it. An error
/// only when mountinfo is needed and cannot be read.
pub fn is_mountpoint(path: &Path) -> io::Result<bool> {
    use rustix::fs::{openat2, OFlags, ResolveFlags, CWD};
    use std::os::unix::fs::MetadataExt;
    if let (Some(parent), Some(last)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let how = OFlags::PATH | OFlags::CLOEXEC;
        if let Ok(dir) = openat2(
            CWD,
            parent,
            how,
            rustix::fs::Mode::empty(),
            ResolveFlags::empty(),
        ) {
            match openat2(
                &dir,
                last,
                how | OFlags::NOFOLLOW,
                rustix::fs::Mode::empty(),
                ResolveFlags::NO_XDEV,
            ) {
                Ok(_) => return Ok(false),
                Err(rustix::io::Errno::XDEV) => return Ok(true),
                Err(_) => {}
            }
        }
    }
    if let (Ok(m), Some(Ok(pm))) = (
        std::fs::symlink_metadata(path),
        path.parent().map(std::fs::symlink_metadata),
    ) {
        if pm.dev() != m.dev() {
            return Ok(true);
        }
    }
    Ok(mountinfo_lists(
        &std::fs::read_to_string("/proc/self/mountinfo")?,
        path,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_the_kernels_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\011b"), "/a\tb");
        assert_eq!(unescape_mountinfo(r"/a\012b"), "/a\nb");
        assert_eq!(unescape_mountinfo(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mountinfo(r"\040\011\012\134"), " \t\n\\");
        // an escaped backslash followed by digits stays a backslash and digits
        assert_eq!(unescape_mountinfo(r"/x\134040"), r"/x\040");
        assert_eq!(unescape_mountinfo("/plain/path"), "/plain/path");
        assert_eq!(unescape_mountinfo(""), "");
        // non-ASCII is passed through
        assert_eq!(unescape_mountinfo(r"/é\040ü"), "/é ü");
    }

    #[test]
    fn leaves_invalid_and_short_escapes_alone() {
        assert_eq!(unescape_mountinfo(r"/a\04"), r"/a\04");
        assert_eq!(unescape_mountinfo(r"/a\0"), r"/a\0");
        assert_eq!(unescape_mountinfo(r"/a\"), r"/a\");
        assert_eq!(unescape_mountinfo(r"/a\089"), r"/a\089");
        assert_eq!(unescape_mountinfo(r"/a\x40"), r"/a\x40");
        // more than a byte
        assert_eq!(unescape_mountinfo(r"/a\777"), r"/a\777");
        assert_eq!(unescape_mountinfo(r"/a\400"), r"/a\400");
        // a sign is not a digit
        assert_eq!(unescape_mountinfo(r"/a\+12"), r"/a\+12");
        // a multi-byte character after the backslash
        assert_eq!(unescape_mountinfo(r"/a\é12"), r"/a\é12");
        // a short escape right before a full one
        assert_eq!(unescape_mountinfo(r"\0\040"), r"\0 ");
    }

    #[test]
    fn a_byte_that_is_not_utf8_is_replaced() {
        assert_eq!(unescape_mountinfo(r"/a\377"), "/a\u{fffd}");
    }

    #[test]
    fn mountinfo_lists_unescaped_mount_points() {
        let mi = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                  31 22 0:41 / /var/lib/x/c\\040d rw shared:6 - tmpfs tmpfs rw\n\
                  32 22 0:42 / /short\n";
        assert!(mountinfo_lists(mi, Path::new("/")));
        assert!(mountinfo_lists(mi, Path::new("/var/lib/x/c d")));
        assert!(mountinfo_lists(mi, Path::new("/var/lib/x/c d/")));
        assert!(!mountinfo_lists(mi, Path::new("/var/lib/x/c\\040d")));
        assert!(!mountinfo_lists(mi, Path::new("/var/lib/x")));
        assert!(mountinfo_lists(mi, Path::new("/short")));
    }

    #[test]
    fn mount_points_of_this_process() {
        assert!(is_mountpoint(Path::new("/")).unwrap());
        assert!(is_mountpoint(Path::new("/proc")).unwrap());
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(d.path()).unwrap());
        assert!(!is_mountpoint(&d.path().join("missing")).unwrap());
    }

    /// Needs root (a bind mount): fails, never skips. A bind mount of the same
    /// filesystem (same device as its parent) is found through mountinfo, its name's
    /// escapes undone.
    #[test]
    fn a_bind_mount_with_escaped_characters_is_a_mount_point() {
        assert!(rustix::process::geteuid().is_root(), "this test needs root");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a b\tc\\d\ne");
        std::fs::create_dir(&dir).unwrap();
        assert!(!is_mountpoint(&dir).unwrap());
        rustix::mount::mount_bind(&dir, &dir).unwrap();
        let guard = Unmount(dir.clone());
        assert!(is_mountpoint(&dir).unwrap());
        assert!(!is_mountpoint(d.path()).unwrap());
        drop(guard);
        assert!(!is_mountpoint(&dir).unwrap());
    }

    #[test]
    fn the_mount_holding_a_path_and_its_propagation() {
        let mi = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                  30 22 0:25 / /srv rw master:7 - tmpfs tmpfs rw\n\
                  31 30 0:26 / /srv/a\\040b rw - tmpfs tmpfs rw\n\
                  32 22 0:27 / /srvx rw shared:3 master:2 - tmpfs tmpfs rw\n";
        assert_eq!(source_mount(mi, Path::new("/home/u")), Some(("/".into(), "shared:1".into())));
        assert_eq!(source_mount(mi, Path::new("/srv/data")), Some(("/srv".into(), "master:7".into())));
        assert_eq!(source_mount(mi, Path::new("/srv/a b/c")), Some(("/srv/a b".into(), "".into())));
        // by path components: /srvx is not under /srv
        assert_eq!(source_mount(mi, Path::new("/srvx/1")), Some(("/srvx".into(), "shared:3 master:2".into())));
        assert_eq!(source_mount("", Path::new("/x")), None);
    }
}
