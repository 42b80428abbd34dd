//! The network service: the default bridge and user bridge networks, host/none/
//! container modes, IPAM, container sandboxes (network namespaces with veth
//! endpoints), published ports forwarded in the kernel, the embedded DNS of user
//! networks, and network events.
//!
//! Layout: [`core::NetworkService`] implements `bus_schema::network::NetworkApi` over
//! the kernel parts ([`link`], [`netns`], [`firewall`], [`dns`], [`ports`]) and the
//! records ([`store`]); the adapter generated from the network table
//! (`berth_bus::network::serve_network`) serves it on the bus, and callers use
//! `berth_bus::network::NetworkClient`.

pub mod bus;
pub mod core;
pub mod dns;
pub mod files;
pub mod firewall;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod ports;
pub mod store;

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::Service;
use std::sync::Arc;

pub use berth_bus::network::{NetworkApi, NetworkClient};
pub use crate::core::{Config, NetworkService};

/// Start the service on `bus` with the node's daemon.json.
pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    Ok(start(bus, cfg).await?.0)
}

/// Like [`serve`], also returning the service (for a graceful [`NetworkService::shutdown`]).
pub async fn start(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<(Server, Arc<NetworkService>)> {
    let root = std::env::var_os(berth_config::env::ROOT)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cfg.data_root());
    let config = Config::from_daemon(&cfg, &root, bus.node())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    start_with(bus, config).await
}

/// Start with an explicit [`Config`] (tests).
pub async fn start_with(bus: Bus, config: Config) -> anyhow::Result<(Server, Arc<NetworkService>)> {
    let svc = NetworkService::start(config, bus_events(bus.clone())).await?;
    let server = Server::new(bus, Service::Network).info(|| async { bus::info() });
    Ok((berth_bus::network::serve_network(server, svc.clone()), svc))
}

/// Events published in order by one task.
pub fn bus_events(bus: Bus) -> core::Events {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bus_schema::event::Event>();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            bus.publish_event(&e).await;
        }
    });
    Arc::new(move |e| {
        let _ = tx.send(e);
    })
}
