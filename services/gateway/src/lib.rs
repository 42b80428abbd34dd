//! The gateway: the Docker Engine API over HTTP/1.1, each request turned into bus
//! requests. It holds no state of its own; several may run against one node.

pub mod backend;
pub mod error;
pub use bus_schema::gojson;
pub mod goshape;
pub mod hijack;
pub mod host;
pub mod listen;
pub mod metrics;
pub mod routes;
pub mod util;
pub mod version;

use std::sync::Arc;

use axum::{extract::Request, response::IntoResponse, Router};
use tower::ServiceExt;

/// Build the whole API over a backend that implements every area's trait.
/// Each area adds one bound and one `merge` line here.
pub fn app<B>(b: Arc<B>) -> Router
where
    B: routes::system::Backend + routes::containers::Backend + routes::events::Backend + routes::build::Backend + routes::volumes::Backend + routes::images::Backend + routes::networks::Backend + routes::swarm::Backend,
{
    let r = Router::new()
        .merge(routes::system::router(b.clone()))
        .merge(routes::containers::router(b.clone()))
        .merge(routes::events::router(b.clone()))
        .merge(routes::build::router(b.clone()))
        .merge(routes::volumes::router(b.clone()))
        .merge(routes::images::router(b.clone()))
        .merge(routes::networks::router(b.clone()))
        .merge(routes::swarm::router(b.clone()))
        .merge(routes::plugins::router(b.clone()))
        .fallback(routes::unserved::fallback);
    with_limits(r)
        .layer(axum::middleware::from_fn(json_content_type))
        .layer(axum::middleware::from_fn(trace_request))
        .layer(axum::middleware::from_fn(version::headers))
}

/// The largest JSON body the API reads (a create with megabytes of labels). Moby
/// reads a body whole with no limit of its own; this bound keeps one request from
/// taking the node's memory. Bodies that stream (build contexts, image loads,
/// archives) have no limit.
pub const MAX_BODY: usize = 256 << 20;

/// Bodies up to [`MAX_BODY`]; every error as Docker's JSON.
pub fn with_limits(r: Router) -> Router {
    r.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)).layer(axum::middleware::from_fn(json_errors))
}

/// axum's own rejections (a body over [`MAX_BODY`], an unreadable query) are plain
/// text; Docker answers every error as `{"message": "..."}`.
async fn json_errors(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    let res = next.run(req).await;
    let st = res.status();
    // Moby's router answers a known path asked with another method as an unknown
    // path (its MethodNotAllowedHandler is the not-found one)
    if st == http::StatusCode::METHOD_NOT_ALLOWED {
        return error::ApiError::not_found("page not found").into_response();
    }
    let plain = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(st.is_client_error() || st.is_server_error()) || !plain {
        return res;
    }
    let body = axum::body::to_bytes(res.into_body(), 64 << 10).await.unwrap_or_default();
    let mut msg = String::from_utf8_lossy(&body).trim().to_string();
    if st == http::StatusCode::PAYLOAD_TOO_LARGE {
        msg = format!("request body is larger than the {} MiB this API reads", MAX_BODY >> 20);
    }
    error::ApiError::new(st, msg).into_response()
}

/// Moby's `CheckForJSON` on the routes whose handlers call it (dockerd 20.10.24, asked
/// side by side): a body with another Content-Type, or with none, is 400 "Content-Type
/// specified (<it>) must be 'application/json'"; no Content-Type with an empty body
/// passes (the handler then answers the missing body).
async fn json_content_type(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    if req.method() == http::Method::POST && checks_json(req.uri().path()) {
        let ct = req.headers().get(http::header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
        // an HTTP/1.1 request has a body when it says so: a length above 0 or chunks
        let h = req.headers();
        let length = h.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let empty = length == Some(0) || (length.is_none() && !h.contains_key(http::header::TRANSFER_ENCODING));
        let ok = match ct.as_deref() {
            None | Some("") => empty,
            Some(ct) => is_json_media_type(ct),
        };
        if !ok {
            return error::ApiError::bad_request(format!("Content-Type specified ({}) must be 'application/json'", ct.unwrap_or_default())).into_response();
        }
    }
    next.run(req).await
}

/// The routes (versions already cut off) whose Moby handlers check the Content-Type.
fn checks_json(path: &str) -> bool {
    let seg: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    matches!(
        seg.as_slice(),
        ["containers", "create"] | ["commit"] | ["networks", "create"] | ["volumes", "create"] | ["exec", _, "start"] | ["containers", _, "exec" | "update"] | ["networks", _, "connect" | "disconnect"]
    )
}

/// Go's `mime.ParseMediaType(ct)` gives `application/json` without error: the type in
/// any case, parameters each `key=value` (a lone trailing `;` allowed).
fn is_json_media_type(ct: &str) -> bool {
    let mut parts = ct.split(';');
    if !parts.next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json") {
        return false;
    }
    let rest: Vec<&str> = parts.collect();
    rest.iter().enumerate().all(|(i, p)| {
        let p = p.trim();
        if p.is_empty() {
            return i + 1 == rest.len();
        }
        matches!(p.split_once('='), Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty())
    })
}

/// Wrap the router so versioned paths are rewritten before routing.
pub fn service(
    router: Router,
) -> impl tower::Service<Request, Response = axum::response::Response, Error = std::convert::Infallible, Future = impl Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request| {
        let router = router.clone();
        async move {
            match version::rewrite(req) {
                Ok(req) => router.oneshot(req).await,
                Err(e) => {
                    let mut res = e.into_response();
                    version_headers(res.headers_mut());
                    Ok(res)
                }
            }
        }
    })
}

/// Moby's answer to a version it does not serve: Api-Version, Ostype and Server,
/// no Docker-Experimental (its version middleware answers before that one).
fn version_headers(h: &mut http::HeaderMap) {
    h.insert("Api-Version", http::HeaderValue::from_static(berth_config::API_VERSION));
    h.insert("Ostype", http::HeaderValue::from_static("linux"));
    h.insert(http::header::SERVER, version::server_header());
}

/// One span per API request, continuing a `traceparent` the client sent.
async fn trace_request(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        otel.name = %format!("{} {}", req.method(), req.uri().path()),
        http.method = %req.method(),
        http.route = %req.uri().path(),
        http.status_code = tracing::field::Empty,
    );
    if req.headers().contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&opentelemetry_http_headers::Extract(req.headers()))
        });
        let _ = span.set_parent(cx);
    }
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t0 = std::time::Instant::now();
    let res = next.run(req).instrument(span.clone()).await;
    span.record("http.status_code", res.status().as_u16());
    let status = res.status().as_u16().to_string();
    berth_telemetry::metrics::counter_add(
        "berth_api_requests_total",
        "Docker API requests by route and status.",
        &[("method", &method), ("route", &route), ("status", &status)],
        1.0,
    );
    berth_telemetry::metrics::observe(
        "berth_api_request_duration_seconds",
        "Docker API request latency (to the response head) by route.",
        &[("method", &method), ("route", &route)],
        t0.elapsed().as_secs_f64(),
    );
    res
}

mod opentelemetry_http_headers {
    pub struct Extract<'a>(pub &'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn post(app: &Router, body: Vec<u8>) -> (u16, String, String) {
        let req = http::Request::builder().method("POST").uri("/c").body(Body::from(body)).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let st = res.status().as_u16();
        let ct = res.headers().get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let b = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (st, ct, String::from_utf8_lossy(&b).into_owned())
    }

    /// Bodies of megabytes are read (axum's default stopped at 2 MB, in plain text);
    /// beyond the limit the answer is 413 in Docker's JSON.
    #[tokio::test]
    async fn large_bodies_are_read_and_too_large_ones_answered_in_json() {
        let app = with_limits(Router::new().route(
            "/c",
            axum::routing::post(|b: axum::body::Bytes| async move { b.len().to_string() }),
        ));
        let (st, _, body) = post(&app, vec![b'x'; 10 << 20]).await;
        assert_eq!((st, body.as_str()), (200, "10485760"));
        let (st, ct, body) = post(&app, vec![0; MAX_BODY + 1]).await;
        assert_eq!(st, 413);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["message"].as_str().unwrap().contains("larger than"), "{body}");
    }
}

#[cfg(test)]
mod content_type_tests {
    use super::*;

    #[test]
    fn json_media_types_as_go_parses_them() {
        for ok in ["application/json", "APPLICATION/JSON", "application/json; charset=utf-8", "application/json;"] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in ["text/plain", "application/json;;bad", "application/x-www-form-urlencoded", "application/jsonx", "application/json; charset"] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
        assert!(checks_json("/containers/create") && checks_json("/exec/abc/start") && checks_json("/networks/n/connect"));
        assert!(!checks_json("/containers/x/start") && !checks_json("/build") && !checks_json("/swarm/init"));
    }
}
