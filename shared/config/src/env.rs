//! Environment variables `berth up` passes to every service. The names live here only.

/// Data root (`data-root`).
pub const ROOT: &str = "BERTH_ROOT";
/// NATS URL of the node's bus.
pub const NATS_URL: &str = "BERTH_NATS_URL";
/// File holding this service's bus credentials (`user:password`, mode 0600).
pub const NATS_CREDS: &str = "BERTH_NATS_CREDS";
/// The node id: the node token in node-local subjects.
pub const NODE: &str = "BERTH_NODE";
/// Path of the daemon.json the node was started with (may be absent).
pub const CONFIG: &str = "BERTH_CONFIG";
/// Gateway listen addresses, comma separated (`unix:///path`, `tcp://host:port`).
pub const HOSTS: &str = "BERTH_HOSTS";
/// Log filter for services (tracing's EnvFilter syntax).
pub const LOG: &str = "BERTH_LOG";
/// Path of the berth-shim binary (runtime service).
pub const SHIM: &str = "BERTH_SHIM";
/// The soft open-files limit `berth up` was started with, when it raised its own (and
/// so its services') to the hard limit: containers still get this one, as before
/// (the shim reads it under this name).
pub const CONTAINER_NOFILE: &str = "BERTH_CONTAINER_NOFILE";

/// The service's end of its link to `berth up` (a unix socket pair, by fd number). End
/// of file on it means the supervisor is gone or let this instance go (an upgrade
/// replaces it): the service stops serving and leaves containers as they are. The
/// service writes `R` on it once it serves.
pub const SUPERVISOR_FD: &str = "BERTH_SUPERVISOR_FD";

/// Standard OpenTelemetry variable: OTLP export is on when it is set.
pub const OTEL_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
