//! What the runtime calls outside itself, as seams: the storage, network and images
//! services and the bus's events ([`Deps`], generic: the API traits are not
//! dyn-compatible), and the container shims ([`Shims`], [`ShimProcess`]: trait
//! objects). [`Live`] and [`LiveShims`] are the real ones; the lifecycle's unit tests
//! (`lifecycle_tests`) give in-memory fakes.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_bus::images::{ImagesApi, ImagesClient};
use berth_bus::network::{NetworkApi, NetworkClient};
use berth_bus::storage::{StorageApi, StorageClient};
use berth_bus::Bus;
use bus_schema::event::Event;

use crate::shim_client::{Exec, ExecSpec, ExitStatus, Shim, ShimOptions, StartError};

/// Where the runtime's events go, and the node it runs on.
pub trait Events: Send + Sync + 'static {
    fn node(&self) -> &str;
    fn publish_event(&self, ev: &Event) -> impl Future<Output = ()> + Send;
}

impl Events for Bus {
    fn node(&self) -> &str {
        Bus::node(self)
    }
    fn publish_event(&self, ev: &Event) -> impl Future<Output = ()> + Send {
        Bus::publish_event(self, ev)
    }
}

/// The services the runtime calls: `Runtime<D: Deps>`.
pub trait Deps: Send + Sync + 'static {
    type Bus: Events;
    type Storage: StorageApi;
    type Network: NetworkApi;
    type Images: ImagesApi;
}

/// The real services, over the bus.
pub struct Live;

impl Deps for Live {
    type Bus = Bus;
    type Storage = StorageClient;
    type Network = NetworkClient;
    type Images = ImagesClient;
}

/// A container's running shim: what the runtime asks of it.
#[async_trait]
pub trait ShimProcess: Send + Sync + 'static {
    async fn kill(&self, signal: i32, all: bool) -> io::Result<()>;
    /// Until the container's process exits: its status.
    async fn wait(&self) -> io::Result<ExitStatus>;
    async fn write_stdin(&self, data: &[u8]) -> io::Result<()>;
    async fn close_stdin(&self) -> io::Result<()>;
    async fn resize(&self, height: u16, width: u16) -> io::Result<()>;
    async fn exec(&self, spec: ExecSpec) -> Result<Exec, StartError>;
}

/// A shim spawned and waiting to start its container (see [`Shims::spawn`]).
#[async_trait]
pub trait PendingStart: Send + 'static {
    /// Starts the container from the bundle: the shim and the init's pid.
    async fn go(self: Box<Self>) -> Result<(Arc<dyn ShimProcess>, u32), StartError>;
}

/// Launches shims.
#[async_trait]
pub trait Shims: Send + Sync + 'static {
    /// A shim for `opts.bundle`, ready; dropped without `go`, it exits.
    async fn spawn(&self, opts: &ShimOptions) -> Result<Box<dyn PendingStart>, StartError>;
}

/// The real shims: the `berth-shim` binary.
pub struct LiveShims(pub PathBuf);

#[async_trait]
impl Shims for LiveShims {
    async fn spawn(&self, opts: &ShimOptions) -> Result<Box<dyn PendingStart>, StartError> {
        Ok(Box::new(Shim::spawn(&self.0, opts).await?))
    }
}

#[async_trait]
impl PendingStart for crate::shim_client::PendingShim {
    async fn go(self: Box<Self>) -> Result<(Arc<dyn ShimProcess>, u32), StartError> {
        let (s, pid) = crate::shim_client::PendingShim::go(*self).await?;
        Ok((Arc::new(s), pid))
    }
}

#[async_trait]
impl ShimProcess for Shim {
    async fn kill(&self, signal: i32, all: bool) -> io::Result<()> {
        Shim::kill(self, signal, all).await
    }
    async fn wait(&self) -> io::Result<ExitStatus> {
        Shim::wait(self).await
    }
    async fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        Shim::write_stdin(self, data).await
    }
    async fn close_stdin(&self) -> io::Result<()> {
        Shim::close_stdin(self).await
    }
    async fn resize(&self, height: u16, width: u16) -> io::Result<()> {
        Shim::resize(self, height, width).await
    }
    async fn exec(&self, spec: ExecSpec) -> Result<Exec, StartError> {
        Shim::exec(self, spec).await
    }
}
