//! The event envelope, in Docker's vocabulary (`GET /events` sends these fields).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    pub fn now(typ: &str, action: impl Into<String>, id: impl Into<String>) -> Event {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Event {
            typ: typ.to_string(),
            action: action.into(),
            actor: Actor {
                id: id.into(),
                attributes: BTreeMap::new(),
            },
            scope: "local".into(),
            time: ns / 1_000_000_000,
            time_nano: ns,
        }
    }

    pub fn attr(mut self, k: impl Into<String>, v: impl Into<String>) -> Event {
        self.actor.attributes.insert(k.into(), v.into());
        self
    }

    pub fn subject(&self) -> String {
        crate::subject::event_subject(&self.typ, &self.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_roundtrip_and_subject() {
        let e = Event::now("container", "exec_start: sh -c true", "abc").attr("image", "busybox");
        crate::testutil::roundtrip(e.clone());
        assert_eq!(e.subject(), "berth.v1.events.container.exec_start");
        let h = Event::now("container", "health_status: healthy", "abc");
        assert_eq!(h.subject(), "berth.v1.events.container.health_status");
    }

    #[test]
    fn json_shape_is_dockers() {
        let e = Event::now("image", "pull", "busybox:latest");
        let j = serde_json::to_value(&e).unwrap();
        for k in ["Type", "Action", "Actor", "scope", "time", "timeNano"] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert!(j["Actor"].get("ID").is_some());
        assert!(j["Actor"].get("Attributes").is_some());
    }
}
