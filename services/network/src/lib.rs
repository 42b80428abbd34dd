//! The network service: bridges, IPAM, veth, published ports, embedded DNS.

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
use bus_schema::{docker, Service};

pub async fn serve(bus: Bus, _cfg: DaemonConfig) -> anyhow::Result<Server> {
    Ok(Server::new(bus, Service::Network).info(|| async move {
        docker::SystemInfo {
            plugins: Some(docker::PluginsInfo {
                network: Some(vec!["bridge".into(), "host".into(), "null".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }))
}
