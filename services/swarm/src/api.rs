//! Docker's manager API over the store. Each write goes to the store first (with the
//! client's `version` as the compare-and-set revision where Docker takes one); the
//! leader's loops and every node's agent act on it from there. Messages are Moby's
//! (swarmkit's gRPC errors keep their `rpc error: code = … desc = …` form, as the
//! daemon passes them on).

use crate::rpc;
use crate::cluster::Cluster;
use crate::convert;
use crate::filters::{self, Filters};
use crate::model::*;
use crate::store::{buckets, StoreError};
use bus_schema::docker;
use bus_schema::runtime::StreamInfo;
use bus_schema::stream::StdioChunk;
use bus_schema::swarm::*;
use bus_schema::{BusError, BusStream};
use std::collections::HashMap;
use std::sync::Arc;

/// Look an object up as Docker does: exact ID, then exact name, then a unique ID prefix.
pub fn resolve<T: Clone>(items: &[(String, T, u64)], input: &str, name: impl Fn(&T) -> String, what: &str) -> Result<(T, u64), BusError> {
    if let Some((_, v, r)) = items.iter().find(|(id, _, _)| id == input) {
        return Ok((v.clone(), *r));
    }
    if let Some((_, v, r)) = items.iter().find(|(_, v, _)| name(v) == input) {
        return Ok((v.clone(), *r));
    }
    let pre: Vec<_> = items.iter().filter(|(id, _, _)| !input.is_empty() && id.starts_with(input)).collect();
    match pre.len() {
        1 => Ok((pre[0].1.clone(), pre[0].2)),
        0 => Err(BusError::not_found(format!("{what} {input} not found"))),
        n => Err(BusError::invalid(format!("{what} {input} is ambiguous ({n} matches found)"))),
    }
}

fn out_of_sequence() -> BusError {
    BusError::internal(rpc("Unknown", "update out of sequence"))
}

/// A service or network name: a DNS label (swarmkit's `validateAnnotations`).
fn valid_dns_label(name: &str) -> bool {
    // swarmkit's isValidDNSName `^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$`: letters and
    // digits, '-' and '_' only between them (the length is checked apart)
    let b = name.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// swarmkit's isValidConfigOrSecretName `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`, at most 64.
fn valid_blob_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

impl Cluster {
    fn cluster_record(&self) -> Result<(ClusterRecord, u64), BusError> {
        self.t.cluster.get("swarm").ok_or_else(|| BusError::unavailable("the swarm's store is not ready yet"))
    }

    pub async fn swarm_inspect(&self) -> Result<SwarmObject, BusError> {
        let (c, rev) = match self.bucket::<ClusterRecord>(buckets::CLUSTER).get("swarm").await? {
            Some(x) => x,
            None => self.cluster_record()?,
        };
        Ok(convert::swarm(&c, rev, true))
    }

    pub async fn swarm_update(&self, r: SwarmUpdate) -> Result<(), BusError> {
        let b = self.bucket::<ClusterRecord>(buckets::CLUSTER);
        let (mut c, rev) = b.get("swarm").await?.ok_or_else(|| BusError::unavailable("the swarm's store is not ready yet"))?;
        if rev != r.version {
            return Err(out_of_sequence());
        }
        let digest = crate::tls::ca_digest(&c.ca_cert).map_err(BusError::internal)?;
        let mut spec = r.spec;
        if spec.name.as_deref().unwrap_or("").is_empty() {
            spec.name = Some("default".into());
        }
        spec.labels.get_or_insert_with(Default::default);
        c.spec = spec;
        if r.rotate_worker_token {
            c.worker_token = crate::ids::join_token(&digest);
        }
        if r.rotate_manager_token {
            c.manager_token = crate::ids::join_token(&digest);
        }
        c.updated_at = crate::now();
        let nrev = b.update("swarm", &c, rev).await.map_err(|e| match e {
            StoreError::Conflict => out_of_sequence(),
            e => e.into(),
        })?;
        let autolock = c.spec.encryption_config.as_ref().and_then(|e| e.auto_lock_managers).unwrap_or(false);
        self.t.cluster.note_put("swarm", c, nrev);
        // Autolock on: a key (a new one when asked to rotate); off: none (swarmkit's rules).
        let pb = self.bucket::<PkiRecord>(buckets::PKI);
        if let Some((mut pki, prev)) = pb.get("ca").await? {
            let key = match (autolock, pki.unlock_key.is_empty() || r.rotate_manager_unlock_key) {
                (false, _) => String::new(),
                (true, true) => crate::lock::new_unlock_key(),
                (true, false) => pki.unlock_key.clone(),
            };
            if key != pki.unlock_key {
                pki.unlock_key = key.clone();
                pb.update("ca", &pki, prev).await?;
            }
            self.apply_unlock_key(&key)?;
        }
        Ok(())
    }

    /// `GET /swarm/unlockkey`: the key, or `""` when autolock is off (as Moby answers).
    pub async fn swarm_unlock_key(&self) -> Result<docker::UnlockKeyResponse, BusError> {
        let pki = self.bucket::<PkiRecord>(buckets::PKI).get("ca").await?;
        Ok(docker::UnlockKeyResponse { unlock_key: Some(pki.map(|(p, _)| p.unlock_key).unwrap_or_default()) })
    }

    fn tls(&self) -> docker::TlsInfo {
        self.t.cluster.get("swarm").map(|(c, _)| convert::tls_info(&c)).unwrap_or_default()
    }

    pub async fn node_list(&self, f: Filters) -> Result<Vec<docker::Node>, BusError> {
        filters::validate(&f, &["id", "label", "membership", "name", "node.label", "role"])?;
        let leader = self.leader_id();
        let tls = self.tls();
        let mut out = Vec::new();
        for (id, n, rev) in self.t.nodes.values() {
            let name = n.spec.name.clone().unwrap_or_default();
            let hostname = n.description.hostname.clone().unwrap_or_default();
            let ok = filters::pass(&f, "id", |v| id.starts_with(v))
                && filters::pass(&f, "name", |v| name.starts_with(v) || hostname.starts_with(v))
                && filters::pass(&f, "role", |v| v == n.role)
                && filters::pass(&f, "membership", |v| v == "accepted")
                && filters::labels_pass(&f, "label", n.description.engine.as_ref().and_then(|e| e.labels.as_ref()).unwrap_or(&HashMap::new()))
                && filters::labels_pass(&f, "node.label", n.spec.labels.as_ref().unwrap_or(&HashMap::new()));
            if ok {
                out.push(convert::node(&n, rev, leader.as_deref(), &tls));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn find_node(&self, input: &str) -> Result<(NodeRecord, u64), BusError> {
        let items = self.t.nodes.values();
        resolve(&items, input, |n| n.description.hostname.clone().unwrap_or_default(), "node")
    }

    pub async fn node_inspect(&self, input: &str) -> Result<docker::Node, BusError> {
        let input = if input == "self" { self.node_id() } else { input.to_string() };
        let (n, rev) = self.find_node(&input)?;
        Ok(convert::node(&n, rev, self.leader_id().as_deref(), &self.tls()))
    }

    pub async fn node_update(&self, r: NodeUpdate) -> Result<(), BusError> {
        let (n, _) = self.find_node(&r.id)?;
        let b = self.bucket::<NodeRecord>(buckets::NODES);
        let (mut cur, rev) = b.get(&n.id).await?.ok_or_else(|| BusError::not_found(format!("node {} not found", r.id)))?;
        if rev != r.version {
            return Err(out_of_sequence());
        }
        let role = r.spec.role.unwrap_or(docker::NodeSpecRoleEnum::WORKER);
        let was = cur.spec.role.unwrap_or(docker::NodeSpecRoleEnum::WORKER);
        if role != was {
            // read from the store, not the watched copy (it may lag after a failover)
            let managers: Vec<NodeRecord> = b.list().await?.into_iter().map(|(_, n, _)| n).filter(|n| n.role == "manager").collect();
            crate::leader::check_role_change(&managers, &cur, role)?;
        }
        cur.spec = docker::NodeSpec {
            name: r.spec.name.clone(),
            labels: Some(r.spec.labels.clone().unwrap_or_default()),
            role: Some(role),
            availability: Some(r.spec.availability.unwrap_or(docker::NodeSpecAvailabilityEnum::ACTIVE)),
        };
        // The role too (the store first): the node acts on it (crate::role).
        cur.role = if role == docker::NodeSpecRoleEnum::MANAGER { "manager".into() } else { "worker".into() };
        if role != was {
            // a new manager is Reachable once its server replicates the store
            cur.in_store = (role == docker::NodeSpecRoleEnum::MANAGER).then_some(false);
        }
        cur.updated_at = crate::now();
        let nrev = b.update(&cur.id, &cur, rev).await.map_err(|e| match e {
            StoreError::Conflict => out_of_sequence(),
            e => e.into(),
        })?;
        self.t.nodes.note_put(&cur.id.clone(), cur, nrev);
        Ok(())
    }

    pub async fn node_remove(&self, input: &str, force: bool) -> Result<(), BusError> {
        let (n, _) = self.find_node(input)?;
        if n.role == "manager" {
            return Err(BusError::new(
                bus_schema::ErrorKind::InvalidArgument,
                rpc("FailedPrecondition", format!("node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal", n.id)),
            ));
        }
        if n.state != "down" && !force {
            return Err(BusError::new(
                bus_schema::ErrorKind::InvalidArgument,
                rpc("FailedPrecondition", format!("node {} is not down and can't be removed", n.id)),
            ));
        }
        self.bucket::<NodeRecord>(buckets::NODES).delete(&n.id).await?;
        self.t.nodes.note_delete(&n.id);
        Ok(())
    }

    pub async fn service_create(&self, mut spec: docker::ServiceSpec, _auth: Option<String>) -> Result<docker::ServiceCreateResponse, BusError> {
        let name = match spec.name.clone().filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => {
                let n = berth_runtime::names::random(0);
                spec.name = Some(n.clone());
                n
            }
        };
        validate_service_spec(&spec)?;
        if self.t.services.values().iter().any(|(_, s, _)| s.spec.name.as_deref() == Some(name.as_str())) {
            return Err(BusError::conflict(rpc("AlreadyExists", format!("name conflicts with an existing object: service {name} already exists"))));
        }
        self.resolve_attachments(&mut spec)?;
        convert::normalize_service_spec(&mut spec);
        let now = crate::now();
        let id = crate::ids::new_id();
        let endpoint = self.service_endpoint(&id, &spec, None).await?;
        let rec = ServiceRecord {
            id: id.clone(),
            created_at: now.clone(),
            updated_at: now,
            spec,
            previous_spec: None,
            spec_version: 1,
            endpoint,
            update_status: None,
        };
        let rev = self.bucket::<ServiceRecord>(buckets::SERVICES).create(&id, &rec).await?;
        self.t.services.note_put(&id, rec, rev);
        Ok(docker::ServiceCreateResponse { id: Some(id), warnings: None })
    }

    fn find_service(&self, input: &str) -> Result<(ServiceRecord, u64), BusError> {
        let items = self.t.services.values();
        resolve(&items, input, |s| s.spec.name.clone().unwrap_or_default(), "service")
    }

    /// Running and desired task counts (`ServiceStatus`).
    pub fn service_status(&self, s: &ServiceRecord) -> docker::ServiceServiceStatus {
        let down: Vec<String> = self.t.nodes.filter(|n| n.state == "down").into_iter().map(|n| n.id).collect();
        let tasks = self.t.tasks.filter(|t| t.service_id == s.id);
        let running = tasks
            .iter()
            .filter(|t| t.desired_state == TaskState::Running)
            .filter(|t| t.node_id.as_ref().map(|n| !down.contains(n)).unwrap_or(true))
            .filter(|t| self.task_state(t) == TaskState::Running)
            .count() as u64;
        // A job's completed tasks: those of its current execution.
        let completed = tasks.iter().filter(|t| t.spec_version == s.spec_version && t.job_iteration.is_some() && self.task_state(t) == TaskState::Complete).count() as u64;
        let mode = s.spec.mode.clone().unwrap_or_default();
        let desired = if let Some(r) = mode.replicated.as_ref() {
            r.replicas.unwrap_or(1) as u64
        } else if let Some(j) = mode.replicated_job.as_ref() {
            // what is left to run, at most MaxConcurrent at once
            let (max, total) = crate::orchestrator::job_counts(j);
            max.min(total.saturating_sub(completed))
        } else {
            tasks.iter().filter(|t| t.desired_state == TaskState::Running).count() as u64
        };
        docker::ServiceServiceStatus { running_tasks: Some(running), desired_tasks: Some(desired), completed_tasks: Some(completed) }
    }

    /// The status a task shows (the node's report, or the manager's).
    pub fn task_status(&self, t: &TaskRecord) -> Status {
        let rep = t.node_id.as_ref().and_then(|n| self.t.task_status.get(&format!("{n}.{}", t.id))).map(|(r, _)| r);
        effective_status(t, rep.as_ref()).clone()
    }

    /// The state a task shows ([`Cluster::task_status`]'s).
    pub fn task_state(&self, t: &TaskRecord) -> TaskState {
        self.task_status(t).state
    }

    pub async fn service_list(&self, f: Filters, status: bool) -> Result<Vec<ServiceObject>, BusError> {
        filters::validate(&f, &["id", "label", "mode", "name", "runtime"])?;
        let mut out = Vec::new();
        for (id, s, rev) in self.t.services.values() {
            let name = s.spec.name.clone().unwrap_or_default();
            let m = s.spec.mode.clone().unwrap_or_default();
            let mode = if m.global.is_some() {
                "global"
            } else if m.replicated_job.is_some() {
                "replicated-job"
            } else if m.global_job.is_some() {
                "global-job"
            } else {
                "replicated"
            };
            let ok = filters::pass(&f, "id", |v| id.starts_with(v))
                && filters::pass(&f, "name", |v| name.starts_with(v))
                && filters::pass(&f, "mode", |v| v == mode)
                && filters::pass(&f, "runtime", |v| v == "container")
                && filters::labels_pass(&f, "label", s.spec.labels.as_ref().unwrap_or(&HashMap::new()));
            if ok {
                let st = status.then(|| self.service_status(&s));
                out.push(convert::service(&s, rev, false, st));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub async fn service_inspect(&self, input: &str, insert_defaults: bool) -> Result<ServiceObject, BusError> {
        let (s, _) = self.find_service(input)?;
        // The store's copy, for read-after-write on another manager.
        let (s, rev) = self.bucket::<ServiceRecord>(buckets::SERVICES).get(&s.id).await?.ok_or_else(|| BusError::not_found(format!("service {input} not found")))?;
        Ok(convert::service(&s, rev, insert_defaults, None))
    }

    pub async fn service_update(&self, r: ServiceUpdate) -> Result<docker::ServiceUpdateResponse, BusError> {
        let (s, _) = self.find_service(&r.id)?;
        let b = self.bucket::<ServiceRecord>(buckets::SERVICES);
        let (mut cur, rev) = b.get(&s.id).await?.ok_or_else(|| BusError::not_found(format!("service {} not found", r.id)))?;
        if rev != r.version {
            return Err(out_of_sequence());
        }
        let mut spec = if r.rollback.as_deref() == Some("previous") {
            match cur.previous_spec.clone() {
                Some(p) => p,
                None => {
                    return Err(BusError::internal(rpc("FailedPrecondition", format!("service {} does not have a previous spec", cur.id))));
                }
            }
        } else {
            r.spec
        };
        if spec.name.as_deref().unwrap_or("").is_empty() {
            spec.name = cur.spec.name.clone();
        }
        if spec.name != cur.spec.name {
            return Err(BusError::invalid(rpc("Unimplemented", "renaming services is not supported")));
        }
        validate_service_spec(&spec)?;
        self.resolve_attachments(&mut spec)?;
        convert::normalize_service_spec(&mut spec);
        cur.endpoint = self.service_endpoint(&cur.id, &spec, cur.endpoint.as_ref()).await?;
        let rollback = r.rollback.as_deref() == Some("previous");
        cur.previous_spec = Some(std::mem::replace(&mut cur.spec, spec));
        cur.spec_version += 1;
        cur.updated_at = crate::now();
        if rollback {
            cur.update_status = Some(docker::ServiceUpdateStatus {
                state: Some(docker::ServiceUpdateStatusStateEnum::ROLLBACK_STARTED),
                started_at: Some(crate::now()),
                completed_at: None,
                message: Some("manually requested rollback".into()),
            });
        } else {
            cur.update_status = None;
        }
        let nrev = b.update(&cur.id, &cur, rev).await.map_err(|e| match e {
            StoreError::Conflict => out_of_sequence(),
            e => e.into(),
        })?;
        self.t.services.note_put(&cur.id.clone(), cur, nrev);
        Ok(docker::ServiceUpdateResponse { warnings: None })
    }

    pub async fn service_remove(&self, input: &str) -> Result<(), BusError> {
        let (s, _) = self.find_service(input)?;
        self.bucket::<ServiceRecord>(buckets::SERVICES).delete(&s.id).await?;
        self.t.services.note_delete(&s.id);
        for v in s.endpoint.and_then(|e| e.virtual_ips).unwrap_or_default() {
            if let Some(n) = v.network_id {
                // the network may be gone with it; its addresses go with it
                let _ = self.release_addresses(&n, &format!("vip.{}", s.id)).await;
            }
        }
        Ok(())
    }

    pub async fn task_list(&self, f: Filters) -> Result<Vec<TaskObject>, BusError> {
        filters::validate(&f, &["_up-to-date", "desired-state", "id", "label", "name", "node", "service"])?;
        let services = self.t.services.values();
        let svc_ids: Vec<String> = match f.get("service") {
            Some(v) if !v.is_empty() => services
                .iter()
                .filter(|(id, s, _)| v.iter().any(|x| id == x || s.spec.name.as_deref() == Some(x.as_str()) || id.starts_with(x.as_str())))
                .map(|(id, _, _)| id.clone())
                .collect(),
            _ => Vec::new(),
        };
        if f.get("service").map(|v| !v.is_empty()).unwrap_or(false) && svc_ids.is_empty() {
            return Ok(Vec::new());
        }
        let node_ids: Vec<String> = match f.get("node") {
            Some(v) if !v.is_empty() => {
                let me = self.node_id();
                self.t
                    .nodes
                    .values()
                    .iter()
                    .filter(|(id, n, _)| {
                        v.iter().any(|x| {
                            let x = if x == "self" { me.as_str() } else { x.as_str() };
                            id == x || n.description.hostname.as_deref() == Some(x) || id.starts_with(x)
                        })
                    })
                    .map(|(id, _, _)| id.clone())
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for (id, t, rev) in self.t.tasks.values() {
            let svc = services.iter().find(|(sid, _, _)| *sid == t.service_id);
            let sname = svc.and_then(|(_, s, _)| s.spec.name.clone()).unwrap_or_else(|| t.service_name.clone());
            let tname = if t.slot > 0 { format!("{sname}.{}", t.slot) } else { format!("{sname}.{}", t.node_id.clone().unwrap_or_default()) };
            let ok = filters::pass(&f, "id", |v| id.starts_with(v))
                && (svc_ids.is_empty() || svc_ids.contains(&t.service_id))
                && (node_ids.is_empty() && f.get("node").map(|v| v.is_empty()).unwrap_or(true) || t.node_id.as_ref().map(|n| node_ids.contains(n)).unwrap_or(false))
                && filters::pass(&f, "name", |v| tname.starts_with(v))
                && filters::pass(&f, "desired-state", |v| match v {
                    "running" => t.desired_state == TaskState::Running,
                    "shutdown" => t.desired_state == TaskState::Shutdown,
                    "accepted" => t.desired_state == TaskState::Accepted,
                    _ => false,
                })
                // swarmkit matches a task's service labels (kept as the task was made)
                && filters::labels_pass(&f, "label", &t.service_labels)
                && filters::pass(&f, "_up-to-date", |_| svc.map(|(_, s, _)| !crate::orchestrator::task_dirty(s, &t)).unwrap_or(false));
            if ok {
                out.push(self.task_object(&t, rev));
            }
        }
        out.sort_by(|a, b| a.task.id.cmp(&b.task.id));
        Ok(out)
    }

    pub async fn task_inspect(&self, input: &str) -> Result<TaskObject, BusError> {
        let items = self.t.tasks.values();
        let (t, rev) = resolve(&items, input, |_| String::new(), "task")?;
        Ok(self.task_object(&t, rev))
    }

    /// A task as Docker shows it: the node's report of its status, and its addresses on
    /// the overlay networks (in the order of its interfaces).
    fn task_object(&self, t: &TaskRecord, rev: u64) -> TaskObject {
        let rep = t.node_id.as_ref().and_then(|n| self.t.task_status.get(&format!("{n}.{}", t.id))).map(|(r, _)| r);
        let nets: Vec<(NetworkRecord, u64)> = crate::overlay::task_targets(self, t).iter().filter_map(|id| self.t.networks.get(id)).collect();
        convert::task_object(t, rev, rep.as_ref(), &nets)
    }

    pub async fn service_logs(self: Arc<Self>, r: ServiceLogs) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let (s, _) = self.find_service(&r.id)?;
        let tasks = self.t.tasks.filter(|t| t.service_id == s.id);
        Ok((StreamInfo { tty: false }, crate::agent::stream_logs(self, tasks, r.opts)))
    }

    pub async fn task_logs(self: Arc<Self>, r: TaskLogs) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let items = self.t.tasks.values();
        let (t, _) = resolve(&items, &r.id, |_| String::new(), "task")?;
        Ok((StreamInfo { tty: false }, crate::agent::stream_logs(self, vec![t], r.opts)))
    }

    // Secrets and configs share their records and rules.

    async fn blob_create(&self, bucket: &str, kind: &str, name: Option<String>, labels: Option<HashMap<String, String>>, data: Option<String>, driver: Option<docker::Driver>, templating: Option<docker::Driver>) -> Result<docker::IdResponse, BusError> {
        let name = name.unwrap_or_default();
        if name.is_empty() {
            return Err(BusError::invalid(rpc("InvalidArgument", "name must be provided")));
        }
        if !valid_blob_name(&name) {
            return Err(BusError::invalid(rpc("InvalidArgument", "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]")));
        }
        use base64::Engine;
        let data = data.unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD.decode(data.as_bytes()).map_err(|e| BusError::invalid(format!("invalid {kind} data: {e}")))?;
        if raw.len() > 500 * 1024 {
            return Err(BusError::invalid(rpc("InvalidArgument", format!("{kind} data must be larger than 0 and less than 512000 bytes"))));
        }
        let table = if kind == "secret" { &self.t.secrets } else { &self.t.configs };
        if table.values().iter().any(|(_, b, _)| b.name == name) {
            return Err(BusError::conflict(rpc("AlreadyExists", format!("{kind} {name} already exists"))));
        }
        let now = crate::now();
        let id = crate::ids::new_id();
        let rec = BlobRecord { id: id.clone(), created_at: now.clone(), updated_at: now, name, labels: labels.unwrap_or_default(), data, driver, templating };
        let rev = self.bucket::<BlobRecord>(bucket).create(&id, &rec).await?;
        table.note_put(&id, rec, rev);
        Ok(docker::IdResponse { id })
    }

    fn blob_find(&self, kind: &str, input: &str) -> Result<(BlobRecord, u64), BusError> {
        let table = if kind == "secret" { &self.t.secrets } else { &self.t.configs };
        resolve(&table.values(), input, |b| b.name.clone(), kind)
    }

    fn blob_list(&self, kind: &str, f: &Filters) -> Result<Vec<(BlobRecord, u64)>, BusError> {
        filters::validate(f, &["id", "label", "name", "names"])?;
        let table = if kind == "secret" { &self.t.secrets } else { &self.t.configs };
        let mut v: Vec<(BlobRecord, u64)> = table
            .values()
            .into_iter()
            .filter(|(id, b, _)| {
                filters::pass(f, "id", |v| id.starts_with(v))
                    && filters::pass(f, "name", |v| b.name.starts_with(v))
                    && filters::pass(f, "names", |v| b.name == v)
                    && filters::labels_pass(f, "label", &b.labels)
            })
            .map(|(_, b, r)| (b, r))
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(v)
    }

    async fn blob_update(&self, bucket: &str, kind: &str, id: &str, version: u64, labels: Option<HashMap<String, String>>, data: Option<String>) -> Result<(), BusError> {
        let (b0, _) = self.blob_find(kind, id)?;
        let b = self.bucket::<BlobRecord>(bucket);
        let (mut cur, rev) = b.get(&b0.id).await?.ok_or_else(|| BusError::not_found(format!("{kind} {id} not found")))?;
        if rev != version {
            return Err(out_of_sequence());
        }
        if let Some(d) = data {
            if d != cur.data {
                return Err(BusError::invalid(rpc("InvalidArgument", format!("only updates to Labels are allowed"))));
            }
        }
        cur.labels = labels.unwrap_or_default();
        cur.updated_at = crate::now();
        let nrev = b.update(&cur.id, &cur, rev).await.map_err(|e| match e {
            StoreError::Conflict => out_of_sequence(),
            e => e.into(),
        })?;
        let table = if kind == "secret" { &self.t.secrets } else { &self.t.configs };
        table.note_put(&cur.id.clone(), cur, nrev);
        Ok(())
    }

    async fn blob_remove(&self, bucket: &str, kind: &str, input: &str) -> Result<(), BusError> {
        let (b, _) = self.blob_find(kind, input)?;
        let users: Vec<String> = self
            .t
            .services
            .values()
            .into_iter()
            .filter(|(_, s, _)| {
                let cs = s.spec.task_template.as_ref().and_then(|t| t.container_spec.as_ref());
                match kind {
                    "secret" => cs.and_then(|c| c.secrets.as_ref()).map(|v| v.iter().any(|x| x.secret_id.as_deref() == Some(b.id.as_str()))).unwrap_or(false),
                    _ => cs.and_then(|c| c.configs.as_ref()).map(|v| v.iter().any(|x| x.config_id.as_deref() == Some(b.id.as_str()))).unwrap_or(false),
                }
            })
            .map(|(_, s, _)| s.spec.name.unwrap_or_default())
            .collect();
        if !users.is_empty() {
            let which = if users.len() == 1 { "service" } else { "services" };
            return Err(BusError::invalid(rpc("InvalidArgument", format!("{kind} '{}' is in use by the following {which}: {}", b.name, users.join(", ")))));
        }
        self.bucket::<BlobRecord>(bucket).delete(&b.id).await?;
        let table = if kind == "secret" { &self.t.secrets } else { &self.t.configs };
        table.note_delete(&b.id);
        Ok(())
    }

    pub async fn secret_create(&self, spec: docker::SecretSpec) -> Result<docker::IdResponse, BusError> {
        self.blob_create(buckets::SECRETS, "secret", spec.name, spec.labels, spec.data, spec.driver, spec.templating).await
    }
    pub async fn secret_list(&self, f: Filters) -> Result<Vec<docker::Secret>, BusError> {
        Ok(self.blob_list("secret", &f)?.iter().map(|(b, r)| convert::blob_secret(b, *r)).collect())
    }
    pub async fn secret_inspect(&self, id: &str) -> Result<docker::Secret, BusError> {
        let (b, r) = self.blob_find("secret", id)?;
        Ok(convert::blob_secret(&b, r))
    }
    pub async fn secret_update(&self, r: SecretUpdate) -> Result<(), BusError> {
        self.blob_update(buckets::SECRETS, "secret", &r.id, r.version, r.spec.labels, r.spec.data).await
    }
    pub async fn secret_remove(&self, id: &str) -> Result<(), BusError> {
        self.blob_remove(buckets::SECRETS, "secret", id).await
    }
    pub async fn config_create(&self, spec: docker::ConfigSpec) -> Result<docker::IdResponse, BusError> {
        self.blob_create(buckets::CONFIGS, "config", spec.name, spec.labels, spec.data, None, spec.templating).await
    }
    pub async fn config_list(&self, f: Filters) -> Result<Vec<docker::Config>, BusError> {
        Ok(self.blob_list("config", &f)?.iter().map(|(b, r)| convert::blob_config(b, *r)).collect())
    }
    pub async fn config_inspect(&self, id: &str) -> Result<docker::Config, BusError> {
        let (b, r) = self.blob_find("config", id)?;
        Ok(convert::blob_config(&b, r))
    }
    pub async fn config_update(&self, r: ConfigUpdate) -> Result<(), BusError> {
        self.blob_update(buckets::CONFIGS, "config", &r.id, r.version, r.spec.labels, r.spec.data).await
    }
    pub async fn config_remove(&self, id: &str) -> Result<(), BusError> {
        self.blob_remove(buckets::CONFIGS, "config", id).await
    }
}

/// swarmkit's checks of a service spec (controlapi `validateServiceSpec`), with its
/// messages.
pub fn validate_service_spec(spec: &docker::ServiceSpec) -> Result<(), BusError> {
    let name = spec.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(BusError::invalid(rpc("InvalidArgument", "meta: name must be provided")));
    }
    if !valid_dns_label(&name) {
        return Err(BusError::invalid(rpc("InvalidArgument", "name must be valid as a DNS name component")));
    }
    if name.len() > 63 {
        return Err(BusError::invalid(rpc("InvalidArgument", "name must be 63 characters or fewer")));
    }
    let tt = spec.task_template.as_ref();
    let cs = tt.and_then(|t| t.container_spec.as_ref());
    let image = cs.and_then(|c| c.image.clone()).unwrap_or_default();
    if image.is_empty() {
        return Err(BusError::invalid(rpc("InvalidArgument", "ContainerSpec: image reference must be provided")));
    }
    if let Some(m) = spec.mode.as_ref() {
        let n = [m.replicated.is_some(), m.global.is_some(), m.replicated_job.is_some(), m.global_job.is_some()].iter().filter(|x| **x).count();
        if n > 1 {
            return Err(BusError::invalid(rpc("InvalidArgument", "ServiceSpec: only one mode may be specified")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_follow_docker() {
        let items = vec![("abc123".to_string(), "web".to_string(), 1u64), ("abd456".to_string(), "db".to_string(), 2)];
        assert_eq!(resolve(&items, "abc123", |s| s.clone(), "service").unwrap().0, "web");
        assert_eq!(resolve(&items, "db", |s| s.clone(), "service").unwrap().0, "db");
        assert_eq!(resolve(&items, "abc", |s| s.clone(), "service").unwrap().0, "web");
        assert_eq!(resolve(&items, "ab", |s| s.clone(), "service").unwrap_err().message, "service ab is ambiguous (2 matches found)");
        assert_eq!(resolve(&items, "zz", |s| s.clone(), "service").unwrap_err().message, "service zz not found");
    }

    #[test]
    fn service_names_are_dns_labels() {
        assert!(valid_dns_label("web-1"));
        assert!(!valid_dns_label("bad name"));
        assert!(!valid_dns_label("-x"));
        // docker-py names its services dockerpytest_<hex>: '_' is valid inside a name
        assert!(valid_dns_label("dockerpytest_5c2d"));
        assert!(!valid_dns_label("x_"));
        assert!(!valid_dns_label("a.b"));
        let long = docker::ServiceSpec { name: Some("a".repeat(64)), ..Default::default() };
        assert_eq!(validate_service_spec(&long).unwrap_err().message, "rpc error: code = InvalidArgument desc = name must be 63 characters or fewer");
        assert!(valid_blob_name("favorite_character.v1"));
        assert!(!valid_blob_name("trailing."));
        assert!(!valid_blob_name(&"a".repeat(65)));
        let spec = docker::ServiceSpec { name: Some("bad name".into()), ..Default::default() };
        assert_eq!(validate_service_spec(&spec).unwrap_err().message, "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component");
    }
}
