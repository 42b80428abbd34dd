//! The storage service: drivers (overlay2, btrfs, vfs), the layer store, container
//! read-write layers and volumes.
//!
//! [`Storage`] is the library core behind `bus_schema::storage::StorageApi`, usable
//! in-process; [`serve`] serves it on the bus with the adapter generated from the
//! storage table (`berth_bus::storage::serve_storage`); callers use
//! `berth_bus::storage::StorageClient`.
//! One module per concern: `driver` (snapshotters), `apply` (tar apply, shared by all
//! drivers), `layers` (layer store), `diff` (tars and change lists out of layers),
//! `rw` (container layers), `volumes`, `mountspec` (`-v`/`--mount` parsing for the
//! runtime, pure).

pub mod apply;
pub mod copy;
pub mod diff;
pub mod driver;
pub mod layers;
pub use berth_mountspec as mountspec;
pub mod rw;
pub mod split;
pub mod tarfmt;
pub mod util;
pub mod plugin_volumes;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::storage::*;
use bus_schema::stream::{ByteChunk, MAX_CHUNK};
use bus_schema::{docker, BusError, BusStream, Service};
use futures_util::StreamExt;

pub use bus_schema::storage::StorageApi;
pub use layers::Input;

/// The library core: one driver, its layer store, container layers, volumes.
pub struct Storage {
    pub driver: Arc<dyn driver::Driver>,
    pub layers: Arc<layers::LayerStore>,
    pub rw: Arc<rw::RwLayers>,
    pub volumes: Arc<volumes::Volumes>,
    /// Volume-driver plugins (set when served on a bus).
    pub plugins: std::sync::OnceLock<plugin_volumes::Drivers>,
}

/// The driver of a request or a volume that is a plugin's (not `local`).
fn plugin_driver(d: &str) -> Option<&str> {
    Some(d).filter(|d| !d.is_empty() && *d != "local")
}

impl Storage {
    fn drivers(&self) -> Result<&plugin_volumes::Drivers, BusError> {
        self.plugins.get().ok_or_else(|| BusError::internal("volume plugins are not available"))
    }
}

impl Storage {
    /// Open the storage of a data root with driver `name` and daemon.json's storage-opts.
    /// Reconciles what a crash left (half-applied layers, half-made container layers).
    pub fn open(
        root: &Path,
        name: &str,
        opts: &[String],
        events: Arc<dyn volumes::EventSink>,
    ) -> Result<Storage, BusError> {
        let storage_root = root.join("storage");
        let driver = driver::open(name, &storage_root, opts).map_err(|e| match e {
            driver::DriverError::Unsupported(_)
            | driver::DriverError::Prerequisites(_)
            | driver::DriverError::Invalid(_) => BusError::not_implemented(e.to_string()),
            e => e.into(),
        })?;
        let layers = Arc::new(layers::LayerStore::open(driver.clone())?);
        let rw = Arc::new(rw::RwLayers::open(layers.clone())?);
        let removed = layers.gc_all();
        if !removed.is_empty() {
            tracing::info!(
                count = removed.len(),
                "collected unreferenced layers at start"
            );
        }
        let volumes = Arc::new(volumes::Volumes::open(
            storage_root.join("volumes"),
            events,
        )?);
        Ok(Storage {
            driver,
            layers,
            rw,
            volumes,
            plugins: std::sync::OnceLock::new(),
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::internal(format!("storage task failed: {e}")))?
}

struct RwRootfs(Arc<rw::RwLayers>);

impl volumes::RootfsLookup for RwRootfs {
    fn mount(&self, id: &str) -> Result<PathBuf, BusError> {
        self.0.mount(id)
    }
    fn unmount(&self, id: &str) -> Result<(), BusError> {
        self.0.unmount(id)
    }
}

/// Layers: `layer_apply` creates a layer (the caller holds one reference),
/// `layer_retain`/`layer_release` count image references, unreferenced layers without
/// children or containers on them are collected. Containers: `rw_layer_create` ->
/// `rw_layer_mount` (counted) -> ... -> `rw_layer_unmount` -> `rw_layer_remove`.
/// Volumes: create, then `volume_acquire`/`volume_release_ref` per container; in use
/// means no removal.
impl StorageApi for Storage {
    async fn layer_apply(&self, req: LayerApply, input: BusStream<ByteChunk>) -> Result<((), BusStream<LayerApplied>), BusError> {
        let layers = self.layers.clone();
        let items = berth_bus::produce(move |out| async move {
            let storage_layers = layers;
            // the apply reads a channel from a blocking thread
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let pump = tokio::spawn(async move {
                let mut input = input;
                while let Some(c) = input.next().await {
                    let failed = c.is_err();
                    if tx.send(c.map(|b| b.0)).await.is_err() || failed {
                        break;
                    }
                }
            });
            let res = apply_layer(&storage_layers, req, rx).await;
            pump.abort();
            out.send(res?).await
        });
        Ok(((), items))
    }

    async fn layer_stat(&self, req: LayerStat) -> Result<LayerInfo, BusError> {
        Ok(self.layers.stat(&req.chain_id)?.info())
    }

    async fn layer_retain(&self, req: LayerRetain) -> Result<LayerInfo, BusError> {
        let l = self.layers.clone();
        blocking(move || l.retain(&req.chain_id).map(|m| m.info())).await
    }

    async fn layer_release(&self, req: LayerRelease) -> Result<Vec<String>, BusError> {
        let l = self.layers.clone();
        blocking(move || l.release(&req.chain_id)).await
    }

    async fn layer_export(&self, req: LayerExport) -> Result<((), BusStream<ByteChunk>), BusError> {
        // a missing layer is the request's error, not the stream's
        self.layers.stat(&req.chain_id)?;
        let l = self.layers.clone();
        Ok((
            (),
            berth_bus::produce(move |out| {
                blocking(move || {
                    l.export(&req.chain_id, MAX_CHUNK, &mut |c| {
                        out.blocking_send(ByteChunk(c)).map_err(|_| std::io::Error::other("reader went away"))
                    })
                })
            }),
        ))
    }

    async fn rw_layer_create(&self, req: RwLayerCreate) -> Result<(), BusError> {
        let rw = self.rw.clone();
        blocking(move || rw.create(&req.id, req.parent.as_deref())).await
    }

    async fn rw_layer_mount(&self, req: RwLayerMount) -> Result<RwMount, BusError> {
        let rw = self.rw.clone();
        blocking(move || {
            rw.mount(&req.id).map(|p| RwMount {
                path: p.to_string_lossy().into_owned(),
            })
        })
        .await
    }

    async fn rw_layer_unmount(&self, req: RwLayerUnmount) -> Result<(), BusError> {
        let rw = self.rw.clone();
        blocking(move || rw.unmount(&req.id)).await
    }

    async fn rw_layer_remove(&self, req: RwLayerRemove) -> Result<(), BusError> {
        let rw = self.rw.clone();
        blocking(move || rw.remove(&req.id)).await
    }

    async fn rw_layer_list(&self, _req: RwLayerList) -> Result<Vec<RwLayerState>, BusError> {
        Ok(self.rw.list())
    }

    async fn rw_layer_changes(&self, req: RwLayerChanges) -> Result<Vec<Change>, BusError> {
        let rw = self.rw.clone();
        blocking(move || rw.changes(&req.id)).await
    }

    async fn rw_layer_export(&self, req: RwLayerExport) -> Result<((), BusStream<ByteChunk>), BusError> {
        // a missing container layer is the request's error, not the stream's
        let rw = self.rw.clone();
        let id = req.id.clone();
        blocking(move || rw.size(&id)).await?;
        let rw = self.rw.clone();
        Ok((
            (),
            berth_bus::produce(move |out| {
                blocking(move || {
                    let path = rw.mount(&req.id)?;
                    let res = diff::write_tree_tar(&path, &mut |c| {
                        out.blocking_send(ByteChunk(c)).map_err(|_| std::io::Error::other("reader went away"))
                    });
                    let un = rw.unmount(&req.id);
                    res.map_err(|e| BusError::internal(format!("exporting {}: {e}", req.id)))?;
                    un
                })
            }),
        ))
    }

    async fn rw_layer_commit(&self, req: RwLayerCommit) -> Result<LayerApplied, BusError> {
        let rw = self.rw.clone();
        let id = req.id.clone();
        let (parent, src) = blocking(move || Ok((rw.parent(&id)?, rw.diff_source(&id)?))).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, BusError>>(16);
        let id = req.id.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let res = diff::write_diff_tar(&src, &Default::default(), &mut |c| {
                tx.blocking_send(Ok(c))
                    .map_err(|_| std::io::Error::other("apply went away"))
            });
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(BusError::internal(format!(
                    "reading the changes of {id}: {e}"
                ))));
            }
        });
        let res = self
            .layers
            .apply(
                parent,
                "application/vnd.docker.image.rootfs.diff.tar".into(),
                None,
                None,
                rx,
            )
            .await;
        let _ = producer.await;
        res
    }

    async fn rw_layer_size(&self, req: RwLayerSize) -> Result<RwSize, BusError> {
        let rw = self.rw.clone();
        blocking(move || rw.size(&req.id)).await
    }

    async fn volume_create(&self, req: VolumeCreate) -> Result<docker::Volume, BusError> {
        if let Some(d) = plugin_driver(&req.driver) {
            return self.drivers()?.create(req.name, d, req.driver_opts, req.labels).await;
        }
        let v = self.volumes.clone();
        blocking(move || {
            v.create(
                req.name,
                &req.driver,
                req.driver_opts,
                req.labels,
                req.anonymous,
            )
        })
        .await
    }

    async fn volume_inspect(&self, req: VolumeInspect) -> Result<docker::Volume, BusError> {
        if let Some(d) = self.volumes.driver_of(&req.name).filter(|d| plugin_driver(d).is_some()) {
            return self.drivers()?.inspect(&req.name, &d).await;
        }
        self.volumes.inspect(&req.name)
    }

    async fn volume_list(&self, req: VolumeList) -> Result<Vec<docker::Volume>, BusError> {
        // plugin volumes as their plugins report them (plugin_volumes::Drivers::listed)
        let listed = match self.plugins.get() {
            Some(d) if req.plugins => d.listed().await,
            _ => None,
        };
        let mut vols = self.volumes.list(&req.filters)?;
        if let Some(listed) = listed {
            vols.retain(|v| plugin_driver(&v.driver).is_none() || listed.contains(&(v.driver.clone(), v.name.clone())));
        }
        Ok(vols)
    }

    async fn volume_remove(&self, req: VolumeRemove) -> Result<(), BusError> {
        if let Some(d) = self.volumes.driver_of(&req.name).filter(|d| plugin_driver(d).is_some()) {
            return self.drivers()?.remove(&req.name, &d, req.force).await;
        }
        let v = self.volumes.clone();
        blocking(move || v.remove(&req.name, req.force)).await
    }

    async fn volume_prune(
        &self,
        req: VolumePrune,
    ) -> Result<docker::VolumePruneResponse, BusError> {
        let v = self.volumes.clone();
        blocking(move || v.prune(&req.filters)).await
    }

    async fn volume_acquire(&self, req: VolumeAcquire) -> Result<VolumeMounted, BusError> {
        if let Some(d) = self.volumes.driver_of(&req.name).filter(|d| plugin_driver(d).is_some()) {
            let opts = volumes::AcquireOpts {
                copy_from: req.copy_from.as_deref(),
                destination: req.destination.as_deref(),
                read_write: !req.read_only,
                propagation: req.propagation.as_deref().unwrap_or(""),
            };
            let p = self.drivers()?.acquire(&req.name, &d, &req.container_id, &opts).await?;
            return Ok(VolumeMounted { path: p.to_string_lossy().into_owned() });
        }
        let v = self.volumes.clone();
        let rootfs = RwRootfs(self.rw.clone());
        blocking(move || {
            let opts = volumes::AcquireOpts {
                copy_from: req.copy_from.as_deref(),
                destination: req.destination.as_deref(),
                read_write: !req.read_only,
                propagation: req.propagation.as_deref().unwrap_or(""),
            };
            v.acquire(&req.name, &req.container_id, &opts, &rootfs)
                .map(|p| VolumeMounted {
                    path: p.to_string_lossy().into_owned(),
                })
        })
        .await
    }

    async fn volume_release_ref(&self, req: VolumeReleaseRef) -> Result<(), BusError> {
        if let Some(d) = self.volumes.driver_of(&req.name).filter(|d| plugin_driver(d).is_some()) {
            return self.drivers()?.release(&req.name, &d, &req.container_id, req.unmount_only).await;
        }
        if req.unmount_only {
            return Ok(()); // a local volume stays mounted while a container refers to it
        }
        let v = self.volumes.clone();
        blocking(move || v.release(&req.name, &req.container_id)).await
    }

    async fn storage_df(&self, _req: StorageDf) -> Result<StorageUsage, BusError> {
        let l = self.layers.clone();
        let v = self.volumes.clone();
        blocking(move || {
            let layers = l
                .list()
                .into_iter()
                .map(|m| (m.chain_id, m.size as i64))
                .collect();
            Ok(StorageUsage {
                layers,
                volumes: v.usage(),
            })
        })
        .await
    }
}

/// Apply a layer from `input` (what `layer_apply` does, for in-process callers).
pub async fn apply_layer(layers: &Arc<layers::LayerStore>, req: LayerApply, input: Input) -> Result<LayerApplied, BusError> {
    layers.apply(req.parent, req.media_type, req.compressed_digest, req.diff_id, input).await
}

impl Storage {
    /// Apply a layer from a channel (`layer_apply` without the bus streams).
    pub async fn apply_layer(&self, req: LayerApply, input: Input) -> Result<LayerApplied, BusError> {
        apply_layer(&self.layers, req, input).await
    }

    /// This service's part of `docker info`.
    pub fn info(&self) -> docker::SystemInfo {
        docker::SystemInfo {
            driver: Some(self.driver.name().to_string()),
            driver_status: Some(
                self.driver
                    .status()
                    .into_iter()
                    .map(|[a, b]| vec![a, b])
                    .collect(),
            ),
            plugins: Some(docker::PluginsInfo {
                volume: Some(vec!["local".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Volume events onto the bus.
struct BusEvents {
    bus: Bus,
    rt: tokio::runtime::Handle,
}

impl volumes::EventSink for BusEvents {
    fn publish(&self, ev: bus_schema::event::Event) {
        let bus = self.bus.clone();
        self.rt.spawn(async move { bus.publish_event(&ev).await });
    }
}

/// The data root the service works in: `BERTH_ROOT` (set by `berth up`) or daemon.json.
pub fn data_root(cfg: &DaemonConfig) -> PathBuf {
    std::env::var_os(berth_config::env::ROOT)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.data_root())
}

pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    let root = data_root(&cfg);
    let events: Arc<dyn volumes::EventSink> = Arc::new(BusEvents {
        bus: bus.clone(),
        rt: tokio::runtime::Handle::current(),
    });
    let name = cfg.storage_driver().to_string();
    let opts = cfg.storage_opts.clone();
    let open_root = root.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(&open_root, &name, &opts, events))
        .await?
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let _ = storage.plugins.set(plugin_volumes::Drivers::new(bus.clone(), &root, storage.rw.clone(), storage.volumes.clone()));
    tracing::info!(driver = storage.driver.name(), "storage ready");
    let storage = Arc::new(storage);
    let info = storage.clone();
    let server = Server::new(bus, Service::Storage).info(move || {
        let info = info.clone();
        async move { info.info() }
    });
    Ok(berth_bus::storage::serve_storage(server, storage))
}
