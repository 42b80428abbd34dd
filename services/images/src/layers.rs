//! The storage service's layer store, through its generated client: the few calls
//! the images service makes (stat, apply, retain, release, export), with the
//! answers images wants (a missing layer is `None`, releasing a gone one is fine).

use berth_bus::storage::{StorageApi, StorageClient};
use berth_bus::{Bus, Emitter};
use bus_schema::storage::{LayerApplied, LayerApply, LayerExport, LayerInfo, LayerRelease, LayerRetain, LayerStat};
use bus_schema::stream::ByteChunk;
use bus_schema::{BusError, BusStream, ErrorKind};

#[derive(Clone)]
pub struct Layers {
    storage: StorageClient,
}

impl Layers {
    pub fn new(bus: Bus) -> Layers {
        Layers { storage: StorageClient::new(bus) }
    }

    /// The layer, or None when storage does not have it.
    pub async fn stat(&self, chain_id: &str) -> Result<Option<LayerInfo>, BusError> {
        match self.storage.layer_stat(LayerStat { chain_id: chain_id.to_string() }).await {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn retain(&self, chain_id: &str) -> Result<LayerInfo, BusError> {
        self.storage.layer_retain(LayerRetain { chain_id: chain_id.to_string() }).await
    }

    /// Drop a reference; a layer that is already gone is not an error.
    pub async fn release(&self, chain_id: &str) -> Result<Vec<String>, BusError> {
        match self.storage.layer_release(LayerRelease { chain_id: chain_id.to_string() }).await {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(vec![]),
            r => r,
        }
    }

    /// Release, logging instead of failing (cleanup paths).
    pub async fn release_quietly(&self, chain_id: &str) {
        if let Err(e) = self.release(chain_id).await {
            tracing::warn!(chain_id, error = %e, "releasing a layer failed");
        }
    }

    /// Open a layer apply: write the blob into the feed, end it, then wait for the
    /// result with [`applied`].
    pub async fn apply(&self, req: LayerApply) -> Result<(BusStream<LayerApplied>, Feed), BusError> {
        let (tx, input) = berth_bus::channel(4);
        let ((), items) = self.storage.layer_apply(req, input).await?;
        Ok((items, Feed(tx)))
    }

    pub async fn export(&self, chain_id: &str) -> Result<BusStream<ByteChunk>, BusError> {
        Ok(self.storage.layer_export(LayerExport { chain_id: chain_id.to_string() }).await?.1)
    }
}

/// The bytes of a layer apply.
pub struct Feed(Emitter<ByteChunk>);

impl Feed {
    pub async fn send(&mut self, c: ByteChunk) -> Result<(), BusError> {
        self.0.send(c).await
    }

    /// Abort the apply: storage keeps nothing.
    pub async fn fail(self, e: BusError) -> Result<(), BusError> {
        self.0.fail(e).await;
        Ok(())
    }

    /// The blob is complete.
    pub async fn end(self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Wait for the one `LayerApplied` an apply answers.
pub async fn applied(rd: BusStream<LayerApplied>) -> Result<LayerApplied, BusError> {
    berth_bus::single(rd, "the storage service's layer apply").await
}
