//! Every request the swarm service makes on its node's own bus (runtime, images), in
//! one place: the agent runs tasks through these, the manager reads logs through
//! them. Each is a call of the runtime's or the images' typed client (the contract
//! tables list the swarm service as a caller of exactly these operations).

use berth_bus::images::{ImagesApi, ImagesClient};
use berth_bus::runtime::{RuntimeApi, RuntimeClient};
use berth_bus::Bus;
use bus_schema::runtime as rt;
use bus_schema::stream::StdioChunk;
use bus_schema::{docker, images, BusError, BusStream};
use futures_util::StreamExt;
use std::collections::HashMap;

#[derive(Clone)]
pub struct NodeBus {
    /// The connection itself (events are published on it).
    pub bus: Bus,
    runtime: RuntimeClient,
    images: ImagesClient,
}

impl NodeBus {
    pub fn new(bus: Bus) -> NodeBus {
        NodeBus { runtime: RuntimeClient::new(bus.clone()), images: ImagesClient::new(bus.clone()), bus }
    }

    pub async fn create(&self, name: &str, body: docker::ContainerCreateBody) -> Result<String, BusError> {
        let r = self.runtime.container_create(rt::ContainerCreate { name: Some(name.to_string()), body, platform: None, plugin: None }).await?;
        Ok(r.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), BusError> {
        match self.runtime.container_start(rt::ContainerStart { id: id.to_string() }).await {
            Err(e) if e.is(bus_schema::ErrorKind::NotModified) => Ok(()),
            r => r,
        }
    }

    pub async fn stop(&self, id: &str, timeout: Option<i64>, signal: Option<String>) -> Result<(), BusError> {
        match self.runtime.container_stop(rt::ContainerStop { id: id.to_string(), signal, timeout }).await {
            Err(e) if e.is(bus_schema::ErrorKind::NotModified) => Ok(()),
            r => r,
        }
    }

    pub async fn remove(&self, id: &str) -> Result<(), BusError> {
        match self.runtime.container_remove(rt::ContainerRemove { id: id.to_string(), force: true, volumes: false, link: false }).await {
            Err(e) if e.is(bus_schema::ErrorKind::NotFound) => Ok(()),
            r => r,
        }
    }

    pub async fn inspect(&self, id: &str) -> Result<docker::ContainerInspectResponse, BusError> {
        self.runtime.container_inspect(rt::ContainerInspect { id: id.to_string(), size: false }).await
    }

    /// Containers (all states) carrying `label` (`key` or `key=value`).
    pub async fn list_labelled(&self, label: &str) -> Result<Vec<docker::ContainerSummary>, BusError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![label.to_string()]);
        self.runtime.container_list(rt::ContainerList { all: true, limit: None, size: false, filters }).await
    }

    /// A container's log; dropping the stream stops the runtime's reader.
    pub async fn logs(&self, id: &str, o: &bus_schema::swarm::LogOptions) -> Result<(rt::StreamInfo, BusStream<StdioChunk>), BusError> {
        self.runtime
            .container_logs(rt::ContainerLogs {
                id: id.to_string(),
                follow: o.follow,
                stdout: o.stdout,
                stderr: o.stderr,
                since: o.since,
                until: 0.0,
                timestamps: o.timestamps,
                tail: o.tail.clone(),
            })
            .await
    }

    /// Wait until the container stops; its exit code (None when the wait broke off: the
    /// runtime restarted, the container is gone).
    pub async fn wait_exit(&self, id: &str) -> Option<i64> {
        let (_, mut items) = self.runtime.container_wait(rt::ContainerWait { id: id.to_string(), condition: "not-running".into() }).await.ok()?;
        match items.next().await {
            Some(Ok(r)) => Some(r.status_code),
            _ => None,
        }
    }

    pub async fn image_present(&self, reference: &str) -> bool {
        self.images.image_resolve(images::ImageResolve { reference: reference.to_string() }).await.is_ok()
    }

    /// Pull `reference`; the error of the pull when it fails.
    pub async fn pull(&self, reference: &str, auth: Option<images::RegistryAuth>) -> Result<(), BusError> {
        let (_, mut items) = self.images.image_pull(images::ImagePull { reference: reference.to_string(), platform: None, auth }).await?;
        while let Some(item) = items.next().await {
            let m = item?;
            if let Some(e) = m.error {
                return Err(BusError::not_found(e));
            }
        }
        Ok(())
    }
}
