//! The networks backend over the bus: the network service (this node's networks),
//! the swarm service (the swarm's overlay networks, scope `swarm`), and the runtime
//! for connect/disconnect (it records the container's networks).

use std::collections::HashMap;

use berth_bus::network::NetworkApi as _;
use berth_bus::runtime::RuntimeApi as _;
use berth_bus::swarm::SwarmApi as _;
use bus_schema::network::{
    NetworkCreate, NetworkInspect, NetworkList, NetworkPrune, NetworkRemove,
};
use bus_schema::runtime::{ContainerNetworkConnect, ContainerNetworkDisconnect};
use bus_schema::swarm::{SwarmNetworkCreate, SwarmNetworkInspect, SwarmNetworkList, SwarmNetworkRemove};
use bus_schema::{docker, BusError, ErrorKind};

use super::BusBackend;

impl crate::routes::networks::Backend for BusBackend {
    async fn network_list(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<docker::NetworkInspect>, BusError> {
        let local = self.network.network_list(NetworkList { filters: filters.clone() }).await?;
        // the swarm's networks, then this node's (Moby's router lists them so); a swarm
        // service that does not answer leaves the node's list as it is
        let mut list = match self.swarm.swarm_network_list(SwarmNetworkList { filters }).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "swarm networks not listed");
                Vec::new()
            }
        };
        list.extend(local);
        Ok(list)
    }

    async fn network_inspect(
        &self,
        id: String,
        verbose: bool,
        scope: Option<String>,
    ) -> Result<docker::NetworkInspect, BusError> {
        let swarm = || self.swarm.swarm_network_inspect(SwarmNetworkInspect { id: id.clone() });
        match scope.as_deref() {
            None => match self.network.network_inspect(NetworkInspect { id: id.clone(), verbose }).await {
                Err(e) if e.kind == ErrorKind::NotFound => swarm().await.map_err(|_| e),
                r => r,
            },
            Some("local") => self.network.network_inspect(NetworkInspect { id, verbose }).await,
            Some("swarm") => swarm().await,
            Some(_) => Err(BusError::not_found(format!("network {id} not found"))),
        }
    }

    async fn network_create(
        &self,
        body: docker::NetworkCreateRequest,
    ) -> Result<docker::NetworkCreateResponse, BusError> {
        if body.driver.as_deref() == Some("overlay") {
            return self.swarm.swarm_network_create(SwarmNetworkCreate { req: body }).await;
        }
        // Moby's router refuses a name the swarm has before any driver sees it
        let named = HashMap::from([("name".to_string(), vec![body.name.clone()])]);
        if let Ok(s) = self.swarm.swarm_network_list(SwarmNetworkList { filters: named }).await {
            if s.iter().any(|n| n.name.as_deref() == Some(body.name.as_str())) {
                return Err(BusError::conflict(format!("network with name {} already exists", body.name)));
            }
        }
        self.network.network_create(NetworkCreate { body }).await
    }

    async fn network_remove(&self, id: String) -> Result<(), BusError> {
        match self.network.network_remove(NetworkRemove { id: id.clone() }).await {
            Err(e) if e.kind == ErrorKind::NotFound => match self.swarm.swarm_network_remove(SwarmNetworkRemove { id }).await {
                Err(s) if s.kind == ErrorKind::NotFound => Err(e),
                r => r,
            },
            r => r,
        }
    }

    async fn network_prune(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<docker::NetworkPruneResponse, BusError> {
        self.network.network_prune(NetworkPrune { filters }).await
    }

    async fn network_connect(
        &self,
        id: String,
        req: docker::NetworkConnectRequest,
    ) -> Result<(), BusError> {
        self.runtime
            .container_network_connect(ContainerNetworkConnect {
                container: req.container,
                network: id,
                endpoint: req.endpoint_config,
            })
            .await
    }

    async fn network_disconnect(
        &self,
        id: String,
        req: docker::NetworkDisconnectRequest,
    ) -> Result<(), BusError> {
        self.runtime
            .container_network_disconnect(ContainerNetworkDisconnect {
                container: req.container,
                network: id,
                force: req.force.unwrap_or(false),
            })
            .await
    }
}
