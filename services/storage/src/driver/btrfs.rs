//! btrfs: every snapshot is a subvolume in `<home>/subvolumes/<id>`; a child is a
//! btrfs snapshot of its parent (copy-on-write, instant). Needs the data root on btrfs.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{
    check_opts, Capabilities, CommitOpts, DiffSource, Driver, DriverError, Info, Kind, MetaStore,
    Mount, Result, Usage, Whiteouts, WholeDirs,
};

pub struct Btrfs {
    home: PathBuf,
    meta: MetaStore,
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123683E;
const VOL_ARGS_SIZE: u64 = 4096;
const fn iow(nr: u64) -> u64 {
    (1 << 30) | (VOL_ARGS_SIZE << 16) | (0x94 << 8) | nr
}
const BTRFS_IOC_SNAP_CREATE: u64 = iow(1);
const BTRFS_IOC_SUBVOL_CREATE: u64 = iow(14);
const BTRFS_IOC_SNAP_DESTROY: u64 = iow(15);

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

impl Btrfs {
    pub fn open(home: PathBuf, opts: &[String]) -> Result<Btrfs> {
        check_opts("btrfs", opts, &["size", "min_space"])?;
        let parent = home.parent().unwrap_or(Path::new("/")).to_path_buf();
        std::fs::create_dir_all(&parent)
            .map_err(DriverError::io(format!("creating {}", parent.display())))?;
        let st = nix::sys::statfs::statfs(&parent)
            .map_err(|e| DriverError::io(format!("statfs {}", parent.display()))(e.into()))?;
        if st.filesystem_type().0 as i64 != BTRFS_SUPER_MAGIC {
            return Err(DriverError::Prerequisites(format!(
                "prerequisites for driver not satisfied (wrong filesystem?): {} is not on btrfs",
                parent.display()
            )));
        }
        let subs = home.join("subvolumes");
        std::fs::create_dir_all(&subs)
            .map_err(DriverError::io(format!("creating {}", subs.display())))?;
        let meta = MetaStore::open(home.join("snapshots"))?;
        let d = Btrfs { home, meta };
        d.cleanup_orphans();
        Ok(d)
    }

    fn subvols(&self) -> PathBuf {
        self.home.join("subvolumes")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.subvols().join(id)
    }

    fn cleanup_orphans(&self) {
        let ids = self.meta.ids();
        if let Ok(rd) = std::fs::read_dir(self.subvols()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !ids.contains(&n) {
                    let _ = self.destroy(&n);
                }
            }
        }
    }

    fn ioctl_named(&self, req: u64, src_fd: i64, name: &str) -> std::io::Result<()> {
        let dir = std::fs::File::open(self.subvols())?;
        let mut args = VolArgs {
            fd: src_fd,
            name: [0; 4088],
        };
        let nb = name.as_bytes();
        if nb.len() >= args.name.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "name too long",
            ));
        }
        args.name[..nb.len()].copy_from_slice(nb);
        let r = unsafe { libc::ioctl(dir.as_raw_fd(), req as _, &mut args as *mut VolArgs) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn destroy(&self, id: &str) -> std::io::Result<()> {
        let p = self.dir(id);
        if !p.exists() {
            return Ok(());
        }
        // A subvolume's root inode is 256; a plain directory (a half-made one) is removed as such.
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&p)?.ino() != 256 {
            return crate::util::remove_tree(&p);
        }
        match self.ioctl_named(BTRFS_IOC_SNAP_DESTROY, 0, id) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn create(&self, key: &str, parent: Option<&str>, kind: Kind) -> Result<Info> {
        let info = Info {
            name: key.to_string(),
            parent: parent.map(str::to_string),
            kind,
            id: crate::util::random_id(),
            created: crate::util::now_unix_nanos(),
        };
        self.meta.reserve(&info)?;
        let res = (|| {
            match parent {
                Some(p) => {
                    let pi = self.meta.get(p)?;
                    let src = std::fs::File::open(self.dir(&pi.id))
                        .map_err(DriverError::io(format!("opening {p}")))?;
                    self.ioctl_named(BTRFS_IOC_SNAP_CREATE, src.as_raw_fd() as i64, &info.id)
                        .map_err(DriverError::io(format!("snapshotting {p} as {key}")))?;
                }
                None => {
                    self.ioctl_named(BTRFS_IOC_SUBVOL_CREATE, 0, &info.id)
                        .map_err(DriverError::io(format!("creating subvolume for {key}")))?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        self.dir(&info.id),
                        std::fs::Permissions::from_mode(0o755),
                    )
                    .map_err(DriverError::io(format!("creating subvolume for {key}")))?;
                }
            }
            self.meta.persist(&info)
        })();
        if let Err(e) = res {
            let _ = self.destroy(&info.id);
            self.meta.unreserve(key);
            return Err(e);
        }
        Ok(info)
    }

    /// The shared whole-directory snapshot logic over this driver's directories.
    fn whole(&self) -> WholeDirs<'_> {
        WholeDirs {
            driver: "btrfs",
            meta: &self.meta,
            base: self.subvols(),
        }
    }
}

impl Driver for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }
    fn home(&self) -> &Path {
        &self.home
    }
    fn status(&self) -> Vec<[String; 2]> {
        // Moby prints build/library versions of libbtrfs when linked; without it, nothing.
        vec![]
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            whiteouts: Whiteouts::Apply,
            independent_layers: false,
        }
    }
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        let i = self.create(key, parent, Kind::Active)?;
        self.whole().mounts_of(&i)
    }
    fn view(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let i = self.create(key, Some(parent), Kind::View)?;
        self.whole().mounts_of(&i)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.whole().mounts(key)
    }
    fn commit(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        self.whole().commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> Result<()> {
        let info = self.meta.remove(key)?;
        self.destroy(&info.id)
            .map_err(DriverError::io(format!("removing snapshot {key}")))
    }
    fn stat(&self, key: &str) -> Result<Info> {
        self.meta.get(key)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.whole().usage(key)
    }
    fn walk(&self, f: &mut dyn FnMut(&Info)) -> Result<()> {
        self.whole().walk(f)
    }
    fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        self.whole().upper_dir(key)
    }
    fn diff_source(&self, key: &str) -> Result<DiffSource> {
        self.whole().diff_source(key)
    }
    fn mount_target(&self, key: &str) -> Result<PathBuf> {
        self.whole().mount_target(key)
    }
}
