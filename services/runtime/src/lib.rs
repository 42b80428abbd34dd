//! The runtime service: containers, through a per-container shim.

pub mod cgroups;
pub mod logs;
pub mod seccomp;
pub mod shim_client;
pub mod spec;
pub mod user;

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::{docker, Service};

pub async fn serve(bus: Bus, _cfg: DaemonConfig) -> anyhow::Result<Server> {
    Ok(Server::new(bus, Service::Runtime).info(|| async move {
        docker::SystemInfo {
            containers: Some(0),
            containers_running: Some(0),
            containers_paused: Some(0),
            containers_stopped: Some(0),
            default_runtime: Some("berth".into()),
            ..Default::default()
        }
    }))
}
