//! Subject names: `berth.v1.<service>.<node>.<op>`. Every service on a node's bus is
//! node-local, swarm included (a node's swarm service answers for that node; the
//! cluster's traffic has its own NATS system, see `swarm::cluster`). `Scope::Cluster`
//! (`berth.v1.<service>.<op>`) remains for a service shared by several nodes' buses.
//!
//! Images and builder are node-local as well as storage, runtime and network: their
//! work (unpacking layers, running build steps) happens in the node's own storage.

use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "berth.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Gateway,
    Images,
    Storage,
    Runtime,
    Network,
    Builder,
    Swarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Node,
}

impl Service {
    pub const ALL: [Service; 7] = [
        Service::Gateway,
        Service::Images,
        Service::Storage,
        Service::Runtime,
        Service::Network,
        Service::Builder,
        Service::Swarm,
    ];
    /// The services behind the gateway, in the order `berth up` starts them.
    pub const BACKENDS: [Service; 6] = [
        Service::Storage,
        Service::Images,
        Service::Network,
        Service::Runtime,
        Service::Builder,
        Service::Swarm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Images => "images",
            Service::Storage => "storage",
            Service::Runtime => "runtime",
            Service::Network => "network",
            Service::Builder => "builder",
            Service::Swarm => "swarm",
        }
    }

    pub fn from_name(s: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Every service is node-local on a node's bus: even the swarm service answers
    /// for its own node (a worker refuses manager requests, as Docker's does); the
    /// cluster's traffic travels on the swarm bus (`swarm::cluster`).
    pub fn scope(self) -> Scope {
        Scope::Node
    }

    /// Every subject of this service on `node` (`berth.v1.runtime.<node>.>`).
    pub fn wildcard(self, node: &str) -> String {
        match self.scope() {
            Scope::Cluster => format!("{PREFIX}.{}.>", self.name()),
            Scope::Node => format!("{PREFIX}.{}.{node}.>", self.name()),
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub fn subject(svc: Service, node: &str, op: &str) -> String {
    match svc.scope() {
        Scope::Cluster => format!("{PREFIX}.{}.{op}", svc.name()),
        Scope::Node => format!("{PREFIX}.{}.{node}.{op}", svc.name()),
    }
}

/// Events: `berth.v1.events.<type>.<action>`. Docker actions such as
/// `exec_start: sh -c ...` or `health_status: healthy` keep only the part before
/// the colon in the subject; the envelope carries the whole action.
pub fn event_subject(typ: &str, action: &str) -> String {
    let base = action.split(':').next().unwrap_or(action).trim();
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{PREFIX}.events.{typ}.{clean}")
}

/// Every event subject.
pub const EVENTS_WILDCARD: &str = "berth.v1.events.>";
/// The JetStream stream that keeps events for `docker events --since`.
pub const EVENTS_STREAM: &str = "BERTH_EVENTS";

/// Lifecycle notices of a node's service instances:
/// `berth.v1.instance.<node>.<service>.exited` (published by `berth up` the moment it
/// reaps the process) and `...started` (published by the service once it serves).
pub fn instance_subject(node: &str, svc: Service, what: InstanceEvent) -> String {
    format!("{PREFIX}.instance.{node}.{}.{}", svc.name(), what.token())
}

/// Every instance notice of `node`.
pub fn instance_wildcard(node: &str) -> String {
    format!("{PREFIX}.instance.{node}.>")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceEvent {
    Started,
    Exited,
}

impl InstanceEvent {
    pub fn token(self) -> &'static str {
        match self {
            InstanceEvent::Started => "started",
            InstanceEvent::Exited => "exited",
        }
    }
}

/// Per-user inbox prefix: replies to a user's requests arrive under `_I.<user>.`.
/// Only that user may subscribe there, and nobody may publish there except a service
/// answering a request it received from that user (nats-server's `allow_responses`).
pub fn inbox_prefix(user: &str) -> String {
    format!("_I.{user}")
}

/// Node tokens must be a single subject token.
pub fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
