//! Container read-write layers: `<id>-init` (the mount points Docker puts in every
//! container: /etc/hosts, /etc/hostname, /etc/resolv.conf, /dev, /proc, /sys,
//! /.dockerenv...) on the image's top layer, then `<id>` on top of it. Mounts are
//! counted; records live in `<driver home>/mounts/<id>.json`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bus_schema::storage::{Change, RwSize};
use bus_schema::BusError;
use serde::{Deserialize, Serialize};

use crate::driver::{CommitOpts, DiffSource, Driver, DriverError, Kind};
use crate::layers::LayerStore;

/// Docker's init layer content (moby `initlayer.Setup`): path -> dir, file, or a symlink target.
pub const INIT_PATHS: &[(&str, &str)] = &[
    ("/dev/pts", "dir"),
    ("/dev/shm", "dir"),
    ("/proc", "dir"),
    ("/sys", "dir"),
    ("/.dockerenv", "file"),
    ("/etc/resolv.conf", "file"),
    ("/etc/hosts", "file"),
    ("/etc/hostname", "file"),
    ("/dev/console", "file"),
    ("/etc/mtab", "/proc/mounts"),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RwRecord {
    id: String,
    parent: Option<String>,
    created: i64,
    /// Mount count, in memory only: at start it is 1 for a mounted layer, else 0.
    #[serde(default, skip_serializing)]
    mounts: u32,
}

pub struct RwLayers {
    driver: Arc<dyn Driver>,
    layers: Arc<LayerStore>,
    dir: PathBuf,
    state: Mutex<HashMap<String, RwRecord>>,
    /// Serialises making an image's init layer.
    init_lock: Mutex<()>,
}

/// The init layer is the same for every container on one image: it is made once per
/// image top layer (`init-<hex of chain>`, `init-scratch` for FROM scratch), shared by
/// its containers and removed with that layer (`LayerStore` collects it).
pub fn init_key(parent: Option<&str>) -> String {
    match parent {
        Some(c) => format!("{INIT_PREFIX}{}", crate::layers::hex_of(c)),
        None => format!("{INIT_PREFIX}scratch"),
    }
}

pub const INIT_PREFIX: &str = "init-";

pub fn no_such(id: &str) -> BusError {
    BusError::not_found(format!("no such container layer: {id}"))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && !id.starts_with(crate::layers::STAGING_PREFIX)
        && !id.starts_with("sha256:")
        && !id.starts_with(INIT_PREFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl RwLayers {
    pub fn open(layers: Arc<LayerStore>) -> Result<RwLayers, BusError> {
        let driver = layers.driver().clone();
        let dir = driver.home().join("mounts");
        std::fs::create_dir_all(&dir)
            .map_err(|e| BusError::internal(format!("creating {}: {e}", dir.display())))?;
        let mut recs = HashMap::new();
        for e in std::fs::read_dir(&dir)
            .map_err(|e| BusError::internal(format!("reading {}: {e}", dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Ok(mut r) = crate::util::read_json::<RwRecord>(&e.path()) else {
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            if driver.stat(&r.id).is_err() {
                tracing::warn!(id = %r.id, "dropping a container layer whose data is missing");
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            r.mounts = u32::from(is_mounted(&*driver, &r.id));
            if let Some(p) = &r.parent {
                layers.restore_hold(p);
            }
            recs.insert(r.id.clone(), r);
        }
        // Snapshots of a create that never finished (no record) go, and so do
        // half-made init layers.
        let mut orphans = Vec::new();
        driver
            .walk(&mut |i| {
                if i.name.starts_with("sha256:")
                    || i.name.starts_with(crate::layers::STAGING_PREFIX)
                {
                    return;
                }
                if i.name.starts_with(INIT_PREFIX) {
                    if i.kind != Kind::Committed {
                        orphans.push(i.name.clone());
                    }
                    return;
                }
                if !recs.contains_key(&i.name) {
                    orphans.push(i.name.clone());
                }
            })
            .map_err(BusError::from)?;
        for name in orphans {
            if let Ok(t) = driver.mount_target(&name) {
                let _ = crate::driver::unmount(&t);
            }
            let _ = driver.remove(&name);
        }
        Ok(RwLayers {
            driver,
            layers,
            dir,
            state: Mutex::new(recs),
            init_lock: Mutex::new(()),
        })
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn persist(&self, r: &RwRecord) -> Result<(), BusError> {
        crate::util::write_json(&self.record_path(&r.id), r, false).map_err(|e| {
            BusError::internal(format!("writing container layer record {}: {e}", r.id))
        })
    }

    pub fn ids(&self) -> Vec<String> {
        self.state.lock().unwrap().keys().cloned().collect()
    }

    /// Every container layer and its mount count.
    pub fn list(&self) -> Vec<bus_schema::storage::RwLayerState> {
        let st = self.state.lock().unwrap();
        let mut v: Vec<_> = st
            .values()
            .map(|r| bus_schema::storage::RwLayerState {
                id: r.id.clone(),
                mounts: r.mounts,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn create(&self, id: &str, parent: Option<&str>) -> Result<(), BusError> {
        if !valid_id(id) {
            return Err(BusError::invalid(format!(
                "invalid container layer id {id:?}"
            )));
        }
        {
            let st = self.state.lock().unwrap();
            if st.contains_key(id) {
                return Err(BusError::conflict(format!(
                    "mount already exists with name {id}"
                )));
            }
        }
        if let Some(p) = parent {
            self.layers.hold(p)?;
        }
        let res = self
            .ensure_init(parent)
            .and_then(|ik| self.driver.prepare(id, Some(&ik)).map_err(map_exists));
        if let Err(e) = res {
            if !e.is(bus_schema::ErrorKind::Conflict) {
                let _ = self.driver.remove(id);
            }
            if let Some(p) = parent {
                self.layers.unhold(p);
            }
            return Err(e);
        }
        let r = RwRecord {
            id: id.to_string(),
            parent: parent.map(str::to_string),
            created: crate::util::now_unix_nanos(),
            mounts: 0,
        };
        self.persist(&r)?;
        self.state.lock().unwrap().insert(id.to_string(), r);
        Ok(())
    }

    /// The init layer of an image top layer, made the first time a container needs it.
    fn ensure_init(&self, parent: Option<&str>) -> Result<String, BusError> {
        let ik = init_key(parent);
        let _g = self.init_lock.lock().unwrap();
        match self.driver.stat(&ik) {
            Ok(i) if i.kind == Kind::Committed => return Ok(ik),
            Ok(_) => {
                let _ = self.driver.remove(&ik);
            }
            Err(_) => {}
        }
        let tmp = format!("{ik}-{}", crate::util::random_hex(4));
        let res = (|| {
            self.driver.prepare(&tmp, parent).map_err(BusError::from)?;
            let upper = self.driver.upper_dir(&tmp).map_err(BusError::from)?;
            let below = match self.driver.diff_source(&tmp).map_err(BusError::from)? {
                DiffSource::Native { lowers, .. } => Below::Layers(lowers),
                DiffSource::Naive { .. } => Below::Same,
            };
            setup_init(&upper, &below)
                .map_err(|e| BusError::internal(format!("creating the init layer {ik}: {e}")))?;
            self.driver
                .commit(&ik, &tmp, CommitOpts::default())
                .map_err(BusError::from)
        })();
        if let Err(e) = res {
            let _ = self.driver.remove(&tmp);
            return Err(e);
        }
        Ok(ik)
    }

    /// Where the container's root filesystem is mounted while it runs (not counted,
    /// nothing mounted here): a plugin's paths are under it.
    pub fn rootfs_path(&self, id: &str) -> Result<PathBuf, BusError> {
        let mounts = self.driver.mounts(id).map_err(BusError::from)?;
        match mounts.as_slice() {
            [m] if m.typ == "bind" => Ok(PathBuf::from(&m.source)),
            _ => self.driver.mount_target(id).map_err(BusError::from),
        }
    }

    /// Mount the container's root filesystem (counted); answers its path.
    pub fn mount(&self, id: &str) -> Result<PathBuf, BusError> {
        let mut st = self.state.lock().unwrap();
        let r = st.get_mut(id).ok_or_else(|| no_such(id))?;
        let mounts = self.driver.mounts(id).map_err(BusError::from)?;
        let path = match mounts.as_slice() {
            [m] if m.typ == "bind" => PathBuf::from(&m.source),
            _ => {
                let target = self.driver.mount_target(id).map_err(BusError::from)?;
                if r.mounts == 0 || !berth_fsutil::is_mountpoint(&target).unwrap_or(false) {
                    crate::driver::mount_all(&mounts, &target).map_err(BusError::from)?;
                }
                target
            }
        };
        // The count lives in memory: after a restart it is 1 for what is mounted.
        r.mounts += 1;
        Ok(path)
    }

    pub fn unmount(&self, id: &str) -> Result<(), BusError> {
        let mut st = self.state.lock().unwrap();
        let r = st.get_mut(id).ok_or_else(|| no_such(id))?;
        if r.mounts == 0 {
            return Ok(());
        }
        r.mounts -= 1;
        if r.mounts == 0 {
            if let Err(e) = self.unmount_now(id) {
                r.mounts += 1;
                return Err(e);
            }
        }
        Ok(())
    }

    fn unmount_now(&self, id: &str) -> Result<(), BusError> {
        let mounts = self.driver.mounts(id).map_err(BusError::from)?;
        if !matches!(mounts.as_slice(), [m] if m.typ == "bind") {
            let target = self.driver.mount_target(id).map_err(BusError::from)?;
            crate::driver::unmount(&target).map_err(BusError::from)?;
        }
        Ok(())
    }

    /// Remove the container's layers (unmounting first); its image layer may be collected.
    pub fn remove(&self, id: &str) -> Result<(), BusError> {
        let r = {
            let st = self.state.lock().unwrap();
            st.get(id).cloned().ok_or_else(|| no_such(id))?
        };
        if r.mounts > 0 {
            self.unmount_now(id)?;
        }
        match self.driver.remove(id) {
            Ok(()) | Err(DriverError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match std::fs::remove_file(self.record_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BusError::internal(format!(
                    "removing container layer record {id}: {e}"
                )))
            }
        }
        self.state.lock().unwrap().remove(id);
        if let Some(p) = &r.parent {
            self.layers.unhold(p);
        }
        Ok(())
    }

    pub fn exists(&self, id: &str) -> bool {
        self.state.lock().unwrap().contains_key(id)
    }

    pub fn parent(&self, id: &str) -> Result<Option<String>, BusError> {
        self.state
            .lock()
            .unwrap()
            .get(id)
            .map(|r| r.parent.clone())
            .ok_or_else(|| no_such(id))
    }

    /// `docker diff`.
    pub fn changes(&self, id: &str) -> Result<Vec<Change>, BusError> {
        self.parent(id)?;
        let src = self.driver.diff_source(id).map_err(BusError::from)?;
        crate::diff::changes(&src, &Default::default())
            .map_err(|e| BusError::internal(format!("computing changes of {id}: {e}")))
    }

    pub fn diff_source(&self, id: &str) -> Result<DiffSource, BusError> {
        self.parent(id)?;
        self.driver.diff_source(id).map_err(BusError::from)
    }

    /// `SizeRw` and `SizeRootFs`.
    pub fn size(&self, id: &str) -> Result<RwSize, BusError> {
        let parent = self.parent(id)?;
        let src = self.driver.diff_source(id).map_err(BusError::from)?;
        let rw = match &src {
            DiffSource::Native { upper, .. } => crate::driver::tree_content_size(upper),
            DiffSource::Naive { dir, .. } => {
                crate::diff::changes(&src, &Default::default()).map(|ch| {
                    ch.iter()
                        .filter(|c| c.kind != crate::diff::CHANGE_DELETE)
                        .filter_map(|c| std::fs::symlink_metadata(dir.join(&c.path[1..])).ok())
                        .filter(|m| !m.is_dir())
                        .map(|m| m.size() as i64)
                        .sum()
                })
            }
        }
        .map_err(|e| BusError::internal(format!("measuring {id}: {e}")))?;
        let mut image = 0i64;
        let mut cur = parent;
        while let Some(c) = cur {
            let m = self.layers.stat(&c)?;
            image += m.size as i64;
            cur = m.parent;
        }
        Ok(RwSize {
            rw,
            root_fs: rw + image,
        })
    }

    pub fn is_active(&self, id: &str) -> bool {
        self.driver
            .stat(id)
            .map(|i| i.kind == Kind::Active)
            .unwrap_or(false)
    }
}

fn map_exists(e: DriverError) -> BusError {
    match e {
        DriverError::AlreadyExists(n) => {
            BusError::conflict(format!("mount already exists with name {n}"))
        }
        e => e.into(),
    }
}

fn is_mounted(d: &dyn Driver, id: &str) -> bool {
    match d.mounts(id) {
        Ok(m) if matches!(m.as_slice(), [x] if x.typ == "bind") => true,
        Ok(_) => d
            .mount_target(id)
            .map(|t| berth_fsutil::is_mountpoint(&t).unwrap_or(false))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// What lies below the init layer's upper dir: overlay lowers (top first), or
/// nothing (vfs/btrfs: the upper dir is already a full copy).
enum Below {
    Layers(Vec<PathBuf>),
    Same,
}

impl Below {
    /// The metadata of `rel` as the merged view would show it, if it exists there.
    fn lookup(&self, upper: &Path, rel: &str) -> Option<std::fs::Metadata> {
        match self {
            Below::Same => std::fs::symlink_metadata(upper.join(rel)).ok(),
            Below::Layers(lowers) => {
                for l in lowers {
                    if let Ok(m) = std::fs::symlink_metadata(l.join(rel)) {
                        if m.file_type().is_char_device_like() && m.rdev() == 0 {
                            return None; // a whiteout hides it
                        }
                        return Some(m);
                    }
                }
                None
            }
        }
    }
}

trait CharDev {
    fn is_char_device_like(&self) -> bool;
}
impl CharDev for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

/// Create Docker's init paths in `upper` unless the image has them. Parents that
/// exist below are created with their attributes, so the merged view keeps them.
fn setup_init(upper: &Path, below: &Below) -> std::io::Result<()> {
    for (path, kind) in INIT_PATHS {
        let rel = &path[1..];
        if below.lookup(upper, rel).is_some() || std::fs::symlink_metadata(upper.join(rel)).is_ok()
        {
            continue;
        }
        // Parents.
        let mut cur = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            let p = upper.join(&cur);
            if std::fs::symlink_metadata(&p).is_ok() {
                continue;
            }
            match below.lookup(upper, &cur) {
                Some(m) if m.is_dir() => {
                    std::fs::create_dir(&p)?;
                    crate::copy::copy_meta(&p, &m)?;
                }
                Some(_) => break, // e.g. a symlinked /etc: leave it to the image
                None => {
                    std::fs::create_dir(&p)?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
                }
            }
        }
        let p = upper.join(rel);
        if p.parent().is_some_and(|pp| !pp.is_dir()) {
            continue;
        }
        match *kind {
            "dir" => {
                std::fs::create_dir(&p)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            }
            "file" => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o755)
                    .open(&p)?;
            }
            target => std::os::unix::fs::symlink(target, &p)?,
        }
    }
    Ok(())
}
