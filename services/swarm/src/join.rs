//! The join handshake, the only thing a node says to the swarm before it is a member:
//! it dials a manager's client port with TLS, trusting only the CA whose digest its
//! token carries, as the `join` user (which may only ask the join subject), and asks to
//! join with the token. Any manager answers: the token names the role; the new node's
//! record (with its bus user) goes to the store first, then the answer carries its
//! certificate and key, its password, the CA and where the managers are.
//!
//! These messages travel only on the swarm bus between swarm services, so they are
//! defined here; the subject is bus-schema's (`swarm::cluster::JOIN`).

use crate::cluster::Cluster;
use crate::local::{self, LocalState, ManagerAddr};
use crate::model::*;
use crate::store::buckets;
use crate::{ids, natsconf, SwarmService};
use bus_schema::{docker, BusError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub description: docker::NodeDescription,
    /// The IP other nodes reach the new node at.
    pub advertise_addr: String,
    /// Where a joining manager's swarm server will listen (`ip:port`).
    pub listen_addr: String,
    pub availability: Option<docker::NodeSpecAvailabilityEnum>,
    /// The joining node's own random (32 hex digits): asked again, the same join gets
    /// the same node (its ID is made from this), not a second one.
    #[serde(default)]
    pub join_id: String,
    /// The password it chose for its bus user (48 hex digits; the managers keep only its
    /// bcrypt hash, and check it when the same join is asked again).
    #[serde(default)]
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReply {
    pub node_id: String,
    pub cluster_id: String,
    pub role: String,
    pub ca_cert: String,
    pub cert_chain: String,
    pub key: String,
    pub user: String,
    pub password: String,
    pub managers: Vec<ManagerAddr>,
    pub route_user: String,
    pub route_password: String,
    pub clustered: bool,
}

type Answer = Result<JoinReply, String>;

/// Docker's answer to a token no manager issued.
pub const ERR_BAD_TOKEN: &str = "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster";

/// How long a manager waits for the store to answer a join (it moves into the
/// managers' cluster for a while after a manager joined).
const JOIN_STORE_WAIT: Duration = Duration::from_secs(40);

/// How long a joining node waits for an answer before it asks again.
const JOIN_ASK_AGAIN: Duration = Duration::from_secs(5);

/// What a joining node says of itself in every ask of one join.
pub struct Joiner {
    pub join_id: String,
    pub password: String,
}

/// Managers: answer join requests until aborted.
pub async fn serve(c: Arc<Cluster>) {
    crate::cluster::serve_requests(c, bus_schema::swarm::cluster::JOIN.to_string(), Some("managers"), |c, msg, reply| async move {
        let ans: Answer = match serde_json::from_slice::<JoinRequest>(&msg.payload) {
            Ok(req) => accept(&c, req).await.map_err(|e| e.message),
            Err(e) => Err(format!("bad join request: {e}")),
        };
        let body: bytes::Bytes = serde_json::to_vec(&ans).unwrap_or_default().into();
        // (an answer lost on its way, as while every manager reloads its users for the
        // new node, is asked for again by the joining node: see `handshake`)
        let _ = c.client.publish(reply, body).await;
    })
    .await
}

/// Constant-time comparison of two tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn accept(c: &Cluster, req: JoinRequest) -> Result<JoinReply, BusError> {
    // Right after a manager joined, the store is being written back into the managers'
    // cluster (see crate::migrate), the swarm record last: wait for it a while.
    // The CA's bucket too: right after the move its stream may not answer yet ("requested
    // JetStream resource does not exist" failed a worker's join in e2e).
    let t = std::time::Instant::now();
    let (cluster, pki) = loop {
        let got = async {
            let cl = c.bucket::<ClusterRecord>(buckets::CLUSTER).get("swarm").await?;
            let pki = c.bucket::<PkiRecord>(buckets::PKI).get("ca").await?;
            Ok::<_, crate::store::StoreError>(cl.zip(pki))
        };
        match got.await {
            Ok(Some(((cl, _), (pki, _)))) => break (cl, pki),
            Ok(None) | Err(_) if t.elapsed() < JOIN_STORE_WAIT => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(None) => return Err(BusError::unavailable("the swarm's store is not ready")),
            Err(e) => return Err(e.into()),
        }
    };
    let role = if same(&req.token, &cluster.manager_token) {
        "manager"
    } else if same(&req.token, &cluster.worker_token) {
        "worker"
    } else {
        return Err(BusError::invalid(ERR_BAD_TOKEN));
    };
    let ca = crate::ca::Ca { cert_pem: cluster.ca_cert.clone(), key_pem: pki.ca_key.clone() };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (node_id, password) = if req.join_id.is_empty() {
        (ids::new_id(), ids::random_hex(24))
    } else if hex(&req.join_id, 32) && hex(&req.password, 48) {
        (ids::join_node_id(&cluster.id, &req.join_id), req.password.clone())
    } else {
        return Err(BusError::invalid("bad join request: join ID or password"));
    };
    let (lip, _) = local::host_port(&req.listen_addr);
    let cert = ca.sign_node(&node_id, &cluster.id, role == "manager", &[req.advertise_addr.clone(), lip]).map_err(BusError::internal)?;
    let user = format!("n-{node_id}");
    let availability = req.availability.unwrap_or(docker::NodeSpecAvailabilityEnum::ACTIVE);
    let mut rec = crate::cluster::node_record(&node_id, role, availability, req.description.clone(), &req.advertise_addr, &req.listen_addr, &user, &password)?;
    // a joining manager is Reachable once its server replicates the store
    rec.in_store = (role == "manager").then_some(false);
    // The store first: every manager reloads its server's users from it.
    let nodes = c.bucket::<NodeRecord>(buckets::NODES);
    let rev = loop {
        match nodes.create(&node_id, &rec).await {
            Ok(rev) => break rev,
            // the same join asked again (its answer lost), or a create whose answer was
            // lost: the record is there, and it is this join's if the password is
            Err(e) => match nodes.get(&node_id).await {
                Ok(Some((have, rev))) => {
                    if have.role != role || !bcrypt::verify(&password, &have.bus.password_hash).unwrap_or(false) {
                        return Err(BusError::invalid("bad join request: the node exists"));
                    }
                    rec = have;
                    break rev;
                }
                _ if t.elapsed() < JOIN_STORE_WAIT => tokio::time::sleep(Duration::from_millis(250)).await,
                _ => return Err(e.into()),
            },
        }
    };
    c.t.nodes.note_put(&node_id, rec, rev);
    let mut managers: Vec<ManagerAddr> = c
        .t
        .nodes
        .filter(|n| n.role == "manager")
        .into_iter()
        .map(|n| ManagerAddr { node_id: n.id.clone(), client: n.bus.client_addr.clone(), leaf: n.bus.leaf_addr.clone(), route: n.bus.route_addr.clone() })
        .collect();
    managers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let local = c.local.read().unwrap().clone();
    let manager = role == "manager";
    Ok(JoinReply {
        node_id,
        cluster_id: cluster.id.clone(),
        role: role.into(),
        ca_cert: cluster.ca_cert.clone(),
        cert_chain: cert.chain_pem,
        key: cert.key_pem,
        user,
        password,
        managers,
        route_user: if manager { pki.route_user.clone() } else { String::new() },
        route_password: if manager { pki.route_password.clone() } else { String::new() },
        clustered: manager || local.clustered,
    })
}

/// `docker swarm join`: the handshake, then the membership.
pub async fn join(svc: Arc<SwarmService>, req: docker::SwarmJoinRequest) -> Result<Arc<Cluster>, BusError> {
    let token = req.join_token.clone().unwrap_or_default();
    let digest = ids::parse_token(&token).ok_or_else(|| BusError::invalid("invalid join token"))?;
    let remotes = req.remote_addrs.clone().unwrap_or_default();
    if remotes.is_empty() {
        return Err(BusError::invalid("at least 1 RemoteAddr is required to join"));
    }
    let listen = req.listen_addr.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "0.0.0.0:2377".into());
    let (lip, lport) = local::host_port(&listen);
    let listen = local::join(&lip, lport);
    let advertise = crate::cluster::advertise_ip(req.advertise_addr.as_deref().unwrap_or(""), &lip)?;
    let mut last = BusError::unavailable("no manager answered");
    let mut answer = None;
    let me = Joiner { join_id: ids::random_hex(16), password: ids::random_hex(24) };
    for r in &remotes {
        let (h, p) = local::host_port(r);
        match handshake(&local::join(&h, p), digest, &token, &svc, &advertise, &listen, None, &me).await {
            Ok(a) => {
                answer = Some(a);
                break;
            }
            Err(e) => last = e,
        }
    }
    let a = answer.ok_or(last)?;
    let files = svc.files.clone();
    let cleanup = |e: BusError| {
        let _ = std::fs::remove_dir_all(&files.dir);
        e
    };
    crate::cluster::write_tls(&files, &a.ca_cert, &a.cert_chain, &a.key).map_err(|e| cleanup(BusError::internal(e.to_string())))?;
    let manager = a.role == "manager";
    let local = LocalState {
        node_id: a.node_id.clone(),
        cluster_id: a.cluster_id.clone(),
        role: a.role.clone(),
        advertise_addr: advertise,
        listen_addr: listen,
        user: a.user.clone(),
        password: a.password.clone(),
        local_user: "local".into(),
        local_password: ids::random_hex(24),
        store_key: if manager { ids::random_hex(32) } else { String::new() },
        sys_password: ids::random_hex(24),
        route_user: a.route_user.clone(),
        route_password: a.route_password.clone(),
        managers: a.managers.clone(),
        clustered: a.clustered,
        local_port: if manager { 0 } else { free_port().map_err(|e| cleanup(e))? },

        ..Default::default()
    };
    local.save(&files.state()).map_err(|e| cleanup(BusError::internal(e.to_string())))?;
    // The managers reload their users from the store; a leaf may need a moment.
    let c = crate::cluster::Cluster::start(svc.clone(), local).await.map_err(cleanup)?;
    if manager {
        // Joined once the swarm's records are in the managers' store (the first manager
        // writes them back after the move, the swarm record last): as Docker's join
        // returns once the new manager has the raft's state.
        let t = std::time::Instant::now();
        while c.t.cluster.get("swarm").is_none() && t.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(c)
}

fn free_port() -> Result<u16, BusError> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| BusError::internal(e.to_string()))
}

async fn handshake(
    addr: &str,
    digest: [u8; 32],
    token: &str,
    svc: &SwarmService,
    advertise: &str,
    listen: &str,
    availability: Option<docker::NodeSpecAvailabilityEnum>,
    me: &Joiner,
) -> Result<JoinReply, BusError> {
    let (tls, _seen) = crate::tls::join_config(digest).map_err(BusError::internal)?;
    let inbox = bus_schema::subject::inbox_prefix(natsconf::JOIN_USER);
    let client = crate::tls::connect_once(addr, natsconf::JOIN_USER, natsconf::JOIN_PASSWORD, tls, Some(inbox))
        .await
        .map_err(|e| {
            let m = e.to_string();
            if m.contains("does not match the join token") || m.contains("CA does not match") {
                BusError::invalid(format!("error while validating Root CA Certificate: remote CA does not match fingerprint. Expected: {}", hex::encode(digest)))
            } else {
                BusError::unavailable(format!("could not connect to {addr}: {m}"))
            }
        })?;
    let req = JoinRequest {
        token: token.to_string(),
        description: svc.host.description(),
        advertise_addr: advertise.to_string(),
        listen_addr: listen.to_string(),
        availability,
        join_id: me.join_id.clone(),
        password: me.password.clone(),
    };
    let body: bytes::Bytes = serde_json::to_vec(&req).map_err(|e| BusError::internal(e.to_string()))?.into();
    // Asked again every few seconds until answered (the same join: see `accept`): an
    // answer can be lost while every manager reloads its users for the new node. Given
    // up after as long as a manager waits for the store to answer (it moves into the
    // managers' cluster for a while after another manager's join).
    let deadline = std::time::Instant::now() + JOIN_STORE_WAIT + Duration::from_secs(10);
    let msg = loop {
        let ask = async_nats::Request::new().payload(body.clone()).timeout(Some(JOIN_ASK_AGAIN));
        match client.send_request(bus_schema::swarm::cluster::JOIN.to_string(), ask).await {
            Ok(m) => break m,
            Err(e) if std::time::Instant::now() >= deadline => {
                tracing::warn!(error = %e, "the join request, unanswered");
                return Err(BusError::unavailable("Timeout was reached before node joined. The attempt to join the swarm will continue in the background. Use the \"docker info\" command to see the current swarm status of your node."));
            }
            Err(e) if matches!(e.kind(), async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders) => {
                tracing::info!(error = %e, "the join request: asking again");
                if e.kind() == async_nats::RequestErrorKind::NoResponders {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Err(e) => return Err(BusError::unavailable(format!("join request to {addr} failed: {e}"))),
        }
    };
    let ans: Answer = serde_json::from_slice(&msg.payload).map_err(|e| BusError::internal(format!("bad join answer: {e}")))?;
    ans.map_err(|m| if m == ERR_BAD_TOKEN { BusError::invalid(m) } else { BusError::unavailable(m) })
}
