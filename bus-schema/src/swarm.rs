//! Requests served by the swarm service of a node (`berth.v1.swarm.<node>.<Op>` on the
//! node's bus): the gateway asks its own node, which answers from the cluster's store
//! when it is a manager and with Docker's 503 when it is not (see docs/swarm.md).
//!
//! The cluster's own traffic (between the swarm services of different nodes) travels on
//! the swarm bus, a separate NATS system; its subjects are spelled in [`cluster`].

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::docker;
use crate::runtime::StreamInfo;

/// `POST /swarm/init`: the new node's ID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmInit {
    pub req: docker::SwarmInitRequest,
}

/// `POST /swarm/join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmJoin {
    pub req: docker::SwarmJoinRequest,
}

/// `POST /swarm/leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmLeave {
    pub force: bool,
}

/// `GET /swarm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmInspect {}

/// `POST /swarm/update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmUpdate {
    pub version: u64,
    pub spec: docker::SwarmSpec,
    pub rotate_worker_token: bool,
    pub rotate_manager_token: bool,
    pub rotate_manager_unlock_key: bool,
}

/// `GET /swarm/unlockkey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmUnlockKey {}

/// `POST /swarm/unlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmUnlock {
    pub key: String,
}

/// `GET /nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    pub filters: HashMap<String, Vec<String>>,
}

/// `GET /nodes/{id}` (ID, ID prefix or hostname).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInspect {
    pub id: String,
}

/// `POST /nodes/{id}/update?version=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeUpdate {
    pub id: String,
    pub version: u64,
    pub spec: docker::NodeSpec,
}

/// `DELETE /nodes/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRemove {
    pub id: String,
    pub force: bool,
}

/// `POST /services/create`. `auth` is the X-Registry-Auth header as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCreate {
    pub spec: docker::ServiceSpec,
    pub auth: Option<String>,
}

/// `GET /services`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    pub filters: HashMap<String, Vec<String>>,
    /// Include ServiceStatus (running/desired task counts).
    pub status: bool,
}

/// `GET /services/{id}` (ID, ID prefix or name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInspect {
    pub id: String,
    pub insert_defaults: bool,
}

/// `POST /services/{id}/update?version=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    pub id: String,
    pub version: u64,
    pub spec: docker::ServiceSpec,
    /// `previous` to roll back to the previous spec.
    pub rollback: Option<String>,
    /// `spec` or `previous-spec`: where the registry auth comes from when none is sent.
    pub registry_auth_from: Option<String>,
    pub auth: Option<String>,
}

/// `DELETE /services/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRemove {
    pub id: String,
}

/// Log options shared by `GET /services/{id}/logs` and `GET /tasks/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogOptions {
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Unix seconds (with fraction), 0 for none.
    pub since: f64,
    pub timestamps: bool,
    /// "all" or a number of lines.
    pub tail: String,
    /// Prefix each line with the task's node, service and task IDs (the CLI asks).
    pub details: bool,
}

/// `GET /services/{id}/logs`: one frame per line, multiplexed (stream 1/2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceLogs {
    pub id: String,
    pub opts: LogOptions,
}

/// `GET /tasks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskList {
    pub filters: HashMap<String, Vec<String>>,
}

/// `GET /tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInspect {
    pub id: String,
}

/// `GET /tasks/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLogs {
    pub id: String,
    pub opts: LogOptions,
}

/// `POST /secrets/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretCreate {
    pub spec: docker::SecretSpec,
}

/// `GET /secrets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    pub filters: HashMap<String, Vec<String>>,
}

/// `GET /secrets/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInspect {
    pub id: String,
}

/// `POST /secrets/{id}/update?version=N`: only labels may change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretUpdate {
    pub id: String,
    pub version: u64,
    pub spec: docker::SecretSpec,
}

/// `DELETE /secrets/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRemove {
    pub id: String,
}

/// `POST /configs/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigCreate {
    pub spec: docker::ConfigSpec,
}

/// `GET /configs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigList {
    pub filters: HashMap<String, Vec<String>>,
}

/// `GET /configs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInspect {
    pub id: String,
}

/// `POST /configs/{id}/update?version=N`: only labels may change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigUpdate {
    pub id: String,
    pub version: u64,
    pub spec: docker::ConfigSpec,
}

/// `DELETE /configs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRemove {
    pub id: String,
}

/// `POST /networks/create` with a swarm-scoped driver (`overlay`): the network goes to
/// the swarm's store (managers only, Docker's words otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmNetworkCreate {
    pub req: docker::NetworkCreateRequest,
}

/// The swarm's networks for `GET /networks` (empty when this node is in no swarm).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmNetworkList {
    pub filters: HashMap<String, Vec<String>>,
}

/// `GET /networks/{id}` of a swarm network (ID, name or unique ID prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmNetworkInspect {
    pub id: String,
}

/// `DELETE /networks/{id}` of a swarm network: refused while a service uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmNetworkRemove {
    pub id: String,
}

/// A container of this node joins a swarm overlay network (`docker run --network`,
/// `docker network connect`): Moby's network attachment. The swarm service allocates
/// its address in the network's store record and puts the container on the overlay
/// (veth `ifname` inside, VIPs, names) once it runs. NotFound ("network X not found")
/// outside a swarm or when no overlay has that name, ID or ID prefix; Moby's
/// PermissionDenied text when the network is not attachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmNetworkAttach {
    /// Name, ID or ID prefix, as the user gave it.
    pub network: String,
    pub container_id: String,
    /// The interface inside the container (`eth0`, …).
    pub ifname: String,
    /// The names the other containers on the network resolve to its address there: its
    /// name and its aliases on that network (Moby's embedded DNS).
    #[serde(default)]
    pub names: Vec<String>,
}

/// The container's endpoint on the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmAttachment {
    pub network_id: String,
    pub network_name: String,
    /// `a.b.c.d/len`.
    pub address: String,
    pub mac: String,
}

/// Give back a container's address in a swarm network (by ID) and take it off the
/// overlay. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmNetworkDetach {
    pub network_id: String,
    pub container_id: String,
}

/// Docker's `Service` object. bollard's model has no `PreviousSpec`, which `docker
/// service inspect` shows and rollbacks read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceObject {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: docker::ObjectVersion,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
    #[serde(rename = "Spec")]
    pub spec: docker::ServiceSpec,
    #[serde(rename = "PreviousSpec", skip_serializing_if = "Option::is_none", default)]
    pub previous_spec: Option<docker::ServiceSpec>,
    #[serde(rename = "Endpoint")]
    pub endpoint: docker::ServiceEndpoint,
    #[serde(rename = "UpdateStatus", skip_serializing_if = "Option::is_none", default)]
    pub update_status: Option<docker::ServiceUpdateStatus>,
    #[serde(rename = "ServiceStatus", skip_serializing_if = "Option::is_none", default)]
    pub service_status: Option<docker::ServiceServiceStatus>,
    #[serde(rename = "JobStatus", skip_serializing_if = "Option::is_none", default)]
    pub job_status: Option<docker::ServiceJobStatus>,
}

/// Docker's `Task` object: bollard's model and the `NetworksAttachments` it lacks (the
/// overlay networks a task is on, with its addresses there: `docker inspect` of a task,
/// Traefik's and Portainer's swarm providers read them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskObject {
    #[serde(flatten)]
    pub task: docker::Task,
    #[serde(rename = "NetworksAttachments", skip_serializing_if = "Option::is_none", default)]
    pub networks_attachments: Option<Vec<NetworkAttachment>>,
}

/// swarm.NetworkAttachment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    #[serde(rename = "Network")]
    pub network: SwarmNetwork,
    #[serde(rename = "Addresses")]
    pub addresses: Vec<String>,
}

/// swarm.Network: a network as the swarm's store holds it (not the engine's
/// `docker network inspect` shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmNetwork {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: docker::ObjectVersion,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
    #[serde(rename = "Spec")]
    pub spec: SwarmNetworkSpec,
    #[serde(rename = "DriverState")]
    pub driver_state: SwarmDriver,
    #[serde(rename = "IPAMOptions", skip_serializing_if = "Option::is_none", default)]
    pub ipam_options: Option<SwarmIpamOptions>,
}

/// swarm.NetworkSpec (Go's `omitempty` where Moby's has it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmNetworkSpec {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Labels")]
    pub labels: HashMap<String, String>,
    #[serde(rename = "DriverConfiguration", skip_serializing_if = "Option::is_none", default)]
    pub driver_configuration: Option<SwarmDriver>,
    #[serde(rename = "IPv6Enabled", skip_serializing_if = "std::ops::Not::not", default)]
    pub ipv6_enabled: bool,
    #[serde(rename = "Internal", skip_serializing_if = "std::ops::Not::not", default)]
    pub internal: bool,
    #[serde(rename = "Attachable", skip_serializing_if = "std::ops::Not::not", default)]
    pub attachable: bool,
    #[serde(rename = "Ingress", skip_serializing_if = "std::ops::Not::not", default)]
    pub ingress: bool,
    #[serde(rename = "IPAMOptions", skip_serializing_if = "Option::is_none", default)]
    pub ipam_options: Option<SwarmIpamOptions>,
    #[serde(rename = "Scope", skip_serializing_if = "String::is_empty", default)]
    pub scope: String,
}

/// swarm.IPAMOptions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmIpamOptions {
    #[serde(rename = "Driver")]
    pub driver: SwarmDriver,
    #[serde(rename = "Configs", skip_serializing_if = "Vec::is_empty", default)]
    pub configs: Vec<SwarmIpamConfig>,
}

/// swarm.Driver (both keys `omitempty`, unlike the engine's `Driver` in bollard's model).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmDriver {
    #[serde(rename = "Name", skip_serializing_if = "String::is_empty", default)]
    pub name: String,
    #[serde(rename = "Options", skip_serializing_if = "Option::is_none", default)]
    pub options: Option<HashMap<String, String>>,
}

/// swarm.IPAMConfig.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmIpamConfig {
    #[serde(rename = "Subnet", skip_serializing_if = "String::is_empty", default)]
    pub subnet: String,
    #[serde(rename = "Range", skip_serializing_if = "String::is_empty", default)]
    pub range: String,
    #[serde(rename = "Gateway", skip_serializing_if = "String::is_empty", default)]
    pub gateway: String,
}

/// Docker's `Swarm` object, in Moby's key order and with `DefaultAddrPool: null` when
/// none was set (bollard's model drops it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmObject {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: docker::ObjectVersion,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
    #[serde(rename = "Spec")]
    pub spec: docker::SwarmSpec,
    #[serde(rename = "TLSInfo")]
    pub tls_info: docker::TlsInfo,
    #[serde(rename = "RootRotationInProgress")]
    pub root_rotation_in_progress: bool,
    #[serde(rename = "DefaultAddrPool")]
    pub default_addr_pool: Option<Vec<String>>,
    #[serde(rename = "SubnetSize")]
    pub subnet_size: u32,
    #[serde(rename = "DataPathPort")]
    pub data_path_port: u32,
    #[serde(rename = "JoinTokens", skip_serializing_if = "Option::is_none", default)]
    pub join_tokens: Option<docker::JoinTokens>,
}

/// This node's swarm state for `/_ping`'s `Swarm` header: `inactive`, `active/manager`,
/// `active/worker` (Docker's values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmStatus {}

/// The swarm service's table of calls (see [`crate::contract`]): the gateway asks its
/// own node's swarm service.
#[macro_export]
macro_rules! swarm_table {
    ($gen:path) => {
        $gen! {
            service: Swarm, api: SwarmApi, client: SwarmClient, serve: serve_swarm, module: swarm,
            ops {
                swarm_init(SwarmInit) -> String; callers [Gateway], timeout |_| $crate::secs(60);
                swarm_join(SwarmJoin) -> (); callers [Gateway], timeout |_| $crate::secs(120);
                swarm_leave(SwarmLeave) -> (); callers [Gateway], timeout |_| $crate::secs(60);
                swarm_inspect(SwarmInspect) -> SwarmObject; callers [Gateway];
                swarm_update(SwarmUpdate) -> (); callers [Gateway], timeout |_| $crate::secs(60);
                swarm_unlock_key(SwarmUnlockKey) -> docker::UnlockKeyResponse; callers [Gateway];
                swarm_unlock(SwarmUnlock) -> (); callers [Gateway];
                swarm_status(SwarmStatus) -> String; callers [Gateway];
                node_list(NodeList) -> Vec<docker::Node>; callers [Gateway];
                node_inspect(NodeInspect) -> docker::Node; callers [Gateway];
                node_update(NodeUpdate) -> (); callers [Gateway];
                node_remove(NodeRemove) -> (); callers [Gateway], timeout |_| $crate::secs(60);
                service_create(ServiceCreate) -> docker::ServiceCreateResponse; callers [Gateway], timeout |_| $crate::secs(60);
                service_list(ServiceList) -> Vec<ServiceObject>; callers [Gateway];
                service_inspect(ServiceInspect) -> ServiceObject; callers [Gateway];
                service_update(ServiceUpdate) -> docker::ServiceUpdateResponse; callers [Gateway], timeout |_| $crate::secs(60);
                service_remove(ServiceRemove) -> (); callers [Gateway], timeout |_| $crate::secs(60);
                service_logs(ServiceLogs) -> $crate::runtime::StreamInfo, stream $crate::stream::StdioChunk; callers [Gateway];
                task_list(TaskList) -> Vec<TaskObject>; callers [Gateway];
                task_inspect(TaskInspect) -> TaskObject; callers [Gateway];
                task_logs(TaskLogs) -> $crate::runtime::StreamInfo, stream $crate::stream::StdioChunk; callers [Gateway];
                secret_create(SecretCreate) -> docker::IdResponse; callers [Gateway];
                secret_list(SecretList) -> Vec<docker::Secret>; callers [Gateway];
                secret_inspect(SecretInspect) -> docker::Secret; callers [Gateway];
                secret_update(SecretUpdate) -> (); callers [Gateway];
                secret_remove(SecretRemove) -> (); callers [Gateway];
                config_create(ConfigCreate) -> docker::IdResponse; callers [Gateway];
                config_list(ConfigList) -> Vec<docker::Config>; callers [Gateway];
                config_inspect(ConfigInspect) -> docker::Config; callers [Gateway];
                config_update(ConfigUpdate) -> (); callers [Gateway];
                config_remove(ConfigRemove) -> (); callers [Gateway];
                swarm_network_create(SwarmNetworkCreate) -> docker::NetworkCreateResponse; callers [Gateway];
                swarm_network_list(SwarmNetworkList) -> Vec<docker::NetworkInspect>; callers [Gateway];
                swarm_network_inspect(SwarmNetworkInspect) -> docker::NetworkInspect; callers [Gateway, Network];
                swarm_network_remove(SwarmNetworkRemove) -> (); callers [Gateway];
                swarm_network_attach(SwarmNetworkAttach) -> SwarmAttachment; callers [Network];
                swarm_network_detach(SwarmNetworkDetach) -> (); callers [Network];
            }
        }
    };
}
crate::swarm_table!(crate::__api);

/// The swarm bus: the NATS system the swarm services of a cluster share (each node's
/// swarm server: cluster members on managers, leaf nodes on workers). Subjects are
/// `berth.swarm.v1.…`; nothing here travels on a node's own bus.
pub mod cluster {
    use super::*;

    pub const PREFIX: &str = "berth.swarm.v1";

    /// A request to the swarm service of one node (its agent), by swarm node ID.
    pub trait NodeRpc: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
        const OP: &'static str;
        type Reply: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;
        fn subject(node_id: &str) -> String {
            format!("{PREFIX}.node.{node_id}.{}", Self::OP)
        }
    }

    /// The join handshake, answered by any manager: the token proves the role; the
    /// answer carries the node's credentials, the CA and where the managers are.
    pub const JOIN: &str = "berth.swarm.v1.join";

    /// The logs of a task's container on the node that runs it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AgentTaskLogs {
        pub task_id: String,
        pub container_id: String,
        pub opts: LogOptions,
    }

    impl NodeRpc for AgentTaskLogs {
        const OP: &'static str = "AgentTaskLogs";
        type Reply = StreamInfo;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn swarm_messages_roundtrip() {
        roundtrip(SwarmInit {
            req: docker::SwarmInitRequest {
                listen_addr: Some("0.0.0.0:2377".into()),
                advertise_addr: Some("10.0.0.1".into()),
                ..Default::default()
            },
        });
        roundtrip(SwarmLeave { force: true });
        roundtrip(ServiceCreate {
            spec: docker::ServiceSpec {
                name: Some("web".into()),
                mode: Some(docker::ServiceSpecMode {
                    replicated: Some(docker::ServiceSpecModeReplicated { replicas: Some(3) }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            auth: None,
        });
        roundtrip(ServiceLogs {
            id: "web".into(),
            opts: LogOptions {
                follow: false,
                stdout: true,
                stderr: true,
                since: 0.0,
                timestamps: false,
                tail: "all".into(),
                details: true,
            },
        });
        roundtrip(NodeUpdate { id: "n".into(), version: 3, spec: docker::NodeSpec::default() });
        roundtrip(SwarmNetworkAttach { network: "ov".into(), container_id: "c".into(), ifname: "eth0".into(), names: vec!["db".into()] });
        roundtrip(SwarmAttachment { network_id: "n".into(), network_name: "ov".into(), address: "10.0.1.3/24".into(), mac: "02:42:0a:00:01:03".into() });
        roundtrip(SwarmNetworkDetach { network_id: "n".into(), container_id: "c".into() });
        assert_eq!(<cluster::AgentTaskLogs as cluster::NodeRpc>::subject("abc"), "berth.swarm.v1.node.abc.AgentTaskLogs");
    }
}
