//! The images area: the images service's typed client.

use super::BusBackend;

impl crate::routes::images::Backend for BusBackend {
    type Images = berth_bus::images::ImagesClient;
    fn images(&self) -> &Self::Images {
        &self.images
    }
}
