//! W3C trace context in NATS headers.

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);
struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Put the current span's context (`traceparent`) into outgoing headers.
pub fn inject(headers: &mut async_nats::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// Make `span` continue the trace carried by incoming headers, if any.
pub fn continue_from(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(h) = headers {
        if h.get("traceparent").is_some() {
            let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(h)));
            let _ = span.set_parent(cx);
        }
    }
}
