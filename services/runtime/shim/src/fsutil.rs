//! Paths inside a container's rootfs.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Resolves `unsafe_path` inside `root` as if `root` were `/`: symlinks (absolute or
/// relative) and `..` never leave it.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut cur = PathBuf::new();
    let mut queue: VecDeque<PathBuf> = unsafe_path
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        match c.components().next() {
            None
            | Some(Component::RootDir)
            | Some(Component::CurDir)
            | Some(Component::Prefix(_)) => continue,
            Some(Component::ParentDir) => {
                cur.pop();
            }
            Some(Component::Normal(name)) => {
                let full = root.join(&cur).join(name);
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.file_type().is_symlink() => {
                        links += 1;
                        if links > 255 {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidInput,
                                "too many levels of symbolic links",
                            ));
                        }
                        let target = fs::read_link(&full)?;
                        if target.is_absolute() {
                            cur = PathBuf::new();
                        }
                        for (i, tc) in target.components().enumerate() {
                            queue.insert(i, PathBuf::from(tc.as_os_str()));
                        }
                    }
                    _ => cur.push(name),
                }
            }
        }
    }
    Ok(root.join(cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("b", r.join("a/rel")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/abs/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(secure_join(r, Path::new("/a/b/up/x")).unwrap(), r.join("x"));
        assert_eq!(secure_join(r, Path::new("/../../x")).unwrap(), r.join("x"));
        assert_eq!(
            secure_join(r, Path::new("a/rel/c")).unwrap(),
            r.join("a/b/c")
        );
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(secure_join(r, Path::new("/loop")).is_err());
    }
}
