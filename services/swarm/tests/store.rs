//! The store against a real nats-server 2.9 (Debian's): buckets made as that version
//! accepts them, compare-and-set, watched copies, and the leader lease's expiry.

use berth_swarm::cache::{self, Table};
use berth_swarm::model::Lease;
use berth_swarm::store::{self, buckets, StoreError};
use berth_test_support::Nats;
use std::time::{Duration, Instant};

async fn store(n: &Nats) -> store::Store {
    store_js(n).await.1
}

/// The store, and the JetStream context it was opened with (to reach the buckets'
/// streams underneath).
async fn store_js(n: &Nats) -> (async_nats::jetstream::Context, store::Store) {
    let c = async_nats::connect(n.url()).await.unwrap();
    let js = async_nats::jetstream::new(c);
    let s = store::open(&js, 1).await.unwrap();
    (js, s)
}

#[tokio::test]
async fn buckets_compare_and_set() {
    let n = Nats::start();
    let s = store(&n).await;
    let b = s.bucket::<String>(buckets::SERVICES);
    let r1 = b.create("a", &"one".to_string()).await.unwrap();
    assert!(matches!(b.create("a", &"two".to_string()).await, Err(StoreError::Exists(_))));
    let r2 = b.update("a", &"two".to_string(), r1).await.unwrap();
    assert!(r2 > r1);
    // A writer holding the old revision loses.
    assert!(matches!(b.update("a", &"three".to_string(), r1).await, Err(StoreError::Conflict)));
    assert_eq!(b.get("a").await.unwrap(), Some(("two".to_string(), r2)));
    b.create("b", &"x".to_string()).await.unwrap();
    b.delete("b").await.unwrap();
    let all: Vec<String> = b.list().await.unwrap().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(all, vec!["a".to_string()]);
    // modify retries its compare-and-set.
    let (v, _) = b.modify("a", |v| { v.push('!'); Ok(true) }).await.unwrap().unwrap();
    assert_eq!(v, "two!");
    // A second open (a restarted manager) binds the same buckets.
    let s2 = store(&n).await;
    assert_eq!(s2.bucket::<String>(buckets::SERVICES).get("a").await.unwrap().unwrap().0, "two!");
}

#[tokio::test]
async fn watched_copies_follow_the_bucket() {
    let n = Nats::start();
    let s = store(&n).await;
    let b = s.bucket::<String>(buckets::NODES);
    b.put("old", &"x".to_string()).await.unwrap();
    let t: std::sync::Arc<Table<String>> = Table::new();
    let h = tokio::spawn(cache::follow(b.clone(), t.clone()));
    tokio::time::timeout(Duration::from_secs(5), t.wait_ready()).await.unwrap();
    assert_eq!(t.get("old").unwrap().0, "x");
    put_new_delete_old(&b, &t).await;
    h.abort();
}

/// Put `new`, delete `old`: the copy shows both within seconds.
async fn put_new_delete_old(b: &store::Bucket<String>, t: &Table<String>) {
    b.put("new", &"y".to_string()).await.unwrap();
    b.delete("old").await.unwrap();
    let t0 = Instant::now();
    while t.get("old").is_some() || t.get("new").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(5), "copy did not follow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unrenewed_lease_expires_and_another_takes_it() {
    let n = Nats::start();
    let s = store(&n).await;
    let b = s.bucket::<Lease>(buckets::LEADER);
    let a = Lease { node_id: "a".into(), term: 1 };
    let r = b.create("leader", &a).await.unwrap();
    // Held: nobody else can create it; the holder renews by revision.
    assert!(b.create("leader", &Lease { node_id: "b".into(), term: 2 }).await.is_err());
    let r = b.update("leader", &a, r).await.unwrap();
    // Not renewed for the lease's life: gone, and `b` takes it.
    let t0 = Instant::now();
    loop {
        match b.create("leader", &Lease { node_id: "b".into(), term: 2 }).await {
            Ok(_) => break,
            Err(_) => {
                assert!(t0.elapsed() < store::LEASE_TTL + Duration::from_secs(5), "lease never expired");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(t0.elapsed() >= store::LEASE_TTL - Duration::from_secs(1));
    // The old holder's renewal now fails: it must step down.
    assert!(matches!(b.update("leader", &a, r).await, Err(StoreError::Conflict)));
}

#[tokio::test]
async fn changes_after_reads_the_missed_writes_one_by_one() {
    let n = Nats::start();
    let s = store(&n).await;
    let b = s.bucket::<String>(buckets::SERVICES);
    let r1 = b.put("a", &"one".to_string()).await.unwrap();
    let r2 = b.put("b", &"two".to_string()).await.unwrap();
    let r3 = b.put("a", &"three".to_string()).await.unwrap(); // replaces r1 in the stream
    b.delete("b").await.unwrap();
    let got: Vec<String> = b
        .changes_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| match c {
            store::Change::Put { key, value, revision } => format!("put {key}={value}@{revision}"),
            store::Change::Delete { key, revision } => format!("del {key}@{revision}"),
        })
        .collect();
    // r1 and r2 are gone (one message per key): what is left, in order
    assert_eq!(got, vec![format!("put a=three@{r3}"), format!("del b@{}", r3 + 1)]);
    assert!(r2 < r3 && r1 < r2);
    assert_eq!(b.changes_after(r3, 100).await.unwrap().len(), 1);
    assert_eq!(b.changes_after(r3 + 1, 100).await.unwrap().len(), 0);
    assert_eq!(b.changes_after(0, 1).await.unwrap().len(), 1, "at most max");
}

#[tokio::test]
async fn a_copy_whose_watch_lost_its_consumer_keeps_following() {
    let n = Nats::start();
    let (js, s) = store_js(&n).await;
    let b = s.bucket::<String>(buckets::TASKS);
    b.put("old", &"x".to_string()).await.unwrap();
    let t: std::sync::Arc<Table<String>> = Table::new();
    let h = tokio::spawn(cache::follow(b.clone(), t.clone()));
    tokio::time::timeout(Duration::from_secs(5), t.wait_ready()).await.unwrap();
    // the watch's consumer goes (as when the server holding it dies): the client
    // notices only after missed heartbeats (~8-10 s), and re-making it needs the
    // JetStream meta leader, gone for seconds more after a manager's loss
    let stream = js.get_stream(format!("KV_{}", buckets::TASKS)).await.unwrap();
    let mut names = stream.consumer_names();
    let mut gone = 0;
    while let Some(name) = futures_util::StreamExt::next(&mut names).await {
        stream.delete_consumer(&name.unwrap()).await.unwrap();
        gone += 1;
    }
    assert_eq!(gone, 1, "the watch's consumer");
    // well within the client's own recovery: the copy reads the changes itself
    put_new_delete_old(&b, &t).await;
    h.abort();
}

#[tokio::test]
async fn a_value_that_does_not_decode_does_not_stop_the_copy() {
    let n = Nats::start();
    let (js, s) = store_js(&n).await;
    let b = s.bucket::<String>(buckets::TASK_STATUS);
    // (a worker may write its own keys: a compromised one, anything there)
    let raw = js.get_key_value(buckets::TASK_STATUS).await.unwrap();
    raw.put("w1.bad", "not json".into()).await.unwrap();
    b.put("old", &"x".to_string()).await.unwrap();
    let t: std::sync::Arc<Table<String>> = Table::new();
    let h = tokio::spawn(cache::follow(b.clone(), t.clone()));
    tokio::time::timeout(Duration::from_secs(5), t.wait_ready()).await.unwrap();
    assert!(t.get("w1.bad").is_none());
    raw.put("w1.bad2", "{".into()).await.unwrap();
    put_new_delete_old(&b, &t).await;
    assert!(t.get("w1.bad2").is_none());
    assert_eq!(b.list().await.unwrap().into_iter().map(|(k, _, _)| k).collect::<Vec<_>>(), vec!["new".to_string()]);
    h.abort();
}

/// A manager's first reads wait for its copies (`Cluster::sync_reads`): after
/// `caught_up`, the copy holds every write the bucket had acknowledged, whether the
/// copy starts after them (a manager that has just joined) or they come while it runs.
#[tokio::test]
async fn a_caught_up_copy_holds_every_acknowledged_write() {
    let n = Nats::start();
    let s = store(&n).await;
    let b = s.bucket::<String>(buckets::SERVICES);
    for i in 0..150 {
        b.put(&format!("before{i}"), &i.to_string()).await.unwrap();
    }
    let t: std::sync::Arc<Table<String>> = Table::new();
    let h = tokio::spawn(cache::follow(b.clone(), t.clone()));
    assert!(tokio::time::timeout(Duration::from_secs(10), cache::caught_up(&b, &t)).await.unwrap());
    assert_eq!(t.len(), 150);
    for i in 0..150 {
        b.put(&format!("after{i}"), &i.to_string()).await.unwrap();
    }
    b.delete("before0").await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), cache::caught_up(&b, &t)).await.unwrap());
    assert_eq!(t.len(), 299);
    assert!(t.get("before0").is_none() && t.get("after149").is_some());
    h.abort();
    // a bucket never written: nothing to wait for
    let e = s.bucket::<String>(buckets::CONFIGS);
    let te: std::sync::Arc<Table<String>> = Table::new();
    assert!(tokio::time::timeout(Duration::from_secs(10), cache::caught_up(&e, &te)).await.unwrap());
    assert_eq!(te.len(), 0);
    // a copy started on an empty bucket, written at once (a node's record at init):
    // the write is in the copy when it is caught up
    let h = tokio::spawn(cache::follow(e.clone(), te.clone()));
    e.put("node", &"n".to_string()).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), cache::caught_up(&e, &te)).await.unwrap());
    assert_eq!(te.get("node").map(|(v, _)| v), Some("n".to_string()));
    h.abort();
}
