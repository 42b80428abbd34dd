//! Requests served by the runtime service.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};

crate::rpcs!(Runtime {});
