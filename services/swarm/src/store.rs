//! The cluster's store: JetStream key-value buckets on the swarm bus, typed.
//!
//! Every object a manager decides (cluster, nodes, services, tasks, networks, secrets,
//! configs) is written here first; every node acts on what it reads back (watchers), so
//! a restarted service or node converges from the store alone. Values are JSON (the
//! Docker API types inside are JSON types; a bucket can be read with any NATS tool).
//! An object's `Version.Index` is the key's revision, so Docker's optimistic
//! concurrency (`?version=N`) is the bucket's compare-and-set.
//!
//! nats-server 2.9 lacks fields async-nats 0.51's `create_key_value` sends, so each
//! bucket's stream is created explicitly and bound with `get_key_value` (DESIGN.md).

use async_nats::jetstream::{self, kv, stream};
use bus_schema::BusError;
use futures_util::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

/// Docker's message when the managers have lost their quorum (swarmkit's
/// `lostQuorumMessage`, as the daemon returns it through gRPC).
pub const NO_QUORUM: &str = "rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

/// The buckets, by name. Node-facing buckets are readable by workers; `pki` only by
/// managers (see natsconf's permissions).
pub mod buckets {
    pub const CLUSTER: &str = "swarm_cluster";
    pub const PKI: &str = "swarm_pki";
    pub const NODES: &str = "swarm_nodes";
    pub const HEARTBEATS: &str = "swarm_heartbeats";
    pub const SERVICES: &str = "swarm_services";
    pub const TASKS: &str = "swarm_tasks";
    pub const TASK_STATUS: &str = "swarm_task_status";
    pub const NETWORKS: &str = "swarm_networks";
    pub const SECRETS: &str = "swarm_secrets";
    pub const CONFIGS: &str = "swarm_configs";
    pub const LEADER: &str = "swarm_leader";
    /// The buckets a worker binds: all but the managers' PKI.
    pub const NODE_FACING: &[&str] = &[CLUSTER, NODES, HEARTBEATS, SERVICES, TASKS, TASK_STATUS, NETWORKS, SECRETS, CONFIGS, LEADER];
    /// Every bucket, with the max age of its entries (the leader lease expires).
    pub const ALL: &[(&str, Option<std::time::Duration>)] = &[
        (CLUSTER, None),
        (PKI, None),
        (NODES, None),
        (HEARTBEATS, None),
        (SERVICES, None),
        (TASKS, None),
        (TASK_STATUS, None),
        (NETWORKS, None),
        (SECRETS, None),
        (CONFIGS, None),
        (LEADER, Some(super::LEASE_TTL)),
    ];
}

/// How long the leader's lease lives without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// Compare-and-set lost: someone wrote the key since it was read.
    #[error("update out of sequence")]
    Conflict,
    #[error("{0} already exists")]
    Exists(String),
    /// No answer from the store: JetStream has no leader (quorum lost) or is down.
    #[error("{NO_QUORUM}")]
    Unavailable(String),
    #[error("store: {0}")]
    Other(String),
}

impl From<StoreError> for BusError {
    fn from(e: StoreError) -> BusError {
        match e {
            StoreError::NotFound(m) => BusError::not_found(format!("{m} not found")),
            StoreError::Conflict => BusError::invalid("update out of sequence"),
            StoreError::Exists(m) => BusError::conflict(format!("{m} already exists")),
            StoreError::Unavailable(why) => {
                tracing::warn!(%why, "store unavailable");
                BusError::internal(NO_QUORUM)
            }
            StoreError::Other(m) => BusError::internal(m),
        }
    }
}

fn classify(msg: String) -> StoreError {
    // JetStream without a leader answers 503 "JetStream system temporarily
    // unavailable", or nothing at all (timeouts, no responders).
    let l = msg.to_lowercase();
    // A replicated bucket whose stream has lost its leader answers "no stream found"
    // too (the buckets exist from the swarm's first moment on).
    if l.contains("timed out") || l.contains("timeout") || l.contains("no responders") || l.contains("unavailable") || l.contains("503") || l.contains("no stream found") {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Other(msg)
    }
}

/// The JetStream stream config of a key-value bucket, as nats-server 2.9 accepts it.
pub fn bucket_stream(name: &str, replicas: usize, max_age: Option<Duration>) -> stream::Config {
    stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: max_age.unwrap_or_default(),
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Create (or scale) every bucket and bind them.
pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Store, StoreError> {
    let mut kvs = BTreeMap::new();
    for (name, age) in buckets::ALL {
        let cfg = bucket_stream(name, replicas, *age);
        match js.get_stream(cfg.name.clone()).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| classify(e.to_string()))?;
                if info.config.num_replicas != cfg.num_replicas {
                    let mut c = info.config.clone();
                    c.num_replicas = cfg.num_replicas;
                    // a new manager's server may not be a peer yet: the leader scales
                    // the buckets again when it is (crate::role::follow_managers)
                    if let Err(e) = js.update_stream(c).await {
                        tracing::debug!(error = %e, bucket = %name, "bucket not scaled yet");
                    }
                }
            }
            Err(_) => {
                js.create_stream(cfg).await.map_err(|e| classify(e.to_string()))?;
            }
        }
        let kv = js.get_key_value(*name).await.map_err(|e| classify(e.to_string()))?;
        kvs.insert(name.to_string(), kv);
    }
    Ok(Store { js: js.clone(), kvs })
}

/// Set every bucket's replicas (the managers changed).
pub async fn scale(js: &jetstream::Context, replicas: usize) -> Result<(), StoreError> {
    for (name, age) in buckets::ALL {
        let cfg = bucket_stream(name, replicas, *age);
        let mut s = js.get_stream(cfg.name.clone()).await.map_err(|e| classify(e.to_string()))?;
        let info = s.info().await.map_err(|e| classify(e.to_string()))?;
        if info.config.num_replicas != cfg.num_replicas {
            let mut c = info.config.clone();
            c.num_replicas = cfg.num_replicas;
            js.update_stream(c).await.map_err(|e| classify(e.to_string()))?;
        }
    }
    Ok(())
}

/// Bind the buckets a worker reads and writes (through its leaf, the swarm domain).
pub async fn bind(js: &jetstream::Context) -> Result<Store, StoreError> {
    let mut kvs = BTreeMap::new();
    for &name in buckets::NODE_FACING {
        let kv = js.get_key_value(name).await.map_err(|e| classify(e.to_string()))?;
        kvs.insert(name.to_string(), kv);
    }
    Ok(Store { js: js.clone(), kvs })
}

/// The bound buckets.
#[derive(Clone)]
pub struct Store {
    pub js: jetstream::Context,
    kvs: BTreeMap<String, kv::Store>,
}

impl Store {
    pub fn bucket<T>(&self, name: &str) -> Bucket<T> {
        Bucket { kv: self.kvs.get(name).expect("bucket opened").clone(), name: name.to_string(), _t: PhantomData }
    }
}

/// A typed view of one bucket.
pub struct Bucket<T> {
    kv: kv::Store,
    pub name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Bucket<T> {
    fn clone(&self) -> Self {
        Bucket { kv: self.kv.clone(), name: self.name.clone(), _t: PhantomData }
    }
}

/// One change seen by a watcher.
#[derive(Debug, Clone)]
pub enum Change<T> {
    Put { key: String, value: T, revision: u64 },
    Delete { key: String, revision: u64 },
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Bucket<T> {
    fn enc(v: &T) -> Result<bytes::Bytes, StoreError> {
        serde_json::to_vec(v).map(Into::into).map_err(|e| StoreError::Other(format!("encode: {e}")))
    }

    fn dec(key: &str, b: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(b).map_err(|e| StoreError::Other(format!("decode {key}: {e}")))
    }

    /// A watched put. A value that does not decode (a worker may write its own keys:
    /// a compromised one could write anything there) is seen as the key's absence,
    /// not as the end of the watch: a copy that stopped at it would stop for good.
    fn put_change(key: String, value: &[u8], revision: u64) -> Change<T> {
        match Self::dec(&key, value) {
            Ok(value) => Change::Put { key, value, revision },
            Err(e) => {
                tracing::warn!(%key, revision, error = %e, "a value that does not decode: ignored");
                Change::Delete { key, revision }
            }
        }
    }

    /// The value and its revision.
    pub async fn get(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        match self.kv.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => Ok(Some((Self::dec(key, &e.value)?, e.revision))),
            Ok(_) => Ok(None),
            Err(e) => Err(classify(e.to_string())),
        }
    }

    /// Write whatever is there.
    pub async fn put(&self, key: &str, v: &T) -> Result<u64, StoreError> {
        self.kv.put(key, Self::enc(v)?).await.map_err(|e| classify(e.to_string()))
    }

    /// Write only if the key is absent (or deleted).
    pub async fn create(&self, key: &str, v: &T) -> Result<u64, StoreError> {
        self.kv.create(key, Self::enc(v)?).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => StoreError::Exists(key.to_string()),
            _ => classify(e.to_string()),
        })
    }

    /// Write only if the key is still at `revision`.
    pub async fn update(&self, key: &str, v: &T, revision: u64) -> Result<u64, StoreError> {
        self.kv.update(key, Self::enc(v)?, revision).await.map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict,
            _ => {
                let m = e.to_string();
                if m.contains("wrong last sequence") {
                    StoreError::Conflict
                } else {
                    classify(m)
                }
            }
        })
    }

    /// Read, change and compare-and-set, again while someone else wins the race.
    /// `f` returns false to leave the object as it is. None when the key is absent.
    pub async fn modify(&self, key: &str, mut f: impl FnMut(&mut T) -> Result<bool, BusError>) -> Result<Option<(T, u64)>, BusError> {
        for _ in 0..64 {
            let Some((mut v, rev)) = self.get(key).await? else { return Ok(None) };
            if !f(&mut v)? {
                return Ok(Some((v, rev)));
            }
            match self.update(key, &v, rev).await {
                Ok(r) => return Ok(Some((v, r))),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(BusError::internal(format!("{}/{key}: too many concurrent updates", self.name)))
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.kv.delete(key).await.map_err(|e| classify(e.to_string()))
    }

    /// Delete only if the key is still at `revision`.
    pub async fn delete_at(&self, key: &str, revision: u64) -> Result<(), StoreError> {
        self.kv.delete_expect_revision(key, Some(revision)).await.map_err(|e| {
            let m = e.to_string();
            if m.contains("wrong last sequence") {
                StoreError::Conflict
            } else {
                classify(m)
            }
        })
    }

    /// Every live key with its value and revision (a consistent read of the bucket's
    /// latest values through an ordered consumer).
    pub async fn list(&self) -> Result<Vec<(String, T, u64)>, StoreError> {
        let mut out = BTreeMap::new();
        let mut w = self.watch_all().await?;
        if self.is_empty().await? {
            return Ok(Vec::new());
        }
        while let Some(ch) = tokio::time::timeout(Duration::from_secs(5), w.next()).await.map_err(|_| StoreError::Unavailable("list timed out".into()))? {
            let (key, done) = match ch? {
                (Change::Put { key, value, revision }, done) => {
                    out.insert(key.clone(), (value, revision));
                    (key, done)
                }
                (Change::Delete { key, .. }, done) => {
                    out.remove(&key);
                    (key, done)
                }
            };
            let _ = key;
            if done {
                break;
            }
        }
        Ok(out.into_iter().map(|(k, (v, r))| (k, v, r)).collect())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.state().await?.messages == 0)
    }

    /// The bucket's last revision now (its stream's last sequence).
    pub async fn last_revision(&self) -> Result<u64, StoreError> {
        Ok(self.state().await?.last_sequence)
    }

    async fn state(&self) -> Result<stream::State, StoreError> {
        // asked of the server: async-nats' `status()` answers the info cached when the
        // handle was made (a bucket empty then stayed "empty": list() answered nothing)
        Ok(self.kv.stream.get_info().await.map_err(|e| classify(e.to_string()))?.state)
    }

    /// Every change from the latest value of each key on: items are (change, caught
    /// up with the bucket's present). The stream ends when the watch breaks (the bus
    /// went away); callers start again from a fresh `watch_all`.
    pub async fn watch_all(&self) -> Result<impl futures_util::Stream<Item = Result<(Change<T>, bool), StoreError>> + Send + 'static + use<T>, StoreError> {
        // every key's last value first, then changes (async-nats' `watch_all` delivers
        // only new ones: a restarted service would start from empty tables)
        // Caught up at the stream's last message as the watch starts, or when the
        // server says nothing is pending: a bucket whose key is rewritten all the time
        // (heartbeats) after a restart got a pending count that never reached 0 in its
        // first deliveries (seen with nats-server 2.9 here: its copy never became ready, the node showed Down).
        let info = self.kv.stream.get_info().await.map_err(|e| classify(e.to_string()))?;
        let last = info.state.last_sequence;
        let w = self.kv.watch_with_history(">").await.map_err(|e| classify(e.to_string()))?;
        Ok(w.map(move |e| {
            let e = e.map_err(|e| classify(e.to_string()))?;
            let done = e.delta == 0 || e.revision >= last;
            let ch = match e.operation {
                kv::Operation::Put => Self::put_change(e.key, &e.value, e.revision),
                kv::Operation::Delete | kv::Operation::Purge => Change::Delete { key: e.key, revision: e.revision },
            };
            Ok((ch, done))
        }))
    }

    /// The changes after revision `after`, at most `max`, read one message at a time
    /// with direct gets. Any replica answers these: no consumer is made, so neither the
    /// stream's leader nor the JetStream meta leader is needed (after a manager's loss
    /// both are re-elected for seconds while a watch's new consumer waits for them).
    /// Messages a later write replaced are gone from the stream and skipped.
    pub async fn changes_after(&self, after: u64, max: usize) -> Result<Vec<Change<T>>, StoreError> {
        let prefix = format!("$KV.{}.", self.name);
        let all = format!("{prefix}>");
        let mut out = Vec::new();
        let mut next = after + 1;
        while out.len() < max {
            let m = match self.kv.stream.direct_get_next_for_subject(all.as_str(), Some(next)).await {
                Ok(m) => m,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(classify(e.to_string())),
            };
            next = m.sequence + 1;
            let Some(key) = m.subject.as_str().strip_prefix(&prefix) else { continue };
            let key = key.to_string();
            let op = m.headers.get("KV-Operation").map(|v| v.as_str().to_string());
            out.push(match op.as_deref() {
                Some("DEL") | Some("PURGE") => Change::Delete { key, revision: m.sequence },
                _ => Self::put_change(key, &m.payload, m.sequence),
            });
        }
        Ok(out)
    }

    /// Whether the bucket has no entries at all (a watcher gets nothing to catch up on).
    pub async fn empty(&self) -> Result<bool, StoreError> {
        self.is_empty().await
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::buckets;

    #[test]
    fn workers_bind_every_bucket_but_the_pki() {
        // a bucket missing here panics a worker's swarm service when it is followed
        let all: Vec<&str> = buckets::ALL.iter().map(|(n, _)| *n).filter(|n| *n != buckets::PKI).collect();
        assert_eq!(all, buckets::NODE_FACING);
    }
}
