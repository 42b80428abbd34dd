//! Secrets and configs inside a task's container. The agent gives each task that uses
//! any a tmpfs of its own (`<root>/run/swarm-files/<task>`, mode 0700, nosuid, nodev,
//! noexec), writes each referenced secret or config there from the cluster's store,
//! and bind-mounts each file read-only at its target: `/run/secrets/<name>` for a
//! secret, `/<name>` for a config (Docker's defaults; an absolute name is the path).
//! Secrets are never written to disk in clear: the store is encrypted at rest and this
//! is RAM. The tmpfs goes with the task.

use crate::cluster::Cluster;
use crate::model::{BlobRecord, TaskRecord};
use base64::Engine;
use bus_schema::BusError;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

/// Docker's limit on a secret's or config's size (500 KiB) bounds each file; the tmpfs
/// holds them all.
const MAX_FILE: usize = 500 * 1024;

pub fn task_dir(root: &Path, task_id: &str) -> PathBuf {
    root.join(task_id)
}

struct Want {
    data: Vec<u8>,
    target: String,
    uid: u32,
    gid: u32,
    mode: u32,
}

fn want(b: &BlobRecord, name: Option<&str>, uid: Option<&str>, gid: Option<&str>, mode: Option<u32>, default_dir: &str, kind: &str) -> Result<Want, BusError> {
    let data = base64::engine::general_purpose::STANDARD.decode(&b.data).map_err(|e| BusError::internal(format!("{kind} {}: {e}", b.id)))?;
    if data.len() > MAX_FILE {
        return Err(BusError::invalid(format!("{kind} {} is larger than {MAX_FILE} bytes", b.name)));
    }
    let name = name.filter(|n| !n.is_empty()).unwrap_or(&b.name);
    let target = if name.starts_with('/') { name.to_string() } else { format!("{default_dir}{name}") };
    if target.split('/').any(|p| p == "..") {
        return Err(BusError::invalid(format!("invalid {kind} target {target}")));
    }
    let num = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(|s| s.parse::<u32>().map_err(|_| BusError::invalid(format!("invalid {kind} file owner {s}")))).transpose();
    Ok(Want { data, target, uid: num(uid)?.unwrap_or(0), gid: num(gid)?.unwrap_or(0), mode: mode.unwrap_or(0o444) & 0o7777 })
}

/// Write the task's secrets and configs into its tmpfs; the binds for its container
/// (none when it uses neither).
pub fn prepare(c: &Cluster, root: &Path, t: &TaskRecord) -> Result<Vec<String>, BusError> {
    let cs = t.spec.container_spec.clone().unwrap_or_default();
    let mut wants = Vec::new();
    for s in cs.secrets.clone().unwrap_or_default() {
        let id = s.secret_id.clone().unwrap_or_default();
        let (b, _) = c.t.secrets.get(&id).ok_or_else(|| BusError::not_found(format!("secret {id} not found")))?;
        let f = s.file.clone().unwrap_or_default();
        wants.push(want(&b, f.name.as_deref(), f.uid.as_deref(), f.gid.as_deref(), f.mode, "/run/secrets/", "secret")?);
    }
    for s in cs.configs.clone().unwrap_or_default() {
        let id = s.config_id.clone().unwrap_or_default();
        let (b, _) = c.t.configs.get(&id).ok_or_else(|| BusError::not_found(format!("config {id} not found")))?;
        let Some(f) = s.file.clone() else { continue }; // a runtime config (credential spec): nothing to mount
        wants.push(want(&b, f.name.as_deref(), f.uid.as_deref(), f.gid.as_deref(), f.mode, "/", "config")?);
    }
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    let dir = task_dir(root, &t.id);
    release(root, &t.id); // a leftover of an earlier attempt
    let io = |e: std::io::Error| BusError::internal(format!("task files of {}: {e}", t.id));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let size = wants.iter().map(|w| w.data.len() + 4096).sum::<usize>() + 4096;
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        Some(format!("mode=0700,size={size}").as_str()),
    )
    .map_err(|e| BusError::internal(format!("tmpfs for the files of task {}: {e}", t.id)))?;
    let mut binds = Vec::new();
    for (i, w) in wants.iter().enumerate() {
        // numbered names: a target's name is the container's business, not the host's
        let src = dir.join(i.to_string());
        std::fs::write(&src, &w.data).map_err(io)?;
        chown(&src, Some(w.uid), Some(w.gid)).map_err(io)?;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(w.mode)).map_err(io)?;
        binds.push(format!("{}:{}:ro", src.display(), w.target));
    }
    Ok(binds)
}

/// Unmount and remove a task's tmpfs, if it has one.
pub fn release(root: &Path, task_id: &str) {
    let dir = task_dir(root, task_id);
    if dir.exists() {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Every task's tmpfs (the node leaves the swarm).
pub fn release_all(root: &Path) {
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            release(root, &e.file_name().to_string_lossy());
        }
    }
    let _ = std::fs::remove_dir(root);
}
