//! Requests served by the builder service.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};

crate::rpcs!(Builder {});
