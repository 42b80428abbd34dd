//! How this service's errors cross the bus: each module's error becomes a
//! `BusError` kind with Docker's wording.

use bus_schema::BusError;

use crate::content::ContentError;
use crate::reference::RefError;
use crate::registry::RegistryError;
use crate::store::StoreError;

impl From<ContentError> for BusError {
    fn from(e: ContentError) -> BusError {
        match e {
            ContentError::InvalidDigest(_) => BusError::invalid(e.to_string()),
            ContentError::Io(io) => BusError::from(io),
            _ => BusError::internal(e.to_string()),
        }
    }
}

impl From<StoreError> for BusError {
    fn from(e: StoreError) -> BusError {
        match e {
            StoreError::Io(io) => BusError::from(io),
            StoreError::BadConfig(_) => BusError::invalid(e.to_string()),
        }
    }
}

impl From<RefError> for BusError {
    fn from(e: RefError) -> BusError {
        BusError::invalid(e.to_string())
    }
}

impl From<RegistryError> for BusError {
    fn from(e: RegistryError) -> BusError {
        match &e {
            RegistryError::Status { status: 401, .. } => BusError::unauthorized(e.to_string()),
            RegistryError::Status { status: 403, .. } => BusError::forbidden(e.to_string()),
            RegistryError::Status { status: 404, .. } => BusError::not_found(e.to_string()),
            _ => BusError::internal(e.to_string()),
        }
    }
}

/// `No such image: busybox:latest`, Docker's 404 for a missing image.
pub fn no_such_image(what: &str) -> BusError {
    BusError::not_found(format!("No such image: {what}"))
}
