//! Host-wide names a node takes, so that several nodes share a host without sharing a
//! cgroup parent: a claim is a file `/run/berth/claims/<kind>/<name>` holding the
//! claiming node's id and data root. A name is free when nobody claimed it, when the
//! claim is this node's, or when the claiming node is gone (its data root no longer
//! holds its node id: the root was removed or given to another node). Claims live on
//! tmpfs, like the cgroups they stand for, so a reboot frees them all.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const DIR: &str = "/run/berth/claims";

/// The default cgroup parent of the first node on a host (Docker's is `docker`).
pub const DEFAULT_CGROUP_PARENT: &str = "berth";

/// A name another node holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name} belongs to berth node {node} (data root {root})")]
pub struct Taken {
    pub kind: String,
    pub name: String,
    pub node: String,
    pub root: PathBuf,
}

fn alive(node: &str, root: &Path) -> bool {
    std::fs::read_to_string(root.join("node-id")).is_ok_and(|s| s.trim() == node)
}

/// Claim `name` of `kind` for `node` (data root `root`) under `dir`.
pub fn claim(
    dir: &Path,
    kind: &str,
    name: &str,
    node: &str,
    root: &Path,
) -> std::io::Result<Result<(), Taken>> {
    let d = dir.join(kind);
    std::fs::create_dir_all(&d)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(d.join(name.replace('/', "%")))?;
    // SAFETY: flock on an fd we own; released when `f` closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let mut it = text.lines();
    if let (Some(owner), Some(owner_root)) = (it.next(), it.next()) {
        if owner != node && alive(owner, Path::new(owner_root)) {
            return Ok(Err(Taken {
                kind: kind.to_string(),
                name: name.to_string(),
                node: owner.to_string(),
                root: PathBuf::from(owner_root),
            }));
        }
        if owner == node && Path::new(owner_root) == root {
            return Ok(Ok(()));
        }
    }
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(format!("{node}\n{}\n", root.display()).as_bytes())?;
    Ok(Ok(()))
}

/// The node's cgroup parent: the one daemon.json names (refused when another node
/// holds it), else the one the node had before (its containers live there), else
/// `berth` for the first node on the host and `berth-<node>` for the others. When
/// the claims cannot be written (not root), the configured or default name as before.
pub fn cgroup_parent(
    dir: &Path,
    configured: Option<&str>,
    previous: Option<&str>,
    node: &str,
    root: &Path,
) -> Result<String, Taken> {
    let try_claim = |name: &str| match claim(dir, "cgroup-parent", name, node, root) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the cgroup parent's claim");
            Ok(())
        }
    };
    if let Some(c) = configured {
        try_claim(c)?;
        return Ok(c.to_string());
    }
    if let Some(p) = previous.filter(|p| !p.is_empty()) {
        if try_claim(p).is_ok() {
            return Ok(p.to_string());
        }
    }
    match try_claim(DEFAULT_CGROUP_PARENT) {
        Ok(()) => Ok(DEFAULT_CGROUP_PARENT.to_string()),
        Err(_) => {
            let own = format!("{DEFAULT_CGROUP_PARENT}-{node}");
            try_claim(&own)?;
            Ok(own)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(base: &Path, id: &str) -> PathBuf {
        let root = base.join(id);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("node-id"), format!("{id}\n")).unwrap();
        root
    }

    #[test]
    fn the_first_node_gets_berth_the_next_ones_their_own() {
        let d = tempfile::tempdir().unwrap();
        let claims = d.path().join("claims");
        let (a, b) = (node(d.path(), "aaa"), node(d.path(), "bbb"));
        assert_eq!(cgroup_parent(&claims, None, None, "aaa", &a).unwrap(), "berth");
        assert_eq!(cgroup_parent(&claims, None, None, "bbb", &b).unwrap(), "berth-bbb");
        // stable across restarts
        assert_eq!(cgroup_parent(&claims, None, Some("berth"), "aaa", &a).unwrap(), "berth");
        assert_eq!(cgroup_parent(&claims, None, Some("berth-bbb"), "bbb", &b).unwrap(), "berth-bbb");
        // a name in daemon.json another node holds is refused, naming the node
        let e = cgroup_parent(&claims, Some("berth"), None, "bbb", &b).unwrap_err();
        assert_eq!(e.node, "aaa");
        assert_eq!(
            e.to_string(),
            format!("cgroup-parent berth belongs to berth node aaa (data root {})", a.display())
        );
        assert_eq!(cgroup_parent(&claims, Some("x/y"), None, "bbb", &b).unwrap(), "x/y");
        // a node whose root is gone holds nothing; one that had its own keeps it
        std::fs::remove_dir_all(&a).unwrap();
        assert_eq!(cgroup_parent(&claims, None, Some("berth-bbb"), "bbb", &b).unwrap(), "berth-bbb");
        assert_eq!(cgroup_parent(&claims, None, None, "ccc", &node(d.path(), "ccc")).unwrap(), "berth");
    }
}
