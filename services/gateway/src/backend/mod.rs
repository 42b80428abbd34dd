//! The bus implementation of every area's backend trait.

mod build;
mod containers;
mod events;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use berth_bus::Bus;
use bus_schema::{
    system::InfoPart,
    BusError, Service,
};

use crate::host::HostFacts;

mod images;
mod networks;
mod swarm;

pub struct BusBackend {
    pub bus: Bus,
    pub storage: berth_bus::storage::StorageClient,
    pub network: berth_bus::network::NetworkClient,
    pub runtime: berth_bus::runtime::RuntimeClient,
    pub images: berth_bus::images::ImagesClient,
    pub swarm: berth_bus::swarm::SwarmClient,
    pub builder: berth_bus::builder::BuilderClient,
    pub host: HostFacts,
}

impl BusBackend {
    pub fn new(bus: Bus, host: HostFacts) -> Arc<BusBackend> {
        Arc::new(BusBackend {
            storage: berth_bus::storage::StorageClient::new(bus.clone()),
            network: berth_bus::network::NetworkClient::new(bus.clone()),
            runtime: berth_bus::runtime::RuntimeClient::new(bus.clone()),
            images: berth_bus::images::ImagesClient::new(bus.clone()),
            swarm: berth_bus::swarm::SwarmClient::new(bus.clone()),
            builder: berth_bus::builder::BuilderClient::new(bus.clone()),
            bus,
            host,
        })
    }
}

impl crate::routes::system::Backend for BusBackend {
    async fn info_parts(&self) -> Vec<Result<InfoPart, (Service, BusError)>> {
        let sys = berth_bus::SystemClient::new(self.bus.clone()).with_timeout(Duration::from_secs(2));
        let futs = Service::BACKENDS.into_iter().map(|svc| {
            let sys = sys.clone();
            async move { sys.info_part(svc).await.map_err(|e| (svc, e)) }
        });
        futures_util::future::join_all(futs).await
    }

    fn host(&self) -> &HostFacts {
        &self.host
    }

    async fn swarm_status(&self) -> String {
        use bus_schema::swarm::{SwarmApi as _, SwarmStatus};
        match tokio::time::timeout(Duration::from_millis(200), self.swarm.swarm_status(SwarmStatus {})).await {
            Ok(Ok(s)) => s,
            _ => "inactive".into(),
        }
    }
}
