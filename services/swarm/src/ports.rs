//! Published ports of services (issue 18, the routing mesh): the endpoint spec's ports
//! as swarmkit keeps them — protocol and publish mode defaulted (tcp, ingress), an
//! ingress port without a published port given one from swarmkit's dynamic range
//! (30000–32767, the lowest free), conflicts refused with swarmkit's messages
//! (`controlapi.checkPortConflicts`) — and, for a node, what its ingress rules must
//! forward: each published ingress port to the running tasks' addresses on the
//! `ingress` network.

use crate::rpc;
use crate::model::*;
use bus_schema::docker::{self, EndpointPortConfigProtocolEnum as Proto, EndpointPortConfigPublishModeEnum as Mode};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// swarmkit's dynamic port range (`allocator/portallocator`).
pub const DYNAMIC_START: i64 = 30000;
pub const DYNAMIC_END: i64 = 32767;

pub fn proto_of(p: &docker::EndpointPortConfig) -> Proto {
    match p.protocol {
        None | Some(Proto::EMPTY) => Proto::TCP,
        Some(x) => x,
    }
}

pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::UDP => "udp",
        Proto::SCTP => "sctp",
        _ => "tcp",
    }
}

pub fn is_ingress(p: &docker::EndpointPortConfig) -> bool {
    matches!(p.publish_mode, None | Some(Mode::EMPTY) | Some(Mode::INGRESS))
}

/// The spec's ports with swarmkit's defaults filled in (as Moby's convert answers them).
pub fn normalize(spec: &mut docker::ServiceSpec) {
    if let Some(ports) = spec.endpoint_spec.as_mut().and_then(|e| e.ports.as_mut()) {
        for p in ports {
            p.protocol = Some(proto_of(p));
            if is_ingress(p) {
                p.publish_mode = Some(Mode::INGRESS);
            }
            // Go's `PublishedPort uint32 json:",omitempty"`: no key when none was given
            if p.published_port == Some(0) {
                p.published_port = None;
            }
        }
    }
}

fn spec_ports(spec: &docker::ServiceSpec) -> Vec<docker::EndpointPortConfig> {
    spec.endpoint_spec.as_ref().and_then(|e| e.ports.clone()).unwrap_or_default()
}

/// Whether a service spec publishes any port through the routing mesh.
pub fn publishes_ingress(spec: &docker::ServiceSpec) -> bool {
    spec_ports(spec).iter().any(is_ingress)
}

type Key = (i64, Proto);

/// swarmkit's `checkPortConflicts`: `spec`'s published ports against every other
/// service's (spec and allocated).
pub fn check_conflicts(spec: &docker::ServiceSpec, id: &str, others: &[ServiceRecord]) -> Result<(), String> {
    let mut ingress = BTreeSet::new();
    let mut host = BTreeSet::new();
    for p in spec_ports(spec) {
        let port = p.published_port.unwrap_or(0);
        if port == 0 {
            continue;
        }
        if is_ingress(&p) {
            ingress.insert((port, proto_of(&p)));
        } else {
            host.insert((port, proto_of(&p)));
        }
    }
    for (s, p) in published_by_others(id, others) {
        let port = p.published_port.unwrap_or(0);
        let k: Key = (port, proto_of(&p));
        let name = s.spec.name.as_deref().unwrap_or_default();
        if !is_ingress(&p) {
            if ingress.contains(&k) {
                return Err(rpc("InvalidArgument", format!("port '{port}' is already in use by service '{name}' ({}) as a host-published port", s.id)));
            }
        } else if ingress.contains(&k) || host.contains(&k) {
            return Err(rpc("InvalidArgument", format!("port '{port}' is already in use by service '{name}' ({}) as an ingress port", s.id)));
        }
    }
    Ok(())
}

/// Every published port of the services other than `id`: their specs' and their
/// endpoints' (a port allocated from the dynamic range is only there).
fn published_by_others<'a>(id: &'a str, others: &'a [ServiceRecord]) -> impl Iterator<Item = (&'a ServiceRecord, docker::EndpointPortConfig)> + 'a {
    others.iter().filter(move |s| s.id != id).flat_map(|s| {
        let theirs = spec_ports(&s.spec).into_iter().chain(s.endpoint.as_ref().and_then(|e| e.ports.clone()).unwrap_or_default());
        theirs.filter(|p| p.published_port.unwrap_or(0) != 0).map(move |p| (s, p))
    })
}

/// The endpoint's ports: the spec's, an ingress port without a published port keeping
/// the one it had (`old`, same target and protocol) or given the lowest free of the
/// dynamic range (free of every other service's ports and of this spec's own).
pub fn allocate(spec: &docker::ServiceSpec, id: &str, old: Option<&docker::ServiceEndpoint>, others: &[ServiceRecord]) -> Result<Vec<docker::EndpointPortConfig>, String> {
    let mine = spec_ports(spec);
    let mut taken: BTreeSet<Key> = published_by_others(id, others).map(|(_, p)| (p.published_port.unwrap_or(0), proto_of(&p))).collect();
    for p in &mine {
        if p.published_port.unwrap_or(0) != 0 {
            taken.insert((p.published_port.unwrap_or(0), proto_of(p)));
        }
    }
    let had: Vec<docker::EndpointPortConfig> = old.and_then(|e| e.ports.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for p in mine {
        let mut q = p.clone();
        q.protocol = Some(proto_of(&p));
        if is_ingress(&p) {
            q.publish_mode = Some(Mode::INGRESS);
            if p.published_port.unwrap_or(0) == 0 {
                let kept = had
                    .iter()
                    .find(|h| h.target_port == p.target_port && proto_of(h) == proto_of(&p) && is_ingress(h) && h.published_port.unwrap_or(0) != 0)
                    .and_then(|h| h.published_port)
                    .filter(|port| !taken.contains(&(*port, proto_of(&p))));
                let port = match kept {
                    Some(port) => port,
                    None => (DYNAMIC_START..=DYNAMIC_END)
                        .find(|port| !taken.contains(&(*port, proto_of(&p))))
                        .ok_or_else(|| rpc("ResourceExhausted", "could not allocate a dynamic port: the range is exhausted"))?,
                };
                taken.insert((port, proto_of(&p)));
                q.published_port = Some(port);
            }
        }
        out.push(q);
    }
    Ok(out)
}

/// One published ingress port as a node forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub proto: &'static str,
    pub port: u16,
    pub target: u16,
    /// The running tasks' addresses on the ingress network.
    pub backends: Vec<Ipv4Addr>,
}

/// What a node's ingress rules forward: for each service's allocated ingress ports, the
/// addresses on `ingress` of its tasks that are to run and run (`running`).
pub fn forwards(ingress: &NetworkRecord, services: &[ServiceRecord], tasks: &[TaskRecord], running: impl Fn(&TaskRecord) -> bool) -> Vec<Forward> {
    let mut by_service: HashMap<&str, Vec<Ipv4Addr>> = HashMap::new();
    let by_id: HashMap<&str, &TaskRecord> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    for (a, owner) in &ingress.allocated {
        let Some(t) = by_id.get(owner.as_str()) else { continue };
        if t.desired_state > TaskState::Running || t.node_id.is_none() || !running(t) {
            continue;
        }
        let Ok(ip) = a.split('/').next().unwrap_or(a).parse::<Ipv4Addr>() else { continue };
        by_service.entry(t.service_id.as_str()).or_default().push(ip);
    }
    let mut out: BTreeMap<(u16, &'static str), Forward> = BTreeMap::new();
    for s in services {
        for p in s.endpoint.as_ref().and_then(|e| e.ports.clone()).unwrap_or_default() {
            if !is_ingress(&p) {
                continue;
            }
            let (Some(port), Some(target)) = (p.published_port.and_then(|x| u16::try_from(x).ok()), p.target_port.and_then(|x| u16::try_from(x).ok())) else { continue };
            if port == 0 {
                continue;
            }
            let mut backends = by_service.get(s.id.as_str()).cloned().unwrap_or_default();
            backends.sort();
            backends.dedup();
            let proto = proto_name(proto_of(&p));
            out.insert((port, proto), Forward { proto, port, target, backends });
        }
    }
    out.into_values().collect()
}

/// The node's ingress table: `berth_ingress_<tag>` ([`crate::overlay::node_tag`]).
pub fn nft_table() -> String {
    match crate::overlay::node_tag() {
        "" => "berth_ingress".to_string(),
        t => format!("berth_ingress_{t}"),
    }
}

/// An nft script that deletes `table` whether or not it is there.
fn delete_table(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

/// The untagged table an older berth made: its rules would still forward the node's
/// published ports (a tagged node deletes it once when it starts, and at leave).
pub async fn drop_untagged_table() {
    if crate::overlay::node_tag().is_empty() {
        return;
    }
    let _ = crate::overlay::run_cmd(&crate::overlay::cmd(&["nft", "-f", "-"]), Some(delete_table("berth_ingress"))).await;
}

/// The node's ingress table: each published port of the node's own addresses (and
/// loopback, as Moby's) DNATed round-robin to a running task on the ingress network, and what
/// leaves through the ingress bridge (`bridge`) after that masqueraded to the node's
/// ingress address, so the answers come back through this node. A port with no running
/// task has no rule (the node refuses the connection). Replaces the whole table at once;
/// `None` deletes it.
pub fn nft_script(bridge: Option<&str>, fw: &[Forward]) -> String {
    let table = nft_table();
    let reset = delete_table(&table);
    let Some(bridge) = bridge else { return reset };
    let mut rules = String::new();
    for f in fw.iter().filter(|f| !f.backends.is_empty()) {
        let map: Vec<String> = f.backends.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
        rules += &format!("{} dport {} dnat to numgen inc mod {} map {{ {} }} : {}\n", f.proto, f.port, f.backends.len(), map.join(", "), f.target);
    }
    let chain = |prefix: &str| rules.lines().map(|r| format!("    {prefix}fib daddr type local {r}\n")).collect::<String>();
    format!(
        "{reset}table ip {table} {{\n  chain guard {{\n    type filter hook prerouting priority raw; policy accept;\n    iifname \"{bridge}\" ip daddr 127.0.0.0/8 drop\n  }}\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{}  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{bridge}\" ct status dnat masquerade\n  }}\n}}\n",
        chain(""),
        chain(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(target: i64, published: Option<i64>, mode: Option<Mode>) -> docker::EndpointPortConfig {
        docker::EndpointPortConfig { target_port: Some(target), published_port: published, publish_mode: mode, ..Default::default() }
    }

    fn spec(name: &str, ports: Vec<docker::EndpointPortConfig>) -> docker::ServiceSpec {
        docker::ServiceSpec { name: Some(name.into()), endpoint_spec: Some(docker::EndpointSpec { ports: Some(ports), ..Default::default() }), ..Default::default() }
    }

    fn svc(id: &str, s: docker::ServiceSpec) -> ServiceRecord {
        let ports = allocate(&s, id, None, &[]).unwrap();
        ServiceRecord {
            id: id.into(),
            created_at: String::new(),
            updated_at: String::new(),
            spec: s,
            previous_spec: None,
            spec_version: 1,
            endpoint: Some(docker::ServiceEndpoint { ports: Some(ports), ..Default::default() }),
            update_status: None,
        }
    }

    #[test]
    fn defaults_as_swarmkit_converts_them() {
        let mut s = spec("web", vec![port(80, Some(8080), None), port(53, None, Some(Mode::HOST))]);
        s.endpoint_spec.as_mut().unwrap().ports.as_mut().unwrap()[1].protocol = Some(Proto::UDP);
        normalize(&mut s);
        let p = s.endpoint_spec.unwrap().ports.unwrap();
        assert_eq!((p[0].protocol, p[0].publish_mode, p[0].published_port), (Some(Proto::TCP), Some(Mode::INGRESS), Some(8080)));
        assert_eq!((p[1].protocol, p[1].publish_mode, p[1].published_port), (Some(Proto::UDP), Some(Mode::HOST), None));
    }

    #[test]
    fn dynamic_ports_are_the_lowest_free_and_kept_across_updates() {
        let a = svc("a", spec("a", vec![port(80, None, None)]));
        assert_eq!(a.endpoint.as_ref().unwrap().ports.as_ref().unwrap()[0].published_port, Some(30000));
        let s = spec("b", vec![port(80, None, None), port(443, Some(30001), None), port(81, None, None)]);
        let got = allocate(&s, "b", None, &[a.clone()]).unwrap();
        assert_eq!(got.iter().map(|p| p.published_port.unwrap()).collect::<Vec<_>>(), vec![30002, 30001, 30003]);
        // an update keeps what it had
        let old = docker::ServiceEndpoint { ports: Some(got), ..Default::default() };
        let again = allocate(&s, "b", Some(&old), &[a.clone()]).unwrap();
        assert_eq!(again.iter().map(|p| p.published_port.unwrap()).collect::<Vec<_>>(), vec![30002, 30001, 30003]);
        // host-mode ports get none
        let h = allocate(&spec("h", vec![port(80, None, Some(Mode::HOST))]), "h", None, &[]).unwrap();
        assert_eq!(h[0].published_port, None);
    }

    #[test]
    fn conflicts_with_swarmkits_messages() {
        let web = svc("w1", spec("web", vec![port(80, Some(8080), None)]));
        let e = check_conflicts(&spec("other", vec![port(80, Some(8080), None)]), "o", &[web.clone()]).unwrap_err();
        assert_eq!(e, "rpc error: code = InvalidArgument desc = port '8080' is already in use by service 'web' (w1) as an ingress port");
        // a host-mode port on an ingress one: refused too
        assert!(check_conflicts(&spec("other", vec![port(80, Some(8080), Some(Mode::HOST))]), "o", &[web.clone()]).is_err());
        // another protocol is another port; the service itself is no conflict
        let mut udp = spec("other", vec![port(80, Some(8080), None)]);
        udp.endpoint_spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some(Proto::UDP);
        assert!(check_conflicts(&udp, "o", &[web.clone()]).is_ok());
        assert!(check_conflicts(&spec("web", vec![port(80, Some(8080), None)]), "w1", &[web]).is_ok());
        let h = svc("h1", spec("h", vec![port(80, Some(9090), Some(Mode::HOST))]));
        let e = check_conflicts(&spec("x", vec![port(80, Some(9090), None)]), "x", &[h.clone()]).unwrap_err();
        assert!(e.ends_with("port '9090' is already in use by service 'h' (h1) as a host-published port"), "{e}");
        // host-mode ports may share (the scheduler places them)
        assert!(check_conflicts(&spec("x", vec![port(80, Some(9090), Some(Mode::HOST))]), "x", &[h]).is_ok());
    }

    #[test]
    fn forwards_reach_running_tasks_only() {
        let web = svc("s1", spec("web", vec![port(80, Some(8080), None)]));
        let task = |id: &str, desired: TaskState| -> TaskRecord {
            serde_json::from_value(serde_json::json!({
                "id": id, "created_at": "", "updated_at": "", "service_id": "s1", "service_name": "web",
                "slot": 1, "node_id": "n1", "spec": {}, "spec_version": 1, "desired_state": desired,
                "status": {"state": "running", "timestamp": "", "message": ""}
            }))
            .unwrap()
        };
        let tasks = vec![task("t1", TaskState::Running), task("t2", TaskState::Running), task("t3", TaskState::Shutdown), task("t4", TaskState::Running)];
        let ingress: NetworkRecord = serde_json::from_value(serde_json::json!({
            "id": "ing", "created_at": "", "updated_at": "", "name": "ingress", "driver": "overlay", "attachable": false,
            "ingress": true, "internal": false, "enable_ipv6": false, "ipam_driver": "default", "ipam_options": null,
            "subnets": [["10.0.0.0/24", "10.0.0.1"]], "options": {}, "labels": null, "vni": 4096,
            "allocated": {"10.0.0.2": "vip.s1", "10.0.0.3": "t1", "10.0.0.4": "t2", "10.0.0.5": "t3", "10.0.0.6": "t4", "10.0.0.7": "node.n1"}
        }))
        .unwrap();
        // t4 is not running yet
        let fw = forwards(&ingress, &[web], &tasks, |t| t.id != "t4");
        assert_eq!(fw, vec![Forward { proto: "tcp", port: 8080, target: 80, backends: vec!["10.0.0.3".parse().unwrap(), "10.0.0.4".parse().unwrap()] }]);
        let nft = nft_script(Some("bov4096"), &fw);
        assert!(nft.contains("    fib daddr type local tcp dport 8080 dnat to numgen inc mod 2 map { 0 : 10.0.0.3, 1 : 10.0.0.4 } : 80\n"), "{nft}");
        assert!(nft.contains("  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local tcp dport 8080 dnat"), "{nft}");
        // loopback is DNATed too: what a task sends to a loopback address is dropped
        assert!(nft.contains("iifname \"bov4096\" ip daddr 127.0.0.0/8 drop"), "{nft}");
        assert!(nft.contains("oifname \"bov4096\" ct status dnat masquerade"), "{nft}");
        assert_eq!(nft_script(None, &fw), "table ip berth_ingress\ndelete table ip berth_ingress\n");
    }
}
