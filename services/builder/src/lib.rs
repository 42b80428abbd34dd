//! The builder service: `docker build` through the classic builder API (`POST /build`
//! with a tar context) and `docker commit`, composed from the images, storage and
//! runtime services over the bus.

pub mod build;
pub mod config;
pub mod context;
pub mod dockerfile;
pub mod dockerignore;
pub mod shell;

use std::sync::Arc;

use berth_bus::images::{ImagesApi, ImagesClient};
use berth_bus::runtime::{RuntimeApi, RuntimeClient};
use berth_bus::storage::{StorageApi, StorageClient};
use berth_bus::builder::BuilderApi;
use berth_bus::{Bus, Server};
use berth_config::{DaemonConfig, Paths};
use bus_schema::builder::{BuildPrune, ContainerCommit, ImageBuild};
use bus_schema::images::{HistoryEntry, ImageCreateFromLayer, JsonMessage};
use bus_schema::runtime::{ContainerInspect, ContainerPause, ContainerUnpause};
use bus_schema::storage::RwLayerCommit;
use bus_schema::stream::ByteChunk;
use bus_schema::{docker, BusError, BusStream, ErrorKind, Service};

pub use berth_rules::id::new_id;

pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    let root = std::env::var(berth_config::env::ROOT).map(Into::into).unwrap_or_else(|_| cfg.data_root());
    let dir = Paths::new(root).builder();
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_dir_all(dir.join("tmp"));
    let b = Arc::new(build::Builder::new(bus.clone(), dir));
    Ok(berth_bus::builder::serve_builder(
        Server::new(bus, Service::Builder),
        Arc::new(Api(b)),
    ))
}

/// The builder's operations (its table in `bus_schema::builder`), served by
/// `serve_builder`.
pub struct Api(pub Arc<build::Builder>);

impl BuilderApi for Api {
    async fn image_build(
        &self,
        req: ImageBuild,
        input: BusStream<ByteChunk>,
    ) -> Result<((), BusStream<JsonMessage>), BusError> {
        let b = self.0.clone();
        berth_bus::answer_duplex::<ImageBuild, _, _>(input, move |resp| async move {
            let (mut w, input) = resp.accept_duplex(()).await?;
            match b.build(req, input, &mut w).await {
                Ok(_) => w.end().await,
                // before the first step: the gateway answers it as Moby does, with a status
                Err(e) if e.early.is_some() => {
                    w.fail(BusError::new(
                        e.early.unwrap_or(ErrorKind::Internal),
                        e.message,
                    ))
                    .await
                }
                Err(e) => {
                    let mut m = JsonMessage::error(e.message);
                    if let Some(d) = m.error_detail.as_mut() {
                        d.code = Some(e.code);
                    }
                    w.send(m).await?;
                    w.end().await
                }
            }
        })
        .await
    }

    async fn container_commit(&self, r: ContainerCommit) -> Result<docker::IdResponse, BusError> {
        commit(&self.0.bus, r).await
    }

    async fn build_prune(&self, _r: BuildPrune) -> Result<docker::BuildPruneResponse, BusError> {
        self.0.prune_cache();
        Ok(docker::BuildPruneResponse {
            caches_deleted: Some(vec![]),
            space_reclaimed: Some(0),
        })
    }
}

/// `docker commit`: the container's changes as a layer on its image, with its config
/// (and `-c` changes) as the new image's config.
pub async fn commit(bus: &Bus, r: ContainerCommit) -> Result<docker::IdResponse, BusError> {
    let (runtime, images, storage) = (RuntimeClient::new(bus.clone()), ImagesClient::new(bus.clone()), StorageClient::new(bus.clone()));
    let c = runtime.container_inspect(ContainerInspect { id: r.container.clone(), size: false }).await?;
    let id = c.id.clone().unwrap_or_default();
    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    let mut pause = r.pause && running && !c.state.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if pause {
        if let Err(e) = runtime.container_pause(ContainerPause { id: id.clone() }).await {
            // it exited since the inspect (a `start` then `commit` of a short
            // command): Docker commits a stopped container as it is
            if e.kind != bus_schema::ErrorKind::Conflict {
                return Err(e);
            }
            pause = false;
        }
    }
    let layer = storage.rw_layer_commit(RwLayerCommit { id: id.clone() }).await;
    if pause {
        let _ = runtime.container_unpause(ContainerUnpause { id: id.clone() }).await;
    }
    let layer = layer?;
    let mut cfg = config::from_container(&r.config.clone().or(c.config.clone()).unwrap_or_default());
    if let Some(user_cfg) = &r.config {
        // fields not sent fall back to the container's
        let base = config::from_container(&c.config.clone().unwrap_or_default());
        cfg.env = cfg.env.or(base.env);
        cfg.cmd = cfg.cmd.or(base.cmd);
        cfg.entrypoint = cfg.entrypoint.or(base.entrypoint);
        cfg.working_dir = cfg.working_dir.filter(|w| !w.is_empty()).or(base.working_dir);
        cfg.exposed_ports = cfg.exposed_ports.or(base.exposed_ports);
        cfg.labels = cfg.labels.or(base.labels);
        let _ = user_cfg;
    }
    let mut cmd_set = true;
    for ch in &r.changes {
        let df = dockerfile::parse(&format!("{ch}\n")).map_err(|e| BusError::invalid(e.to_string()))?;
        let ins = &df.instructions[0];
        if !["CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "USER", "VOLUME", "WORKDIR", "STOPSIGNAL", "HEALTHCHECK", "SHELL"].contains(&ins.cmd.as_str()) {
            return Err(BusError::invalid(format!("{} is not a valid change command", ins.cmd.to_lowercase())));
        }
        let vars = config::env_map(&cfg);
        config::apply(&mut cfg, ins, &vars, '\\', &mut cmd_set).map_err(BusError::invalid)?;
    }
    let path = c.path.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    let mut tags = Vec::new();
    if let Some(repo) = r.repo.as_deref().filter(|s| !s.is_empty()) {
        tags.push(format!("{repo}:{}", r.tag.as_deref().filter(|t| !t.is_empty()).unwrap_or("latest")));
    }
    let image = images
        .image_create_from_layer(ImageCreateFromLayer {
            parent: c.image.clone(),
            layer: Some(layer),
            config: cfg,
            history: HistoryEntry {
                created_by: std::iter::once(path).chain(args).collect::<Vec<_>>().join(" "),
                comment: r.comment.clone().filter(|s| !s.is_empty()),
                author: r.author.clone().filter(|s| !s.is_empty()),
                empty_layer: false,
            },
            author: r.author.clone().filter(|s| !s.is_empty()),
            comment: r.comment.clone().filter(|s| !s.is_empty()),
            tags,
            record_parent: true,
        })
        .await?;
    let name = c.name.clone().unwrap_or_default().trim_start_matches('/').to_string();
    let ev = bus_schema::event::Event::now(bus_schema::event::EventType::Container, bus_schema::event::Action::Commit, id).attr("comment", r.comment.clone().unwrap_or_default()).attr("name", name);
    bus.publish_event(&ev).await;
    Ok(docker::IdResponse { id: image })
}
