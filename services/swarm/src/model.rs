//! What the store holds: one record type per bucket (see docs/swarm.md). Docker's API
//! types are kept inside as they are (specs as the client sent them, normalised), so
//! the API answers are the records plus their revision.

use bus_schema::docker;
use serde::{Deserialize, Serialize};

/// Docker's task states in order (swarmkit's `TaskState`): a task only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        use TaskState::*;
        [New, Pending, Assigned, Accepted, Preparing, Ready, Starting, Running, Complete, Shutdown, Failed, Rejected, Remove, Orphaned]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// Past running: the task's container is gone or going.
    pub fn terminal(self) -> bool {
        self > TaskState::Running
    }

    pub fn docker(self) -> docker::TaskState {
        serde_json::from_value(serde_json::Value::String(self.as_str().into())).unwrap_or_default()
    }
}

/// An observed task status (Docker's `TaskStatus` with our state type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: TaskState,
    pub timestamp: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub err: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// The ports the task's container publishes in host mode (Docker's `PortStatus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<docker::EndpointPortConfig>>,
}

impl Status {
    pub fn now(state: TaskState, message: impl Into<String>) -> Status {
        Status { state, timestamp: crate::now(), message: message.into(), err: None, container_id: None, pid: None, exit_code: None, ports: None }
    }
}

/// `swarm_cluster/swarm`: the swarm object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub spec: docker::SwarmSpec,
    /// The root CA certificate (PEM): `TLSInfo.TrustRoot`, and its issuer's subject and
    /// public key (base64 DER) as `TLSInfo` shows them.
    pub ca_cert: String,
    pub ca_subject: String,
    pub ca_public_key: String,
    pub worker_token: String,
    pub manager_token: String,
    #[serde(default)]
    pub default_addr_pool: Vec<String>,
    #[serde(default = "default_subnet_size")]
    pub subnet_size: u32,
    #[serde(default = "default_data_path_port")]
    pub data_path_port: u32,
    /// Bumped whenever the set of managers changes (bucket replicas follow it).
    #[serde(default)]
    pub managers_epoch: u64,
}

fn default_subnet_size() -> u32 {
    24
}
fn default_data_path_port() -> u32 {
    4789
}

/// `swarm_pki/ca`: what only managers read — the CA key, the route credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PkiRecord {
    pub ca_key: String,
    pub route_user: String,
    pub route_password: String,
    /// Autolock's unlock key (`SWMKEY-1-…`), empty when autolock is off.
    #[serde(default)]
    pub unlock_key: String,
}

/// The bus credentials and addresses of a node's swarm server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeBus {
    /// The node's user on every swarm server (managers check it; workers use it on
    /// their leaf connection).
    pub user: String,
    /// bcrypt hash of its password (the password itself is only on the node).
    pub password_hash: String,
    /// Where its swarm server listens: client (join handshake), leaf, route (host:port).
    pub client_addr: String,
    pub leaf_addr: String,
    pub route_addr: String,
}

/// `swarm_nodes/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub spec: docker::NodeSpec,
    pub description: docker::NodeDescription,
    /// ready, down, unknown, disconnected.
    pub state: String,
    #[serde(default)]
    pub message: String,
    /// The address other nodes reach it at (`Status.Addr`).
    pub addr: String,
    /// `manager` or `worker`: the role it runs as now (the spec says the wanted one).
    pub role: String,
    pub bus: NodeBus,
    /// `Some(false)`: a manager whose swarm server is not yet a current replica of
    /// every bucket (promoted, or joined, moments ago). It shows Unreachable until the
    /// leader sees it is (then None): as a swarmkit manager is Reachable once it is a
    /// raft member, so that losing another manager then keeps the quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_store: Option<bool>,
}

/// `swarm_heartbeats/<id>`: written by each node every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    /// Unix milliseconds, the node's clock (only compared to the node's own previous).
    pub at_ms: u64,
    pub seq: u64,
}

/// `swarm_leader/leader`: the lease of the manager that runs the orchestrator,
/// scheduler and node health. Renewed every second; expires after [`crate::store::LEASE_TTL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub node_id: String,
    pub term: u64,
}

/// `swarm_services/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub spec: docker::ServiceSpec,
    #[serde(default)]
    pub previous_spec: Option<docker::ServiceSpec>,
    /// Bumped on every spec change; tasks made from this spec carry it (`_up-to-date`).
    pub spec_version: u64,
    #[serde(default)]
    pub endpoint: Option<docker::ServiceEndpoint>,
    #[serde(default)]
    pub update_status: Option<docker::ServiceUpdateStatus>,
}

/// `swarm_tasks/<id>`: written by managers only (desired state, placement).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub service_id: String,
    pub service_name: String,
    /// Replicated services: 1..=replicas; global: 0 (one per node).
    pub slot: u64,
    #[serde(default)]
    pub node_id: Option<String>,
    pub spec: docker::TaskSpec,
    pub spec_version: u64,
    pub desired_state: TaskState,
    /// The manager's view (new, pending, assigned, orphaned); the node reports the rest.
    pub status: Status,
    /// Service labels copied at creation (container labels of the task come from the spec).
    #[serde(default)]
    pub service_labels: std::collections::HashMap<String, String>,
    /// A restart's delayed start (unix ms, the leader's clock): desired Ready until then.
    #[serde(default)]
    pub start_at: Option<u64>,
    /// Job-mode services: the execution this task belongs to (the service's spec
    /// version when it was made: Docker's `JobIteration`).
    #[serde(default)]
    pub job_iteration: Option<u64>,
}

/// `swarm_task_status/<node>.<task>`: written by the node that runs the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusRecord {
    pub task_id: String,
    pub node_id: String,
    pub status: Status,
}

/// `swarm_secrets/<id>` and `swarm_configs/<id>`. The managers' JetStream store is
/// encrypted at rest (natsconf: `cipher`/`key`), so the data never reaches a disk in
/// clear; workers keep no store and mount it on tmpfs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::HashMap<String, String>,
    /// The data, base64.
    pub data: String,
    #[serde(default)]
    pub driver: Option<docker::Driver>,
    #[serde(default)]
    pub templating: Option<docker::Driver>,
}

/// The status shown for a task: the node's report unless the manager has the last word
/// (orphaned), else the manager's own.
/// `swarm_networks/<id>`: an overlay network of the swarm. Its subnet comes from the
/// swarm's default address pool unless the client gave one; `vni` is its VXLAN ID;
/// `allocated` the addresses handed out in it (address -> owner: `vip.<service ID>`
/// for a service's virtual IP, a task ID for a task's address).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub ingress: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub enable_ipv6: bool,
    pub ipam_driver: String,
    #[serde(default)]
    pub ipam_options: Option<std::collections::HashMap<String, String>>,
    /// (subnet, gateway)
    pub subnets: Vec<(String, String)>,
    /// The client's driver options (the VNI is added on the way out).
    #[serde(default)]
    pub options: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub labels: Option<std::collections::HashMap<String, String>>,
    pub vni: u32,
    #[serde(default)]
    pub allocated: std::collections::BTreeMap<String, String>,
    /// The address handed out last: the next goes after it (libnetwork's serial
    /// allocation for swarm networks), so an address just given back is not at once
    /// another task's, which the other nodes would still reach at its old place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated: Option<String>,
    /// The names of plain containers attached to the network, by owner
    /// ([`crate::overlay::container_owner`]): the embedded DNS answers them with the
    /// owner's address, as Moby's does for a container on an attachable overlay.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub names: std::collections::BTreeMap<String, Vec<String>>,
}

/// An overlay network record for unit tests: named as its ID, 10.0.1.0/24, `alloc`
/// (address, owner) allocated.
#[cfg(test)]
pub fn test_network(id: &str, vni: u32, alloc: &[(&str, &str)]) -> NetworkRecord {
    NetworkRecord {
        id: id.into(),
        created_at: String::new(),
        updated_at: String::new(),
        name: id.into(),
        driver: "overlay".into(),
        attachable: false,
        ingress: false,
        internal: false,
        enable_ipv6: false,
        ipam_driver: "default".into(),
        ipam_options: None,
        subnets: vec![("10.0.1.0/24".into(), "10.0.1.1".into())],
        options: Default::default(),
        labels: None,
        vni,
        allocated: alloc.iter().map(|(a, o)| (a.to_string(), o.to_string())).collect(),
        last_allocated: None,
        names: Default::default(),
    }
}

/// A task record for unit tests: service `svc` (named `name-<svc>`), slot 1, on `node`,
/// running.
#[cfg(test)]
pub fn test_task(id: &str, svc: &str, node: &str, desired: TaskState) -> TaskRecord {
    serde_json::from_value(serde_json::json!({
        "id": id, "created_at": "", "updated_at": "", "service_id": svc, "service_name": format!("name-{svc}"),
        "slot": 1, "node_id": node, "spec": {}, "spec_version": 1, "desired_state": desired,
        "status": {"state": "running", "timestamp": "", "message": ""}
    }))
    .unwrap()
}

/// A ready worker record for unit tests, at underlay address `addr`.
#[cfg(test)]
pub fn test_node(id: &str, addr: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        created_at: String::new(),
        updated_at: String::new(),
        spec: Default::default(),
        description: Default::default(),
        state: "ready".into(),
        message: String::new(),
        addr: addr.into(),
        role: "worker".into(),
        in_store: None,
        bus: Default::default(),
    }
}

pub fn effective_status<'a>(t: &'a TaskRecord, reported: Option<&'a TaskStatusRecord>) -> &'a Status {
    match reported {
        Some(r) if t.status.state != TaskState::Orphaned && r.status.state >= t.status.state => &r.status,
        _ => &t.status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_order_and_names() {
        assert!(TaskState::Running > TaskState::Starting);
        assert!(TaskState::Failed.terminal());
        assert!(!TaskState::Running.terminal());
        for s in ["new", "pending", "assigned", "running", "shutdown", "orphaned"] {
            assert_eq!(TaskState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(serde_json::to_string(&TaskState::Running).unwrap(), "\"running\"");
    }
}
