//! tracing + OpenTelemetry for every berth process.
//!
//! Logs go to stderr (`BERTH_LOG` or `RUST_LOG` filter, default `info`). When the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, spans are
//! exported over OTLP: gRPC when `OTEL_EXPORTER_OTLP_PROTOCOL` (or the traces variant)
//! is `grpc`, HTTP/protobuf otherwise, as the OpenTelemetry spec defaults. The W3C
//! trace-context propagator is always installed so `traceparent` crosses the bus.

pub mod metrics;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Flushes and shuts the exporter down when dropped.
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Is OTLP export configured by the standard variables?
pub fn otlp_configured() -> bool {
    env_nonempty(berth_config::env::OTEL_ENDPOINT).is_some()
        || env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

fn otlp_grpc() -> bool {
    env_nonempty("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .map(|p| p == "grpc")
        .unwrap_or(false)
}

fn provider(service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = if otlp_grpc() {
        opentelemetry_otlp::SpanExporter::builder().with_tonic().build()
    } else {
        // The HTTP exporter takes the base endpoint and appends /v1/traces itself
        // only when it reads the variable; pass it through unchanged.
        let mut b = opentelemetry_otlp::SpanExporter::builder().with_http();
        if env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
            if let Some(base) = env_nonempty(berth_config::env::OTEL_ENDPOINT) {
                b = b.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
            }
        }
        b.build()
    }
    .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(format!("berth-{service}")).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Set up logging and, when configured, trace export for the process `service`.
pub fn init(service: &str) -> Guard {
    // reqwest (the OTLP HTTP exporter, the registry client) is built without a
    // default crypto provider: the process picks ring, once, before any client
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = env_nonempty(berth_config::env::LOG)
        .or_else(|| env_nonempty("RUST_LOG"))
        .unwrap_or_else(|| "info".to_string());
    // BERTH_LOG_SPANS=1: a line with busy/idle time as each span closes (where a
    // request's time goes, without a trace collector); =all: a line as each opens too
    use tracing_subscriber::fmt::format::FmtSpan;
    let spans = match env_nonempty("BERTH_LOG_SPANS").as_deref() {
        None => FmtSpan::NONE,
        Some("all") => FmtSpan::NEW | FmtSpan::CLOSE,
        Some(_) => FmtSpan::CLOSE,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(spans)
        .with_target(false)
        .with_ansi(false)
        .with_filter(EnvFilter::new(&filter));
    let (otel, provider, err) = if otlp_configured() {
        match provider(service) {
            Ok(p) => {
                let tracer = p.tracer(format!("berth-{service}"));
                opentelemetry::global::set_tracer_provider(p.clone());
                (Some(tracing_opentelemetry::layer().with_tracer(tracer)), Some(p), None)
            }
            Err(e) => (None, None, Some(e)),
        }
    } else {
        (None, None, None)
    };
    let otel = otel.map(|l| l.with_filter(EnvFilter::new("info")));
    let _ = tracing_subscriber::registry().with(fmt).with(otel).try_init();
    if let Some(e) = err {
        tracing::warn!(error = %e, "OTLP export disabled");
    }
    Guard { provider }
}
