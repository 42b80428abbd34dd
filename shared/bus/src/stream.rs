//! Credit-based streams (see `bus_schema::stream` for the protocol).

use bus_schema::{
    stream::{Body, Control, Frame},
    BusError, ErrorKind,
};
use futures_util::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::liveness::Watch;

/// How often a reader tells its writer it is still there.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// A writer that hears nothing from its reader for this long stops.
const READER_GONE: Duration = Duration::from_secs(30);

/// Counts the writers alive in this process: an answer streaming to a reader that
/// went away unnoticed shows here (the gateway's metrics gather it per service).
fn count_writer(delta: f64) {
    berth_telemetry::metrics::gauge_add(
        "berth_bus_stream_writers",
        "Bus streams this service is writing (answers streaming to a reader).",
        &[],
        delta,
    );
}

/// The writing end: sends frames to the reader's data subject within the credit it
/// has been granted; blocks when the reader is slow.
pub struct StreamWriter<T> {
    client: async_nats::Client,
    data: String,
    seq: u64,
    credits: Arc<Semaphore>,
    cancelled: Arc<AtomicBool>,
    /// Changes never; closed when the control task ends (the reader cancelled or went).
    gone: tokio::sync::watch::Receiver<()>,
    finished: bool,
    ctrl_task: tokio::task::JoinHandle<()>,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> StreamWriter<T> {
    /// `ctrl` is the writer's own subscription on which the reader sends credits;
    /// `reader` watches the reader's instance: the writer stops when it exits.
    pub(crate) fn new(
        client: async_nats::Client,
        data: String,
        mut ctrl: async_nats::Subscriber,
        initial: u32,
        mut reader: Watch,
    ) -> Self {
        let credits = Arc::new(Semaphore::new(initial as usize));
        let cancelled = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let (c2, x2, h2) = (credits.clone(), cancelled.clone(), heard.clone());
        let (gone_tx, gone) = tokio::sync::watch::channel(());
        let ctrl_task = tokio::spawn(async move {
            let _gone = gone_tx;
            let mut tick = tokio::time::interval(KEEPALIVE);
            loop {
                tokio::select! {
                    m = ctrl.next() => {
                        let Some(m) = m else { break };
                        h2.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                        match bus_schema::decode::<Control>(&m.payload) {
                            Ok(Control::Credit(n)) => c2.add_permits(n as usize),
                            Ok(Control::Cancel) | Err(_) => break,
                        }
                    }
                    _ = tick.tick() => {
                        let last = Duration::from_millis(h2.load(Ordering::Relaxed));
                        if start.elapsed().saturating_sub(last) > READER_GONE {
                            break;
                        }
                    }
                    e = reader.gone() => {
                        tracing::debug!(error = %e, peer = ?reader.peer(), "a stream's reader is gone");
                        break;
                    }
                }
            }
            x2.store(true, Ordering::SeqCst);
            c2.close();
            let _ = ctrl.unsubscribe().await;
        });
        count_writer(1.0);
        StreamWriter { client, data, seq: 0, credits, cancelled, gone, finished: false, ctrl_task, _t: PhantomData }
    }

    /// True once the reader cancelled or went away.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the reader cancelled or went away: an answer that waits for
    /// something to send (a container's exit, a new log line) stops waiting then.
    pub async fn cancelled(&self) {
        let mut gone = self.gone.clone();
        while gone.changed().await.is_ok() {}
    }

    /// Send one item; waits for credit. Fails with `Cancelled` when the reader is gone.
    pub async fn send(&mut self, item: T) -> Result<(), BusError> {
        self.frame(Body::Item(item)).await
    }

    /// End the stream normally.
    pub async fn end(mut self) -> Result<(), BusError> {
        self.frame(Body::End).await
    }

    /// End the stream with an error the reader will see.
    pub async fn fail(mut self, err: BusError) -> Result<(), BusError> {
        self.frame(Body::Error(err)).await
    }

    /// End with `End` or `Error` depending on `res`.
    pub async fn finish(self, res: Result<(), BusError>) -> Result<(), BusError> {
        match res {
            Ok(()) => self.end().await,
            Err(e) => self.fail(e).await,
        }
    }

    async fn frame(&mut self, body: Body<T>) -> Result<(), BusError> {
        if self.finished {
            return Err(BusError::internal("stream already finished"));
        }
        let last = !matches!(body, Body::Item(_));
        match self.credits.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => return Err(BusError::new(ErrorKind::Cancelled, "the reader went away")),
        }
        let f = Frame { seq: self.seq, body };
        self.seq += 1;
        let payload = bus_schema::encode(&f)?;
        self.client
            .publish(self.data.clone(), payload.into())
            .await
            .map_err(|e| BusError::unavailable(format!("stream publish failed: {e}")))?;
        if last {
            self.finished = true;
            let _ = self.client.flush().await;
        }
        Ok(())
    }
}

impl<T> Drop for StreamWriter<T> {
    fn drop(&mut self) {
        count_writer(-1.0);
        self.ctrl_task.abort();
        // A writer dropped without end/fail must not leave its reader waiting forever.
        if !self.finished && !self.cancelled.load(Ordering::SeqCst) {
            let f: Frame<()> = Frame {
                seq: self.seq,
                body: Body::Error(BusError::internal("the stream's writer stopped without ending it")),
            };
            if let (Ok(b), Ok(h)) = (bus_schema::encode(&f), tokio::runtime::Handle::try_current()) {
                let (c, d) = (self.client.clone(), self.data.clone());
                h.spawn(async move {
                    let _ = c.publish(d, b.into()).await;
                });
            }
        }
    }
}

/// The reading end: yields items in order, grants credit as it consumes, sends
/// keepalives, and cancels the writer when dropped.
pub struct StreamReader<T> {
    client: async_nats::Client,
    sub: async_nats::Subscriber,
    /// The writer's instance: the stream fails when it exits.
    writer: Watch,
    ctrl: String,
    next_seq: u64,
    window: u32,
    consumed: u32,
    done: bool,
    keepalive: tokio::task::JoinHandle<()>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> StreamReader<T> {
    pub(crate) fn new(client: async_nats::Client, sub: async_nats::Subscriber, ctrl: String, window: u32, writer: Watch) -> Self {
        let (c2, ctl2) = (client.clone(), ctrl.clone());
        let keepalive = tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEPALIVE);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Ok(b) = bus_schema::encode(&Control::Credit(0)) {
                    if c2.publish(ctl2.clone(), b.into()).await.is_err() {
                        break;
                    }
                }
            }
        });
        StreamReader { client, sub, writer, ctrl, next_seq: 0, window, consumed: 0, done: false, keepalive, _t: PhantomData }
    }

    /// The next item; `None` after a normal end. An error ends the stream.
    pub async fn next(&mut self) -> Option<Result<T, BusError>> {
        if self.done {
            return None;
        }
        let next = tokio::select! {
            biased;
            m = self.sub.next() => m,
            e = self.writer.gone() => {
                self.done = true;
                self.keepalive.abort();
                return Some(Err(e));
            }
        };
        let msg = match next {
            Some(m) => m,
            None => {
                self.done = true;
                return Some(Err(BusError::unavailable("stream closed by the bus")));
            }
        };
        let frame: Frame<T> = match bus_schema::decode(&msg.payload) {
            Ok(f) => f,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if frame.seq != self.next_seq {
            self.done = true;
            self.cancel().await;
            return Some(Err(BusError::internal(format!(
                "stream lost frames: expected #{}, got #{}",
                self.next_seq, frame.seq
            ))));
        }
        self.next_seq += 1;
        self.consumed += 1;
        if self.consumed >= self.window / 2 {
            let n = self.consumed;
            self.consumed = 0;
            if let Ok(b) = bus_schema::encode(&Control::Credit(n)) {
                let _ = self.client.publish(self.ctrl.clone(), b.into()).await;
            }
        }
        match frame.body {
            Body::Item(t) => Some(Ok(t)),
            Body::End => {
                self.done = true;
                self.keepalive.abort();
                None
            }
            Body::Error(e) => {
                self.done = true;
                self.keepalive.abort();
                Some(Err(e))
            }
        }
    }

    /// Stop the writer now.
    pub async fn cancel(&mut self) {
        self.done = true;
        self.keepalive.abort();
        if let Ok(b) = bus_schema::encode(&Control::Cancel) {
            let _ = self.client.publish(self.ctrl.clone(), b.into()).await;
        }
    }
}

impl<T> Drop for StreamReader<T> {
    fn drop(&mut self) {
        self.keepalive.abort();
        if !self.done {
            let (c, ctl) = (self.client.clone(), self.ctrl.clone());
            if let Ok(b) = bus_schema::encode(&Control::Cancel) {
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        let _ = c.publish(ctl, b.into()).await;
                    });
                }
            }
        }
    }
}
