//! Requests served by the network service.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};

crate::rpcs!(Network {});
