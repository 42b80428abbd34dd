//! The images area over the bus.

use std::time::Duration;

use berth_bus::{StreamReader, StreamWriter};
use bus_schema::images::*;
use bus_schema::stream::ByteChunk;
use bus_schema::{docker, BusError};

use super::BusBackend;

/// Pulls wait for the registry before their first message (manifest, config,
/// mirror fallback); removes and prunes may walk many layers.
const SLOW: Duration = Duration::from_secs(120);

impl crate::routes::images::Backend for BusBackend {
    async fn image_pull(&self, req: ImagePull) -> Result<StreamReader<JsonMessage>, BusError> {
        Ok(self.bus.with_timeout(SLOW).request_stream(&req).await?.1)
    }
    async fn image_push(&self, req: ImagePush) -> Result<StreamReader<JsonMessage>, BusError> {
        Ok(self.bus.with_timeout(SLOW).request_stream(&req).await?.1)
    }
    async fn image_import(
        &self,
        req: ImageImport,
    ) -> Result<(StreamReader<JsonMessage>, StreamWriter<ByteChunk>), BusError> {
        let ((), rd, w) = self.bus.request_duplex(&req).await?;
        Ok((rd, w))
    }
    async fn image_load(
        &self,
        req: ImageLoad,
    ) -> Result<(StreamReader<JsonMessage>, StreamWriter<ByteChunk>), BusError> {
        let ((), rd, w) = self.bus.request_duplex(&req).await?;
        Ok((rd, w))
    }
    async fn image_save(&self, req: ImageSave) -> Result<StreamReader<ByteChunk>, BusError> {
        Ok(self.bus.with_timeout(SLOW).request_stream(&req).await?.1)
    }
    async fn image_list(&self, req: ImageList) -> Result<Vec<docker::ImageSummary>, BusError> {
        self.bus.request_idempotent(&req).await
    }
    async fn image_inspect(&self, req: ImageInspect) -> Result<ImageDetails, BusError> {
        self.bus.request_idempotent(&req).await
    }
    async fn image_history(
        &self,
        req: ImageHistory,
    ) -> Result<Vec<docker::ImageHistoryResponseItem>, BusError> {
        self.bus.request(&req).await
    }
    async fn image_tag(&self, req: ImageTag) -> Result<(), BusError> {
        self.bus.request(&req).await
    }
    async fn image_remove(
        &self,
        req: ImageRemove,
    ) -> Result<Vec<docker::ImageDeleteResponseItem>, BusError> {
        self.bus.with_timeout(SLOW).request(&req).await
    }
    async fn image_prune(&self, req: ImagePrune) -> Result<docker::ImagePruneResponse, BusError> {
        self.bus.with_timeout(SLOW).request(&req).await
    }
    async fn distribution(&self, req: DistributionInspect) -> Result<docker::DistributionInspect, BusError> {
        self.bus.with_timeout(Duration::from_secs(60)).request(&req).await
    }
    async fn registry_login(&self, req: RegistryLogin) -> Result<docker::AuthResponse, BusError> {
        self.bus
            .with_timeout(Duration::from_secs(60))
            .request(&req)
            .await
    }
}
