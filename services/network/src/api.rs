//! The network service's contract as a Rust trait. The library implements it
//! ([`crate::service::NetworkService`]), the bus adapter ([`crate::bus`]) serves it, and
//! [`crate::client::NetworkClient`] implements it over the bus, so callers never
//! care whether the service is local.
//!
//! Lifecycle: networks are created (`network_create`), inspected and listed, and
//! removed when no endpoint is left. A container's sandbox is created when it starts
//! (`sandbox_create`: namespace, one endpoint per network, ports, DNS names, its
//! resolv.conf and hosts), may gain or lose endpoints while it runs
//! (`endpoint_create`/`endpoint_remove`), follows a rename (`sandbox_rename`), and is
//! given back when it stops (`sandbox_remove`, idempotent).

use bus_schema::network::*;
use bus_schema::{docker, BusError};
use std::future::Future;

pub trait NetworkApi: Send + Sync + 'static {
    fn network_create(
        &self,
        r: NetworkCreate,
    ) -> impl Future<Output = Result<docker::NetworkCreateResponse, BusError>> + Send;
    fn network_inspect(
        &self,
        r: NetworkInspect,
    ) -> impl Future<Output = Result<docker::NetworkInspect, BusError>> + Send;
    fn network_list(
        &self,
        r: NetworkList,
    ) -> impl Future<Output = Result<Vec<docker::NetworkInspect>, BusError>> + Send;
    fn network_remove(&self, r: NetworkRemove)
        -> impl Future<Output = Result<(), BusError>> + Send;
    fn network_prune(
        &self,
        r: NetworkPrune,
    ) -> impl Future<Output = Result<docker::NetworkPruneResponse, BusError>> + Send;
    fn network_resolve(
        &self,
        r: NetworkResolve,
    ) -> impl Future<Output = Result<NetworkRef, BusError>> + Send;
    fn sandbox_create(
        &self,
        r: SandboxCreate,
    ) -> impl Future<Output = Result<Sandbox, BusError>> + Send;
    fn sandbox_remove(&self, r: SandboxRemove)
        -> impl Future<Output = Result<(), BusError>> + Send;
    fn sandbox_rename(&self, r: SandboxRename)
        -> impl Future<Output = Result<(), BusError>> + Send;
    fn endpoint_create(
        &self,
        r: EndpointCreate,
    ) -> impl Future<Output = Result<docker::EndpointSettings, BusError>> + Send;
    fn endpoint_remove(
        &self,
        r: EndpointRemove,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}
