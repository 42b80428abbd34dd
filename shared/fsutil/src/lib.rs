//! Paths inside a container's root filesystem, as the engine walks them on the host:
//! symlinks are resolved as the container would see them, so nothing a container
//! wrote (a link to `/etc` or `../../..`) can send the engine outside the root.

use std::path::{Path, PathBuf};

/// Make `rel` (an absolute path inside the container) a directory under `rootfs`,
/// creating missing parts; symlinks are resolved inside the rootfs, never out of it.
pub fn mkdir_in_root(rootfs: &Path, rel: &str) -> std::io::Result<()> {
    mkdir_walk(rootfs, Vec::new(), rel, 0).map(|_| ())
}

fn push_components(base: &mut Vec<String>, path: &str) {
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                base.pop();
            }
            p => base.push(p.to_string()),
        }
    }
}

fn mkdir_walk(rootfs: &Path, mut cur: Vec<String>, rel: &str, depth: u32) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::DirBuilderExt;
    if depth > 40 {
        return Err(std::io::Error::other("too many levels of symbolic links"));
    }
    let mut parts = Vec::new();
    push_components(&mut parts, rel);
    for part in parts {
        let here = |c: &Vec<String>| c.iter().fold(rootfs.to_path_buf(), |p, x| p.join(x));
        let mut next = cur.clone();
        next.push(part);
        let path = here(&next);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?.to_string_lossy().to_string();
                let base = if target.starts_with('/') { Vec::new() } else { cur.clone() };
                cur = mkdir_walk(rootfs, base, &target, depth + 1)?;
            }
            Ok(m) if m.is_dir() => cur = next,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} is not a directory", path.display()),
                ))
            }
            Err(_) => {
                std::fs::DirBuilder::new().mode(0o755).create(&path)?;
                cur = next;
            }
        }
    }
    Ok(cur)
}

/// The host path of `rel` inside `rootfs`, resolving symlinks in every component but
/// the last within the root. Missing components are allowed (nothing is created).
pub fn resolve_in_root(rootfs: &Path, rel: &str) -> std::io::Result<PathBuf> {
    let mut parts = Vec::new();
    push_components(&mut parts, rel);
    let Some(last) = parts.pop() else { return Ok(rootfs.to_path_buf()) };
    let parent = resolve_dir(rootfs, Vec::new(), &parts.join("/"), 0)?;
    Ok(parent.iter().fold(rootfs.to_path_buf(), |p, x| p.join(x)).join(last))
}

/// Like [`resolve_in_root`], following a symlink in the last component too.
pub fn resolve_in_root_follow(rootfs: &Path, rel: &str) -> std::io::Result<PathBuf> {
    let mut parts = Vec::new();
    push_components(&mut parts, rel);
    let p = resolve_dir(rootfs, Vec::new(), &parts.join("/"), 0)?;
    Ok(p.iter().fold(rootfs.to_path_buf(), |p, x| p.join(x)))
}

fn resolve_dir(rootfs: &Path, mut cur: Vec<String>, rel: &str, depth: u32) -> std::io::Result<Vec<String>> {
    if depth > 40 {
        return Err(std::io::Error::other("too many levels of symbolic links"));
    }
    let mut parts = Vec::new();
    push_components(&mut parts, rel);
    for part in parts {
        let mut next = cur.clone();
        next.push(part);
        let path = next.iter().fold(rootfs.to_path_buf(), |p, x| p.join(x));
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?.to_string_lossy().to_string();
                let base = if target.starts_with('/') { Vec::new() } else { cur.clone() };
                cur = resolve_dir(rootfs, base, &target, depth + 1)?;
            }
            _ => cur = next,
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn mkdir_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/../../../../tmp", root.join("evil")).unwrap();
        mkdir_in_root(&root, "/evil/x/y").unwrap();
        assert!(root.join("tmp/x/y").is_dir());
        mkdir_in_root(&root, "/app/work").unwrap();
        assert!(root.join("app/work").is_dir());
        assert!(mkdir_in_root(&root, "/etc/../../..").is_ok());
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    #[test]
    fn resolves_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink("/../../real", root.join("link")).unwrap();
        assert_eq!(resolve_in_root(&root, "/link/f").unwrap(), root.join("real/f"));
        assert_eq!(resolve_in_root(&root, "/link").unwrap(), root.join("link"));
        assert_eq!(resolve_in_root_follow(&root, "/link").unwrap(), root.join("real"));
        assert_eq!(resolve_in_root(&root, "/../../etc/passwd").unwrap(), root.join("etc/passwd"));
    }
}
