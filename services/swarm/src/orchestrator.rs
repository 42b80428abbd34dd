//! The leader's duties, after swarmkit's orchestrators: node health from heartbeats,
//! services reconciled into tasks (replicated slots, global nodes), restarts by policy,
//! rolling updates, placement (the scheduler), and the task reaper. Everything is
//! decided from the watched copies of the store and written back to it; a new leader
//! picks up from the store where the last one stopped (delayed starts are timestamps
//! in the task records, not timers).

use crate::cluster::{Cluster, NODE_DOWN_AFTER};
use crate::model::*;
use crate::store::buckets;
use bus_schema::{docker, BusError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Docker's default restart delay.
const RESTART_DELAY_NS: i64 = 5_000_000_000;

/// Whether `t` was made from another spec than the service's current one.
pub fn task_dirty(s: &ServiceRecord, t: &TaskRecord) -> bool {
    let mut want = s.spec.task_template.clone().unwrap_or_default();
    crate::convert::normalize_task_spec(&mut want);
    let mut have = t.spec.clone();
    crate::convert::normalize_task_spec(&mut have);
    // Runtime is a service-level field Docker does not keep in the task's spec.
    want.runtime = None;
    have.runtime = None;
    want != have
}

/// The task spec a new task of `s` gets.
fn task_spec(s: &ServiceRecord) -> docker::TaskSpec {
    let mut t = s.spec.task_template.clone().unwrap_or_default();
    crate::convert::normalize_task_spec(&mut t);
    t.runtime = None;
    t
}

/// One task per node: global services and global jobs.
fn is_global(s: &ServiceRecord) -> bool {
    s.spec.mode.as_ref().map(|m| m.global.is_some() || m.global_job.is_some()).unwrap_or(false)
}

/// A job-mode service: its tasks run to completion and are not run again once complete.
pub fn is_job(s: &ServiceRecord) -> bool {
    s.spec.mode.as_ref().map(|m| m.replicated_job.is_some() || m.global_job.is_some()).unwrap_or(false)
}

/// A replicated job's (MaxConcurrent, TotalCompletions).
fn replicated_job(s: &ServiceRecord) -> Option<(u64, u64)> {
    let j = s.spec.mode.as_ref()?.replicated_job.as_ref()?;
    Some(job_counts(j))
}

/// (MaxConcurrent, TotalCompletions) of a replicated job: an empty MaxConcurrent is 1
/// and an empty TotalCompletions is MaxConcurrent (Moby's types and swagger).
pub fn job_counts(j: &docker::ServiceSpecModeReplicatedJob) -> (u64, u64) {
    let max = j.max_concurrent.filter(|m| *m > 0).unwrap_or(1) as u64;
    let total = j.total_completions.filter(|t| *t > 0).map(|t| t as u64).unwrap_or(max);
    (max, total)
}

/// Tasks of the current execution of a job that completed: they count toward the job
/// and their slot (node, for a global job) is not run again until the spec changes.
/// Read from the store, so a new leader or a restarted swarm service does not rerun them.
fn job_completed(s: &ServiceRecord, tasks: &[TaskRecord]) -> Vec<(u64, Option<String>)> {
    tasks
        .iter()
        .filter(|t| t.service_id == s.id && t.spec_version == s.spec_version && t.desired_state == TaskState::Complete)
        .map(|t| (t.slot, if is_global(s) { t.node_id.clone() } else { None }))
        .collect()
}

/// The restart history's key of a task: its service and slot, or node for a global one.
fn slot_key(s: &ServiceRecord, slot: u64, node: Option<&str>) -> (String, String) {
    (s.id.clone(), if is_global(s) { node.unwrap_or_default().to_string() } else { slot.to_string() })
}

fn replicas(s: &ServiceRecord) -> u64 {
    s.spec.mode.as_ref().and_then(|m| m.replicated.as_ref()).and_then(|r| r.replicas).unwrap_or(1).max(0) as u64
}

/// A slot's restarts under `--restart-max-attempts` (swarmkit's restart supervisor):
/// counted per spec version, and with `--restart-window` only those within the window.
#[derive(Debug, Clone)]
struct Restarts {
    version: u64,
    total: u64,
    recent: std::collections::VecDeque<Instant>,
}

impl Restarts {
    fn new(version: u64) -> Restarts {
        Restarts { version, total: 0, recent: Default::default() }
    }

    /// Whether one more restart is allowed at `now` (and count it if so).
    fn try_restart(&mut self, max: u64, window: Duration, now: Instant) -> bool {
        if window.is_zero() {
            if self.total >= max {
                return false;
            }
        } else {
            while self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
                self.recent.pop_front();
            }
            if self.recent.len() as u64 >= max {
                return false;
            }
            self.recent.push_back(now);
        }
        self.total += 1;
        true
    }
}

/// Per-service state of a rolling update (in memory: a new leader restarts the update
/// from the store, which still says which tasks are out of date).
#[derive(Default)]
struct Updating {
    next_batch: Option<Instant>,
    version: u64,
    started: bool,
    watch: Watch,
    /// this leader made tasks of this update (so it knows which are on their way)
    made: bool,
}

/// The tasks an update made, watched as swarmkit's updater does: a task that fails, is
/// rejected or ends on its own before it has run for the monitor period counts against
/// the update (`--update-monitor`, `--update-max-failure-ratio`).
#[derive(Default)]
struct Watch {
    /// task ID -> when it was first seen running
    tasks: HashMap<String, Option<Instant>>,
    failures: usize,
    /// the out-of-date slots when the update began
    total: usize,
}

impl Watch {
    /// A watched task's observed state: whether it failed the update just now.
    fn observe(&mut self, id: &str, state: TaskState, now: Instant, monitor: Duration) -> bool {
        let Some(since) = self.tasks.get_mut(id) else { return false };
        match state {
            TaskState::Running => {
                let t0 = *since.get_or_insert(now);
                if now.duration_since(t0) >= monitor {
                    self.tasks.remove(id);
                }
                false
            }
            TaskState::Complete | TaskState::Failed | TaskState::Rejected => {
                self.tasks.remove(id);
                self.failures += 1;
                true
            }
            // stopped by the swarm (a later update, a scale down, its node lost)
            TaskState::Shutdown | TaskState::Remove | TaskState::Orphaned => {
                self.tasks.remove(id);
                false
            }
            _ => false,
        }
    }

    /// More failures than the update allows (swarmkit: failures / slots > ratio).
    fn over(&self, max_ratio: f64) -> bool {
        self.total > 0 && self.failures as f64 / self.total as f64 > max_ratio
    }
}

/// `--update-failure-action` (a rollback's: pause or continue).
#[derive(Debug, Clone, Copy, PartialEq)]
enum OnFailure {
    Pause,
    Continue,
    Rollback,
}

/// An update's (or a rollback's) settings, with Docker's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Policy {
    parallelism: usize,
    delay: Duration,
    start_first: bool,
    on_failure: OnFailure,
    monitor: Duration,
    max_ratio: f64,
}

impl Policy {
    fn of(s: &ServiceRecord, rollback: bool) -> Policy {
        use docker::{ServiceSpecRollbackConfigFailureActionEnum as RF, ServiceSpecRollbackConfigOrderEnum as RO, ServiceSpecUpdateConfigFailureActionEnum as UF, ServiceSpecUpdateConfigOrderEnum as UO};
        let ns = |v: Option<i64>, d: u64| Duration::from_nanos(v.map(|v| v.max(0) as u64).unwrap_or(d));
        if rollback {
            let r = s.spec.rollback_config.clone().unwrap_or_default();
            Policy {
                parallelism: r.parallelism.unwrap_or(1).max(0) as usize,
                delay: ns(r.delay, 0),
                start_first: r.order == Some(RO::START_FIRST),
                on_failure: if r.failure_action == Some(RF::CONTINUE) { OnFailure::Continue } else { OnFailure::Pause },
                monitor: ns(r.monitor, 5_000_000_000),
                max_ratio: r.max_failure_ratio.unwrap_or(0.0),
            }
        } else {
            let u = s.spec.update_config.clone().unwrap_or_default();
            Policy {
                parallelism: u.parallelism.unwrap_or(1).max(0) as usize,
                delay: ns(u.delay, 0),
                start_first: u.order == Some(UO::START_FIRST),
                on_failure: match u.failure_action {
                    Some(UF::CONTINUE) => OnFailure::Continue,
                    Some(UF::ROLLBACK) => OnFailure::Rollback,
                    _ => OnFailure::Pause,
                },
                monitor: ns(u.monitor, 5_000_000_000),
                max_ratio: u.max_failure_ratio.unwrap_or(0.0),
            }
        }
    }
}

/// How long the leader's own heartbeat may go unseen before it stops judging the others
/// (three heartbeats): past it, its view of the store is late, not theirs.
const OWN_STALL: Duration = Duration::from_millis(1500);

/// The leader's view of the nodes' heartbeats: when each one's sequence last moved
/// (this manager's clock), judged against its own. A store that stalls (no stream
/// leader for a few seconds after a manager's loss) stalls every heartbeat, its own
/// too: no node is judged while its own is not seen moving, and once it moves again
/// after a stall every node gets a fresh grace from then. Without the second part a
/// node whose last heartbeat before the stall came a moment before the leader's own
/// crossed [`NODE_DOWN_AFTER`] first and was marked down (seen in e2e: a manager, then
/// a worker, lost their tasks after another manager's loss).
pub struct Liveness {
    me: String,
    seen: HashMap<String, (u64, Instant)>,
    since: Instant,
}

impl Liveness {
    pub fn new(me: &str, now: Instant) -> Liveness {
        Liveness { me: me.to_string(), seen: HashMap::new(), since: now }
    }

    /// A heartbeat read from the store at `now`.
    pub fn observe(&mut self, id: &str, seq: u64, now: Instant) {
        match self.seen.get(id) {
            Some((s, _)) if *s == seq => {}
            prev => {
                if id == self.me {
                    let last = prev.map(|(_, t)| *t).unwrap_or(self.since).max(self.since);
                    if now.duration_since(last) >= OWN_STALL {
                        self.since = now;
                    }
                }
                self.seen.insert(id.to_string(), (seq, now));
            }
        }
    }

    /// Whether the store shows node `id` alive at `now`; None while this manager's own
    /// heartbeat is not seen moving (no judgement).
    pub fn alive(&self, id: &str, now: Instant) -> Option<bool> {
        let at = |n: &str| self.seen.get(n).map(|(_, t)| *t).unwrap_or(self.since).max(self.since);
        if now.duration_since(at(&self.me)) >= OWN_STALL {
            return None;
        }
        Some(now.duration_since(at(id)) < NODE_DOWN_AFTER)
    }
}

struct Leader {
    c: Arc<Cluster>,
    live: Liveness,
    updates: HashMap<String, Updating>,
    /// Restarts per (service, slot or node), for max attempts.
    restarts: HashMap<(String, String), Restarts>,
    /// Slots (or global nodes) whose last task ended and that the restart policy does
    /// not run again, with the spec version they ended at: left empty until the
    /// service changes (swarmkit's dead slots; in memory as its restart history is, so
    /// a new leader fills them again, as Docker's does).
    done: HashMap<(String, String), u64>,
}

pub async fn run(c: Arc<Cluster>) {
    for t in [c.t.nodes.clone()] {
        t.wait_ready().await;
    }
    c.t.services.wait_ready().await;
    c.t.tasks.wait_ready().await;
    c.t.task_status.wait_ready().await;
    let mut l = Leader { c: c.clone(), live: Liveness::new(&c.node_id(), Instant::now()), updates: HashMap::new(), restarts: HashMap::new(), done: HashMap::new() };
    let mut rx = [c.t.services.subscribe(), c.t.tasks.subscribe(), c.t.task_status.subscribe(), c.t.nodes.subscribe(), c.t.heartbeats.subscribe()];
    loop {
        if let Err(e) = l.pass().await {
            tracing::debug!(error = %e, "orchestrator pass failed");
        }
        // Wake on any change, and at least every 250 ms (health, delayed starts).
        let [a, b, d, e, f] = &mut rx;
        tokio::select! {
            _ = a.changed() => {}
            _ = b.changed() => {}
            _ = d.changed() => {}
            _ = e.changed() => {}
            _ = f.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // Let a burst of changes settle into one pass.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Leader {
    async fn pass(&mut self) -> Result<(), BusError> {
        self.health().await?;
        self.reconcile().await?;
        self.reap().await?;
        Ok(())
    }

    /// Nodes whose heartbeat stopped are down; a heartbeat brings them back.
    async fn health(&mut self) -> Result<(), BusError> {
        let now = Instant::now();
        // its own first: a stall it ends gives every node a fresh grace
        let me = self.c.node_id();
        let beats = self.c.t.heartbeats.values();
        for (id, hb, _) in beats.iter().filter(|(id, _, _)| *id == me).chain(beats.iter().filter(|(id, _, _)| *id != me)) {
            self.live.observe(id, hb.seq, now);
        }
        let nodes = self.c.bucket::<NodeRecord>(buckets::NODES);
        for (id, n, _) in self.c.t.nodes.values() {
            let Some(alive) = self.live.alive(&id, now) else { return Ok(()) };
            let want = if alive { "ready" } else { "down" };
            if n.state != want {
                tracing::info!(node = %id, state = want, "node state");
                let r = nodes
                    .modify(&id, |n| {
                        if n.state == want {
                            return Ok(false);
                        }
                        n.state = want.into();
                        n.message = if alive { String::new() } else { "heartbeat failure".into() };
                        n.updated_at = crate::now();
                        Ok(true)
                    })
                    .await?;
                if let Some((n, rev)) = r {
                    self.c.t.nodes.note_put(&id, n, rev);
                }
            }
        }
        Ok(())
    }

    fn node_ok(n: &NodeRecord) -> bool {
        n.state == "ready" && n.spec.availability.unwrap_or(docker::NodeSpecAvailabilityEnum::ACTIVE) == docker::NodeSpecAvailabilityEnum::ACTIVE
    }

    fn observed(&self, t: &TaskRecord) -> Status {
        self.c.task_status(t)
    }

    async fn set_desired(&self, id: &str, to: TaskState) -> Result<(), BusError> {
        let b = self.c.bucket::<TaskRecord>(buckets::TASKS);
        if let Some((t, rev)) = b
            .modify(id, |t| {
                if t.desired_state >= to {
                    return Ok(false);
                }
                t.desired_state = to;
                t.updated_at = crate::now();
                Ok(true)
            })
            .await?
        {
            self.c.t.tasks.note_put(id, t, rev);
        }
        Ok(())
    }

    /// A new task for `slot` (replicated) or `node` (global), placed at once when a node
    /// fits. `desired` Ready with `start_at` for a delayed restart.
    async fn new_task(&self, s: &ServiceRecord, slot: u64, node: Option<String>, desired: TaskState, start_at: Option<u64>) -> Result<String, BusError> {
        let now = crate::now();
        let spec = task_spec(s);
        let (node_id, status) = match node {
            Some(n) => (Some(n), Status::now(TaskState::Assigned, "scheduler assigned task to node")),
            None => match self.place(s, &spec) {
                Ok(n) => (Some(n), Status::now(TaskState::Assigned, "scheduler assigned task to node")),
                Err(why) => (None, Status { err: Some(why), ..Status::now(TaskState::Pending, "pending task scheduling") }),
            },
        };
        let id = crate::ids::new_id();
        let t = TaskRecord {
            id: id.clone(),
            created_at: now.clone(),
            updated_at: now,
            service_id: s.id.clone(),
            service_name: s.spec.name.clone().unwrap_or_default(),
            slot,
            node_id,
            spec,
            spec_version: s.spec_version,
            desired_state: desired,
            status,
            service_labels: s.spec.labels.clone().unwrap_or_default(),
            start_at,
            job_iteration: is_job(s).then_some(s.spec_version),
        };
        let rev = self.c.bucket::<TaskRecord>(buckets::TASKS).create(&id, &t).await?;
        self.c.t.tasks.note_put(&id, t, rev);
        Ok(id)
    }

    /// The scheduler: the eligible node with the fewest tasks of this service, then the
    /// fewest tasks (spread); Docker's reason when none fits.
    fn place(&self, s: &ServiceRecord, spec: &docker::TaskSpec) -> Result<String, String> {
        let nodes = self.c.t.nodes.values();
        let tasks = self.c.t.tasks.values();
        let active: Vec<&TaskRecord> = tasks.iter().map(|(_, t, _)| t).filter(|t| t.desired_state <= TaskState::Running && t.node_id.is_some()).collect();
        let placement = spec.placement.clone().unwrap_or_default();
        let constraints = placement.constraints.clone().unwrap_or_default();
        let max_replicas = placement.max_replicas.unwrap_or(0).max(0) as usize;
        let res = spec.resources.as_ref().and_then(|r| r.reservations.clone()).unwrap_or_default();
        let mut best: Option<(usize, usize, String)> = None;
        let (mut n_avail, mut n_constraint, mut n_res, mut n_max) = (0, 0, 0, 0);
        for (id, n, _) in &nodes {
            if !Self::node_ok(n) {
                n_avail += 1;
                continue;
            }
            if !constraints.iter().all(|c| constraint_ok(c, n)) {
                n_constraint += 1;
                continue;
            }
            let on_node: Vec<&&TaskRecord> = active.iter().filter(|t| t.node_id.as_deref() == Some(id.as_str())).collect();
            let of_service = on_node.iter().filter(|t| t.service_id == s.id).count();
            if max_replicas > 0 && of_service >= max_replicas {
                n_max += 1;
                continue;
            }
            if res.nano_cpus.unwrap_or(0) > 0 || res.memory_bytes.unwrap_or(0) > 0 {
                let used = |f: &dyn Fn(&docker::ResourceObject) -> i64| -> i64 {
                    on_node.iter().map(|t| t.spec.resources.as_ref().and_then(|r| r.reservations.as_ref()).map(f).unwrap_or(0)).sum()
                };
                let cap = n.description.resources.clone().unwrap_or_default();
                let cpu_free = cap.nano_cpus.unwrap_or(0) - used(&|r| r.nano_cpus.unwrap_or(0));
                let mem_free = cap.memory_bytes.unwrap_or(0) - used(&|r| r.memory_bytes.unwrap_or(0));
                if res.nano_cpus.unwrap_or(0) > cpu_free || res.memory_bytes.unwrap_or(0) > mem_free {
                    n_res += 1;
                    continue;
                }
            }
            let key = (of_service, on_node.len(), id.clone());
            if best.as_ref().map(|b| key < *b).unwrap_or(true) {
                best = Some(key);
            }
        }
        if let Some((_, _, id)) = best {
            return Ok(id);
        }
        let mut why = Vec::new();
        let plural = |n: usize| if n == 1 { "node" } else { "nodes" };
        if n_avail > 0 {
            why.push(format!("{n_avail} {} not available for new tasks", plural(n_avail)));
        }
        if n_constraint > 0 {
            why.push(format!("scheduling constraints not satisfied on {n_constraint} {}", plural(n_constraint)));
        }
        if n_res > 0 {
            why.push(format!("insufficient resources on {n_res} {}", plural(n_res)));
        }
        if n_max > 0 {
            why.push(format!("max replicas per node limit exceed on {n_max} {}", plural(n_max)));
        }
        Err(format!("no suitable node ({})", why.join("; ")))
    }

    /// Restart policy of a task: whether it runs again after ending in `st`, and the delay.
    fn should_restart(&mut self, s: &ServiceRecord, t: &TaskRecord, st: TaskState, node_lost: bool) -> Option<u64> {
        let rp = t.spec.restart_policy.clone().unwrap_or_default();
        let cond = rp.condition.unwrap_or(docker::TaskSpecRestartPolicyConditionEnum::ANY);
        let again = node_lost
            || match cond {
                docker::TaskSpecRestartPolicyConditionEnum::NONE => false,
                docker::TaskSpecRestartPolicyConditionEnum::ON_FAILURE => st != TaskState::Complete,
                _ => true,
            };
        if !again {
            return None;
        }
        let key = slot_key(s, t.slot, t.node_id.as_deref());
        let max = rp.max_attempts.unwrap_or(0).max(0) as u64;
        if max > 0 && !node_lost {
            let window = Duration::from_nanos(rp.window.unwrap_or(0).max(0) as u64);
            let e = self.restarts.entry(key).or_insert_with(|| Restarts::new(t.spec_version));
            if e.version != t.spec_version {
                *e = Restarts::new(t.spec_version);
            }
            if !e.try_restart(max, window, Instant::now()) {
                return None;
            }
        }
        // A lost node is no crash loop: its tasks start elsewhere at once (swarmkit
        // applies the policy's delay here too; issue 18 wants them back within 10 s).
        let delay = if node_lost { 0 } else { rp.delay.unwrap_or(RESTART_DELAY_NS).max(0) as u64 / 1_000_000 };
        Some(delay)
    }

    /// Did this slot's (global: node's) last task end for good at the current spec?
    fn ended_for_good(&self, s: &ServiceRecord, slot: u64, node: Option<&str>) -> bool {
        self.done.get(&slot_key(s, slot, node)) == Some(&s.spec_version)
    }

    async fn reconcile(&mut self) -> Result<(), BusError> {
        let services: Vec<ServiceRecord> = self.c.t.services.values().into_iter().map(|(_, s, _)| s).collect();
        let nodes: HashMap<String, NodeRecord> = self.c.t.nodes.values().into_iter().map(|(id, n, _)| (id, n)).collect();
        let all: Vec<TaskRecord> = self.c.t.tasks.values().into_iter().map(|(_, t, _)| t).collect();
        let now_ms = crate::now_ms();

        self.done.retain(|(sid, _), _| services.iter().any(|s| &s.id == sid));
        self.restarts.retain(|(sid, _), _| services.iter().any(|s| &s.id == sid));

        // Tasks of removed services go.
        for t in &all {
            if t.desired_state < TaskState::Remove && !services.iter().any(|s| s.id == t.service_id) {
                self.set_desired(&t.id, TaskState::Remove).await?;
            }
        }

        for s in &services {
            let tasks: Vec<&TaskRecord> = all.iter().filter(|t| t.service_id == s.id).collect();
            // 1. Active tasks that ended, lost their node or sit on a drained node.
            for t in &tasks {
                if t.desired_state > TaskState::Running {
                    continue;
                }
                let obs = self.observed(t).state;
                let node = t.node_id.as_ref().and_then(|n| nodes.get(n));
                let node_down = t.node_id.is_some() && node.map(|n| n.state == "down").unwrap_or(true);
                let drained = node.map(|n| n.spec.availability == Some(docker::NodeSpecAvailabilityEnum::DRAIN)).unwrap_or(false);
                let ended = obs.terminal();
                if !(ended || node_down || drained) {
                    continue;
                }
                if is_job(s) && obs == TaskState::Complete && !(drained || node_down) {
                    // A job's task that finished its work: complete, never run again.
                    self.set_desired(&t.id, TaskState::Complete).await?;
                    continue;
                }
                self.set_desired(&t.id, TaskState::Shutdown).await?;
                let restart = if drained || node_down { Some(0) } else { self.should_restart(s, t, obs, false) };
                let node_for = if is_global(s) { t.node_id.clone() } else { None };
                if is_global(s) && (drained || node_down) {
                    continue; // a global task does not move
                }
                if restart.is_none() {
                    self.done.insert(slot_key(s, t.slot, t.node_id.as_deref()), s.spec_version);
                }
                if let Some(delay) = restart {
                    if delay == 0 {
                        self.new_task(s, t.slot, node_for, TaskState::Running, None).await?;
                    } else {
                        self.new_task(s, t.slot, node_for, TaskState::Ready, Some(now_ms + delay)).await?;
                    }
                }
            }
            // A job whose spec changed runs again (a new execution): the previous one's
            // unfinished tasks stop.
            if is_job(s) {
                for t in self.c.t.tasks.filter(|t| t.service_id == s.id && t.desired_state <= TaskState::Running && t.spec_version != s.spec_version) {
                    self.set_desired(&t.id, TaskState::Shutdown).await?;
                }
            }
            let all_now: Vec<TaskRecord> = self.c.t.tasks.filter(|t| t.service_id == s.id);
            let active: Vec<&TaskRecord> = all_now.iter().filter(|t| t.desired_state <= TaskState::Running).collect();
            let completed = if is_job(s) { job_completed(s, &all_now) } else { Vec::new() };

            // 2. Delayed starts whose time has come.
            for t in &active {
                if t.desired_state == TaskState::Ready && t.start_at.map(|at| at <= now_ms).unwrap_or(true) && !self.update_holds(s, t, &all_now) {
                    self.set_desired(&t.id, TaskState::Running).await?;
                }
            }

            // 3. Placement of pending tasks.
            for t in &active {
                if t.node_id.is_none() {
                    let spec = t.spec.clone();
                    let placed = self.place(s, &spec);
                    let b = self.c.bucket::<TaskRecord>(buckets::TASKS);
                    let r = b
                        .modify(&t.id, |t| {
                            if t.node_id.is_some() {
                                return Ok(false);
                            }
                            match &placed {
                                Ok(n) => {
                                    t.node_id = Some(n.clone());
                                    t.status = Status::now(TaskState::Assigned, "scheduler assigned task to node");
                                }
                                Err(why) => {
                                    if t.status.err.as_deref() == Some(why.as_str()) {
                                        return Ok(false);
                                    }
                                    t.status = Status { err: Some(why.clone()), ..Status::now(TaskState::Pending, "pending task scheduling") };
                                }
                            }
                            t.updated_at = crate::now();
                            Ok(true)
                        })
                        .await?;
                    if let Some((t, rev)) = r {
                        self.c.t.tasks.note_put(&t.id.clone(), t, rev);
                    }
                }
            }

            // 4. Replicas or nodes: add and remove.
            if is_global(s) {
                let spec = task_spec(s);
                let constraints = spec.placement.clone().unwrap_or_default().constraints.unwrap_or_default();
                for (id, n) in &nodes {
                    let eligible = n.state == "ready"
                        && n.spec.availability != Some(docker::NodeSpecAvailabilityEnum::DRAIN)
                        && constraints.iter().all(|c| constraint_ok(c, n));
                    let has = active.iter().any(|t| t.node_id.as_deref() == Some(id.as_str()))
                        || self.ended_for_good(s, 0, Some(id))
                        || completed.contains(&(0, Some(id.clone())));
                    let paused = n.spec.availability == Some(docker::NodeSpecAvailabilityEnum::PAUSE);
                    if eligible && !has && !paused {
                        self.new_task(s, 0, Some(id.clone()), TaskState::Running, None).await?;
                    }
                    if !eligible && n.state == "ready" {
                        for t in active.iter().filter(|t| t.node_id.as_deref() == Some(id.as_str())) {
                            self.set_desired(&t.id, TaskState::Shutdown).await?;
                        }
                    }
                }
            } else if let Some((max, total)) = replicated_job(s) {
                // A replicated job: slots 0..TotalCompletions (swarmkit counts a job's
                // slots from 0: the CLI's progress reads slots 0..n and shows Slot+1),
                // at most MaxConcurrent running at once, each until it completes.
                let mut running = active.len() as u64;
                for slot in 0..total {
                    if running >= max {
                        break;
                    }
                    let busy = active.iter().any(|t| t.slot == slot);
                    if !busy && !completed.contains(&(slot, None)) && !self.ended_for_good(s, slot, None) {
                        self.new_task(s, slot, None, TaskState::Running, None).await?;
                        running += 1;
                    }
                }
            } else {
                let want = replicas(s);
                let mut by_slot: BTreeMap<u64, Vec<&TaskRecord>> = BTreeMap::new();
                for t in &active {
                    by_slot.entry(t.slot).or_default().push(t);
                }
                for slot in 1..=want {
                    if !by_slot.contains_key(&slot) && !self.ended_for_good(s, slot, None) {
                        self.new_task(s, slot, None, TaskState::Running, None).await?;
                    }
                }
                for (slot, ts) in &by_slot {
                    if *slot > want {
                        for t in ts {
                            self.set_desired(&t.id, TaskState::Remove).await?;
                        }
                    }
                }
            }

            // 5. Rolling update of out-of-date tasks (a job reruns instead: above).
            if !is_job(s) {
                self.update(s, &nodes).await?;
            }
        }
        Ok(())
    }

    /// Stop-first updates: the new task of a slot waits until the old one has stopped.
    fn update_holds(&self, s: &ServiceRecord, t: &TaskRecord, all: &[TaskRecord]) -> bool {
        if t.start_at.is_some() {
            return false; // a restart's delay, not an update
        }
        all.iter().any(|o| {
            o.id != t.id
                && o.slot == t.slot
                && (is_global(s) == false || o.node_id == t.node_id)
                && o.desired_state == TaskState::Shutdown
                && !self.observed(o).state.terminal()
                && o.node_id.as_ref().and_then(|n| self.c.t.nodes.get(n)).map(|(n, _)| n.state != "down").unwrap_or(false)
        })
    }

    async fn update(&mut self, s: &ServiceRecord, _nodes: &HashMap<String, NodeRecord>) -> Result<(), BusError> {
        use docker::ServiceUpdateStatusStateEnum as U;
        let state = s.update_status.as_ref().and_then(|u| u.state);
        if matches!(state, Some(U::PAUSED) | Some(U::ROLLBACK_PAUSED)) {
            return Ok(()); // until the next `service update` or `rollback`
        }
        let rollback = state == Some(U::ROLLBACK_STARTED);
        let policy = Policy::of(s, rollback);
        let tasks: Vec<TaskRecord> = self.c.t.tasks.filter(|t| t.service_id == s.id);
        let active: Vec<&TaskRecord> = tasks.iter().filter(|t| t.desired_state <= TaskState::Running).collect();
        let dirty: Vec<&&TaskRecord> = active.iter().filter(|t| task_dirty(s, t)).collect();
        {
            let st = self.updates.entry(s.id.clone()).or_default();
            if st.version != s.spec_version {
                *st = Updating { version: s.spec_version, ..Default::default() };
            }
        }
        // The tasks this update made: one that failed may stop the update.
        let now = Instant::now();
        let seen: Vec<(String, TaskState)> = self.updates[&s.id]
            .watch
            .tasks
            .keys()
            .map(|id| (id.clone(), self.c.t.tasks.get(id).map(|(t, _)| self.observed(&t).state).unwrap_or(TaskState::Remove)))
            .collect();
        let st = self.updates.get_mut(&s.id).unwrap();
        let mut failed = None;
        for (id, state) in seen {
            if st.watch.observe(&id, state, now, policy.monitor) && failed.is_none() {
                failed = Some(id);
            }
        }
        if let Some(id) = failed {
            tracing::info!(service = %s.id, task = %id, failures = st.watch.failures, of = st.watch.total, action = ?policy.on_failure, "a task of the update failed");
            if st.watch.over(policy.max_ratio) && policy.on_failure != OnFailure::Continue {
                st.started = false;
                return self.update_failed(s, &id, rollback, policy.on_failure).await;
            }
        }
        let (started, next_batch) = (st.started, st.next_batch);
        let watching = !st.watch.tasks.is_empty();
        // Slots whose replacement is on its way: a task of this update not running yet
        // (a leader that took over mid-update: any clean task not running yet). A
        // failed one's restarts are the restart policy's, not the update's.
        let st = &self.updates[&s.id];
        let in_flight = active
            .iter()
            .filter(|t| !task_dirty(s, t) && (!st.made || st.watch.tasks.contains_key(&t.id)) && self.observed(t).state < TaskState::Running)
            .count();
        if dirty.is_empty() {
            // Done when the last replacement has run for the monitor period (the CLI
            // stops watching at "completed").
            if started && in_flight == 0 && !watching {
                self.updates.get_mut(&s.id).unwrap().started = false;
                let b = self.c.bucket::<ServiceRecord>(buckets::SERVICES);
                if let Some((svc, rev)) = b
                    .modify(&s.id, |svc| {
                        let Some(u) = svc.update_status.as_mut() else { return Ok(false) };
                        if svc.spec_version != s.spec_version {
                            return Ok(false);
                        }
                        u.state = Some(if rollback { U::ROLLBACK_COMPLETED } else { U::COMPLETED });
                        u.completed_at = Some(crate::now());
                        u.message = Some(if rollback { "rollback completed".into() } else { "update completed".into() });
                        Ok(true)
                    })
                    .await?
                {
                    self.c.t.services.note_put(&s.id, svc, rev);
                }
            }
            return Ok(());
        }
        if !started {
            let st = self.updates.get_mut(&s.id).unwrap();
            st.started = true;
            st.watch.total = dirty.len();
            // Docker records the update only when tasks change.
            let b = self.c.bucket::<ServiceRecord>(buckets::SERVICES);
            if let Some((svc, rev)) = b
                .modify(&s.id, |svc| {
                    if svc.update_status.as_ref().and_then(|u| u.state) == Some(U::ROLLBACK_STARTED) {
                        return Ok(false);
                    }
                    svc.update_status = Some(docker::ServiceUpdateStatus {
                        state: Some(U::UPDATING),
                        started_at: Some(crate::now()),
                        completed_at: None,
                        message: Some("update in progress".into()),
                    });
                    Ok(true)
                })
                .await?
            {
                self.c.t.services.note_put(&s.id, svc, rev);
            }
        }
        let room = if policy.parallelism == 0 { usize::MAX } else { policy.parallelism.saturating_sub(in_flight) };
        if room == 0 {
            return Ok(());
        }
        if in_flight == 0 {
            if let Some(at) = next_batch {
                if Instant::now() < at {
                    return Ok(());
                }
            }
        }
        let mut batch: Vec<&&&TaskRecord> = dirty.iter().collect();
        batch.sort_by_key(|t| (t.slot, t.node_id.clone()));
        // A slot with both a clean and a dirty task is mid start-first: leave it.
        let clean_slots: Vec<(u64, Option<String>)> = active.iter().filter(|t| !task_dirty(s, t)).map(|t| (t.slot, if is_global(s) { t.node_id.clone() } else { None })).collect();
        let mut n = 0;
        let mut made = Vec::new();
        for t in batch {
            if n >= room {
                break;
            }
            let key = (t.slot, if is_global(s) { t.node_id.clone() } else { None });
            if clean_slots.contains(&key) {
                if policy.start_first && self.observed_running_clean(s, &key) {
                    self.set_desired(&t.id, TaskState::Shutdown).await?;
                }
                continue;
            }
            let node_for = if is_global(s) { t.node_id.clone() } else { None };
            if policy.start_first {
                made.push(self.new_task(s, t.slot, node_for, TaskState::Running, None).await?);
            } else {
                self.set_desired(&t.id, TaskState::Shutdown).await?;
                made.push(self.new_task(s, t.slot, node_for, TaskState::Ready, None).await?);
            }
            n += 1;
        }
        let st = self.updates.get_mut(&s.id).unwrap();
        st.made |= !made.is_empty();
        st.watch.tasks.extend(made.into_iter().map(|id| (id, None)));
        if n > 0 {
            st.next_batch = Some(Instant::now() + policy.delay);
        }
        Ok(())
    }

    /// Too many of an update's tasks failed: pause it, or roll the service back to its
    /// previous spec (swarmkit's words; a rollback that fails pauses).
    async fn update_failed(&mut self, s: &ServiceRecord, task: &str, rollback: bool, action: OnFailure) -> Result<(), BusError> {
        use docker::ServiceUpdateStatusStateEnum as U;
        let mut back = action == OnFailure::Rollback && !rollback && s.previous_spec.is_some();
        let mut endpoint = None;
        if back {
            // the previous spec's ports and virtual IPs (taken meanwhile: pause instead)
            let prev = s.previous_spec.clone().unwrap_or_default();
            match self.c.service_endpoint(&s.id, &prev, s.endpoint.as_ref()).await {
                Ok(e) => endpoint = Some(e),
                Err(e) => {
                    tracing::warn!(service = %s.id, error = %e.message, "rolling back: the previous endpoint; the update pauses");
                    back = false;
                }
            }
        }
        let (state, message) = match (rollback, back) {
            (true, _) => (U::ROLLBACK_PAUSED, format!("rollback paused due to failure or early termination of task {task}")),
            (false, true) => (U::ROLLBACK_STARTED, format!("update rolled back due to failure or early termination of task {task}")),
            (false, false) => (U::PAUSED, format!("update paused due to failure or early termination of task {task}")),
        };
        let version = s.spec_version;
        let b = self.c.bucket::<ServiceRecord>(buckets::SERVICES);
        if let Some((svc, rev)) = b
            .modify(&s.id, |svc| {
                if svc.spec_version != version {
                    return Ok(false); // updated again meanwhile
                }
                if back {
                    let Some(prev) = svc.previous_spec.take() else { return Ok(false) };
                    svc.spec = prev;
                    svc.spec_version += 1;
                    svc.endpoint = endpoint.clone().flatten();
                    svc.updated_at = crate::now();
                }
                let started_at = if back { Some(crate::now()) } else { svc.update_status.as_ref().and_then(|u| u.started_at.clone()) };
                svc.update_status = Some(docker::ServiceUpdateStatus { state: Some(state), started_at, completed_at: None, message: Some(message.clone()) });
                Ok(true)
            })
            .await?
        {
            tracing::info!(service = %s.id, %message, "update stopped");
            self.c.t.services.note_put(&s.id, svc, rev);
        }
        Ok(())
    }

    fn observed_running_clean(&self, s: &ServiceRecord, key: &(u64, Option<String>)) -> bool {
        self.c
            .t
            .tasks
            .filter(|t| t.service_id == s.id && t.desired_state <= TaskState::Running && t.slot == key.0 && (key.1.is_none() || t.node_id == key.1))
            .iter()
            .any(|t| !task_dirty(s, t) && self.observed(t).state == TaskState::Running)
    }

    /// Delete removed tasks once stopped, and old tasks past the history limit.
    async fn reap(&mut self) -> Result<(), BusError> {
        let limit = self
            .c
            .t
            .cluster
            .get("swarm")
            .and_then(|(c, _)| c.spec.orchestration.and_then(|o| o.task_history_retention_limit))
            .unwrap_or(5)
            .max(0) as usize;
        let tasks: Vec<TaskRecord> = self.c.t.tasks.values().into_iter().map(|(_, t, _)| t).collect();
        let b = self.c.bucket::<TaskRecord>(buckets::TASKS);
        let sb = self.c.bucket::<TaskStatusRecord>(buckets::TASK_STATUS);
        let mut gone = Vec::new();
        for t in &tasks {
            if t.desired_state == TaskState::Remove {
                let obs = self.observed(t).state;
                let node_down = t.node_id.as_ref().map(|n| self.c.t.nodes.get(n).map(|(n, _)| n.state == "down").unwrap_or(true)).unwrap_or(true);
                if obs.terminal() || node_down || obs < TaskState::Assigned {
                    gone.push(t.clone());
                }
            }
        }
        // History: per slot (or node), keep `limit` tasks that are not active, newest first.
        let mut groups: HashMap<(String, u64, Option<String>), Vec<&TaskRecord>> = HashMap::new();
        for t in tasks.iter().filter(|t| t.desired_state > TaskState::Running && t.desired_state != TaskState::Remove) {
            let key = (t.service_id.clone(), t.slot, if t.slot == 0 { t.node_id.clone() } else { None });
            groups.entry(key).or_default().push(t);
        }
        for (_, mut v) in groups {
            let active_in_slot = 1; // the slot's running task counts toward the limit
            if v.len() + active_in_slot > limit {
                v.sort_by(|a, b| b.created_at.cmp(&a.created_at));
                for t in v.into_iter().skip(limit.saturating_sub(active_in_slot)) {
                    if self.observed(t).state.terminal() || t.node_id.as_ref().and_then(|n| self.c.t.nodes.get(n)).map(|(n, _)| n.state == "down").unwrap_or(true) {
                        gone.push(t.clone());
                    }
                }
            }
        }
        for t in gone {
            b.delete(&t.id).await?;
            self.c.t.tasks.note_delete(&t.id);
            if let Some(n) = &t.node_id {
                let key = format!("{n}.{}", t.id);
                if self.c.t.task_status.get(&key).is_some() {
                    sb.delete(&key).await?;
                    self.c.t.task_status.note_delete(&key);
                }
            }
        }
        Ok(())
    }
}

/// One placement constraint (`node.labels.x==y`, `node.role!=manager`, ...).
pub fn constraint_ok(c: &str, n: &NodeRecord) -> bool {
    let (key, want, eq) = if let Some((k, v)) = c.split_once("==") {
        (k.trim(), v.trim(), true)
    } else if let Some((k, v)) = c.split_once("!=") {
        (k.trim(), v.trim(), false)
    } else {
        return false;
    };
    let have: Option<String> = match key {
        "node.id" => Some(n.id.clone()),
        "node.hostname" => n.description.hostname.clone(),
        "node.role" => Some(n.role.clone()),
        "node.platform.os" => n.description.platform.as_ref().and_then(|p| p.os.clone()),
        "node.platform.arch" => n.description.platform.as_ref().and_then(|p| p.architecture.clone()),
        k if k.starts_with("node.labels.") => n.spec.labels.as_ref().and_then(|l| l.get(&k["node.labels.".len()..]).cloned()),
        k if k.starts_with("engine.labels.") => n.description.engine.as_ref().and_then(|e| e.labels.as_ref()).and_then(|l| l.get(&k["engine.labels.".len()..]).cloned()),
        _ => None,
    };
    let matches = have.map(|h| h.eq_ignore_ascii_case(want)).unwrap_or(false);
    if eq {
        matches
    } else {
        !matches
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    /// `ms` after `t0`.
    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    const D: u64 = NODE_DOWN_AFTER.as_millis() as u64;

    #[test]
    fn a_node_that_stops_beating_is_down_after_the_grace() {
        let t0 = Instant::now();
        let mut l = Liveness::new("me", t0);
        let mut seq = 0;
        for ms in (0..=D + 2000).step_by(500) {
            seq += 1;
            l.observe("me", seq, at(t0, ms));
            if ms <= 1000 {
                l.observe("w", seq, at(t0, ms));
            }
        }
        assert_eq!(l.alive("w", at(t0, 1000 + D - 100)), Some(true));
        assert_eq!(l.alive("w", at(t0, 1000 + D + 100)), Some(false));
        // a node never seen gets the grace from the start
        assert_eq!(l.alive("new", at(t0, D - 100)), Some(true));
        assert_eq!(l.alive("new", at(t0, D + 500)), Some(false));
    }

    #[test]
    fn a_stalled_store_marks_no_node_down() {
        let t0 = Instant::now();
        let mut l = Liveness::new("me", t0);
        // both beat until 1000 ms, the other one's last a moment before the leader's
        l.observe("me", 1, at(t0, 0));
        l.observe("w", 1, at(t0, 0));
        l.observe("w", 2, at(t0, 900));
        l.observe("me", 2, at(t0, 1000));
        // the store stalls: no judgement while its own is not seen moving
        assert_eq!(l.alive("w", at(t0, 2400)), Some(true));
        assert_eq!(l.alive("w", at(t0, 2600)), None);
        assert_eq!(l.alive("w", at(t0, 2 * D + 8000)), None);
        // it comes back: the leader's own first, the other's a moment later; the other
        // has the whole grace from then
        let back = 2 * D + 8000;
        l.observe("me", 3, at(t0, back));
        assert_eq!(l.alive("w", at(t0, back + 100)), Some(true));
        l.observe("w", 3, at(t0, back + 300));
        l.observe("me", 4, at(t0, back + 500));
        assert_eq!(l.alive("w", at(t0, back + 600)), Some(true));
        // one that does not come back is down a grace after the stall ended
        let mut l2 = Liveness::new("me", t0);
        l2.observe("me", 1, at(t0, 0));
        l2.observe("gone", 1, at(t0, 0));
        l2.observe("me", 2, at(t0, 5000));
        for (i, ms) in (5500..=5000 + D + 500).step_by(500).enumerate() {
            l2.observe("me", 3 + i as u64, at(t0, ms));
        }
        assert_eq!(l2.alive("gone", at(t0, 5000 + D - 100)), Some(true));
        assert_eq!(l2.alive("gone", at(t0, 5000 + D + 100)), Some(false));
    }

    #[test]
    fn the_old_rule_marked_a_node_down_at_the_edge_of_a_stall() {
        // the fault this replaces: own last seen at 1000, the other at 900; 50 ms before
        // the leader's own crosses the grace the other's has crossed it (both stalled)
        let t0 = Instant::now();
        let mut l = Liveness::new("me", t0);
        l.observe("w", 1, at(t0, 900));
        l.observe("me", 1, at(t0, 1000));
        assert_eq!(l.alive("w", at(t0, 1000 + D - 50)), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_counted_within_the_window() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        // no window: two restarts in all
        let mut r = Restarts::new(1);
        assert!(r.try_restart(2, Duration::ZERO, s(0)) && r.try_restart(2, Duration::ZERO, s(100)));
        assert!(!r.try_restart(2, Duration::ZERO, s(1000)));
        // a 60 s window: two within any 60 s, more once the old ones are out of it
        let mut r = Restarts::new(1);
        let w = Duration::from_secs(60);
        assert!(r.try_restart(2, w, s(0)) && r.try_restart(2, w, s(10)));
        assert!(!r.try_restart(2, w, s(50)));
        assert!(r.try_restart(2, w, s(61)), "the first is out of the window");
        assert!(!r.try_restart(2, w, s(65)));
        assert!(r.try_restart(2, w, s(130)) && r.try_restart(2, w, s(131)));
    }

    #[test]
    fn a_task_that_fails_within_the_monitor_counts_against_the_update() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mon = Duration::from_secs(5);
        let mut w = Watch { total: 4, ..Default::default() };
        for id in ["a", "b", "c", "d"] {
            w.tasks.insert(id.into(), None);
        }
        // a: runs past the monitor period, then fails: not the update's fault
        assert!(!w.observe("a", TaskState::Starting, ms(0), mon));
        assert!(!w.observe("a", TaskState::Running, ms(100), mon));
        assert!(!w.observe("a", TaskState::Running, ms(5_100), mon));
        assert!(!w.tasks.contains_key("a"));
        assert!(!w.observe("a", TaskState::Failed, ms(6_000), mon));
        // b: exits on its own 1 s after it started
        assert!(!w.observe("b", TaskState::Running, ms(100), mon));
        assert!(w.observe("b", TaskState::Complete, ms(1_100), mon));
        // c: rejected before it ran
        assert!(w.observe("c", TaskState::Rejected, ms(200), mon));
        // d: shut down by the swarm (scaled away): no failure
        assert!(!w.observe("d", TaskState::Shutdown, ms(200), mon));
        assert_eq!(w.failures, 2);
        assert!(w.tasks.is_empty());
        assert!(w.over(0.0) && w.over(0.49) && !w.over(0.5));
    }

    #[test]
    fn update_and_rollback_settings_with_dockers_defaults() {
        let mut s: ServiceRecord = serde_json::from_value(serde_json::json!({
            "id": "s", "created_at": "c", "updated_at": "u", "spec": {}, "spec_version": 1,
        }))
        .unwrap();
        let d = Policy::of(&s, false);
        assert_eq!((d.parallelism, d.on_failure, d.monitor, d.max_ratio, d.start_first), (1, OnFailure::Pause, Duration::from_secs(5), 0.0, false));
        s.spec.update_config = Some(docker::ServiceSpecUpdateConfig {
            parallelism: Some(2),
            failure_action: Some(docker::ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(1_000_000_000),
            max_failure_ratio: Some(0.25),
            order: Some(docker::ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            ..Default::default()
        });
        s.spec.rollback_config = Some(docker::ServiceSpecRollbackConfig {
            failure_action: Some(docker::ServiceSpecRollbackConfigFailureActionEnum::CONTINUE),
            parallelism: Some(0),
            ..Default::default()
        });
        let u = Policy::of(&s, false);
        assert_eq!((u.parallelism, u.on_failure, u.monitor, u.max_ratio, u.start_first), (2, OnFailure::Rollback, Duration::from_secs(1), 0.25, true));
        let r = Policy::of(&s, true);
        assert_eq!((r.parallelism, r.on_failure, r.monitor, r.start_first), (0, OnFailure::Continue, Duration::from_secs(5), false));
    }

    fn node(labels: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            id: "n1".into(),
            created_at: String::new(),
            updated_at: String::new(),
            spec: docker::NodeSpec { labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()), ..Default::default() },
            description: docker::NodeDescription { hostname: Some("h1".into()), ..Default::default() },
            state: "ready".into(),
            message: String::new(),
            addr: String::new(),
            role: "worker".into(),
            in_store: None,
            bus: Default::default(),
        }
    }

    #[test]
    fn constraints() {
        let n = node(&[("zone", "a")]);
        assert!(constraint_ok("node.labels.zone==a", &n));
        assert!(!constraint_ok("node.labels.zone==b", &n));
        assert!(constraint_ok("node.labels.zone!=b", &n));
        assert!(constraint_ok("node.role==worker", &n));
        assert!(!constraint_ok("node.role==manager", &n));
        assert!(constraint_ok("node.hostname == h1", &n));
        assert!(constraint_ok("node.labels.none!=x", &n));
    }
}
