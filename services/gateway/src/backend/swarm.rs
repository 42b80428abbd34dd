//! The swarm backend: this node's swarm service, through its typed client.

use berth_bus::swarm::SwarmClient;

use super::BusBackend;

impl crate::routes::swarm::Backend for BusBackend {
    type Swarm = SwarmClient;

    fn swarm(&self) -> &SwarmClient {
        &self.swarm
    }
}
