//! The generated client and server adapter against a real nats-server: a fake
//! `StorageApi` served with `serve_storage`, called with `StorageClient`. Each shape
//! of operation (request/reply, stream, duplex), errors before and after the reply,
//! and a dropped stream stopping its producer.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_bus::storage::{serve_storage, StorageApi, StorageClient};
use berth_bus::{Bus, Server};
use berth_test_support::Nats;
use bus_schema::storage::*;
use bus_schema::stream::ByteChunk;
use bus_schema::{BusError, BusStream, ErrorKind, Service};
use futures_util::StreamExt;

#[derive(Default, Clone)]
struct Fake {
    /// Set when the export's producer saw its reader go.
    export_stopped: Arc<AtomicBool>,
    /// Volume calls so far: the first of each is slow (its instance "dies" under it).
    volume_calls: Arc<AtomicU32>,
}

impl Fake {
    async fn first_is_slow(&self) {
        if self.volume_calls.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
}

fn volume(name: &str) -> bus_schema::docker::Volume {
    // what the storage service sends: scope and creation time set
    let scope = Some(bus_schema::docker::VolumeScopeEnum::LOCAL);
    bus_schema::docker::Volume { name: name.into(), scope, created_at: Some("2026-01-01T00:00:00Z".into()), ..Default::default() }
}

impl bus_schema::storage::Fake for Fake {
    /// Marked `idempotent` in the storage table.
    async fn volume_list(&self, _req: VolumeList) -> Result<Vec<bus_schema::docker::Volume>, BusError> {
        self.first_is_slow().await;
        Ok(vec![volume("v")])
    }

    /// Not idempotent.
    async fn volume_create(&self, req: VolumeCreate) -> Result<bus_schema::docker::Volume, BusError> {
        self.first_is_slow().await;
        Ok(volume(&req.name.unwrap_or_default()))
    }

    async fn layer_stat(&self, req: LayerStat) -> Result<LayerInfo, BusError> {
        if req.chain_id == "missing" {
            return Err(BusError::not_found("layer missing does not exist"));
        }
        Ok(LayerInfo { chain_id: req.chain_id, diff_id: "d".into(), parent: None, size: 3, references: 1 })
    }

    /// Counts forever, one chunk at a time, until the reader goes away.
    async fn layer_export(&self, req: LayerExport) -> Result<((), BusStream<ByteChunk>), BusError> {
        if req.chain_id == "missing" {
            return Err(BusError::not_found("layer missing does not exist"));
        }
        let me = self.clone();
        Ok((
            (),
            berth_bus::produce(move |out| async move {
                let mut i = 0u32;
                loop {
                    if out.send(ByteChunk(i.to_be_bytes().to_vec())).await.is_err() {
                        me.export_stopped.store(true, Ordering::SeqCst);
                        return Ok(());
                    }
                    i += 1;
                    if req.chain_id == "short" && i == 3 {
                        return Err(BusError::internal("the disk went away"));
                    }
                }
            }),
        ))
    }

    /// Concatenates the input and answers its length as the layer size.
    async fn layer_apply(&self, req: LayerApply, mut input: BusStream<ByteChunk>) -> Result<((), BusStream<LayerApplied>), BusError> {
        if req.media_type == "bad" {
            return Err(BusError::invalid("unknown media type bad"));
        }
        Ok((
            (),
            berth_bus::produce(move |out| async move {
                let mut n = 0u64;
                while let Some(c) = input.next().await {
                    n += c?.0.len() as u64;
                }
                out.send(LayerApplied { chain_id: "c".into(), diff_id: "d".into(), size: n }).await
            }),
        ))
    }
}

async fn setup() -> (Nats, StorageClient, Fake) {
    let nats = Nats::start();
    let server_bus = Bus::connect(&nats.url(), None, "n1", "storage").await.unwrap();
    let fake = Fake::default();
    let server = serve_storage(Server::new(server_bus, Service::Storage), Arc::new(fake.clone()));
    tokio::spawn(server.run());
    let bus = Bus::connect(&nats.url(), None, "n1", "images").await.unwrap();
    let client = StorageClient::new(bus);
    // ready when it answers
    for _ in 0..100 {
        if client.layer_stat(LayerStat { chain_id: "x".into() }).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (nats, client, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_and_their_errors() {
    let (_n, c, _) = setup().await;
    assert_eq!(c.layer_stat(LayerStat { chain_id: "a".into() }).await.unwrap().size, 3);
    let e = c.layer_stat(LayerStat { chain_id: "missing".into() }).await.unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::NotFound, "layer missing does not exist"));
    // a method the fake does not implement answers NotImplemented (the table's `Fake` trait)
    let e = c.layer_retain(LayerRetain { chain_id: "a".into() }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotImplemented);
    // another node: nobody serves it
    let e = c.on("n2").layer_stat(LayerStat { chain_id: "a".into() }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_fail_and_stop_their_producer() {
    let (_n, c, fake) = setup().await;
    // an error before the reply is the call's error
    let e = c.layer_export(LayerExport { chain_id: "missing".into() }).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // an error after it ends the stream
    let ((), mut s) = c.layer_export(LayerExport { chain_id: "short".into() }).await.unwrap();
    let mut got = Vec::new();
    let err = loop {
        match s.next().await {
            Some(Ok(b)) => got.push(b.0),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without its error"),
        }
    };
    assert_eq!(got.len(), 3);
    assert_eq!(err.message, "the disk went away");
    assert!(s.next().await.is_none());
    // more items than the credit window, in order; then dropping the stream stops the producer
    let ((), mut s) = c.layer_export(LayerExport { chain_id: "long".into() }).await.unwrap();
    for i in 0..500u32 {
        assert_eq!(s.next().await.unwrap().unwrap().0, i.to_be_bytes());
    }
    drop(s);
    for _ in 0..200 {
        if fake.export_stopped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the producer never learnt its reader was gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplex_reads_the_callers_input() {
    let (_n, c, _) = setup().await;
    let req = |m: &str| LayerApply { parent: None, media_type: m.into(), compressed_digest: None, diff_id: None };
    let (tx, input) = berth_bus::channel(4);
    let ((), items) = c.layer_apply(req("tar"), input).await.unwrap();
    for _ in 0..200 {
        tx.send(ByteChunk(vec![7; 1000])).await.unwrap();
    }
    drop(tx);
    assert_eq!(berth_bus::single(items, "apply").await.unwrap().size, 200_000);
    // the caller's input error reaches the service
    let (tx, input) = berth_bus::channel(4);
    let ((), items) = c.layer_apply(req("tar"), input).await.unwrap();
    tx.send(ByteChunk(vec![1])).await.unwrap();
    tx.fail(BusError::internal("download broke")).await;
    assert_eq!(berth_bus::single(items, "apply").await.unwrap_err().message, "download broke");
    // refused before the reply
    let (_tx, input) = berth_bus::channel::<ByteChunk>(4);
    let e = c.layer_apply(req("bad"), input).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
}

/// What `berth up` publishes when it reaps a service.
async fn announce_exit(c: &StorageClient) {
    let n = bus_schema::system::ServiceExited { service: Service::Storage, node: "n1".into(), pid: std::process::id(), at_mono_ns: berth_bus::mono_ns() };
    let subject = bus_schema::subject::instance_subject("n1", Service::Storage, bus_schema::subject::InstanceEvent::Exited);
    c.bus().client().publish(subject, bus_schema::encode(&n).unwrap().into()).await.unwrap();
    c.bus().client().flush().await.unwrap();
}

/// An operation marked `idempotent` in its table is sent once more by the typed
/// client when the instance serving it dies under it; any other fails (it may or may
/// not have taken effect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_calls_are_sent_again_when_their_instance_dies() {
    assert!(<VolumeList as bus_schema::Rpc>::IDEMPOTENT && !<VolumeCreate as bus_schema::Rpc>::IDEMPOTENT);
    assert!(CALLS.iter().any(|op| op.name == "VolumeList" && op.idempotent));
    let (_n, c, _) = setup().await;
    let c2 = c.clone();
    let pending = tokio::spawn(async move { c2.volume_list(VolumeList { filters: Default::default(), plugins: false }).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    announce_exit(&c).await;
    assert_eq!(pending.await.unwrap().unwrap()[0].name, "v", "asked again");
    let c2 = c.clone();
    let pending = tokio::spawn(async move { c2.volume_create(VolumeCreate { name: Some("w".into()), driver: "local".into(), driver_opts: Default::default(), labels: Default::default(), anonymous: false }).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    announce_exit(&c).await;
    let e = pending.await.unwrap().unwrap_err();
    assert!(e.is(ErrorKind::Unavailable) && e.message.contains("storage service exited"), "{e}");
}
