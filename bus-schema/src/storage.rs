//! Requests served by the storage service.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};

crate::rpcs!(Storage {});
