//! berth-gateway: the Docker Engine API for one node.

use anyhow::Context;
use berth_config::{env, DaemonConfig};
use berth_gateway::{backend::BusBackend, host::HostFacts, listen};
use bus_schema::Service;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _telemetry = berth_telemetry::init("gateway");
    let cfg = DaemonConfig::from_env()?;
    let root = std::env::var(env::ROOT)
        .map(Into::into)
        .unwrap_or_else(|_| cfg.data_root());
    let hosts: Vec<String> = match std::env::var(env::HOSTS) {
        Ok(h) if !h.is_empty() => h.split(',').map(str::to_string).collect(),
        _ if !cfg.hosts.is_empty() => cfg.hosts.clone(),
        _ => vec![format!("unix://{}", listen::DEFAULT_SOCKET)],
    };
    let hosts = hosts
        .iter()
        .map(|h| listen::parse_host(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = listen::tls_from_config(&cfg);
    let bus = berth_bus::service::connect(Service::Gateway)
        .await
        .context("connecting to the bus")?;
    let host = HostFacts::detect(bus.node(), root, &cfg);
    let app = berth_gateway::app(BusBackend::new(bus, host));
    match berth_bus::service::until_shutdown(listen::serve_all(hosts.clone(), tls, app)).await {
        Some(r) => r?,
        None => tracing::info!("shutting down"),
    }
    for h in hosts {
        if let listen::Host::Unix(p) = h {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}
