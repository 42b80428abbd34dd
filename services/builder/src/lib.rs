//! The builder service: `docker build` (classic builder API) and `docker commit`.

use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::Service;

pub async fn serve(bus: Bus, _cfg: DaemonConfig) -> anyhow::Result<Server> {
    Ok(Server::new(bus, Service::Builder))
}
