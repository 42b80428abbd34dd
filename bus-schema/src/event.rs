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
        let e = Event::now("container", "exec_start: sh -c true", "abc").attr("image", "busybox");
        crate::testutil::roundtrip(e.clone());
        assert_eq!(e.subject(), "berth.v1.events.container.exec_start");
        let h = Event::now("container", "health_status: healthy", "abc");
        assert_eq!(h.subject(), "berth.v1.events.container.health_status");
    }

    #[test]
    fn filters_like_docker() {
        use std::collections::HashMap;
        let ev = Event::now("container", "start", "abcdef").attr("name", "web").attr("image", "busybox").attr("tier", "x");
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
        let e = Event::now("image", "pull", "busybox:latest");
        let j = serde_json::to_value(&e).unwrap();
        for k in ["Type", "Action", "Actor", "scope", "time", "timeNano"] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert!(j["Actor"].get("ID").is_some());
        assert!(j["Actor"].get("Attributes").is_some());
    }
}
