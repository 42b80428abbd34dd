//! `GET /events`: history from the JetStream stream (`--since`/`--until`) and the
//! live tail, filtered as Docker filters, in Docker's JSON message format.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bus_schema::event::{matches, Event};
use bus_schema::BusError;
use http::StatusCode;

use crate::error::{ApiError, ApiResult};
use crate::util::{filters, FirstQuery};

/// Where events come from: history since a time, then live ones.
pub trait Backend: Send + Sync + 'static {
    /// Events from `since` (nanoseconds; None: only new ones) into `tx`, in order,
    /// until `tx` closes. Ends early (Ok) when `until` (nanoseconds) is passed.
    fn events(
        &self,
        since: Option<i128>,
        until: Option<i128>,
        tx: tokio::sync::mpsc::Sender<Event>,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new().route("/events", get(events::<B>)).with_state(b)
}

use bus_schema::event::FILTER_KEYS as KEYS;

/// Docker's `--since`/`--until` values: Unix seconds with an optional fraction
/// (the CLI converts durations and dates before sending).
fn parse_time(s: &str) -> Result<i128, ApiError> {
    berth_rules::clock::parse_timestamp(s).map_err(ApiError::bad_request)
}

/// An event as `GET /events` sends it, with the legacy fields (`status`, `id`, `from`)
/// Docker still sends for container and image events.
pub fn to_json(ev: &Event) -> serde_json::Value {
    let mut j = serde_json::to_value(ev).unwrap_or_default();
    if ev.typ == "container" || ev.typ == "image" {
        let o = j.as_object_mut().unwrap();
        o.insert("status".into(), ev.action.clone().into());
        o.insert("id".into(), ev.actor.id.clone().into());
        if let Some(img) = ev.actor.attributes.get("image") {
            if ev.typ == "container" {
                o.insert("from".into(), img.clone().into());
            }
        }
    }
    j
}

async fn events<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let f = filters(&q)?;
    for k in f.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let now = berth_rules::clock::now();
    let now_ns = now.0 as i128 * 1_000_000_000 + now.1 as i128;
    let since = q.get("since").filter(|s| !s.is_empty()).map(|s| parse_time(s)).transpose()?;
    let until = q.get("until").filter(|s| !s.is_empty()).map(|s| parse_time(s)).transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(ApiError::bad_request("`since` time cannot be after `until` time"));
        }
    }
    // with only --until, Docker replays from the beginning of what it kept
    let since = since.or(if until.is_some() { Some(0) } else { None });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    let b2 = b.clone();
    let producer = tokio::spawn(async move {
        if let Err(e) = b2.events(since, until, tx).await {
            tracing::warn!(error = %e, "events stream failed");
        }
    });
    let s = crate::util::async_stream(move |out| async move {
        // until in the future: stop when it passes even if nothing happens
        // (an `until` already past ends when the history is read: the backend says so)
        let deadline = until.filter(|u| *u > now_ns).map(|u| {
            let wait = (u - now_ns).max(0) as u64;
            tokio::time::Instant::now() + std::time::Duration::from_nanos(wait)
        });
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                    Ok(x) => x,
                    Err(_) => None,
                },
                None => rx.recv().await,
            };
            let Some(ev) = next else { break };
            if until.is_some_and(|u| ev.time_nano as i128 > u) {
                break;
            }
            if !matches(&ev, &f) {
                continue;
            }
            let mut line = serde_json::to_vec(&to_json(&ev)).unwrap_or_default();
            line.push(b'\n');
            if out.send(Ok(bytes::Bytes::from(line))).await.is_err() {
                break;
            }
        }
        producer.abort();
    });
    Ok((StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], Body::from_stream(s)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn filters_like_docker() {
        use bus_schema::event::{Action, EventType};
        let ev = Event::now(EventType::Container, Action::Start, "abcdef").attr("name", "web").attr("image", "busybox").attr("tier", "x");
        let j = to_json(&ev);
        assert_eq!(j["status"], "start");
        assert_eq!(j["from"], "busybox");
        assert_eq!(parse_time("12.5").unwrap(), 12_500_000_000);
    }
}
