//! Prometheus metrics at daemon.json `metrics-addr` (plain HTTP, as Docker serves
//! it): the gateway's own and every service's, gathered over the bus, plus service
//! restarts counted by `berth up`.

use std::path::PathBuf;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use berth_bus::Bus;
use bus_schema::Service;

/// Everything one scrape returns.
pub async fn gather(bus: &Bus, root: &PathBuf) -> String {
    let mut parts = vec![berth_telemetry::metrics::label_all(&berth_telemetry::metrics::render(), "service", "gateway")];
    let sys = berth_bus::SystemClient::new(bus.clone()).with_timeout(Duration::from_secs(2));
    let futs = Service::BACKENDS.into_iter().map(|svc| {
        let sys = sys.clone();
        async move { sys.metrics(svc).await.ok() }
    });
    parts.extend(futures_util::future::join_all(futs).await.into_iter().flatten());
    // restarts recorded by `berth up`
    if let Ok(text) = std::fs::read_to_string(root.join("run/node.json")) {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(&text) {
            let mut s = String::from("# HELP berth_service_restarts_total Restarts of each process of the node by berth up.\n# TYPE berth_service_restarts_total counter\n");
            if let Some(m) = j["restarts"].as_object() {
                for (k, v) in m {
                    s.push_str(&format!("berth_service_restarts_total{{service=\"{k}\"}} {}\n", v.as_u64().unwrap_or(0)));
                }
            }
            parts.push(s);
        }
    }
    berth_telemetry::metrics::merge(&parts)
}

pub async fn serve(addr: String, bus: Bus, root: PathBuf) -> anyhow::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (bus, root) = (bus.clone(), root.clone());
            async move { ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], gather(&bus, &root).await) }
        }),
    );
    let l = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %addr, "metrics listening");
    axum::serve(l, app).await?;
    Ok(())
}
