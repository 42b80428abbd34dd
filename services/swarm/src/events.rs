//! Cluster events as Moby's managers emit them (daemon/events.go): every manager
//! watches the store and publishes `service`, `node`, `secret` and `config` events with
//! scope `swarm` on its own node's bus (and so in its `docker events`).

use crate::cache::Table;
use crate::cluster::Cluster;
use crate::model::*;
use bus_schema::event::{Action, Actor, Event, EventType};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

fn event(typ: EventType, action: Action, id: &str, attrs: BTreeMap<String, String>, at: &str) -> Event {
    let ns = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos() as i64)
        .unwrap_or_else(|_| crate::now_ms() as i64 * 1_000_000);
    Event {
        typ: typ.as_str().into(),
        action: action.as_str().into(),
        actor: Actor { id: id.into(), attributes: attrs },
        scope: "swarm".into(),
        time: ns / 1_000_000_000,
        time_nano: ns,
    }
}

/// What changed in a table since the last look: (created, updated (old, new), removed).
struct Diff<T> {
    seen: HashMap<String, (T, u64)>,
}

impl<T: Clone + Send + Sync + 'static> Diff<T> {
    fn new(t: &Table<T>) -> Diff<T> {
        Diff { seen: t.values().into_iter().map(|(k, v, r)| (k, (v, r))).collect() }
    }

    #[allow(clippy::type_complexity)]
    fn next(&mut self, t: &Table<T>) -> (Vec<(String, T)>, Vec<(String, T, T)>, Vec<(String, T)>) {
        let now: HashMap<String, (T, u64)> = t.values().into_iter().map(|(k, v, r)| (k, (v, r))).collect();
        let (mut c, mut u, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for (k, (v, rev)) in &now {
            match self.seen.get(k) {
                None => c.push((k.clone(), v.clone())),
                Some((old, orev)) if orev != rev => u.push((k.clone(), old.clone(), v.clone())),
                _ => {}
            }
        }
        for (k, (v, _)) in &self.seen {
            if !now.contains_key(k) {
                r.push((k.clone(), v.clone()));
            }
        }
        self.seen = now;
        (c, u, r)
    }
}

fn name_attr(name: String) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("name".to_string(), name);
    a
}

fn replicas(s: &ServiceRecord) -> Option<i64> {
    s.spec.mode.as_ref().and_then(|m| m.replicated.as_ref()).and_then(|r| r.replicas)
}

fn image(s: &ServiceRecord) -> Option<String> {
    s.spec.task_template.as_ref().and_then(|t| t.container_spec.as_ref()).and_then(|c| c.image.clone())
}

fn service_update_attrs(old: &ServiceRecord, new: &ServiceRecord) -> BTreeMap<String, String> {
    let mut a = name_attr(new.spec.name.clone().unwrap_or_default());
    if image(old) != image(new) {
        a.insert("image.old".into(), image(old).unwrap_or_default());
        a.insert("image.new".into(), image(new).unwrap_or_default());
    }
    if let (Some(o), Some(n)) = (replicas(old), replicas(new)) {
        if o != n {
            a.insert("replicas.old".into(), o.to_string());
            a.insert("replicas.new".into(), n.to_string());
        }
    }
    let st = |s: &ServiceRecord| s.update_status.as_ref().and_then(|u| u.state).map(|s| s.to_string());
    if let Some(n) = st(new) {
        match st(old) {
            None => {
                a.insert("updatestate.new".into(), n);
            }
            Some(o) if o != n => {
                a.insert("updatestate.old".into(), o);
                a.insert("updatestate.new".into(), n);
            }
            _ => {}
        }
    }
    a
}

fn node_name(n: &NodeRecord) -> String {
    n.spec.name.clone().filter(|s| !s.is_empty()).or_else(|| n.description.hostname.clone()).unwrap_or_default()
}

fn node_update_attrs(old: &NodeRecord, new: &NodeRecord, leader_old: bool, leader_new: bool) -> BTreeMap<String, String> {
    let mut a = name_attr(node_name(new));
    let av = |n: &NodeRecord| n.spec.availability.map(|a| a.to_string()).unwrap_or_default();
    if av(old) != av(new) {
        a.insert("availability.old".into(), av(old));
        a.insert("availability.new".into(), av(new));
    }
    if old.role != new.role {
        a.insert("role.old".into(), old.role.clone());
        a.insert("role.new".into(), new.role.clone());
    }
    if old.state != new.state {
        a.insert("state.old".into(), old.state.clone());
        a.insert("state.new".into(), new.state.clone());
    }
    if old.role == "manager" && new.role == "manager" {
        if leader_old != leader_new {
            a.insert("leader.old".into(), leader_old.to_string());
            a.insert("leader.new".into(), leader_new.to_string());
        }
        let reach = |n: &NodeRecord| if n.state == "ready" { "reachable" } else { "unreachable" };
        if reach(old) != reach(new) {
            a.insert("reachability.old".into(), reach(old).into());
            a.insert("reachability.new".into(), reach(new).into());
        }
    }
    a
}

pub async fn run(c: Arc<Cluster>) {
    let t = &c.t;
    t.services.wait_ready().await;
    t.nodes.wait_ready().await;
    t.secrets.wait_ready().await;
    t.configs.wait_ready().await;
    let mut svcs = Diff::new(&t.services);
    let mut nodes = Diff::new(&t.nodes);
    let mut secrets = Diff::new(&t.secrets);
    let mut configs = Diff::new(&t.configs);
    let mut rx = [t.services.subscribe(), t.nodes.subscribe(), t.secrets.subscribe(), t.configs.subscribe()];
    let bus = c.node_bus().bus.clone();
    loop {
        let [a, b, d, e] = &mut rx;
        tokio::select! {
            r = a.changed() => if r.is_err() { return },
            r = b.changed() => if r.is_err() { return },
            r = d.changed() => if r.is_err() { return },
            r = e.changed() => if r.is_err() { return },
        }
        let mut out = Vec::new();
        let (cr, up, rm) = svcs.next(&t.services);
        for (id, s) in cr {
            out.push(event(EventType::Service, Action::Create, &id, name_attr(s.spec.name.clone().unwrap_or_default()), &s.created_at));
        }
        for (id, o, n) in up {
            out.push(event(EventType::Service, Action::Update, &id, service_update_attrs(&o, &n), &n.updated_at));
        }
        for (id, s) in rm {
            out.push(event(EventType::Service, Action::Remove, &id, name_attr(s.spec.name.clone().unwrap_or_default()), &crate::now()));
        }
        let leader = c.leader_id();
        let (cr, up, rm) = nodes.next(&t.nodes);
        for (id, n) in cr {
            out.push(event(EventType::Node, Action::Create, &id, name_attr(node_name(&n)), &n.created_at));
        }
        for (id, o, n) in up {
            let is = leader.as_deref() == Some(id.as_str());
            out.push(event(EventType::Node, Action::Update, &id, node_update_attrs(&o, &n, is, is), &n.updated_at));
        }
        for (id, n) in rm {
            out.push(event(EventType::Node, Action::Remove, &id, name_attr(node_name(&n)), &crate::now()));
        }
        for (typ, diff, table) in [(EventType::Secret, &mut secrets, &t.secrets), (EventType::Config, &mut configs, &t.configs)] {
            let (cr, up, rm) = diff.next(table);
            for (id, b) in cr {
                out.push(event(typ, Action::Create, &id, name_attr(b.name.clone()), &b.created_at));
            }
            for (id, _, b) in up {
                out.push(event(typ, Action::Update, &id, name_attr(b.name.clone()), &b.updated_at));
            }
            for (id, b) in rm {
                out.push(event(typ, Action::Remove, &id, name_attr(b.name.clone()), &crate::now()));
            }
        }
        for e in out {
            bus.publish_event(&e).await;
        }
    }
}
