//! Payloads larger than one bus message (nats-server's `max_payload`, 1 MiB on a
//! node). The side that holds the bytes subscribes a fresh subject
//! `_L.<holder>.<receiver>.<id>` ([`bus_schema::contract::large_subject`]: only the
//! holder may subscribe there, only the receiver publish), sends the message empty
//! with `Berth-Large: <subject>` and `Berth-Large-Len: <bytes>`, and answers requests
//! for chunk `i` (the index as text) there with the chunk's bytes (a response, which
//! `allow_responses` lets through); the receiver fetches the chunks in order and carries on with the whole
//! payload. Requests (a create body with megabytes of labels) and replies (`docker
//! ps` over such containers, `system df`, inspect) go the same way, so no operation
//! has to care. Pulling chunk by chunk is its own flow control: nothing is sent
//! faster than it is read. The holder forgets the bytes once the last chunk was
//! fetched, or after [`IDLE`] without a fetch (the receiver died).

use std::time::Duration;

use bus_schema::{
    stream::{HDR_LARGE, HDR_LARGE_LEN},
    BusError,
};
use futures_util::StreamExt;

/// Room left in a message for headers (trace context, stream subjects...).
const HEADROOM: usize = 16 * 1024;
/// A holder nobody fetches from for this long gives up.
const IDLE: Duration = Duration::from_secs(30);
/// One chunk's round trip.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Receivers refuse more than this (a message claiming terabytes is an error).
pub const MAX_LARGE: usize = 2 << 30;

/// The largest payload sent as one message on this connection.
pub(crate) fn limit(client: &async_nats::Client) -> usize {
    let max = client.server_info().max_payload;
    if max == 0 {
        return 1 << 20;
    }
    max.saturating_sub(HEADROOM).max(4096)
}

/// Serves `bytes` in chunks, from a fresh subject that only bus user `receiver` may
/// send to, until fetched or idle; `holder` is this connection's bus user. Names the
/// subject in `headers`. The task ends on its own; the handle may abort it earlier.
pub(crate) async fn offer(
    client: &async_nats::Client,
    holder: &str,
    receiver: &str,
    bytes: Vec<u8>,
    headers: &mut async_nats::HeaderMap,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let chunk = limit(client);
    let inbox = bus_schema::contract::large_subject(holder, receiver, &nuid::next());
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BusError::unavailable(format!("bus subscribe failed: {e}")))?;
    headers.insert(HDR_LARGE, inbox.as_str());
    headers.insert(HDR_LARGE_LEN, bytes.len().to_string());
    let c = client.clone();
    let n = bytes.len().div_ceil(chunk);
    let task = tokio::spawn(async move {
        loop {
            let m = match tokio::time::timeout(IDLE, sub.next()).await {
                Ok(Some(m)) => m,
                _ => break,
            };
            let Some(reply) = m.reply else { continue };
            let i: usize = match std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse().ok()) {
                Some(i) if i < n => i,
                _ => continue,
            };
            let part = bytes::Bytes::copy_from_slice(&bytes[i * chunk..((i + 1) * chunk).min(bytes.len())]);
            if c.publish(reply, part).await.is_err() {
                break;
            }
            if i + 1 == n {
                let _ = c.flush().await;
                break;
            }
        }
        let _ = sub.unsubscribe().await;
    });
    Ok(task)
}

/// If `headers` announce a large payload, fetch it; None if the message is whole.
/// `gone` resolves when the holder is known to be gone.
pub(crate) async fn fetch(
    client: &async_nats::Client,
    headers: Option<&async_nats::HeaderMap>,
    gone: impl std::future::Future<Output = BusError>,
) -> Result<Option<Vec<u8>>, BusError> {
    let Some(h) = headers else { return Ok(None) };
    let Some(subject) = h.get(HDR_LARGE).map(|v| v.as_str().to_string()) else { return Ok(None) };
    let len: usize = h
        .get(HDR_LARGE_LEN)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| BusError::invalid("a large message without its length"))?;
    if len > MAX_LARGE {
        return Err(BusError::invalid(format!("message of {len} bytes is too large")));
    }
    // the chunks are fetched from a large-payload subject only, never from a subject
    // the sender names at will (that would make this side send requests where the
    // sender says); the bus lets this side publish only to those offered to it
    if bus_schema::contract::large_parties(&subject).is_none() {
        return Err(BusError::invalid(format!("a large message offered from {subject:?}, not a large-payload subject")));
    }
    let fetching = async {
        // grows as chunks arrive: a length in a header is a claim, not memory to set aside
        let mut out = Vec::with_capacity(len.min(16 << 20));
        let mut i = 0usize;
        while out.len() < len {
            let req = async_nats::Request::new().payload(i.to_string().into()).timeout(Some(FETCH_TIMEOUT));
            let m = client
                .send_request(subject.clone(), req)
                .await
                .map_err(|e| BusError::unavailable(format!("fetching part {i} of a large message from {subject}: {e}")))?;
            if m.payload.is_empty() || out.len() + m.payload.len() > len {
                return Err(BusError::internal(format!("part {i} of a large message from {subject} does not fit its length")));
            }
            out.extend_from_slice(&m.payload);
            i += 1;
        }
        Ok(out)
    };
    tokio::select! {
        r = fetching => r.map(Some),
        e = gone => Err(e),
    }
}

/// An event that fits one message. Events go to a JetStream stream whose messages
/// cannot be chunked; one whose attributes (a container's labels) pass the limit
/// loses its largest attributes until it fits (name, image, exit code stay: they are
/// small), rather than not being published at all.
pub(crate) fn fit_event(
    ev: &bus_schema::event::Event,
    limit: usize,
) -> Result<Vec<u8>, BusError> {
    let b = bus_schema::encode(ev)?;
    if b.len() <= limit {
        return Ok(b);
    }
    let mut ev = ev.clone();
    let mut by_size: Vec<(usize, String)> =
        ev.actor.attributes.iter().map(|(k, v)| (k.len() + v.len(), k.clone())).collect();
    by_size.sort();
    let mut size = b.len();
    while size > limit {
        let Some((n, k)) = by_size.pop() else { break };
        ev.actor.attributes.remove(&k);
        size = size.saturating_sub(n);
    }
    tracing::warn!(action = %ev.action, id = %ev.actor.id, "an event's attributes pass one bus message: the largest were left out");
    let b = bus_schema::encode(&ev)?;
    if b.len() > limit {
        return Err(BusError::invalid("an event too large for one bus message"));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_too_large_loses_its_largest_attributes() {
        let mut ev = bus_schema::event::Event::now(bus_schema::event::EventType::Container, bus_schema::event::Action::Create, "c1").attr("name", "n").attr("image", "i");
        for i in 0..50 {
            ev = ev.attr(format!("l{i}"), "x".repeat(1000));
        }
        assert_eq!(fit_event(&ev, 1 << 20).unwrap(), bus_schema::encode(&ev).unwrap());
        let b = fit_event(&ev, 20_000).unwrap();
        assert!(b.len() <= 20_000);
        let got: bus_schema::event::Event = bus_schema::decode(&b).unwrap();
        assert_eq!(got.actor.attributes["name"], "n");
        assert_eq!(got.actor.attributes["image"], "i");
        assert!(got.actor.attributes.len() > 10, "only what must go goes");
    }
}
