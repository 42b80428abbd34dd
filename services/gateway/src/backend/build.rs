//! The build area: the builder service's typed client.

use super::BusBackend;

impl crate::routes::build::Backend for BusBackend {
    type Builder = berth_bus::builder::BuilderClient;
    fn builder(&self) -> &Self::Builder {
        &self.builder
    }
}
