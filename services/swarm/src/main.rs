//! berth-swarm: the swarm service of one node.

use anyhow::Context;
use bus_schema::Service;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _telemetry = berth_telemetry::init("swarm");
    let cfg = berth_config::DaemonConfig::from_env()?;
    let bus = berth_bus::service::connect(Service::Swarm).await.context("connecting to the bus")?;
    // The swarm server is our child (spawned from this thread: PDEATHSIG follows the
    // thread that forked), so the runtime stays single-threaded.
    let (server, svc) = berth_swarm::start(bus, cfg).await?;
    let r = berth_bus::service::until_shutdown(server.run()).await;
    svc.shutdown().await;
    if let Some(r) = r {
        r?;
    }
    Ok(())
}
