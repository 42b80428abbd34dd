//! What `bus-schema`'s tables generate on the bus side: for each service a typed
//! client (`StorageClient`: the service's API trait over the bus) and a server
//! adapter (`serve_storage`: any implementation of the trait served on the bus); and
//! the helpers both use to turn bus streams into [`BusStream`]s and back.
//!
//! Cost: a unary call is exactly [`Bus::request`]; a stream's items are moved from the
//! bus reader to the caller (no copy); a duplex input is fed to the bus by one task.

use std::future::Future;
use std::time::Duration;

use bus_schema::{BusError, BusStream, DuplexRpc, ErrorKind, Rpc, Service, StreamRpc, SystemRpc};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::{Bus, StreamReader};

/// The items of a bus stream as a [`BusStream`]; dropping it cancels the writer.
pub fn into_stream<T: DeserializeOwned + Send + 'static>(rd: StreamReader<T>) -> BusStream<T> {
    Box::pin(futures_util::stream::unfold(rd, |mut rd| async move { rd.next().await.map(|item| (item, rd)) }))
}

/// The sending half of [`produce`].
pub struct Emitter<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, BusError>>,
}

impl<T> Clone for Emitter<T> {
    fn clone(&self) -> Self {
        Emitter { tx: self.tx.clone() }
    }
}

impl<T: Send> Emitter<T> {
    /// Send one item; waits while the reader is behind. Fails with `Cancelled` once
    /// the reader is gone: stop producing then.
    pub async fn send(&self, item: T) -> Result<(), BusError> {
        self.tx.send(Ok(item)).await.map_err(|_| BusError::new(ErrorKind::Cancelled, "the reader went away"))
    }

    /// Resolves when the reader is gone (an answer waiting for something to send
    /// stops waiting then).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Send from a blocking thread (never from async code).
    pub fn blocking_send(&self, item: T) -> Result<(), BusError> {
        self.tx.blocking_send(Ok(item)).map_err(|_| BusError::new(ErrorKind::Cancelled, "the reader went away"))
    }

    /// End the stream with an error the reader will see.
    pub async fn fail(self, err: BusError) {
        let _ = self.tx.send(Err(err)).await;
    }
}

/// A stream and the emitter that feeds it (`cap` items buffered): for input
/// streams a caller writes as it goes (stdin, a download), and for tests.
pub fn channel<T: Send + 'static>(cap: usize) -> (Emitter<T>, BusStream<T>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(cap);
    (Emitter { tx }, Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))))
}

/// The one item an answer sends (a layer apply's result): its error if it failed.
pub async fn single<T: Send + 'static>(mut s: BusStream<T>, what: &str) -> Result<T, BusError> {
    let item = match s.next().await {
        Some(r) => r?,
        None => return Err(BusError::internal(format!("{what} ended without an answer"))),
    };
    while let Some(r) = s.next().await {
        r?;
    }
    Ok(item)
}

/// A stream fed by a task: `f` sends items through the [`Emitter`]; its error, if
/// any, ends the stream. Dropping the stream makes the emitter's sends fail.
pub fn produce<T, F, Fut>(f: F) -> BusStream<T>
where
    T: Send + 'static,
    F: FnOnce(Emitter<T>) -> Fut,
    Fut: Future<Output = Result<(), BusError>> + Send + 'static,
{
    let (tx, items) = channel(16);
    let job = f(tx.clone());
    tokio::spawn(async move {
        if let Err(e) = job.await {
            tx.fail(e).await;
        }
    });
    items
}

/// Wait for a stream's first item: an error there is returned (it becomes the
/// request's error, which Docker answers with an HTTP status), anything else is
/// kept at the head of the stream. For answers whose reply must wait until the work
/// is known to start (pull, push, save).
pub async fn first_item<T: Send + 'static>(mut s: BusStream<T>) -> Result<BusStream<T>, BusError> {
    match s.next().await {
        None => Ok(Box::pin(futures_util::stream::empty())),
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(s))),
    }
}

/// Answering a stream operation of an API trait in two steps, as a [`crate::Responder`]
/// does on the bus: the handler `f` runs in its own task, does its checks, then calls
/// [`Answer::accept`] (or [`Answer::accept_duplex`]) with the reply and writes the
/// items to the returned [`Sink`]. An error returned before accepting is the
/// operation's error; one returned after it only ends the handler (fail the sink to
/// tell the reader). For services whose handlers were written against `Responder`.
pub async fn answer<R, F, Fut>(f: F) -> Result<(R::Reply, BusStream<R::Item>), BusError>
where
    R: StreamRpc,
    R::Reply: Send,
    F: FnOnce(Answer<R>) -> Fut,
    Fut: Future<Output = Result<(), BusError>> + Send + 'static,
{
    answer_with(None, f).await
}

/// [`answer`] for a duplex operation: the caller's `input` comes back from
/// [`Answer::accept_duplex`].
pub async fn answer_duplex<R, F, Fut>(
    input: BusStream<R::Input>,
    f: F,
) -> Result<(R::Reply, BusStream<R::Item>), BusError>
where
    R: DuplexRpc,
    R::Reply: Send,
    F: FnOnce(Answer<R>) -> Fut,
    Fut: Future<Output = Result<(), BusError>> + Send + 'static,
{
    answer_with(Some(Box::new(input)), f).await
}

type Accepted<R> = Result<(<R as Rpc>::Reply, BusStream<<R as StreamRpc>::Item>), BusError>;

async fn answer_with<R, F, Fut>(input: Option<Box<dyn std::any::Any + Send>>, f: F) -> Accepted<R>
where
    R: StreamRpc,
    R::Reply: Send,
    F: FnOnce(Answer<R>) -> Fut,
    Fut: Future<Output = Result<(), BusError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<Accepted<R>>();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let job = f(Answer {
        slot: slot.clone(),
        input,
    });
    tokio::spawn(async move {
        let res = job.await;
        let pending = slot.lock().unwrap().take();
        match (pending, res) {
            (Some(tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Some(tx), Ok(())) => {
                let _ = tx.send(Err(BusError::internal(format!(
                    "{} handler neither replied nor failed",
                    R::OP
                ))));
            }
            (None, Err(e)) => {
                tracing::debug!(error = %e, op = R::OP, "stream handler ended with an error after accepting")
            }
            (None, Ok(())) => {}
        }
    });
    rx.await
        .unwrap_or_else(|_| Err(BusError::internal(format!("{} handler went away", R::OP))))
}

/// The reply half of [`answer`]: accept with the reply to get the items' [`Sink`].
pub struct Answer<R: StreamRpc> {
    slot: std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Accepted<R>>>>>,
    input: Option<Box<dyn std::any::Any + Send>>,
}

impl<R: StreamRpc> Answer<R> {
    /// Send `reply`; the items written to the sink follow it.
    pub async fn accept(self, reply: R::Reply) -> Result<Sink<R::Item>, BusError> {
        let tx = self
            .slot
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| BusError::internal("stream already accepted"))?;
        let (em, items) = channel(16);
        tx.send(Ok((reply, items)))
            .map_err(|_| BusError::new(ErrorKind::Cancelled, "the reader went away"))?;
        Ok(Sink { tx: Some(em) })
    }
}

impl<R: DuplexRpc> Answer<R> {
    /// Send `reply`; returns the items' sink and the caller's input.
    pub async fn accept_duplex(
        mut self,
        reply: R::Reply,
    ) -> Result<(Sink<R::Item>, BusStream<R::Input>), BusError> {
        let input = self
            .input
            .take()
            .and_then(|b| b.downcast::<BusStream<R::Input>>().ok())
            .ok_or_else(|| BusError::internal(format!("{} answered without its input", R::OP)))?;
        Ok((self.accept(reply).await?, *input))
    }
}

/// Where an [`answer`] writes its items, in the shape of a
/// [`crate::StreamWriter`]: `end`, `fail` or `finish` it; dropped without, the
/// reader gets an error (as from a writer that stopped without ending).
pub struct Sink<T: Send + 'static> {
    tx: Option<Emitter<T>>,
}

impl<T: Send + 'static> Sink<T> {
    /// Send one item; waits while the reader is behind. Fails with `Cancelled` once
    /// the reader is gone.
    pub async fn send(&mut self, item: T) -> Result<(), BusError> {
        match &self.tx {
            Some(tx) => tx.send(item).await,
            None => Err(BusError::internal("stream already finished")),
        }
    }

    /// End the stream normally.
    pub async fn end(mut self) -> Result<(), BusError> {
        self.tx.take();
        Ok(())
    }

    /// End the stream with an error the reader will see.
    pub async fn fail(mut self, err: BusError) -> Result<(), BusError> {
        if let Some(tx) = self.tx.take() {
            tx.fail(err).await;
        }
        Ok(())
    }

    /// End with `end` or `fail` depending on `res`.
    pub async fn finish(self, res: Result<(), BusError>) -> Result<(), BusError> {
        match res {
            Ok(()) => self.end().await,
            Err(e) => self.fail(e).await,
        }
    }

    /// Resolves once the reader cancelled or went away.
    pub async fn cancelled(&self) {
        match &self.tx {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.tx.as_ref().is_none_or(|t| t.is_closed())
    }
}

impl<T: Send + 'static> Drop for Sink<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            if tx.is_closed() {
                return;
            }
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(tx.fail(BusError::internal(
                    "the stream's writer stopped without ending it",
                )));
            }
        }
    }
}

/// The deadline of one call: the client's override, else the table's, else the bus's.
fn timed<'a, R: Rpc>(bus: &'a Bus, over: Option<Duration>, req: &R) -> std::borrow::Cow<'a, Bus> {
    match over.or_else(|| req.timeout()) {
        Some(t) if t != bus.timeout => std::borrow::Cow::Owned(bus.with_timeout(t)),
        _ => std::borrow::Cow::Borrowed(bus),
    }
}

#[doc(hidden)]
pub async fn call<R: Rpc>(bus: &Bus, over: Option<Duration>, req: R) -> Result<R::Reply, BusError> {
    let bus = timed(bus, over, &req);
    if R::IDEMPOTENT {
        bus.request_idempotent(&req).await
    } else {
        bus.request(&req).await
    }
}

#[doc(hidden)]
pub async fn call_stream<R: StreamRpc>(bus: &Bus, over: Option<Duration>, req: R) -> Result<(R::Reply, BusStream<R::Item>), BusError> {
    let bus = timed(bus, over, &req);
    let (reply, rd) = if R::IDEMPOTENT { bus.request_stream_idempotent(&req).await? } else { bus.request_stream(&req).await? };
    Ok((reply, into_stream(rd)))
}

#[doc(hidden)]
pub async fn call_duplex<R: DuplexRpc>(
    bus: &Bus,
    over: Option<Duration>,
    req: R,
    input: BusStream<R::Input>,
) -> Result<(R::Reply, BusStream<R::Item>), BusError> {
    let (reply, rd, w) = timed(bus, over, &req).request_duplex(&req).await?;
    // The input ends, fails or is dropped when the service stops reading.
    tokio::spawn(async move {
        let _ = crate::server::pump(w, input).await;
    });
    Ok((reply, into_stream(rd)))
}

/// The requests every service answers (health, its part of `/info`, its metrics).
#[derive(Clone)]
pub struct SystemClient {
    bus: Bus,
}

impl SystemClient {
    pub fn new(bus: Bus) -> SystemClient {
        SystemClient { bus }
    }

    pub fn with_timeout(&self, t: Duration) -> SystemClient {
        SystemClient { bus: self.bus.with_timeout(t) }
    }

    pub async fn ping(&self, svc: Service) -> Result<bus_schema::system::ServicePong, BusError> {
        self.ask(svc, bus_schema::system::ServicePing {}).await
    }

    pub async fn info_part(&self, svc: Service) -> Result<bus_schema::system::InfoPart, BusError> {
        self.ask(svc, bus_schema::system::SystemInfoPart {}).await
    }

    /// Prometheus text.
    pub async fn metrics(&self, svc: Service) -> Result<String, BusError> {
        self.ask(svc, bus_schema::system::ServiceMetrics {}).await
    }

    async fn ask<R: SystemRpc>(&self, svc: Service, req: R) -> Result<R::Reply, BusError> {
        self.bus.request_system(svc, &req).await
    }
}

/// The generator the tables call in this crate (see `bus_schema::contract`).
#[doc(hidden)]
#[macro_export]
macro_rules! __client {
    (
        service: $svc:ident, api: $api:ident, client: $client:ident, serve: $serve:ident, module: $module:ident,
        ops {
            $( $m:ident ($req:ident) -> $reply:ty $(, stream $item:ty $(, input $input:ty)?)? ;
               callers [$($c:ident),* $(,)?] $(, timeout $t:expr)? $(, idempotent $($never:ident)?)? ; )*
        }
    ) => {
        #[allow(unused_imports)]
        use ::bus_schema::{docker, BusError, BusStream};
        #[allow(unused_imports)]
        use ::bus_schema::stream::*;
        #[allow(unused_imports)]
        use ::bus_schema::$module::*;
        pub use ::bus_schema::$module::$api;

        #[doc = concat!("[`", stringify!($api), "`] over the bus: each method is one request to the ")]
        #[doc = concat!(stringify!($module), " service on this node (or on another with [`Self::on`]).")]
        #[derive(Clone)]
        pub struct $client {
            bus: $crate::Bus,
            timeout: Option<::std::time::Duration>,
        }

        impl $client {
            pub fn new(bus: $crate::Bus) -> Self {
                $client { bus, timeout: None }
            }

            /// The same client, calling the service on `node`.
            pub fn on(&self, node: &str) -> Self {
                $client { bus: self.bus.with_node(node), timeout: self.timeout }
            }

            /// The same client, waiting `t` for every reply instead of the table's deadlines.
            pub fn with_timeout(&self, t: ::std::time::Duration) -> Self {
                $client { bus: self.bus.clone(), timeout: Some(t) }
            }

            pub fn bus(&self) -> &$crate::Bus {
                &self.bus
            }
        }

        #[allow(unused_variables)]
        impl $api for $client {
            $( $crate::__client!(@call $m, $req, $reply, [$($item $(, $input)?)?]); )*
        }

        #[doc = concat!("Serve every operation of [`", stringify!($api), "`] with `api` on `server`.")]
        #[allow(unused_variables)]
        pub fn $serve<A: $api>(server: $crate::Server, api: ::std::sync::Arc<A>) -> $crate::Server {
            $( let server = $crate::__client!(@serve server, api, $m, $req, [$($item $(, $input)?)?]); )*
            server
        }
    };

    (@call $m:ident, $req:ident, $reply:ty, []) => {
        async fn $m(&self, req: $req) -> Result<$reply, BusError> {
            $crate::__contract::call(&self.bus, self.timeout, req).await
        }
    };
    (@call $m:ident, $req:ident, $reply:ty, [$item:ty]) => {
        async fn $m(&self, req: $req) -> Result<($reply, BusStream<$item>), BusError> {
            $crate::__contract::call_stream(&self.bus, self.timeout, req).await
        }
    };
    (@call $m:ident, $req:ident, $reply:ty, [$item:ty, $input:ty]) => {
        async fn $m(&self, req: $req, input: BusStream<$input>) -> Result<($reply, BusStream<$item>), BusError> {
            $crate::__contract::call_duplex(&self.bus, self.timeout, req, input).await
        }
    };

    (@serve $server:ident, $api:ident, $m:ident, $req:ident, []) => {{
        let a = $api.clone();
        $server.rpc(move |r: $req| {
            let a = a.clone();
            async move { a.$m(r).await }
        })
    }};
    (@serve $server:ident, $api:ident, $m:ident, $req:ident, [$item:ty]) => {{
        let a = $api.clone();
        $server.serve_stream(move |r: $req| {
            let a = a.clone();
            async move { a.$m(r).await }
        })
    }};
    (@serve $server:ident, $api:ident, $m:ident, $req:ident, [$item:ty, $input:ty]) => {{
        let a = $api.clone();
        $server.serve_duplex(move |r: $req, input| {
            let a = a.clone();
            async move { a.$m(r, input).await }
        })
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::images::{ImageLoad, ImagePull, JsonMessage};
    use bus_schema::stream::ByteChunk;

    fn msg(s: &str) -> JsonMessage {
        JsonMessage::stream(s.to_string())
    }

    /// An error before accepting is the operation's error; items follow an accept;
    /// `end` ends the stream, `fail` ends it with the error.
    #[tokio::test]
    async fn answer_replies_then_streams() {
        let err =
            answer::<ImagePull, _, _>(|_resp| async { Err(BusError::not_found("no such image")) })
                .await
                .err()
                .unwrap();
        assert_eq!(err.kind, ErrorKind::NotFound);
        let err = answer::<ImagePull, _, _>(|_resp| async { Ok(()) })
            .await
            .err()
            .unwrap();
        assert!(err.message.contains("neither replied nor failed"), "{err}");

        let ((), mut items) = answer::<ImagePull, _, _>(|resp| async move {
            let mut w = resp.accept(()).await?;
            w.send(msg("a")).await?;
            w.send(msg("b")).await?;
            w.end().await
        })
        .await
        .unwrap();
        let mut got = Vec::new();
        while let Some(i) = items.next().await {
            got.push(i.unwrap().stream.unwrap());
        }
        assert_eq!(got, ["a", "b"]);

        let ((), mut items) = answer::<ImagePull, _, _>(|resp| async move {
            let mut w = resp.accept(()).await?;
            w.send(msg("a")).await?;
            w.fail(BusError::conflict("late")).await
        })
        .await
        .unwrap();
        assert!(items.next().await.unwrap().is_ok());
        assert_eq!(
            items.next().await.unwrap().err().unwrap().kind,
            ErrorKind::Conflict
        );
        assert!(items.next().await.is_none());
    }

    /// A sink dropped without ending fails the stream (as a bus writer does); a
    /// reader that goes away is seen by `cancelled`.
    #[tokio::test]
    async fn dropped_sink_fails_and_a_gone_reader_cancels() {
        let ((), mut items) = answer::<ImagePull, _, _>(|resp| async move {
            let _w = resp.accept(()).await?;
            Ok(())
        })
        .await
        .unwrap();
        let e = items.next().await.unwrap().err().unwrap();
        assert!(e.message.contains("without ending"), "{e}");

        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let ((), items) = answer::<ImagePull, _, _>(|resp| async move {
            let w = resp.accept(()).await?;
            w.cancelled().await;
            let _ = seen_tx.send(w.is_cancelled());
            w.end().await
        })
        .await
        .unwrap();
        drop(items);
        assert!(seen_rx.await.unwrap());
    }

    /// A duplex answer gets the caller's input back when it accepts.
    #[tokio::test]
    async fn answer_duplex_hands_over_the_input() {
        let (tx, input) = channel::<ByteChunk>(4);
        let ((), mut items) = answer_duplex::<ImageLoad, _, _>(input, |resp| async move {
            let (mut w, mut input) = resp.accept_duplex(()).await?;
            let mut n = 0;
            while let Some(c) = input.next().await {
                n += c?.0.len();
            }
            w.send(msg(&n.to_string())).await?;
            w.end().await
        })
        .await
        .unwrap();
        tx.send(ByteChunk(vec![1, 2, 3])).await.unwrap();
        tx.send(ByteChunk(vec![4])).await.unwrap();
        drop(tx);
        assert_eq!(
            items.next().await.unwrap().unwrap().stream.as_deref(),
            Some("4")
        );
        assert!(items.next().await.is_none());
    }
}
