//! Requests served by the swarm service.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};

crate::rpcs!(Swarm {});
