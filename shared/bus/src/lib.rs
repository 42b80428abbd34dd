//! Typed request/serve/stream/publish over NATS, spelled only through `bus-schema`.
//!
//! * [`Bus::request`] sends an [`Rpc`] to the service on this node (or another with
//!   [`Bus::request_on`]) and decodes the typed reply; NoResponders becomes
//!   `Unavailable` ("the images service is not running") and a timeout `Timeout`.
//! * [`Bus::request_stream`] / [`Bus::request_duplex`] also open the credit-based
//!   streams of [`bus_schema::stream`].
//! * [`Server`] subscribes a service's handlers (queue group per service) and answers
//!   [`bus_schema::system`] requests for every service.
//! * The W3C `traceparent` of the current span goes out in NATS headers and the
//!   serving side continues it.
//! * No exchange outlives its peer ([`liveness`]): requests and streams fail at once
//!   when the instance serving them exits or the bus connection drops; a request
//!   nobody listens to (the service restarting) is sent again for up to
//!   [`NO_RESPONDERS_WAIT`].
//! * Payloads larger than one bus message travel in chunks ([`large`]).

pub mod cluster;
mod contract;
mod large;
mod liveness;
mod server;
mod stream;
mod trace;

pub use contract::{answer, answer_duplex, channel, first_item, into_stream, produce, single, Answer, Emitter, Sink, SystemClient};
#[doc(hidden)]
pub mod __contract {
    pub use crate::contract::{call, call_duplex, call_stream};
}
pub use large::MAX_LARGE;
pub use liveness::mono_ns;

pub use server::{Responder, Server};
pub use stream::{StreamReader, StreamWriter};

/// Typed clients and server adapters, generated from `bus-schema`'s tables: for each
/// service `<Svc>Client` (implements `<Svc>Api` over the bus) and `serve_<svc>`
/// (serves any `<Svc>Api` on the bus).
pub mod storage {
    bus_schema::storage_table!(crate::__client);
}
pub mod images {
    bus_schema::images_table!(crate::__client);
}
pub mod runtime {
    bus_schema::runtime_table!(crate::__client);
}
pub mod network {
    bus_schema::network_table!(crate::__client);
}
pub mod builder {
    bus_schema::builder_table!(crate::__client);
}
pub mod swarm {
    bus_schema::swarm_table!(crate::__client);
}

use bus_schema::{
    stream::{
        DEFAULT_CREDIT, HDR_CALLER, HDR_CREDIT, HDR_CTRL, HDR_INPUT, HDR_INPUT_CTRL, HDR_INSTANCE, HDR_STREAM,
        HDR_TIMEOUT_MS,
    },
    BusError, DuplexRpc, ErrorKind, Rpc, Service, StreamRpc, SystemRpc, WireResult,
};
use liveness::{Liveness, Peer};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use async_nats;
pub use bus_schema;

/// How long a request waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A request nobody listens to (the service is being restarted; nothing was
/// delivered, so sending again is safe for every operation) is sent again for this long.
pub const NO_RESPONDERS_WAIT: Duration = Duration::from_secs(1);
/// A request made while the bus connection is down waits this long for it.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// A service instance of this node started or exited (see [`Bus::instance_notices`]).
#[derive(Debug, Clone)]
pub enum InstanceNotice {
    Started(bus_schema::system::ServiceStarted),
    Exited(bus_schema::system::ServiceExited),
}

/// Credentials of one bus user.
#[derive(Clone, Debug)]
pub struct Creds {
    pub user: String,
    pub password: String,
}

impl Creds {
    /// Read a credentials file written by `berth up`: one line `user:password`.
    pub fn load(path: &std::path::Path) -> std::io::Result<Creds> {
        let text = std::fs::read_to_string(path)?;
        let line = text.lines().next().unwrap_or("");
        let (user, password) = line.split_once(':').ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: expected user:password", path.display()))
        })?;
        Ok(Creds { user: user.to_string(), password: password.to_string() })
    }
}

/// A connection to the bus, bound to this node's id.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    node: String,
    /// The bus user (names the stream subjects this connection reads).
    user: std::sync::Arc<str>,
    timeout: Duration,
    live: Arc<Liveness>,
    /// `<node>.<name>.<pid>`, sent as `Berth-Caller`.
    caller: Arc<str>,
}

impl Bus {
    /// Connect as `name` (used for the connection name and, without credentials, the
    /// inbox prefix). With credentials, replies arrive under `_I.<user>.` only.
    pub async fn connect(url: &str, creds: Option<Creds>, node: &str, name: &str) -> Result<Bus, BusError> {
        if !bus_schema::subject::valid_node(node) {
            return Err(BusError::invalid(format!("invalid node id {node:?}")));
        }
        let user = creds.as_ref().map(|c| c.user.clone()).unwrap_or_else(|| name.to_string());
        let live = Liveness::new(node);
        let l2 = live.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .custom_inbox_prefix(bus_schema::subject::inbox_prefix(&user))
            .request_timeout(Some(DEFAULT_TIMEOUT))
            .connection_timeout(Duration::from_secs(5))
            .subscription_capacity(1 << 16)
            .max_reconnects(None)
            // the node's nats-server is restarted at once when it dies: try again soon
            .reconnect_delay_callback(|n| Duration::from_millis(if n <= 1 { 0 } else { (10u64 << (n - 1).min(5)).min(250) }))
            .event_callback(move |ev| {
                let l = l2.clone();
                async move { l.on_event(&ev) }
            });
        if let Some(c) = creds {
            opts = opts.user_and_password(c.user, c.password);
        }
        let client = opts
            .connect(url)
            .await
            .map_err(|e| BusError::unavailable(format!("cannot connect to the bus at {url}: {e}")))?;
        liveness::follow_exits(&client, live.clone()).await?;
        let caller = format!("{node}.{name}.{}", std::process::id()).into();
        Ok(Bus { client, node: node.to_string(), user: user.into(), timeout: DEFAULT_TIMEOUT, live, caller })
    }

    /// Connect with the settings `berth up` passes in the environment.
    pub async fn from_env(name: &str) -> Result<Bus, BusError> {
        use berth_config::env;
        let url = std::env::var(env::NATS_URL).unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let node = std::env::var(env::NODE).unwrap_or_else(|_| "local".into());
        let creds = match std::env::var_os(env::NATS_CREDS) {
            Some(p) if !p.is_empty() => Some(Creds::load(std::path::Path::new(&p)).map_err(BusError::from)?),
            _ => None,
        };
        Bus::connect(&url, creds, &node, name).await
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The bus user this connection authenticated as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A copy with a different default timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Bus {
        Bus { timeout, ..self.clone() }
    }

    /// A copy whose requests go to the services of `node`.
    pub fn with_node(&self, node: &str) -> Bus {
        Bus { node: node.to_string(), ..self.clone() }
    }

    /// A fresh subject for frames `publisher` sends to this connection
    /// (`_S.<publisher>.<user>.<id>`): only `publisher` may publish there.
    pub(crate) fn stream_inbox(&self, publisher: &str) -> String {
        bus_schema::contract::stream_subject(publisher, &self.user, &nuid::next())
    }

    /// Send a request to the service on this node and wait for the typed reply.
    pub async fn request<R: Rpc>(&self, req: &R) -> Result<R::Reply, BusError> {
        self.request_on(&self.node.clone(), req).await
    }

    /// Send a request to the service on `node`.
    pub async fn request_on<R: Rpc>(&self, node: &str, req: &R) -> Result<R::Reply, BusError> {
        let subject = R::subject(node);
        let msg = self.raw_request(R::SERVICE, subject, bus_schema::encode(req)?, async_nats::HeaderMap::new()).await?;
        decode_reply::<R::Reply>(&msg.payload)
    }

    /// A request that may be sent twice without harm (inspect, list): when the
    /// instance serving it exits or the bus drops under it, it is sent once more (the
    /// next instance is awaited as a request nobody listens to is).
    pub async fn request_idempotent<R: Rpc>(&self, req: &R) -> Result<R::Reply, BusError> {
        retry_once(|| self.request(req)).await
    }

    /// [`Bus::request_stream`] sent once more when it fails before the stream starts,
    /// as [`Bus::request_idempotent`] does.
    pub async fn request_stream_idempotent<R: StreamRpc>(&self, req: &R) -> Result<(R::Reply, StreamReader<R::Item>), BusError> {
        retry_once(|| self.request_stream(req)).await
    }

    /// Ask any service a system question (health, its part of `/info`).
    pub async fn request_system<R: SystemRpc>(&self, svc: Service, req: &R) -> Result<R::Reply, BusError> {
        let subject = R::subject(svc, &self.node);
        let msg = self.raw_request(svc, subject, bus_schema::encode(req)?, async_nats::HeaderMap::new()).await?;
        decode_reply::<R::Reply>(&msg.payload)
    }

    /// Send a request answered by a reply and then a stream of items.
    pub async fn request_stream<R: StreamRpc>(&self, req: &R) -> Result<(R::Reply, StreamReader<R::Item>), BusError> {
        let data = self.stream_inbox(R::SERVICE.name());
        let sub = self.subscribe_raw(&data).await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HDR_STREAM, data.as_str());
        headers.insert(HDR_CREDIT, DEFAULT_CREDIT.to_string());
        let msg = self.raw_request(R::SERVICE, R::subject(&self.node), bus_schema::encode(req)?, headers).await?;
        let reply = decode_reply::<R::Reply>(&msg.payload)?;
        let ctrl = header(&msg, HDR_CTRL).ok_or_else(|| BusError::internal("stream reply without control subject"))?;
        let watch = self.live.watch(self.answered_by(R::SERVICE, &self.node, &msg));
        Ok((reply, StreamReader::new(self.client.clone(), sub, ctrl, DEFAULT_CREDIT, watch)))
    }

    /// Like [`Bus::request_stream`], with an input stream from the caller as well.
    pub async fn request_duplex<R: DuplexRpc>(
        &self,
        req: &R,
    ) -> Result<(R::Reply, StreamReader<R::Item>, StreamWriter<R::Input>), BusError> {
        let data = self.stream_inbox(R::SERVICE.name());
        let sub = self.subscribe_raw(&data).await?;
        let input_ctrl = self.stream_inbox(R::SERVICE.name());
        let input_ctrl_sub = self.subscribe_raw(&input_ctrl).await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HDR_STREAM, data.as_str());
        headers.insert(HDR_CREDIT, DEFAULT_CREDIT.to_string());
        headers.insert(HDR_INPUT_CTRL, input_ctrl.as_str());
        let msg = self.raw_request(R::SERVICE, R::subject(&self.node), bus_schema::encode(req)?, headers).await?;
        let reply = decode_reply::<R::Reply>(&msg.payload)?;
        let ctrl = header(&msg, HDR_CTRL).ok_or_else(|| BusError::internal("stream reply without control subject"))?;
        let input = header(&msg, HDR_INPUT).ok_or_else(|| BusError::internal("duplex reply without input subject"))?;
        let peer = self.answered_by(R::SERVICE, &self.node, &msg);
        let reader = StreamReader::new(self.client.clone(), sub, ctrl, DEFAULT_CREDIT, self.live.watch(peer.clone()));
        let writer = StreamWriter::new(self.client.clone(), input, input_ctrl_sub, DEFAULT_CREDIT, self.live.watch(peer));
        Ok((reply, reader, writer))
    }

    /// Publish an event on `berth.v1.events.<type>.<action>`.
    pub async fn publish_event(&self, ev: &bus_schema::event::Event) {
        match large::fit_event(ev, large::limit(&self.client)) {
            Ok(b) => {
                let mut headers = async_nats::HeaderMap::new();
                trace::inject(&mut headers);
                if let Err(e) = self.client.publish_with_headers(ev.subject(), headers, b.into()).await {
                    tracing::warn!(error = %e, "publishing event failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "encoding event failed"),
        }
    }

    /// The instance notices of this node's services, as they come: a service that
    /// started (peers reconcile what they hold with it) or exited.
    pub async fn instance_notices(&self) -> Result<impl futures_util::Stream<Item = InstanceNotice> + Send + Unpin, BusError> {
        use futures_util::StreamExt;
        let sub = self.subscribe_raw(&bus_schema::subject::instance_wildcard(&self.node)).await?;
        Ok(sub.filter_map(|m| async move {
            use bus_schema::subject::InstanceEvent as E;
            if m.subject.ends_with(E::Started.token()) {
                bus_schema::decode(&m.payload).ok().map(InstanceNotice::Started)
            } else if m.subject.ends_with(E::Exited.token()) {
                bus_schema::decode(&m.payload).ok().map(InstanceNotice::Exited)
            } else {
                None
            }
        }).boxed())
    }

    async fn subscribe_raw(&self, subject: &str) -> Result<async_nats::Subscriber, BusError> {
        self.client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| BusError::unavailable(format!("bus subscribe failed: {e}")))
    }

    /// The instance that sent `msg` (its `Berth-Instance`), else any instance of `svc`.
    fn answered_by(&self, svc: Service, node: &str, msg: &async_nats::Message) -> Peer {
        match header(msg, HDR_INSTANCE).and_then(|p| p.parse().ok()) {
            Some(pid) => Peer::Instance { name: svc.name().to_string(), node: node.to_string(), pid },
            None => self.live.service(svc.name(), node),
        }
    }

    async fn raw_request(
        &self,
        svc: Service,
        subject: String,
        payload: Vec<u8>,
        mut headers: async_nats::HeaderMap,
    ) -> Result<async_nats::Message, BusError> {
        use tracing::Instrument;
        let span = tracing::info_span!("bus.request", otel.kind = "client", messaging.destination = %subject, service = %svc);
        async {
            trace::inject(&mut headers);
            headers.insert(HDR_TIMEOUT_MS, self.timeout.as_millis().to_string());
            headers.insert(HDR_CALLER, &*self.caller);
            let t0 = std::time::Instant::now();
            let res = self.exchange(svc, subject.clone(), payload, headers).await;
            let op = subject.rsplit('.').next().unwrap_or("");
            berth_telemetry::metrics::observe(
                "berth_bus_request_duration_seconds",
                "Bus request/reply latency by target service and operation.",
                &[("target", svc.name()), ("op", op), ("outcome", if res.is_ok() { "ok" } else { "error" })],
                t0.elapsed().as_secs_f64(),
            );
            res
        }
        .instrument(span)
        .await
    }

    /// One request and its reply, whole: a body too large for one message is offered
    /// in chunks, and so may the reply be. Waits a moment for a dropped connection,
    /// sends again while nobody listens (a service being restarted), and fails as soon
    /// as the instance that took the request exits or the connection drops.
    async fn exchange(
        &self,
        svc: Service,
        subject: String,
        payload: Vec<u8>,
        mut headers: async_nats::HeaderMap,
    ) -> Result<async_nats::Message, BusError> {
        let node = subject_node(svc, &subject, &self.node);
        let (payload, _offer): (bytes::Bytes, _) = if payload.len() > large::limit(&self.client) {
            let offer = large::offer(&self.client, &self.user, svc.name(), payload, &mut headers).await?;
            (bytes::Bytes::new(), Some(AbortOnDrop(offer)))
        } else {
            (payload.into(), None)
        };
        let t0 = Instant::now();
        let deadline = t0 + self.timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.live.connected(left.min(RECONNECT_WAIT)).await {
                return Err(BusError::unavailable(format!(
                    "the bus is not connected (nats-server is restarting): the {svc} service cannot be reached"
                )));
            }
            let mut watch = self.live.watch(self.live.service(svc.name(), &node));
            let left = deadline.saturating_duration_since(Instant::now());
            let req = async_nats::Request::new().payload(payload.clone()).headers(headers.clone()).timeout(Some(left));
            let res = tokio::select! {
                r = self.client.send_request(subject.clone(), req) => r,
                e = watch.gone() => return Err(e),
            };
            match res {
                Ok(msg) => {
                    let mut w = self.live.watch(self.answered_by(svc, &node, &msg));
                    return match large::fetch(&self.client, msg.headers.as_ref(), w.gone()).await? {
                        Some(body) => Ok(async_nats::Message { payload: body.into(), ..msg }),
                        None => Ok(msg),
                    };
                }
                Err(e)
                    if e.kind() == async_nats::RequestErrorKind::NoResponders
                        && t0.elapsed() + backoff < NO_RESPONDERS_WAIT.min(self.timeout) =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    use async_nats::RequestErrorKind as K;
                    return Err(match e.kind() {
                        K::NoResponders => {
                            BusError::unavailable(format!("the {svc} service is not running (no responders on {subject})"))
                        }
                        K::TimedOut => BusError::new(
                            ErrorKind::Timeout,
                            format!("the {svc} service did not answer within {:?} ({subject})", self.timeout),
                        ),
                        _ => BusError::unavailable(format!("bus request to {subject} failed: {e}")),
                    });
                }
            }
        }
    }
}

/// Run `f` again once if it failed quickly with Unavailable: its service died under
/// it or the bus dropped (a service that is simply not there fails after
/// [`NO_RESPONDERS_WAIT`] and is not asked again).
async fn retry_once<T, F, Fut>(f: F) -> Result<T, BusError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, BusError>>,
{
    let t0 = Instant::now();
    match f().await {
        Err(e) if e.is(ErrorKind::Unavailable) && t0.elapsed() < NO_RESPONDERS_WAIT => {
            tracing::debug!(error = %e, "sending an idempotent request again");
            f().await
        }
        r => r,
    }
}

/// The node a subject is addressed to (`berth.v1.<svc>.<node>.<op>`); ours for
/// cluster-wide services.
fn subject_node(svc: Service, subject: &str, own: &str) -> String {
    match svc.scope() {
        bus_schema::Scope::Node => subject.split('.').nth(3).unwrap_or(own).to_string(),
        bus_schema::Scope::Cluster => own.to_string(),
    }
}

/// Aborts a task when dropped (the chunks of a large request once it is answered).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn header(msg: &async_nats::Message, name: &str) -> Option<String> {
    msg.headers.as_ref()?.get(name).map(|v| v.as_str().to_string())
}

fn decode_reply<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, BusError> {
    bus_schema::decode::<WireResult<T>>(b)?
}


/// Helpers every service binary uses: connect with retries, one instance per data
/// root, stop on a signal or when `berth up` lets go.
pub mod service {
    use super::*;
    use std::sync::{Mutex, OnceLock};

    /// Why a service stops.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Stop {
        /// SIGTERM or SIGINT: an orderly stop (without live-restore the runtime stops
        /// its containers, as dockerd does).
        Orderly,
        /// The supervisor is gone (`berth up` crashed or was killed) or let this
        /// instance go (an upgrade replaces it): stop serving and leave every
        /// container, sandbox and mount as it is for the next instance to adopt.
        Detach,
    }

    static STOP: OnceLock<Stop> = OnceLock::new();
    static SUPERVISOR: OnceLock<Mutex<Option<std::os::unix::net::UnixStream>>> = OnceLock::new();
    static INSTANCE_LOCK: OnceLock<std::fs::File> = OnceLock::new();

    /// Why this service is stopping, once it is.
    pub fn stop_reason() -> Option<Stop> {
        STOP.get().copied()
    }

    /// Stopping without touching containers (see [`Stop::Detach`]).
    pub fn detached() -> bool {
        stop_reason() == Some(Stop::Detach)
    }

    /// This process's end of the link to `berth up` ([`berth_config::env::SUPERVISOR_FD`]),
    /// taken once and kept close-on-exec so no shim or container inherits it.
    fn supervisor() -> &'static Mutex<Option<std::os::unix::net::UnixStream>> {
        SUPERVISOR.get_or_init(|| {
            let fd = std::env::var(berth_config::env::SUPERVISOR_FD).ok().and_then(|v| v.parse::<i32>().ok());
            Mutex::new(fd.filter(|fd| *fd > 2).and_then(|fd| {
                use std::os::fd::FromRawFd;
                // SAFETY: `berth up` passed this fd to this process for this purpose only
                if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                    return None;
                }
                Some(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) })
            }))
        })
    }

    /// Tell `berth up` this instance serves (it waits for this before it retires the
    /// instance this one replaces). Without a supervisor, nothing.
    pub fn ready() {
        use std::io::Write;
        if let Some(s) = supervisor().lock().unwrap().as_mut() {
            let _ = s.write_all(b"R");
        }
    }

    /// Resolves when the supervisor's end closes (never without a supervisor).
    async fn supervisor_gone() {
        let s = supervisor().lock().unwrap().as_ref().and_then(|s| s.try_clone().ok());
        let Some(s) = s else { return std::future::pending().await };
        if s.set_nonblocking(true).is_err() {
            return std::future::pending().await;
        }
        let Ok(s) = tokio::net::UnixStream::from_std(s) else { return std::future::pending().await };
        let mut buf = [0u8; 16];
        loop {
            let _ = s.readable().await;
            match s.try_read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// One instance of a backend service per data root: waits (up to 20 s) for an
    /// instance still finishing — a node killed and started again, or an upgrade's
    /// handover — to exit. The lock is `<root>/run/<service>.lock`, held for life.
    pub async fn claim_instance(svc: Service) -> Result<(), BusError> {
        use std::os::fd::AsRawFd;
        let Some(root) = std::env::var_os(berth_config::env::ROOT) else { return Ok(()) };
        let dir = std::path::Path::new(&root).join("run");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.lock", svc.name()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| BusError::internal(format!("opening {}: {e}", path.display())))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut said = false;
        // SAFETY: flock on an fd this function owns
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if std::time::Instant::now() > deadline {
                return Err(BusError::unavailable(format!(
                    "another {} service runs on {} (it holds {})",
                    svc.name(),
                    std::path::Path::new(&root).display(),
                    path.display()
                )));
            }
            if !said {
                tracing::info!("waiting for the previous {} instance to exit", svc.name());
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = INSTANCE_LOCK.set(f);
        Ok(())
    }

    /// Connect with the environment `berth up` set, retrying for a while: the bus may
    /// still be starting. A backend first claims its data root (see [`claim_instance`])
    /// and opens its records' folder (see [`berth_config::records`]).
    pub async fn connect(svc: Service) -> Result<Bus, BusError> {
        connect_with(svc, &[]).await
    }

    /// [`connect`] for a service whose records have `migrations` from older formats.
    pub async fn connect_with(svc: Service, migrations: &[berth_config::records::Migration]) -> Result<Bus, BusError> {
        supervisor();
        if svc != Service::Gateway {
            claim_instance(svc).await?;
            if let Some(root) = std::env::var_os(berth_config::env::ROOT) {
                let dir = std::path::Path::new(&root).join(svc.name());
                berth_config::records::open(&dir, svc.name(), migrations).map_err(|e| BusError::internal(e.to_string()))?;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match Bus::from_env(svc.name()).await {
                Ok(b) => return Ok(b),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "bus not ready, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Resolves on SIGTERM or SIGINT ([`Stop::Orderly`]) or when the supervisor lets go
    /// ([`Stop::Detach`]), and records which.
    pub async fn shutdown_signal() -> Stop {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let why = tokio::select! {
            _ = term.recv() => Stop::Orderly,
            _ = int.recv() => Stop::Orderly,
            _ = supervisor_gone() => Stop::Detach,
        };
        let _ = STOP.set(why);
        match why {
            Stop::Orderly => tracing::info!("stopping"),
            Stop::Detach => tracing::info!("the supervisor let go: stopping, leaving containers as they are"),
        }
        why
    }

    /// Run `fut` until it ends or a shutdown arrives (see [`shutdown_signal`]).
    pub async fn until_shutdown<F, T>(fut: F) -> Option<T>
    where
        F: std::future::Future<Output = T>,
    {
        tokio::select! {
            r = fut => Some(r),
            _ = shutdown_signal() => None,
        }
    }
}
