//! berth-images: the images service of one node.

use anyhow::Context;
use bus_schema::Service;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _telemetry = berth_telemetry::init("images");
    let cfg = berth_config::DaemonConfig::from_env()?;
    let bus = berth_bus::service::connect(Service::Images)
        .await
        .context("connecting to the bus")?;
    let server = berth_images::serve(bus, cfg).await?;
    if let Some(r) = berth_bus::service::until_shutdown(server.run()).await {
        r?;
    }
    Ok(())
}
