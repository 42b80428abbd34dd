//! `docker cp` through the archive API: paths are resolved inside the container's
//! view (its rootfs, with volumes and binds on top), symlinks never lead out of it.

use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bus::Responder;
use bus_schema::runtime::{ContainerArchiveGet, ContainerArchivePut, PathStat};
use bus_schema::storage::{RwLayerMount, RwLayerUnmount};
use bus_schema::stream::{ByteChunk, MAX_CHUNK};
use bus_schema::BusError;

use crate::engine::Runtime;
use crate::state::Container;

/// Go's os.FileMode type bits, as Docker's stat header carries them.
const MODE_DIR: u32 = 1 << 31;
const MODE_SYMLINK: u32 = 1 << 27;
const MODE_DEVICE: u32 = 1 << 26;
const MODE_PIPE: u32 = 1 << 25;
const MODE_SOCKET: u32 = 1 << 24;
const MODE_SETUID: u32 = 1 << 23;
const MODE_SETGID: u32 = 1 << 22;
const MODE_CHARDEV: u32 = 1 << 21;
const MODE_STICKY: u32 = 1 << 20;

fn go_mode(m: &std::fs::Metadata) -> u32 {
    let mode = m.mode();
    let mut out = mode & 0o777;
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        out |= MODE_DIR;
    } else if ft.is_symlink() {
        out |= MODE_SYMLINK;
    } else if ft.is_char_device() {
        out |= MODE_DEVICE | MODE_CHARDEV;
    } else if ft.is_block_device() {
        out |= MODE_DEVICE;
    } else if ft.is_fifo() {
        out |= MODE_PIPE;
    } else if ft.is_socket() {
        out |= MODE_SOCKET;
    }
    if mode & 0o4000 != 0 {
        out |= MODE_SETUID;
    }
    if mode & 0o2000 != 0 {
        out |= MODE_SETGID;
    }
    if mode & 0o1000 != 0 {
        out |= MODE_STICKY;
    }
    out
}

/// The container's filesystem view: the rootfs and the mounts on top of it.
struct View {
    rootfs: PathBuf,
    mounts: Vec<(String, PathBuf)>,
}

impl View {
    fn new(rootfs: &str, c: &Container) -> View {
        let mut mounts: Vec<(String, PathBuf)> = c
            .mounts
            .iter()
            .filter(|m| m.typ != "tmpfs" && !m.source.is_empty())
            .map(|m| (m.destination.clone(), PathBuf::from(&m.source)))
            .collect();
        mounts.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
        View { rootfs: PathBuf::from(rootfs), mounts }
    }

    /// (base dir on the host, path relative to it) for a container path.
    fn split(&self, path: &str) -> (PathBuf, String) {
        let clean = clean(path);
        for (dst, src) in &self.mounts {
            if clean == *dst {
                return (src.clone(), "/".into());
            }
            if let Some(rest) = clean.strip_prefix(&format!("{}/", dst.trim_end_matches('/'))) {
                return (src.clone(), format!("/{rest}"));
            }
        }
        (self.rootfs.clone(), clean)
    }

    /// Host path of `path`, following symlinks (inside the view) in all but the last part.
    fn resolve(&self, path: &str) -> std::io::Result<PathBuf> {
        let (base, rel) = self.split(path);
        // resolve the parent inside the rootfs (a link may cross into a mount; keep to the base)
        berth_fsutil::resolve_in_root(&base, &rel)
    }
}

fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    format!("/{}", out.join("/"))
}

fn stat_of(host: &Path, container_path: &str) -> Result<PathStat, BusError> {
    let md = std::fs::symlink_metadata(host)
        .map_err(|_| BusError::not_found(format!("Could not find the file {container_path} in container")))?;
    let link_target = if md.file_type().is_symlink() {
        std::fs::read_link(host).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        String::new()
    };
    let name = Path::new(container_path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    Ok(PathStat {
        name,
        size: md.len() as i64,
        mode: go_mode(&md),
        mtime: berth_config::clock::rfc3339(md.mtime(), md.mtime_nsec() as u32),
        link_target,
    })
}

/// A writer that sends what it gets as bus chunks (from a blocking thread).
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= MAX_CHUNK {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let b = std::mem::take(&mut self.buf);
            self.tx.blocking_send(b).map_err(|_| std::io::Error::other("reader gone"))?;
        }
        Ok(())
    }
}

impl Runtime {
    async fn with_rootfs<T>(&self, id: &str, f: impl std::future::Future<Output = Result<T, BusError>>) -> Result<T, BusError> {
        let r = f.await;
        let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: id.to_string() }).await;
        r
    }

    pub async fn archive_stat(self: &Arc<Self>, key: &str, path: &str) -> Result<PathStat, BusError> {
        let e = self.find(key)?;
        let c = e.get();
        let rootfs = self.storage.rw_layer_mount(RwLayerMount { id: c.id.clone() }).await?.path;
        self.with_rootfs(&c.id, async {
            let view = View::new(&rootfs, &c);
            let host = view.resolve(path).map_err(|err| BusError::invalid(err.to_string()))?;
            stat_of(&host, path)
        })
        .await
    }

    pub async fn archive_get(self: &Arc<Self>, r: ContainerArchiveGet, resp: Responder<ContainerArchiveGet>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        let rootfs = self.storage.rw_layer_mount(RwLayerMount { id: c.id.clone() }).await?.path;
        let view = View::new(&rootfs, &c);
        let prep = (|| {
            let host = view.resolve(&r.path).map_err(|err| BusError::invalid(err.to_string()))?;
            let st = stat_of(&host, &r.path)?;
            Ok::<_, BusError>((host, st))
        })();
        let (host, st) = match prep {
            Ok(x) => x,
            Err(err) => {
                let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: c.id.clone() }).await;
                return Err(err);
            }
        };
        let mut w = resp.accept(st.clone()).await?;
        // `path/.` copies the directory's content; otherwise the entry itself by its name
        let contents_only = r.path.ends_with("/.") || r.path == ".";
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let name = st.name.clone();
        let task = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut b = tar::Builder::new(ChunkWriter { tx, buf: Vec::new() });
            b.follow_symlinks(false);
            let md = std::fs::symlink_metadata(&host)?;
            if md.is_dir() {
                if contents_only {
                    for entry in std::fs::read_dir(&host)? {
                        let entry = entry?;
                        let p = entry.path();
                        let n = entry.file_name();
                        if entry.file_type()?.is_dir() {
                            b.append_dir_all(&n, &p)?;
                        } else {
                            b.append_path_with_name(&p, &n)?;
                        }
                    }
                } else {
                    b.append_dir_all(&name, &host)?;
                }
            } else {
                b.append_path_with_name(&host, &name)?;
            }
            let mut inner = b.into_inner()?;
            inner.flush()
        });
        let mut res = Ok(());
        while let Some(chunk) = rx.recv().await {
            if let Err(err) = w.send(ByteChunk(chunk)).await {
                res = Err(err);
                break;
            }
        }
        drop(rx);
        let built = task.await;
        let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: c.id.clone() }).await;
        res?;
        match built {
            Ok(Ok(())) => w.end().await,
            Ok(Err(err)) => w.fail(BusError::internal(format!("archiving {}: {err}", r.path))).await,
            Err(err) => w.fail(BusError::internal(err.to_string())).await,
        }
    }

    pub async fn archive_put(self: &Arc<Self>, r: ContainerArchivePut, resp: Responder<ContainerArchivePut>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        if c.host_config.readonly_rootfs.unwrap_or(false) && c.mounts.iter().all(|m| !clean(&r.path).starts_with(&m.destination)) {
            return Err(BusError::forbidden("container rootfs is marked read-only"));
        }
        let rootfs = self.storage.rw_layer_mount(RwLayerMount { id: c.id.clone() }).await?.path;
        let view = View::new(&rootfs, &c);
        let (base, rel) = view.split(&r.path);
        let dest = match berth_fsutil::resolve_in_root_follow(&base, &rel) {
            Ok(d) => d,
            Err(err) => {
                let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: c.id.clone() }).await;
                return Err(BusError::invalid(err.to_string()));
            }
        };
        match std::fs::metadata(&dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: c.id.clone() }).await;
                return Err(BusError::invalid("extraction point is not a directory"));
            }
            Err(_) => {
                let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: c.id.clone() }).await;
                return Err(BusError::not_found(format!("Could not find the file {} in container {}", r.path, c.name)));
            }
        }
        let (w, mut input) = resp.accept_duplex(()).await?;
        // spool the tar, then extract it entry by entry inside the view
        let spool = self.dir.join("tmp");
        let _ = std::fs::create_dir_all(&spool);
        let tmp = spool.join(crate::names::new_id());
        let mut recv_err = None;
        {
            let mut f = std::fs::File::create(&tmp)?;
            while let Some(item) = input.next().await {
                match item {
                    Ok(ch) => f.write_all(&ch.0)?,
                    Err(err) => {
                        recv_err = Some(err);
                        break;
                    }
                }
            }
        }
        let result = if let Some(err) = recv_err {
            Err(err)
        } else {
            let (tmp2, base2, rel2) = (tmp.clone(), base.clone(), rel.clone());
            let no_over = r.no_overwrite_dir_non_dir;
            let keep_owner = r.copy_uid_gid;
            tokio::task::spawn_blocking(move || extract(&tmp2, &base2, &rel2, no_over, keep_owner))
                .await
                .map_err(|err| BusError::internal(err.to_string()))
                .and_then(|x| x)
        };
        let _ = std::fs::remove_file(&tmp);
        let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: c.id.clone() }).await;
        match result {
            Ok(()) => {
                self.event(&c, Action::ExtractToDir, &[("path", r.path.clone())]).await;
                w.end().await
            }
            Err(err) => w.fail(err).await,
        }
    }
}

/// Extract a tar at `rel` under `base`, resolving every entry's parent inside `base`.
fn extract(tar_path: &Path, base: &Path, rel: &str, no_overwrite_dir_non_dir: bool, keep_owner: bool) -> Result<(), BusError> {
    let f = std::fs::File::open(tar_path)?;
    let mut a = tar::Archive::new(f);
    a.set_preserve_permissions(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(false);
    for entry in a.entries().map_err(|e| BusError::invalid(format!("Error processing tar file: {e}")))? {
        let mut entry = entry.map_err(|e| BusError::invalid(format!("Error processing tar file: {e}")))?;
        let p = entry.path().map_err(|e| BusError::invalid(e.to_string()))?.to_string_lossy().into_owned();
        if p.split('/').any(|c| c == "..") {
            return Err(BusError::invalid(format!("Error processing tar file: invalid path {p:?}")));
        }
        let full = format!("{}/{}", rel.trim_end_matches('/'), p.trim_start_matches("./").trim_start_matches('/'));
        let full = clean(&full);
        let (parent, name) = match full.rsplit_once('/') {
            Some((pa, n)) => (if pa.is_empty() { "/".to_string() } else { pa.to_string() }, n.to_string()),
            None => ("/".into(), full.clone()),
        };
        if name.is_empty() {
            continue;
        }
        berth_fsutil::mkdir_in_root(base, &parent).map_err(|e| BusError::invalid(e.to_string()))?;
        let dir = berth_fsutil::resolve_in_root_follow(base, &parent).map_err(|e| BusError::invalid(e.to_string()))?;
        let target = dir.join(&name);
        let existing = std::fs::symlink_metadata(&target).ok();
        let is_dir_entry = entry.header().entry_type().is_dir();
        if let Some(m) = &existing {
            if no_overwrite_dir_non_dir && m.is_dir() != is_dir_entry {
                let msg = if m.is_dir() {
                    format!("cannot overwrite directory \"{full}\" with non-directory \"{p}\"")
                } else {
                    format!("cannot overwrite non-directory \"{full}\" with directory \"{p}\"")
                };
                return Err(BusError::invalid(msg));
            }
            if m.file_type().is_symlink() || (!m.is_dir() && !is_dir_entry) {
                let _ = std::fs::remove_file(&target);
            }
        }
        if is_dir_entry && existing.as_ref().is_some_and(|m| m.is_dir()) {
            continue;
        }
        // hard links must point inside the extraction
        if entry.header().entry_type().is_hard_link() {
            let lt = entry.link_name().ok().flatten().map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
            if lt.split('/').any(|c| c == "..") || lt.starts_with('/') {
                return Err(BusError::invalid(format!("Error processing tar file: invalid hardlink {lt:?}")));
            }
            let src = berth_fsutil::resolve_in_root(base, &clean(&format!("{}/{}", rel.trim_end_matches('/'), lt)))
                .map_err(|e| BusError::invalid(e.to_string()))?;
            std::fs::hard_link(&src, &target)?;
            continue;
        }
        entry.unpack(&target).map_err(|e| BusError::invalid(format!("Error processing tar file: {e}")))?;
        if !keep_owner {
            let _ = std::os::unix::fs::lchown(&target, Some(0), Some(0));
        } else {
            let (u, g) = (entry.header().uid().unwrap_or(0) as u32, entry.header().gid().unwrap_or(0) as u32);
            let _ = std::os::unix::fs::lchown(&target, Some(u), Some(g));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn extracts_inside_only() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("root");
        std::fs::create_dir_all(base.join("tmp")).unwrap();
        // a container symlink pointing at the host's /etc must not be followed out
        std::os::unix::fs::symlink("/etc", base.join("tmp/evil")).unwrap();
        let tarp = d.path().join("t.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&tarp).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "evil/x.txt", &b"hi\n"[..]).unwrap();
            b.finish().unwrap();
        }
        extract(&tarp, &base, "/tmp", false, false).unwrap();
        assert!(base.join("etc/x.txt").exists(), "resolved inside the root");
        assert!(!std::path::Path::new("/etc/x.txt").exists());
    }
}
