//! The networks backend over the bus: the network service, and the runtime for
//! connect/disconnect (it records the container's networks).

use std::collections::HashMap;

use berth_bus::network::NetworkApi as _;
use berth_bus::runtime::RuntimeApi as _;
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
        self.network.network_list(NetworkList { filters }).await
    }

    async fn network_inspect(
        &self,
        id: String,
        verbose: bool,
    ) -> Result<docker::NetworkInspect, BusError> {
        self.network.network_inspect(NetworkInspect { id, verbose }).await
    }

    async fn network_create(
        &self,
        body: docker::NetworkCreateRequest,
    ) -> Result<docker::NetworkCreateResponse, BusError> {
        self.network.network_create(NetworkCreate { body }).await
    }

    async fn network_remove(&self, id: String) -> Result<(), BusError> {
        self.network.network_remove(NetworkRemove { id }).await
    }

    async fn network_prune(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<docker::NetworkPruneResponse, BusError> {
        self.network.network_prune(NetworkPrune { filters }).await
    }

    async fn network_connect(
        &self,
        id: String,
        req: docker::NetworkConnectRequest,
    ) -> Result<(), BusError> {
        self.runtime
            .container_network_connect(ContainerNetworkConnect {
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
        self.runtime
            .container_network_disconnect(ContainerNetworkDisconnect {
                container: req.container,
                network: id,
                force: req.force.unwrap_or(false),
            })
            .await
    }
}
