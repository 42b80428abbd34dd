//! Small helpers shared by the storage modules: atomic JSON files, random ids, time.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

/// Write `v` as JSON to `path` through a uniquely named temporary sibling and a rename:
/// readers (and a restarted service after a SIGKILL) see the old file or the new one,
/// never half of it. `durable` also fsyncs the file and the directory, for state that
/// must survive a power loss (committed layers); container layers skip it for speed.
pub fn write_json<T: Serialize>(path: &Path, v: &T, durable: bool) -> std::io::Result<()> {
    let data = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    write_file_atomic(path, &data, durable)
}

pub fn write_file_atomic(path: &Path, data: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("f"),
        random_hex(6)
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    if durable {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let b = std::fs::read(path)?;
    serde_json::from_slice(&b).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("getrandom");
    hex::encode(b)
}

/// A random 64-hex id, as Docker's `stringid.GenerateRandomID`.
pub use berth_rules::id::new_id as random_id;

pub fn now_unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Remove a directory tree if it exists.
pub fn remove_tree(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Create a directory (and parents); an existing one is fine.
pub fn mkdir_all(p: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(p)?;
    Ok(p.to_path_buf())
}

/// Filesystem type names as Docker prints `Backing Filesystem` (moby `fsmagic`).
pub fn backing_fs(path: &Path) -> String {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            let magic = s.filesystem_type().0 as u64;
            match magic {
                0xEF53 => "extfs",
                0x9123683E => "btrfs",
                0x58465342 => "xfs",
                0x01021994 => "tmpfs",
                0x794C7630 => "overlayfs",
                0x2FC12FC1 => "zfs",
                0x6969 => "nfs",
                0x65735546 => "fuseblk",
                0xF15F => "ecryptfs",
                0x73717368 => "squashfs",
                0x858458f6 => "ramfs",
                _ => "<unknown>",
            }
            .to_string()
        }
        Err(_) => "<unknown>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_json_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_json(&p, &vec![1, 2, 3], false).unwrap();
        write_json(&p, &vec![4], true).unwrap();
        let v: Vec<i32> = read_json(&p).unwrap();
        assert_eq!(v, vec![4]);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }
}
