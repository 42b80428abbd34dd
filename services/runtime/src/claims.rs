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

/// Open and lock the claim file at `path`, retrying when a [`prune`] removed the file
/// between our open and our lock (the locked inode must still be the one at `path`,
/// or what we write would go to an unlinked file and the claim would be lost).
fn open_locked(path: &Path, create: bool) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let f = match std::fs::OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path) {
            Ok(f) => f,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // SAFETY: flock on an fd we own; released when `f` closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let held = f.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => return Ok(Some(f)),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create {
                    continue;
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The owner (node id, data root) a claim file names, if any.
fn owner(f: &mut std::fs::File) -> std::io::Result<Option<(String, PathBuf)>> {
    let mut text = String::new();
    f.rewind()?;
    f.read_to_string(&mut text)?;
    let mut it = text.lines();
    Ok(match (it.next(), it.next()) {
        (Some(n), Some(r)) => Some((n.to_string(), PathBuf::from(r))),
        _ => None,
    })
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
    let mut f = open_locked(&d.join(name.replace('/', "%")), true)?.expect("created");
    if let Some((owner, owner_root)) = owner(&mut f)? {
        if owner != node && alive(&owner, &owner_root) {
            return Ok(Err(Taken { kind: kind.to_string(), name: name.to_string(), node: owner, root: owner_root }));
        }
        if owner == node && owner_root == root {
            return Ok(Ok(()));
        }
    }
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(format!("{node}\n{}\n", root.display()).as_bytes())?;
    Ok(Ok(()))
}

/// Delete the claims of `kind` whose nodes are gone (their data root no longer holds
/// their id), so that a host that ran many nodes (tests, reinstalls) does not keep a
/// file for each forever. Each file is removed under its lock; a claimer that opened
/// it before sees the inode unlinked and opens a fresh one ([`open_locked`]).
/// Returns how many were removed.
pub fn prune(dir: &Path, kind: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(dir.join(kind)) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let path = e.path();
        let Ok(Some(mut f)) = open_locked(&path, false) else { continue };
        let dead = match owner(&mut f) {
            Ok(Some((node, root))) => !alive(&node, &root),
            Ok(None) => true,
            Err(_) => false,
        };
        if dead && std::fs::remove_file(&path).is_ok() {
            n += 1;
        }
    }
    n
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
    let pruned = prune(dir, "cgroup-parent");
    if pruned > 0 {
        tracing::debug!(pruned, "removed the cgroup-parent claims of nodes that are gone");
    }
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

    #[test]
    fn claims_of_nodes_that_are_gone_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        let claims = d.path().join("claims");
        let (a, b) = (node(d.path(), "aaa"), node(d.path(), "bbb"));
        assert_eq!(cgroup_parent(&claims, None, None, "aaa", &a).unwrap(), "berth");
        assert_eq!(cgroup_parent(&claims, None, None, "bbb", &b).unwrap(), "berth-bbb");
        let files = |c: &Path| std::fs::read_dir(c.join("cgroup-parent")).unwrap().count();
        assert_eq!(files(&claims), 2);
        // both alive: nothing pruned
        assert_eq!(prune(&claims, "cgroup-parent"), 0);
        std::fs::remove_dir_all(&b).unwrap();
        // a malformed (empty) claim is garbage too
        std::fs::write(claims.join("cgroup-parent/junk"), "").unwrap();
        assert_eq!(prune(&claims, "cgroup-parent"), 2);
        assert_eq!(files(&claims), 1);
        // the live one still holds `berth`
        let c = node(d.path(), "ccc");
        assert_eq!(cgroup_parent(&claims, None, None, "ccc", &c).unwrap(), "berth-ccc");
    }

    #[test]
    fn a_claim_races_a_prune_and_is_never_lost() {
        // claimers and pruners in parallel on one name: every claim that returned Ok
        // must be readable afterwards while its node lives
        let d = tempfile::tempdir().unwrap();
        let claims = std::sync::Arc::new(d.path().join("claims"));
        let live = node(d.path(), "live");
        let dead_root = d.path().join("dead");
        for i in 0..300 {
            let name = format!("x{i}");
            let _ = claim(&claims, "cgroup-parent", &name, "dead", &dead_root);
            let t = std::thread::spawn({
                let claims = claims.clone();
                move || prune(&claims, "cgroup-parent")
            });
            assert_eq!(claim(&claims, "cgroup-parent", &name, "live", &live).unwrap(), Ok(()));
            t.join().unwrap();
            let text = std::fs::read_to_string(claims.join("cgroup-parent").join(&name)).unwrap();
            assert!(text.starts_with("live\n"), "{text:?}");
        }
    }
}
