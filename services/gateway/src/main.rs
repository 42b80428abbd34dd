//! berth-gateway: the Docker Engine API for one node.

use anyhow::Context;
use berth_config::{env, DaemonConfig};
use berth_gateway::{backend::BusBackend, host::HostFacts, listen};
use bus_schema::Service;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _telemetry = berth_telemetry::init("gateway");
    let cfg = DaemonConfig::from_env()?;
    let root: std::path::PathBuf = std::env::var(env::ROOT).map(Into::into).unwrap_or_else(|_| cfg.data_root());
    let hosts: Vec<String> = match std::env::var(env::HOSTS) {
        Ok(h) if !h.is_empty() => h.split(',').map(str::to_string).collect(),
        _ if !cfg.hosts.is_empty() => cfg.hosts.clone(),
        _ => vec![format!("unix://{}", listen::DEFAULT_SOCKET)],
    };
    let hosts = hosts.iter().map(|h| listen::parse_host(h)).collect::<anyhow::Result<Vec<_>>>()?;
    let tls = listen::tls_from_config(&cfg);
    let bus = berth_bus::service::connect(Service::Gateway).await.context("connecting to the bus")?;
    let host = HostFacts::detect(bus.node(), root.clone(), &cfg);
    if let Some(addr) = cfg.metrics_addr.clone().filter(|a| !a.is_empty()) {
        let (b, r) = (bus.clone(), root.clone());
        tokio::spawn(async move {
            if let Err(e) = berth_gateway::metrics::serve(addr, b, r).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let app = berth_gateway::app(BusBackend::new(bus, host));
    let group = cfg.group.clone().unwrap_or_else(|| berth_config::hosts::DEFAULT_GROUP.to_string());
    let opened = listen::open(&hosts, &group, tls.is_some())?;
    let stop = async {
        match berth_bus::service::shutdown_signal().await {
            // `berth up` hands the sockets to a new gateway: finish what is in flight
            berth_bus::service::Stop::Detach => std::time::Duration::from_secs(10),
            berth_bus::service::Stop::Orderly => std::time::Duration::from_millis(500),
        }
    };
    let r = listen::serve_until(opened.listeners, tls, app, stop).await;
    tracing::info!("shutting down");
    for p in opened.own_files {
        let _ = std::fs::remove_file(p);
    }
    r
}
