//! Secrets and configs inside a task's container. The agent gives each task that uses
//! any a tmpfs of its own (`<root>/run/swarm-files/<task>`, mode 0700, nosuid, nodev,
//! noexec), writes each referenced secret or config there from the cluster's store,
//! and bind-mounts each file read-only at its target: `/run/secrets/<name>` for a
//! secret, `/<name>` for a config (Docker's defaults; an absolute name is the path).
//! Secrets are never written to disk in clear: the store is encrypted at rest and this
//! is RAM. The tmpfs goes with the task.
//!
//! A manager reads the files from its copy of the store. A worker may not read the
//! secrets and configs buckets (its leaf's permissions, [`crate::natsconf`]): it asks the
//! managers ([`fetch`] on `berth.swarm.v1.task_files.<node>`, a subject only that node
//! may publish on), and they answer with the files of that task only, if it is that
//! node's and still to run ([`serve`]), as swarmkit's dispatcher sends a worker the
//! secrets of its assigned tasks only.

use crate::cluster::Cluster;
use crate::model::{BlobRecord, TaskRecord, TaskState};
use base64::Engine;
use bus_schema::BusError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
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

/// The subject on which node `node` asks the managers for its tasks' files.
pub fn subject(node: &str) -> String {
    format!("{}.{ASK}.{node}", bus_schema::swarm::cluster::PREFIX)
}

/// The token of the task files' subjects ([`subject`]).
const ASK: &str = "task_files";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FilesRequest {
    task_id: String,
}

/// The secrets and configs a task references, by ID.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskBlobs {
    pub secrets: HashMap<String, BlobRecord>,
    pub configs: HashMap<String, BlobRecord>,
}

type FilesAnswer = Result<TaskBlobs, String>;

fn referenced(t: &TaskRecord) -> (Vec<String>, Vec<String>) {
    let cs = t.spec.container_spec.clone().unwrap_or_default();
    let secrets = cs.secrets.unwrap_or_default().into_iter().filter_map(|s| s.secret_id).collect();
    let configs = cs.configs.unwrap_or_default().into_iter().filter_map(|s| s.config_id).collect();
    (secrets, configs)
}

/// The files of task `task_id` for node `node`, from a manager's tables: only a task of
/// that node that is still to run gets any.
pub fn files_for(node: &str, task: Option<&TaskRecord>, secret: impl Fn(&str) -> Option<BlobRecord>, config: impl Fn(&str) -> Option<BlobRecord>) -> FilesAnswer {
    let t = task.filter(|t| t.node_id.as_deref() == Some(node) && t.desired_state <= TaskState::Running).ok_or_else(|| "no such task on this node".to_string())?;
    let (ss, cs) = referenced(t);
    let mut out = TaskBlobs::default();
    for id in ss {
        let b = secret(&id).ok_or_else(|| format!("secret {id} not found"))?;
        out.secrets.insert(id, b);
    }
    for id in cs {
        let b = config(&id).ok_or_else(|| format!("config {id} not found"))?;
        out.configs.insert(id, b);
    }
    Ok(out)
}

/// A manager: answer the nodes' requests for their tasks' files (a queue group: one
/// manager answers each). The asking node is the subject's last token, which only
/// that node may publish on.
pub async fn serve(c: Arc<Cluster>) {
    crate::cluster::serve_node_asks(c, ASK, |c: Arc<Cluster>, node: String, r: FilesRequest| async move {
        let task = c.t.tasks.get(&r.task_id).map(|(t, _)| t);
        let a = files_for(&node, task.as_ref(), |id| c.t.secrets.get(id).map(|(b, _)| b), |id| c.t.configs.get(id).map(|(b, _)| b));
        tracing::debug!(node = %node, task = %r.task_id, ok = a.is_ok(), "a node asked for its task's files");
        a
    })
    .await
}

/// The files a task of this node references: from this manager's tables, or asked of
/// the managers by a worker.
pub async fn fetch(c: &Cluster, t: &TaskRecord) -> Result<TaskBlobs, BusError> {
    let (ss, cs) = referenced(t);
    if ss.is_empty() && cs.is_empty() {
        return Ok(TaskBlobs::default());
    }
    let me = c.node_id();
    if c.is_manager() {
        return files_for(&me, Some(t), |id| c.t.secrets.get(id).map(|(b, _)| b), |id| c.t.configs.get(id).map(|(b, _)| b)).map_err(BusError::not_found);
    }
    let ans: FilesAnswer = crate::cluster::ask_managers(c, subject(&me), &FilesRequest { task_id: t.id.clone() }, "the task's secrets and configs").await?;
    ans.map_err(BusError::not_found)
}

/// Write the task's secrets and configs (`blobs`, from [`fetch`]) into its tmpfs; the
/// binds for its container (none when it uses neither).
pub fn prepare(blobs: &TaskBlobs, root: &Path, t: &TaskRecord) -> Result<Vec<String>, BusError> {
    let cs = t.spec.container_spec.clone().unwrap_or_default();
    let mut wants = Vec::new();
    for s in cs.secrets.clone().unwrap_or_default() {
        let id = s.secret_id.clone().unwrap_or_default();
        let b = blobs.secrets.get(&id).ok_or_else(|| BusError::not_found(format!("secret {id} not found")))?;
        let f = s.file.clone().unwrap_or_default();
        wants.push(want(b, f.name.as_deref(), f.uid.as_deref(), f.gid.as_deref(), f.mode, "/run/secrets/", "secret")?);
    }
    for s in cs.configs.clone().unwrap_or_default() {
        let id = s.config_id.clone().unwrap_or_default();
        let b = blobs.configs.get(&id).ok_or_else(|| BusError::not_found(format!("config {id} not found")))?;
        let Some(f) = s.file.clone() else { continue }; // a runtime config (credential spec): nothing to mount
        wants.push(want(b, f.name.as_deref(), f.uid.as_deref(), f.gid.as_deref(), f.mode, "/", "config")?);
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
    if dir.symlink_metadata().is_ok() {
        // every mount stacked there (a leftover under a later attempt's); umount2 on a
        // directory that is no mount point answers EINVAL and ends the loop
        for _ in 0..16 {
            if nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW).is_err() {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Every task's tmpfs (the node leaves the swarm, or is in none).
pub fn release_all(root: &Path) {
    sweep(root, &std::collections::HashSet::new());
    let _ = std::fs::remove_dir(root);
}

/// The tmpfs of every task not in `live` (the tasks of this node the store still
/// has): what a swarm service SIGKILLed before it could release them left mounted.
/// Run before any task is prepared. Returns the task IDs released.
pub fn sweep(root: &Path, live: &std::collections::HashSet<String>) -> Vec<String> {
    let mut gone = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if !live.contains(&id) {
                release(root, &id);
                gone.push(id);
            }
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_keeps_the_live_tasks_files() {
        let d = tempfile::tempdir().unwrap();
        for id in ["live", "dead"] {
            std::fs::create_dir(d.path().join(id)).unwrap();
            std::fs::write(d.path().join(id).join("0"), "x").unwrap();
        }
        let live = ["live".to_string()].into_iter().collect();
        assert_eq!(sweep(d.path(), &live), vec!["dead".to_string()]);
        assert!(d.path().join("live/0").exists());
        assert!(!d.path().join("dead").exists());
    }

    fn task(node: &str, desired: TaskState, secrets: &[&str], configs: &[&str]) -> TaskRecord {
        let secrets: Vec<_> = secrets.iter().map(|id| serde_json::json!({"SecretID": id, "SecretName": id})).collect();
        let configs: Vec<_> = configs.iter().map(|id| serde_json::json!({"ConfigID": id, "ConfigName": id})).collect();
        serde_json::from_value(serde_json::json!({
            "id": "t1", "created_at": "", "updated_at": "", "service_id": "s", "service_name": "s",
            "slot": 1, "node_id": node, "spec_version": 1, "desired_state": desired,
            "spec": {"ContainerSpec": {"Image": "busybox", "Secrets": secrets, "Configs": configs}},
            "status": {"state": "running", "timestamp": "", "message": ""}
        }))
        .unwrap()
    }

    fn blob(id: &str) -> Option<BlobRecord> {
        serde_json::from_value(serde_json::json!({"id": id, "created_at": "", "updated_at": "", "name": id, "data": "eA=="})).ok()
    }

    #[test]
    fn a_node_gets_the_files_of_its_own_live_tasks_only() {
        let known = |id: &str| if id.starts_with("missing") { None } else { blob(id) };
        let t = task("w1", TaskState::Running, &["s1"], &["c1"]);
        let got = files_for("w1", Some(&t), known, known).unwrap();
        assert_eq!(got.secrets.keys().collect::<Vec<_>>(), vec!["s1"]);
        assert_eq!(got.configs.keys().collect::<Vec<_>>(), vec!["c1"]);
        // another node's task, a task to shut down, no task: nothing
        assert!(files_for("w2", Some(&t), known, known).is_err());
        assert!(files_for("w1", Some(&task("w1", TaskState::Shutdown, &["s1"], &[])), known, known).is_err());
        assert!(files_for("w1", None, known, known).is_err());
        assert_eq!(files_for("w1", Some(&task("w1", TaskState::Running, &["missing"], &[])), known, known).unwrap_err(), "secret missing not found");
    }

    #[test]
    fn the_files_come_from_the_blobs_given() {
        let d = tempfile::tempdir().unwrap();
        let t = task("w1", TaskState::Running, &["s1"], &[]);
        let e = prepare(&TaskBlobs::default(), d.path(), &t).unwrap_err();
        assert_eq!(e.message, "secret s1 not found");
    }
}
