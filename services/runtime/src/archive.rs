//! `docker cp` through the archive API (HEAD/GET/PUT). The work runs in the container's
//! view (its rootfs with its volumes, binds and network files on top, assembled in a
//! private mount namespace: berth_fsutil::view), every path resolved by the kernel
//! inside it (openat2 RESOLVE_IN_ROOT) and every operation done on descriptors, so a
//! container racing symlinks and renames can never make it read or write the host.

use std::ffi::OsString;
use futures_util::StreamExt as _;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_fsutil::at::{self, Stat};
use berth_fsutil::tree::TarWriter;
use berth_fsutil::untar::{untar, UntarError, UntarOpts};
use berth_fsutil::view::ViewMount;
use berth_fsutil::InRoot;

use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
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

fn go_mode(mode: u32) -> u32 {
    let mut out = mode & 0o777;
    out |= match mode & libc::S_IFMT {
        libc::S_IFDIR => MODE_DIR,
        libc::S_IFLNK => MODE_SYMLINK,
        libc::S_IFCHR => MODE_DEVICE | MODE_CHARDEV,
        libc::S_IFBLK => MODE_DEVICE,
        libc::S_IFIFO => MODE_PIPE,
        libc::S_IFSOCK => MODE_SOCKET,
        _ => 0,
    };
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

/// The mounts a `docker cp` sees on top of the rootfs, as Moby mounts them for it:
/// volumes and binds (not tmpfs), and the engine's /etc/hostname, /etc/hosts and
/// /etc/resolv.conf once the container has them (unless a mount of the user's is there).
fn view_mounts(c: &Container) -> Vec<ViewMount> {
    let mut out: Vec<ViewMount> = c
        .mounts
        .iter()
        .filter(|m| m.typ != "tmpfs" && !m.source.is_empty())
        .map(|m| ViewMount { source: PathBuf::from(&m.source), destination: clean(&m.destination), read_only: !m.rw })
        .collect();
    let ro = c.host_config.readonly_rootfs.unwrap_or(false);
    for (dst, src) in [("/etc/hostname", &c.hostname_path), ("/etc/hosts", &c.hosts_path), ("/etc/resolv.conf", &c.resolv_path)] {
        if !src.is_empty() && Path::new(src).is_file() && !out.iter().any(|m| m.destination == dst) {
            out.push(ViewMount { source: PathBuf::from(src), destination: dst.into(), read_only: ro });
        }
    }
    out
}

use berth_rules::path::clean_in_root as clean;

fn not_found(path: &str, container: &str) -> BusError {
    BusError::not_found(format!("Could not find the file {path} in container {container}"))
}

fn io_to_bus(e: std::io::Error, path: &str, container: &str) -> BusError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => not_found(path, container),
        Some(libc::EROFS) => BusError::forbidden("mounted volume is marked read-only"),
        _ => BusError::internal(format!("{path}: {e}")),
    }
}

/// The entry a container path names, as (its directory, its name): the directory is
/// resolved by the kernel inside the view, the name is not followed (Moby's
/// `ResolvePath`), except with a trailing `/` or `/.`, where the whole path is
/// followed and the name is `.`.
fn locate(r: &InRoot, path: &str) -> std::io::Result<(OwnedFd, OsString, Stat)> {
    let follow_all = path.len() > 1 && (path.ends_with('/') || path.ends_with("/."));
    let (dir, name) = if follow_all {
        (r.resolve(path)?, OsString::from("."))
    } else {
        let (d, n) = r.parent(path)?;
        (d, OsString::from(n))
    };
    let st = at::lstat(dir.as_fd(), &name)?.ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
    Ok((dir, name, st))
}

fn path_stat(r: &InRoot, path: &str, st: &Stat) -> PathStat {
    let name = match berth_fsutil::components(path).pop() {
        Some(n) if !path.ends_with("/.") => n,
        Some(_) if path.ends_with("/.") => ".".into(),
        _ => "/".into(),
    };
    let link_target = if at::file_type(st) == rustix::fs::FileType::Symlink {
        // Docker's linkTarget is the link fully evaluated inside the container
        r.real_path(path).unwrap_or_default()
    } else {
        String::new()
    };
    PathStat {
        name,
        size: st.st_size,
        mode: go_mode(st.st_mode),
        mtime: berth_rules::clock::rfc3339_nano(st.st_mtime, st.st_mtime_nsec as u32),
        link_target,
    }
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

impl<D: crate::deps::Deps> Runtime<D> {
    /// The container's rootfs mounted by storage and the mounts to show on top.
    async fn view_of(&self, c: &Container) -> Result<(PathBuf, Vec<ViewMount>), BusError> {
        let rootfs = self.storage.rw_layer_mount(RwLayerMount { id: c.id.clone() }).await?.path;
        Ok((PathBuf::from(rootfs), view_mounts(c)))
    }

    async fn unmount_rootfs(&self, id: &str) {
        let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: id.to_string() }).await;
    }

    /// Run `f` in the container's view on a thread of its own (see berth_fsutil::view).
    async fn in_view<T: Send + 'static>(
        rootfs: PathBuf,
        mounts: Vec<ViewMount>,
        f: impl FnOnce(&InRoot) -> Result<T, BusError> + Send + 'static,
    ) -> Result<T, BusError> {
        tokio::task::spawn_blocking(move || berth_fsutil::view::in_view(&rootfs, &mounts, f))
            .await
            .map_err(|e| BusError::internal(e.to_string()))?
            .map_err(|e| BusError::internal(format!("container filesystem: {e}")))?
    }

    pub async fn archive_stat(self: &Arc<Self>, key: &str, path: &str) -> Result<PathStat, BusError> {
        let e = self.find(key)?;
        let c = e.get();
        let (rootfs, mounts) = self.view_of(&c).await?;
        let (p, k) = (path.to_string(), key.to_string());
        let r = Self::in_view(rootfs, mounts, move |r| {
            let (_, _, st) = locate(r, &p).map_err(|err| io_to_bus(err, &p, &k))?;
            Ok(path_stat(r, &p, &st))
        })
        .await;
        self.unmount_rootfs(&c.id).await;
        r
    }

    pub async fn archive_get(self: &Arc<Self>, r: ContainerArchiveGet, resp: berth_bus::Answer<ContainerArchiveGet>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        let (rootfs, mounts) = self.view_of(&c).await?;
        let (st_tx, st_rx) = tokio::sync::oneshot::channel::<Result<PathStat, BusError>>();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let (path, key) = (r.path.clone(), r.id.clone());
        let task = tokio::spawn(Self::in_view(rootfs, mounts, move |root| -> Result<(), BusError> {
            let (dir, name, st) = match locate(root, &path) {
                Ok(x) => x,
                Err(err) => {
                    let _ = st_tx.send(Err(io_to_bus(err, &path, &key)));
                    return Ok(());
                }
            };
            let ps = path_stat(root, &path, &st);
            let arc_name = ps.name.clone();
            if st_tx.send(Ok(ps)).is_err() {
                return Ok(());
            }
            let mut w = TarWriter::new(ChunkWriter { tx, buf: Vec::new() });
            // `path/.` copies the directory's content; otherwise the entry itself by its name
            // `path/.` gives `./` and `./name` entries, as Moby's rebase to "." does; `/` its content
            let contents_only = arc_name == "/";
            let res = if contents_only && at::is_dir(&st) {
                at::open_dir(dir.as_fd(), &name).and_then(|d| w.append_dir_fd(d.as_fd(), &st, Path::new(""), true))
            } else {
                w.append(dir.as_fd(), &name, Path::new(&arc_name), true)
            };
            res.and_then(|_| w.finish()).and_then(|mut inner| inner.flush()).map_err(|err| BusError::internal(format!("archiving {path}: {err}")))
        }));
        let st = match st_rx.await {
            Ok(Ok(st)) => st,
            Ok(Err(err)) => {
                let _ = task.await;
                self.unmount_rootfs(&c.id).await;
                return Err(err);
            }
            Err(_) => {
                let res = task.await;
                self.unmount_rootfs(&c.id).await;
                return Err(match res {
                    Ok(Err(err)) => err,
                    _ => BusError::internal("archiving failed"),
                });
            }
        };
        let mut w = match resp.accept(st).await {
            Ok(w) => w,
            Err(err) => {
                drop(rx);
                let _ = task.await;
                self.unmount_rootfs(&c.id).await;
                return Err(err);
            }
        };
        let mut res = Ok(());
        while let Some(chunk) = rx.recv().await {
            if let Err(err) = w.send(ByteChunk(chunk)).await {
                res = Err(err);
                break;
            }
        }
        drop(rx);
        let built = task.await;
        self.unmount_rootfs(&c.id).await;
        res?;
        match built {
            Ok(Ok(())) => w.end().await,
            Ok(Err(err)) => w.fail(err).await,
            Err(err) => w.fail(BusError::internal(err.to_string())).await,
        }
    }

    pub async fn archive_put(self: &Arc<Self>, r: ContainerArchivePut, resp: berth_bus::Answer<ContainerArchivePut>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        let dest = clean(&r.path);
        let to_volume = c.mounts.iter().any(|m| m.typ != "tmpfs" && (dest == clean(&m.destination) || dest.starts_with(&format!("{}/", clean(&m.destination).trim_end_matches('/')))));
        if c.host_config.readonly_rootfs.unwrap_or(false) && !to_volume {
            return Err(BusError::forbidden("container rootfs is marked read-only"));
        }
        let (rootfs, mounts) = self.view_of(&c).await?;
        // the extraction point must be a directory (its last link followed, as Moby does)
        let (p, k) = (r.path.clone(), r.id.clone());
        let checked = Self::in_view(rootfs.clone(), mounts.clone(), move |root| {
            let fd = root.resolve(&p).map_err(|err| io_to_bus(err, &p, &k))?;
            let st = at::fstat(fd.as_fd()).map_err(|err| io_to_bus(err, &p, &k))?;
            if !at::is_dir(&st) {
                // Moby 20.10 answers 500 here
                return Err(BusError::internal("extraction point is not a directory"));
            }
            if rustix::fs::fstatvfs(&fd).is_ok_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY)) {
                return Err(BusError::forbidden("mounted volume is marked read-only"));
            }
            Ok(())
        })
        .await;
        if let Err(err) = checked {
            self.unmount_rootfs(&c.id).await;
            return Err(err);
        }
        let (w, mut input) = match resp.accept_duplex(()).await {
            Ok(x) => x,
            Err(err) => {
                self.unmount_rootfs(&c.id).await;
                return Err(err);
            }
        };
        // spool the tar (a host file of the runtime's own), then extract it in the view
        let spool = self.dir.join("tmp");
        let _ = std::fs::create_dir_all(&spool);
        let tmp = spool.join(crate::names::new_id());
        let mut recv_err = None;
        let spooled = (|| -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&tmp)?;
            let _ = std::fs::remove_file(&tmp);
            Ok(f)
        })();
        let result = match spooled {
            Err(err) => Err(BusError::internal(format!("spooling the archive: {err}"))),
            Ok(mut f) => {
                while let Some(item) = input.next().await {
                    match item {
                        Ok(ch) => {
                            if let Err(err) = f.write_all(&ch.0) {
                                recv_err = Some(BusError::internal(format!("spooling the archive: {err}")));
                                break;
                            }
                        }
                        Err(err) => {
                            recv_err = Some(err);
                            break;
                        }
                    }
                }
                if let Some(err) = recv_err {
                    Err(err)
                } else {
                    let opts = UntarOpts {
                        no_overwrite_dir_non_dir: r.no_overwrite_dir_non_dir,
                        owner: if r.copy_uid_gid { None } else { Some((0, 0)) },
                    };
                    let (p, k) = (r.path.clone(), r.id.clone());
                    Self::in_view(rootfs, mounts, move |root| {
                        use std::io::Seek;
                        f.seek(std::io::SeekFrom::Start(0)).map_err(|err| BusError::internal(err.to_string()))?;
                        // Moby's untar runs in a child process: its errors are 500s with this prefix
                        untar(root, &p, std::io::BufReader::new(f), &opts).map(|_| ()).map_err(|err| match err {
                            UntarError::Invalid(m) => BusError::internal(format!("Error processing tar file(exit status 1): {m}")),
                            UntarError::Io(ctx, err) => match err.raw_os_error() {
                                Some(libc::EROFS) => BusError::forbidden("mounted volume is marked read-only"),
                                Some(libc::ENOENT) if ctx.starts_with("mkdir") => not_found(&p, &k),
                                _ => BusError::internal(format!("Error processing tar file(exit status 1): {ctx}: {err}")),
                            },
                        })
                    })
                    .await
                }
            }
        };
        self.unmount_rootfs(&c.id).await;
        match result {
            Ok(()) => {
                self.event(&c, Action::ExtractToDir, &[("path", r.path.clone())]).await;
                w.end().await
            }
            Err(err) => w.fail(err).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_modes() {
        assert_eq!(go_mode(libc::S_IFDIR | 0o755), MODE_DIR | 0o755);
        assert_eq!(go_mode(libc::S_IFLNK | 0o777), MODE_SYMLINK | 0o777);
        assert_eq!(go_mode(libc::S_IFREG | 0o4755), MODE_SETUID | 0o755);
        assert_eq!(go_mode(libc::S_IFCHR | 0o666), MODE_DEVICE | MODE_CHARDEV | 0o666);
    }

    #[test]
    fn locates_without_following_the_last_link() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("link")).unwrap();
        let r = InRoot::open(root).unwrap();
        let (_, name, st) = locate(&r, "/link").unwrap();
        assert_eq!(name, "link");
        assert_eq!(at::file_type(&st), rustix::fs::FileType::Symlink);
        assert_eq!(path_stat(&r, "/link", &st).link_target, "/real");
        let (_, name, st) = locate(&r, "/link/").unwrap();
        assert_eq!(name, ".");
        assert!(at::is_dir(&st));
        assert_eq!(path_stat(&r, "/link/.", &st).name, ".");
        assert_eq!(locate(&r, "/nope/x").unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }
}
