//! The network service: the default bridge and user bridge networks, host/none/
//! container modes, IPAM, container sandboxes (network namespaces with veth
//! endpoints), published ports forwarded in the kernel, the embedded DNS of user
//! networks, and network events.
//!
//! Layout: [`service::NetworkService`] implements `bus_schema::network::NetworkApi`
//! (generated from the network table, as are `berth_bus::network::NetworkClient` and
//! the bus adapter `berth_bus::network::serve_network`); its logic is
//! split by concern ([`networks`], [`sandboxes`], [`reconcile`], [`inspect`], with
//! the settings in [`config`] and the records in [`state`] and [`store`]) and reaches
//! the kernel only through the traits of [`kernel`] (real: [`link`], [`netns`],
//! [`firewall`]; in unit tests an in-memory fake). [`dns`] and [`ports`] are the
//! embedded DNS and host port reservations; [`bus`] is its part of `docker info`.

pub mod bus;
pub mod config;
pub mod dns;
#[cfg(test)]
mod fake;
pub mod files;
pub mod firewall;
mod inspect;
pub mod ipam;
pub mod kernel;
pub mod link;
pub mod netns;
mod networks;
pub mod ports;
mod reconcile;
mod sandboxes;
pub mod service;
mod state;
pub mod store;
pub mod swarm;

use berth_bus::runtime::RuntimeApi as _;
use berth_bus::{Bus, Server};
use berth_config::DaemonConfig;
use bus_schema::Service;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub use berth_bus::network::{NetworkApi, NetworkClient};
pub use crate::config::Config;
pub use crate::service::{Events, NetworkService};

/// Start the service on `bus` with the node's daemon.json.
pub async fn serve(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<Server> {
    Ok(start(bus, cfg).await?.0)
}

/// Like [`serve`], also returning the service (for a graceful [`NetworkService::shutdown`]).
pub async fn start(bus: Bus, cfg: DaemonConfig) -> anyhow::Result<(Server, Arc<NetworkService>)> {
    let root = std::env::var_os(berth_config::env::ROOT)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cfg.data_root());
    let config = Config::from_daemon(&cfg, &root, bus.node())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    start_with(bus, config).await
}

/// Start with an explicit [`Config`] (tests).
pub async fn start_with(bus: Bus, config: Config) -> anyhow::Result<(Server, Arc<NetworkService>)> {
    let svc = NetworkService::start(config, bus_events(bus.clone())).await?;
    svc.set_swarm(std::sync::Arc::new(berth_bus::swarm::SwarmClient::new(bus.clone())));
    follow_runtime(bus.clone(), svc.clone());
    let server = Server::new(bus, Service::Network).info(|| async { bus::info() });
    Ok((berth_bus::network::serve_network(server, svc.clone()), svc))
}

/// How long a sandbox stays stale (no process, its container not running) before
/// the sweep drops it: a start in flight has its sandbox before its process.
const SWEEP_GRACE: Duration = Duration::from_secs(10);
/// How often the sweep asks the runtime while nothing looks stale.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// ... and while something does.
const SWEEP_SOON: Duration = Duration::from_secs(5);

/// The sweep against the runtime: sandboxes whose container no longer runs go (their
/// removal was lost to a fault: the network, the bus or the node was down when the
/// runtime gave them back). Soon after the start, then every [`SWEEP_EVERY`]; only
/// while the node has sandboxes; a round the runtime does not answer is skipped.
/// Ends with the service (a weak reference: the sweep keeps nothing alive).
fn follow_runtime(bus: Bus, svc: Arc<NetworkService>) {
    let svc = Arc::downgrade(&svc);
    tokio::spawn(async move {
        let mut suspects = std::collections::BTreeMap::new();
        let mut wait = Duration::from_secs(1);
        let mut failed = 0u32;
        loop {
            tokio::time::sleep(wait).await;
            wait = SWEEP_EVERY;
            let Some(strong) = svc.upgrade() else { return };
            let any = strong.has_sandboxes().await;
            drop(strong);
            if !any {
                suspects.clear();
                continue;
            }
            let list = bus_schema::runtime::ContainerList {
                all: false,
                limit: None,
                size: false,
                filters: Default::default(),
            };
            let running: BTreeSet<String> = match berth_bus::runtime::RuntimeClient::new(bus.clone()).container_list(list).await {
                Ok(l) => l.into_iter().filter_map(|c| c.id).collect(),
                Err(e) => {
                    // at a node's start the runtime may not serve yet: said once it
                    // has not answered for a while (a refused permission, a runtime down)
                    failed += 1;
                    if failed == 4 {
                        tracing::warn!(error = %e, "the runtime does not list its containers: no sweep");
                    }
                    wait = SWEEP_SOON;
                    continue;
                }
            };
            failed = 0;
            let Some(svc) = svc.upgrade() else { return };
            suspects = svc.sweep(&running, suspects, SWEEP_GRACE).await;
            if !suspects.is_empty() {
                wait = SWEEP_SOON;
            }
        }
    });
}

/// Events published in order by one task.
pub fn bus_events(bus: Bus) -> Events {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bus_schema::event::Event>();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            bus.publish_event(&e).await;
        }
    });
    Arc::new(move |e| {
        let _ = tx.send(e);
    })
}
