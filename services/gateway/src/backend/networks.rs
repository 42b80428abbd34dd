//! The networks backend over the bus: the network service, and the runtime for
//! connect/disconnect (it records the container's networks).

use std::collections::HashMap;

use bus_schema::network::{
    NetworkCreate, NetworkInspect, NetworkList, NetworkPrune, NetworkRemove,
};
use bus_schema::runtime::{ContainerNetworkConnect, ContainerNetworkDisconnect};
use bus_schema::{docker, BusError};

use super::BusBackend;

impl crate::routes::networks::Backend for BusBackend {
    async fn network_list(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<docker::NetworkInspect>, BusError> {
        self.bus.request_idempotent(&NetworkList { filters }).await
    }

    async fn network_inspect(
        &self,
        id: String,
        verbose: bool,
    ) -> Result<docker::NetworkInspect, BusError> {
        self.bus.request_idempotent(&NetworkInspect { id, verbose }).await
    }

    async fn network_create(
        &self,
        body: docker::NetworkCreateRequest,
    ) -> Result<docker::NetworkCreateResponse, BusError> {
        self.bus.request(&NetworkCreate { body }).await
    }

    async fn network_remove(&self, id: String) -> Result<(), BusError> {
        self.bus.request(&NetworkRemove { id }).await
    }

    async fn network_prune(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<docker::NetworkPruneResponse, BusError> {
        self.bus.request(&NetworkPrune { filters }).await
    }

    async fn network_connect(
        &self,
        id: String,
        req: docker::NetworkConnectRequest,
    ) -> Result<(), BusError> {
        self.bus
            .request(&ContainerNetworkConnect {
                container: req.container,
                network: id,
                endpoint: req.endpoint_config,
            })
            .await
    }

    async fn network_disconnect(
        &self,
        id: String,
        req: docker::NetworkDisconnectRequest,
    ) -> Result<(), BusError> {
        self.bus
            .request(&ContainerNetworkDisconnect {
                container: req.container,
                network: id,
                force: req.force.unwrap_or(false),
            })
            .await
    }
}
