//! A lone manager's store is standalone JetStream (nats-server 2.9 elects no meta leader
//! with fewer than two peers), and a standalone server restarted as a cluster member does
//! not bring its streams into the cluster. So when the swarm gets its second manager, the
//! first one moves the store: it reads every bucket, restarts its server as a cluster
//! member with an empty store, makes the buckets again (replicated) and writes the
//! records back, the swarm record last (managers wait for it before they lead).
//!
//! The standalone store stays on disk (`server/js-standalone`) until the copy is
//! complete: a manager that dies meanwhile reads it again when it comes back.

use crate::cluster::Cluster;
use crate::natsconf::{self, Kind, ServerConfig};
use crate::server::SwarmServer;
use crate::store::{self, buckets, Store};
use crate::SwarmService;
use bus_schema::BusError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Every bucket's live records (JSON values), except the transient ones.
pub type Snapshot = BTreeMap<String, Vec<(String, serde_json::Value)>>;

const TRANSIENT: &[&str] = &[buckets::LEADER, buckets::HEARTBEATS];

pub async fn snapshot(s: &Store) -> Result<Snapshot, BusError> {
    let mut out = Snapshot::new();
    for (name, _) in buckets::ALL {
        if TRANSIENT.contains(name) {
            continue;
        }
        let rows = s.bucket::<serde_json::Value>(name).list().await?;
        out.insert(name.to_string(), rows.into_iter().map(|(k, v, _)| (k, v)).collect());
    }
    Ok(out)
}

/// Write a snapshot into (new, empty) buckets, the swarm record last.
pub async fn restore(s: &Store, snap: &Snapshot) -> Result<(), BusError> {
    let mut last = None;
    for (name, rows) in snap {
        let b = s.bucket::<serde_json::Value>(name);
        for (k, v) in rows {
            if name == buckets::CLUSTER {
                last = Some((k.clone(), v.clone()));
                continue;
            }
            b.put(k, v).await?;
        }
    }
    if let Some((k, v)) = last {
        s.bucket::<serde_json::Value>(buckets::CLUSTER).put(&k, &v).await?;
    }
    Ok(())
}

/// [`restore`], again while the new buckets' streams elect their leaders (a put
/// answers "no stream found" until then); the server is restarted only after that.
async fn restore_patiently(s: &Store, snap: &Snapshot) -> Result<(), BusError> {
    let mut last = None;
    for _ in 0..60 {
        match restore(s, snap).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e.message, "restoring the store; trying again");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| BusError::internal("restoring the store")))
}

fn standalone_dir(svc: &SwarmService) -> std::path::PathBuf {
    svc.files.dir.join("server").join("js-standalone")
}

/// Managers: wait for a second manager while the store is standalone, then move it.
pub async fn watch(c: Arc<Cluster>) {
    let mut rx = c.t.nodes.subscribe();
    loop {
        if c.local.read().unwrap().clustered {
            return;
        }
        if c.t.nodes.filter(|n| n.role == "manager").len() >= 2 {
            // The join's answer leaves before the server restarts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let svc = c.svc.clone();
            tokio::spawn(async move { svc.move_store().await });
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl SwarmService {
    /// Move the standalone store into a JetStream cluster with the other managers.
    pub async fn move_store(self: &Arc<Self>) {
        let _g = self.transition.lock().await;
        let Some(c) = self.active() else { return };
        if c.local.read().unwrap().clustered {
            return;
        }
        self.moving.store(true, std::sync::atomic::Ordering::SeqCst);
        c.stop_loops();
        let snap = loop {
            match snapshot(&c.store).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the store to move it; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut local = c.local.read().unwrap().clone();
        local.managers = managers_of(&snap);
        local.clustered = true;
        c.stop().await;
        *self.active.write().unwrap() = None;
        let js = self.files.store();
        let keep = standalone_dir(self);
        let _ = std::fs::remove_dir_all(&keep);
        if let Err(e) = std::fs::rename(&js, &keep) {
            tracing::error!(error = %e, "keeping the standalone store");
        }
        if let Err(e) = local.save(&self.files.state()) {
            tracing::error!(error = %e, "saving the swarm state");
        }
        self.finish_move(local, snap).await;
    }

    /// Start as a cluster member, restore the records, drop the standalone copy.
    async fn finish_move(self: &Arc<Self>, local: crate::local::LocalState, snap: Snapshot) {
        loop {
            match Cluster::start_quiet(self.clone(), local.clone()).await {
                Ok(c) => match restore_patiently(&c.store, &snap).await {
                    Ok(()) => {
                        let _ = std::fs::remove_dir_all(standalone_dir(self));
                        c.start_loops();
                        *self.active.write().unwrap() = Some(c);
                        self.moving.store(false, std::sync::atomic::Ordering::SeqCst);
                        tracing::info!("the store is now replicated across the managers");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "restoring the store; trying again");
                        c.stop().await;
                    }
                },
                Err(e) => tracing::warn!(error = %e, "waiting for the other managers to form the store's cluster"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// After a restart in the middle of a move: read the standalone copy again (a
    /// temporary standalone server on it) and finish.
    pub async fn resume_move(self: &Arc<Self>, local: crate::local::LocalState) -> bool {
        let keep = standalone_dir(self);
        if !keep.exists() {
            return false;
        }
        let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => a.port(),
            Err(_) => return false,
        };
        let conf_path = self.files.dir.join("server").join("recover.conf");
        let mut files = self.files.clone();
        files.dir = self.files.dir.clone();
        let cfg = ServerConfig {
            node_id: format!("{}-recover", local.node_id),
            files: files.clone(),
            kind: Kind::Manager {
                client: format!("127.0.0.1:{port}"),
                leaf: format!("127.0.0.1:{}", port.wrapping_add(1)),
                route: format!("127.0.0.1:{}", port.wrapping_add(2)),
                routes: Vec::new(),
                cluster_name: "recover".into(),
                route_user: "r".into(),
                route_password: crate::ids::random_hex(8),
                users: Vec::new(),
                sys_password: crate::ids::random_hex(8),
            },
            local_user: local.local_user.clone(),
            local_password: local.local_password.clone(),
            store_key: local.store_key.clone(),
            key_file: local.key_file(&files),
        };
        self.moving.store(true, std::sync::atomic::Ordering::SeqCst);
        let text = natsconf::render(&cfg).replace(&format!("{:?}", files.store().display().to_string()), &format!("{:?}", keep.display().to_string()));
        if natsconf::write_private(&conf_path, &text).is_err() {
            return false;
        }
        let snap = async {
            let mut srv = SwarmServer::start(&conf_path, &self.logs.join("swarm-server.log"), &format!("127.0.0.1:{port}"), cfg.env()).await.ok()?;
            let res = async {
                let ca = std::fs::read_to_string(files.ca()).ok()?;
                let tls = crate::tls::client_config(&ca, None).ok()?;
                let client = crate::tls::connect_once(&format!("127.0.0.1:{port}"), &local.local_user, &local.local_password, tls, None).await.ok()?;
                let js = async_nats::jetstream::new(client);
                let s = store::open(&js, 1).await.ok()?;
                snapshot(&s).await.ok()
            }
            .await;
            srv.stop().await;
            res
        }
        .await;
        let _ = std::fs::remove_file(&conf_path);
        match snap {
            Some(s) => {
                self.finish_move(local, s).await;
                true
            }
            None => {
                self.moving.store(false, std::sync::atomic::Ordering::SeqCst);
                false
            }
        }
    }
}

fn managers_of(snap: &Snapshot) -> Vec<crate::local::ManagerAddr> {
    let mut v: Vec<crate::local::ManagerAddr> = snap
        .get(buckets::NODES)
        .map(|rows| {
            rows.iter()
                .filter_map(|(_, v)| serde_json::from_value::<crate::model::NodeRecord>(v.clone()).ok())
                .filter(|n| n.role == "manager")
                .map(|n| crate::local::ManagerAddr { node_id: n.id, client: n.bus.client_addr, leaf: n.bus.leaf_addr, route: n.bus.route_addr })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    v
}
