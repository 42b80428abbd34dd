//! overlay2, laid out as Docker lays it out:
//! `<home>/<id>/{diff,link,lower,work,merged}` and `<home>/l/<short>` -> `../<id>/diff`,
//! so the lower list of a deep image stays short. A layer's `diff` holds only its own
//! changes (whiteouts as 0/0 character devices), which makes it independent of its
//! parent: layers of one image can be applied in parallel and attached at commit.

use std::path::{Path, PathBuf};

use super::{
    check_opts, Capabilities, CommitOpts, DiffSource, Driver, DriverError, Info, Kind, MetaStore,
    Mount, Result, Usage, Whiteouts,
};

pub struct Overlay2 {
    home: PathBuf,
    meta: MetaStore,
    backing: String,
}

const LINK_LEN: usize = 26;

impl Overlay2 {
    pub fn open(home: PathBuf, opts: &[String]) -> Result<Overlay2> {
        check_opts("overlay2", opts, &["size", "override_kernel_check"])?;
        for d in [home.clone(), home.join("l")] {
            std::fs::create_dir_all(&d)
                .map_err(DriverError::io(format!("creating {}", d.display())))?;
        }
        if !overlay_supported() {
            return Err(DriverError::Prerequisites(
                "driver not supported: overlay2 (the kernel has no overlay filesystem)".into(),
            ));
        }
        let backing = crate::util::backing_fs(&home);
        if backing == "overlayfs" {
            return Err(DriverError::Prerequisites(
                "overlay2 is not supported over overlayfs; use the vfs driver here".into(),
            ));
        }
        let meta = MetaStore::open(home.join("snapshots"))?;
        let d = Overlay2 {
            home,
            meta,
            backing,
        };
        d.cleanup_orphans();
        Ok(d)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.home.join(id)
    }

    /// Directories without a record are leftovers of an interrupted prepare or remove.
    fn cleanup_orphans(&self) {
        let ids = self.meta.ids();
        let Ok(rd) = std::fs::read_dir(&self.home) else {
            return;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) && !ids.contains(&n) {
                let dir = e.path();
                let _ = super::unmount(&dir.join("merged"));
                if let Ok(link) = std::fs::read_to_string(dir.join("link")) {
                    let _ = std::fs::remove_file(self.home.join("l").join(link.trim()));
                }
                let _ = crate::util::remove_tree(&dir);
            }
        }
        // Short links whose layer is gone.
        if let Ok(rd) = std::fs::read_dir(self.home.join("l")) {
            for e in rd.flatten() {
                if std::fs::metadata(e.path()).is_err() {
                    let _ = std::fs::remove_file(e.path());
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
        let res = self.create_dirs(&info);
        if let Err(e) = res {
            let _ = crate::util::remove_tree(&self.dir(&info.id));
            self.meta.unreserve(key);
            return Err(e);
        }
        Ok(info)
    }

    fn create_dirs(&self, info: &Info) -> Result<()> {
        let dir = self.dir(&info.id);
        let io = |what: &str| DriverError::io(format!("creating {what} of snapshot {}", info.name));
        std::fs::create_dir(&dir).map_err(io("its directory"))?;
        if info.kind != Kind::View {
            std::fs::create_dir(dir.join("diff")).map_err(io("diff"))?;
            let link = short_link();
            std::os::unix::fs::symlink(
                format!("../{}/diff", info.id),
                self.home.join("l").join(&link),
            )
            .map_err(io("link"))?;
            std::fs::write(dir.join("link"), &link).map_err(io("link"))?;
            std::fs::create_dir(dir.join("work")).map_err(io("work"))?;
        }
        std::fs::create_dir(dir.join("merged")).map_err(io("merged"))?;
        if let Some(p) = &info.parent {
            std::fs::write(dir.join("lower"), self.lower_of(p)?).map_err(io("lower"))?;
        }
        self.meta.persist(info)
    }

    /// The `lower` file content for a child of `parent`: parent's link, then its lowers.
    fn lower_of(&self, parent: &str) -> Result<String> {
        let pi = self.meta.get(parent)?;
        let pdir = self.dir(&pi.id);
        let link = std::fs::read_to_string(pdir.join("link"))
            .map_err(DriverError::io(format!("reading link of {parent}")))?;
        let mut s = format!("l/{}", link.trim());
        match std::fs::read_to_string(pdir.join("lower")) {
            Ok(l) if !l.trim().is_empty() => {
                s.push(':');
                s.push_str(l.trim());
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DriverError::Io {
                    context: format!("reading lower of {parent}"),
                    source: e,
                })
            }
        }
        Ok(s)
    }

    fn lowers(&self, info: &Info) -> Result<Vec<PathBuf>> {
        match std::fs::read_to_string(self.dir(&info.id).join("lower")) {
            Ok(l) => Ok(l
                .trim()
                .split(':')
                .filter(|s| !s.is_empty())
                .map(|s| self.home.join(s))
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(DriverError::Io {
                context: format!("reading lower of {}", info.name),
                source: e,
            }),
        }
    }

    fn mounts_of(&self, info: &Info) -> Result<Vec<Mount>> {
        let dir = self.dir(&info.id);
        let lowers = self.lowers(info)?;
        let s = |p: &Path| p.to_string_lossy().into_owned();
        match info.kind {
            Kind::Active if lowers.is_empty() => Ok(vec![Mount {
                typ: "bind".into(),
                source: s(&dir.join("diff")),
                options: vec!["rbind".into(), "rw".into()],
            }]),
            Kind::Active => Ok(vec![Mount {
                typ: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!(
                        "lowerdir={}",
                        lowers.iter().map(|p| s(p)).collect::<Vec<_>>().join(":")
                    ),
                    format!("upperdir={}", s(&dir.join("diff"))),
                    format!("workdir={}", s(&dir.join("work"))),
                ],
            }]),
            Kind::View if lowers.len() == 1 => Ok(vec![Mount {
                typ: "bind".into(),
                source: s(&lowers[0]),
                options: vec!["rbind".into(), "ro".into()],
            }]),
            Kind::View => Ok(vec![Mount {
                typ: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!(
                        "lowerdir={}",
                        lowers.iter().map(|p| s(p)).collect::<Vec<_>>().join(":")
                    ),
                    "ro".into(),
                ],
            }]),
            Kind::Committed => Err(DriverError::Invalid(format!(
                "snapshot {} is committed: it has no mounts",
                info.name
            ))),
        }
    }
}

fn short_link() -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut b = [0u8; LINK_LEN];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter()
        .map(|x| ALPHA[(*x as usize) % ALPHA.len()] as char)
        .collect()
}

fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
        .unwrap_or(false)
        || std::path::Path::new("/sys/module/overlay").exists()
}

impl Driver for Overlay2 {
    fn name(&self) -> &'static str {
        "overlay2"
    }
    fn home(&self) -> &Path {
        &self.home
    }
    fn status(&self) -> Vec<[String; 2]> {
        vec![
            ["Backing Filesystem".into(), self.backing.clone()],
            ["Supports d_type".into(), "true".into()],
            ["Using metacopy".into(), metacopy().to_string()],
            ["Native Overlay Diff".into(), "true".into()],
            ["userxattr".into(), "false".into()],
        ]
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            whiteouts: Whiteouts::Overlay,
            independent_layers: true,
        }
    }

    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        let info = self.create(key, parent, Kind::Active)?;
        self.mounts_of(&info)
    }

    fn view(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let info = self.create(key, Some(parent), Kind::View)?;
        self.mounts_of(&info)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let info = self.meta.get(key)?;
        self.mounts_of(&info)
    }

    fn commit(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        let cur = self.meta.get(key)?;
        if let Some(p) = &opts.parent {
            if cur.parent.is_some() {
                return Err(DriverError::Invalid(format!(
                    "snapshot {key} already has a parent"
                )));
            }
            let lower = self.lower_of(p)?;
            crate::util::write_file_atomic(
                &self.dir(&cur.id).join("lower"),
                lower.as_bytes(),
                false,
            )
            .map_err(DriverError::io(format!("writing lower of {key}")))?;
        }
        let r = self.meta.commit(name, key, opts.parent.clone());
        if r.is_err() && opts.parent.is_some() {
            let _ = std::fs::remove_file(self.dir(&cur.id).join("lower"));
        }
        r.map(|_| ())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let info = self.meta.remove(key)?;
        let dir = self.dir(&info.id);
        super::unmount(&dir.join("merged"))?;
        if let Ok(link) = std::fs::read_to_string(dir.join("link")) {
            let _ = std::fs::remove_file(self.home.join("l").join(link.trim()));
        }
        crate::util::remove_tree(&dir).map_err(DriverError::io(format!("removing snapshot {key}")))
    }

    fn stat(&self, key: &str) -> Result<Info> {
        self.meta.get(key)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let info = self.meta.get(key)?;
        super::tree_usage(&self.dir(&info.id).join("diff"))
            .map_err(DriverError::io(format!("measuring {key}")))
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
        Ok(self.dir(&info.id).join("diff"))
    }

    fn diff_source(&self, key: &str) -> Result<DiffSource> {
        let info = self.meta.get(key)?;
        if info.kind == Kind::View {
            return Err(DriverError::Invalid(format!(
                "snapshot {key} is a view: it has no diff"
            )));
        }
        Ok(DiffSource::Native {
            upper: self.dir(&info.id).join("diff"),
            lowers: self.lowers(&info)?,
        })
    }

    fn mount_target(&self, key: &str) -> Result<PathBuf> {
        let info = self.meta.get(key)?;
        Ok(self.dir(&info.id).join("merged"))
    }
}

fn metacopy() -> bool {
    std::fs::read_to_string("/sys/module/overlay/parameters/metacopy")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}
