//! Where each service keeps its state under the data root. Each service owns its
//! folder and writes nothing elsewhere.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// nats-server config, JetStream store and credentials.
    pub fn bus(&self) -> PathBuf {
        self.root.join("bus")
    }
    pub fn creds(&self, user: &str) -> PathBuf {
        self.bus().join("creds").join(user)
    }
    /// Runtime files of the node: pids, the nats URL, service logs.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn node_id_file(&self) -> PathBuf {
        self.root.join("node-id")
    }
    pub fn service(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// A running managed plugin's directory (the images service's): `sock/`, bound
    /// at `/run/docker/plugins` in the plugin (its socket appears there), and
    /// `propagated-mount/`, bound at the config's PropagatedMount. The storage
    /// service reads it to reach volume-driver plugins.
    pub fn plugin_run(&self, id: &str) -> PathBuf {
        self.images().join("plugins-run").join(id)
    }
    pub fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }
    pub fn runtime(&self) -> PathBuf {
        self.root.join("runtime")
    }
    pub fn network(&self) -> PathBuf {
        self.root.join("network")
    }
    pub fn builder(&self) -> PathBuf {
        self.root.join("builder")
    }
    pub fn swarm(&self) -> PathBuf {
        self.root.join("swarm")
    }
}

/// The temporary sibling `path` is written to before it is renamed over it.
fn tmp_beside(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("f"),
        std::process::id()
    ))
}

/// Replaces `path` with `data` atomically (readers see the old or the new content)
/// but without waiting for the disk: for files nothing needs after a machine crash.
pub fn write_replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_beside(path);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Write a file atomically: a temporary sibling, fsync, rename, fsync the directory.
/// Readers see the old content or the new one, never half of it.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = tmp_beside(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(path.parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_whole_file_and_leave_no_temporary() {
        let d = std::env::temp_dir().join(format!("berth-paths-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("config.json");
        std::fs::write(&f, "a much longer old content").unwrap();
        write_replace(&f, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
        write_atomic(&f, b"newer").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "newer");
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
