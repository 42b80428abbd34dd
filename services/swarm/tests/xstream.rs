//! The swarm bus's streams (`berth_swarm::xstream`) against a real nats-server: a
//! writer on one connection, a reader on another, as two nodes' swarm services are.

use berth_swarm::xstream::{self, Timing};
use berth_test_support::Nats;
use bus_schema::stream::StdioChunk;
use bus_schema::{BusError, BusStream};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUBJECT: &str = "berth.swarm.v1.node.test.AgentTaskLogs";

fn fast() -> Timing {
    Timing { idle: Duration::from_millis(100), silence: Duration::from_millis(1500), ack: Duration::from_secs(5), head: Duration::from_secs(5) }
}

/// Set when the writer's source stream is dropped (the writer stopped reading it).
struct Dropped(Arc<AtomicBool>);
impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Serve one stream per request on `client` with what `source` makes. Aborting the
/// returned task stops its writers too (as a node dying would).
async fn serve(client: async_nats::Client, source: impl Fn() -> Result<BusStream<StdioChunk>, BusError> + Send + Sync + 'static) -> tokio::task::JoinHandle<()> {
    let source = Arc::new(source);
    // subscribed before the reader asks
    let mut sub = client.subscribe(SUBJECT).await.unwrap();
    // a round trip on the same connection: the server has taken the subscription
    // (a flush only writes it out; another connection's request could come first)
    let _ = berth_bus::cluster::ask_json::<_, ()>(&client, "test.probe".into(), &(), std::time::Duration::from_secs(5)).await;
    tokio::spawn(async move {
        let mut writers = tokio::task::JoinSet::new();
        while let Some(msg) = sub.next().await {
            let reply = msg.reply.clone().unwrap();
            let client = client.clone();
            let source = source.clone();
            writers.spawn(async move {
                let _ = xstream::send(client, reply, source(), fast()).await;
            });
        }
    })
}

async fn connect(n: &Nats) -> async_nats::Client {
    async_nats::connect(n.url()).await.unwrap()
}

fn lines(n: usize) -> Vec<StdioChunk> {
    (0..n).map(|i| StdioChunk { stream: 1 + (i % 2) as u8, data: format!("line {i} {}\n", "x".repeat(i % 3000)).into_bytes() }).collect()
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_chunk_arrives_in_order_then_the_end() {
    let n = Nats::start();
    let (w, r) = (connect(&n).await, connect(&n).await);
    let want = lines(3000);
    let src = want.clone();
    let h = serve(w.clone(), move || {
        let src = src.clone();
        Ok(berth_bus::produce(move |em| async move {
            for c in src {
                em.send(c).await?;
            }
            Ok(())
        }))
    })
    .await;
    w.flush().await.unwrap();
    let mut s = xstream::open::<StdioChunk>(&r, SUBJECT.into(), b"req".to_vec(), "node test", fast()).await.unwrap();
    let mut got = Vec::new();
    while let Some(item) = s.next().await {
        got.push(item.unwrap());
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "chunks out of order or changed");
    h.abort();
}

#[tokio::test]
async fn the_writers_error_reaches_the_reader() {
    let n = Nats::start();
    let (w, r) = (connect(&n).await, connect(&n).await);
    let h = serve(w.clone(), || Err(BusError::not_found("No such container: x"))).await;
    w.flush().await.unwrap();
    let e = xstream::open::<StdioChunk>(&r, SUBJECT.into(), Vec::new(), "node test", fast()).await.err().expect("an error");
    assert_eq!(e.message, "No such container: x");
    // nobody serving the subject: at once, Moby's words
    let e = xstream::open::<StdioChunk>(&r, "berth.swarm.v1.node.nobody.AgentTaskLogs".into(), Vec::new(), "node nobody", fast()).await.err().expect("an error");
    assert_eq!(e.message, "node nobody is not available");
    h.abort();
}

#[tokio::test]
async fn the_reader_going_away_stops_the_writer() {
    let n = Nats::start();
    let (w, r) = (connect(&n).await, connect(&n).await);
    // a following log that never ends, as fast as it is read
    let dropped = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (d, s2) = (dropped.clone(), sent.clone());
    let h = serve(w.clone(), move || {
        let (d, sent) = (d.clone(), s2.clone());
        Ok(berth_bus::produce(move |em| async move {
            let _guard = Dropped(d);
            for i in 0.. {
                em.send(StdioChunk { stream: 1, data: format!("tick {i:<4096}\n").into_bytes() }).await?;
                sent.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }))
    })
    .await;
    w.flush().await.unwrap();
    let mut s = xstream::open::<StdioChunk>(&r, SUBJECT.into(), Vec::new(), "node test", fast()).await.unwrap();
    for i in 0..3 {
        assert_eq!(s.next().await.unwrap().unwrap().data, format!("tick {i:<4096}\n").into_bytes());
    }
    // a reader that stops reading: the writer does not run ahead of it by more than a
    // frame (16 such chunks) and the channels' few items on either side
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ahead = sent.load(Ordering::SeqCst);
    assert!(ahead < 3 + 100, "{ahead} chunks sent to a reader that read 3");
    eprintln!("a stalled reader that read 3 chunks of 4 KiB: {ahead} sent");
    drop(s);
    until("the writer to stop reading its source", || dropped.load(Ordering::SeqCst)).await;

    // the same while the writer is idle (nothing to send: only its heartbeats)
    dropped.store(false, Ordering::SeqCst);
    h.abort();
    let d = dropped.clone();
    let h = serve(w.clone(), move || {
        let d = d.clone();
        Ok(berth_bus::produce(move |em| async move {
            let _guard = Dropped(d);
            em.send(StdioChunk { stream: 1, data: b"once\n".to_vec() }).await?;
            // a runtime's log stream stops when its reader drops it
            em.closed().await;
            Ok(())
        }))
    })
    .await;
    w.flush().await.unwrap();
    let mut s = xstream::open::<StdioChunk>(&r, SUBJECT.into(), Vec::new(), "node test", fast()).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().data, b"once\n");
    drop(s);
    until("the idle writer to stop", || dropped.load(Ordering::SeqCst)).await;
    h.abort();
}

#[tokio::test]
async fn the_writer_vanishing_ends_the_reader_with_an_error() {
    let n = Nats::start();
    let r = connect(&n).await;
    let w = connect(&n).await;
    let h = serve(w.clone(), move || {
        Ok(berth_bus::produce(move |em| async move {
            em.send(StdioChunk { stream: 1, data: b"before\n".to_vec() }).await?;
            std::future::pending::<()>().await;
            Ok(())
        }))
    })
    .await;
    w.flush().await.unwrap();
    let mut s = xstream::open::<StdioChunk>(&r, SUBJECT.into(), Vec::new(), "node test", fast()).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().data, b"before\n");
    // the writer's node dies: its connection goes, nothing more comes
    h.abort();
    drop(w);
    let end = tokio::time::timeout(Duration::from_secs(20), s.next()).await.expect("the reader ended");
    let e = end.expect("an error, not the end").err().expect("an error");
    assert_eq!(e.message, "node test is not available");
    assert!(s.next().await.is_none());
}
