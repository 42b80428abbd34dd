//! Container routes over the bus: the runtime service's typed client (its timeouts
//! are the table's, bus-schema/src/runtime.rs).

use super::BusBackend;
use crate::routes::containers::Backend;

impl Backend for BusBackend {
    type Runtime = berth_bus::runtime::RuntimeClient;

    fn runtime(&self) -> &Self::Runtime {
        &self.runtime
    }

    fn default_runtime(&self) -> &str {
        &self.host.default_runtime
    }
}
