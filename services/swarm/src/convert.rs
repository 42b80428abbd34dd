//! Records to Docker's API objects, with the normalisation Moby's round trip through
//! swarmkit applies (compared against Moby 20.10's answers, recorded in
//! e2e/tests/data/swarm/).

use crate::model::*;
use bus_schema::docker;
use bus_schema::swarm::{NetworkAttachment, ServiceObject, SwarmDriver, SwarmIpamConfig, SwarmIpamOptions, SwarmNetwork, SwarmNetworkSpec, SwarmObject, TaskObject};

fn version(rev: u64) -> Option<docker::ObjectVersion> {
    Some(docker::ObjectVersion { index: Some(rev) })
}

/// What swarmkit adds to a service spec on the way in: the container runtime and the
/// default isolation.
pub fn normalize_service_spec(spec: &mut docker::ServiceSpec) {
    // Moby's convert: no mode is replicated, a replicated mode without a count runs 1
    // (the CLI sends `"Replicated":{}` when --replicas is not given)
    let mode = spec.mode.get_or_insert_with(Default::default);
    if mode.replicated.is_none() && mode.global.is_none() && mode.replicated_job.is_none() && mode.global_job.is_none() {
        mode.replicated = Some(Default::default());
    }
    if let Some(r) = mode.replicated.as_mut() {
        r.replicas.get_or_insert(1);
    }
    // Moby's convert: a replicated job's MaxConcurrent defaults to 1 and its
    // TotalCompletions to MaxConcurrent; both are always answered (the CLI reads both)
    if let Some(j) = mode.replicated_job.as_mut() {
        let max = *j.max_concurrent.get_or_insert(1);
        j.total_completions.get_or_insert(max);
    }
    let tt = spec.task_template.get_or_insert_with(Default::default);
    normalize_task_spec(tt);
    if tt.runtime.is_none() {
        tt.runtime = Some("container".into());
    }
    if spec.labels.is_none() {
        spec.labels = Some(Default::default());
    }
    crate::ports::normalize(spec);
}

pub fn normalize_task_spec(tt: &mut docker::TaskSpec) {
    // Go's `ForceUpdate uint64` has no omitempty: Moby always answers it (docker-py checks)
    tt.force_update.get_or_insert(0);
    if let Some(cs) = tt.container_spec.as_mut() {
        if cs.isolation.is_none() {
            cs.isolation = Some(docker::TaskSpecContainerSpecIsolationEnum::DEFAULT);
        }
    }
}

/// swarmkit's defaults (`api/defaults`), inserted when a client asks `insertDefaults`.
pub fn insert_defaults(spec: &mut docker::ServiceSpec) {
    let tt = spec.task_template.get_or_insert_with(Default::default);
    if let Some(cs) = tt.container_spec.as_mut() {
        cs.stop_grace_period.get_or_insert(10_000_000_000);
        cs.dns_config.get_or_insert_with(Default::default);
    }
    tt.resources.get_or_insert_with(Default::default);
    let rp = tt.restart_policy.get_or_insert_with(Default::default);
    rp.condition.get_or_insert(docker::TaskSpecRestartPolicyConditionEnum::ANY);
    rp.delay.get_or_insert(5_000_000_000);
    rp.max_attempts.get_or_insert(0);
    tt.placement.get_or_insert_with(Default::default);
    let up = spec.update_config.get_or_insert_with(Default::default);
    fill_update(up);
    let rb = spec.rollback_config.get_or_insert_with(Default::default);
    fill_rollback(rb);
}

fn fill_update(u: &mut docker::ServiceSpecUpdateConfig) {
    u.parallelism.get_or_insert(1);
    u.failure_action.get_or_insert(docker::ServiceSpecUpdateConfigFailureActionEnum::PAUSE);
    u.monitor.get_or_insert(5_000_000_000);
    u.max_failure_ratio.get_or_insert(0.0);
    u.order.get_or_insert(docker::ServiceSpecUpdateConfigOrderEnum::STOP_FIRST);
}

fn fill_rollback(u: &mut docker::ServiceSpecRollbackConfig) {
    u.parallelism.get_or_insert(1);
    u.failure_action.get_or_insert(docker::ServiceSpecRollbackConfigFailureActionEnum::PAUSE);
    u.monitor.get_or_insert(5_000_000_000);
    u.max_failure_ratio.get_or_insert(0.0);
    u.order.get_or_insert(docker::ServiceSpecRollbackConfigOrderEnum::STOP_FIRST);
}

pub fn service(s: &ServiceRecord, rev: u64, insert: bool, status: Option<docker::ServiceServiceStatus>) -> ServiceObject {
    let mut spec = s.spec.clone();
    let mut previous = s.previous_spec.clone();
    if insert {
        insert_defaults(&mut spec);
        if let Some(p) = previous.as_mut() {
            insert_defaults(p);
        }
    }
    ServiceObject {
        id: s.id.clone(),
        version: docker::ObjectVersion { index: Some(rev) },
        created_at: s.created_at.clone(),
        updated_at: s.updated_at.clone(),
        spec,
        previous_spec: previous,
        endpoint: s.endpoint.clone().unwrap_or(docker::ServiceEndpoint { spec: Some(Default::default()), ..Default::default() }),
        update_status: s.update_status.clone(),
        service_status: status,
        // Jobs: the execution is the spec version its tasks were made from.
        job_status: crate::orchestrator::is_job(s).then(|| docker::ServiceJobStatus { job_iteration: version(s.spec_version), last_execution: Some(s.updated_at.clone()) }),
    }
}

pub fn task(t: &TaskRecord, rev: u64, reported: Option<&TaskStatusRecord>) -> docker::Task {
    let st = effective_status(t, reported);
    let container_status = st.container_id.as_ref().map(|c| docker::ContainerStatus {
        container_id: Some(c.clone()),
        pid: Some(st.pid.unwrap_or(0)),
        exit_code: Some(st.exit_code.unwrap_or(0)),
    });
    let mut spec = t.spec.clone();
    normalize_task_spec(&mut spec);
    docker::Task {
        id: Some(t.id.clone()),
        version: version(rev),
        created_at: Some(t.created_at.clone()),
        updated_at: Some(t.updated_at.clone()),
        name: None,
        labels: Some(Default::default()),
        spec: Some(spec),
        service_id: Some(t.service_id.clone()),
        slot: if t.slot > 0 { Some(t.slot as i64) } else { None },
        node_id: t.node_id.clone(),
        assigned_generic_resources: None,
        status: Some(docker::TaskStatus {
            timestamp: Some(st.timestamp.clone()),
            state: Some(st.state.docker()),
            message: Some(st.message.clone()),
            err: st.err.clone(),
            container_status,
            port_status: Some(docker::PortStatus { ports: st.ports.clone() }),
        }),
        desired_state: Some(t.desired_state.docker()),
        job_iteration: t.job_iteration.and_then(version),
    }
}

/// A task with the overlay networks it holds an address in (`nets`: each network with
/// its revision, in the order of the task's interfaces).
pub fn task_object(t: &TaskRecord, rev: u64, reported: Option<&TaskStatusRecord>, nets: &[(NetworkRecord, u64)]) -> TaskObject {
    let attachments: Vec<NetworkAttachment> = nets
        .iter()
        .filter_map(|(n, nrev)| {
            // the store keeps bare addresses; Docker shows them with the subnet's length
            let len = n.subnets.first().and_then(|(s, _)| crate::networks::parse_cidr(s)).map(|(_, l)| l).unwrap_or(32);
            let addresses: Vec<String> = n.allocated.iter().filter(|(_, owner)| **owner == t.id).map(|(a, _)| format!("{a}/{len}")).collect();
            (!addresses.is_empty()).then(|| NetworkAttachment { network: swarm_network(n, *nrev), addresses })
        })
        .collect();
    TaskObject { task: task(t, rev, reported), networks_attachments: (!attachments.is_empty()).then_some(attachments) }
}

/// swarm.Network of a store record: its spec as created, the driver's state with the
/// VNI, the allocated subnets.
pub fn swarm_network(n: &NetworkRecord, rev: u64) -> SwarmNetwork {
    let mut state = n.options.clone();
    state.insert(crate::networks::VXLANID_OPTION.into(), n.vni.to_string());
    let ipam_driver = SwarmDriver { name: n.ipam_driver.clone(), options: n.ipam_options.clone().filter(|o| !o.is_empty()) };
    SwarmNetwork {
        id: n.id.clone(),
        version: version(rev).unwrap_or_default(),
        created_at: n.created_at.clone(),
        updated_at: n.updated_at.clone(),
        spec: SwarmNetworkSpec {
            name: n.name.clone(),
            labels: n.labels.clone().unwrap_or_default(),
            driver_configuration: Some(SwarmDriver { name: n.driver.clone(), options: (!n.options.is_empty()).then(|| n.options.clone()) }),
            ipv6_enabled: n.enable_ipv6,
            internal: n.internal,
            attachable: n.attachable,
            ingress: n.ingress,
            ipam_options: Some(SwarmIpamOptions { driver: ipam_driver.clone(), configs: Vec::new() }),
            scope: "swarm".into(),
        },
        driver_state: SwarmDriver { name: n.driver.clone(), options: Some(state) },
        ipam_options: Some(SwarmIpamOptions {
            driver: ipam_driver,
            configs: n.subnets.iter().map(|(s, g)| SwarmIpamConfig { subnet: s.clone(), range: String::new(), gateway: g.clone() }).collect(),
        }),
    }
}

pub fn node(n: &NodeRecord, rev: u64, leader: Option<&str>, ca: &docker::TlsInfo) -> docker::Node {
    let manager_status = (n.role == "manager").then(|| docker::ManagerStatus {
        leader: (leader == Some(n.id.as_str())).then_some(true),
        reachability: Some(if n.state == "ready" && n.in_store != Some(false) { docker::Reachability::REACHABLE } else { docker::Reachability::UNREACHABLE }),
        addr: Some(n.bus.client_addr.clone()),
    });
    let mut desc = n.description.clone();
    desc.tls_info = Some(ca.clone());
    docker::Node {
        id: Some(n.id.clone()),
        version: version(rev),
        created_at: Some(n.created_at.clone()),
        updated_at: Some(n.updated_at.clone()),
        spec: Some(n.spec.clone()),
        description: Some(desc),
        status: Some(docker::NodeStatus {
            state: serde_json::from_value(serde_json::Value::String(n.state.clone())).ok(),
            message: (!n.message.is_empty()).then(|| n.message.clone()),
            addr: Some(n.addr.clone()),
        }),
        manager_status,
    }
}

pub fn tls_info(c: &ClusterRecord) -> docker::TlsInfo {
    docker::TlsInfo {
        trust_root: Some(c.ca_cert.clone()),
        cert_issuer_subject: Some(c.ca_subject.clone()),
        cert_issuer_public_key: Some(c.ca_public_key.clone()),
    }
}

pub fn swarm(c: &ClusterRecord, rev: u64, tokens: bool) -> SwarmObject {
    SwarmObject {
        id: c.id.clone(),
        version: docker::ObjectVersion { index: Some(rev) },
        created_at: c.created_at.clone(),
        updated_at: c.updated_at.clone(),
        spec: c.spec.clone(),
        tls_info: tls_info(c),
        root_rotation_in_progress: false,
        default_addr_pool: (!c.default_addr_pool.is_empty()).then(|| c.default_addr_pool.clone()),
        subnet_size: c.subnet_size,
        data_path_port: c.data_path_port,
        join_tokens: tokens.then(|| docker::JoinTokens { worker: Some(c.worker_token.clone()), manager: Some(c.manager_token.clone()) }),
    }
}

pub fn blob_secret(b: &BlobRecord, rev: u64) -> docker::Secret {
    docker::Secret {
        id: Some(b.id.clone()),
        version: version(rev),
        created_at: Some(b.created_at.clone()),
        updated_at: Some(b.updated_at.clone()),
        spec: Some(docker::SecretSpec {
            name: Some(b.name.clone()),
            labels: Some(b.labels.clone()),
            data: None,
            driver: b.driver.clone(),
            templating: b.templating.clone(),
        }),
    }
}

pub fn blob_config(b: &BlobRecord, rev: u64) -> docker::Config {
    docker::Config {
        id: Some(b.id.clone()),
        version: version(rev),
        created_at: Some(b.created_at.clone()),
        updated_at: Some(b.updated_at.clone()),
        spec: Some(docker::ConfigSpec { name: Some(b.name.clone()), labels: Some(b.labels.clone()), data: Some(b.data.clone()), templating: b.templating.clone() }),
    }
}

#[cfg(test)]
mod attachment_tests {
    use super::*;

    #[test]
    fn a_task_shows_its_overlay_addresses_as_swarmkit_does() {
        let mut n = test_network("n1", 4097, &[("10.0.1.3", "t1"), ("10.0.1.4", "t2")]);
        (n.name, n.created_at, n.updated_at) = ("net".into(), "c".into(), "u".into());
        let t: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": "t1", "service_id": "s1", "service_name": "web", "slot": 1, "node_id": "n",
            "created_at": "c", "updated_at": "u", "spec": {}, "spec_version": 1,
            "desired_state": "running", "status": {"state": "running", "timestamp": "x"}
        }))
        .unwrap_or_else(|e| panic!("a task record: {e}"));
        let o = task_object(&t, 5, None, &[(n.clone(), 9)]);
        let j = serde_json::to_value(&o).unwrap();
        assert_eq!(j["ID"], "t1", "the task's own keys stay at the top");
        assert_eq!(
            j["NetworksAttachments"],
            serde_json::json!([{
                "Network": {
                    "ID": "n1", "Version": {"Index": 9}, "CreatedAt": "c", "UpdatedAt": "u",
                    "Spec": {"Name": "net", "Labels": {}, "DriverConfiguration": {"Name": "overlay"}, "IPAMOptions": {"Driver": {"Name": "default"}}, "Scope": "swarm"},
                    "DriverState": {"Name": "overlay", "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097"}},
                    "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]}
                },
                "Addresses": ["10.0.1.3/24"]
            }])
        );
        // on the bus (MessagePack, named): the same object back
        let b = rmp_serde::to_vec_named(&o).unwrap();
        assert_eq!(rmp_serde::from_slice::<TaskObject>(&b).unwrap(), o);
        // no overlay address: no key
        let mut bare = n;
        bare.allocated.clear();
        assert!(serde_json::to_value(task_object(&t, 5, None, &[(bare, 9)])).unwrap().get("NetworksAttachments").is_none());
    }
}
