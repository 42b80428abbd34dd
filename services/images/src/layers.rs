//! The storage service's layer store, over the bus: the few calls the images
//! service makes (stat, apply, retain, release, export).

use berth_bus::{Bus, StreamReader, StreamWriter};
use bus_schema::storage::{
    LayerApplied, LayerApply, LayerExport, LayerInfo, LayerRelease, LayerRetain, LayerStat,
};
use bus_schema::stream::ByteChunk;
use bus_schema::{BusError, ErrorKind};
use std::time::Duration;

#[derive(Clone)]
pub struct Layers {
    bus: Bus,
}

impl Layers {
    pub fn new(bus: Bus) -> Layers {
        // Applying a large layer can take a while before storage answers.
        Layers {
            bus: bus.with_timeout(Duration::from_secs(120)),
        }
    }

    /// The layer, or None when storage does not have it.
    pub async fn stat(&self, chain_id: &str) -> Result<Option<LayerInfo>, BusError> {
        match self
            .bus
            .request(&LayerStat {
                chain_id: chain_id.to_string(),
            })
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn retain(&self, chain_id: &str) -> Result<LayerInfo, BusError> {
        self.bus
            .request(&LayerRetain {
                chain_id: chain_id.to_string(),
            })
            .await
    }

    /// Drop a reference; a layer that is already gone is not an error.
    pub async fn release(&self, chain_id: &str) -> Result<Vec<String>, BusError> {
        match self
            .bus
            .request(&LayerRelease {
                chain_id: chain_id.to_string(),
            })
            .await
        {
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

    /// Open a layer apply: write the blob into the writer, then read one item.
    pub async fn apply(
        &self,
        req: LayerApply,
    ) -> Result<(StreamReader<LayerApplied>, StreamWriter<ByteChunk>), BusError> {
        let ((), rd, wr) = self.bus.request_duplex(&req).await?;
        Ok((rd, wr))
    }

    pub async fn export(&self, chain_id: &str) -> Result<StreamReader<ByteChunk>, BusError> {
        let ((), rd) = self
            .bus
            .request_stream(&LayerExport {
                chain_id: chain_id.to_string(),
            })
            .await?;
        Ok(rd)
    }
}

/// Wait for the one `LayerApplied` an apply answers.
pub async fn applied(mut rd: StreamReader<LayerApplied>) -> Result<LayerApplied, BusError> {
    let item = match rd.next().await {
        Some(r) => r?,
        None => {
            return Err(BusError::internal(
                "the storage service ended the layer apply without an answer",
            ))
        }
    };
    // drain the end marker
    while let Some(r) = rd.next().await {
        r?;
    }
    Ok(item)
}
