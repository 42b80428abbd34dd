//! berth-network: the network service of one node.

use anyhow::Context;
use bus_schema::Service;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _telemetry = berth_telemetry::init("network");
    let cfg = berth_config::DaemonConfig::from_env()?;
    let bus = berth_bus::service::connect(Service::Network)
        .await
        .context("connecting to the bus")?;
    let (server, svc) = berth_network::start(bus, cfg).await?;
    let r = berth_bus::service::until_shutdown(server.run()).await;
    // Stopping: with no sandbox left, take the node's bridges and rules away; the
    // records stay and the next start puts them back. Detached (`berth up` gone or
    // handing over to a new instance), everything stays as it is for the next one.
    if !berth_bus::service::detached() {
        svc.shutdown().await;
    }
    if let Some(r) = r {
        r?;
    }
    Ok(())
}
