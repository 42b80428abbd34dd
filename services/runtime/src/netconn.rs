//! `docker network connect/disconnect`: recorded in the container, and attached or
//! detached live through the network service while it runs.

use berth_bus::network::NetworkApi as _;
use std::sync::Arc;

use bus_schema::network::{EndpointCreate, EndpointRemove, EndpointRequest, NetworkResolve};
use bus_schema::runtime::{ContainerNetworkConnect, ContainerNetworkDisconnect};
use bus_schema::BusError;

use crate::engine::Runtime;

impl<D: crate::deps::Deps> Runtime<D> {
    pub async fn network_connect(self: &Arc<Self>, r: ContainerNetworkConnect) -> Result<(), BusError> {
        let e = self.find(&r.container)?;
        let c = e.get();
        let mode = c.network_mode();
        if mode == "host" || mode == "none" || mode.starts_with("container:") {
            return Err(BusError::forbidden(
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        }
        let net = self.network.network_resolve(NetworkResolve { id: r.network.clone() }).await?;
        if net.name == "host" || net.name == "none" {
            return Err(BusError::forbidden(
                "container cannot be disconnected from host network or connected to host network",
            ));
        }
        if c.endpoints.contains_key(&net.name) || (c.state.running() && c.networks.contains_key(&net.name)) {
            return Err(BusError::forbidden(format!("endpoint with name {} already exists in network {}", c.name, net.name)));
        }
        let settings = r.endpoint.unwrap_or_default();
        if c.state.running() {
            let ep = self
                .network
                .endpoint_create(EndpointCreate {
                    container_id: c.id.clone(),
                    endpoint: EndpointRequest { network: net.name.clone(), settings: settings.clone() },
                })
                .await?;
            e.update(|c| {
                c.networks.insert(net.name.clone(), ep);
            });
        }
        e.update(|c| {
            if c.network_mode() == net.name {
                c.mode_network_detached = false;
            }
            c.endpoints.insert(net.name.clone(), settings);
        });
        e.save()
    }

    pub async fn network_disconnect(self: &Arc<Self>, r: ContainerNetworkDisconnect) -> Result<(), BusError> {
        let e = self.find(&r.container)?;
        let c = e.get();
        let name = match self.network.network_resolve(NetworkResolve { id: r.network.clone() }).await {
            Ok(n) => n.name,
            // a network already gone can still be dropped from a container with -f
            Err(err) if r.force => {
                let _ = err;
                r.network.clone()
            }
            Err(err) => return Err(err),
        };
        let mode = c.network_mode();
        if name == "host" || mode == "host" {
            return Err(BusError::forbidden(
                "container cannot be disconnected from host network or connected to host network",
            ));
        }
        let attached = c.state.running() && c.networks.contains_key(&name);
        if !attached && !c.endpoints.contains_key(&name) && (mode != name || c.mode_network_detached) {
            return Err(BusError::forbidden(format!("container {} is not connected to network {}", c.id, r.network)));
        }
        if c.state.running() {
            self.network.endpoint_remove(EndpointRemove { container_id: c.id.clone(), network: name.clone() }).await?;
        }
        e.update(|c| {
            c.networks.remove(&name);
            c.endpoints.remove(&name);
            // disconnecting from the mode's own network keeps the mode (as Docker
            // does) and keeps the container off that network at later starts
            if c.network_mode() == name {
                c.mode_network_detached = true;
            }
        });
        e.save()
    }
}
