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

mod contract;
mod server;
mod stream;
mod trace;

pub use contract::{channel, first_item, into_stream, produce, single, Emitter, SystemClient};
#[doc(hidden)]
pub mod __contract {
    pub use crate::contract::{call, call_duplex, call_stream};
}
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
    stream::{DEFAULT_CREDIT, HDR_CREDIT, HDR_CTRL, HDR_INPUT, HDR_INPUT_CTRL, HDR_STREAM, HDR_TIMEOUT_MS},
    BusError, DuplexRpc, ErrorKind, Rpc, Service, StreamRpc, SystemRpc, WireResult,
};
use std::time::Duration;

pub use async_nats;
pub use bus_schema;

/// How long a request waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
}

impl Bus {
    /// Connect as `name` (used for the connection name and, without credentials, the
    /// inbox prefix). With credentials, replies arrive under `_I.<user>.` only.
    pub async fn connect(url: &str, creds: Option<Creds>, node: &str, name: &str) -> Result<Bus, BusError> {
        if !bus_schema::subject::valid_node(node) {
            return Err(BusError::invalid(format!("invalid node id {node:?}")));
        }
        let user = creds.as_ref().map(|c| c.user.clone()).unwrap_or_else(|| name.to_string());
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .custom_inbox_prefix(bus_schema::subject::inbox_prefix(&user))
            .request_timeout(Some(DEFAULT_TIMEOUT))
            .connection_timeout(Duration::from_secs(5))
            .subscription_capacity(1 << 16)
            .max_reconnects(None);
        if let Some(c) = creds {
            opts = opts.user_and_password(c.user, c.password);
        }
        let client = opts
            .connect(url)
            .await
            .map_err(|e| BusError::unavailable(format!("cannot connect to the bus at {url}: {e}")))?;
        Ok(Bus { client, node: node.to_string(), user: user.into(), timeout: DEFAULT_TIMEOUT })
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
        Ok((reply, StreamReader::new(self.client.clone(), sub, ctrl, DEFAULT_CREDIT)))
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
        let reader = StreamReader::new(self.client.clone(), sub, ctrl, DEFAULT_CREDIT);
        let writer = StreamWriter::new(self.client.clone(), input, input_ctrl_sub, DEFAULT_CREDIT);
        Ok((reply, reader, writer))
    }

    /// Publish an event on `berth.v1.events.<type>.<action>`.
    pub async fn publish_event(&self, ev: &bus_schema::event::Event) {
        match bus_schema::encode(ev) {
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

    async fn subscribe_raw(&self, subject: &str) -> Result<async_nats::Subscriber, BusError> {
        self.client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| BusError::unavailable(format!("bus subscribe failed: {e}")))
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
            let req = async_nats::Request::new().payload(payload.into()).headers(headers).timeout(Some(self.timeout));
            let t0 = std::time::Instant::now();
            let res = self.client.send_request(subject.clone(), req).await;
            let op = subject.rsplit('.').next().unwrap_or("");
            berth_telemetry::metrics::observe(
                "berth_bus_request_duration_seconds",
                "Bus request/reply latency by target service and operation.",
                &[("target", svc.name()), ("op", op), ("outcome", if res.is_ok() { "ok" } else { "error" })],
                t0.elapsed().as_secs_f64(),
            );
            res.map_err(|e| {
                use async_nats::RequestErrorKind as K;
                match e.kind() {
                    K::NoResponders => BusError::unavailable(format!("the {svc} service is not running (no responders on {subject})")),
                    K::TimedOut => BusError::new(ErrorKind::Timeout, format!("the {svc} service did not answer within {:?} ({subject})", self.timeout)),
                    _ => BusError::unavailable(format!("bus request to {subject} failed: {e}")),
                }
            })
        }
        .instrument(span)
        .await
    }
}

fn header(msg: &async_nats::Message, name: &str) -> Option<String> {
    msg.headers.as_ref()?.get(name).map(|v| v.as_str().to_string())
}

fn decode_reply<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, BusError> {
    bus_schema::decode::<WireResult<T>>(b)?
}


/// Helpers every service binary uses: connect with retries, stop on a signal.
pub mod service {
    use super::*;

    /// Connect with the environment `berth up` set, retrying for a while: the bus may
    /// still be starting.
    pub async fn connect(svc: Service) -> Result<Bus, BusError> {
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

    /// Resolves on SIGTERM or SIGINT.
    pub async fn shutdown_signal() {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }

    /// Run `fut` until it ends or a shutdown signal arrives.
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
