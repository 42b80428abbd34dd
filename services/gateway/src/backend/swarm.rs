//! The swarm backend: every swarm request to this node's swarm service.

use berth_bus::StreamReader;
use bus_schema::runtime::StreamInfo;
use bus_schema::stream::StdioChunk;
use bus_schema::{BusError, Rpc, StreamRpc};

use super::BusBackend;

impl crate::routes::swarm::Backend for BusBackend {
    async fn swarm<R: Rpc>(&self, r: R) -> Result<R::Reply, BusError> {
        self.bus.request(&r).await
    }

    async fn swarm_stream<R: StreamRpc<Reply = StreamInfo, Item = StdioChunk>>(&self, r: R) -> Result<(StreamInfo, StreamReader<StdioChunk>), BusError> {
        self.bus.request_stream(&r).await
    }
}
