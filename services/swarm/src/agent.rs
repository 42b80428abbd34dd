//! The agent of a node: runs the tasks the store assigns to it through the node's own
//! runtime and reports their state (`swarm_task_status/<node>.<task>`), as swarmkit's
//! agent and Moby's executor do.
//!
//! One runner per task drives it: accepted → preparing (image) → ready (container
//! created) → starting → running → complete/failed, and shutdown when the desired state
//! says so. A restarted service adopts the containers it finds by their labels; a
//! container whose task left the store is removed.

use crate::cluster::Cluster;
use crate::model::*;
use crate::store::{buckets, Bucket};
use bus_schema::stream::StdioChunk;
use bus_schema::swarm::cluster::{AgentTaskLogs, NodeRpc};
use bus_schema::swarm::LogOptions;
use bus_schema::{docker, BusError, BusStream};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const LABEL_NODE: &str = "com.docker.swarm.node.id";
pub const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";
pub const LABEL_TASK: &str = "com.docker.swarm.task";
pub const LABEL_TASK_ID: &str = "com.docker.swarm.task.id";
pub const LABEL_TASK_NAME: &str = "com.docker.swarm.task.name";

/// The container name of a task: `<service>.<slot>.<task>` (global: the node ID).
pub fn task_name(t: &TaskRecord) -> String {
    if t.slot > 0 {
        format!("{}.{}.{}", t.service_name, t.slot, t.id)
    } else {
        format!("{}.{}.{}", t.service_name, t.node_id.clone().unwrap_or_default(), t.id)
    }
}

pub async fn run(c: Arc<Cluster>) {
    c.t.tasks.wait_ready().await;
    let me = c.node_id();
    let mut runners: HashMap<String, (watch::Sender<Option<TaskRecord>>, tokio::task::JoinHandle<()>)> = HashMap::new();
    // Containers this node already runs for tasks (a restarted service adopts them).
    let mut adopt: HashMap<String, String> = HashMap::new();
    loop {
        match c.node_bus().list_labelled(&format!("{LABEL_NODE}={me}")).await {
            Ok(list) => {
                for ct in list {
                    let labels = ct.labels.clone().unwrap_or_default();
                    if let (Some(task), Some(id)) = (labels.get(LABEL_TASK_ID), ct.id.clone()) {
                        adopt.insert(task.clone(), id);
                    }
                }
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "listing task containers; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    // Task files a killed service left behind: a task the store no longer gives this
    // node has no business with them (a live task keeps its own: its container may run).
    let live = c.t.tasks.filter(|t| t.node_id.as_deref() == Some(me.as_str())).into_iter().map(|t| t.id).collect();
    for id in crate::taskfiles::sweep(&c.svc.task_files, &live) {
        tracing::info!(task = %id, "released the files of a task this node no longer runs");
    }
    let mut rx = c.t.tasks.subscribe();
    loop {
        let mine: HashMap<String, TaskRecord> = c.t.tasks.filter(|t| t.node_id.as_deref() == Some(me.as_str())).into_iter().map(|t| (t.id.clone(), t)).collect();
        for (id, t) in &mine {
            match runners.get(id) {
                Some((tx, h)) if !h.is_finished() => {
                    if tx.borrow().as_ref() != Some(t) {
                        tx.send_replace(Some(t.clone()));
                    }
                }
                _ => {
                    let (tx, rx) = watch::channel(Some(t.clone()));
                    let h = tokio::spawn(runner(c.clone(), rx, adopt.remove(id)));
                    runners.insert(id.clone(), (tx, h));
                }
            }
        }
        // Tasks gone from the store: their runner removes the container and ends.
        runners.retain(|id, (tx, h)| {
            if !mine.contains_key(id) {
                tx.send_replace(None);
            }
            !h.is_finished() || mine.contains_key(id)
        });
        // Containers of tasks the store no longer has (left behind while the service was down).
        for (task, ctr) in adopt.drain() {
            if !mine.contains_key(&task) {
                let nb = c.node_bus().clone();
                tokio::spawn(async move {
                    let _ = nb.remove(&ctr).await;
                });
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn status_bucket(c: &Cluster) -> Bucket<TaskStatusRecord> {
    c.bucket(buckets::TASK_STATUS)
}

struct Reporter {
    c: Arc<Cluster>,
    key: String,
    task_id: String,
    node_id: String,
    last: Option<Status>,
}

impl Reporter {
    async fn report(&mut self, st: Status) {
        if let Some(l) = &self.last {
            if l.state > st.state || (l.state == st.state && l.err == st.err && l.container_id == st.container_id) {
                return;
            }
        }
        let rec = TaskStatusRecord { task_id: self.task_id.clone(), node_id: self.node_id.clone(), status: st.clone() };
        // Until the store takes it: a status given up on (the managers without quorum
        // for a while) left the task Assigned for ever in the managers' eyes.
        let mut attempt = 0u32;
        loop {
            match status_bucket(&self.c).put(&self.key, &rec).await {
                Ok(rev) => {
                    self.c.t.task_status.note_put(&self.key, rec, rev);
                    break;
                }
                Err(e) => {
                    if attempt % 25 == 0 {
                        tracing::warn!(task = %self.task_id, state = ?st.state, error = %e, "reporting task status; retrying");
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(if attempt < 10 { 200 } else { 1000 })).await;
                }
            }
        }
        self.last = Some(st);
    }
}

/// A started task's status: its container's process, and the ports it publishes in host
/// mode as the engine bound them (swarmkit's executor reads them from the container).
async fn running_status(nb: &crate::node_bus::NodeBus, id: &str) -> Status {
    let i = nb.inspect(id).await.ok();
    let pid = i.as_ref().and_then(|i| i.state.as_ref().and_then(|s| s.pid));
    let mut s = with_container(Status::now(TaskState::Running, "started"), id, pid, Some(0));
    s.ports = i.and_then(|i| i.network_settings).and_then(|n| n.ports).map(|p| host_ports(&p)).filter(|p| !p.is_empty());
    s
}

/// Moby's `parsePortMap`: each binding of the container's port map, in host mode.
pub fn host_ports(map: &HashMap<String, Option<Vec<docker::PortBinding>>>) -> Vec<docker::EndpointPortConfig> {
    use docker::{EndpointPortConfigProtocolEnum as Proto, EndpointPortConfigPublishModeEnum as Mode};
    let mut out = Vec::new();
    for (k, bindings) in map {
        let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
        let Ok(target) = port.parse::<i64>() else { continue };
        let protocol = match proto {
            "udp" => Proto::UDP,
            "sctp" => Proto::SCTP,
            _ => Proto::TCP,
        };
        for b in bindings.iter().flatten() {
            let Some(published) = b.host_port.as_deref().and_then(|p| p.parse::<i64>().ok()) else { continue };
            out.push(docker::EndpointPortConfig { protocol: Some(protocol), target_port: Some(target), published_port: Some(published), publish_mode: Some(Mode::HOST), ..Default::default() });
        }
    }
    out.sort_by_key(|p| (p.target_port, p.published_port));
    out.dedup();
    out
}

fn with_container(mut s: Status, id: &str, pid: Option<i64>, exit: Option<i64>) -> Status {
    s.container_id = Some(id.to_string());
    s.pid = pid;
    s.exit_code = exit;
    s
}

/// How long a task on overlay networks keeps running after it is to stop, before it is
/// stopped (Moby's `defaultGossipConvergeDelay`).
const SERVICE_BINDING_DELAY: Duration = Duration::from_secs(2);

/// Drive one task until its record leaves the store.
async fn runner(c: Arc<Cluster>, mut rx: watch::Receiver<Option<TaskRecord>>, adopted: Option<String>) {
    let Some(first) = rx.borrow().clone() else { return };
    let me = c.node_id();
    tracing::info!(task = %first.id, service = %first.service_name, desired = ?first.desired_state, adopted = adopted.is_some(), "task runner");
    let key = format!("{me}.{}", first.id);
    let prev = c.t.task_status.get(&key).map(|(r, _)| r.status).or(status_bucket(&c).get(&key).await.ok().flatten().map(|(r, _)| r.status));
    let mut rep = Reporter { c: c.clone(), key, task_id: first.id.clone(), node_id: me.clone(), last: prev };
    let nb = c.node_bus().clone();
    let mut container = adopted;
    let mut started = false;
    let mut exited = false;
    if let Some(id) = &container {
        if let Ok(i) = nb.inspect(id).await {
            let st = i.state.clone().unwrap_or_default();
            started = st.running == Some(true) || st.finished_at.as_deref().map(|f| !f.starts_with("0001")).unwrap_or(false);
            exited = started && st.running != Some(true);
            if started && !exited && first.desired_state <= TaskState::Running {
                // an adopted container: on its overlay networks again (a no-op if it is)
                if let Err(e) = attach_overlays(&c, &first, st.pid).await {
                    tracing::warn!(task = %first.id, error = %e, "attaching an adopted task to its overlay networks");
                }
            }
        } else {
            container = None;
        }
    }
    let mut waiter: Option<tokio::task::JoinHandle<Option<i64>>> = None;
    loop {
        let Some(t) = rx.borrow().clone() else {
            // Gone from the store: so are its container and its files.
            if let Some(id) = &container {
                let _ = nb.remove(id).await;
            }
            crate::taskfiles::release(&c.svc.task_files, &first.id);
            crate::overlay::release(&c, &first).await;
            return;
        };
        let past = rep.last.as_ref().map(|s| s.state).unwrap_or(TaskState::Assigned);
        if t.desired_state >= TaskState::Shutdown {
            if let Some(id) = &container {
                if started && !exited {
                    if crate::overlay::holds_addresses(&c, &t.id) {
                        // Moby's gossip converge delay: the other nodes take the task out
                        // of their VIPs and routing mesh (they follow its desired state)
                        // before it stops, so no new connection reaches a stopping task
                        tokio::time::sleep(SERVICE_BINDING_DELAY).await;
                        tracing::info!(task = %t.id, "stopping the task after the binding delay");
                    }
                    let grace = t.spec.container_spec.as_ref().and_then(|c| c.stop_grace_period).map(|ns| (ns / 1_000_000_000).max(0));
                    let _ = nb.stop(id, grace.or(Some(10)), None).await;
                    exited = true;
                    crate::overlay::release(&c, &t).await;
                }
            }
            if !past.terminal() {
                let mut s = Status::now(TaskState::Shutdown, "shutdown");
                if let Some(id) = &container {
                    s = with_container(s, id, None, None);
                }
                rep.report(s).await;
            }
            if t.desired_state == TaskState::Remove {
                if let Some(id) = container.take() {
                    let _ = nb.remove(&id).await;
                }
            }
        } else if !past.terminal() {
            // Prepare: the image, then the container.
            if container.is_none() {
                rep.report(Status::now(TaskState::Accepted, "accepted")).await;
                rep.report(Status::now(TaskState::Preparing, "preparing")).await;
                match prepare(&c, &t).await {
                    Ok(id) => {
                        container = Some(id.clone());
                        rep.report(with_container(Status::now(TaskState::Ready, "prepared"), &id, None, None)).await;
                    }
                    Err(e) => {
                        let mut s = Status::now(TaskState::Rejected, "preparing");
                        s.err = Some(e.message.clone());
                        rep.report(s).await;
                        // the agent stopped (its sender dropped): so does this runner
                        if rx.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let id = container.clone().unwrap();
            if t.desired_state == TaskState::Running && !started {
                rep.report(with_container(Status::now(TaskState::Starting, "starting"), &id, None, None)).await;
                match nb.start(&id).await {
                    Ok(()) => {
                        started = true;
                        let running = running_status(&nb, &id).await;
                        match attach_overlays(&c, &t, running.pid).await {
                            Ok(()) => match wait_healthy(&c, &id, &rx).await {
                                Health::Ready => rep.report(running).await,
                                Health::Unhealthy => {
                                    // Moby's controller: an unhealthy container is stopped and
                                    // its task fails
                                    let _ = nb.stop(&id, Some(0), None).await;
                                    exited = true;
                                    let mut s = with_container(Status::now(TaskState::Failed, "starting"), &id, None, None);
                                    s.err = Some("unhealthy container".into());
                                    rep.report(s).await;
                                }
                                // exited, or to stop: the loop sees to it
                                Health::Gone => {}
                            },
                            Err(e) => {
                                let _ = nb.stop(&id, Some(0), None).await;
                                exited = true;
                                let mut s = with_container(Status::now(TaskState::Failed, "starting"), &id, None, None);
                                s.err = Some(e);
                                rep.report(s).await;
                            }
                        }
                    }
                    Err(e) => {
                        let mut s = with_container(Status::now(TaskState::Failed, "starting"), &id, None, None);
                        s.err = Some(e.message.clone());
                        rep.report(s).await;
                    }
                }
            } else if started && !exited && past < TaskState::Running {
                rep.report(running_status(&nb, &id).await).await;
            }
            if started && !exited && waiter.is_none() {
                let nb = nb.clone();
                let id = id.clone();
                waiter = Some(tokio::spawn(async move { nb.wait_exit(&id).await }));
            }
            if started && exited && !rep.last.as_ref().map(|s| s.state.terminal()).unwrap_or(false) {
                let code = nb.inspect(&id).await.ok().and_then(|i| i.state.and_then(|s| s.exit_code)).unwrap_or(0);
                rep.report(ended(&id, code)).await;
            }
        }
        // Wait for the desired state to change or the container to exit.
        match waiter.as_mut() {
            Some(w) => {
                tokio::select! {
                    r = rx.changed() => { if r.is_err() { return; } }
                    code = w => {
                        waiter = None;
                        match code {
                            Ok(Some(code)) => {
                                exited = true;
                                let id = container.clone().unwrap_or_default();
                                let desired = rx.borrow().as_ref().map(|t| t.desired_state).unwrap_or(TaskState::Remove);
                                if desired <= TaskState::Running {
                                    rep.report(ended(&id, code)).await;
                                }
                            }
                            _ => tokio::time::sleep(Duration::from_millis(500)).await,
                        }
                    }
                }
            }
            None => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

enum Health {
    /// No health check, or healthy: the task runs (and takes requests).
    Ready,
    Unhealthy,
    /// The container exited, or the task is to stop, first.
    Gone,
}

/// How often a starting container's health is looked at.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// As Moby's task controller starts a container with a health check: the task stays
/// Starting (out of its services' VIPs and the routing mesh) until the container is
/// healthy.
async fn wait_healthy(c: &Cluster, id: &str, rx: &watch::Receiver<Option<TaskRecord>>) -> Health {
    let nb = c.node_bus();
    loop {
        let Ok(i) = nb.inspect(id).await else { return Health::Gone };
        let test = i.config.as_ref().and_then(|c| c.healthcheck.as_ref()).and_then(|h| h.test.clone()).unwrap_or_default();
        if test.is_empty() || test[0] == "NONE" {
            return Health::Ready;
        }
        let st = i.state.unwrap_or_default();
        if st.running != Some(true) {
            return Health::Gone;
        }
        match st.health.and_then(|h| h.status) {
            Some(docker::HealthStatusEnum::HEALTHY) => return Health::Ready,
            Some(docker::HealthStatusEnum::UNHEALTHY) => return Health::Unhealthy,
            _ => {}
        }
        if rx.borrow().as_ref().map(|t| t.desired_state > TaskState::Running).unwrap_or(true) {
            return Health::Gone;
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// A started task container on the overlay networks of its spec (its addresses from
/// the store).
async fn attach_overlays(c: &Cluster, t: &TaskRecord, pid: Option<i64>) -> Result<(), String> {
    if crate::overlay::task_targets(c, t).is_empty() {
        return Ok(());
    }
    let pid = pid.filter(|p| *p > 0).ok_or_else(|| "no container process to attach to the overlay".to_string())?;
    let nets = crate::overlay::allocate(c, t).await.map_err(|e| e.message.clone())?;
    crate::overlay::attach(c, t, pid, &nets).await
}

/// The status of a container that exited with `code` while it should run.
fn ended(id: &str, code: i64) -> Status {
    if code == 0 {
        with_container(Status::now(TaskState::Complete, "finished"), id, None, Some(0))
    } else {
        let mut s = with_container(Status::now(TaskState::Failed, "started"), id, None, Some(code));
        s.err = Some(format!("task: non-zero exit ({code})"));
        s
    }
}

/// The image (pulled when the node lacks it), then the container.
async fn prepare(c: &Cluster, t: &TaskRecord) -> Result<String, BusError> {
    let nb = c.node_bus();
    let cs = t.spec.container_spec.clone().unwrap_or_default();
    let image = cs.image.clone().unwrap_or_default();
    if !nb.image_present(&image).await {
        nb.pull(&image, None).await.map_err(|e| BusError::not_found(format!("No such image: {image}")).context(e.message).context("pull"))?;
    }
    // the task's overlay addresses, before its container exists (Moby's allocator
    // gives them before the task is assigned)
    crate::overlay::allocate(c, t).await?;
    let name = task_name(t);
    let mut body = container_body(c, t);
    let blobs = crate::taskfiles::fetch(c, t).await?;
    let binds = crate::taskfiles::prepare(&blobs, &c.svc.task_files, t)?;
    if !binds.is_empty() {
        let hc = body.host_config.get_or_insert_with(Default::default);
        hc.binds.get_or_insert_with(Vec::new).extend(binds);
    }
    match nb.create(&name, body.clone()).await {
        Ok(id) => Ok(id),
        Err(e) if e.is(bus_schema::ErrorKind::Conflict) => {
            // A container of this task from before a restart: start over with it.
            let _ = nb.remove(&name).await;
            nb.create(&name, body).await
        }
        Err(e) => Err(e),
    }
}

/// The container Moby's executor makes for a task.
pub fn container_body(c: &Cluster, t: &TaskRecord) -> docker::ContainerCreateBody {
    let cs = t.spec.container_spec.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> = cs.labels.clone().unwrap_or_default();
    labels.insert(LABEL_NODE.into(), c.node_id());
    labels.insert(LABEL_SERVICE_ID.into(), t.service_id.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), t.service_name.clone());
    labels.insert(LABEL_TASK.into(), String::new());
    labels.insert(LABEL_TASK_ID.into(), t.id.clone());
    labels.insert(LABEL_TASK_NAME.into(), task_name(t));
    let res = t.spec.resources.clone().unwrap_or_default();
    let limits = res.limits.unwrap_or_default();
    let reservations = res.reservations.unwrap_or_default();
    let dns = cs.dns_config.clone().unwrap_or_default();
    let hosts = cs.hosts.clone().map(|v| {
        // Docker's "IP host [alias...]" becomes "host:IP" entries.
        v.iter()
            .flat_map(|h| {
                let mut it = h.split_whitespace();
                let ip = it.next().unwrap_or("").to_string();
                it.map(move |n| format!("{n}:{ip}")).collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    let host_config = docker::HostConfig {
        mounts: cs.mounts.clone(),
        readonly_rootfs: cs.read_only,
        extra_hosts: hosts,
        dns: dns.nameservers.clone(),
        dns_search: dns.search.clone(),
        dns_options: dns.options.clone(),
        init: cs.init,
        sysctls: cs.sysctls.clone(),
        cap_add: cs.capability_add.clone(),
        cap_drop: cs.capability_drop.clone(),
        ulimits: cs.ulimits.clone().map(|v| v.into_iter().map(|u| docker::ResourcesUlimits { name: u.name, soft: u.soft, hard: u.hard }).collect()),
        oom_score_adj: cs.oom_score_adj,
        group_add: cs.groups.clone(),
        memory: limits.memory_bytes.filter(|m| *m > 0),
        nano_cpus: limits.nano_cpus.filter(|m| *m > 0),
        pids_limit: limits.pids.filter(|m| *m > 0),
        memory_reservation: reservations.memory_bytes.filter(|m| *m > 0),
        network_mode: Some("default".into()),
        log_config: t.spec.log_driver.clone().map(|l| docker::HostConfigLogConfig { typ: l.name, config: l.options }),
        ..Default::default()
    };
    let mut host_config = host_config;
    // ports published in host mode: on this node, straight to the task (swarmkit's
    // executor asks the same of the engine); a published port of 0 takes a free one
    let mut exposed: Vec<String> = Vec::new();
    for p in c.t.services.get(&t.service_id).and_then(|(s, _)| s.endpoint.and_then(|e| e.ports)).unwrap_or_default() {
        if crate::ports::is_ingress(&p) {
            continue;
        }
        let Some(target) = p.target_port else { continue };
        let key = format!("{target}/{}", crate::ports::proto_name(crate::ports::proto_of(&p)));
        let host_port = p.published_port.filter(|x| *x > 0).map(|x| x.to_string()).unwrap_or_default();
        host_config
            .port_bindings
            .get_or_insert_with(Default::default)
            .entry(key.clone())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(docker::PortBinding { host_ip: Some(String::new()), host_port: Some(host_port) });
        exposed.push(key);
    }
    let grace = cs.stop_grace_period.map(|ns| ns / 1_000_000_000);
    docker::ContainerCreateBody {
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        hostname: cs.hostname.clone(),
        user: cs.user.clone(),
        tty: cs.tty,
        open_stdin: cs.open_stdin,
        env: cs.env.clone(),
        cmd: cs.args.clone(),
        entrypoint: cs.command.clone(),
        image: cs.image.clone(),
        labels: Some(labels),
        working_dir: cs.dir.clone(),
        stop_signal: cs.stop_signal.clone(),
        stop_timeout: grace,
        healthcheck: cs.health_check.clone(),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// `docker service logs` / `docker task logs`: each task's container log, one line per
/// item, prefixed with the task's IDs when `details` (the CLI asks for them). A task on
/// this node is read from its runtime; one on another node through that node's swarm
/// service over the swarm bus ([`serve_logs`], [`crate::xstream`]). Lines from all tasks
/// are merged as they come. Dropping the stream stops every reader (the other nodes'
/// too). Tasks whose node could not be read: Moby's incomplete-stream warning as the
/// stream's error once the others ended.
pub fn stream_logs(c: Arc<Cluster>, tasks: Vec<TaskRecord>, opts: LogOptions) -> BusStream<StdioChunk> {
    berth_bus::produce(move |em| async move {
        let me = c.node_id();
        let mut readers = tokio::task::JoinSet::new();
        for t in tasks {
            let Some(node) = t.node_id.clone() else { continue };
            let status = c.t.task_status.get(&format!("{node}.{}", t.id)).map(|(r, _)| r.status);
            let Some(ctr) = status.and_then(|s| s.container_id) else { continue };
            let c = c.clone();
            let em = em.clone();
            let o = opts.clone();
            let me = me.clone();
            readers.spawn(async move {
                // Moby's reason for a task whose node could not be read
                let gone = format!("node {node} is not available");
                let remote = node != me;
                let opened = if !remote {
                    task_container_logs(c.node_bus(), &ctr, &details(&node, &t.service_id, &t.id), &o).await
                } else {
                    let req = AgentTaskLogs { task_id: t.id.clone(), container_id: ctr, opts: o };
                    let payload = rmp_serde::to_vec_named(&req).unwrap_or_default();
                    crate::xstream::open(&c.client, AgentTaskLogs::subject(&node), payload, &format!("node {node}"), crate::xstream::Timing::default()).await
                };
                // a log that cannot be read (a container gone) is left out, as before;
                // a node that cannot be reached is said at the end
                let failed = |e: BusError| {
                    tracing::debug!(task = %t.id, %node, error = %e, "reading a task's log");
                    (remote && e.message == gone).then(|| gone.clone())
                };
                let mut items = match opened {
                    Ok(s) => s,
                    Err(e) => return failed(e),
                };
                while let Some(item) = items.next().await {
                    match item {
                        Ok(chunk) => {
                            if em.send(chunk).await.is_err() {
                                return None;
                            }
                        }
                        Err(e) => return failed(e),
                    }
                }
                None
            });
        }
        // until every log ends or the reader goes away (the JoinSet aborts the rest)
        let mut failed: Vec<String> = Vec::new();
        tokio::select! {
            _ = async {
                while let Some(r) = readers.join_next().await {
                    if let Ok(Some(why)) = r {
                        failed.push(why);
                    }
                }
            } => {}
            _ = em.closed() => return Ok(()),
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BusError::unavailable(crate::rpc(
                "Unknown",
                format!("warning: incomplete log stream. some logs could not be retrieved for the following reasons: {}", failed.join(", ")),
            )))
        }
    })
}

/// What `--details` puts before each line of a task's log (Moby's service log attributes).
fn details(node: &str, service_id: &str, task_id: &str) -> String {
    format!("{LABEL_NODE}={node},{LABEL_SERVICE_ID}={service_id},{LABEL_TASK_ID}={task_id}")
}

/// A task container's log on this node, each line with `details` when the options ask.
async fn task_container_logs(nb: &crate::node_bus::NodeBus, ctr: &str, details: &str, o: &LogOptions) -> Result<BusStream<StdioChunk>, BusError> {
    let (_, items) = nb.logs(ctr, o).await?;
    let (with, ts, details) = (o.details, o.timestamps, details.to_string());
    Ok(Box::pin(items.map(move |r| {
        r.map(|chunk| if with { StdioChunk { stream: chunk.stream, data: add_details(&chunk.data, &details, ts) } } else { chunk })
    })))
}

/// Every node: answer other nodes' [`AgentTaskLogs`] for the task containers this node
/// runs (the container's labels must name the task and this node), streaming them with
/// [`crate::xstream`]. Subscribed again if the subscription ends.
pub async fn serve_logs(c: Arc<Cluster>) {
    let me = c.node_id();
    let subject = AgentTaskLogs::subject(&me);
    crate::cluster::serve_requests(c, subject, None, move |c, msg, reply| {
        let me = me.clone();
        async move {
            let opened = match rmp_serde::from_slice::<AgentTaskLogs>(&msg.payload) {
                Ok(r) => own_task_logs(&c, &me, &r).await,
                Err(e) => Err(BusError::invalid(format!("bad task log request: {e}"))),
            };
            let _ = crate::xstream::send(c.client.clone(), reply, opened, crate::xstream::Timing::default()).await;
        }
    })
    .await
}

/// The log of a task container of this node, as asked by another node.
async fn own_task_logs(c: &Cluster, me: &str, r: &AgentTaskLogs) -> Result<BusStream<StdioChunk>, BusError> {
    let i = c.node_bus().inspect(&r.container_id).await?;
    let labels = i.config.and_then(|c| c.labels).unwrap_or_default();
    if labels.get(LABEL_TASK_ID) != Some(&r.task_id) || labels.get(LABEL_NODE).map(String::as_str) != Some(me) {
        return Err(BusError::not_found(format!("task {} has no container {} on node {me}", r.task_id, r.container_id)));
    }
    let service_id = labels.get(LABEL_SERVICE_ID).cloned().unwrap_or_default();
    task_container_logs(c.node_bus(), &r.container_id, &details(me, &service_id, &r.task_id), &r.opts).await
}

/// `<timestamp >details line` as Moby writes service log lines.
fn add_details(line: &[u8], details: &str, timestamps: bool) -> Vec<u8> {
    let (ts, rest) = if timestamps {
        match line.iter().position(|b| *b == b' ') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => (&line[..0], line),
        }
    } else {
        (&line[..0], line)
    };
    let mut out = Vec::with_capacity(line.len() + details.len() + 1);
    out.extend_from_slice(ts);
    out.extend_from_slice(details.as_bytes());
    out.push(b' ');
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_go_after_the_timestamp() {
        assert_eq!(add_details(b"hello\n", "a=1", false), b"a=1 hello\n");
        assert_eq!(add_details(b"2020-01-01T00:00:00Z hello\n", "a=1", true), b"2020-01-01T00:00:00Z a=1 hello\n");
    }

    #[test]
    fn host_ports_as_moby_reads_them() {
        let mut m: HashMap<String, Option<Vec<docker::PortBinding>>> = HashMap::new();
        let b = |p: &str| docker::PortBinding { host_ip: Some("0.0.0.0".into()), host_port: Some(p.into()) };
        m.insert("80/tcp".into(), Some(vec![b("30001"), b("30001")]));
        m.insert("53/udp".into(), Some(vec![b("5353")]));
        // exposed, not published
        m.insert("443/tcp".into(), None);
        let j = serde_json::to_string(&host_ports(&m)).unwrap();
        assert_eq!(
            j,
            r#"[{"Protocol":"udp","TargetPort":53,"PublishedPort":5353,"PublishMode":"host"},{"Protocol":"tcp","TargetPort":80,"PublishedPort":30001,"PublishMode":"host"}]"#
        );
    }
}
