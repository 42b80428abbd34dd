//! Build routes over the bus.

use std::time::Duration;

use berth_bus::{StreamReader, StreamWriter};
use bus_schema::builder::{BuildPrune, ContainerCommit, ImageBuild};
use bus_schema::images::JsonMessage;
use bus_schema::stream::ByteChunk;
use bus_schema::{docker, BusError};

use super::BusBackend;

impl crate::routes::build::Backend for BusBackend {
    async fn build(&self, r: ImageBuild) -> Result<(StreamReader<JsonMessage>, StreamWriter<ByteChunk>), BusError> {
        let ((), rd, wr) = self.bus.request_duplex(&r).await?;
        Ok((rd, wr))
    }
    async fn commit(&self, r: ContainerCommit) -> Result<docker::IdResponse, BusError> {
        self.bus.with_timeout(Duration::from_secs(600)).request(&r).await
    }
    async fn build_prune(&self, r: BuildPrune) -> Result<docker::BuildPruneResponse, BusError> {
        self.bus.request(&r).await
    }
}
