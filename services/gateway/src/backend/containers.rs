//! Container routes over the bus: each call is one runtime request.

use std::time::Duration;

use bus_schema::runtime as rt;
use bus_schema::docker;

use super::BusBackend;
use crate::routes::containers::{Backend, Fut, Simple};

/// Stops may wait for the container's own timeout before the kill.
fn stop_timeout(t: Option<i64>) -> Duration {
    Duration::from_secs(t.unwrap_or(10).clamp(0, 3600) as u64 + 30)
}

impl Backend for BusBackend {
    fn create(&self, r: rt::ContainerCreate) -> Fut<'_, docker::ContainerCreateResponse> {
        Box::pin(async move { self.bus.with_timeout(Duration::from_secs(120)).request(&r).await })
    }

    fn simple(&self, r: Simple) -> Fut<'_, ()> {
        Box::pin(async move {
            let long = self.bus.with_timeout(Duration::from_secs(120));
            match r {
                Simple::Start(r) => long.request(&r).await,
                Simple::Stop(r) => self.bus.with_timeout(stop_timeout(r.timeout)).request(&r).await,
                Simple::Restart(r) => self.bus.with_timeout(stop_timeout(r.timeout) + Duration::from_secs(60)).request(&r).await,
                Simple::Kill(r) => self.bus.request(&r).await,
                Simple::Remove(r) => long.request(&r).await,
                Simple::Resize(r) => self.bus.request(&r).await,
                Simple::ExecResize(r) => self.bus.request(&r).await,
                Simple::Rename(r) => self.bus.request(&r).await,
                Simple::Pause(r) => self.bus.request(&r).await,
                Simple::Unpause(r) => self.bus.request(&r).await,
            }
        })
    }

    fn wait(&self, r: rt::ContainerWait) -> Fut<'_, berth_bus::StreamReader<docker::ContainerWaitResponse>> {
        Box::pin(async move { Ok(self.bus.request_stream(&r).await?.1) })
    }

    fn inspect(&self, r: rt::ContainerInspect) -> Fut<'_, docker::ContainerInspectResponse> {
        Box::pin(async move { self.bus.request_idempotent(&r).await })
    }

    fn list(&self, r: rt::ContainerList) -> Fut<'_, Vec<docker::ContainerSummary>> {
        Box::pin(async move { self.bus.request_idempotent(&r).await })
    }

    fn logs(&self, r: rt::ContainerLogs) -> Fut<'_, (rt::StreamInfo, berth_bus::StreamReader<bus_schema::stream::StdioChunk>)> {
        Box::pin(async move { self.bus.request_stream_idempotent(&r).await })
    }

    fn attach(
        &self,
        r: rt::ContainerAttach,
    ) -> Fut<
        '_,
        (
            rt::StreamInfo,
            berth_bus::StreamReader<bus_schema::stream::StdioChunk>,
            berth_bus::StreamWriter<bus_schema::stream::StdinChunk>,
        ),
    > {
        Box::pin(async move { self.bus.request_duplex(&r).await })
    }

    fn exec_create(&self, r: rt::ExecCreate) -> Fut<'_, docker::IdResponse> {
        Box::pin(async move { self.bus.request(&r).await })
    }

    fn exec_start(
        &self,
        r: rt::ExecStart,
    ) -> Fut<
        '_,
        (
            rt::StreamInfo,
            berth_bus::StreamReader<bus_schema::stream::StdioChunk>,
            berth_bus::StreamWriter<bus_schema::stream::StdinChunk>,
        ),
    > {
        Box::pin(async move { self.bus.with_timeout(Duration::from_secs(60)).request_duplex(&r).await })
    }

    fn exec_inspect(&self, r: rt::ExecInspect) -> Fut<'_, docker::ExecInspectResponse> {
        Box::pin(async move { self.bus.request_idempotent(&r).await })
    }

    fn top(&self, r: rt::ContainerTop) -> Fut<'_, docker::ContainerTopResponse> {
        Box::pin(async move { self.bus.request_idempotent(&r).await })
    }

    fn stats(&self, r: rt::ContainerStats) -> Fut<'_, berth_bus::StreamReader<serde_json::Value>> {
        Box::pin(async move { Ok(self.bus.request_stream(&r).await?.1) })
    }

    fn update(&self, r: rt::ContainerUpdate) -> Fut<'_, docker::ContainerUpdateResponse> {
        Box::pin(async move { self.bus.request(&r).await })
    }

    fn prune(&self, r: rt::ContainerPrune) -> Fut<'_, docker::ContainerPruneResponse> {
        Box::pin(async move { self.bus.with_timeout(Duration::from_secs(300)).request(&r).await })
    }

    fn changes(&self, r: rt::ContainerChanges) -> Fut<'_, Vec<docker::FilesystemChange>> {
        Box::pin(async move { self.bus.with_timeout(Duration::from_secs(120)).request(&r).await })
    }

    fn export(&self, r: rt::ContainerExport) -> Fut<'_, berth_bus::StreamReader<bus_schema::stream::ByteChunk>> {
        Box::pin(async move { Ok(self.bus.request_stream(&r).await?.1) })
    }

    fn archive_stat(&self, r: rt::ContainerArchiveStat) -> Fut<'_, rt::PathStat> {
        Box::pin(async move { self.bus.request(&r).await })
    }

    fn archive_get(&self, r: rt::ContainerArchiveGet) -> Fut<'_, (rt::PathStat, berth_bus::StreamReader<bus_schema::stream::ByteChunk>)> {
        Box::pin(async move { self.bus.request_stream(&r).await })
    }

    fn archive_put(
        &self,
        r: rt::ContainerArchivePut,
    ) -> Fut<'_, (berth_bus::StreamReader<()>, berth_bus::StreamWriter<bus_schema::stream::ByteChunk>)> {
        Box::pin(async move {
            let ((), rd, wr) = self.bus.request_duplex(&r).await?;
            Ok((rd, wr))
        })
    }
}
