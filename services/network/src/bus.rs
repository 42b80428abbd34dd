//! The bus adapter: each request of `bus_schema::network` to a method of
//! [`NetworkApi`], and the service's part of `docker info`.

use berth_bus::Server;
use bus_schema::docker;
use bus_schema::network::*;
use std::sync::Arc;

use crate::api::NetworkApi;

/// Serve every network request on `server` with `api`.
pub fn register<A: NetworkApi>(server: Server, api: Arc<A>) -> Server {
    let a = api.clone();
    let server = server.rpc(move |r: NetworkCreate| {
        let a = a.clone();
        async move { a.network_create(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: NetworkInspect| {
        let a = a.clone();
        async move { a.network_inspect(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: NetworkList| {
        let a = a.clone();
        async move { a.network_list(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: NetworkRemove| {
        let a = a.clone();
        async move { a.network_remove(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: NetworkPrune| {
        let a = a.clone();
        async move { a.network_prune(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: NetworkResolve| {
        let a = a.clone();
        async move { a.network_resolve(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: SandboxCreate| {
        let a = a.clone();
        async move { a.sandbox_create(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: SandboxRemove| {
        let a = a.clone();
        async move { a.sandbox_remove(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: SandboxRename| {
        let a = a.clone();
        async move { a.sandbox_rename(r).await }
    });
    let a = api.clone();
    let server = server.rpc(move |r: EndpointCreate| {
        let a = a.clone();
        async move { a.endpoint_create(r).await }
    });
    let a = api;
    server.rpc(move |r: EndpointRemove| {
        let a = a.clone();
        async move { a.endpoint_remove(r).await }
    })
}

/// The network service's part of `docker info`.
pub fn info() -> docker::SystemInfo {
    docker::SystemInfo {
        plugins: Some(docker::PluginsInfo {
            network: Some(vec!["bridge".into(), "host".into(), "null".into()]),
            ..Default::default()
        }),
        ipv4_forwarding: Some(
            crate::link::sysctl_read("net/ipv4/ip_forward").as_deref() == Some("1"),
        ),
        ..Default::default()
    }
}
