//! The service's part of `docker info` (the bus adapter is generated from the
//! network table: `berth_bus::network::serve_network`).

use bus_schema::docker;

/// The network service's part of `docker info`.
pub fn info() -> docker::SystemInfo {
    docker::SystemInfo {
        plugins: Some(docker::PluginsInfo {
            network: Some(vec!["bridge".into(), "host".into(), "null".into()]),
            ..Default::default()
        }),
        ipv4_forwarding: Some(
            crate::link::sysctl_read("net/ipv4/ip_forward").as_deref() == Some("1"),
        ),
        ..Default::default()
    }
}
