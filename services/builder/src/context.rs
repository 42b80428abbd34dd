//! The build context: received as a tar (gzip or plain), unpacked into a private
//! directory, matched with COPY/ADD sources (globs, never outside the context),
//! hashed for the cache, and copied into a container's root filesystem.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_fsutil::{at, InRoot};

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

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Copy `src_path` of `src` (a context or another stage's root) to `dst_path` of `dst`
/// (the build container's root). Both paths are resolved by the kernel inside their
/// roots and the copy walks descriptors (berth_fsutil::copy): a symlink in the context
/// or in a layer can never make the build read or write the host. Directories copy
/// their contents (the destination gets the source's owner and mode when it is made);
/// ownership is root (or `--chown`), modes are kept (or `--chmod`), times kept.
pub fn copy_into(src: &InRoot, src_path: &str, dst: &InRoot, dst_path: &str, o: &CopyOpts) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let (sdir, sname) = src.parent(src_path)?;
    let sname = std::ffi::OsString::from(sname);
    let st = at::lstat(sdir.as_fd(), &sname)?.ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
    let (uid, gid) = o.owner.as_ref().map(|w| (w.uid, w.gid)).unwrap_or((0, 0));
    let opts = berth_fsutil::copy::CopyOpts { devices: false, xattrs: true, owner: Some((uid, gid)), one_filesystem: false, mode: o.chmod };
    let mut c = berth_fsutil::copy::Copier::new(opts);
    if at::is_dir(&st) {
        let fresh = match dst.resolve(dst_path) {
            Ok(fd) => !at::is_dir(&at::fstat(fd.as_fd())?),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        if fresh {
            // a non-directory there is replaced
            let (ddir, dname) = dst.parent(dst_path).or_else(|_| {
                let (d, n) = berth_fsutil::split(dst_path);
                dst.mkdir_all(&d, 0o755).map(|fd| (fd, n))
            })?;
            if dname != "." {
                at::remove_all(ddir.as_fd(), std::ffi::OsStr::new(&dname))?;
            }
        }
        let dfd = dst.mkdir_all(dst_path, 0o755)?;
        let dfd = at::open_dir(dfd.as_fd(), std::ffi::OsStr::new("."))?;
        let sfd = at::open_dir(sdir.as_fd(), &sname)?;
        if fresh {
            c.copy_dir(sfd.as_fd(), dfd.as_fd())
        } else {
            c.copy_children(sfd.as_fd(), dfd.as_fd())
        }
    } else {
        let (d, n) = berth_fsutil::split(dst_path);
        let ddir = dst.mkdir_all(&d, 0o755)?;
        let dname = std::ffi::OsString::from(n);
        if at::lstat(ddir.as_fd(), &dname)?.is_some_and(|e| at::is_dir(&e)) {
            return Err(io_err(format!("cannot overwrite directory {dst_path} with a file")));
        }
        c.copy_entry(sdir.as_fd(), &sname, &st, ddir.as_fd(), &dname)
    }
}

/// Extract a local archive for ADD (tar, tar.gz) at `src_path` of `src` into the
/// directory `into` of `dst` (resolved inside it, as Moby's untar in a chroot); false
/// when it is not an archive.
pub fn extract_archive(src: &InRoot, src_path: &str, dst: &InRoot, into: &str, o: &CopyOpts) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsFd;
    let fd = src.resolve(src_path)?;
    let mut f = at::reopen_file(fd.as_fd())?;
    let mut head = vec![0u8; 512];
    let n = f.read(&mut head)?;
    head.truncate(n);
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let is_tar = n >= 262 && &head[257..262] == b"ustar";
    if !gz && !is_tar {
        return Ok(false);
    }
    if gz {
        // a gzip that is not a tar is copied as is
        f.seek(SeekFrom::Start(0))?;
        let mut probe = flate2::read::GzDecoder::new(&mut f);
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
    f.seek(SeekFrom::Start(0))?;
    let r: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    dst.mkdir_all(into, 0o755)?;
    let opts = berth_fsutil::untar::UntarOpts { no_overwrite_dir_non_dir: false, owner: o.owner.as_ref().map(|w| (w.uid, w.gid)) };
    berth_fsutil::untar::untar(dst, into, r, &opts).map_err(io_err)?;
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
