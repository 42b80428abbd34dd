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
    /// The revision up to which the copy holds every change of its bucket.
    upto: tokio::sync::watch::Sender<u64>,
}

impl<T: Clone + Send + Sync + 'static> Table<T> {
    pub fn new() -> Arc<Table<T>> {
        Arc::new(Table { map: RwLock::new(HashMap::new()), gen: tokio::sync::watch::channel(0).0, ready: tokio::sync::watch::channel(false).0, upto: tokio::sync::watch::channel(0).0 })
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

    /// The copy holds every change up to revision `rev` of its bucket.
    fn advance(&self, rev: u64) {
        self.upto.send_if_modified(|u| {
            let more = rev > *u;
            if more {
                *u = rev;
            }
            more
        });
    }

    /// Wait until the copy holds every change up to revision `rev` (a revision the
    /// bucket had when asked: reads after it see what was written before).
    pub async fn wait_upto(&self, rev: u64) {
        let mut rx = self.upto.subscribe();
        let _ = rx.wait_for(|u| *u >= rev).await;
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
        self.advance(upto);
        self.ready.send_replace(true);
        self.bump();
    }
}

/// How often a copy is checked against its bucket.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// How long starting a watch may take.
const WATCH_START: Duration = Duration::from_secs(15);

/// At most this many changes are read one by one in a check (a longer gap is left to
/// the watch).
const FILL_MAX: usize = 256;

/// Checks in a row that found changes the watch had not delivered (and it delivered
/// nothing meanwhile) before the watch is rebuilt; in a catch-up, checks in a row
/// without a delivery.
const STALLED_CHECKS: u32 = 3;
const CATCH_UP_STALLED_CHECKS: u32 = 5;

/// Keep `table` a copy of `bucket` until the task is aborted.
///
/// A watch (an ordered consumer) delivers changes as they are written. It can stall:
/// its consumer lived on a server that died, and the client re-makes it only after
/// missed heartbeats (~8 s), then needs the JetStream meta leader, which is itself being
/// re-elected after a manager's loss (4–9 s in nats-server's raft). Seen: a new leader
/// saw a `service scale` 9 s late; a worker never saw a task scheduled to it. So every
/// STALL_CHECK a copy that caught up once reads the changes after the last revision it
/// holds with direct gets, which any replica answers — while its watch runs without
/// delivering, and while a new watch is being made. A watch that stays behind is rebuilt.
pub async fn follow<T>(bucket: Bucket<T>, table: Arc<Table<T>>)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    // the revision up to which the copy holds every change (once caught up)
    let mut upto: Option<u64> = None;
    loop {
        if let Err(e) = follow_once(&bucket, &table, &mut upto).await {
            tracing::info!(bucket = %bucket.name, error = %e, "watch ended; watching again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Read the changes after `upto` one by one into `table`: how many there were.
async fn fill<T>(bucket: &Bucket<T>, table: &Table<T>, upto: &mut u64) -> usize
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    match bounded("reading the changes", bucket.changes_after(*upto, FILL_MAX)).await {
        Ok(changes) => {
            let n = changes.len();
            for ch in changes {
                *upto = (*upto).max(revision(&ch));
                table.apply(ch);
            }
            table.advance(*upto);
            if n > 0 {
                tracing::debug!(bucket = %bucket.name, n, upto = *upto, "read changes the watch had not delivered");
                table.bump();
            }
            n
        }
        Err(e) => {
            // the store is away: the watch notices too
            tracing::debug!(bucket = %bucket.name, error = %e, "no changes read");
            0
        }
    }
}

/// `fut` within WATCH_START: a JetStream request that never answers would otherwise hold
/// the copy for ever.
async fn bounded<R>(what: &str, fut: impl std::future::Future<Output = Result<R, crate::store::StoreError>>) -> Result<R, crate::store::StoreError> {
    tokio::time::timeout(WATCH_START, fut).await.map_err(|_| crate::store::StoreError::Unavailable(format!("{what} timed out")))?
}

fn revision<T>(ch: &Change<T>) -> u64 {
    match ch {
        Change::Put { revision, .. } | Change::Delete { revision, .. } => *revision,
    }
}

async fn follow_once<T>(bucket: &Bucket<T>, table: &Table<T>, upto: &mut Option<u64>) -> Result<(), crate::store::StoreError>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    tracing::debug!(bucket = %bucket.name, "watching");
    let mut tick = tokio::time::interval(STALL_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let start = async {
        let w = bounded("starting the watch", bucket.watch_all()).await?;
        let empty = bounded("asking the bucket", bucket.empty()).await?;
        Ok::<_, crate::store::StoreError>((w, empty))
    };
    tokio::pin!(start);
    let (w, empty) = loop {
        tokio::select! {
            r = &mut start => break r?,
            _ = tick.tick() => {
                if let Some(u) = upto.as_mut() {
                    fill(bucket, table, u).await;
                }
            }
        }
    };
    let mut w = Box::pin(w);
    let mut fresh: Option<HashMap<String, (T, u64)>> = Some(HashMap::new());
    if empty {
        // (not the bucket's last revision: a write made since `empty` was asked would
        // count as held, and the watch's delivery of it be skipped)
        table.replace(fresh.take().unwrap(), 0);
        *upto = Some(upto.unwrap_or(0));
        tracing::debug!(bucket = %bucket.name, "caught up (empty)");
    }
    // the last revision this watch delivered
    let mut seen = 0u64;
    let mut delivered = false;
    let mut stalled = 0u32;
    loop {
        let item = tokio::select! {
            item = w.next() => match item {
                Some(item) => item,
                None => break,
            },
            _ = tick.tick() => {
                let was_delivered = std::mem::replace(&mut delivered, false);
                match (fresh.is_some(), upto.as_mut()) {
                    // catching up: a watch that delivers nothing for a while is stuck
                    (true, u) => {
                        if let Some(u) = u {
                            fill(bucket, table, u).await;
                        }
                        stalled = if was_delivered { 0 } else { stalled + 1 };
                        if stalled >= CATCH_UP_STALLED_CHECKS {
                            return Err(crate::store::StoreError::Unavailable(format!("watch stalled in its catch-up at revision {seen}")));
                        }
                    }
                    (false, Some(u)) => {
                        if was_delivered {
                            stalled = 0;
                        } else if fill(bucket, table, u).await > 0 {
                            stalled += 1;
                            if stalled >= STALLED_CHECKS {
                                return Err(crate::store::StoreError::Unavailable(format!("watch stalled at revision {seen}, the bucket is at {u}")));
                            }
                        }
                    }
                    (false, None) => {}
                }
                continue;
            }
        };
        let (ch, caught_up) = item?;
        delivered = true;
        seen = seen.max(revision(&ch));
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
                    // what came after, from this watch (changes also read one by one
                    // meanwhile apply again: per key, only a newer revision changes it)
                    *upto = Some(seen);
                    tracing::debug!(bucket = %bucket.name, keys = n, seen, "caught up");
                }
            }
            None => {
                let u = upto.get_or_insert(0);
                // read one by one already
                if revision(&ch) <= *u {
                    continue;
                }
                *u = revision(&ch);
                table.apply(ch);
                table.advance(*u);
                table.bump();
            }
        }
    }
    Ok(())
}

/// Wait until `table` holds every change `bucket` has now: a read of the copy after it
/// sees every write acknowledged before the call. False when the bucket did not answer.
pub async fn caught_up<T>(bucket: &Bucket<T>, table: &Table<T>) -> bool
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    match bucket.last_revision().await {
        Ok(rev) => {
            table.wait_upto(rev).await;
            true
        }
        Err(e) => {
            tracing::debug!(bucket = %bucket.name, error = %e, "no last revision");
            false
        }
    }
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
