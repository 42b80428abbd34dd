//! The images service's core: the state (content store, image store, registry
//! client, storage's layer store) and the local operations on images (find,
//! inspect, list, history, tag, remove, prune, resolve, images from layers).
//! Registry and archive operations live in `pull`, `push` and `archive`.

use berth_bus::runtime::RuntimeApi as _;
use berth_bus::Bus;
use berth_config::DaemonConfig;
use bus_schema::event::{Action, Event, EventType};
use bus_schema::images::{
    ImageCreateFromLayer, ImageList, ImagePrune, ImageRemove, ImageTag, ResolvedImage,
};
use bus_schema::runtime::ContainersUsingImage;
use bus_schema::{docker, BusError, ErrorKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::content::{short_id, ContentStore};
use crate::error::no_such_image;
use crate::layers::Layers;
use crate::manifest::{History, ImageConfigFile, RootFs};
use crate::reference::{is_hex_prefix, parse_any, AnyRef, Reference};
use crate::registry::{Registry, RegistrySettings};
use crate::store::{Image, ImageMeta, ImageStore, LayerMeta};
use berth_rules::clock::{self, now_rfc3339};
use berth_rules::filters::{labels_match, labels_select};

pub struct Images {
    pub(crate) bus: Bus,
    pub(crate) layers: Layers,
    pub(crate) content: ContentStore,
    pub(crate) store: ImageStore,
    pub(crate) registry: Arc<Registry>,
    pub(crate) root: PathBuf,
    pub(crate) driver: String,
    pub(crate) max_downloads: usize,
    pub(crate) max_uploads: usize,
    /// Serialises reference changes and deletes against each other (rmi, tag,
    /// prune and the last step of a pull or load).
    pub(crate) refs_lock: tokio::sync::Mutex<()>,
    /// Blobs an operation in progress has committed but no image refers to yet;
    /// blob garbage collection leaves them alone.
    pub(crate) inflight: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// Keeps blobs out of garbage collection while it lives.
pub(crate) struct InflightGuard {
    set: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    blobs: Vec<String>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut s = self.set.lock().unwrap();
        for b in &self.blobs {
            if let Some(n) = s.get_mut(b) {
                *n -= 1;
                if *n == 0 {
                    s.remove(b);
                }
            }
        }
    }
}

impl Images {
    /// Open the stores under `<data_root>/images` for the configured storage driver.
    pub fn open(bus: Bus, cfg: &DaemonConfig, data_root: &Path) -> Result<Arc<Images>, BusError> {
        let root = data_root.join("images");
        let content = ContentStore::open(&root)?;
        content.clean_temporary();
        let driver = cfg.storage_driver().to_string();
        let store = ImageStore::open(&root, &driver)?;
        Ok(Arc::new(Images {
            layers: Layers::new(bus.clone()),
            bus,
            content,
            store,
            registry: Registry::new(RegistrySettings::from_config(cfg)),
            root,
            driver,
            max_downloads: cfg.max_concurrent_downloads.unwrap_or(3).max(1) as usize,
            max_uploads: cfg.max_concurrent_uploads.unwrap_or(5).max(1) as usize,
            refs_lock: tokio::sync::Mutex::new(()),
            inflight: Arc::default(),
        }))
    }

    pub(crate) fn hold_blobs(&self, blobs: Vec<String>) -> InflightGuard {
        let mut s = self.inflight.lock().unwrap();
        for b in &blobs {
            *s.entry(b.clone()).or_default() += 1;
        }
        InflightGuard {
            set: self.inflight.clone(),
            blobs,
        }
    }

    pub fn image_count(&self) -> usize {
        self.store.count()
    }

    pub(crate) async fn event(&self, action: Action, id: &str, name: &str) {
        self.bus
            .publish_event(&Event::now(EventType::Image, action, id).attr("name", name))
            .await;
    }

    /// Docker's `GetImage`: by full or short ID, `name[:tag]` or `name@digest`.
    pub fn find(&self, name: &str) -> Result<Arc<Image>, BusError> {
        if let Some(h) = name.strip_prefix("sha256:") {
            if is_hex_prefix(h) {
                return self.by_prefix(h).ok_or_else(|| no_such_image(name));
            }
        }
        match parse_any(name) {
            Ok(AnyRef::Id(id)) => self.store.get(&id).ok_or_else(|| no_such_image(name)),
            Ok(AnyRef::Named(r)) => {
                let full = r.clone().with_default_tag();
                // `name:tag@digest` (what a swarm service's spec holds): the digest
                // wins, as Moby's reference store looks it up
                let key = if full.digest.is_some() { Reference { tag: None, ..full.clone() } } else { full.clone() };
                if let Some(img) = self.store.lookup(&key).and_then(|id| self.store.get(&id)) {
                    return Ok(img);
                }
                if r.is_name_only() && is_hex_prefix(name) {
                    if let Some(img) = self.by_prefix(name) {
                        return Ok(img);
                    }
                }
                Err(no_such_image(&full.familiar_string()))
            }
            Err(e) => {
                if is_hex_prefix(name) {
                    if let Some(img) = self.by_prefix(name) {
                        return Ok(img);
                    }
                }
                Err(BusError::invalid(e.to_string()))
            }
        }
    }

    fn by_prefix(&self, hex: &str) -> Option<Arc<Image>> {
        match self.store.search(hex).as_slice() {
            [one] => self.store.get(one),
            _ => None,
        }
    }

    fn tags_and_digests(&self, id: &str) -> (Vec<String>, Vec<String>) {
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for r in self.store.refs_of(id) {
            if r.digest.is_some() {
                digests.push(r.familiar_string());
            } else {
                tags.push(r.familiar_string());
            }
        }
        (tags, digests)
    }

    pub fn inspect(&self, name: &str) -> Result<bus_schema::images::ImageDetails, BusError> {
        let img = self.find(name)?;
        Ok(bus_schema::images::ImageDetails {
            inspect: self.inspect_image(&img),
            parent: img.meta.parent.clone().unwrap_or_default(),
            docker_version: img.config.docker_version.clone().unwrap_or_default(),
        })
    }

    fn inspect_image(&self, img: &Image) -> docker::ImageInspect {
        let (tags, digests) = self.tags_and_digests(&img.id);
        let c = &img.config;
        docker::ImageInspect {
            id: Some(img.id.clone()),
            repo_tags: Some(tags),
            repo_digests: Some(digests),
            comment: Some(c.comment.clone().unwrap_or_default()),
            created: Some(
                c.created
                    .clone()
                    .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            ),
            author: Some(c.author.clone().unwrap_or_default()),
            config: Some(c.config.clone().unwrap_or_default()),
            architecture: Some(c.architecture.clone()),
            variant: c.variant.clone(),
            os: Some(c.os.clone()),
            os_version: c.os_version.clone(),
            size: Some(img.meta.size()),
            graph_driver: Some(docker::DriverData {
                name: self.driver.clone(),
                data: HashMap::new(),
            }),
            root_fs: Some(docker::ImageInspectRootFs {
                typ: if c.rootfs.typ.is_empty() {
                    "layers".into()
                } else {
                    c.rootfs.typ.clone()
                },
                layers: Some(c.rootfs.diff_ids.clone()),
            }),
            metadata: Some(docker::ImageInspectMetadata {
                last_tag_time: img.meta.last_tag_time.clone(),
            }),
            ..Default::default()
        }
    }

    /// `docker history`: newest first; entries of parent images get their IDs.
    pub fn history(&self, name: &str) -> Result<Vec<docker::ImageHistoryResponseItem>, BusError> {
        let img = self.find(name)?;
        let mut out = Vec::new();
        let mut layer = 0;
        for h in &img.config.history {
            let size = if h.empty_layer {
                0
            } else {
                let s = img
                    .meta
                    .layers
                    .get(layer)
                    .map(|l| l.size as i64)
                    .unwrap_or(0);
                layer += 1;
                s
            };
            out.push(docker::ImageHistoryResponseItem {
                id: "<missing>".into(),
                created: h
                    .created
                    .as_deref()
                    .and_then(crate::store::parse_time)
                    .unwrap_or(0),
                created_by: h.created_by.clone().unwrap_or_default(),
                tags: vec![],
                size,
                comment: h.comment.clone().unwrap_or_default(),
            });
        }
        out.reverse();
        let mut cur = Some(img);
        for item in out.iter_mut() {
            let Some(i) = cur else { break };
            item.id = i.id.clone();
            item.tags = self.tags_and_digests(&i.id).0;
            cur = i.meta.parent.as_deref().and_then(|p| self.store.get(p));
        }
        Ok(out)
    }

    /// `docker images`.
    pub async fn list(&self, req: &ImageList) -> Result<Vec<docker::ImageSummary>, BusError> {
        let f = &req.filters;
        for k in f.keys() {
            if !["reference", "dangling", "label", "before", "since", "until"].contains(&k.as_str())
            {
                return Err(BusError::invalid(format!("invalid filter '{k}'")));
            }
        }
        let dangling = match f.get("dangling").and_then(|v| v.first()) {
            None => None,
            Some(v) => match v.to_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => return Err(BusError::invalid(format!("Invalid filter 'dangling={v}'"))),
            },
        };
        let before = match f.get("before").and_then(|v| v.first()) {
            Some(b) => Some(self.find(b)?.created_unix()),
            None => None,
        };
        let since = match f.get("since").and_then(|v| v.first()) {
            Some(b) => Some(self.find(b)?.created_unix()),
            None => None,
        };
        let until = match f.get("until").and_then(|v| v.first()) {
            Some(u) => Some(clock::parse_until(u, clock::now()).map_err(BusError::invalid)?),
            None => None,
        };
        let patterns = f.get("reference").cloned().unwrap_or_default();
        let labels = f.get("label").cloned().unwrap_or_default();
        let all_images = self.store.all();
        let parents: HashSet<String> = all_images
            .iter()
            .filter_map(|i| i.meta.parent.clone())
            .collect();
        let mut out = Vec::new();
        for img in all_images {
            let (mut tags, mut digests) = self.tags_and_digests(&img.id);
            if !req.all && tags.is_empty() && digests.is_empty() && parents.contains(&img.id) {
                continue; // an intermediate image
            }
            if let Some(d) = dangling {
                if d != tags.is_empty() {
                    continue;
                }
            }
            let created = img.created_unix();
            if before.is_some_and(|b| created >= b)
                || since.is_some_and(|s| created <= s)
                || until.is_some_and(|u| img.created_nanos() > u)
            {
                continue;
            }
            if !labels.is_empty() && !labels_match(&img.labels(), &labels) {
                continue;
            }
            if !patterns.is_empty() {
                let keep = |s: &String| patterns.iter().any(|p| familiar_match(p, s));
                tags.retain(keep);
                digests.retain(keep);
                if tags.is_empty() && digests.is_empty() {
                    continue;
                }
            }
            out.push(docker::ImageSummary {
                id: img.id.clone(),
                parent_id: img.meta.parent.clone().unwrap_or_default(),
                repo_tags: tags,
                repo_digests: digests,
                created,
                size: img.meta.size(),
                shared_size: -1,
                labels: img.labels(),
                containers: -1,
                ..Default::default()
            });
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Images with the number of containers using each (`docker system df`).
    pub async fn df(&self) -> Result<Vec<docker::ImageSummary>, BusError> {
        let mut v = self
            .list(&ImageList {
                all: true,
                ..Default::default()
            })
            .await?;
        for s in v.iter_mut() {
            s.containers = self.containers_using(&s.id).await?.len() as i64;
        }
        Ok(v)
    }

    /// `docker tag`.
    pub async fn tag(&self, req: &ImageTag) -> Result<(), BusError> {
        let img = self.find(&req.source)?;
        let mut r = Reference::parse_normalized(&req.repo)?;
        if r.digest.is_some() {
            return Err(BusError::invalid(
                "refusing to create a tag with a digest reference",
            ));
        }
        if let Some(t) = req.tag.as_deref().filter(|t| !t.is_empty()) {
            r = Reference::parse(&format!("{}:{t}", r.name()))?;
        }
        let r = r.with_default_tag();
        if r.familiar_name() == "scratch" {
            return Err(BusError::invalid("'scratch' is a reserved name"));
        }
        let _g = self.refs_lock.lock().await;
        self.store.set_ref(&r, &img.id)?;
        self.event(Action::Tag, &img.id, &r.familiar_string()).await;
        Ok(())
    }

    /// Container IDs using an image; none when the runtime is not there.
    pub async fn containers_using(&self, id: &str) -> Result<Vec<String>, BusError> {
        match berth_bus::runtime::RuntimeClient::new(self.bus.clone())
            .containers_using_image(ContainersUsingImage {
                image_id: id.to_string(),
            })
            .await
        {
            Ok(v) => Ok(v),
            Err(e) if e.kind == ErrorKind::Unavailable => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// `docker rmi` with Docker's rules (moby `daemon/images/image_delete.go`).
    pub async fn remove(
        &self,
        req: &ImageRemove,
    ) -> Result<Vec<docker::ImageDeleteResponseItem>, BusError> {
        let _g = self.refs_lock.lock().await;
        self.remove_locked(&req.name, req.force, !req.noprune).await
    }

    async fn remove_locked(
        &self,
        name: &str,
        force: bool,
        prune: bool,
    ) -> Result<Vec<docker::ImageDeleteResponseItem>, BusError> {
        let img = self.find(name)?;
        let id = img.id.clone();
        let mut records = Vec::new();
        let mut repo_refs = self.store.refs_of(&id);
        let using = self.containers_using(&id).await?;
        let by_id = id[7..].starts_with(name.trim_start_matches("sha256:"))
            && is_hex_prefix(name.trim_start_matches("sha256:"));
        let mut removed_repo_ref = false;
        if !by_id {
            let parsed = Reference::parse_normalized(name)?.with_default_tag();
            if !force && single_reference(&repo_refs) {
                if let Some(c) = using.first() {
                    return Err(BusError::conflict(format!(
                        "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                        short_id(c),
                        short_id(&id)
                    )));
                }
            }
            self.store.remove_ref(&parsed)?;
            records.push(untagged(&parsed));
            self.event(Action::Untag, &id, &parsed.familiar_string()).await;
            repo_refs = self.store.refs_of(&id);
            if parsed.digest.is_none() {
                let has_tag_in_repo = repo_refs
                    .iter()
                    .any(|r| r.digest.is_none() && r.name() == parsed.name());
                if !has_tag_in_repo {
                    let mut remaining = Vec::new();
                    for r in repo_refs {
                        if r.digest.is_some() && r.name() == parsed.name() {
                            self.store.remove_ref(&r)?;
                            records.push(untagged(&r));
                        } else {
                            remaining.push(r);
                        }
                    }
                    repo_refs = remaining;
                }
            }
            if !repo_refs.is_empty() {
                return Ok(records);
            }
            removed_repo_ref = true;
        } else {
            // By ID: with at most one tag, all in one repository, every reference goes.
            let single = single_repo(&repo_refs)
                && repo_refs.iter().filter(|r| r.digest.is_none()).count() <= 1;
            if !single && !force {
                return Err(BusError::conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    short_id(&id)
                )));
            }
            if single {
                if !self.store.children(&id).is_empty() {
                    return Err(BusError::conflict(format!(
                        "conflict: unable to delete {} (cannot be forced) - image has dependent child images",
                        short_id(&id)
                    )));
                }
                if !force && !using.is_empty() {
                    return Err(BusError::conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                        short_id(&id),
                        short_id(&using[0])
                    )));
                }
                for r in &repo_refs {
                    self.store.remove_ref(r)?;
                    records.push(untagged(r));
                    self.event(Action::Untag, &id, &r.familiar_string()).await;
                }
            }
        }
        self.delete_helper(&id, &mut records, force, prune, removed_repo_ref)
            .await?;
        Ok(records)
    }

    /// Delete an image that has no references left (or force them away), then its
    /// unreferenced parents when `prune`. With `quiet`, a conflict just stops.
    fn delete_helper<'a>(
        &'a self,
        id: &'a str,
        records: &'a mut Vec<docker::ImageDeleteResponseItem>,
        force: bool,
        prune: bool,
        quiet: bool,
    ) -> futures_util::future::BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let children = self.store.children(id);
            let using = self.containers_using(id).await?;
            let refs = self.store.refs_of(id);
            let conflict = if !children.is_empty() {
                Some(format!("conflict: unable to delete {} (cannot be forced) - image has dependent child images", short_id(id)))
            } else if !force && !refs.is_empty() {
                Some(format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in one or more repositories",
                    short_id(id)
                ))
            } else if !force && !using.is_empty() {
                Some(format!(
                    "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                    short_id(id),
                    short_id(&using[0])
                ))
            } else {
                None
            };
            if let Some(c) = conflict {
                return if quiet {
                    Ok(())
                } else {
                    Err(BusError::conflict(c))
                };
            }
            for r in refs {
                self.store.remove_ref(&r)?;
                records.push(untagged(&r));
                self.event(Action::Untag, id, &r.familiar_string()).await;
            }
            let Some(img) = self.store.delete(id)? else {
                return Ok(());
            };
            records.push(docker::ImageDeleteResponseItem {
                untagged: None,
                deleted: Some(id.to_string()),
            });
            if let Some(top) = img.meta.top_chain() {
                for removed in self.layers.release(top).await.unwrap_or_default() {
                    records.push(docker::ImageDeleteResponseItem {
                        untagged: None,
                        deleted: Some(removed),
                    });
                }
            }
            self.gc_blobs();
            self.event(Action::Delete, id, id).await;
            if prune {
                if let Some(parent) = img.meta.parent.as_deref() {
                    if self.store.get(parent).is_some()
                        && self.store.refs_of(parent).is_empty()
                        && self.store.children(parent).is_empty()
                    {
                        self.delete_helper(parent, records, false, true, true)
                            .await?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Remove content-store blobs no image of any driver refers to.
    pub(crate) fn gc_blobs(&self) {
        let mut keep: HashSet<String> = HashSet::new();
        let drivers = std::fs::read_dir(&self.root)
            .map(|rd| rd.flatten().collect::<Vec<_>>())
            .unwrap_or_default();
        for d in drivers {
            let meta_dir = d.path().join("imagedb/metadata/sha256");
            let Ok(rd) = std::fs::read_dir(meta_dir) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(b) = std::fs::read(e.path().join("meta.json")) else {
                    continue;
                };
                let Ok(m) = serde_json::from_slice::<ImageMeta>(&b) else {
                    continue;
                };
                keep.extend(m.manifest);
                keep.extend(
                    m.layers
                        .into_iter()
                        .filter_map(|l| l.blob.map(|b| b.digest)),
                );
            }
        }
        keep.extend(self.inflight.lock().unwrap().keys().cloned());
        for d in self.content.list() {
            if !keep.contains(&d) {
                let _ = self.content.delete(&d);
            }
        }
    }

    /// `docker image prune`.
    pub async fn prune(&self, req: &ImagePrune) -> Result<docker::ImagePruneResponse, BusError> {
        let f = &req.filters;
        for k in f.keys() {
            if !["dangling", "label", "label!", "until"].contains(&k.as_str()) {
                return Err(BusError::invalid(format!("invalid filter '{k}'")));
            }
        }
        let dangling_only = match f.get("dangling").and_then(|v| v.first()) {
            None => true,
            Some(v) => match v.to_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(BusError::invalid(format!("Invalid filter 'dangling={v}'"))),
            },
        };
        let until = berth_rules::filters::prune_until(f).map_err(BusError::invalid)?;
        let labels = f.get("label").cloned().unwrap_or_default();
        let not_labels = f.get("label!").cloned().unwrap_or_default();
        let _g = self.refs_lock.lock().await;
        let mut deleted = Vec::new();
        let mut reclaimed = 0i64;
        let mut candidates = self.store.all();
        // children first, so parents become prunable in the same pass
        candidates.sort_by_key(|i| std::cmp::Reverse(i.config.history.len()));
        for img in candidates {
            if self.store.get(&img.id).is_none() {
                continue;
            }
            let refs = self.store.refs_of(&img.id);
            let tagged = refs.iter().any(|r| r.digest.is_none());
            if dangling_only && tagged {
                continue;
            }
            // Moby keeps what was created after `until`
            if until.is_some_and(|u| img.created_nanos() > u) {
                continue;
            }
            if !labels_select(&img.labels(), &labels, &not_labels) {
                continue;
            }
            if !self.containers_using(&img.id).await?.is_empty()
                || !self.store.children(&img.id).is_empty()
            {
                continue;
            }
            let mut records = Vec::new();
            for r in &refs {
                self.store.remove_ref(r)?;
                records.push(untagged(r));
                self.event(Action::Untag, &img.id, &r.familiar_string()).await;
            }
            match self
                .delete_helper(&img.id, &mut records, false, true, false)
                .await
            {
                Ok(()) => {
                    reclaimed += img.meta.size();
                    deleted.extend(records);
                }
                Err(e) if e.kind == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        self.bus
            .publish_event(
                &Event::now(EventType::Image, Action::Prune, "").attr("reclaimed", reclaimed.to_string()),
            )
            .await;
        Ok(docker::ImagePruneResponse {
            images_deleted: Some(deleted),
            space_reclaimed: Some(reclaimed),
        })
    }

    /// What the runtime and builder need to create a container from an image.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, BusError> {
        let img = self.find(reference)?;
        let name = match parse_any(reference) {
            Ok(AnyRef::Named(r))
                if self.store.lookup(&r.clone().with_default_tag()).as_deref() == Some(&img.id) =>
            {
                r.with_default_tag().to_string()
            }
            _ => img.id.clone(),
        };
        Ok(ResolvedImage {
            id: img.id.clone(),
            name,
            chain_id: img.meta.top_chain().map(str::to_string),
            config: img.config.config.clone().unwrap_or_default(),
            os: img.config.os.clone(),
            architecture: img.config.architecture.clone(),
        })
    }

    /// A new image from a parent and optionally one layer (`docker commit`, build steps).
    pub async fn create_from_layer(&self, mut req: ImageCreateFromLayer) -> Result<String, BusError> {
        // Moby's CommitImage: a layer with no change (the empty tar's digest: a RUN
        // that wrote nothing, a commit of an untouched container) is not added; the
        // step is an `empty_layer` in the history and the layer is let go
        if let Some(l) = req.layer.take_if(|l| l.diff_id == bus_schema::storage::EMPTY_LAYER_DIFF_ID) {
            self.layers.release_quietly(&l.chain_id).await;
        }
        let parent = match req.parent.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Some(self.find(p)?),
            None => None,
        };
        let now = now_rfc3339();
        let (mut history, mut diff_ids, mut layers, arch, os) = match &parent {
            Some(p) => (
                p.config.history.clone(),
                p.config.rootfs.diff_ids.clone(),
                p.meta.layers.clone(),
                p.config.architecture.clone(),
                p.config.os.clone(),
            ),
            None => (
                vec![],
                vec![],
                vec![],
                "amd64".to_string(),
                "linux".to_string(),
            ),
        };
        history.push(History {
            created: Some(now.clone()),
            created_by: Some(req.history.created_by.clone()).filter(|s| !s.is_empty()),
            author: req.history.author.clone(),
            comment: req.history.comment.clone(),
            empty_layer: req.layer.is_none(),
        });
        if let Some(l) = &req.layer {
            diff_ids.push(l.diff_id.clone());
            layers.push(LayerMeta {
                diff_id: l.diff_id.clone(),
                chain_id: l.chain_id.clone(),
                size: l.size,
                blob: None,
            });
        }
        let cfg = ImageConfigFile {
            architecture: arch,
            os,
            created: Some(now),
            author: req.author.clone().filter(|s| !s.is_empty()),
            comment: req.comment.clone().filter(|s| !s.is_empty()),
            docker_version: Some(berth_config::VERSION.to_string()),
            config: Some(req.config.clone()),
            rootfs: RootFs {
                typ: "layers".into(),
                diff_ids,
            },
            history,
            ..Default::default()
        };
        let raw = serde_json::to_vec(&cfg).map_err(|e| BusError::internal(e.to_string()))?;
        // The new image holds one reference on its top layer: the caller's on the
        // new layer, or a new one on the parent's top.
        let top = layers.last().map(|l| l.chain_id.clone());
        if req.layer.is_none() {
            if let Some(t) = &top {
                self.layers.retain(t).await?;
            }
        }
        let meta = ImageMeta {
            parent: if req.record_parent {
                parent.as_ref().map(|p| p.id.clone())
            } else {
                None
            },
            layers,
            ..Default::default()
        };
        let _g = self.refs_lock.lock().await;
        let (id, new) = match self.store.create(&raw, meta) {
            Ok(x) => x,
            Err(e) => {
                if let Some(t) = &top {
                    self.layers.release_quietly(t).await;
                }
                return Err(e.into());
            }
        };
        if !new {
            if let Some(t) = &top {
                self.layers.release_quietly(t).await;
            }
        }
        for t in &req.tags {
            let r = Reference::parse_normalized(t)?.with_default_tag();
            self.store.set_ref(&r, &id)?;
            self.event(Action::Tag, &id, &r.familiar_string()).await;
        }
        Ok(id)
    }

    /// Store a new image and its references; the caller's reference on the top layer
    /// becomes the image's (or is released when the image was already there).
    pub(crate) async fn commit_image(
        &self,
        raw: &[u8],
        meta: ImageMeta,
        refs: &[Reference],
    ) -> Result<(String, bool), BusError> {
        let top = meta.top_chain().map(str::to_string);
        let created = self.store.create(raw, meta.clone());
        let (id, new) = match created {
            Ok(x) => x,
            Err(e) => {
                if let Some(t) = &top {
                    self.layers.release_quietly(t).await;
                }
                return Err(e.into());
            }
        };
        if !new {
            if let Some(t) = &top {
                self.layers.release_quietly(t).await;
            }
            // Keep what this pull learnt about blobs and their sources.
            self.store.update_meta(&id, |m| merge_blob_info(m, &meta))?;
        }
        let mut updated = new;
        for r in refs {
            let prev = self.store.set_ref(r, &id)?;
            if prev.as_deref() != Some(id.as_str()) {
                updated = true;
                if r.tag.is_some() {
                    self.event(Action::Tag, &id, &r.familiar_string()).await;
                }
            }
        }
        Ok((id, updated))
    }
}

fn merge_blob_info(m: &mut ImageMeta, new: &ImageMeta) {
    if m.manifest.is_none() {
        m.manifest = new.manifest.clone();
    }
    for (a, b) in m.layers.iter_mut().zip(new.layers.iter()) {
        match (&mut a.blob, &b.blob) {
            (None, Some(bb)) => a.blob = Some(bb.clone()),
            (Some(ab), Some(bb)) if ab.digest == bb.digest => {
                for s in &bb.sources {
                    if !ab.sources.contains(s) {
                        ab.sources.push(s.clone());
                    }
                }
            }
            _ => {}
        }
    }
}

fn untagged(r: &Reference) -> docker::ImageDeleteResponseItem {
    docker::ImageDeleteResponseItem {
        untagged: Some(r.familiar_string()),
        deleted: None,
    }
}

/// Moby's `isSingleReference`: one repository, at most one tag.
fn single_reference(refs: &[Reference]) -> bool {
    single_repo(refs) && refs.iter().filter(|r| r.digest.is_none()).count() <= 1
}

fn single_repo(refs: &[Reference]) -> bool {
    refs.windows(2).all(|w| w[0].name() == w[1].name())
}

/// Docker's `FamiliarMatch`: the pattern against `name:tag`, then against the name.
pub fn familiar_match(pattern: &str, familiar: &str) -> bool {
    if glob(pattern, familiar) {
        return true;
    }
    let name = match familiar.split_once('@') {
        Some((n, _)) => n,
        None => {
            let last = familiar.rfind('/').map(|i| i + 1).unwrap_or(0);
            match familiar[last..].rfind(':') {
                Some(i) => &familiar[..last + i],
                None => familiar,
            }
        }
    };
    glob(pattern, name)
}

/// Go's `path.Match`: `*` and `?` do not cross '/', `[...]` classes, `\` escapes.
pub fn glob(pattern: &str, s: &str) -> bool {
    fn m(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => {
                let rest = &p[1..];
                for i in 0..=s.len() {
                    if m(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == '/' {
                        break;
                    }
                }
                false
            }
            Some('?') => !s.is_empty() && s[0] != '/' && m(&p[1..], &s[1..]),
            Some('[') => {
                if s.is_empty() || s[0] == '/' {
                    return false;
                }
                let Some(end) = p.iter().position(|&c| c == ']') else {
                    return false;
                };
                let class = &p[1..end];
                let (neg, class) = match class.first() {
                    Some('^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        if class[i] <= s[0] && s[0] <= class[i + 2] {
                            hit = true;
                        }
                        i += 3;
                    } else {
                        if class[i] == s[0] {
                            hit = true;
                        }
                        i += 1;
                    }
                }
                hit != neg && m(&p[end + 1..], &s[1..])
            }
            Some('\\') if p.len() > 1 => !s.is_empty() && s[0] == p[1] && m(&p[2..], &s[1..]),
            Some(c) => !s.is_empty() && s[0] == *c && m(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    m(&p, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_filters_like_docker() {
        assert!(familiar_match("busybox", "busybox:latest"));
        assert!(familiar_match("busybox:latest", "busybox:latest"));
        assert!(!familiar_match("busybox:1", "busybox:latest"));
        assert!(familiar_match("busy*", "busybox:latest"));
        assert!(!familiar_match("*", "a/b:latest"));
        assert!(familiar_match("*/*", "a/b:latest"));
        assert!(familiar_match("127.0.0.1:5000/x", "127.0.0.1:5000/x:1"));
        assert!(familiar_match("b[a-z]sybox", "busybox:1"));
        assert!(familiar_match(
            "busybox",
            &format!("busybox@sha256:{}", "a".repeat(64))
        ));
    }

}
