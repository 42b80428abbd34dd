//! Volumes of managed volume-driver plugins (`docker volume create -d <plugin>`):
//! each operation is the plugin's `/VolumeDriver.*` call through its socket
//! (berth_pluginproto), and the volume is recorded beside the `local` ones (name,
//! driver = the plugin's name, options, labels, users), so names stay unique, `ls`
//! lists them without asking the plugin, and `volume rm` of one in use is refused
//! before the plugin is asked.
//!
//! The plugin is found through the images service (which owns plugins); its socket
//! is in its runtime directory (berth_config::Paths::plugin_run) and the paths it
//! answers are inside its rootfs, which is mounted on the host while it runs (its
//! container's read-write layer here), or inside its propagated mount: mapped to the
//! host as Moby's ScopedPath maps them.
//!
//! `ls` asks every enabled volume-driver plugin for its List, as Moby's store does:
//! a volume the plugin reports that berth has no record of is recorded then (Moby
//! names it too), and a plugin volume its plugin does not report (or whose plugin is
//! disabled or fails to answer) is left out.
//!
//! Not done here: prune leaves plugin
//! volumes alone; image content is not copied into a plugin's new volume; the
//! plugin's `Status` of a volume is not shown by inspect.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_bus::images::{ImagesApi as _, ImagesClient};
use berth_bus::Bus;
use berth_pluginproto::{scoped_path, scoped_root, VolumeDriver};
use bus_schema::plugin::{PluginInspect, PluginList};
use bus_schema::{docker, BusError, ErrorKind};

use crate::rw::RwLayers;
use crate::volumes::{AcquireOpts, Volumes};

/// How long a plugin has to answer one call (Moby's plugin client default).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

const VOLUME_DRIVER: &str = "docker.volumedriver/1.0";

pub struct Drivers {
    images: ImagesClient,
    paths: berth_config::Paths,
    rw: Arc<RwLayers>,
    volumes: Arc<Volumes>,
}

/// A running volume-driver plugin.
struct Plugin {
    name: String,
    id: String,
    driver: VolumeDriver,
    propagated: Option<(String, PathBuf)>,
    rw: Arc<RwLayers>,
    /// Its rootfs on the host, found at the first path that needs it (a path in
    /// the propagated mount does not; `ls` of recorded volumes needs none).
    rootfs: tokio::sync::OnceCell<PathBuf>,
}

impl Plugin {
    /// A path the plugin answered, on the host (Moby's ScopedPath).
    async fn host_path(&self, inside: &str) -> Result<PathBuf, BusError> {
        let prop = self.propagated.as_ref().map(|(p, h)| (p.as_str(), h.as_path()));
        if let Some((_, host)) = prop {
            if scoped_root(Path::new(""), prop, inside).0 == host {
                return Ok(scoped_path(Path::new(""), prop, inside));
            }
        }
        let rootfs = self
            .rootfs
            .get_or_try_init(|| async {
                let (rw, id) = (self.rw.clone(), self.id.clone());
                tokio::task::spawn_blocking(move || rw.rootfs_path(&id)).await.map_err(|e| BusError::internal(e.to_string()))?
            })
            .await
            .map_err(|e| BusError::internal(format!("plugin {}: its rootfs: {}", self.name, e.message)))?;
        Ok(scoped_path(rootfs, prop, inside))
    }
}

fn driver_err(op: &str, name: &str, e: berth_pluginproto::Error) -> BusError {
    BusError::internal(format!("{op} {name}: {e}"))
}

impl Drivers {
    pub fn new(bus: Bus, root: &std::path::Path, rw: Arc<RwLayers>, volumes: Arc<Volumes>) -> Drivers {
        Drivers { images: ImagesClient::new(bus), paths: berth_config::Paths::new(root), rw, volumes }
    }

    /// The enabled volume-driver plugin `driver` (a name as the user gives it).
    async fn plugin(&self, op: &str, vol: &str, driver: &str) -> Result<Plugin, BusError> {
        // Moby's words: a create looks the driver up; anything else on an existing
        // volume checks it with its driver first
        let lookup = |m: String| match op {
            "create" => format!("create {vol}: error looking up volume plugin {driver}: {m}"),
            _ => format!("get {vol}: error while checking if volume {vol:?} exists in driver {driver:?}: error looking up volume plugin {driver}: {m}"),
        };
        let p = match self.images.plugin_inspect(PluginInspect { name: driver.to_string() }).await {
            Ok(p) => p,
            Err(e) if e.is(ErrorKind::NotFound) => return Err(BusError::not_found(lookup(format!("plugin {driver:?} not found")))),
            Err(e) => return Err(BusError::internal(lookup(e.message))),
        };
        if !p.config.interface.types.iter().flatten().any(|t| t == VOLUME_DRIVER) {
            return Err(BusError::not_found(lookup(format!("plugin {driver:?} not found"))));
        }
        if !p.enabled {
            return Err(BusError::conflict(lookup(format!("plugin {driver} found but disabled"))));
        }
        let run = self.paths.plugin_run(&p.id);
        let propagated = Some(p.config.propagated_mount.clone()).filter(|m| !m.is_empty()).map(|m| (m, run.join("propagated-mount")));
        Ok(Plugin {
            name: p.name.clone(),
            id: p.id.clone(),
            driver: VolumeDriver::new(run.join("sock").join(&p.config.interface.socket), CALL_TIMEOUT),
            propagated,
            rw: self.rw.clone(),
            rootfs: tokio::sync::OnceCell::new(),
        })
    }

    /// The (driver, name) of every volume the enabled volume-driver plugins report
    /// now (their List, asked together); names berth had no record of are recorded.
    /// None when the plugins cannot be listed (the images service is away): `ls`
    /// then shows berth's records as they are.
    pub async fn listed(&self) -> Option<HashSet<(String, String)>> {
        let filters = HashMap::from([
            ("capability".to_string(), vec!["volumedriver".to_string()]),
            ("enabled".to_string(), vec!["true".to_string()]),
        ]);
        let plugins = match self.images.plugin_list(PluginList { filters }).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e.message, "volume ls: the plugins could not be listed");
                return None;
            }
        };
        let asks = plugins.iter().map(|p| async move {
            let plugin = self.plugin("list", "", &p.name).await?;
            let vols = plugin.driver.list().await.map_err(|e| driver_err("list", &p.name, e))?;
            Ok::<_, BusError>((plugin, vols))
        });
        let mut seen = HashSet::new();
        for answer in futures_util::future::join_all(asks).await {
            match answer {
                Ok((p, vols)) => {
                    for v in vols {
                        if self.volumes.driver_of(&v.name).is_none() {
                            let host = match Some(&v.mountpoint).filter(|m| !m.is_empty()) {
                                Some(m) => p.host_path(m).await.map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
                                None => String::new(),
                            };
                            if let Err(e) = self.volumes.insert_plugin_volume(&v.name, &p.name, HashMap::new(), HashMap::new(), host) {
                                tracing::warn!(volume = v.name, error = %e.message, "volume ls: could not record a plugin's volume");
                                continue;
                            }
                        }
                        seen.insert((p.name.clone(), v.name));
                    }
                }
                // Moby lists the others and puts this in Warnings
                Err(e) => tracing::warn!(error = %e.message, "volume ls: a plugin's List failed"),
            }
        }
        Some(seen)
    }

    /// `docker volume create -d <plugin>`.
    pub async fn create(&self, name: Option<String>, driver: &str, opts: HashMap<String, String>, labels: HashMap<String, String>) -> Result<docker::Volume, BusError> {
        let name = name.filter(|n| !n.is_empty()).unwrap_or_else(crate::util::random_id);
        crate::mountspec::validate_volume_name(&name).map_err(|e| BusError::invalid(format!("create {name}: {e}")))?;
        let p = self.plugin("create", &name, driver).await?;
        match self.volumes.driver_of(&name) {
            Some(d) if d == p.name => return self.volumes.inspect(&name),
            Some(d) => {
                return Err(BusError::conflict(format!("create {name}: volume name already in use by driver {d}")));
            }
            None => {}
        }
        p.driver.create(&name, &opts).await.map_err(|e| driver_err("create", &name, e))?;
        // where it is on the host, for `ls` (Moby's ls shows the plugin's List scoped)
        let host = match p.driver.path(&name).await {
            Ok(m) if !m.is_empty() => p.host_path(&m).await.map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
            _ => String::new(),
        };
        self.volumes.insert_plugin_volume(&name, &p.name, opts, labels, host)
    }

    /// `docker volume inspect`: the plugin's Get (Moby shows its mountpoint as the
    /// plugin answered it, not the host path that `ls` shows).
    pub async fn inspect(&self, name: &str, driver: &str) -> Result<docker::Volume, BusError> {
        let p = self.plugin("get", name, driver).await?;
        let v = p.driver.get(name).await.map_err(|e| driver_err("get", name, e))?;
        let host = match Some(&v.mountpoint).filter(|m| !m.is_empty()) {
            Some(m) => Some(p.host_path(m).await?),
            None => None,
        };
        self.volumes.plugin_volume(name, &v.mountpoint, host.as_deref(), &v.created_at)
    }

    /// `docker volume rm`: refused while in use, then the plugin's Remove. Forced,
    /// a plugin that is gone or fails does not keep the record.
    pub async fn remove(&self, name: &str, driver: &str, force: bool) -> Result<(), BusError> {
        self.volumes.check_unused(name)?;
        let res = match self.plugin("remove", name, driver).await {
            Ok(p) => p.driver.remove(name).await.map_err(|e| driver_err("remove", name, e)),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => self.volumes.forget_plugin_volume(name),
            Err(e) if force => {
                tracing::warn!(volume = name, error = %e.message, "forced removal of a plugin's volume");
                self.volumes.forget_plugin_volume(name)
            }
            Err(e) => Err(e),
        }
    }

    /// A container starts using the volume: the plugin's Mount, for this container.
    pub async fn acquire(&self, name: &str, driver: &str, container: &str, opts: &AcquireOpts<'_>) -> Result<PathBuf, BusError> {
        let p = self.plugin("mount", name, driver).await?;
        let inside = p.driver.mount(name, container).await.map_err(|e| driver_err("mount", name, e))?;
        if inside.is_empty() {
            let _ = p.driver.unmount(name, container).await;
            return Err(BusError::internal(format!("mount {name}: the plugin {} answered no mountpoint", p.name)));
        }
        let host = match p.host_path(&inside).await {
            Ok(h) => h,
            Err(e) => {
                let _ = p.driver.unmount(name, container).await;
                return Err(e);
            }
        };
        let dir = tokio::fs::metadata(&host).await.map(|m| m.is_dir()).unwrap_or(false);
        if !dir {
            let _ = p.driver.unmount(name, container).await;
            return Err(BusError::internal(format!(
                "mount {name}: the plugin's mountpoint {inside} is not a directory on the host ({})",
                host.display()
            )));
        }
        if let Err(e) = self.volumes.plugin_acquired(name, container, &host, opts) {
            let _ = p.driver.unmount(name, container).await;
            return Err(e);
        }
        Ok(host)
    }

    /// The container stopped using it: the plugin's Unmount (a plugin that is gone
    /// is logged; the container's reference goes anyway).
    pub async fn release(&self, name: &str, driver: &str, container: &str, unmount_only: bool) -> Result<(), BusError> {
        if !self.volumes.plugin_released(name, container, unmount_only)? {
            return Ok(());
        }
        let res = match self.plugin("unmount", name, driver).await {
            Ok(p) => p.driver.unmount(name, container).await.map_err(|e| driver_err("unmount", name, e)),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::warn!(volume = name, container, error = %e.message, "the plugin did not unmount the volume");
        }
        Ok(())
    }
}
