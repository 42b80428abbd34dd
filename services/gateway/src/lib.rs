//! The gateway: the Docker Engine API over HTTP/1.1, each request turned into bus
//! requests. It holds no state of its own; several may run against one node.

pub mod backend;
pub mod error;
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
    Router::new()
        .merge(routes::system::router(b.clone()))
        .merge(routes::containers::router(b.clone()))
        .merge(routes::events::router(b.clone()))
        .merge(routes::build::router(b.clone()))
        .merge(routes::volumes::router(b.clone()))
        .merge(routes::images::router(b.clone()))
        .merge(routes::networks::router(b.clone()))
        .merge(routes::swarm::router(b.clone()))
        .fallback(|| async { error::ApiError::not_found("page not found") })
        .layer(axum::middleware::from_fn(trace_request))
        .layer(axum::middleware::from_fn(version::headers))
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

fn version_headers(h: &mut http::HeaderMap) {
    h.insert("Api-Version", http::HeaderValue::from_static(berth_config::API_VERSION));
    h.insert("Ostype", http::HeaderValue::from_static("linux"));
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
