//! vfs: every snapshot is a full copy of its parent in `<home>/dir/<id>`. Slow and
//! space-hungry, but it works on any filesystem.

use std::path::{Path, PathBuf};

use super::{
    check_opts, Capabilities, CommitOpts, DiffSource, Driver, DriverError, Info, Kind, MetaStore,
    Mount, Result, Usage, Whiteouts,
};
use crate::copy::{copy_tree, CopyOpts};

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
                copy_tree(
                    &self.dir(&pi.id),
                    &dir,
                    CopyOpts {
                        devices: true,
                        xattrs: true,
                    },
                )
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

    fn mounts_of(&self, info: &Info) -> Result<Vec<Mount>> {
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
        self.mounts_of(&i)
    }
    fn view(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let i = self.create(key, Some(parent), Kind::View)?;
        self.mounts_of(&i)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let i = self.meta.get(key)?;
        self.mounts_of(&i)
    }
    fn commit(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        if opts.parent.is_some() {
            return Err(DriverError::Invalid(
                "vfs snapshots cannot be attached to a parent at commit".into(),
            ));
        }
        self.meta.commit(name, key, None).map(|_| ())
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
        let info = self.meta.get(key)?;
        super::tree_usage(&self.dir(&info.id)).map_err(DriverError::io(format!("measuring {key}")))
    }
    fn walk(&self, f: &mut dyn FnMut(&Info)) -> Result<()> {
        for i in self.meta.all() {
            f(&i);
        }
        Ok(())
    }
    fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        let info = self.meta.get(key)?;
        if info.kind != Kind::Active {
            return Err(DriverError::Invalid(format!(
                "snapshot {key} is not active"
            )));
        }
        Ok(self.dir(&info.id))
    }
    fn diff_source(&self, key: &str) -> Result<DiffSource> {
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
    fn mount_target(&self, key: &str) -> Result<PathBuf> {
        Ok(self.dir(&self.meta.get(key)?.id))
    }
}
