//! In-memory copies of store buckets, fed by watchers: what the manager loops and the
//! agent act on, and what list requests read. A copy is rebuilt from the bucket's
//! latest values whenever its watch breaks (a restarted server, a lost connection), so
//! it never keeps a key the store has dropped meanwhile.

use crate::store::{Bucket, Change};
use futures_util::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub struct Table<T> {
    map: RwLock<HashMap<String, (T, u64)>>,
    /// Bumped on every change: loops wait on it.
    gen: tokio::sync::watch::Sender<u64>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl<T: Clone + Send + Sync + 'static> Table<T> {
    pub fn new() -> Arc<Table<T>> {
        Arc::new(Table { map: RwLock::new(HashMap::new()), gen: tokio::sync::watch::channel(0).0, ready: tokio::sync::watch::channel(false).0 })
    }

    pub fn get(&self, key: &str) -> Option<(T, u64)> {
        self.map.read().unwrap().get(key).cloned()
    }

    pub fn values(&self) -> Vec<(String, T, u64)> {
        self.map.read().unwrap().iter().map(|(k, (v, r))| (k.clone(), v.clone(), *r)).collect()
    }

    pub fn filter(&self, f: impl Fn(&T) -> bool) -> Vec<T> {
        self.map.read().unwrap().values().filter(|(v, _)| f(v)).map(|(v, _)| v.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }

    /// A write this process made and the store acknowledged: seen at once (the watcher
    /// delivers the same revision later and changes nothing).
    pub fn note_put(&self, key: &str, value: T, revision: u64) {
        let mut m = self.map.write().unwrap();
        match m.get(key) {
            Some((_, r)) if *r >= revision => return,
            _ => {
                m.insert(key.to_string(), (value, revision));
            }
        }
        drop(m);
        self.bump();
    }

    pub fn note_delete(&self, key: &str) {
        if self.map.write().unwrap().remove(key).is_some() {
            self.bump();
        }
    }

    fn bump(&self) {
        self.gen.send_modify(|g| *g += 1);
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.gen.subscribe()
    }

    /// Wait until the first copy is complete.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn apply(&self, ch: Change<T>) {
        let mut m = self.map.write().unwrap();
        match ch {
            Change::Put { key, value, revision } => {
                if m.get(&key).map(|(_, r)| *r < revision).unwrap_or(true) {
                    m.insert(key, (value, revision));
                }
            }
            Change::Delete { key, revision } => {
                if m.get(&key).map(|(_, r)| *r < revision).unwrap_or(false) {
                    m.remove(&key);
                }
            }
        }
    }

    /// The copy becomes `fresh`, a new watch's catch-up to revision `upto`; values
    /// newer than that already here (this process's acknowledged writes, made while
    /// the watch caught up) are kept: dropping them made the leader see fewer tasks
    /// than it had just made, and make them again.
    fn replace(&self, mut fresh: HashMap<String, (T, u64)>, upto: u64) {
        let mut m = self.map.write().unwrap();
        for (k, (v, r)) in m.drain() {
            if r > upto && fresh.get(&k).map(|(_, fr)| *fr < r).unwrap_or(true) {
                fresh.insert(k, (v, r));
            }
        }
        *m = fresh;
        drop(m);
        self.ready.send_replace(true);
        self.bump();
    }
}

/// How often a watch is checked against its bucket's last revision.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// How long starting a watch may take.
const WATCH_START: Duration = Duration::from_secs(15);

/// Keep `table` a copy of `bucket` until the task is aborted.
pub async fn follow<T>(bucket: Bucket<T>, table: Arc<Table<T>>)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    loop {
        if let Err(e) = follow_once(&bucket, &table).await {
            tracing::info!(bucket = %bucket.name, error = %e, "watch ended; watching again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn follow_once<T>(bucket: &Bucket<T>, table: &Table<T>) -> Result<(), crate::store::StoreError>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    tracing::debug!(bucket = %bucket.name, "watching");
    // (bounded: a JetStream request that never answers would hold the copy for ever)
    let mut w = Box::pin(tokio::time::timeout(WATCH_START, bucket.watch_all()).await.map_err(|_| crate::store::StoreError::Unavailable("starting the watch timed out".into()))??);
    let mut fresh: Option<HashMap<String, (T, u64)>> = Some(HashMap::new());
    if tokio::time::timeout(WATCH_START, bucket.empty()).await.map_err(|_| crate::store::StoreError::Unavailable("asking the bucket timed out".into()))?? {
        table.replace(fresh.take().unwrap(), 0);
        tracing::debug!(bucket = %bucket.name, "caught up (empty)");
    }
    // A watch can stall without ending: its consumer lived on a server that died, and
    // the client's re-creation of it, tried while the managers had no quorum, backs
    // off to 10 s a try (seen: a worker never saw a task scheduled to it after a
    // manager's restart). The bucket's last revision is asked of the server every
    // STALL_CHECK; behind it three times in a row with nothing delivered between, the
    // watch is rebuilt.
    let mut seen = 0u64;
    let mut behind_at: Option<(u64, u32)> = None;
    let mut tick = tokio::time::interval(STALL_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let item = tokio::select! {
            item = w.next() => match item {
                Some(item) => item,
                None => break,
            },
            _ = tick.tick() => {
                let last = match tokio::time::timeout(WATCH_START, bucket.last_revision()).await {
                    Ok(Ok(l)) => l,
                    other => {
                        // the store is away: the watch notices too
                        tracing::debug!(bucket = %bucket.name, seen, answer = ?other.map(|r| r.map_err(|e| e.to_string())), "stall check without an answer");
                        continue;
                    }
                };
                if last > seen {
                    tracing::debug!(bucket = %bucket.name, seen, last, caught_up = fresh.is_none(), "watch behind its bucket");
                }
                behind_at = match (last > seen, behind_at) {
                    (false, _) => None,
                    (true, Some((was, n))) if was == seen && n >= 2 => {
                        return Err(crate::store::StoreError::Unavailable(format!("watch stalled at revision {seen}, the bucket is at {last}")));
                    }
                    (true, Some((was, n))) if was == seen => Some((was, n + 1)),
                    (true, _) => Some((seen, 1)),
                };
                continue;
            }
        };
        let (ch, caught_up) = item?;
        seen = seen.max(match &ch {
            Change::Put { revision, .. } | Change::Delete { revision, .. } => *revision,
        });
        match fresh.as_mut() {
            Some(f) => {
                match ch {
                    Change::Put { key, value, revision } => {
                        f.insert(key, (value, revision));
                    }
                    Change::Delete { key, .. } => {
                        f.remove(&key);
                    }
                }
                if caught_up {
                    let n = f.len();
                    table.replace(fresh.take().unwrap(), seen);
                    tracing::debug!(bucket = %bucket.name, keys = n, seen, "caught up");
                }
            }
            None => {
                table.apply(ch);
                table.bump();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuilt_copy_keeps_writes_newer_than_its_catch_up() {
        let t: Arc<Table<String>> = Table::new();
        t.note_put("old", "gone from the store".into(), 3);
        t.note_put("a", "a at 4".into(), 4);
        // written by this process while the new watch caught up to revision 7
        t.note_put("new", "made at 9".into(), 9);
        t.note_put("b", "b at 10".into(), 10);
        let mut fresh = HashMap::new();
        fresh.insert("a".to_string(), ("a at 6".to_string(), 6));
        fresh.insert("b".to_string(), ("b at 7".to_string(), 7));
        t.replace(fresh, 7);
        let mut v: Vec<(String, String, u64)> = t.values();
        v.sort();
        assert_eq!(
            v,
            vec![
                ("a".into(), "a at 6".into(), 6),
                ("b".into(), "b at 10".into(), 10),
                ("new".into(), "made at 9".into(), 9),
            ]
        );
        assert!(t.is_ready());
    }
}
