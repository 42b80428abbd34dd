//! The bus permissions generated from the tables of calls, enforced by a real
//! nats-server configured as `berth up` configures it (`nats_authorization`):
//!
//! * every (caller, operation) pair of every table: the caller's publish reaches the
//!   service exactly when the table lists it as a caller, and is refused with a
//!   permissions violation otherwise (images' credentials cannot send ContainerKill);
//! * a service cannot read or forge another user's replies or stream frames, nor read
//!   another service's requests;
//! * large payloads: a user fetches chunks only from what a peer holds for it
//!   (`_L.<holder>.<receiver>.*`), and holds its own where only it subscribes;
//! * instance notices: a service announces only its own start, only admin exits;
//! * the generated clients and adapters still work under these permissions: a unary
//!   call, a stream and a duplex stream from the gateway to the runtime, and a request
//!   and a reply too large for one message;
//! * the swarm service as a server (only the gateway asks it) and as a caller (the
//!   runtime operations its agent uses, no others), and its swarm-scope events.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_bus::async_nats;
use berth_bus::runtime::{serve_runtime, RuntimeApi, RuntimeClient};
use berth_bus::{Bus, Creds, Server};
use berth_test_support::Nats;
use bus_schema::contract::{all_calls, large_subject, nats_authorization, stream_subject, Caller};
use bus_schema::runtime::*;
use bus_schema::stream::{StdinChunk, StdioChunk};
use bus_schema::{subject, BusError, BusStream, Service};
use futures_util::StreamExt;

const NODE: &str = "n1";

fn password(who: Caller) -> String {
    format!("pw-{}", who.user())
}

fn start() -> Nats {
    Nats::start_with_config(Some(&nats_authorization(NODE, password)))
}

/// A raw connection as `who`, and the server's errors it receives.
async fn raw(nats: &Nats, who: Caller) -> (async_nats::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let c = async_nats::ConnectOptions::with_user_and_password(who.user().into(), password(who))
        .custom_inbox_prefix(subject::inbox_prefix(who.user()))
        .event_callback(move |ev| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = ev {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    (c, rx)
}

/// Publish each of `subjects` as `c`; the ones nats-server refused. Refusals name
/// their subject and come before the flush's PONG; the client's event task hands them
/// on, so wait until they stop coming. In batches: async-nats hands server errors to
/// its event task through a channel of 128 and drops what does not fit, so a burst of
/// refusals on a loaded machine would lose some (a CI failure of stop 26).
async fn refused_of(c: &async_nats::Client, errs: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subjects: &[String], payload: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for batch in subjects.chunks(64) {
        for s in batch {
            c.publish(s.clone(), payload.to_string().into()).await.unwrap();
        }
        c.flush().await.unwrap();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), errs.recv()).await {
            assert!(e.to_lowercase().contains("permissions violation for publish"), "unexpected server error: {e}");
            let subject = e.split('"').nth(1).unwrap_or_else(|| panic!("no subject in {e}"));
            out.insert(subject.to_string());
        }
    }
    out
}

async fn refused(c: &async_nats::Client, errs: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) -> bool {
    refused_of(c, errs, &[subject.to_string()], "x").await.contains(subject)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_may_publish_exactly_the_operations_it_calls() {
    let nats = start();
    // each service reads its own operations
    let mut readers = Vec::new();
    for svc in Service::BACKENDS {
        let (c, _) = raw(&nats, Caller::of(svc)).await;
        let sub = c.subscribe(svc.wildcard(NODE)).await.unwrap();
        c.flush().await.unwrap();
        readers.push((c, sub));
    }
    let mut got_refused = BTreeSet::new();
    let mut want_refused = BTreeSet::new();
    let mut want_delivered = BTreeSet::new();
    for who in Caller::ALL {
        let (c, mut errs) = raw(&nats, who).await;
        let subjects: Vec<String> = all_calls().map(|op| op.subject(NODE)).collect();
        for op in all_calls() {
            if op.callers.contains(&who) {
                want_delivered.insert((op.subject(NODE), who.user().to_string()));
            } else {
                want_refused.insert((who.user(), op.subject(NODE)));
            }
        }
        for s in refused_of(&c, &mut errs, &subjects, who.user()).await {
            got_refused.insert((who.user(), s));
        }
    }
    // the example of issue 14, spelled out
    assert!(got_refused.contains(&("images", <ContainerKill as bus_schema::Rpc>::subject(NODE))), "images may send ContainerKill");
    assert!(!got_refused.contains(&("gateway", <ContainerKill as bus_schema::Rpc>::subject(NODE))), "the gateway may not send ContainerKill");
    assert_eq!(got_refused, want_refused, "refused publishes differ from the tables");

    // and every allowed one arrived (only those: the refused never reach the service)
    let mut got_delivered = BTreeSet::new();
    for (_, sub) in readers.iter_mut() {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            got_delivered.insert((m.subject.to_string(), String::from_utf8_lossy(&m.payload).to_string()));
        }
    }
    assert_eq!(got_delivered, want_delivered, "delivered requests differ from the tables");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_reads_or_forges_anothers_replies_streams_or_requests() {
    let nats = start();
    let (images, mut errs) = raw(&nats, Caller::Images).await;
    // forge a reply to the gateway, or a runtime stream frame to the gateway
    assert!(refused(&images, &mut errs, "_I.gateway.abc.1").await, "images may publish into the gateway's inbox");
    assert!(refused(&images, &mut errs, &stream_subject("runtime", "gateway", "abc")).await, "images may forge runtime frames");
    assert!(refused(&images, &mut errs, &stream_subject("images", "runtime", "abc")).await, "images may send frames to the runtime");
    // a stream it does take part in: images reads layer exports from storage
    assert!(!refused(&images, &mut errs, &stream_subject("images", "storage", "abc")).await);
    // events it does not own
    assert!(refused(&images, &mut errs, "berth.v1.events.container.die").await, "images may publish container events");
    assert!(!refused(&images, &mut errs, "berth.v1.events.image.pull").await);
    assert!(!refused(&images, &mut errs, "berth.v1.events.plugin.enable").await, "images owns plugin events");
    // fetch what the gateway holds for the runtime, or hold under another's name
    assert!(refused(&images, &mut errs, &large_subject("gateway", "runtime", "abc")).await, "images may fetch another's large payload");
    assert!(refused(&images, &mut errs, &large_subject("runtime", "gateway", "abc")).await);
    // what storage (whose operations it calls) holds for it
    assert!(!refused(&images, &mut errs, &large_subject("storage", "images", "abc")).await);
    // instance notices: its own start only; exits are berth up's (admin)
    let notice = |svc, what| subject::instance_subject(NODE, svc, what);
    assert!(!refused(&images, &mut errs, &notice(Service::Images, subject::InstanceEvent::Started)).await);
    assert!(refused(&images, &mut errs, &notice(Service::Runtime, subject::InstanceEvent::Started)).await, "images may announce the runtime");
    assert!(refused(&images, &mut errs, &notice(Service::Images, subject::InstanceEvent::Exited)).await, "images may announce exits");
    let (admin, mut admin_errs) = raw(&nats, Caller::Admin).await;
    assert!(!refused(&admin, &mut admin_errs, &notice(Service::Runtime, subject::InstanceEvent::Exited)).await);
    assert!(refused(&admin, &mut admin_errs, &notice(Service::Runtime, subject::InstanceEvent::Started)).await);
    // everyone hears the notices
    let _sub = images.subscribe(subject::instance_wildcard(NODE)).await.unwrap();
    images.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), errs.recv()).await.is_err(), "images may not hear instance notices");
    // read the gateway's replies, frames or large payloads, or the runtime's requests
    for s in ["_I.gateway.>", "_S.runtime.gateway.>", "_L.gateway.>", &Service::Runtime.wildcard(NODE)] {
        let _sub = images.subscribe(s.to_string()).await.unwrap();
        images.flush().await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(2), errs.recv()).await.ok().flatten();
        let e = e.unwrap_or_else(|| panic!("images may subscribe to {s}")).to_lowercase();
        assert!(e.contains("permissions violation for subscription"), "{e}");
    }
}

/// A runtime that kills nothing: counts kills, answers logs with two lines, and echoes
/// an exec's input.
#[derive(Clone, Default)]
struct Fake {
    kills: Arc<AtomicUsize>,
}

impl bus_schema::runtime::Fake for Fake {
    /// One container whose id is as long as the filter asks (larger than a message).
    async fn container_list(&self, req: ContainerList) -> Result<Vec<bus_schema::docker::ContainerSummary>, BusError> {
        let n: usize = req.filters.get("len").and_then(|v| v.first()).and_then(|l| l.parse().ok()).unwrap_or(1);
        Ok(vec![bus_schema::docker::ContainerSummary { id: Some("c".repeat(n)), ..Default::default() }])
    }

    async fn container_kill(&self, _req: ContainerKill) -> Result<(), BusError> {
        self.kills.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn container_logs(&self, _req: ContainerLogs) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let lines = ["one\n", "two\n"].map(|l| Ok(StdioChunk { stream: 1, data: l.as_bytes().to_vec() }));
        Ok((StreamInfo { tty: false }, Box::pin(futures_util::stream::iter(lines))))
    }

    async fn exec_start(&self, _req: ExecStart, input: BusStream<StdinChunk>) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let out = input.filter_map(|c| async move {
            match c {
                Ok(StdinChunk::Data(data)) => Some(Ok(StdioChunk { stream: 1, data })),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        });
        Ok((StreamInfo { tty: false }, Box::pin(out)))
    }
}

async fn bus_as(nats: &Nats, who: Caller) -> Bus {
    let creds = Creds { user: who.user().into(), password: password(who) };
    Bus::connect(&nats.url(), Some(creds), NODE, who.user()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clients_work_under_the_permissions() {
    let nats = start();
    let fake = Fake::default();
    let server = serve_runtime(Server::new(bus_as(&nats, Caller::Runtime).await, Service::Runtime), Arc::new(fake.clone()));
    tokio::spawn(server.run());
    let gateway = RuntimeClient::new(bus_as(&nats, Caller::Gateway).await).with_timeout(Duration::from_secs(5));
    let kill = || ContainerKill { id: "c1".into(), signal: None };
    // ready when it answers
    for _ in 0..100 {
        if gateway.container_kill(kill()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = fake.kills.load(Ordering::SeqCst);
    assert!(before >= 1, "the gateway cannot kill through the runtime client");

    // images' credentials: the request never reaches the runtime
    let images = RuntimeClient::new(bus_as(&nats, Caller::Images).await).with_timeout(Duration::from_secs(1));
    assert!(images.container_kill(kill()).await.is_err());
    assert_eq!(fake.kills.load(Ordering::SeqCst), before, "images' ContainerKill reached the runtime");

    // a stream: the reply, then the frames on _S.runtime.gateway.*
    let logs = ContainerLogs {
        id: "c1".into(),
        follow: false,
        stdout: true,
        stderr: true,
        since: 0.0,
        until: 0.0,
        timestamps: false,
        tail: "all".into(),
    };
    let (_, items) = gateway.container_logs(logs).await.unwrap();
    let text: Vec<u8> = items.map(|c| c.unwrap().data).concat().await;
    assert_eq!(text, b"one\ntwo\n");

    // a duplex stream: the gateway's input on _S.gateway.runtime.*
    let (tx, input) = berth_bus::channel(4);
    let exec = ExecStart { id: "e1".into(), detach: false, tty: false, console_size: None };
    let (_, mut out) = gateway.exec_start(exec, input).await.unwrap();
    tx.send(StdinChunk::Data(b"ping".to_vec())).await.unwrap();
    assert_eq!(out.next().await.unwrap().unwrap().data, b"ping");
    drop(tx);
    assert!(out.next().await.is_none());

    // a request and a reply larger than one message (nats-server's 1 MiB): fetched
    // in chunks from _L.gateway.runtime.* and _L.runtime.gateway.*
    let big = 3 << 20;
    let list = ContainerList { all: true, limit: None, size: false, filters: [("len".to_string(), vec![big.to_string(), "x".repeat(big)])].into() };
    let got = gateway.container_list(list).await.unwrap();
    assert_eq!(got[0].id.as_deref().map(str::len), Some(big));
}

/// A swarm service that knows one service and streams one log line per task.
#[derive(Clone, Default)]
struct FakeSwarm;

impl bus_schema::swarm::Fake for FakeSwarm {
    async fn service_list(&self, _req: bus_schema::swarm::ServiceList) -> Result<Vec<bus_schema::swarm::ServiceObject>, BusError> {
        Ok(vec![bus_schema::swarm::ServiceObject { id: "s1".into(), ..Default::default() }])
    }

    async fn task_logs(&self, _req: bus_schema::swarm::TaskLogs) -> Result<(StreamInfo, BusStream<StdioChunk>), BusError> {
        let lines = [Ok(StdioChunk { stream: 1, data: b"task\n".to_vec() })];
        Ok((StreamInfo { tty: false }, Box::pin(futures_util::stream::iter(lines))))
    }

    async fn swarm_network_detach(&self, _req: bus_schema::swarm::SwarmNetworkDetach) -> Result<(), BusError> {
        Ok(())
    }
}

/// The swarm service as a server (the gateway asks it; nobody else may) and as a
/// caller (of the runtime operations its agent runs tasks with, and no others), and
/// the swarm events it alone publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_serves_the_gateway_and_calls_the_runtime_under_the_permissions() {
    use berth_bus::swarm::{serve_swarm, SwarmApi, SwarmClient};
    use bus_schema::swarm::{LogOptions, ServiceList, TaskLogs};

    let nats = start();
    let fake = Fake::default();
    tokio::spawn(serve_runtime(Server::new(bus_as(&nats, Caller::Runtime).await, Service::Runtime), Arc::new(fake.clone())).run());
    tokio::spawn(serve_swarm(Server::new(bus_as(&nats, Caller::Swarm).await, Service::Swarm), Arc::new(FakeSwarm)).run());

    // as a server: the gateway's client lists services and reads a task's log
    let gateway = SwarmClient::new(bus_as(&nats, Caller::Gateway).await).with_timeout(Duration::from_secs(5));
    let mut listed = None;
    for _ in 0..100 {
        if let Ok(l) = gateway.service_list(ServiceList::default()).await {
            listed = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed.expect("the gateway cannot list services").first().map(|s| s.id.as_str()), Some("s1"));
    let opts = LogOptions { follow: false, stdout: true, stderr: true, since: 0.0, timestamps: false, tail: "all".into(), details: false };
    let (_, items) = gateway.task_logs(TaskLogs { id: "t1".into(), opts }).await.unwrap();
    let text: Vec<u8> = items.map(|c| c.unwrap().data).concat().await;
    assert_eq!(text, b"task\n");
    // the runtime's credentials may not ask the swarm service
    let runtime = SwarmClient::new(bus_as(&nats, Caller::Runtime).await).with_timeout(Duration::from_secs(1));
    assert!(runtime.service_list(ServiceList::default()).await.is_err(), "the runtime may ask the swarm service");
    // the network service gives back a container's overlay address; the runtime may not
    let detach = || bus_schema::swarm::SwarmNetworkDetach { network_id: "n".into(), container_id: "c".into() };
    let network = SwarmClient::new(bus_as(&nats, Caller::Network).await).with_timeout(Duration::from_secs(5));
    network.swarm_network_detach(detach()).await.expect("the network service cannot ask the swarm service");
    assert!(runtime.swarm_network_detach(detach()).await.is_err(), "the runtime may detach a swarm network");

    // as a caller: the agent's calls reach the runtime (a stream too), others do not
    let swarm = RuntimeClient::new(bus_as(&nats, Caller::Swarm).await).with_timeout(Duration::from_secs(5));
    let logs = ContainerLogs { id: "c1".into(), follow: false, stdout: true, stderr: true, since: 0.0, until: 0.0, timestamps: false, tail: "all".into() };
    let (_, items) = swarm.container_logs(logs).await.unwrap();
    let text: Vec<u8> = items.map(|c| c.unwrap().data).concat().await;
    assert_eq!(text, b"one\ntwo\n");
    let listed = swarm.container_list(ContainerList { all: true, limit: None, size: false, filters: Default::default() }).await.unwrap();
    assert_eq!(listed.len(), 1);
    let swarm = swarm.with_timeout(Duration::from_secs(1));
    assert!(swarm.container_kill(ContainerKill { id: "c1".into(), signal: None }).await.is_err());
    assert_eq!(fake.kills.load(Ordering::SeqCst), 0, "the swarm service's ContainerKill reached the runtime");

    // events: the cluster's objects are the swarm service's, containers are not
    let (sw, mut errs) = raw(&nats, Caller::Swarm).await;
    for ev in ["berth.v1.events.service.create", "berth.v1.events.node.update", "berth.v1.events.secret.remove", "berth.v1.events.config.create"] {
        assert!(!refused(&sw, &mut errs, ev).await, "the swarm service may not publish {ev}");
    }
    assert!(refused(&sw, &mut errs, "berth.v1.events.container.die").await, "the swarm service may publish container events");
    let (rt, mut rt_errs) = raw(&nats, Caller::Runtime).await;
    assert!(refused(&rt, &mut rt_errs, "berth.v1.events.service.create").await, "the runtime may publish service events");
}
