//! Requests served by the network service: networks (bridge, host, none, user-defined
//! bridges), IPAM, container sandboxes (network namespaces with veth endpoints),
//! published ports and the embedded DNS. It owns `<root>/network/`, its links,
//! addresses and firewall rules.
//!
//! The runtime asks for a sandbox when a container starts ([`SandboxCreate`]) and
//! gives it back when the container stops ([`SandboxRemove`]); the sandbox's `key`
//! is the network namespace path the container joins.
//!
//! Lifecycle: networks are created (`network_create`), inspected and listed, and
//! removed when no endpoint is left. A container's sandbox is created when it starts
//! (`sandbox_create`: namespace, one endpoint per network, ports, DNS names, its
//! resolv.conf and hosts), may gain or lose endpoints while it runs
//! (`endpoint_create`/`endpoint_remove`), follows a rename (`sandbox_rename`), and is
//! given back when it stops (`sandbox_remove`, idempotent).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::docker;

/// `docker network create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub body: docker::NetworkCreateRequest,
}

/// `docker network inspect` by name, ID or ID prefix. The reply lists the network's
/// containers (`Containers`), which `docker::Network` lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInspect {
    pub id: String,
    pub verbose: bool,
}

/// `docker network ls` filters: driver, id, label, name, scope, type, dangling.
/// Replies with `Containers` empty, as Docker's list does since API 1.28.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkList {
    pub filters: HashMap<String, Vec<String>>,
}

/// `docker network rm`: Conflict while endpoints exist; Forbidden for the
/// predefined networks (bridge, host, none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRemove {
    pub id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPrune {
    pub filters: HashMap<String, Vec<String>>,
}

/// One network a container asks to join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRequest {
    /// Network name or ID.
    pub network: String,
    /// What the user asked for (`--ip`, `--alias`, links, driver opts...).
    pub settings: docker::EndpointSettings,
}

/// `SandboxCreate::network_mode` of a container disconnected from its mode's network
/// (`docker network disconnect bridge c`): its own namespace with only lo, open to
/// later connects. Not a valid network name, so no network can take it.
pub const MODE_DETACHED: &str = ":detached";

/// Create a container's sandbox: its network namespace (or the host's, or another
/// container's), an endpoint on each network, published ports, and the content of
/// its /etc/resolv.conf and /etc/hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxCreate {
    pub container_id: String,
    /// The container's name without the leading slash (resolves in the DNS).
    pub name: String,
    pub hostname: String,
    pub domainname: String,
    /// `bridge`, `host`, `none`, `container:<id>`, or a network name (HostConfig.NetworkMode).
    pub network_mode: String,
    pub endpoints: Vec<EndpointRequest>,
    /// HostConfig.PortBindings.
    pub port_bindings: HashMap<String, Option<Vec<docker::PortBinding>>>,
    /// `-P`: publish every exposed port on an ephemeral host port.
    pub publish_all: bool,
    /// Config.ExposedPorts (`80/tcp`...).
    pub exposed_ports: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// `--add-host name:ip`.
    pub extra_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Network namespace path to join; empty for the host's namespace.
    pub key: String,
    /// NetworkSettings.Networks as inspect shows them, by network name.
    pub networks: HashMap<String, docker::EndpointSettings>,
    /// NetworkSettings.Ports: the bindings actually made (ephemeral ports resolved).
    pub ports: HashMap<String, Option<Vec<docker::PortBinding>>>,
    /// Content for the container's /etc/resolv.conf.
    pub resolv_conf: String,
    /// Content for the container's /etc/hosts.
    pub hosts: String,
}

/// Give back everything a sandbox holds: endpoints, addresses, ports, rules, DNS
/// names, the namespace. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRemove {
    pub container_id: String,
}

/// Connect a running container's sandbox to one more network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointCreate {
    pub container_id: String,
    pub endpoint: EndpointRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRemove {
    pub container_id: String,
    pub network: String,
}

/// A container was renamed: its DNS name follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRename {
    pub container_id: String,
    pub name: String,
}

/// Resolve a network name/ID/prefix to (ID, name, driver), for validation at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkResolve {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRef {
    pub id: String,
    pub name: String,
    pub driver: String,
}

/// The network service's table of calls (see [`crate::contract`]).
#[macro_export]
macro_rules! network_table {
    ($gen:path) => {
        $gen! {
            service: Network, api: NetworkApi, client: NetworkClient, serve: serve_network, module: network,
            ops {
                network_create(NetworkCreate) -> docker::NetworkCreateResponse; callers [Gateway];
                network_inspect(NetworkInspect) -> docker::NetworkInspect; callers [Gateway], idempotent;
                network_list(NetworkList) -> Vec<docker::NetworkInspect>; callers [Gateway], idempotent;
                network_remove(NetworkRemove) -> (); callers [Gateway];
                network_prune(NetworkPrune) -> docker::NetworkPruneResponse; callers [Gateway];
                network_resolve(NetworkResolve) -> NetworkRef; callers [Runtime];
                sandbox_create(SandboxCreate) -> Sandbox; callers [Runtime];
                sandbox_remove(SandboxRemove) -> (); callers [Runtime];
                sandbox_rename(SandboxRename) -> (); callers [Runtime];
                endpoint_create(EndpointCreate) -> docker::EndpointSettings; callers [Runtime];
                endpoint_remove(EndpointRemove) -> (); callers [Runtime];
            }
        }
    };
}
crate::network_table!(crate::__api);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn network_messages_roundtrip() {
        roundtrip(NetworkCreate {
            body: docker::NetworkCreateRequest {
                name: "n".into(),
                driver: Some("bridge".into()),
                ..Default::default()
            },
        });
        roundtrip(NetworkInspect {
            id: "n".into(),
            verbose: false,
        });
        roundtrip(NetworkList::default());
        roundtrip(NetworkRemove { id: "n".into() });
        roundtrip(docker::NetworkInspect {
            name: Some("n".into()),
            created: Some("2024-01-01T00:00:00.000000001Z".into()),
            containers: Some(HashMap::from([(
                "c".into(),
                docker::EndpointResource { name: Some("web".into()), ipv4_address: Some("172.18.0.2/16".into()), ..Default::default() },
            )])),
            ..Default::default()
        });
        roundtrip(NetworkPrune::default());
        roundtrip(NetworkResolve { id: "n".into() });
        roundtrip(NetworkRef {
            id: "i".into(),
            name: "n".into(),
            driver: "bridge".into(),
        });
        let ep = EndpointRequest {
            network: "n".into(),
            settings: docker::EndpointSettings {
                aliases: Some(vec!["web".into()]),
                ..Default::default()
            },
        };
        roundtrip(SandboxCreate {
            container_id: "c".into(),
            name: "web".into(),
            hostname: "h".into(),
            domainname: String::new(),
            network_mode: "bridge".into(),
            endpoints: vec![ep.clone()],
            port_bindings: HashMap::from([(
                "80/tcp".into(),
                Some(vec![docker::PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("8080".into()),
                }]),
            )]),
            publish_all: false,
            exposed_ports: vec!["80/tcp".into()],
            dns: vec![],
            dns_search: vec![],
            dns_options: vec![],
            extra_hosts: vec!["a:1.2.3.4".into()],
        });
        roundtrip(Sandbox {
            key: "/r/netns/c".into(),
            networks: HashMap::from([("n".into(), docker::EndpointSettings::default())]),
            ports: HashMap::new(),
            resolv_conf: "nameserver 1.1.1.1\n".into(),
            hosts: "127.0.0.1 localhost\n".into(),
        });
        roundtrip(SandboxRemove {
            container_id: "c".into(),
        });
        roundtrip(SandboxRename {
            container_id: "c".into(),
            name: "x".into(),
        });
        roundtrip(EndpointCreate {
            container_id: "c".into(),
            endpoint: ep,
        });
        roundtrip(EndpointRemove {
            container_id: "c".into(),
            network: "n".into(),
        });
    }
}
