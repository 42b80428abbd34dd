//! The bus adapter: each request of `bus_schema::images` to one trait method.
//! Streams open lazily: an error before the first message is the request's error
//! (Docker answers those with an HTTP status), one after ends the stream.

use std::sync::Arc;

use berth_bus::images::ImagesApi;
use berth_bus::{answer, answer_duplex, Answer, Bus, Server, Sink};
use bus_schema::images::*;
use bus_schema::stream::ByteChunk;
use bus_schema::{docker, BusError, BusStream, Service, StreamRpc};

use crate::api::ImagesApi as ImagesCore;
use crate::archive::{BusInput, ByteSink};
use crate::plugins::Plugins;
use crate::progress::Progress;

/// A sink that accepts the stream request on its first item.
pub struct Lazy<R: StreamRpc<Reply = ()>> {
    resp: Option<Answer<R>>,
    w: Option<Sink<R::Item>>,
}

impl<R: StreamRpc<Reply = ()>> Lazy<R> {
    pub fn new(resp: Answer<R>) -> Self {
        Lazy {
            resp: Some(resp),
            w: None,
        }
    }

    async fn writer(&mut self) -> Result<&mut Sink<R::Item>, BusError> {
        if self.w.is_none() {
            let resp = self
                .resp
                .take()
                .ok_or_else(|| BusError::internal("stream already finished"))?;
            self.w = Some(resp.accept(()).await?);
        }
        Ok(self.w.as_mut().unwrap())
    }

    /// End the request: an error before any item is the reply.
    pub async fn finish(mut self, res: Result<(), BusError>) -> Result<(), BusError> {
        match (self.w.take(), res) {
            (Some(w), r) => w.finish(r).await,
            (None, Err(e)) => Err(e),
            (None, Ok(())) => {
                let w = self.writer().await?;
                let _ = w;
                self.w.take().unwrap().end().await
            }
        }
    }
}

impl<R: StreamRpc<Reply = (), Item = JsonMessage>> Progress for Lazy<R> {
    async fn send(&mut self, m: JsonMessage) -> Result<(), BusError> {
        self.writer().await?.send(m).await
    }
}

impl<R: StreamRpc<Reply = (), Item = ByteChunk>> ByteSink for Lazy<R> {
    async fn send(&mut self, b: Vec<u8>) -> Result<(), BusError> {
        if b.is_empty() {
            return Ok(());
        }
        let w = self.writer().await?;
        for c in b.chunks(bus_schema::stream::MAX_CHUNK) {
            w.send(ByteChunk(c.to_vec())).await?;
        }
        Ok(())
    }
}

/// Messages straight to an accepted stream (load and import, whose input needs the
/// stream open first).
pub struct Direct(pub Sink<JsonMessage>);
impl Progress for Direct {
    async fn send(&mut self, m: JsonMessage) -> Result<(), BusError> {
        self.0.send(m).await
    }
}

/// The images service's operations on the bus (its table in `bus_schema::images`):
/// the images core `A` and the managed plugins, served by `serve_images`.
pub struct BusApi<A> {
    pub images: A,
    /// None where plugins are not kept (service tests of the images core): their
    /// operations answer NotImplemented.
    pub plugins: Option<Arc<Plugins>>,
}

impl<A> BusApi<A> {
    fn plugins(&self) -> Result<&Arc<Plugins>, BusError> {
        self.plugins
            .as_ref()
            .ok_or_else(|| BusError::not_implemented("plugins are not kept by this images service"))
    }
}

/// Serve every images operation: `api` for images, `plugins` for plugins.
pub fn server<A: ImagesCore + Clone>(
    bus: Bus,
    api: A,
    plugins: Option<Arc<Plugins>>,
    registry: docker::RegistryServiceConfig,
) -> Server {
    let a = api.clone();
    let m = api.clone();
    let s = Server::new(bus, Service::Images)
        .metrics(move || {
            let n = m.info().images.unwrap_or(0);
            berth_telemetry::metrics::gauge_set(
                "berth_images",
                "Images in the image store.",
                &[],
                n as f64,
            );
            async {}
        })
        .info(move || {
            let mut info = a.info();
            info.registry_config = Some(registry.clone());
            info.index_server_address = Some(crate::registry::INDEX_SERVER.into());
            async move { info }
        });
    berth_bus::images::serve_images(
        s,
        Arc::new(BusApi {
            images: api,
            plugins,
        }),
    )
}

impl<A: ImagesCore + Clone> ImagesApi for BusApi<A> {
    async fn image_pull(&self, req: ImagePull) -> Result<((), BusStream<JsonMessage>), BusError> {
        let a = self.images.clone();
        answer::<ImagePull, _, _>(move |resp| async move {
            let mut out = Lazy::new(resp);
            let res = a.pull(req, &mut out).await;
            out.finish(res).await
        })
        .await
    }
    async fn image_push(&self, req: ImagePush) -> Result<((), BusStream<JsonMessage>), BusError> {
        let a = self.images.clone();
        answer::<ImagePush, _, _>(move |resp| async move {
            let mut out = Lazy::new(resp);
            let res = a.push(req, &mut out).await;
            out.finish(res).await
        })
        .await
    }
    async fn registry_login(&self, req: RegistryLogin) -> Result<docker::AuthResponse, BusError> {
        self.images.login(req).await
    }
    async fn image_list(&self, req: ImageList) -> Result<Vec<docker::ImageSummary>, BusError> {
        self.images.list(req).await
    }
    async fn image_inspect(&self, req: ImageInspect) -> Result<ImageDetails, BusError> {
        self.images.inspect(req).await
    }
    async fn image_history(
        &self,
        req: ImageHistory,
    ) -> Result<Vec<docker::ImageHistoryResponseItem>, BusError> {
        self.images.history(req).await
    }
    async fn image_tag(&self, req: ImageTag) -> Result<(), BusError> {
        self.images.tag(req).await
    }
    async fn image_remove(
        &self,
        req: ImageRemove,
    ) -> Result<Vec<docker::ImageDeleteResponseItem>, BusError> {
        self.images.remove(req).await
    }
    async fn image_prune(&self, req: ImagePrune) -> Result<docker::ImagePruneResponse, BusError> {
        self.images.prune(req).await
    }
    async fn image_save(&self, req: ImageSave) -> Result<((), BusStream<ByteChunk>), BusError> {
        let a = self.images.clone();
        answer::<ImageSave, _, _>(move |resp| async move {
            let mut out = Lazy::new(resp);
            let res = a.save(req, &mut out).await;
            out.finish(res).await
        })
        .await
    }
    async fn image_load(
        &self,
        req: ImageLoad,
        input: BusStream<ByteChunk>,
    ) -> Result<((), BusStream<JsonMessage>), BusError> {
        let a = self.images.clone();
        answer_duplex::<ImageLoad, _, _>(input, move |resp| async move {
            let (w, input) = resp.accept_duplex(()).await?;
            let mut input = BusInput(input);
            let mut out = Direct(w);
            let res = a.load(req, &mut input, &mut out).await;
            drop(input);
            out.0.finish(res).await
        })
        .await
    }
    async fn image_import(
        &self,
        req: ImageImport,
        input: BusStream<ByteChunk>,
    ) -> Result<((), BusStream<JsonMessage>), BusError> {
        let a = self.images.clone();
        answer_duplex::<ImageImport, _, _>(input, move |resp| async move {
            let (w, input) = resp.accept_duplex(()).await?;
            let mut input = BusInput(input);
            let mut out = Direct(w);
            let res = a.import(req, &mut input, &mut out).await;
            drop(input);
            out.0.finish(res).await
        })
        .await
    }
    async fn image_resolve(&self, req: ImageResolve) -> Result<ResolvedImage, BusError> {
        self.images.resolve(req).await
    }
    async fn image_create_from_layer(&self, req: ImageCreateFromLayer) -> Result<String, BusError> {
        self.images.create_from_layer(req).await
    }
    async fn image_df(&self, req: ImageDf) -> Result<Vec<docker::ImageSummary>, BusError> {
        self.images.df(req).await
    }
    async fn distribution_inspect(
        &self,
        req: DistributionInspect,
    ) -> Result<docker::DistributionInspect, BusError> {
        self.images.distribution(req).await
    }

    async fn plugin_create(
        &self,
        req: PluginCreate,
        input: BusStream<ByteChunk>,
    ) -> Result<((), BusStream<()>), BusError> {
        let p = self.plugins()?.clone();
        answer_duplex::<PluginCreate, _, _>(input, move |resp| async move {
            let (w, input) = resp.accept_duplex(()).await?;
            let mut input = BusInput(input);
            let res = p.create(&req.name, &mut input).await;
            drop(input);
            w.finish(res).await
        })
        .await
    }
    async fn plugin_list(&self, req: PluginList) -> Result<Vec<Plugin>, BusError> {
        self.plugins()?.list(&req.filters).await
    }
    async fn plugin_inspect(&self, req: PluginInspect) -> Result<Plugin, BusError> {
        self.plugins()?.inspect(&req.name).await
    }
    async fn plugin_set(&self, req: PluginSet) -> Result<(), BusError> {
        self.plugins()?.set(&req.name, &req.args).await
    }
    async fn plugin_enable(&self, req: PluginEnable) -> Result<(), BusError> {
        self.plugins()?.enable(&req.name).await
    }
    async fn plugin_disable(&self, req: PluginDisable) -> Result<(), BusError> {
        self.plugins()?.disable(&req.name, req.force).await
    }
    async fn plugin_remove(&self, req: PluginRemove) -> Result<(), BusError> {
        self.plugins()?.remove(&req.name, req.force).await
    }
    async fn plugin_privilege_list(
        &self,
        req: PluginPrivilegeList,
    ) -> Result<Option<Vec<PluginPrivilege>>, BusError> {
        self.plugins()?.privileges(&req).await
    }
    async fn plugin_pull(
        &self,
        req: PluginPull,
    ) -> Result<(String, BusStream<JsonMessage>), BusError> {
        let p = self.plugins()?.clone();
        answer::<PluginPull, _, _>(move |resp| async move {
            // the name is the reply, once the checks Moby makes before its first
            // line are passed (their errors are the request's)
            let (name, res) = p.pull_prepare(&req).await?;
            let w = resp.accept(name.clone()).await?;
            let mut out = Direct(w);
            let r = p.pull_run(&name, res, &req.privileges, &mut out).await;
            out.0.finish(r).await
        })
        .await
    }
    async fn plugin_push(&self, req: PluginPush) -> Result<((), BusStream<JsonMessage>), BusError> {
        let p = self.plugins()?.clone();
        answer::<PluginPush, _, _>(move |resp| async move {
            let mut out = Lazy::new(resp);
            let r = p.push(&req, &mut out).await;
            out.finish(r).await
        })
        .await
    }
    async fn plugin_upgrade(
        &self,
        req: PluginUpgrade,
    ) -> Result<(String, BusStream<JsonMessage>), BusError> {
        let p = self.plugins()?.clone();
        answer::<PluginUpgrade, _, _>(move |resp| async move {
            let (name, res) = p.upgrade_prepare(&req).await?;
            let w = resp.accept(name.clone()).await?;
            let mut out = Direct(w);
            let r = p.upgrade_run(&name, res, &req.privileges, &mut out).await;
            out.0.finish(r).await
        })
        .await
    }
}
