//! [`NetworkApi`] over the bus, for callers in other services.

use berth_bus::Bus;
use bus_schema::network::*;
use bus_schema::{docker, BusError};

use crate::api::NetworkApi;

#[derive(Clone)]
pub struct NetworkClient {
    pub bus: Bus,
}

impl NetworkClient {
    pub fn new(bus: Bus) -> NetworkClient {
        NetworkClient { bus }
    }
}

impl NetworkApi for NetworkClient {
    async fn network_create(
        &self,
        r: NetworkCreate,
    ) -> Result<docker::NetworkCreateResponse, BusError> {
        self.bus.request(&r).await
    }
    async fn network_inspect(&self, r: NetworkInspect) -> Result<docker::NetworkInspect, BusError> {
        self.bus.request(&r).await
    }
    async fn network_list(&self, r: NetworkList) -> Result<Vec<docker::NetworkInspect>, BusError> {
        self.bus.request(&r).await
    }
    async fn network_remove(&self, r: NetworkRemove) -> Result<(), BusError> {
        self.bus.request(&r).await
    }
    async fn network_prune(
        &self,
        r: NetworkPrune,
    ) -> Result<docker::NetworkPruneResponse, BusError> {
        self.bus.request(&r).await
    }
    async fn network_resolve(&self, r: NetworkResolve) -> Result<NetworkRef, BusError> {
        self.bus.request(&r).await
    }
    async fn sandbox_create(&self, r: SandboxCreate) -> Result<Sandbox, BusError> {
        self.bus.request(&r).await
    }
    async fn sandbox_remove(&self, r: SandboxRemove) -> Result<(), BusError> {
        self.bus.request(&r).await
    }
    async fn sandbox_rename(&self, r: SandboxRename) -> Result<(), BusError> {
        self.bus.request(&r).await
    }
    async fn endpoint_create(
        &self,
        r: EndpointCreate,
    ) -> Result<docker::EndpointSettings, BusError> {
        self.bus.request(&r).await
    }
    async fn endpoint_remove(&self, r: EndpointRemove) -> Result<(), BusError> {
        self.bus.request(&r).await
    }
}
