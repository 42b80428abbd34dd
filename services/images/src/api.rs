//! The images service as a trait, so the bus adapter (and tests) do not care what
//! implements it. Lifecycle of an image: `pull`/`load`/`import`/`create_from_layer`
//! create it (its top layer referenced in storage), `tag` names it, `resolve` hands
//! it to the runtime and builder, `push`/`save` copy it out, `remove`/`prune` drop
//! names and then the image, giving its layer reference back.

use bus_schema::images::*;
use bus_schema::{docker, BusError};
use std::future::Future;
use std::sync::Arc;

use crate::archive::{ByteSink, ByteSource};
use crate::progress::Progress;
use crate::service::Images;

pub trait ImagesApi: Send + Sync + 'static {
    fn pull<P: Progress>(
        &self,
        req: ImagePull,
        out: &mut P,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    fn push<P: Progress>(
        &self,
        req: ImagePush,
        out: &mut P,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    fn login(
        &self,
        req: RegistryLogin,
    ) -> impl Future<Output = Result<docker::AuthResponse, BusError>> + Send;
    fn list(
        &self,
        req: ImageList,
    ) -> impl Future<Output = Result<Vec<docker::ImageSummary>, BusError>> + Send;
    fn inspect(
        &self,
        req: ImageInspect,
    ) -> impl Future<Output = Result<ImageDetails, BusError>> + Send;
    fn history(
        &self,
        req: ImageHistory,
    ) -> impl Future<Output = Result<Vec<docker::ImageHistoryResponseItem>, BusError>> + Send;
    fn tag(&self, req: ImageTag) -> impl Future<Output = Result<(), BusError>> + Send;
    fn remove(
        &self,
        req: ImageRemove,
    ) -> impl Future<Output = Result<Vec<docker::ImageDeleteResponseItem>, BusError>> + Send;
    fn prune(
        &self,
        req: ImagePrune,
    ) -> impl Future<Output = Result<docker::ImagePruneResponse, BusError>> + Send;
    fn save<S: ByteSink>(
        &self,
        req: ImageSave,
        out: &mut S,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    fn load<I: ByteSource, P: Progress>(
        &self,
        req: ImageLoad,
        input: &mut I,
        out: &mut P,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    fn import<I: ByteSource, P: Progress>(
        &self,
        req: ImageImport,
        input: &mut I,
        out: &mut P,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    fn resolve(
        &self,
        req: ImageResolve,
    ) -> impl Future<Output = Result<ResolvedImage, BusError>> + Send;
    fn create_from_layer(
        &self,
        req: ImageCreateFromLayer,
    ) -> impl Future<Output = Result<String, BusError>> + Send;
    fn df(
        &self,
        req: ImageDf,
    ) -> impl Future<Output = Result<Vec<docker::ImageSummary>, BusError>> + Send;
    fn distribution(
        &self,
        req: DistributionInspect,
    ) -> impl Future<Output = Result<docker::DistributionInspect, BusError>> + Send;
    fn info(&self) -> docker::SystemInfo;
}

impl ImagesApi for Arc<Images> {
    async fn pull<P: Progress>(&self, req: ImagePull, out: &mut P) -> Result<(), BusError> {
        Images::pull(self, &req, out).await
    }
    async fn push<P: Progress>(&self, req: ImagePush, out: &mut P) -> Result<(), BusError> {
        Images::push(self, &req, out).await
    }
    async fn login(&self, req: RegistryLogin) -> Result<docker::AuthResponse, BusError> {
        let token = self
            .registry
            .login(&req.auth)
            .await
            .map_err(|e| BusError::unauthorized(e.to_string()))?;
        Ok(docker::AuthResponse {
            status: "Login Succeeded".into(),
            identity_token: token,
        })
    }
    async fn list(&self, req: ImageList) -> Result<Vec<docker::ImageSummary>, BusError> {
        Images::list(self, &req).await
    }
    async fn inspect(&self, req: ImageInspect) -> Result<ImageDetails, BusError> {
        Images::inspect(self, &req.name)
    }
    async fn history(
        &self,
        req: ImageHistory,
    ) -> Result<Vec<docker::ImageHistoryResponseItem>, BusError> {
        Images::history(self, &req.name)
    }
    async fn tag(&self, req: ImageTag) -> Result<(), BusError> {
        Images::tag(self, &req).await
    }
    async fn remove(
        &self,
        req: ImageRemove,
    ) -> Result<Vec<docker::ImageDeleteResponseItem>, BusError> {
        Images::remove(self, &req).await
    }
    async fn prune(&self, req: ImagePrune) -> Result<docker::ImagePruneResponse, BusError> {
        Images::prune(self, &req).await
    }
    async fn save<S: ByteSink>(&self, req: ImageSave, out: &mut S) -> Result<(), BusError> {
        Images::save(self, &req, out).await
    }
    async fn load<I: ByteSource, P: Progress>(
        &self,
        req: ImageLoad,
        input: &mut I,
        out: &mut P,
    ) -> Result<(), BusError> {
        Images::load(self, &req, input, out).await
    }
    async fn import<I: ByteSource, P: Progress>(
        &self,
        req: ImageImport,
        input: &mut I,
        out: &mut P,
    ) -> Result<(), BusError> {
        Images::import(self, &req, input, out).await
    }
    async fn resolve(&self, req: ImageResolve) -> Result<ResolvedImage, BusError> {
        Images::resolve(self, &req.reference)
    }
    async fn create_from_layer(&self, req: ImageCreateFromLayer) -> Result<String, BusError> {
        Images::create_from_layer(self, req).await
    }
    async fn df(&self, _req: ImageDf) -> Result<Vec<docker::ImageSummary>, BusError> {
        Images::df(self).await
    }
    async fn distribution(
        &self,
        req: DistributionInspect,
    ) -> Result<docker::DistributionInspect, BusError> {
        Images::distribution(self, &req).await
    }
    fn info(&self) -> docker::SystemInfo {
        docker::SystemInfo {
            images: Some(self.image_count() as i64),
            ..Default::default()
        }
    }
}
