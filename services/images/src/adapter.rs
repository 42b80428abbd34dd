//! The bus adapter: each request of `bus_schema::images` to one trait method.
//! Streams open lazily: an error before the first message is the request's error
//! (Docker answers those with an HTTP status), one after ends the stream.

use berth_bus::{Bus, Responder, Server, StreamWriter};
use bus_schema::images::*;
use bus_schema::stream::ByteChunk;
use bus_schema::{docker, BusError, Service, StreamRpc};

use crate::api::ImagesApi;
use crate::archive::ByteSink;
use crate::progress::Progress;

/// A sink that accepts the stream request on its first item.
pub struct Lazy<R: StreamRpc<Reply = ()>> {
    resp: Option<Responder<R>>,
    w: Option<StreamWriter<R::Item>>,
}

impl<R: StreamRpc<Reply = ()>> Lazy<R> {
    pub fn new(resp: Responder<R>) -> Self {
        Lazy {
            resp: Some(resp),
            w: None,
        }
    }

    async fn writer(&mut self) -> Result<&mut StreamWriter<R::Item>, BusError> {
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
pub struct Direct(pub StreamWriter<JsonMessage>);
impl Progress for Direct {
    async fn send(&mut self, m: JsonMessage) -> Result<(), BusError> {
        self.0.send(m).await
    }
}

/// Register every images request on a server.
pub fn server<A: ImagesApi + Clone>(
    bus: Bus,
    api: A,
    registry: docker::RegistryServiceConfig,
) -> Server {
    let a = api.clone();
    let m = api.clone();
    let s = Server::new(bus, Service::Images)
        .metrics(move || {
            let n = m.info().images.unwrap_or(0);
            berth_telemetry::metrics::gauge_set("berth_images", "Images in the image store.", &[], n as f64);
            async {}
        })
        .info(move || {
        let mut info = a.info();
        info.registry_config = Some(registry.clone());
        info.index_server_address = Some(crate::registry::INDEX_SERVER.into());
        async move { info }
    });
    let a = api.clone();
    let s = s.stream(move |req: ImagePull, resp: Responder<ImagePull>| {
        let a = a.clone();
        async move {
            let mut out = Lazy::new(resp);
            let res = a.pull(req, &mut out).await;
            out.finish(res).await
        }
    });
    let a = api.clone();
    let s = s.stream(move |req: ImagePush, resp: Responder<ImagePush>| {
        let a = a.clone();
        async move {
            let mut out = Lazy::new(resp);
            let res = a.push(req, &mut out).await;
            out.finish(res).await
        }
    });
    let a = api.clone();
    let s = s.stream(move |req: ImageSave, resp: Responder<ImageSave>| {
        let a = a.clone();
        async move {
            let mut out = Lazy::new(resp);
            let res = a.save(req, &mut out).await;
            out.finish(res).await
        }
    });
    let a = api.clone();
    let s = s.stream(move |req: ImageLoad, resp: Responder<ImageLoad>| {
        let a = a.clone();
        async move {
            let (w, mut input) = resp.accept_duplex(()).await?;
            let mut out = Direct(w);
            let res = a.load(req, &mut input, &mut out).await;
            input.cancel().await;
            out.0.finish(res).await
        }
    });
    let a = api.clone();
    let s = s.stream(move |req: ImageImport, resp: Responder<ImageImport>| {
        let a = a.clone();
        async move {
            let (w, mut input) = resp.accept_duplex(()).await?;
            let mut out = Direct(w);
            let res = a.import(req, &mut input, &mut out).await;
            input.cancel().await;
            out.0.finish(res).await
        }
    });
    let a = api.clone();
    let s = s.rpc(move |req: RegistryLogin| {
        let a = a.clone();
        async move { a.login(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageList| {
        let a = a.clone();
        async move { a.list(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageInspect| {
        let a = a.clone();
        async move { a.inspect(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageHistory| {
        let a = a.clone();
        async move { a.history(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageTag| {
        let a = a.clone();
        async move { a.tag(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageRemove| {
        let a = a.clone();
        async move { a.remove(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImagePrune| {
        let a = a.clone();
        async move { a.prune(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageResolve| {
        let a = a.clone();
        async move { a.resolve(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageCreateFromLayer| {
        let a = a.clone();
        async move { a.create_from_layer(req).await }
    });
    let a = api.clone();
    let s = s.rpc(move |req: ImageDf| {
        let a = a.clone();
        async move { a.df(req).await }
    });
    let a = api;
    s.rpc(move |req: DistributionInspect| {
        let a = a.clone();
        async move { a.distribution(req).await }
    })
}
