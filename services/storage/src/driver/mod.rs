//! Storage drivers in the shape of containerd's snapshotter.
//!
//! A driver keeps snapshots in one keyspace. Lifecycle:
//! * [`Driver::prepare`] makes an *active* snapshot `key` on top of a committed
//!   `parent` (or empty) and answers the mounts that show it read-write;
//! * [`Driver::view`] makes a read-only *view* of a committed parent;
//! * [`Driver::commit`] turns an active snapshot into a *committed* one named `name`
//!   (the active key is gone afterwards); only committed snapshots can be parents;
//! * [`Driver::remove`] deletes a snapshot that has no children;
//! * [`Driver::stat`], [`Driver::usage`], [`Driver::walk`] inspect.
//!
//! Drivers know nothing about tar: layer apply (`apply.rs`) writes into
//! [`Driver::upper_dir`] and diffs (`diff.rs`) read [`Driver::diff_source`].
//! Every driver runs the same conformance suite (`tests/conformance.rs`).

pub mod btrfs;
mod meta;
pub mod overlay2;
pub mod vfs;

pub use meta::MetaStore;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// What a driver records about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Kind,
    /// The driver's own directory id for this snapshot.
    pub id: String,
    /// Unix nanoseconds.
    pub created: i64,
}

/// One mount as mount(2) takes it; `typ` `bind` or `overlay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// How deletions are recorded when a diff is applied into [`Driver::upper_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// overlayfs: a 0/0 character device per deleted name, `trusted.overlay.opaque=y`
    /// on opaque directories. The upper directory holds only this layer's changes.
    Overlay,
    /// The upper directory is a full copy of the parent: deletions are applied to it.
    Apply,
}

/// Where a diff of a snapshot comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffSource {
    /// The snapshot's own changes in overlay form, and its lower layers (top first)
    /// to tell additions from modifications.
    Native {
        upper: PathBuf,
        lowers: Vec<PathBuf>,
    },
    /// Two full trees to compare.
    Naive {
        dir: PathBuf,
        parent: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub whiteouts: Whiteouts,
    /// A layer's upper directory does not depend on its parent: it can be applied
    /// before the parent exists and attached with [`CommitOpts::parent`].
    pub independent_layers: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOpts {
    /// Attach the snapshot to this committed parent at commit time (drivers with
    /// `independent_layers` only; the active snapshot must have been prepared without one).
    pub parent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InUse(String),
    #[error("storage driver \"{0}\" is not supported by this engine or kernel; use one of: overlay2, btrfs, vfs")]
    Unsupported(String),
    #[error("{0}")]
    Prerequisites(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl DriverError {
    pub fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> DriverError {
        let context = context.to_string();
        move |source| DriverError::Io { context, source }
    }
}

impl From<DriverError> for bus_schema::BusError {
    fn from(e: DriverError) -> Self {
        use bus_schema::BusError as B;
        match &e {
            DriverError::NotFound(_) => B::not_found(e.to_string()),
            DriverError::AlreadyExists(_) | DriverError::InUse(_) => B::conflict(e.to_string()),
            DriverError::Invalid(_) => B::invalid(e.to_string()),
            DriverError::Unsupported(_) | DriverError::Prerequisites(_) => {
                B::not_implemented(e.to_string())
            }
            DriverError::Io { .. } => B::internal(e.to_string()),
        }
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

pub trait Driver: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// `<root>/storage/<driver>`.
    fn home(&self) -> &Path;
    /// `DriverStatus` lines of `docker info`, as Moby prints them for this driver.
    fn status(&self) -> Vec<[String; 2]>;
    fn capabilities(&self) -> Capabilities;

    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>>;
    fn view(&self, key: &str, parent: &str) -> Result<Vec<Mount>>;
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    fn commit(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()>;
    fn remove(&self, key: &str) -> Result<()>;
    fn stat(&self, key: &str) -> Result<Info>;
    /// Disk used by the snapshot's own data (not its parents').
    fn usage(&self, key: &str) -> Result<Usage>;
    fn walk(&self, f: &mut dyn FnMut(&Info)) -> Result<()>;

    /// The directory that holds an active snapshot's own changes, writable without a
    /// mount (overlay2: its `diff`; vfs, btrfs: the full tree).
    fn upper_dir(&self, key: &str) -> Result<PathBuf>;
    /// Where a diff of the snapshot against its parent is read from.
    fn diff_source(&self, key: &str) -> Result<DiffSource>;
    /// Where to mount an active snapshot's mounts when they need mounting; the
    /// single `bind` mount of vfs and btrfs is used in place instead.
    fn mount_target(&self, key: &str) -> Result<PathBuf>;
}

/// What vfs and btrfs share: each snapshot is one whole directory (a copy, or a btrfs
/// snapshot, of its parent's), `<base>/<id>`, mounted with a bind.
pub(crate) struct WholeDirs<'a> {
    pub driver: &'static str,
    pub meta: &'a MetaStore,
    pub base: PathBuf,
}

impl WholeDirs<'_> {
    fn dir(&self, id: &str) -> PathBuf {
        self.base.join(id)
    }
    pub fn mounts_of(&self, info: &Info) -> Result<Vec<Mount>> {
        let ro = match info.kind {
            Kind::Active => "rw",
            Kind::View => "ro",
            Kind::Committed => {
                return Err(DriverError::Invalid(format!(
                    "snapshot {} is committed: it has no mounts",
                    info.name
                )))
            }
        };
        Ok(vec![Mount {
            typ: "bind".into(),
            source: self.dir(&info.id).to_string_lossy().into_owned(),
            options: vec!["rbind".into(), ro.into()],
        }])
    }
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.mounts_of(&self.meta.get(key)?)
    }
    /// A snapshot holds its whole tree: it cannot be given a parent at commit.
    pub fn commit(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        if opts.parent.is_some() {
            return Err(DriverError::Invalid(format!(
                "{} snapshots cannot be attached to a parent at commit",
                self.driver
            )));
        }
        self.meta.commit(name, key, None).map(|_| ())
    }
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let info = self.meta.get(key)?;
        tree_usage(&self.dir(&info.id)).map_err(DriverError::io(format!("measuring {key}")))
    }
    pub fn walk(&self, f: &mut dyn FnMut(&Info)) -> Result<()> {
        for i in self.meta.all() {
            f(&i);
        }
        Ok(())
    }
    pub fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        let info = self.meta.get(key)?;
        if info.kind != Kind::Active {
            return Err(DriverError::Invalid(format!("snapshot {key} is not active")));
        }
        Ok(self.dir(&info.id))
    }
    pub fn diff_source(&self, key: &str) -> Result<DiffSource> {
        let info = self.meta.get(key)?;
        let parent = match &info.parent {
            Some(p) => Some(self.dir(&self.meta.get(p)?.id)),
            None => None,
        };
        Ok(DiffSource::Naive {
            dir: self.dir(&info.id),
            parent,
        })
    }
    pub fn mount_target(&self, key: &str) -> Result<PathBuf> {
        Ok(self.dir(&self.meta.get(key)?.id))
    }
}

/// Open the driver `name` under `<root>/storage/<name>`; `opts` are daemon.json's
/// `storage-opts` (`key=value`).
pub fn open(name: &str, storage_root: &Path, opts: &[String]) -> Result<Arc<dyn Driver>> {
    let home = storage_root.join(name);
    match name {
        "overlay2" => Ok(Arc::new(overlay2::Overlay2::open(home, opts)?)),
        "vfs" => Ok(Arc::new(vfs::Vfs::open(home, opts)?)),
        "btrfs" => Ok(Arc::new(btrfs::Btrfs::open(home, opts)?)),
        "aufs" | "devicemapper" | "zfs" | "overlay" | "fuse-overlayfs" => Err(DriverError::Unsupported(name.into())),
        _ => Err(DriverError::Invalid(format!(
            "error initializing graphdriver: driver not supported: {name}; use one of: overlay2, btrfs, vfs"
        ))),
    }
}

/// Refuse storage-opts a driver does not know (Moby: `overlay2: unknown option x`).
pub(crate) fn check_opts(driver: &str, opts: &[String], known: &[&str]) -> Result<()> {
    for o in opts {
        let (k, _) = o
            .split_once('=')
            .ok_or_else(|| DriverError::Invalid(format!("unable to parse storage-opt: {o}")))?;
        let k = k.trim().to_ascii_lowercase();
        let k = k
            .strip_prefix(&format!("{driver}."))
            .unwrap_or(&k)
            .to_string();
        if !known.contains(&k.as_str()) {
            return Err(DriverError::Invalid(format!(
                "{driver}: unknown option {k}"
            )));
        }
    }
    Ok(())
}

/// Mount `mounts` on `target` (overlay, or a bind).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for m in mounts {
        mount_one(m, target)?;
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    if m.typ == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    let data = data.join(",");
    let ctx = || format!("mounting {} on {}", m.typ, target.display());
    if m.typ == "overlay" && data.len() >= page_size() - 1 {
        return mount_overlay_fsconfig(&m.options, flags.contains(MsFlags::MS_RDONLY), target);
    }
    let data_opt = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    mount(
        Some(m.source.as_str()),
        target,
        Some(m.typ.as_str()),
        flags,
        data_opt,
    )
    .map_err(|e| DriverError::Io {
        context: ctx(),
        source: e.into(),
    })?;
    if m.typ == "bind" && flags.contains(MsFlags::MS_RDONLY) {
        // A bind mount ignores MS_RDONLY until remounted.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| DriverError::Io {
            context: ctx(),
            source: e.into(),
        })?;
    }
    Ok(())
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as usize)
        .unwrap_or(4096)
}

/// Long lower lists do not fit mount(2)'s one page of data: the new mount API takes
/// one `lowerdir+` per layer (Linux 6.8+).
fn mount_overlay_fsconfig(options: &[String], ro: bool, target: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    let err = |what: &str| DriverError::Io {
        context: format!("mounting overlay on {} ({what})", target.display()),
        source: std::io::Error::last_os_error(),
    };
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| DriverError::Invalid(format!("invalid mount option {s:?}")))
    };
    unsafe {
        let name = cstr("overlay")?;
        let fsfd = libc::syscall(
            libc::SYS_fsopen,
            name.as_ptr(),
            libc::FSOPEN_CLOEXEC as libc::c_uint,
        ) as i32;
        if fsfd < 0 {
            return Err(err("fsopen"));
        }
        let fsfd = OwnedFd::from_raw_fd(fsfd);
        let set = |k: &str, v: Option<&str>| -> Result<()> {
            let kc = cstr(k)?;
            let r = match v {
                Some(v) => {
                    let vc = cstr(v)?;
                    libc::syscall(
                        libc::SYS_fsconfig,
                        fsfd_raw(&fsfd),
                        libc::FSCONFIG_SET_STRING,
                        kc.as_ptr(),
                        vc.as_ptr(),
                        0,
                    )
                }
                None => libc::syscall(
                    libc::SYS_fsconfig,
                    fsfd_raw(&fsfd),
                    libc::FSCONFIG_SET_FLAG,
                    kc.as_ptr(),
                    std::ptr::null::<libc::c_char>(),
                    0,
                ),
            };
            if r < 0 {
                return Err(err(&format!("fsconfig {k}")));
            }
            Ok(())
        };
        for o in options {
            match o.split_once('=') {
                Some(("lowerdir", v)) => {
                    for l in v.split(':') {
                        set("lowerdir+", Some(l))?;
                    }
                }
                Some((k, v)) => set(k, Some(v))?,
                None if o == "ro" || o == "rw" => {}
                None => set(o, None)?,
            }
        }
        if libc::syscall(
            libc::SYS_fsconfig,
            fsfd_raw(&fsfd),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        ) < 0
        {
            return Err(err("create"));
        }
        let attrs = if ro { libc::MOUNT_ATTR_RDONLY } else { 0 };
        let mfd = libc::syscall(
            libc::SYS_fsmount,
            fsfd_raw(&fsfd),
            libc::FSMOUNT_CLOEXEC,
            attrs,
        ) as i32;
        if mfd < 0 {
            return Err(err("fsmount"));
        }
        let mfd = OwnedFd::from_raw_fd(mfd);
        let empty = cstr("")?;
        let tgt = cstr(&target.to_string_lossy())?;
        if libc::syscall(
            libc::SYS_move_mount,
            fsfd_raw(&mfd),
            empty.as_ptr(),
            libc::AT_FDCWD,
            tgt.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        ) < 0
        {
            return Err(err("move_mount"));
        }
    }
    Ok(())
}

fn fsfd_raw(fd: &std::os::fd::OwnedFd) -> libc::c_int {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Unmount `target` (lazily, as Moby does); not mounted is fine.
pub fn unmount(target: &Path) -> Result<()> {
    use nix::mount::{umount2, MntFlags};
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(DriverError::Io {
            context: format!("unmounting {}", target.display()),
            source: e.into(),
        }),
    }
}

/// Disk usage of a tree (bytes of allocated blocks as `du`, and inodes), not crossing
/// into other filesystems and counting hard-linked inodes once.
pub fn tree_usage(root: &Path) -> std::io::Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let top = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(u),
        Err(e) => return Err(e),
    };
    let dev = top.dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if m.dev() != dev {
            continue;
        }
        if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
            continue;
        }
        u.inodes += 1;
        u.size += (m.blocks() * 512) as i64;
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(u)
}

/// Sum of regular-file sizes in a tree (Docker's "size" of a layer or rw layer).
pub fn tree_content_size(root: &Path) -> std::io::Result<i64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0i64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        } else if (m.is_file() || m.file_type().is_symlink())
            && (m.nlink() == 1 || seen.insert(m.ino()))
        {
            total += m.size() as i64;
        }
    }
    Ok(total)
}
