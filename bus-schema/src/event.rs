//! The event envelope, in Docker's vocabulary (`GET /events` sends these fields).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::contract::Caller;

/// Docker's event types that berth publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Container,
    Image,
    Volume,
    Network,
    Service,
    Node,
    Secret,
    Config,
    Plugin,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Container => "container",
            EventType::Image => "image",
            EventType::Volume => "volume",
            EventType::Network => "network",
            EventType::Service => "service",
            EventType::Node => "node",
            EventType::Secret => "secret",
            EventType::Config => "config",
            EventType::Plugin => "plugin",
        }
    }
}

/// Docker's event actions (`docker events` prints them as they are spelled here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Attach,
    Commit,
    Connect,
    Create,
    Delete,
    Destroy,
    Die,
    Disable,
    Disconnect,
    Enable,
    ExecCreate,
    ExecDie,
    ExecStart,
    Export,
    ExtractToDir,
    HealthStatus,
    Import,
    Kill,
    Load,
    Mount,
    Oom,
    Pause,
    Prune,
    Pull,
    Push,
    Remove,
    Rename,
    Restart,
    Save,
    Start,
    Stop,
    Tag,
    Unmount,
    Unpause,
    Untag,
    Update,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Attach => "attach",
            Action::Commit => "commit",
            Action::Connect => "connect",
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Destroy => "destroy",
            Action::Die => "die",
            Action::Disable => "disable",
            Action::Disconnect => "disconnect",
            Action::Enable => "enable",
            Action::ExecCreate => "exec_create",
            Action::ExecDie => "exec_die",
            Action::ExecStart => "exec_start",
            Action::Export => "export",
            Action::ExtractToDir => "extract-to-dir",
            Action::HealthStatus => "health_status",
            Action::Import => "import",
            Action::Kill => "kill",
            Action::Load => "load",
            Action::Mount => "mount",
            Action::Oom => "oom",
            Action::Pause => "pause",
            Action::Prune => "prune",
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Remove => "remove",
            Action::Rename => "rename",
            Action::Restart => "restart",
            Action::Save => "save",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Tag => "tag",
            Action::Unmount => "unmount",
            Action::Unpause => "unpause",
            Action::Untag => "untag",
            Action::Update => "update",
        }
    }
}

macro_rules! owners {
    ($( $owner:ident publishes $typ:ident [$($action:ident),* $(,)?]; )*) => {
        /// Who publishes which event: only the owner may (the bus permissions are
        /// generated from this).
        pub const OWNERS: &[(EventType, Action, Caller)] = &[
            $( $( (EventType::$typ, Action::$action, Caller::$owner), )* )*
        ];
    };
}

owners! {
    Runtime publishes Container [
        Attach, Create, Destroy, Die, ExecCreate, ExecDie, ExecStart, Export, ExtractToDir,
        HealthStatus, Kill, Oom, Pause, Prune, Rename, Restart, Start, Stop, Unpause, Update,
    ];
    Builder publishes Container [Commit];
    Images publishes Image [Delete, Import, Load, Prune, Pull, Push, Save, Tag, Untag];
    // Moby 20.10's plugin manager: create, pull (also of an upgrade), enable,
    // disable, remove; Actor ID the plugin's (the remote for pull), `name` as given
    Images publishes Plugin [Create, Disable, Enable, Pull, Remove];
    Storage publishes Volume [Create, Destroy, Mount, Unmount];
    Network publishes Network [Connect, Create, Destroy, Disconnect];
    Swarm publishes Service [Create, Update, Remove];
    Swarm publishes Node [Create, Update, Remove];
    Swarm publishes Secret [Create, Update, Remove];
    Swarm publishes Config [Create, Update, Remove];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// container, image, volume, network, daemon, plugin, node, service...
    #[serde(rename = "Type")]
    pub typ: String,
    /// create, start, die, destroy, pull, tag, ... (Docker's actions)
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// local or swarm
    #[serde(rename = "scope")]
    pub scope: String,
    #[serde(rename = "time")]
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

impl Event {
    /// A local-scope event stamped now.
    pub fn now(typ: EventType, action: Action, id: impl Into<String>) -> Event {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Event {
            typ: typ.as_str().to_string(),
            action: action.as_str().to_string(),
            actor: Actor {
                id: id.into(),
                attributes: BTreeMap::new(),
            },
            scope: "local".into(),
            time: ns / 1_000_000_000,
            time_nano: ns,
        }
    }

    /// Docker's detail after the action: `exec_start: sh -c true`, `health_status: healthy`.
    pub fn detail(mut self, text: &str) -> Event {
        self.action = format!("{}: {text}", self.action);
        self
    }

    pub fn attr(mut self, k: impl Into<String>, v: impl Into<String>) -> Event {
        self.actor.attributes.insert(k.into(), v.into());
        self
    }

    pub fn subject(&self) -> String {
        crate::subject::event_subject(&self.typ, &self.action)
    }
}

/// The filter keys `docker events` accepts.
pub const FILTER_KEYS: &[&str] = &["config", "container", "daemon", "event", "image", "label", "network", "node", "plugin", "scope", "secret", "service", "type", "volume"];

/// Does an event pass Docker's filters? Each key: any value matches; all keys must.
pub fn matches(ev: &Event, f: &std::collections::HashMap<String, Vec<String>>) -> bool {
    let attrs = &ev.actor.attributes;
    let name = attrs.get("name").map(String::as_str).unwrap_or("");
    f.iter().all(|(k, vals)| {
        if vals.is_empty() {
            return true;
        }
        vals.iter().any(|v| match k.as_str() {
            "type" => ev.typ == *v,
            "event" => ev.action == *v || ev.action.split(':').next() == Some(v.as_str()),
            "container" => ev.typ == "container" && (ev.actor.id.starts_with(v.as_str()) || name == v),
            "image" => {
                let img = attrs.get("image").map(String::as_str).unwrap_or("");
                (ev.typ == "image" && (ev.actor.id == *v || name == v || ev.actor.id.starts_with(v.as_str())))
                    || img == v
                    || img == format!("{v}:latest")
            }
            "network" => ev.typ == "network" && (ev.actor.id.starts_with(v.as_str()) || name == v),
            "volume" => ev.typ == "volume" && ev.actor.id == *v,
            "plugin" => ev.typ == "plugin" && (ev.actor.id == *v || name == v),
            "daemon" => ev.typ == "daemon" && (ev.actor.id == *v || name == v),
            "label" => match v.split_once('=') {
                Some((lk, lv)) => attrs.get(lk).map(|x| x == lv).unwrap_or(false),
                None => attrs.contains_key(v.as_str()),
            },
            "scope" => ev.scope == *v,
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_roundtrip_and_subject() {
        let e = Event::now(EventType::Container, Action::ExecStart, "abc").detail("sh -c true").attr("image", "busybox");
        crate::testutil::roundtrip(e.clone());
        assert_eq!(e.subject(), "berth.v1.events.container.exec_start");
        let h = Event::now(EventType::Container, Action::HealthStatus, "abc").detail("healthy");
        assert_eq!(h.action, "health_status: healthy");
        assert_eq!(h.subject(), "berth.v1.events.container.health_status");
    }

    #[test]
    fn filters_like_docker() {
        use std::collections::HashMap;
        let ev = Event::now(EventType::Container, Action::Start, "abcdef").attr("name", "web").attr("image", "busybox").attr("tier", "x");
        let f = |k: &str, v: &str| HashMap::from([(k.to_string(), vec![v.to_string()])]);
        assert!(matches(&ev, &f("container", "web")));
        assert!(matches(&ev, &f("container", "abc")));
        assert!(!matches(&ev, &f("container", "db")));
        assert!(matches(&ev, &f("type", "container")));
        assert!(matches(&ev, &f("event", "start")));
        assert!(matches(&ev, &f("image", "busybox")));
        assert!(matches(&ev, &f("label", "tier=x")));
        assert!(!matches(&ev, &f("label", "tier=y")));
    }

    #[test]
    fn json_shape_is_dockers() {
        let e = Event::now(EventType::Image, Action::Pull, "busybox:latest");
        let j = serde_json::to_value(&e).unwrap();
        for k in ["Type", "Action", "Actor", "scope", "time", "timeNano"] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert!(j["Actor"].get("ID").is_some());
        assert!(j["Actor"].get("Attributes").is_some());
    }
}
