//! The build context: received as a tar (gzip or plain), unpacked into a private
//! directory, matched with COPY/ADD sources (globs, never outside the context),
//! hashed for the cache, and copied into a container's root filesystem.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Unpack a context tar (gzip-compressed or not) into `dir`; the tar crate refuses
/// entries that would land outside it.
pub fn unpack(tar_path: &Path, dir: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(tar_path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = std::fs::File::open(tar_path)?;
    let r: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(false);
    std::fs::create_dir_all(dir)?;
    a.unpack(dir)
}

/// Clean a context-relative path; Err when it leaves the context.
pub fn clean_rel(p: &str) -> Result<String, String> {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(format!("forbidden path outside the build context: {p} ()"));
                }
            }
            x => out.push(x),
        }
    }
    Ok(out.join("/"))
}

/// Shell-style wildcard match of one path component pattern (`*`, `?`, `[...]`).
pub fn wildmatch(pat: &str, s: &str) -> bool {
    fn m(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some('*'), _) => m(&p[1..], s) || (!s.is_empty() && m(p, &s[1..])),
            (Some('?'), Some(_)) => m(&p[1..], &s[1..]),
            (Some('['), Some(c)) => {
                let Some(end) = p.iter().position(|&x| x == ']') else { return p[0] == *c && m(&p[1..], &s[1..]) };
                let class = &p[1..end];
                let (neg, class) = if class.first() == Some(&'^') || class.first() == Some(&'!') { (true, &class[1..]) } else { (false, class) };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        if class[i] <= *c && *c <= class[i + 2] {
                            hit = true;
                        }
                        i += 3;
                    } else {
                        if class[i] == *c {
                            hit = true;
                        }
                        i += 1;
                    }
                }
                hit != neg && m(&p[end + 1..], &s[1..])
            }
            (Some('\\'), Some(c)) if p.len() > 1 => p[1] == *c && m(&p[2..], &s[1..]),
            (Some(a), Some(b)) => a == b && m(&p[1..], &s[1..]),
            (Some(_), None) => false,
        }
    }
    m(&pat.chars().collect::<Vec<_>>(), &s.chars().collect::<Vec<_>>())
}

/// Sources matching `pattern` in the context (relative paths, sorted).
pub fn matches(ctx: &Path, pattern: &str) -> Result<Vec<String>, String> {
    let clean = clean_rel(pattern)?;
    if !clean.contains(['*', '?', '[']) {
        let p = ctx.join(&clean);
        if std::fs::symlink_metadata(&p).is_err() {
            return Err(format!("file not found in build context or excluded by .dockerignore: stat {pattern}: file does not exist"));
        }
        return Ok(vec![clean]);
    }
    let mut found = vec![String::new()];
    for comp in clean.split('/') {
        let mut next = Vec::new();
        for base in &found {
            let dir = if base.is_empty() { ctx.to_path_buf() } else { ctx.join(base) };
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            for n in names {
                if wildmatch(comp, &n) {
                    next.push(if base.is_empty() { n } else { format!("{base}/{n}") });
                }
            }
        }
        found = next;
    }
    if found.is_empty() {
        return Err(format!("no source files were specified"));
    }
    Ok(found)
}

/// A content hash of sources for the build cache and the history line.
pub fn hash(ctx: &Path, srcs: &[String]) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for s in srcs {
        hash_path(&ctx.join(s), s, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_path(p: &Path, rel: &str, h: &mut Sha256) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(p)?;
    h.update(rel.as_bytes());
    h.update(md.mode().to_le_bytes());
    if md.file_type().is_symlink() {
        h.update(std::fs::read_link(p)?.to_string_lossy().as_bytes());
    } else if md.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(p)?.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            hash_path(&p.join(&n), &format!("{rel}/{}", n.to_string_lossy()), h)?;
        }
    } else {
        h.update(md.len().to_le_bytes());
        let mut f = std::fs::File::open(p)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(())
}

pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub struct CopyOpts {
    pub owner: Option<Owner>,
    pub chmod: Option<u32>,
}

/// Copy `src` (file, dir or symlink on the host) to `dst` (a host path already
/// resolved inside the rootfs). Directories copy their contents; ownership is root
/// (or `--chown`), modes are kept (or `--chmod`), times kept.
pub fn copy_into(src: &Path, dst: &Path, o: &CopyOpts) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(src)?;
    let (uid, gid) = o.owner.as_ref().map(|w| (w.uid, w.gid)).unwrap_or((0, 0));
    if md.file_type().is_symlink() {
        let t = std::fs::read_link(src)?;
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(t, dst)?;
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
    } else if md.is_dir() {
        if std::fs::symlink_metadata(dst).map(|m| !m.is_dir()).unwrap_or(false) {
            std::fs::remove_file(dst)?;
        }
        let fresh = !dst.exists();
        std::fs::create_dir_all(dst)?;
        if fresh {
            std::os::unix::fs::chown(dst, Some(uid), Some(gid))?;
            std::fs::set_permissions(dst, std::fs::Permissions::from_mode(o.chmod.unwrap_or(md.mode() & 0o7777)))?;
        }
        for e in std::fs::read_dir(src)? {
            let e = e?;
            let d = dst.join(e.file_name());
            let emd = std::fs::symlink_metadata(e.path())?;
            if emd.is_dir() {
                std::fs::create_dir_all(&d)?;
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))?;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(o.chmod.unwrap_or(emd.mode() & 0o7777)))?;
            }
            copy_into(&e.path(), &d, o)?;
        }
    } else {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::symlink_metadata(dst).is_ok() {
            if dst.is_dir() {
                return Err(std::io::Error::other(format!("cannot overwrite directory {} with a file", dst.display())));
            }
            std::fs::remove_file(dst)?;
        }
        std::fs::copy(src, dst)?;
        std::os::unix::fs::chown(dst, Some(uid), Some(gid))?;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(o.chmod.unwrap_or(md.mode() & 0o7777)))?;
    }
    // keep the source's modification time
    let times = [
        libc::timespec { tv_sec: md.atime(), tv_nsec: md.atime_nsec() },
        libc::timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() },
    ];
    let c = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes()).unwrap();
    unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    Ok(())
}

/// Extract a local archive for ADD (tar, tar.gz); false when `src` is not one.
pub fn extract_archive(src: &Path, dst: &Path, o: &CopyOpts) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(src)?;
    let mut head = vec![0u8; 512];
    let n = f.read(&mut head)?;
    head.truncate(n);
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let is_tar = n >= 262 && &head[257..262] == b"ustar";
    if !gz && !is_tar {
        return Ok(false);
    }
    let f = std::fs::File::open(src)?;
    let r: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    if gz {
        // a gzip that is not a tar is copied as is
        let mut probe = flate2::read::GzDecoder::new(std::fs::File::open(src)?);
        let mut h = vec![0u8; 512];
        let mut got = 0;
        while got < 512 {
            match probe.read(&mut h[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(_) => return Ok(false),
            }
        }
        if got < 262 || &h[257..262] != b"ustar" {
            return Ok(false);
        }
    }
    std::fs::create_dir_all(dst)?;
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(o.owner.is_none());
    a.unpack(dst)?;
    Ok(true)
}

pub fn tmp_dir(base: &Path, id: &str) -> PathBuf {
    base.join("tmp").join(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn wildcards() {
        assert!(wildmatch("*.txt", "a.txt"));
        assert!(!wildmatch("*.txt", "a.py"));
        assert!(wildmatch("a?c", "abc"));
        assert!(wildmatch("[a-c]x", "bx"));
        assert!(!wildmatch("[!a-c]x", "bx"));
    }
    #[test]
    fn context_paths() {
        assert_eq!(clean_rel("./a/../b").unwrap(), "b");
        assert!(clean_rel("../etc").is_err());
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.txt"), "1").unwrap();
        std::fs::write(d.path().join("b.txt"), "2").unwrap();
        std::fs::write(d.path().join("c.py"), "3").unwrap();
        assert_eq!(matches(d.path(), "*.txt").unwrap(), vec!["a.txt".to_string(), "b.txt".into()]);
        assert!(matches(d.path(), "nope").is_err());
        let h1 = hash(d.path(), &["a.txt".into()]).unwrap();
        std::fs::write(d.path().join("a.txt"), "changed").unwrap();
        assert_ne!(h1, hash(d.path(), &["a.txt".into()]).unwrap());
    }
}
