//! Requests every service answers.

use serde::{Deserialize, Serialize};

use crate::{docker, Service, SystemRpc};

/// Health ping; every service answers from the moment it is connected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePing {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePong {
    pub service: Service,
    pub node: String,
    pub version: String,
    pub pid: u32,
    /// Unix seconds when the service started.
    pub started: i64,
}

/// A service's part of `GET /info`: a `SystemInfo` with only the fields it owns set.
/// The gateway merges the parts (objects merge, lists concatenate).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemInfoPart {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoPart {
    pub service: Service,
    pub info: docker::SystemInfo,
}

/// The service's metrics in the Prometheus text format, for the gateway's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMetrics {}

impl SystemRpc for ServiceMetrics {
    const OP: &'static str = "ServiceMetrics";
    type Reply = String;
}

impl SystemRpc for ServicePing {
    const OP: &'static str = "ServicePing";
    type Reply = ServicePong;
}

impl SystemRpc for SystemInfoPart {
    const OP: &'static str = "SystemInfoPart";
    type Reply = InfoPart;
}

pub const OPS: &[&str] = &[ServicePing::OP, SystemInfoPart::OP, ServiceMetrics::OP];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn system_roundtrip() {
        roundtrip(ServicePing {});
        roundtrip(ServicePong {
            service: Service::Runtime,
            node: "n1".into(),
            version: "0.1.0".into(),
            pid: 42,
            started: 1,
        });
        roundtrip(SystemInfoPart {});
        roundtrip(ServiceMetrics {});
        roundtrip(InfoPart {
            service: Service::Storage,
            info: docker::SystemInfo {
                driver: Some("overlay2".into()),
                driver_status: Some(vec![vec!["Backing Filesystem".into(), "extfs".into()]]),
                containers: Some(3),
                ..Default::default()
            },
        });
    }
}
