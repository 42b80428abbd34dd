//! The storage service: drivers (overlay2, btrfs, vfs), the layer store, container
//! read-write layers and volumes.

pub mod apply;
pub mod copy;
pub mod diff;
pub mod driver;
pub mod layers;
pub mod mountspec;
pub mod rw;
pub mod split;
pub mod tarfmt;
pub mod util;

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::{docker, Service};

pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    let driver = cfg.storage_driver().to_string();
    Ok(Server::new(bus, Service::Storage).info(move || {
        let driver = driver.clone();
        async move {
            docker::SystemInfo {
                driver: Some(driver),
                driver_status: Some(vec![]),
                plugins: Some(docker::PluginsInfo {
                    volume: Some(vec!["local".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
    }))
}
