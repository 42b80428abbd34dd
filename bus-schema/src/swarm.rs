//! Requests served by the swarm service.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};

/// The swarm service's table of calls (see [`crate::contract`]). Empty for now: add
/// a row per operation, as the other tables do.
#[macro_export]
macro_rules! swarm_table {
    ($gen:path) => {
        $gen! {
            service: Swarm, api: SwarmApi, client: SwarmClient, serve: serve_swarm, module: swarm,
            ops {
            }
        }
    };
}
crate::swarm_table!(crate::__api);
