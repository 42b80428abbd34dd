//! [`StorageClient`]: the same [`StorageApi`] over the bus, so callers (images,
//! runtime, builder) cannot tell a local storage from the service on their node.

use berth_bus::Bus;
use bus_schema::storage::*;
use bus_schema::stream::ByteChunk;
use bus_schema::system::SystemInfoPart;
use bus_schema::{docker, BusError, Service};

use crate::{Input, Output, StorageApi};

#[derive(Clone)]
pub struct StorageClient {
    pub bus: Bus,
}

impl StorageClient {
    pub fn new(bus: Bus) -> StorageClient {
        StorageClient { bus }
    }
}

async fn collect(mut rd: berth_bus::StreamReader<ByteChunk>, out: Output) -> Result<(), BusError> {
    while let Some(c) = rd.next().await {
        if out.send(c?.0).await.is_err() {
            rd.cancel().await;
            return Err(BusError::new(
                bus_schema::ErrorKind::Cancelled,
                "the reader went away",
            ));
        }
    }
    Ok(())
}

impl StorageApi for StorageClient {
    async fn layer_apply(
        &self,
        req: LayerApply,
        mut input: Input,
    ) -> Result<LayerApplied, BusError> {
        let ((), mut items, mut w) = self.bus.request_duplex(&req).await?;
        let feed = async move {
            while let Some(c) = input.recv().await {
                match c {
                    Ok(b) => {
                        for part in b.chunks(bus_schema::stream::MAX_CHUNK) {
                            w.send(ByteChunk(part.to_vec())).await?;
                        }
                    }
                    Err(e) => return w.fail(e).await,
                }
            }
            w.end().await
        };
        let read = async move {
            let mut got = None;
            while let Some(i) = items.next().await {
                got = Some(i?);
            }
            got.ok_or_else(|| BusError::internal("LayerApply ended without a result"))
        };
        let (fed, res) = tokio::join!(feed, read);
        // The result explains a failed feed (the service stops reading when it fails).
        let r = res?;
        fed?;
        Ok(r)
    }
    async fn layer_stat(&self, req: LayerStat) -> Result<LayerInfo, BusError> {
        self.bus.request(&req).await
    }
    async fn layer_retain(&self, req: LayerRetain) -> Result<LayerInfo, BusError> {
        self.bus.request(&req).await
    }
    async fn layer_release(&self, req: LayerRelease) -> Result<Vec<String>, BusError> {
        self.bus.request(&req).await
    }
    async fn layer_export(&self, req: LayerExport, out: Output) -> Result<(), BusError> {
        let ((), rd) = self.bus.request_stream(&req).await?;
        collect(rd, out).await
    }
    async fn rw_create(&self, req: RwLayerCreate) -> Result<(), BusError> {
        self.bus.request(&req).await
    }
    async fn rw_mount(&self, req: RwLayerMount) -> Result<RwMount, BusError> {
        self.bus.request(&req).await
    }
    async fn rw_unmount(&self, req: RwLayerUnmount) -> Result<(), BusError> {
        self.bus.request(&req).await
    }
    async fn rw_remove(&self, req: RwLayerRemove) -> Result<(), BusError> {
        self.bus.request(&req).await
    }
    async fn rw_changes(&self, req: RwLayerChanges) -> Result<Vec<Change>, BusError> {
        self.bus.request(&req).await
    }
    async fn rw_export(&self, req: RwLayerExport, out: Output) -> Result<(), BusError> {
        let ((), rd) = self.bus.request_stream(&req).await?;
        collect(rd, out).await
    }
    async fn rw_commit(&self, req: RwLayerCommit) -> Result<LayerApplied, BusError> {
        self.bus
            .with_timeout(std::time::Duration::from_secs(3600))
            .request(&req)
            .await
    }
    async fn rw_size(&self, req: RwLayerSize) -> Result<RwSize, BusError> {
        self.bus.request(&req).await
    }
    async fn rw_list(&self, req: RwLayerList) -> Result<Vec<RwLayerState>, BusError> {
        self.bus.request(&req).await
    }
    async fn volume_create(&self, req: VolumeCreate) -> Result<docker::Volume, BusError> {
        self.bus.request(&req).await
    }
    async fn volume_inspect(&self, req: VolumeInspect) -> Result<docker::Volume, BusError> {
        self.bus.request(&req).await
    }
    async fn volume_list(&self, req: VolumeList) -> Result<Vec<docker::Volume>, BusError> {
        self.bus.request(&req).await
    }
    async fn volume_remove(&self, req: VolumeRemove) -> Result<(), BusError> {
        self.bus.request(&req).await
    }
    async fn volume_prune(
        &self,
        req: VolumePrune,
    ) -> Result<docker::VolumePruneResponse, BusError> {
        self.bus
            .with_timeout(std::time::Duration::from_secs(300))
            .request(&req)
            .await
    }
    async fn volume_acquire(&self, req: VolumeAcquire) -> Result<VolumeMounted, BusError> {
        self.bus
            .with_timeout(std::time::Duration::from_secs(600))
            .request(&req)
            .await
    }
    async fn volume_release_ref(&self, req: VolumeReleaseRef) -> Result<(), BusError> {
        self.bus.request(&req).await
    }
    async fn df(&self, req: StorageDf) -> Result<StorageUsage, BusError> {
        self.bus
            .with_timeout(std::time::Duration::from_secs(300))
            .request(&req)
            .await
    }
    /// The service's part of `docker info`; empty if it does not answer.
    async fn info(&self) -> docker::SystemInfo {
        match self
            .bus
            .request_system(Service::Storage, &SystemInfoPart {})
            .await
        {
            Ok(p) => p.info,
            Err(e) => {
                tracing::debug!(error = %e, "storage info");
                docker::SystemInfo::default()
            }
        }
    }
}
