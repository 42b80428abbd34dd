//! Requests served by the images service.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};

crate::rpcs!(Images {});
