//! Plugin routes over the bus: each call is one images-service request.

use std::collections::HashMap;
use std::time::Duration;

use berth_bus::images::ImagesApi as _;
use berth_bus::{StreamReader, StreamWriter};
use bus_schema::images::{JsonMessage, RegistryAuth};
use bus_schema::plugin::*;
use bus_schema::stream::ByteChunk;
use bus_schema::BusStream;

use super::BusBackend;
use crate::routes::containers::Fut;
use crate::routes::plugins::Backend;

impl Backend for BusBackend {
    fn plugin_create(&self, r: PluginCreate) -> Fut<'_, (StreamReader<()>, StreamWriter<ByteChunk>)> {
        Box::pin(async move {
            let ((), rd, wr) = self.bus.request_duplex(&r).await?;
            Ok((rd, wr))
        })
    }
    fn plugin_list(&self, filters: HashMap<String, Vec<String>>) -> Fut<'_, Vec<Plugin>> {
        Box::pin(async move { self.bus.request_idempotent(&PluginList { filters }).await })
    }
    fn plugin_inspect(&self, name: String) -> Fut<'_, Plugin> {
        Box::pin(async move { self.bus.request_idempotent(&PluginInspect { name }).await })
    }
    fn plugin_set(&self, name: String, args: Vec<String>) -> Fut<'_, ()> {
        Box::pin(async move { self.bus.request(&PluginSet { name, args }).await })
    }
    fn plugin_enable(&self, name: String, timeout: i64) -> Fut<'_, ()> {
        Box::pin(async move { self.bus.request(&PluginEnable { name, timeout }).await })
    }
    fn plugin_disable(&self, name: String, force: bool) -> Fut<'_, ()> {
        Box::pin(async move { self.bus.request(&PluginDisable { name, force }).await })
    }
    fn plugin_remove(&self, name: String, force: bool) -> Fut<'_, ()> {
        Box::pin(async move { self.bus.with_timeout(Duration::from_secs(120)).request(&PluginRemove { name, force }).await })
    }
    fn plugin_privileges(&self, remote: String, auth: Option<RegistryAuth>) -> Fut<'_, Option<Vec<PluginPrivilege>>> {
        Box::pin(async move { self.images.plugin_privilege_list(PluginPrivilegeList { remote, auth }).await })
    }
    fn plugin_pull(&self, r: PluginPull) -> Fut<'_, (String, BusStream<JsonMessage>)> {
        Box::pin(async move { self.images.plugin_pull(r).await })
    }
    fn plugin_push(&self, r: PluginPush) -> Fut<'_, BusStream<JsonMessage>> {
        Box::pin(async move { Ok(self.images.plugin_push(r).await?.1) })
    }
    fn plugin_upgrade(&self, r: PluginUpgrade) -> Fut<'_, (String, BusStream<JsonMessage>)> {
        Box::pin(async move { self.images.plugin_upgrade(r).await })
    }
}
