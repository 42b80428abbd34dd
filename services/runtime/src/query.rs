//! Read-side requests: inspect, ps with Docker's filters, prune, changes, export,
//! containers using an image, `/info` counts.

use futures_util::StreamExt as _;
use berth_bus::storage::StorageApi as _;
use bus_schema::event::Action;
use std::collections::HashMap;
use std::sync::Arc;

use bus_schema::runtime::{ContainerExport, ContainerList, ContainerPrune};
use bus_schema::storage::{RwLayerChanges, RwLayerExport, RwLayerSize};
use bus_schema::{docker, BusError};

use crate::deps::Events as _;
use crate::engine::Runtime;
use crate::state::{Container, Status};
use berth_rules::clock;
use berth_rules::filters::{labels_match, labels_select};

const FILTERS: &[&str] = &[
    "id", "name", "label", "status", "exited", "ancestor", "network", "volume", "before", "since", "health", "is-task",
    "publish", "expose",
];
const STATUSES: &[&str] = &["created", "restarting", "running", "removing", "paused", "exited", "dead"];

/// Docker matches names with a regular expression; plain names are substrings.
fn name_match(pattern: &str, name: &str) -> bool {
    match regex_lite::Regex::new(pattern) {
        Ok(re) => re.is_match(name) || re.is_match(&format!("/{name}")),
        Err(_) => name.contains(pattern),
    }
}

fn created_secs(c: &Container) -> (i64, u32) {
    clock::parse_rfc3339(&c.created).unwrap_or((0, 0))
}

impl<D: crate::deps::Deps> Runtime<D> {
    pub async fn inspect(self: &Arc<Self>, key: &str, size: bool) -> Result<docker::ContainerInspectResponse, BusError> {
        let e = self.find(key)?;
        let c = e.get();
        let sz = if size { self.sizes(&c.id).await } else { None };
        let mut r = c.inspect(sz);
        if let Some(hc) = r.host_config.as_mut() {
            hc.links = self.links_view(&c);
        }
        // Moby's ExecIDs are the execs that have not ended: an exec leaves the
        // container's list when it exits (its own inspect stays), so `null` once none runs.
        let live: Vec<String> = {
            let execs = self.execs.lock().unwrap();
            c.exec_ids
                .iter()
                .filter(|id| {
                    execs.get(*id).is_some_and(|x| {
                        let st = x.state.lock().unwrap();
                        !(st.started && !st.running)
                    })
                })
                .cloned()
                .collect()
        };
        r.exec_ids = (!live.is_empty()).then_some(live);
        Ok(r)
    }

    async fn sizes(&self, id: &str) -> Option<(i64, i64)> {
        self.storage.rw_layer_size(RwLayerSize { id: id.to_string() }).await.ok().map(|s| (s.rw, s.root_fs))
    }

    pub async fn list(self: &Arc<Self>, r: ContainerList) -> Result<Vec<docker::ContainerSummary>, BusError> {
        for k in r.filters.keys() {
            if !FILTERS.contains(&k.as_str()) {
                return Err(BusError::invalid(format!("invalid filter '{k}'")));
            }
        }
        if let Some(st) = r.filters.get("status") {
            for s in st {
                if !STATUSES.contains(&s.as_str()) {
                    return Err(BusError::invalid(format!("invalid filter 'status={s}'")));
                }
            }
        }
        // managed plugins' containers are not the user's
        let mut all: Vec<Container> = self.all().iter().map(|e| e.get()).filter(|c| !c.plugin).collect();
        all.sort_by_key(|c| std::cmp::Reverse(created_secs(c)));
        let find_time = |key: &str| -> Result<(i64, u32), BusError> {
            let e = self.find(key)?;
            Ok(created_secs(&e.get()))
        };
        let before = match r.filters.get("before").and_then(|v| v.first()) {
            Some(k) => Some(find_time(k)?),
            None => None,
        };
        let since = match r.filters.get("since").and_then(|v| v.first()) {
            Some(k) => Some(find_time(k)?),
            None => None,
        };
        let f = &r.filters;
        let any = |k: &str, pred: &dyn Fn(&str) -> bool| -> bool { f.get(k).is_none_or(|vs| vs.is_empty() || vs.iter().any(|v| pred(v))) };
        let link_names = self.link_names();
        let mut out = Vec::new();
        for c in all {
            let status = c.state.status.as_str();
            // without -a only running ones, unless a status filter asks otherwise
            if !r.all && !f.contains_key("status") && !matches!(c.state.status, Status::Running | Status::Paused | Status::Restarting) && before.is_none() && since.is_none() {
                continue;
            }
            if !any("id", &|v| c.id.starts_with(v)) {
                continue;
            }
            if !any("name", &|v| name_match(v, &c.name)) {
                continue;
            }
            if let Some(l) = f.get("label") {
                if !labels_match(&c.config.labels, l) {
                    continue;
                }
            }
            if !any("status", &|v| v == status) {
                continue;
            }
            if !any("exited", &|v| c.state.status == Status::Exited && v.parse::<i64>().ok() == Some(c.state.exit_code)) {
                continue;
            }
            if !any("ancestor", &|v| {
                let img = c.config.image.clone().unwrap_or_default();
                c.image_id == v
                    || c.image_id.trim_start_matches("sha256:").starts_with(v.trim_start_matches("sha256:"))
                    || img == v
                    || img == format!("{v}:latest")
                    || format!("{img}:latest") == v
            }) {
                continue;
            }
            if !any("network", &|v| {
                c.network_mode() == v || c.endpoints.contains_key(v) || c.networks.iter().any(|(n, ep)| n == v || ep.network_id.as_deref() == Some(v))
            }) {
                continue;
            }
            if !any("volume", &|v| c.mounts.iter().any(|m| m.name == v || m.destination == v)) {
                continue;
            }
            if !any("health", &|v| {
                let h = c.state.health.as_ref().and_then(|h| h.status).map(|s| s.to_string()).unwrap_or_else(|| "none".into());
                h == v
            }) {
                continue;
            }
            if !any("is-task", &|v| v == "false") {
                continue;
            }
            if !any("expose", &|v| {
                let p = if v.contains('/') { v.to_string() } else { format!("{v}/tcp") };
                c.config.exposed_ports.clone().unwrap_or_default().contains(&p)
            }) {
                continue;
            }
            if !any("publish", &|v| {
                let p = if v.contains('/') { v.to_string() } else { format!("{v}/tcp") };
                c.ports.get(&p).is_some_and(|b| b.is_some())
                    || c.ports.values().flatten().flatten().any(|b| b.host_port.as_deref() == Some(v))
            }) {
                continue;
            }
            let t = created_secs(&c);
            if before.is_some_and(|b| t >= b) {
                continue;
            }
            if since.is_some_and(|s| t <= s) {
                continue;
            }
            let size = if r.size { self.sizes(&c.id).await } else { None };
            let image = c.config.image.clone().unwrap_or_else(|| c.image_id.clone());
            let mut sum = c.summary(&image, size);
            // the link names that name it too, all sorted by name as Moby lists them
            if let (Some(names), Some(links)) = (sum.names.as_mut(), link_names.get(&c.id)) {
                names.extend(links.iter().cloned());
                names.sort();
            }
            out.push(sum);
            if let Some(n) = r.limit.filter(|n| *n > 0) {
                if out.len() as i64 >= n {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub async fn prune(self: &Arc<Self>, r: ContainerPrune) -> Result<docker::ContainerPruneResponse, BusError> {
        for k in r.filters.keys() {
            if !["until", "label", "label!"].contains(&k.as_str()) {
                return Err(BusError::invalid(format!("invalid filter '{k}'")));
            }
        }
        let until = berth_rules::filters::prune_until(&r.filters).map_err(BusError::invalid)?;
        let no_labels = Vec::new();
        let label = r.filters.get("label").unwrap_or(&no_labels);
        let not_label = r.filters.get("label!").unwrap_or(&no_labels);
        let mut deleted = Vec::new();
        let mut reclaimed = 0i64;
        for e in self.all() {
            let c = e.get();
            if c.plugin || !matches!(c.state.status, Status::Exited | Status::Created | Status::Dead) {
                continue;
            }
            if !labels_select(&c.config.labels, label, not_label) {
                continue;
            }
            // Moby keeps what was created after `until`
            if until.is_some_and(|u| clock::nanos(created_secs(&c)) > u) {
                continue;
            }
            if let Some((rw, _)) = self.sizes(&c.id).await {
                reclaimed += rw;
            }
            if let Err(err) = self.remove_entry(&e, false).await {
                tracing::warn!(id = %c.id, error = %err, "prune could not remove a container");
                continue;
            }
            deleted.push(c.id.clone());
        }
        if !deleted.is_empty() {
            let ev = bus_schema::event::Event::now(bus_schema::event::EventType::Container, bus_schema::event::Action::Prune, "").attr("reclaimed", reclaimed.to_string());
            self.bus.publish_event(&ev).await;
        }
        Ok(docker::ContainerPruneResponse { containers_deleted: Some(deleted), space_reclaimed: Some(reclaimed) })
    }

    pub async fn changes(self: &Arc<Self>, key: &str) -> Result<Vec<docker::FilesystemChange>, BusError> {
        let e = self.find(key)?;
        let list = self.storage.rw_layer_changes(RwLayerChanges { id: e.id.clone() }).await?;
        Ok(list
            .into_iter()
            .map(|c| docker::FilesystemChange {
                path: c.path,
                kind: match c.kind {
                    1 => docker::ChangeType::_1,
                    2 => docker::ChangeType::_2,
                    _ => docker::ChangeType::_0,
                },
            })
            .collect())
    }

    pub async fn export(self: &Arc<Self>, r: ContainerExport, resp: berth_bus::Answer<ContainerExport>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let ((), mut rd) = self.storage.rw_layer_export(RwLayerExport { id: e.id.clone() }).await?;
        let mut w = resp.accept(()).await?;
        while let Some(item) = rd.next().await {
            match item {
                Ok(c) => w.send(c).await?,
                Err(err) => return w.fail(err).await,
            }
        }
        let c = e.get();
        self.event(&c, Action::Export, &[]).await;
        w.end().await
    }

    pub fn using_image(&self, image_id: &str) -> Vec<String> {
        self.all().iter().map(|e| e.get()).filter(|c| c.image_id == image_id).map(|c| c.id).collect()
    }

    /// This service's part of `docker info`.
    pub fn info(&self) -> docker::SystemInfo {
        let all: Vec<Container> = self.all().iter().map(|e| e.get()).filter(|c| !c.plugin).collect();
        let running = all.iter().filter(|c| c.state.status == Status::Running || c.state.status == Status::Restarting).count() as i64;
        let paused = all.iter().filter(|c| c.state.status == Status::Paused).count() as i64;
        let total = all.len() as i64;
        let v1 = !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let has = |p: &str| std::path::Path::new(p).exists();
        let mem = if v1 { has("/sys/fs/cgroup/memory/memory.limit_in_bytes") } else { true };
        let mut runtimes = HashMap::new();
        for name in crate::validate::RUNTIMES {
            runtimes.insert(name.to_string(), docker::Runtime { path: Some(self.shim_bin.display().to_string()), ..Default::default() });
        }
        docker::SystemInfo {
            containers: Some(total),
            containers_running: Some(running),
            containers_paused: Some(paused),
            containers_stopped: Some(total - running - paused),
            memory_limit: Some(mem),
            swap_limit: Some(if v1 { has("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") } else { true }),
            cpu_cfs_period: Some(true),
            cpu_cfs_quota: Some(true),
            cpu_shares: Some(true),
            cpu_set: Some(true),
            pids_limit: Some(true),
            oom_kill_disable: Some(v1),
            default_runtime: Some(crate::validate::DEFAULT_RUNTIME.into()),
            runtimes: Some(runtimes),
            init_binary: Some("berth-init".into()),
            plugins: Some(docker::PluginsInfo { log: Some(crate::logplugin::info_log_drivers()), ..Default::default() }),
            ..Default::default()
        }
    }
}

