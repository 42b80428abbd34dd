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
