//! Serving a service's requests: one subscription per operation (queue group per
//! service, so several instances share the load), one task per request, each in a
//! span that continues the caller's trace.

use crate::{large, liveness::Peer, stream::StreamReader, stream::StreamWriter, trace, Bus};
use bus_schema::{
    docker,
    stream::{DEFAULT_CREDIT, HDR_CALLER, HDR_CREDIT, HDR_CTRL, HDR_INPUT, HDR_INPUT_CTRL, HDR_INSTANCE, HDR_STREAM},
    system::{InfoPart, ServiceMetrics, ServicePing, ServicePong, ServiceStarted, SystemInfoPart},
    BusError, BusStream, DuplexRpc, ErrorKind, Rpc, Service, StreamRpc, SystemRpc, WireResult,
};
use futures_util::{future::BoxFuture, StreamExt};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use tracing::Instrument;

type Handler = Arc<dyn Fn(async_nats::Message) -> BoxFuture<'static, ()> + Send + Sync>;
type InfoFn = Arc<dyn Fn() -> BoxFuture<'static, docker::SystemInfo> + Send + Sync>;
type MetricsFn = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

pub struct Server {
    bus: Bus,
    service: Service,
    started: i64,
    handlers: Vec<(String, Handler)>,
    info: InfoFn,
    metrics: Option<MetricsFn>,
}

impl Server {
    pub fn new(bus: Bus, service: Service) -> Server {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Server {
            bus,
            service,
            started,
            handlers: Vec::new(),
            info: Arc::new(|| Box::pin(async { docker::SystemInfo::default() })),
            metrics: None,
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// This service's part of `GET /info`.
    pub fn info<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = docker::SystemInfo> + Send + 'static,
    {
        self.info = Arc::new(move || Box::pin(f()));
        self
    }

    /// Update this service's gauges (containers by state, images...) before each scrape.
    pub fn metrics<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.metrics = Some(Arc::new(move || Box::pin(f())));
        self
    }

    /// Serve a request/reply operation.
    pub fn rpc<R, F, Fut>(mut self, f: F) -> Self
    where
        R: Rpc,
        F: Fn(R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Reply, BusError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let bus = self.bus.clone();
        let subject = R::subject(&self.bus.node);
        let h: Handler = Arc::new(move |msg: async_nats::Message| {
            let f = f.clone();
            let bus = bus.clone();
            Box::pin(async move {
                let res = match decode_request::<R>(&bus, &msg).await {
                    Ok(req) => f(req).await,
                    Err(e) => Err(e),
                };
                respond(&bus, &msg, &res, async_nats::HeaderMap::new()).await;
            })
        });
        self.handlers.push((subject, h));
        self
    }

    /// Serve an operation that answers with a reply and then a stream of items.
    /// The handler calls [`Responder::accept`] with the reply to start streaming; an
    /// error returned before that is the reply, one returned after ends the stream.
    pub fn stream<R, F, Fut>(mut self, f: F) -> Self
    where
        R: StreamRpc,
        F: Fn(R, Responder<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BusError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let bus = self.bus.clone();
        let subject = R::subject(&self.bus.node);
        let h: Handler = Arc::new(move |msg: async_nats::Message| {
            let f = f.clone();
            let bus = bus.clone();
            Box::pin(async move {
                let req = match decode_request::<R>(&bus, &msg).await {
                    Ok(r) => r,
                    Err(e) => {
                        let err: WireResult<R::Reply> = Err(e);
                        respond(&bus, &msg, &err, async_nats::HeaderMap::new()).await;
                        return;
                    }
                };
                let state = Arc::new(std::sync::Mutex::new(Some(msg.clone())));
                let responder = Responder::<R> { bus: bus.clone(), pending: state.clone(), _r: PhantomData };
                let res = f(req, responder).await;
                // Not accepted: the result is the reply.
                let pending = state.lock().unwrap().take();
                if let Some(m) = pending {
                    let res: WireResult<R::Reply> = match res {
                        Err(e) => Err(e),
                        Ok(()) => Err(BusError::internal(format!("{} handler neither replied nor failed", R::OP))),
                    };
                    respond(&bus, &m, &res, async_nats::HeaderMap::new()).await;
                } else if let Err(e) = res {
                    tracing::debug!(error = %e, op = R::OP, "stream handler ended with an error after accepting");
                }
            })
        });
        self.handlers.push((subject, h));
        self
    }

    /// Serve a stream operation whose handler answers `(reply, items)` (the API
    /// traits' shape): an error from the handler is the reply; the items follow the
    /// reply, and an error item ends the stream with that error.
    pub fn serve_stream<R, F, Fut>(self, f: F) -> Self
    where
        R: StreamRpc,
        F: Fn(R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(R::Reply, BusStream<R::Item>), BusError>> + Send + 'static,
    {
        self.stream::<R, _, _>(move |req, resp| {
            let answer = f(req);
            async move {
                let (reply, items) = answer.await?;
                let w = resp.accept(reply).await?;
                pump(w, items).await
            }
        })
    }

    /// Serve a duplex operation whose handler reads the caller's input as a stream and
    /// answers `(reply, items)`. The input subject is open before the handler runs;
    /// the caller starts writing when the reply arrives, so a handler must reply
    /// without waiting for input (do the reading in the items stream).
    pub fn serve_duplex<R, F, Fut>(self, f: F) -> Self
    where
        R: DuplexRpc,
        F: Fn(R, BusStream<R::Input>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(R::Reply, BusStream<R::Item>), BusError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.stream::<R, _, _>(move |req, resp| {
            let f = f.clone();
            async move {
                let (input, reader) = resp.open_input().await?;
                let (reply, items) = f(req, crate::into_stream(reader)).await?;
                let w = resp.accept_input(reply, input).await?;
                pump(w, items).await
            }
        })
    }

    /// Subscribe every handler and serve until the connection closes.
    pub async fn run(self) -> Result<(), BusError> {
        let Server { bus, service, started, mut handlers, info, metrics } = self;
        // System requests every service answers.
        let node = bus.node.clone();
        let ping_client = bus.clone();
        let pong = ServicePong {
            service,
            node: node.clone(),
            version: berth_config::VERSION.to_string(),
            pid: std::process::id(),
            started,
        };
        handlers.push((
            ServicePing::subject(service, &node),
            Arc::new(move |msg| {
                let c = ping_client.clone();
                let p = pong.clone();
                Box::pin(async move { respond::<ServicePong>(&c, &msg, &Ok(p), async_nats::HeaderMap::new()).await })
            }),
        ));
        let info_client = bus.clone();
        handlers.push((
            SystemInfoPart::subject(service, &node),
            Arc::new(move |msg| {
                let c = info_client.clone();
                let info = info.clone();
                Box::pin(async move {
                    let part = InfoPart { service, info: info().await };
                    respond::<InfoPart>(&c, &msg, &Ok(part), async_nats::HeaderMap::new()).await
                })
            }),
        ));

        let metrics_client = bus.clone();
        handlers.push((
            ServiceMetrics::subject(service, &node),
            Arc::new(move |msg| {
                let c = metrics_client.clone();
                let m = metrics.clone();
                Box::pin(async move {
                    if let Some(m) = m {
                        m().await;
                    }
                    let text = berth_telemetry::metrics::label_all(&berth_telemetry::metrics::render(), "service", service.name());
                    respond::<String>(&c, &msg, &Ok(text), async_nats::HeaderMap::new()).await
                })
            }),
        ));

        let queue = format!("berth.{}", service.name());
        let mut tasks = tokio::task::JoinSet::new();
        for (subject, h) in handlers {
            let mut sub = bus
                .client
                .queue_subscribe(subject.clone(), queue.clone())
                .await
                .map_err(|e| BusError::unavailable(format!("subscribe {subject}: {e}")))?;
            tasks.spawn(async move {
                while let Some(msg) = sub.next().await {
                    let span = tracing::info_span!("bus.serve", otel.kind = "server", messaging.destination = %subject);
                    trace::continue_from(&span, msg.headers.as_ref());
                    tokio::spawn(h(msg).instrument(span));
                }
            });
        }
        bus.client.flush().await.map_err(|e| BusError::unavailable(format!("bus flush: {e}")))?;
        tracing::info!(service = %service, node = %node, "serving on the bus");
        announce(&bus, service).await;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// Tell the node's services this instance serves (they reconcile with it).
async fn announce(bus: &Bus, service: Service) {
    let n = ServiceStarted { service, node: bus.node.clone(), pid: std::process::id() };
    let subject = bus_schema::subject::instance_subject(&bus.node, service, bus_schema::subject::InstanceEvent::Started);
    if let Ok(b) = bus_schema::encode(&n) {
        if let Err(e) = bus.client.publish(subject, b.into()).await {
            tracing::warn!(error = %e, "announcing the service failed");
        }
    }
}

/// The caller named in `Berth-Caller`, if any.
fn caller(msg: &async_nats::Message) -> Peer {
    header(msg, HDR_CALLER).and_then(|c| Peer::parse_caller(&c)).unwrap_or(Peer::Unknown)
}

/// Decode a request, fetching it first if it came in chunks.
async fn decode_request<R: Rpc>(bus: &Bus, msg: &async_nats::Message) -> Result<R, BusError> {
    let mut w = bus.live.watch(caller(msg));
    let body = large::fetch(&bus.client, msg.headers.as_ref(), w.gone()).await?;
    bus_schema::decode::<R>(body.as_deref().unwrap_or(&msg.payload))
        .map_err(|e| BusError::invalid(format!("bad {} request: {e}", R::OP)))
}

/// Answer `msg` (nothing if it wants no answer). Names this instance in
/// `Berth-Instance`; an answer too large for one message is offered in chunks.
async fn respond<T: serde::Serialize>(
    bus: &Bus,
    msg: &async_nats::Message,
    res: &WireResult<T>,
    mut headers: async_nats::HeaderMap,
) {
    let Some(reply) = msg.reply.clone() else { return };
    let mut payload = match bus_schema::encode(res) {
        Ok(b) => b,
        Err(e) => bus_schema::encode::<WireResult<()>>(&Err(e)).unwrap_or_default(),
    };
    let client = &bus.client;
    headers.insert(HDR_INSTANCE, std::process::id().to_string());
    if payload.len() > large::limit(client) {
        // the holder task ends once the caller fetched it all, or idles out
        // the caller is the bus user whose inbox the reply goes to (`_I.<user>.…`)
        let receiver = reply.strip_prefix("_I.").and_then(|r| r.split('.').next()).unwrap_or("_");
        match large::offer(client, &bus.user, receiver, std::mem::take(&mut payload), &mut headers).await {
            Ok(_) => {}
            Err(e) => payload = bus_schema::encode::<WireResult<()>>(&Err(e)).unwrap_or_default(),
        }
    }
    if let Err(e) = client.publish_with_headers(reply, headers, payload.into()).await {
        tracing::warn!(error = %e, "reply failed");
    }
}

fn header(msg: &async_nats::Message, name: &str) -> Option<String> {
    msg.headers.as_ref()?.get(name).map(|v| v.as_str().to_string())
}

/// Lets a stream handler send its reply and get the writer for the items.
pub struct Responder<R: StreamRpc> {
    bus: Bus,
    pending: Arc<std::sync::Mutex<Option<async_nats::Message>>>,
    _r: PhantomData<fn(R)>,
}

impl<R: StreamRpc> Responder<R> {
    fn take(&self) -> Result<async_nats::Message, BusError> {
        self.pending.lock().unwrap().take().ok_or_else(|| BusError::internal("stream already accepted"))
    }

    /// The caller of the request being answered (still pending).
    fn pending_caller(&self) -> Result<Peer, BusError> {
        self.pending.lock().unwrap().as_ref().map(caller).ok_or_else(|| BusError::internal("stream already accepted"))
    }

    /// The request being answered (still pending).
    fn peek_header(&self, name: &str) -> Option<String> {
        self.pending.lock().unwrap().as_ref().and_then(|m| header(m, name))
    }

    /// A subject the caller publishes to and this service reads: `_S.<caller>.<me>.<id>`,
    /// the caller named by the request's stream subject (`_S.<me>.<caller>.<id>`).
    fn from_caller(&self, msg_stream: Option<&str>) -> String {
        match msg_stream.and_then(bus_schema::contract::stream_parties) {
            Some((_, caller)) => self.bus.stream_inbox(caller),
            None => self.bus.client.new_inbox(),
        }
    }

    async fn open_writer(&self, msg: &async_nats::Message) -> Result<(StreamWriter<R::Item>, String), BusError> {
        let data = header(msg, HDR_STREAM)
            .ok_or_else(|| BusError::invalid(format!("{} is a stream request: send it with request_stream", R::OP)))?;
        let credit = header(msg, HDR_CREDIT).and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_CREDIT);
        let ctrl = self.from_caller(Some(&data));
        let sub = self.bus.subscribe_raw(&ctrl).await?;
        let reader = self.bus.live.watch(caller(msg));
        Ok((StreamWriter::new(self.bus.client.clone(), data, sub, credit, reader), ctrl))
    }

    /// Send `reply` and return the writer for the items.
    pub async fn accept(self, reply: R::Reply) -> Result<StreamWriter<R::Item>, BusError> {
        let msg = self.take()?;
        let (writer, ctrl) = self.open_writer(&msg).await?;
        let mut h = async_nats::HeaderMap::new();
        h.insert(HDR_CTRL, ctrl.as_str());
        respond::<R::Reply>(&self.bus, &msg, &Ok(reply), h).await;
        Ok(writer)
    }
}

impl<R: DuplexRpc> Responder<R> {
    /// Subscribe the subject of the caller's input before replying: returns the
    /// subject (sent in the reply) and the reader of the input.
    async fn open_input(&self) -> Result<(String, StreamReader<R::Input>), BusError> {
        let input_ctrl = self
            .peek_header(HDR_INPUT_CTRL)
            .ok_or_else(|| BusError::invalid(format!("{} is a duplex request: send it with request_duplex", R::OP)))?;
        let input = self.from_caller(self.peek_header(HDR_STREAM).as_deref());
        let sub = self.bus.subscribe_raw(&input).await?;
        let watch = self.bus.live.watch(self.pending_caller()?);
        Ok((input.clone(), StreamReader::new(self.bus.client.clone(), sub, input_ctrl, DEFAULT_CREDIT, watch)))
    }

    /// Send `reply` naming the input subject opened by [`Self::open_input`].
    async fn accept_input(self, reply: R::Reply, input: String) -> Result<StreamWriter<R::Item>, BusError> {
        let msg = self.take()?;
        let (writer, ctrl) = self.open_writer(&msg).await?;
        let mut h = async_nats::HeaderMap::new();
        h.insert(HDR_CTRL, ctrl.as_str());
        h.insert(HDR_INPUT, input.as_str());
        respond::<R::Reply>(&self.bus, &msg, &Ok(reply), h).await;
        Ok(writer)
    }

    /// Send `reply` and return the writer for the items and the reader of the caller's input.
    pub async fn accept_duplex(
        self,
        reply: R::Reply,
    ) -> Result<(StreamWriter<R::Item>, StreamReader<R::Input>), BusError> {
        let (input, reader) = self.open_input().await?;
        let writer = self.accept_input(reply, input).await?;
        Ok((writer, reader))
    }
}

/// Send a stream's items to its reader until the stream ends, fails, or the reader
/// goes away (then the stream is dropped, which tells its producer to stop).
pub(crate) async fn pump<T: serde::Serialize>(mut w: StreamWriter<T>, mut items: BusStream<T>) -> Result<(), BusError> {
    loop {
        let next = tokio::select! {
            biased;
            n = items.next() => n,
            _ = w.cancelled() => return Err(BusError::new(ErrorKind::Cancelled, "the reader went away")),
        };
        match next {
            Some(Ok(item)) => w.send(item).await?,
            Some(Err(e)) => return w.fail(e).await,
            None => return w.end().await,
        }
    }
}
