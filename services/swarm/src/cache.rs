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

    fn replace(&self, fresh: HashMap<String, (T, u64)>) {
        *self.map.write().unwrap() = fresh;
        self.ready.send_replace(true);
        self.bump();
    }
}

/// Keep `table` a copy of `bucket` until the task is aborted.
pub async fn follow<T>(bucket: Bucket<T>, table: Arc<Table<T>>)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    loop {
        if let Err(e) = follow_once(&bucket, &table).await {
            tracing::debug!(bucket = %bucket.name, error = %e, "watch ended; watching again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn follow_once<T>(bucket: &Bucket<T>, table: &Table<T>) -> Result<(), crate::store::StoreError>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let mut w = Box::pin(bucket.watch_all().await?);
    let mut fresh: Option<HashMap<String, (T, u64)>> = Some(HashMap::new());
    if bucket.empty().await? {
        table.replace(fresh.take().unwrap());
    }
    while let Some(item) = w.next().await {
        let (ch, caught_up) = item?;
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
                    table.replace(fresh.take().unwrap());
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
