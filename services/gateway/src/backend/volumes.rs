//! The bus implementation of the volumes backend: requests to the storage service.

use berth_bus::images::ImagesApi as _;
use berth_bus::runtime::RuntimeApi as _;
use berth_bus::storage::StorageApi as _;
use std::collections::HashMap;

use bus_schema::storage::{
    StorageDf, StorageUsage, VolumeCreate, VolumeInspect, VolumeList, VolumePrune, VolumeRemove,
};
use bus_schema::{docker, BusError};

use super::BusBackend;

impl crate::routes::volumes::Backend for BusBackend {
    async fn volume_list(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<docker::Volume>, BusError> {
        self.storage.volume_list(VolumeList { filters, plugins: true }).await
    }

    async fn volume_create(&self, req: VolumeCreate) -> Result<docker::Volume, BusError> {
        self.storage.volume_create(req).await
    }

    async fn volume_inspect(&self, name: String) -> Result<docker::Volume, BusError> {
        self.storage.volume_inspect(VolumeInspect { name }).await
    }

    async fn volume_remove(&self, name: String, force: bool) -> Result<(), BusError> {
        self.storage.volume_remove(VolumeRemove { name, force }).await
    }

    async fn volume_prune(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<docker::VolumePruneResponse, BusError> {
        self.storage.volume_prune(VolumePrune { filters }).await
    }

    async fn storage_usage(&self) -> Result<StorageUsage, BusError> {
        self.storage.storage_df(StorageDf {}).await
    }

    async fn image_df(&self) -> Result<Vec<docker::ImageSummary>, BusError> {
        self.images.image_df(bus_schema::images::ImageDf {}).await
    }

    async fn container_df(&self) -> Result<Vec<docker::ContainerSummary>, BusError> {
        self.runtime.container_df(bus_schema::runtime::ContainerDf {}).await
    }
}
