//! Leadership: a lease in the store (`swarm_leader/leader`), taken with create (the key
//! is absent or expired) and renewed with compare-and-set on its revision every
//! second; the bucket's max age expires a lease nobody renews. No second consensus
//! protocol: JetStream's own (raft under the bucket's stream) decides every write.
//!
//! The leader runs the orchestrator, the scheduler and node health
//! ([`crate::orchestrator::run`]); a manager that cannot renew for most of the lease's
//! life stops them before anyone else can take the lease.

use crate::cluster::Cluster;
use crate::model::*;
use crate::store::{buckets, Bucket, StoreError, LEASE_TTL};
use bus_schema::{docker, BusError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const RENEW: Duration = Duration::from_secs(1);

pub async fn run(c: Arc<Cluster>) {
    let lease: Bucket<Lease> = c.bucket(buckets::LEADER);
    let me = c.node_id();
    // The orchestrator stops with this loop (aborted when the membership stops or its
    // store moves): a task outlives the task that spawned it otherwise.
    struct Duties(tokio::task::JoinHandle<()>);
    impl Drop for Duties {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut duties: Option<Duties> = None;
    let mut last_ok: Option<Instant> = None;
    let mut term = 0u64;
    // The swarm record is the store's first (init) and its move's last record: no
    // manager leads a store without it (a new one, or one being written back).
    while c.t.cluster.get("swarm").is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the watched copies of the other buckets catch up with what came before it
    // (only a clustered store is ever written back).
    if c.local.read().unwrap().clustered {
        tokio::time::sleep(RENEW).await;
    }
    loop {
        let res: Result<bool, StoreError> = match lease.get("leader").await {
            Ok(Some((l, rev))) if l.node_id == me => lease.update("leader", &l, rev).await.map(|r| {
                c.t.leader.note_put("leader", l, r);
                true
            }),
            Ok(Some((l, rev))) => {
                term = term.max(l.term);
                // the watched copy may lag after a failover (its watch is rebuilt)
                c.t.leader.note_put("leader", l, rev);
                Ok(false)
            }
            Ok(None) => {
                let l = Lease { node_id: me.clone(), term: term + 1 };
                match lease.create("leader", &l).await {
                    Ok(r) => {
                        c.t.leader.note_put("leader", l, r);
                        tracing::info!(node = %me, term = term + 1, "took the leader lease");
                        Ok(true)
                    }
                    Err(StoreError::Exists(_)) | Err(StoreError::Conflict) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let leading = match res {
            Ok(true) => {
                last_ok = Some(Instant::now());
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::debug!(error = %e, "leader lease not renewed");
                last_ok.map(|t| t.elapsed() + RENEW < LEASE_TTL).unwrap_or(false)
            }
        };
        if !leading {
            last_ok = None;
        }
        match (leading, duties.is_some()) {
            (true, false) => {
                duties = Some(Duties(tokio::spawn(crate::orchestrator::run(c.clone()))));
                c.is_leader.send_replace(true);
            }
            (false, true) => {
                duties = None;
                c.is_leader.send_replace(false);
                tracing::info!(node = %me, "not the leader any more");
            }
            _ => {}
        }
        tokio::time::sleep(if leading { RENEW } else { RENEW / 2 }).await;
    }
}

/// Promotions and demotions Docker refuses.
pub fn check_role_change(managers: &[NodeRecord], node: &NodeRecord, to: docker::NodeSpecRoleEnum) -> Result<(), BusError> {
    if to == docker::NodeSpecRoleEnum::WORKER && node.role == "manager" {
        if managers.len() <= 1 {
            return Err(BusError::invalid(
                "rpc error: code = FailedPrecondition desc = attempting to demote the last manager of the swarm".to_string(),
            ));
        }
        // swarmkit's quorum safeguard
        let m: Vec<(&str, bool)> = managers.iter().map(|n| (n.id.as_str(), n.state == "ready")).collect();
        if !crate::role::can_remove_manager(&m, &node.id) {
            return Err(BusError::invalid(
                "rpc error: code = FailedPrecondition desc = can't remove member from the raft: this would result in a loss of quorum".to_string(),
            ));
        }
    }
    Ok(())
}
