//! vfs: every snapshot is a full copy of its parent in `<home>/dir/<id>`. Slow and
//! space-hungry, but it works on any filesystem.

use std::path::{Path, PathBuf};

use super::{
    check_opts, Capabilities, CommitOpts, DiffSource, Driver, DriverError, Info, Kind, MetaStore,
    Mount, Result, Usage, Whiteouts, WholeDirs,
};

/// A snapshot's parent copied into it with everything a layer carries (devices and
/// xattrs included), walked by descriptors like every other copy of the engine.
fn copy_layer(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let (s, d) = (std::fs::File::open(src)?, std::fs::File::open(dst)?);
    berth_fsutil::copy::Copier::new(berth_fsutil::copy::CopyOpts {
        devices: true,
        xattrs: true,
        one_filesystem: true,
        ..Default::default()
    })
    .copy_dir(s.as_fd(), d.as_fd())
}

pub struct Vfs {
    home: PathBuf,
    meta: MetaStore,
}

impl Vfs {
    pub fn open(home: PathBuf, opts: &[String]) -> Result<Vfs> {
        check_opts("vfs", opts, &["size"])?;
        let dirs = home.join("dir");
        std::fs::create_dir_all(&dirs)
            .map_err(DriverError::io(format!("creating {}", dirs.display())))?;
        let meta = MetaStore::open(home.join("snapshots"))?;
        let d = Vfs { home, meta };
        d.cleanup_orphans();
        Ok(d)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.home.join("dir").join(id)
    }

    fn cleanup_orphans(&self) {
        let ids = self.meta.ids();
        if let Ok(rd) = std::fs::read_dir(self.home.join("dir")) {
            for e in rd.flatten() {
                if !ids.contains(&*e.file_name().to_string_lossy()) {
                    let _ = crate::util::remove_tree(&e.path());
                }
            }
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
        let dir = self.dir(&info.id);
        let res = (|| {
            std::fs::create_dir(&dir)
                .map_err(DriverError::io(format!("creating snapshot {key}")))?;
            if let Some(p) = parent {
                let pi = self.meta.get(p)?;
                copy_layer(&self.dir(&pi.id), &dir)
                .map_err(DriverError::io(format!("copying {p} into snapshot {key}")))?;
            } else {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(DriverError::io(format!("creating snapshot {key}")))?;
            }
            self.meta.persist(&info)
        })();
        if let Err(e) = res {
            let _ = crate::util::remove_tree(&dir);
            self.meta.unreserve(key);
            return Err(e);
        }
        Ok(info)
    }

    /// The shared whole-directory snapshot logic over this driver's directories.
    fn whole(&self) -> WholeDirs<'_> {
        WholeDirs {
            driver: "vfs",
            meta: &self.meta,
            base: self.home.join("dir"),
        }
    }
}

impl Driver for Vfs {
    fn name(&self) -> &'static str {
        "vfs"
    }
    fn home(&self) -> &Path {
        &self.home
    }
    fn status(&self) -> Vec<[String; 2]> {
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
        crate::util::remove_tree(&self.dir(&info.id))
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
