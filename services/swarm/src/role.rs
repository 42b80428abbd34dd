//! Promotion and demotion (`docker node promote/demote`).
//!
//! A manager's API writes the new role into the node's record (spec and role at once);
//! the node acts on what it reads there ([`watch`], on every node):
//! - promoted: it reads the CA from the store, signs itself a manager certificate,
//!   and restarts its swarm server as a route member of the managers' JetStream cluster
//!   (from a leaf); its store opens the buckets with min(managers, 3) replicas, so the
//!   third manager takes them to R3;
//! - demoted: it signs itself a worker certificate, drops its copy of the store and
//!   restarts its swarm server as a leaf of the remaining managers.
//!
//! The managers follow the set of managers ([`follow_managers`]): each keeps its routes
//! (its `state.json`) in step, and the leader removes a demoted manager's server from
//! the JetStream cluster once it left (the meta group's peer, `$JS.API.SERVER.REMOVE`
//! through the system account) and scales the buckets down to the managers left.

use crate::cluster::Cluster;
use crate::local::{LocalState, ManagerAddr};
use crate::model::*;
use crate::store::buckets;
use crate::{ids, SwarmService};
use bus_schema::BusError;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Every node: act on a change of its own role in the store.
pub async fn watch(c: Arc<Cluster>) {
    let mut rx = c.t.nodes.subscribe();
    let me = c.node_id();
    loop {
        if let Some((n, _)) = c.t.nodes.get(&me) {
            let have = c.local.read().unwrap().role.clone();
            if (n.role == "manager" || n.role == "worker") && n.role != have {
                let svc = c.svc.clone();
                let role = n.role.clone();
                tracing::info!(node = %me, from = %have, to = %role, "this node's role changed in the store");
                // the switch stops this membership's loops, this one included
                tokio::spawn(async move { svc.change_role(&role).await });
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The managers in the store, as the routes and leaf remotes name them.
pub fn managers(c: &Cluster) -> Vec<ManagerAddr> {
    let mut v: Vec<ManagerAddr> =
        c.t.nodes
            .filter(|n| n.role == "manager")
            .into_iter()
            .map(|n| ManagerAddr {
                node_id: n.id.clone(),
                client: n.bus.client_addr.clone(),
                leaf: n.bus.leaf_addr.clone(),
                route: n.bus.route_addr.clone(),
            })
            .collect();
    v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    v
}

/// The JetStream server name of a node's swarm server (natsconf's `server_name`).
pub fn server_name(node_id: &str) -> String {
    format!("swarm-{node_id}")
}

/// swarmkit's quorum safeguard for a demotion: the managers still reachable without
/// `node` must be a majority of the managers left.
/// `managers`: (node ID, reachable).
pub fn can_remove_manager(managers: &[(&str, bool)], node: &str) -> bool {
    let left: Vec<&(&str, bool)> = managers.iter().filter(|m| m.0 != node).collect();
    let reachable = left.iter().filter(|m| m.1).count();
    reachable >= left.len() / 2 + 1
}

impl SwarmService {
    /// Restart this node's membership in the role the store gives it.
    pub async fn change_role(self: &Arc<Self>, role: &str) {
        let _g = self.transition.lock().await;
        let Some(c) = self.active() else { return };
        if c.local.read().unwrap().role == role {
            return;
        }
        let local = loop {
            match self.next_local(&c, role).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e.message, "preparing the role change; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // demoted back (or promoted back) meanwhile
                    if c.t
                        .nodes
                        .get(&c.node_id())
                        .map(|(n, _)| n.role != role)
                        .unwrap_or(true)
                    {
                        return;
                    }
                }
            }
        };
        self.moving.store(true, std::sync::atomic::Ordering::SeqCst);
        c.stop().await;
        *self.active.write().unwrap() = None;
        if role == "worker" {
            // a worker keeps no store (it reads the managers' through its leaf)
            let _ = std::fs::remove_dir_all(self.files.store());
        }
        if let Err(e) = local.save(&self.files.state()) {
            tracing::error!(error = %e, "saving the swarm state");
        }
        loop {
            match Cluster::start(self.clone(), local.clone()).await {
                Ok(nc) => {
                    *self.active.write().unwrap() = Some(nc);
                    self.moving
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!(node = %local.node_id, role, "this node now runs as a {role}");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "starting in the new role; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// This node's state in `role`: a certificate for it (signed here with the swarm's
    /// CA, read from the store), the managers, and a manager's store key and routes.
    async fn next_local(&self, c: &Cluster, role: &str) -> Result<LocalState, BusError> {
        let kv = c
            .store
            .js
            .get_key_value(buckets::PKI)
            .await
            .map_err(|e| BusError::internal(e.to_string()))?;
        let entry = kv
            .get("ca")
            .await
            .map_err(|e| BusError::internal(e.to_string()))?
            .ok_or_else(|| BusError::internal("the swarm's CA is missing"))?;
        let pki: PkiRecord =
            serde_json::from_slice(&entry).map_err(|e| BusError::internal(e.to_string()))?;
        let (cluster, _) =
            c.t.cluster
                .get("swarm")
                .ok_or_else(|| BusError::internal("the swarm record is missing"))?;
        let mut local = c.local.read().unwrap().clone();
        let manager = role == "manager";
        let ca = crate::ca::Ca {
            cert_pem: cluster.ca_cert.clone(),
            key_pem: pki.ca_key.clone(),
        };
        let (lip, _) = crate::local::host_port(&local.listen_addr);
        let cert = ca
            .sign_node(
                &local.node_id,
                &local.cluster_id,
                manager,
                &[local.advertise_addr.clone(), lip],
            )
            .map_err(BusError::internal)?;
        crate::cluster::write_tls(
            &self.files,
            &cluster.ca_cert,
            &cert.chain_pem,
            &cert.key_pem,
        )
        .map_err(|e| BusError::internal(e.to_string()))?;
        local.node_key = None;
        local.kek = None;
        local.sealed.clear();
        local.role = role.to_string();
        local.managers = managers(c);
        if manager {
            local.store_key = ids::random_hex(32);
            local.route_user = pki.route_user.clone();
            local.route_password = pki.route_password.clone();
            local.clustered = true;
            if local.sys_password.is_empty() {
                local.sys_password = ids::random_hex(24);
            }
        } else {
            local.store_key.clear();
            local.route_user.clear();
            local.route_password.clear();
            local.managers.retain(|m| m.node_id != local.node_id);
            if local.local_port == 0 {
                local.local_port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .map_err(|e| BusError::internal(e.to_string()))?;
            }
        }
        Ok(local)
    }
}

/// Managers: keep the routes in step with the managers in the store; the leader takes
/// a demoted (or removed) manager's server out of the JetStream cluster and scales the
/// buckets to the managers left.
pub async fn follow_managers(c: Arc<Cluster>) {
    c.t.nodes.wait_ready().await;
    // every manager seen, and those whose server is out of the JetStream cluster
    let mut known: BTreeSet<String> = c
        .local
        .read()
        .unwrap()
        .managers
        .iter()
        .map(|m| m.node_id.clone())
        .collect();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    // removed, and out of every bucket's group
    let mut clear: BTreeSet<String> = BTreeSet::new();
    let mut scaled: Option<usize> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = managers(&c);
        if now.iter().all(|m| m.node_id != c.node_id()) {
            continue; // demoted: the role watch moves this node
        }
        if !c.local.read().unwrap().clustered {
            continue; // a lone manager: the store's move (crate::migrate) comes first
        }
        known.extend(now.iter().map(|m| m.node_id.clone()));
        removed.retain(|id| now.iter().all(|m| &m.node_id != id));
        save_managers(&c, &now);
        if !*c.is_leader.borrow() {
            scaled = None;
            continue;
        }
        let gone: Vec<String> = known
            .iter()
            .filter(|id| now.iter().all(|m| &m.node_id != *id) && !removed.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            match remove_peer(&c, &server_name(&id)).await {
                Ok(()) => {
                    tracing::info!(node = %id, "a demoted manager's server left the store's cluster");
                    removed.insert(id);
                    scaled = None;
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "removing a demoted manager's server from the store's cluster")
                }
            }
        }
        // The meta leader takes a removed server out of each stream's group in its own
        // time: scaling a bucket before that lets nats-server shrink the group around
        // the server that is gone (it is not marked offline once it runs again as a
        // leaf), which leaves the stream without a quorum. Scale once no stream names a
        // removed server, and take it out of a stream that keeps it.
        let mut lingering = false;
        clear.retain(|id| removed.contains(id));
        for id in removed.iter().filter(|id| !clear.contains(*id)).cloned().collect::<Vec<_>>() {
            match take_out_of_streams(&c, &server_name(&id)).await {
                Ok(0) => {
                    clear.insert(id);
                }
                Ok(n) => {
                    tracing::info!(node = %id, streams = n, "a removed manager's server still in the buckets' groups");
                    lingering = true;
                }
                Err(e) => {
                    tracing::debug!(node = %id, error = %e, "the buckets' groups");
                    lingering = true;
                }
            }
        }
        if lingering {
            scaled = None;
            continue;
        }
        let want = now.len().clamp(1, 3);
        if scaled != Some(want) {
            match crate::store::scale(&c.store.js, want).await {
                Ok(()) => {
                    tracing::info!(replicas = want, "the store's buckets follow the managers");
                    scaled = Some(want);
                }
                Err(e) => tracing::debug!(error = %e, "scaling the buckets"),
            }
        }
        if scaled == Some(want) {
            mark_store_members(&c, want).await;
        }
    }
}

/// Workers: remember the managers the store names (`state.json`), which are the leaf
/// remotes the node's swarm server dials when it starts again. The live leaf connection
/// learns the other managers' leaf addresses from the manager it is connected to
/// (nats-server advertises its cluster's), so it fails over without this; a node
/// started again would otherwise dial only the managers it knew when it joined.
pub async fn remember_managers(c: Arc<Cluster>) {
    c.t.nodes.wait_ready().await;
    loop {
        let now = managers(&c);
        if !now.is_empty() && !c.local.read().unwrap().is_manager() {
            save_managers(&c, &now);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Keep the managers the store names in this node's `state.json` when they changed: a
/// manager's routes, a worker's leaf remotes, which its swarm server dials when it
/// starts again.
fn save_managers(c: &Cluster, now: &[ManagerAddr]) {
    let mut l = c.local.write().unwrap();
    if l.managers == now {
        return;
    }
    tracing::info!(managers = now.len(), "the managers changed: remembered for the next start");
    l.managers = now.to_vec();
    if let Err(e) = l.save(&c.svc.files.state()) {
        tracing::warn!(error = %e, "saving the managers");
    }
}

/// The leader: a manager marked not yet in the store (`in_store: Some(false)`) is
/// marked in once its server is the leader or a current replica of every bucket.
async fn mark_store_members(c: &Cluster, replicas: usize) {
    let waiting: Vec<NodeRecord> = c.t.nodes.filter(|n| n.role == "manager" && n.in_store == Some(false));
    if waiting.is_empty() {
        return;
    }
    let mut infos = Vec::new();
    if replicas > 1 {
        for (name, _) in buckets::ALL {
            match c.store.js.get_stream(format!("KV_{name}")).await {
                Ok(mut s) => match s.info().await {
                    Ok(i) => infos.push(i.cluster.clone()),
                    Err(_) => return,
                },
                Err(_) => return,
            }
        }
    }
    let nodes = c.bucket::<NodeRecord>(buckets::NODES);
    for n in waiting {
        let me = server_name(&n.id);
        let member = infos.iter().all(|ci| {
            ci.as_ref().map(|ci| ci.leader.as_deref() == Some(me.as_str()) || ci.replicas.iter().any(|p| p.name == me && p.current && !p.offline)).unwrap_or(false)
        });
        if !member {
            continue;
        }
        tracing::info!(node = %n.id, "a new manager's server replicates the store: reachable");
        match nodes
            .modify(&n.id, |r| {
                if r.in_store != Some(false) {
                    return Ok(false);
                }
                r.in_store = None;
                Ok(true)
            })
            .await
        {
            Ok(Some((r, rev))) => c.t.nodes.note_put(&n.id, r, rev),
            Ok(None) => {}
            Err(e) => tracing::debug!(node = %n.id, error = %e, "marking a manager in the store"),
        }
    }
}

/// The buckets' streams whose group still holds `server`: each is asked to let it go
/// (`STREAM.PEER.REMOVE`) and counted.
async fn take_out_of_streams(c: &Cluster, server: &str) -> Result<usize, String> {
    let mut held = 0;
    for (name, _) in buckets::ALL {
        let stream = format!("KV_{name}");
        let mut s = c.store.js.get_stream(&stream).await.map_err(|e| e.to_string())?;
        let info = s.info().await.map_err(|e| e.to_string())?;
        let Some(ci) = info.cluster.as_ref() else { continue };
        if ci.leader.as_deref() != Some(server) && ci.replicas.iter().all(|p| p.name != server) {
            continue;
        }
        held += 1;
        let r: Result<serde_json::Value, _> = c.store.js.request(format!("STREAM.PEER.REMOVE.{stream}"), &serde_json::json!({ "peer": server })).await;
        match r {
            Ok(v) if v.get("error").is_some() => tracing::debug!(%stream, server, answer = %v, "removing a peer from a stream"),
            Ok(_) => tracing::info!(%stream, server, "a removed server taken out of a bucket's group"),
            Err(e) => tracing::debug!(%stream, server, error = %e, "removing a peer from a stream"),
        }
    }
    Ok(held)
}

/// Ask the JetStream meta leader (through the system account of this manager's
/// server) to take a server out of the cluster.
async fn remove_peer(c: &Cluster, server: &str) -> Result<(), String> {
    let (sys, addr) = {
        let l = c.local.read().unwrap();
        (
            l.sys_password.clone(),
            crate::cluster::dial_addr(&l.ports().0),
        )
    };
    let ca = std::fs::read_to_string(c.svc.files.ca()).map_err(|e| e.to_string())?;
    let tls = crate::tls::client_config(&ca, None).map_err(|e| e.to_string())?;
    let client = crate::tls::connect_once(&addr, "sys", &sys, tls, None).await.map_err(|e| e.to_string())?;
    let asked = berth_bus::cluster::ask_json::<_, serde_json::Value>(&client, "$JS.API.SERVER.REMOVE".into(), &serde_json::json!({ "peer": server }), Duration::from_secs(5)).await;
    let v = asked.map_err(|e| match e {
        berth_bus::cluster::AskError::NoAnswer => "no answer from the meta leader".to_string(),
        e => e.to_string(),
    })?;
    match v.get("error") {
        None => Ok(()),
        // already out (a previous leader removed it)
        Some(e)
            if e.to_string().contains("not a member") || e.to_string().contains("not found") =>
        {
            Ok(())
        }
        Some(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mgr<'a>(id: &'a str, state: &str) -> (&'a str, bool) {
        (id, state == "ready")
    }

    #[test]
    fn demotion_keeps_a_quorum() {
        // three managers up: any one may go
        assert!(can_remove_manager(
            &[mgr("a", "ready"), mgr("b", "ready"), mgr("c", "ready")],
            "a"
        ));
        // one of three down: demoting another up leaves 1 of 2
        assert!(!can_remove_manager(
            &[mgr("a", "ready"), mgr("b", "ready"), mgr("c", "down")],
            "a"
        ));
        // but demoting the down one leaves 2 of 2
        assert!(can_remove_manager(
            &[mgr("a", "ready"), mgr("b", "ready"), mgr("c", "down")],
            "c"
        ));
        // two managers up: one may go (1 of 1 left)
        assert!(can_remove_manager(
            &[mgr("a", "ready"), mgr("b", "ready")],
            "b"
        ));
    }
}
