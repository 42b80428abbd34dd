//! The bus against a real nats-server.

use berth_bus::{Bus, Server};
use berth_test_support::Nats;
use bus_schema::{stream::ByteChunk, stream::StdinChunk, stream::StdioChunk, BusError, ErrorKind, Service};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct TestEcho {
    text: String,
    fail: bool,
}
bus_schema::rpc!(Images, TestEcho => String);

#[derive(Debug, Serialize, Deserialize)]
struct TestCount {
    n: u32,
}
bus_schema::rpc!(Storage, TestCount => u32, stream ByteChunk);

#[derive(Debug, Serialize, Deserialize)]
struct TestCat {}
bus_schema::rpc!(Runtime, TestCat => (), stream StdioChunk, input StdinChunk);

#[derive(Debug, Serialize, Deserialize)]
struct TestSlow {}
bus_schema::rpc!(Network, TestSlow => ());

async fn bus(n: &Nats) -> Bus {
    Bus::connect(&n.url(), None, "n1", "test").await.unwrap()
}

async fn serve(b: Bus, svc: Service, server: impl FnOnce(Server) -> Server) {
    let s = server(Server::new(b, svc));
    tokio::spawn(s.run());
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn request_reply_and_errors() {
    let n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Images, |s| {
        s.rpc(|r: TestEcho| async move {
            if r.fail {
                Err(BusError::not_found(format!("no such thing: {}", r.text)))
            } else {
                Ok(r.text.to_uppercase())
            }
        })
    })
    .await;
    assert_eq!(b.request(&TestEcho { text: "hi".into(), fail: false }).await.unwrap(), "HI");
    let e = b.request(&TestEcho { text: "x".into(), fail: true }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(e.message, "no such thing: x");

    // No service on the subject: a clear Unavailable error.
    let e = b.request(&TestSlow {}).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("network service is not running"), "{e}");

    // System ping answered by every server.
    let pong = b.request_system(Service::Images, &bus_schema::system::ServicePing {}).await.unwrap();
    assert_eq!(pong.service, Service::Images);
    assert_eq!(pong.node, "n1");
}

#[tokio::test]
async fn timeouts_are_reported() {
    let n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Network, |s| {
        s.rpc(|_: TestSlow| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
    })
    .await;
    let e = b.with_timeout(Duration::from_millis(200)).request(&TestSlow {}).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
}

#[tokio::test]
async fn slow_reader_loses_nothing() {
    let n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Storage, |s| {
        s.stream(|r: TestCount, resp: berth_bus::Responder<TestCount>| async move {
            let mut w = resp.accept(r.n).await?;
            for i in 0..r.n {
                // 4 KiB chunks, each starting with its index
                let mut v = vec![0u8; 4096];
                v[..4].copy_from_slice(&i.to_be_bytes());
                w.send(ByteChunk(v)).await?;
            }
            w.end().await
        })
    })
    .await;
    let (total, mut rd) = b.request_stream(&TestCount { n: 2000 }).await.unwrap();
    assert_eq!(total, 2000);
    let mut i = 0u32;
    while let Some(c) = rd.next().await {
        let c = c.unwrap();
        assert_eq!(u32::from_be_bytes(c.0[..4].try_into().unwrap()), i);
        i += 1;
        if i % 300 == 0 {
            // a slow reader: the writer must wait, not drop
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(i, 2000);
}

#[tokio::test]
async fn stream_errors_before_and_after_accept() {
    let n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Storage, |s| {
        s.stream(|r: TestCount, resp: berth_bus::Responder<TestCount>| async move {
            if r.n == 0 {
                return Err(BusError::invalid("n must be positive"));
            }
            let mut w = resp.accept(r.n).await?;
            w.send(ByteChunk(vec![1])).await?;
            w.fail(BusError::internal("disk on fire")).await
        })
    })
    .await;
    let e = b.request_stream(&TestCount { n: 0 }).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    let (_, mut rd) = b.request_stream(&TestCount { n: 1 }).await.unwrap();
    assert_eq!(rd.next().await.unwrap().unwrap().0, vec![1]);
    assert_eq!(rd.next().await.unwrap().unwrap_err().message, "disk on fire");
    assert!(rd.next().await.is_none());
}

#[tokio::test]
async fn duplex_echoes_input() {
    let n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Runtime, |s| {
        s.stream(|_: TestCat, resp: berth_bus::Responder<TestCat>| async move {
            let (mut w, mut input) = resp.accept_duplex(()).await?;
            while let Some(c) = input.next().await {
                match c? {
                    StdinChunk::Data(d) => w.send(StdioChunk { stream: 1, data: d }).await?,
                    StdinChunk::Resize { height, width } => {
                        w.send(StdioChunk { stream: 2, data: format!("{height}x{width}").into_bytes() }).await?
                    }
                    StdinChunk::Close => break,
                }
            }
            w.end().await
        })
    })
    .await;
    let ((), mut out, mut inp) = b.request_duplex(&TestCat {}).await.unwrap();
    let mut expect = Vec::new();
    for i in 0..500 {
        expect.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    // Write and read at once, as attach does: each side's credit depends on the other reading.
    let writer = tokio::spawn(async move {
        for i in 0..500 {
            inp.send(StdinChunk::Data(format!("line {i}\n").into_bytes())).await.unwrap();
        }
        inp.send(StdinChunk::Resize { height: 24, width: 80 }).await.unwrap();
        inp.send(StdinChunk::Close).await.unwrap();
    });
    let mut got = Vec::new();
    let mut resize = None;
    while let Some(c) = out.next().await {
        let c = c.unwrap();
        if c.stream == 1 {
            got.extend_from_slice(&c.data);
        } else {
            resize = Some(String::from_utf8(c.data).unwrap());
        }
    }
    writer.await.unwrap();
    assert_eq!(got, expect);
    assert_eq!(resize.as_deref(), Some("24x80"));
}

#[tokio::test]
async fn cancelled_reader_stops_writer() {
    let n = Nats::start();
    let b = bus(&n).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<BusError>();
    let tx = std::sync::Mutex::new(Some(tx));
    let tx = std::sync::Arc::new(tx);
    serve(b.clone(), Service::Storage, move |s| {
        s.stream(move |_: TestCount, resp: berth_bus::Responder<TestCount>| {
            let tx = tx.clone();
            async move {
                let mut w = resp.accept(0).await?;
                loop {
                    if let Err(e) = w.send(ByteChunk(vec![0; 1000])).await {
                        if let Some(t) = tx.lock().unwrap().take() {
                            let _ = t.send(e);
                        }
                        return Ok(());
                    }
                }
            }
        })
    })
    .await;
    let (_, mut rd) = b.request_stream(&TestCount { n: 1 }).await.unwrap();
    for _ in 0..10 {
        rd.next().await.unwrap().unwrap();
    }
    drop(rd);
    let e = tokio::time::timeout(Duration::from_secs(5), rx).await.expect("writer noticed").unwrap();
    assert_eq!(e.kind, ErrorKind::Cancelled);
}

/// A writer waiting for something to send (as a `wait` does) learns that its reader
/// went away without trying to send.
#[tokio::test]
async fn idle_writer_learns_its_reader_is_gone() {
    let n = Nats::start();
    let b = bus(&n).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    serve(b.clone(), Service::Storage, move |s| {
        s.stream(move |_: TestCount, resp: berth_bus::Responder<TestCount>| {
            let tx = tx.clone();
            async move {
                let w = resp.accept(0).await?;
                w.cancelled().await;
                if let Some(t) = tx.lock().unwrap().take() {
                    let _ = t.send(w.is_cancelled());
                }
                Ok(())
            }
        })
    })
    .await;
    let (_, rd) = b.request_stream(&TestCount { n: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(rd);
    let flagged = tokio::time::timeout(Duration::from_secs(5), rx).await.expect("writer noticed").unwrap();
    assert!(flagged);
}

/// What `berth up` publishes when it reaps a service.
async fn announce_exit(b: &Bus, svc: Service) {
    let n = bus_schema::system::ServiceExited {
        service: svc,
        node: "n1".into(),
        pid: std::process::id(),
        at_mono_ns: berth_bus::mono_ns(),
    };
    let subject = bus_schema::subject::instance_subject("n1", svc, bus_schema::subject::InstanceEvent::Exited);
    b.client().publish(subject, bus_schema::encode(&n).unwrap().into()).await.unwrap();
    b.client().flush().await.unwrap();
}

/// A request whose service instance exits under it fails at once with Unavailable
/// (it used to wait for its whole deadline); one sent after the exit is not touched.
#[tokio::test]
async fn a_request_fails_when_its_instance_exits() {
    let n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Network, |s| {
        s.rpc(|_: TestSlow| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(())
        })
    })
    .await;
    let b2 = b.clone();
    let pending = tokio::spawn(async move { b2.request(&TestSlow {}).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    announce_exit(&b, Service::Network).await;
    // without liveness the request is answered (Ok) once the handler is done
    let e = pending.await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("network service exited"), "{e}");
    // the notice is about the past: a later request is answered
    b.request(&TestSlow {}).await.unwrap();
    // a notice about another service does not touch it
    let b2 = b.clone();
    let pending = tokio::spawn(async move { b2.request(&TestSlow {}).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    announce_exit(&b, Service::Images).await;
    pending.await.unwrap().unwrap();
}

/// A stream's reader fails when the writer's instance exits, and a writer stops when
/// its reader's instance exits.
#[tokio::test]
async fn streams_end_when_either_instance_exits() {
    let n = Nats::start();
    let b = bus(&n).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    serve(b.clone(), Service::Storage, move |s| {
        s.stream(move |r: TestCount, resp: berth_bus::Responder<TestCount>| {
            let tx = tx.clone();
            async move {
                let w = resp.accept(0).await?;
                w.cancelled().await;
                let _ = tx.send(r.n);
                Ok(())
            }
        })
    })
    .await;
    // the writer's instance exits: its reader fails
    let (_, mut rd) = b.request_stream(&TestCount { n: 1 }).await.unwrap();
    let reader = tokio::spawn(async move { (rd.next().await, rd) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    announce_exit(&b, Service::Storage).await;
    // hang guard: without liveness the reader waits forever
    let (got, _rd) = tokio::time::timeout(Duration::from_secs(20), reader).await.expect("the reader noticed").unwrap();
    let e = got.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");

    // the reader's instance (a service: the gateway, say) exits: its writer stops,
    // though the reader never cancelled
    let gw = Bus::connect(&n.url(), None, "n1", "gateway").await.unwrap();
    let (_, _rd2) = gw.request_stream(&TestCount { n: 2 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    announce_exit(&b, Service::Gateway).await;
    let mut seen = Vec::new();
    while !seen.contains(&2) {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("the writer noticed").unwrap();
        seen.push(n);
    }
}

/// nats-server killed: requests in flight fail at once, the clients reconnect when it
/// is back, and requests work again.
#[tokio::test]
async fn a_bus_restart_fails_what_was_in_flight_and_recovers() {
    let mut n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Network, |s| {
        s.rpc(|_: TestSlow| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        })
    })
    .await;
    // a deadline far beyond the hang guard: without liveness the request waits for it
    let b2 = b.with_timeout(Duration::from_secs(300));
    let pending = tokio::spawn(async move { b2.request(&TestSlow {}).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    n.crash();
    let e = tokio::time::timeout(Duration::from_secs(30), pending).await.expect("failed before its deadline").unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("bus connection was lost"), "{e}");
    n.restart();
    let t1 = std::time::Instant::now();
    loop {
        match b.with_timeout(Duration::from_secs(10)).request(&TestSlow {}).await {
            Ok(()) => break,
            // hang guard only
            Err(e) => assert!(t1.elapsed() < Duration::from_secs(60), "not back: {e}"),
        }
    }
}

/// A request sent while its service is not yet there (restarting) waits for it.
#[tokio::test]
async fn a_request_waits_a_moment_for_a_restarting_service() {
    let n = Nats::start();
    let b = bus(&n).await;
    let b2 = b.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        serve(b2, Service::Images, |s| s.rpc(|r: TestEcho| async move { Ok(r.text) })).await;
    });
    assert_eq!(b.request(&TestEcho { text: "late".into(), fail: false }).await.unwrap(), "late");
}

/// Requests and replies larger than one bus message (1 MiB) travel in chunks.
#[tokio::test]
async fn large_requests_and_replies_travel_in_chunks() {
    let n = Nats::start();
    let b = bus(&n).await;
    serve(b.clone(), Service::Images, |s| {
        s.rpc(|r: TestEcho| async move { Ok(format!("{}{}", r.text, r.text)) })
    })
    .await;
    let big: String = (0..5_000_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let got = b.request(&TestEcho { text: big.clone(), fail: false }).await.unwrap();
    assert_eq!(got.len(), 10_000_000);
    assert_eq!(got, format!("{big}{big}"));
    // small ones are untouched
    assert_eq!(b.request(&TestEcho { text: "x".into(), fail: false }).await.unwrap(), "xx");
}
