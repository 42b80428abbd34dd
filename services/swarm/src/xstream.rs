//! Streams between swarm services over plain NATS (the swarm bus). The node bus's
//! streams (`berth_bus::stream`) are tied to the node bus's users and subjects; this is
//! the swarm bus's own, small protocol:
//!
//! * The reader subscribes an inbox of its own and publishes the request with that
//!   inbox as the reply subject ([`open`]). Nobody serving the subject: NATS's
//!   no-responders status, an error at once.
//! * The writer ([`send`]) sends numbered [`Frame`]s to that inbox, each as a request
//!   the reader answers: [`ACK`] once it has passed the frame's items on, [`CANCEL`]
//!   when its own reader went away. One frame is in flight at a time, so neither side
//!   buffers more than one batch (at most [`BATCH`] bytes of items, or one larger item):
//!   a slow reader slows the writer down.
//! * The first frame is [`Body::Head`] (or [`Body::Error`]: the stream could not be
//!   opened); then [`Body::Items`] batches; the last is [`Body::End`] or
//!   [`Body::Error`]. A writer with nothing to send sends [`Body::Idle`] every
//!   [`Timing::idle`].
//! * The writer stops when a frame is not acknowledged: CANCEL, no responders (the
//!   reader's inbox is gone: it stopped, its connection closed), or no answer within
//!   [`Timing::ack`] (the reader's node is gone). The reader ends its stream with an
//!   error when no frame came for [`Timing::silence`] (the writer's node is gone), or a
//!   frame is missing (a gap in the numbers).

use bus_schema::stream::StdioChunk;
use bus_schema::{BusError, BusStream};
use futures_util::{FutureExt, StreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::time::Duration;

/// Items per frame: a batch is cut before it would pass this many bytes.
pub const BATCH: usize = 64 * 1024;
/// The reader's answer to a frame it passed on.
pub const ACK: &[u8] = b"";
/// The reader's answer when its own reader is gone: the writer stops.
pub const CANCEL: &[u8] = b"cancel";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame<T> {
    pub seq: u64,
    pub body: Body<T>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body<T> {
    /// The stream is open.
    Head,
    Items(Vec<T>),
    /// Nothing to send for a while: the writer is alive.
    Idle,
    End,
    Error(BusError),
}

/// How many bytes an item weighs in a batch.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for StdioChunk {
    fn weight(&self) -> usize {
        self.data.len() + 8
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The writer sends [`Body::Idle`] after this long without items.
    pub idle: Duration,
    /// The reader gives up after this long without a frame.
    pub silence: Duration,
    /// The writer gives up on a frame not acknowledged for this long.
    pub ack: Duration,
    /// The reader gives up on a stream whose first frame did not come in this long.
    pub head: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing { idle: Duration::from_secs(2), silence: Duration::from_secs(10), ack: Duration::from_secs(60), head: Duration::from_secs(15) }
    }
}

pub fn encode<T: Serialize>(f: &Frame<T>) -> Vec<u8> {
    rmp_serde::to_vec_named(f).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<Frame<T>, BusError> {
    rmp_serde::from_slice(b).map_err(|e| BusError::internal(format!("bad stream frame: {e}")))
}

/// A batch being filled: items in order, cut before [`BATCH`] bytes (one item larger
/// than that goes alone).
pub struct Batch<T> {
    items: Vec<T>,
    size: usize,
    limit: usize,
}

impl<T: Weigh> Batch<T> {
    pub fn new(limit: usize) -> Batch<T> {
        Batch { items: Vec::new(), size: 0, limit }
    }

    /// Whether `x` goes into this batch (else the batch is full: send it first).
    pub fn fits(&self, x: &T) -> bool {
        self.items.is_empty() || self.size + x.weight() <= self.limit
    }

    pub fn push(&mut self, x: T) {
        self.size += x.weight();
        self.items.push(x);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn take(&mut self) -> Vec<T> {
        self.size = 0;
        std::mem::take(&mut self.items)
    }
}

/// The reader stopped (or is gone): the writer stops.
#[derive(Debug)]
pub struct Stopped;

struct Writer {
    client: async_nats::Client,
    to: async_nats::Subject,
    seq: u64,
    timing: Timing,
}

impl Writer {
    async fn frame<T: Serialize>(&mut self, body: Body<T>) -> Result<(), Stopped> {
        let payload = encode(&Frame { seq: self.seq, body });
        self.seq += 1;
        let req = async_nats::Request::new().payload(payload.into()).timeout(Some(self.timing.ack));
        match self.client.send_request(self.to.clone(), req).await {
            Ok(m) if m.payload.as_ref() == CANCEL => Err(Stopped),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(to = %self.to, error = %e, "stream reader gone");
                Err(Stopped)
            }
        }
    }
}

/// Write `opened` (or its error) to the reader whose inbox is `to`, until it ends or
/// the reader stops. Dropping `items` on return stops whatever produces them.
pub async fn send<T>(client: async_nats::Client, to: async_nats::Subject, opened: Result<BusStream<T>, BusError>, timing: Timing) -> Result<(), Stopped>
where
    T: Serialize + Weigh + Send + 'static,
{
    let mut w = Writer { client, to, seq: 0, timing };
    let mut items = match opened {
        Ok(s) => s,
        Err(e) => return w.frame::<T>(Body::Error(e)).await,
    };
    w.frame::<T>(Body::Head).await?;
    let mut carry: Option<T> = None;
    loop {
        let first = match carry.take() {
            Some(x) => x,
            None => match tokio::time::timeout(timing.idle, items.next()).await {
                Err(_) => {
                    w.frame::<T>(Body::Idle).await?;
                    continue;
                }
                Ok(None) => return w.frame::<T>(Body::End).await,
                Ok(Some(Err(e))) => return w.frame::<T>(Body::Error(e)).await,
                Ok(Some(Ok(x))) => x,
            },
        };
        let mut batch = Batch::new(BATCH);
        batch.push(first);
        // what else is ready now, up to the batch's size
        let mut last: Option<Body<T>> = None;
        loop {
            match items.next().now_or_never() {
                Some(Some(Ok(x))) if batch.fits(&x) => batch.push(x),
                Some(Some(Ok(x))) => {
                    carry = Some(x);
                    break;
                }
                Some(Some(Err(e))) => {
                    last = Some(Body::Error(e));
                    break;
                }
                Some(None) => {
                    last = Some(Body::End);
                    break;
                }
                None => break,
            }
        }
        w.frame(Body::Items(batch.take())).await?;
        if let Some(b) = last {
            return w.frame(b).await;
        }
    }
}

/// Ask `subject` for a stream with `payload`, the reply going to a new inbox; the
/// stream once its writer said it is open (its error otherwise). `what` names the
/// writer in errors ("node X"). Dropping the stream stops the writer.
pub async fn open<T>(client: &async_nats::Client, subject: String, payload: Vec<u8>, what: &str, timing: Timing) -> Result<BusStream<T>, BusError>
where
    T: DeserializeOwned + Send + 'static,
{
    // Moby's words for a node it cannot read a log from (the why goes to the log)
    let gone = |why: &str| {
        tracing::info!(%what, why, "stream not opened");
        BusError::unavailable(format!("{what} is not available"))
    };
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.map_err(|e| gone(&e.to_string()))?;
    client.publish_with_reply(subject, inbox, payload.into()).await.map_err(|e| gone(&e.to_string()))?;
    let msg = match tokio::time::timeout(timing.head, sub.next()).await {
        Err(_) => return Err(gone("no answer")),
        Ok(None) => return Err(gone("connection closed")),
        Ok(Some(m)) => m,
    };
    if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Err(gone("no responders"));
    }
    let f: Frame<T> = decode(&msg.payload)?;
    if f.seq != 0 {
        return Err(BusError::internal(format!("stream from {what}: frame {} first", f.seq)));
    }
    let client = client.clone();
    let ack = move |reply: Option<async_nats::Subject>, body: &'static [u8]| {
        let client = client.clone();
        async move {
            if let Some(r) = reply {
                let _ = client.publish(r, bytes::Bytes::from_static(body)).await;
            }
        }
    };
    match f.body {
        Body::Head => ack(msg.reply.clone(), ACK).await,
        Body::Error(e) => {
            ack(msg.reply.clone(), ACK).await;
            return Err(e);
        }
        _ => {
            ack(msg.reply.clone(), CANCEL).await;
            return Err(BusError::internal(format!("stream from {what}: no head")));
        }
    }
    let what = what.to_string();
    Ok(berth_bus::produce(move |em| async move {
        let mut next = 1u64;
        loop {
            let got = tokio::select! {
                m = tokio::time::timeout(timing.silence, sub.next()) => m,
                _ = em.closed() => return Ok(()),
            };
            let msg = match got {
                Err(_) => {
                    tracing::info!(%what, "stream writer silent; giving up");
                    return Err(BusError::unavailable(format!("{what} is not available")));
                }
                Ok(None) => return Err(BusError::unavailable(format!("{what} is not available"))),
                Ok(Some(m)) => m,
            };
            let f: Frame<T> = match decode(&msg.payload) {
                Ok(f) if f.seq == next => f,
                Ok(f) => {
                    ack(msg.reply.clone(), CANCEL).await;
                    return Err(BusError::internal(format!("stream from {what}: frame {} after {}", f.seq, next - 1)));
                }
                Err(e) => {
                    ack(msg.reply.clone(), CANCEL).await;
                    return Err(e);
                }
            };
            next += 1;
            match f.body {
                Body::Idle => ack(msg.reply.clone(), ACK).await,
                Body::Items(v) => {
                    for x in v {
                        if em.send(x).await.is_err() {
                            ack(msg.reply.clone(), CANCEL).await;
                            return Ok(());
                        }
                    }
                    ack(msg.reply.clone(), ACK).await;
                }
                Body::End => {
                    ack(msg.reply.clone(), ACK).await;
                    return Ok(());
                }
                Body::Error(e) => {
                    ack(msg.reply.clone(), ACK).await;
                    return Err(e);
                }
                Body::Head => {
                    ack(msg.reply.clone(), CANCEL).await;
                    return Err(BusError::internal(format!("stream from {what}: a second head")));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: usize, b: u8) -> StdioChunk {
        StdioChunk { stream: 1, data: vec![b; n] }
    }

    #[test]
    fn frames_roundtrip() {
        for body in [Body::Head, Body::Items(vec![chunk(3, b'a'), chunk(0, 0)]), Body::Idle, Body::End, Body::Error(BusError::not_found("No such container: x"))] {
            let f = Frame { seq: 7, body };
            let back: Frame<StdioChunk> = decode(&encode(&f)).unwrap();
            assert_eq!(back, f);
        }
        assert!(decode::<StdioChunk>(b"\x01garbage").is_err());
    }

    #[test]
    fn batches_keep_order_and_stay_under_the_limit() {
        let items: Vec<StdioChunk> = (0..200).map(|i| chunk(100 + (i * 37) % 5000, (i % 251) as u8)).collect();
        let mut out: Vec<Vec<StdioChunk>> = Vec::new();
        let mut b = Batch::new(BATCH);
        for x in items.clone() {
            if !b.fits(&x) {
                out.push(b.take());
            }
            b.push(x);
        }
        out.push(b.take());
        assert!(out.len() > 1);
        for batch in &out {
            assert!(batch.iter().map(|x| x.weight()).sum::<usize>() <= BATCH);
            // a full frame stays well under the swarm server's max_payload (1 MiB)
            assert!(encode(&Frame { seq: u64::MAX, body: Body::Items(batch.clone()) }).len() < BATCH + 4096);
        }
        assert_eq!(out.concat(), items);
    }

    #[test]
    fn an_item_larger_than_a_batch_goes_alone() {
        let mut b = Batch::new(BATCH);
        assert!(b.fits(&chunk(BATCH * 2, 1)));
        b.push(chunk(BATCH * 2, 1));
        assert!(!b.fits(&chunk(1, 1)));
        assert_eq!(b.take().len(), 1);
        assert!(b.is_empty());
    }
}
