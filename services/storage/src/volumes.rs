//! Volumes of the `local` driver: `<root>/storage/volumes/<name>/_data`, metadata in
//! `<name>/volume.json` beside it (not per storage driver, as Docker keeps them).
//! Options `type`/`device`/`o` mount the volume (tmpfs, bind, a device) when it is
//! first acquired by a container; users are counted so a volume in use cannot go.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bus_schema::event::{Action, Event, EventType};
use bus_schema::{docker, BusError};
use serde::{Deserialize, Serialize};

use crate::mountspec::validate_volume_name;

pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";
const RECORD: &str = "volume.json";
/// Go's zero `time.Time` as Moby writes it.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Where volume events go (the bus in the service, a collector in tests).
pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, ev: Event);
}

pub struct NoEvents;
impl EventSink for NoEvents {
    fn publish(&self, _: Event) {}
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VolRecord {
    name: String,
    driver: String,
    labels: HashMap<String, String>,
    options: HashMap<String, String>,
    created: i64,
    anonymous: bool,
    /// Content was copied in (or found) once: never copy again.
    populated: bool,
    /// Containers using the volume.
    refs: BTreeSet<String>,
    /// A plugin's volume: where it is on the host, as last answered by the plugin
    /// (empty for `local`, whose data is `_data` beside the record).
    #[serde(default)]
    mountpoint: String,
    /// A plugin's volume: the containers it is mounted for now (Mount answered, no
    /// Unmount yet).
    #[serde(default)]
    mounted: BTreeSet<String>,
}

pub struct Volumes {
    root: PathBuf,
    state: Mutex<HashMap<String, VolRecord>>,
    events: Arc<dyn EventSink>,
}

/// Where a container's root filesystem is, for copying image content into a volume.
pub trait RootfsLookup: Send + Sync {
    /// Mount (counted) and answer the rootfs of container `id`.
    fn mount(&self, id: &str) -> Result<PathBuf, BusError>;
    fn unmount(&self, id: &str) -> Result<(), BusError>;
}

pub struct AcquireOpts<'a> {
    pub copy_from: Option<&'a str>,
    pub destination: Option<&'a str>,
    pub read_write: bool,
    pub propagation: &'a str,
}

fn no_such(name: &str) -> BusError {
    BusError::not_found(format!("get {name}: no such volume"))
}

impl Volumes {
    pub fn open(root: PathBuf, events: Arc<dyn EventSink>) -> Result<Volumes, BusError> {
        std::fs::create_dir_all(&root)
            .map_err(|e| BusError::internal(format!("creating {}: {e}", root.display())))?;
        let mut map = HashMap::new();
        for e in std::fs::read_dir(&root)
            .map_err(|e| BusError::internal(format!("reading {}: {e}", root.display())))?
            .flatten()
        {
            let p = e.path().join(RECORD);
            match crate::util::read_json::<VolRecord>(&p) {
                Ok(r) => {
                    map.insert(r.name.clone(), r);
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // A create that died before its record: nothing refers to it.
                    let _ = crate::util::remove_tree(&e.path());
                }
                Err(err) => {
                    tracing::warn!(path = %p.display(), error = %err, "unreadable volume record")
                }
            }
        }
        Ok(Volumes {
            root,
            state: Mutex::new(map),
            events,
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn data(&self, name: &str) -> PathBuf {
        self.dir(name).join("_data")
    }

    fn persist(&self, r: &VolRecord) -> Result<(), BusError> {
        crate::util::write_json(&self.dir(&r.name).join(RECORD), r, true)
            .map_err(|e| BusError::internal(format!("writing volume {}: {e}", r.name)))
    }

    fn to_docker(&self, r: &VolRecord) -> docker::Volume {
        docker::Volume {
            name: r.name.clone(),
            driver: r.driver.clone(),
            mountpoint: if r.driver == "local" { self.data(&r.name).to_string_lossy().into_owned() } else { r.mountpoint.clone() },
            // a plugin's volume: the time its plugin says (Go's zero time when it does
            // not), as Moby shows it
            created_at: Some(if r.driver == "local" {
                berth_rules::clock::rfc3339_secs(r.created.div_euclid(1_000_000_000))
            } else {
                GO_ZERO_TIME.to_string()
            }),
            labels: r.labels.clone(),
            options: r.options.clone(),
            scope: Some(docker::VolumeScopeEnum::LOCAL),
            ..Default::default()
        }
    }

    pub fn create(
        &self,
        name: Option<String>,
        driver: &str,
        opts: HashMap<String, String>,
        mut labels: HashMap<String, String>,
        anonymous: bool,
    ) -> Result<docker::Volume, BusError> {
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(crate::util::random_id);
        let driver = if driver.is_empty() { "local" } else { driver };
        validate_volume_name(&name)
            .map_err(|e| BusError::invalid(format!("create {name}: {e}")))?;
        if driver != "local" {
            return Err(BusError::not_found(format!(
                "create {name}: error looking up volume plugin {driver}: plugin \"{driver}\" not found"
            )));
        }
        validate_opts(&opts).map_err(|m| BusError::invalid(format!("create {name}: {m}")))?;
        if anonymous {
            labels.insert(ANONYMOUS_LABEL.to_string(), String::new());
        }
        let mut st = self.state.lock().unwrap();
        if let Some(r) = st.get(&name) {
            // a plugin's volume named by a container's `-v name:/dst` (Docker uses the
            // volume's own driver then)
            if r.driver != driver {
                return Ok(self.to_docker(r));
            }
            if r.options != opts {
                return Err(BusError::conflict(format!(
                    "create {name}: a volume with the same name already exists with different options"
                )));
            }
            return Ok(self.to_docker(r));
        }
        let r = VolRecord {
            name: name.clone(),
            driver: driver.to_string(),
            labels,
            options: opts,
            created: crate::util::now_unix_nanos(),
            anonymous,
            populated: false,
            refs: BTreeSet::new(),
            mountpoint: String::new(),
            mounted: BTreeSet::new(),
        };
        let data = self.data(&name);
        std::fs::create_dir_all(&data)
            .map_err(|e| BusError::internal(format!("create {name}: {e}")))?;
        if let Err(e) = self.persist(&r) {
            let _ = crate::util::remove_tree(&self.dir(&name));
            return Err(e);
        }
        let v = self.to_docker(&r);
        st.insert(name.clone(), r);
        drop(st);
        self.events
            .publish(Event::now(EventType::Volume, Action::Create, &name).attr("driver", "local"));
        Ok(v)
    }

    pub fn inspect(&self, name: &str) -> Result<docker::Volume, BusError> {
        let st = self.state.lock().unwrap();
        st.get(name)
            .map(|r| self.to_docker(r))
            .ok_or_else(|| no_such(name))
    }

    pub fn list(
        &self,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<docker::Volume>, BusError> {
        for (k, vals) in filters {
            match k.as_str() {
                "name" | "label" | "driver" => {}
                "dangling" => {
                    for v in vals {
                        if !matches!(
                            v.to_ascii_lowercase().as_str(),
                            "true" | "false" | "1" | "0"
                        ) {
                            return Err(BusError::invalid(format!(
                                "Invalid filter 'dangling=[{v}]'"
                            )));
                        }
                    }
                }
                _ => return Err(BusError::invalid(format!("Invalid filter '{k}'"))),
            }
        }
        let st = self.state.lock().unwrap();
        let mut out: Vec<docker::Volume> = st
            .values()
            .filter(|r| matches(r, filters))
            .map(|r| self.to_docker(r))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn remove(&self, name: &str, force: bool) -> Result<(), BusError> {
        let mut st = self.state.lock().unwrap();
        let Some(r) = st.get(name) else {
            return if force { Ok(()) } else { Err(no_such(name)) };
        };
        if !r.refs.is_empty() {
            let ids: Vec<&str> = r.refs.iter().map(String::as_str).collect();
            return Err(BusError::conflict(format!(
                "remove {name}: volume is in use - [{}]",
                ids.join(" ")
            )));
        }
        let data = self.data(name);
        if berth_fsutil::is_mountpoint(&data).unwrap_or(false) {
            crate::driver::unmount(&data)
                .map_err(|e| BusError::internal(format!("remove {name}: {e}")))?;
        }
        // The record goes first: a crash half way through leaves a directory without a
        // record, which the next start removes.
        std::fs::remove_file(self.dir(name).join(RECORD))
            .map_err(|e| BusError::internal(format!("remove {name}: {e}")))?;
        st.remove(name);
        drop(st);
        if let Err(e) = crate::util::remove_tree(&self.dir(name)) {
            tracing::warn!(volume = name, error = %e, "removing volume data failed");
        }
        self.events
            .publish(Event::now(EventType::Volume, Action::Destroy, name).attr("driver", "local"));
        Ok(())
    }

    /// Remove unused volumes: anonymous ones only unless the `all` filter is true.
    pub fn prune(
        &self,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<docker::VolumePruneResponse, BusError> {
        let mut all = false;
        for (k, vals) in filters {
            match k.as_str() {
                "label" | "label!" => {}
                "all" => {
                    for v in vals {
                        all = match v.to_ascii_lowercase().as_str() {
                            "true" | "1" => true,
                            "false" | "0" => false,
                            _ => {
                                return Err(BusError::invalid(format!("invalid filter 'all={v}'")))
                            }
                        };
                    }
                }
                _ => return Err(BusError::invalid(format!("Invalid filter '{k}'"))),
            }
        }
        let candidates: Vec<String> = {
            let st = self.state.lock().unwrap();
            let mut v: Vec<&VolRecord> = st
                .values()
                // local volumes without mount options only, as Moby's (a plugin's volume,
                // or an NFS or tmpfs mount, has its data elsewhere: nothing to reclaim)
                .filter(|r| r.refs.is_empty() && r.driver == "local" && r.options.is_empty())
                .filter(|r| all || r.labels.contains_key(ANONYMOUS_LABEL))
                .filter(|r| label_filters(r, filters))
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.into_iter().map(|r| r.name.clone()).collect()
        };
        let mut deleted = Vec::new();
        let mut reclaimed = 0i64;
        for name in candidates {
            let size = crate::driver::tree_usage(&self.data(&name))
                .map(|u| u.size)
                .unwrap_or(0);
            match self.remove(&name, false) {
                Ok(()) => {
                    reclaimed += size;
                    deleted.push(name);
                }
                Err(e) if e.is(bus_schema::ErrorKind::Conflict) => {} // acquired meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(docker::VolumePruneResponse {
            volumes_deleted: Some(deleted),
            space_reclaimed: Some(reclaimed),
        })
    }

    /// A container starts using the volume: mount it if its options say so, copy the
    /// image's content in the first time (when asked and the volume is empty).
    pub fn acquire(
        &self,
        name: &str,
        container: &str,
        opts: &AcquireOpts<'_>,
        rootfs: &dyn RootfsLookup,
    ) -> Result<PathBuf, BusError> {
        let mut st = self.state.lock().unwrap();
        let r = st.get(name).cloned().ok_or_else(|| no_such(name))?;
        let data = self.data(name);
        if r.options.contains_key("type") && !berth_fsutil::is_mountpoint(&data).unwrap_or(false) {
            mount_volume(&r.options, &data).map_err(|e| {
                BusError::internal(format!(
                    "error while mounting volume '{}': {e}",
                    data.display()
                ))
            })?;
        }
        let mut r = r;
        if !r.populated {
            let empty = std::fs::read_dir(&data)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                r.populated = true;
            } else if let Some(src) = opts.copy_from {
                let root = rootfs.mount(container)?;
                let res = copy_into_volume(&root, src, &data);
                let _ = rootfs.unmount(container);
                if res.map_err(|e| {
                    BusError::internal(format!("copying image content into volume {name}: {e}"))
                })? {
                    r.populated = true;
                }
            }
        }
        r.refs.insert(container.to_string());
        self.persist(&r)?;
        st.insert(name.to_string(), r);
        drop(st);
        let mut ev = Event::now(EventType::Volume, Action::Mount, name)
            .attr("driver", "local")
            .attr("container", container);
        ev = ev
            .attr(
                "destination",
                opts.destination.or(opts.copy_from).unwrap_or(""),
            )
            .attr("read/write", opts.read_write.to_string())
            .attr("propagation", opts.propagation);
        self.events.publish(ev);
        Ok(data)
    }

    /// The container no longer uses the volume; a mounted volume is unmounted when its
    /// last user goes.
    pub fn release(&self, name: &str, container: &str) -> Result<(), BusError> {
        let mut st = self.state.lock().unwrap();
        let r = st.get_mut(name).ok_or_else(|| no_such(name))?;
        if !r.refs.remove(container) {
            return Ok(());
        }
        let r = r.clone();
        self.persist(&r)?;
        if r.refs.is_empty() && r.options.contains_key("type") {
            let data = self.data(name);
            if berth_fsutil::is_mountpoint(&data).unwrap_or(false) {
                let _ = crate::driver::unmount(&data);
            }
        }
        drop(st);
        self.events.publish(
            Event::now(EventType::Volume, Action::Unmount, name)
                .attr("driver", "local")
                .attr("container", container),
        );
        Ok(())
    }

    /// Volumes with their usage (`docker system df`).
    pub fn usage(&self) -> Vec<docker::Volume> {
        let recs: Vec<VolRecord> = self.state.lock().unwrap().values().cloned().collect();
        let mut out: Vec<docker::Volume> = recs
            .iter()
            .map(|r| {
                let mut v = self.to_docker(r);
                let size = crate::driver::tree_usage(&self.data(&r.name))
                    .map(|u| u.size)
                    .unwrap_or(-1);
                v.usage_data = Some(docker::VolumeUsageData {
                    size,
                    ref_count: r.refs.len() as i64,
                });
                v
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The driver of an existing volume.
    pub fn driver_of(&self, name: &str) -> Option<String> {
        self.state.lock().unwrap().get(name).map(|r| r.driver.clone())
    }

    /// Record a volume a plugin made (`driver` the plugin's name). An existing one
    /// of the same driver is answered as it is.
    pub fn insert_plugin_volume(
        &self,
        name: &str,
        driver: &str,
        opts: HashMap<String, String>,
        labels: HashMap<String, String>,
        mountpoint: String,
    ) -> Result<docker::Volume, BusError> {
        let mut st = self.state.lock().unwrap();
        if let Some(r) = st.get(name) {
            return Ok(self.to_docker(r));
        }
        let r = VolRecord {
            name: name.to_string(),
            driver: driver.to_string(),
            labels,
            options: opts,
            created: crate::util::now_unix_nanos(),
            anonymous: false,
            populated: true,
            refs: BTreeSet::new(),
            mountpoint,
            mounted: BTreeSet::new(),
        };
        std::fs::create_dir_all(self.dir(name)).map_err(|e| BusError::internal(format!("create {name}: {e}")))?;
        if let Err(e) = self.persist(&r) {
            let _ = crate::util::remove_tree(&self.dir(name));
            return Err(e);
        }
        let v = self.to_docker(&r);
        st.insert(name.to_string(), r);
        drop(st);
        self.events.publish(Event::now(EventType::Volume, Action::Create, name).attr("driver", driver));
        Ok(v)
    }

    /// A plugin's volume as Docker shows it, with what the plugin answered.
    /// `docker volume inspect` of a plugin's volume as Moby 20.10 answers it from the
    /// plugin's Get: the mountpoint as the plugin sees it (`host` is kept for
    /// `ls`, which shows the host path), its CreatedAt. (The plugin's Status is not
    /// shown: the API model here keeps its keys only.)
    pub fn plugin_volume(&self, name: &str, inside: &str, host: Option<&Path>, created_at: &str) -> Result<docker::Volume, BusError> {
        let mut st = self.state.lock().unwrap();
        let r = st.get_mut(name).ok_or_else(|| no_such(name))?;
        if let Some(m) = host {
            let m = m.to_string_lossy().into_owned();
            if r.mountpoint != m {
                r.mountpoint = m;
                let r = r.clone();
                self.persist(&r)?;
            }
        }
        let mut v = self.to_docker(st.get(name).unwrap());
        v.mountpoint = inside.to_string();
        if !created_at.is_empty() {
            v.created_at = Some(created_at.to_string());
        }
        Ok(v)
    }

    /// A container uses a plugin's volume the plugin mounted at `mountpoint`.
    pub fn plugin_acquired(&self, name: &str, container: &str, mountpoint: &Path, opts: &AcquireOpts<'_>) -> Result<(), BusError> {
        let mut st = self.state.lock().unwrap();
        let r = st.get_mut(name).ok_or_else(|| no_such(name))?;
        r.refs.insert(container.to_string());
        r.mounted.insert(container.to_string());
        r.mountpoint = mountpoint.to_string_lossy().into_owned();
        let r = r.clone();
        self.persist(&r)?;
        drop(st);
        self.events.publish(
            Event::now(EventType::Volume, Action::Mount, name)
                .attr("driver", r.driver.clone())
                .attr("container", container)
                .attr("destination", opts.destination.or(opts.copy_from).unwrap_or(""))
                .attr("read/write", opts.read_write.to_string())
                .attr("propagation", opts.propagation),
        );
        Ok(())
    }

    /// A container stopped (`unmount_only`) or no longer refers to a plugin's
    /// volume: true if the plugin is to be told (it had mounted it for the container).
    pub fn plugin_released(&self, name: &str, container: &str, unmount_only: bool) -> Result<bool, BusError> {
        let mut st = self.state.lock().unwrap();
        let r = st.get_mut(name).ok_or_else(|| no_such(name))?;
        let unref = !unmount_only && r.refs.remove(container);
        let unmount = r.mounted.remove(container);
        if !unref && !unmount {
            return Ok(false);
        }
        let r = r.clone();
        self.persist(&r)?;
        drop(st);
        if unmount {
            self.events.publish(Event::now(EventType::Volume, Action::Unmount, name).attr("driver", r.driver.clone()).attr("container", container));
        }
        Ok(unmount)
    }

    /// Refused while a container uses it (the plugin is not asked then).
    pub fn check_unused(&self, name: &str) -> Result<(), BusError> {
        let st = self.state.lock().unwrap();
        let r = st.get(name).ok_or_else(|| no_such(name))?;
        if !r.refs.is_empty() {
            let ids: Vec<&str> = r.refs.iter().map(String::as_str).collect();
            return Err(BusError::conflict(format!("remove {name}: volume is in use - [{}]", ids.join(" "))));
        }
        Ok(())
    }

    /// Forget a plugin's volume (the plugin removed it).
    pub fn forget_plugin_volume(&self, name: &str) -> Result<(), BusError> {
        let mut st = self.state.lock().unwrap();
        let Some(r) = st.remove(name) else { return Ok(()) };
        drop(st);
        if let Err(e) = crate::util::remove_tree(&self.dir(name)) {
            tracing::warn!(volume = name, error = %e, "removing the volume's record failed");
        }
        self.events.publish(Event::now(EventType::Volume, Action::Destroy, name).attr("driver", r.driver));
        Ok(())
    }
}

fn matches(r: &VolRecord, f: &HashMap<String, Vec<String>>) -> bool {
    if let Some(names) = f.get("name") {
        if !names.is_empty() && !names.iter().any(|n| r.name.contains(n.as_str())) {
            return false;
        }
    }
    if let Some(d) = f.get("driver") {
        if !d.is_empty() && !d.iter().any(|x| *x == r.driver) {
            return false;
        }
    }
    if let Some(d) = f.get("dangling") {
        for v in d {
            let want_dangling = matches!(v.to_ascii_lowercase().as_str(), "true" | "1");
            if want_dangling != r.refs.is_empty() {
                return false;
            }
        }
    }
    label_filters(r, f)
}

/// `label` and `label!` as Moby's volume filters apply them.
fn label_filters(r: &VolRecord, f: &HashMap<String, Vec<String>>) -> bool {
    let none = Vec::new();
    berth_rules::filters::labels_select(&r.labels, f.get("label").unwrap_or(&none), f.get("label!").unwrap_or(&none))
}

/// Moby's local driver option rules.
fn validate_opts(opts: &HashMap<String, String>) -> Result<(), String> {
    let mut keys: Vec<&String> = opts.keys().collect();
    keys.sort();
    for k in &keys {
        if !matches!(k.as_str(), "type" | "device" | "o" | "size") {
            return Err(format!("invalid option: \"{k}\""));
        }
    }
    if opts.contains_key("size") {
        return Err("quota size requested but no quota support".into());
    }
    for (k, needs) in [
        ("device", &["type"][..]),
        ("o", &["device", "type"][..]),
        ("type", &["device"][..]),
    ] {
        if opts.contains_key(k) {
            for n in needs {
                if !opts.contains_key(*n) {
                    return Err(format!("missing required option: \"{n}\""));
                }
            }
        }
    }
    Ok(())
}

/// `mount -t <type> -o <o> <device> <data>` with `o`'s flags turned into mount flags.
fn mount_volume(opts: &HashMap<String, String>, data: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let typ = opts.get("type").cloned().unwrap_or_default();
    let device = opts.get("device").cloned().unwrap_or_default();
    let mut flags = MsFlags::empty();
    let mut rest = Vec::new();
    for o in opts
        .get("o")
        .map(|s| s.split(',').collect::<Vec<_>>())
        .unwrap_or_default()
    {
        match o {
            "" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            other => rest.push(other),
        }
    }
    let data_opt = rest.join(",");
    let data_opt = if data_opt.is_empty() {
        None
    } else {
        Some(data_opt.as_str())
    };
    let fstype = if flags.contains(MsFlags::MS_BIND) {
        None
    } else {
        Some(typ.as_str())
    };
    mount(Some(device.as_str()), data, fstype, flags, data_opt).map_err(|e| e.to_string())?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            data,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Copy `src` (a path inside the container's rootfs) into the empty volume. Answers
/// whether there was anything to copy. Devices are skipped. The source is resolved by
/// the kernel inside the rootfs and both trees are walked by descriptors
/// (berth_fsutil::copy): the volume may already be in use by a running container that
/// plants symlinks in it, and nothing it plants is followed.
fn copy_into_volume(rootfs: &Path, src: &str, data: &Path) -> std::io::Result<bool> {
    use berth_fsutil::at;
    use std::os::fd::AsFd;
    let root = berth_fsutil::InRoot::open(rootfs)?;
    let not_there = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR));
    let sdir = match root.resolve(src).and_then(|fd| at::open_dir(fd.as_fd(), std::ffi::OsStr::new("."))) {
        Ok(fd) => fd,
        Err(e) if not_there(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    if at::list(sdir.as_fd())?.is_empty() {
        return Ok(false);
    }
    let ddir = std::fs::File::open(data)?;
    berth_fsutil::copy::Copier::new(berth_fsutil::copy::CopyOpts {
        devices: false,
        xattrs: true,
        one_filesystem: true,
        ..Default::default()
    })
    .copy_dir(sdir.as_fd(), ddir.as_fd())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Mutex<Vec<Event>>);
    impl EventSink for Collect {
        fn publish(&self, ev: Event) {
            self.0.lock().unwrap().push(ev);
        }
    }
    struct NoRootfs;
    impl RootfsLookup for NoRootfs {
        fn mount(&self, _: &str) -> Result<PathBuf, BusError> {
            Err(BusError::not_found("no rootfs"))
        }
        fn unmount(&self, _: &str) -> Result<(), BusError> {
            Ok(())
        }
    }

    fn acq<'a>() -> AcquireOpts<'a> {
        AcquireOpts {
            copy_from: None,
            destination: Some("/data"),
            read_write: true,
            propagation: "",
        }
    }

    #[test]
    fn prune_keeps_volumes_with_mount_options() {
        let d = tempfile::tempdir().unwrap();
        let v = Volumes::open(d.path().join("volumes"), Arc::new(NoEvents)).unwrap();
        let opts: HashMap<String, String> = [("type", "tmpfs"), ("device", "tmpfs")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.create(Some("mounted".into()), "local", opts, HashMap::new(), false).unwrap();
        v.create(Some("plain".into()), "local", HashMap::new(), HashMap::new(), false).unwrap();
        let all: HashMap<String, Vec<String>> = [("all".to_string(), vec!["true".to_string()])].into();
        assert_eq!(v.prune(&all).unwrap().volumes_deleted.unwrap(), vec!["plain"]);
        v.remove("mounted", false).unwrap();
    }

    #[test]
    fn lifecycle_filters_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let ev = Arc::new(Collect(Mutex::new(vec![])));
        let v = Volumes::open(d.path().join("volumes"), ev.clone()).unwrap();
        let a = v
            .create(
                Some("v1".into()),
                "local",
                HashMap::new(),
                HashMap::from([("a".into(), "b".into())]),
                false,
            )
            .unwrap();
        assert_eq!(a.scope, Some(docker::VolumeScopeEnum::LOCAL));
        assert!(a.mountpoint.ends_with("volumes/v1/_data"));
        // Same options: the same volume; different options: a conflict.
        assert_eq!(
            v.create(
                Some("v1".into()),
                "local",
                HashMap::new(),
                HashMap::new(),
                false
            )
            .unwrap()
            .name,
            "v1"
        );
        let opts = HashMap::from([
            ("type".to_string(), "tmpfs".to_string()),
            ("device".to_string(), "tmpfs".to_string()),
        ]);
        assert!(v
            .create(
                Some("v1".into()),
                "local",
                opts.clone(),
                HashMap::new(),
                false
            )
            .unwrap_err()
            .is(bus_schema::ErrorKind::Conflict));
        let anon = v
            .create(None, "local", HashMap::new(), HashMap::new(), true)
            .unwrap();
        assert_eq!(anon.name.len(), 64);
        assert!(anon.labels.contains_key(ANONYMOUS_LABEL));
        // Errors with Moby's wording.
        let e = v
            .create(
                Some("a".into()),
                "local",
                HashMap::new(),
                HashMap::new(),
                false,
            )
            .unwrap_err();
        assert_eq!(e.message, "create a: volume name is too short, names should be at least two alphanumeric characters");
        let e = v
            .create(
                Some("v3".into()),
                "local",
                HashMap::from([("foo".into(), "x".into())]),
                HashMap::new(),
                false,
            )
            .unwrap_err();
        assert_eq!(e.message, "create v3: invalid option: \"foo\"");
        let e = v
            .create(
                Some("v3".into()),
                "local",
                HashMap::from([("type".into(), "tmpfs".into())]),
                HashMap::new(),
                false,
            )
            .unwrap_err();
        assert_eq!(e.message, "create v3: missing required option: \"device\"");
        let e = v
            .create(
                Some("v4".into()),
                "nope",
                HashMap::new(),
                HashMap::new(),
                false,
            )
            .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                bus_schema::ErrorKind::NotFound,
                "create v4: error looking up volume plugin nope: plugin \"nope\" not found"
            )
        );
        // Filters.
        let f = |k: &str, v: &str| HashMap::from([(k.to_string(), vec![v.to_string()])]);
        let names = |l: Vec<docker::Volume>| l.into_iter().map(|x| x.name).collect::<Vec<_>>();
        assert_eq!(names(v.list(&f("label", "a=b")).unwrap()), vec!["v1"]);
        assert_eq!(names(v.list(&f("name", "v1")).unwrap()), vec!["v1"]);
        assert_eq!(v.list(&f("driver", "local")).unwrap().len(), 2);
        assert_eq!(
            v.list(&f("bogus", "1")).unwrap_err().message,
            "Invalid filter 'bogus'"
        );
        assert_eq!(
            v.list(&f("dangling", "maybe")).unwrap_err().message,
            "Invalid filter 'dangling=[maybe]'"
        );
        // In use: 409; dangling filter sees it.
        v.acquire("v1", "c1", &acq(), &NoRootfs).unwrap();
        assert_eq!(names(v.list(&f("dangling", "false")).unwrap()), vec!["v1"]);
        let e = v.remove("v1", false).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                bus_schema::ErrorKind::Conflict,
                "remove v1: volume is in use - [c1]"
            )
        );
        // Prune: anonymous only unless all.
        let p = v.prune(&HashMap::new()).unwrap();
        assert_eq!(p.volumes_deleted.unwrap(), vec![anon.name.clone()]);
        let p = v.prune(&f("all", "true")).unwrap();
        assert!(p.volumes_deleted.unwrap().is_empty(), "v1 is in use");
        v.release("v1", "c1").unwrap();
        assert_eq!(
            v.remove("nope", false).unwrap_err().message,
            "get nope: no such volume"
        );
        v.remove("nope", true).unwrap();
        // Persisted: a reopened store knows v1.
        drop(v);
        let v = Volumes::open(d.path().join("volumes"), Arc::new(NoEvents)).unwrap();
        assert_eq!(
            v.inspect("v1").unwrap().labels.get("a").map(String::as_str),
            Some("b")
        );
        v.remove("v1", false).unwrap();
        assert!(!d.path().join("volumes/v1").exists());
        let actions: Vec<String> =
            ev.0.lock()
                .unwrap()
                .iter()
                .map(|e| e.action.clone())
                .collect();
        assert_eq!(
            actions,
            vec!["create", "create", "mount", "destroy", "unmount"]
        );
    }
}
