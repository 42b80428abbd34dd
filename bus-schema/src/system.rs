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

/// A service instance exited. `berth up` publishes it on
/// [`crate::subject::instance_subject`] (`exited`) the moment it reaps the process;
/// every request still waiting for that service and every stream that instance was
/// writing or reading fails at once instead of waiting for its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceExited {
    pub service: Service,
    pub node: String,
    pub pid: u32,
    /// CLOCK_MONOTONIC nanoseconds when it was reaped. The node's processes share one
    /// host, so a request sent before this instant was sent to the dead instance (the
    /// next one is started only after it).
    pub at_mono_ns: u64,
}

/// A service instance is serving (published by the service itself once its handlers
/// are subscribed): peers reconcile what they hold with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStarted {
    pub service: Service,
    pub node: String,
    pub pid: u32,
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
        roundtrip(ServiceExited { service: Service::Runtime, node: "n1".into(), pid: 7, at_mono_ns: 123 });
        roundtrip(ServiceStarted { service: Service::Storage, node: "n1".into(), pid: 8 });
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
