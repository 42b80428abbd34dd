//! The image store of one storage driver, kept as Docker keeps it, under
//! `<root>/images/<driver>/`:
//!
//! * `imagedb/content/sha256/<hex>`: the image config, byte for byte (its digest is
//!   the image ID);
//! * `imagedb/metadata/sha256/<hex>/meta.json`: what berth knows beside the config
//!   (parent, last tag time, each layer's chain ID, size and source blob);
//! * `repositories.json`: tags and digests, Docker's `{"Repositories": {...}}`.
//!
//! Switching `storage-driver` opens another folder, so the other driver's images
//! are hidden until switching back. Every write is atomic (temp, fsync, rename).
//! The store holds one reference on each image's top layer in the storage service;
//! the caller takes and releases those references, the store records them.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_rules::clock::{self, now_rfc3339};
use crate::manifest::ImageConfigFile;
use crate::reference::Reference;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid image config: {0}")]
    BadConfig(String),
}

/// One layer of an image as the store records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: String,
    pub chain_id: String,
    /// Bytes of content (Docker's layer size).
    pub size: u64,
    /// The compressed blob it came from, when pulled (for push and `docker save`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Repositories (`domain/path`) known to hold the blob, for cross-repository mounts.
    #[serde(default)]
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// RFC 3339 time of the last tag change (`Metadata.LastTagTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tag_time: Option<String>,
    #[serde(default)]
    pub layers: Vec<LayerMeta>,
    /// The manifest the image was pulled with (kept in the content store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

impl ImageMeta {
    pub fn top_chain(&self) -> Option<&str> {
        self.layers.last().map(|l| l.chain_id.as_str())
    }
    pub fn size(&self) -> i64 {
        self.layers.iter().map(|l| l.size as i64).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<hex>`.
    pub id: String,
    pub raw: Vec<u8>,
    pub config: ImageConfigFile,
    pub meta: ImageMeta,
}

impl Image {
    pub fn created_unix(&self) -> i64 {
        self.config
            .created
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(0)
    }
    /// `created` in nanoseconds since the epoch (0 when missing), for `until`.
    pub fn created_nanos(&self) -> i128 {
        self.config.created.as_deref().and_then(clock::rfc3339_to_nanos).unwrap_or(0)
    }
    pub fn labels(&self) -> HashMap<String, String> {
        self.config
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
    }
}

/// RFC 3339 to unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    clock::parse_rfc3339(s).map(|t| t.0)
}

#[derive(Default)]
struct Inner {
    images: HashMap<String, Arc<Image>>,
    /// Full reference string (`docker.io/library/busybox:latest`, `...@sha256:..`) -> image ID.
    refs: BTreeMap<String, String>,
}

pub struct ImageStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Serialize, Deserialize, Default)]
struct RepositoriesFile {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

impl ImageStore {
    /// Open (creating) `<images>/<driver>`.
    pub fn open(images_root: &Path, driver: &str) -> Result<ImageStore, StoreError> {
        let dir = images_root.join(driver);
        std::fs::create_dir_all(dir.join("imagedb/content/sha256"))?;
        std::fs::create_dir_all(dir.join("imagedb/metadata/sha256"))?;
        let mut inner = Inner::default();
        for e in std::fs::read_dir(dir.join("imagedb/content/sha256"))?.flatten() {
            let Some(hex) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !crate::reference::is_full_hex(&hex) {
                continue;
            }
            let raw = std::fs::read(e.path())?;
            let id = format!("sha256:{hex}");
            if crate::content::sha256_digest(&raw) != id {
                tracing::warn!(%id, "image config does not match its ID; skipped");
                continue;
            }
            let Ok(config) = serde_json::from_slice::<ImageConfigFile>(&raw) else {
                continue;
            };
            let meta = std::fs::read(
                dir.join("imagedb/metadata/sha256")
                    .join(&hex)
                    .join("meta.json"),
            )
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
            inner.images.insert(
                id.clone(),
                Arc::new(Image {
                    id,
                    raw,
                    config,
                    meta,
                }),
            );
        }
        if let Ok(b) = std::fs::read(dir.join("repositories.json")) {
            let f: RepositoriesFile = serde_json::from_slice(&b).unwrap_or_default();
            for (_, refs) in f.repositories {
                for (r, id) in refs {
                    if let Ok(parsed) = Reference::parse_normalized(&r) {
                        if inner.images.contains_key(&id) {
                            inner.refs.insert(parsed.to_string(), id);
                        }
                    }
                }
            }
        }
        Ok(ImageStore {
            dir,
            inner: Mutex::new(inner),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, id: &str) -> Option<Arc<Image>> {
        self.inner.lock().unwrap().images.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Image>> {
        self.inner
            .lock()
            .unwrap()
            .images
            .values()
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().images.len()
    }

    /// Store an image (config bytes + metadata). Answers its ID and whether it is new;
    /// an existing image keeps its metadata.
    pub fn create(&self, raw: &[u8], meta: ImageMeta) -> Result<(String, bool), StoreError> {
        let config: ImageConfigFile =
            serde_json::from_slice(raw).map_err(|e| StoreError::BadConfig(e.to_string()))?;
        let id = crate::content::sha256_digest(raw);
        let hex = &id[7..];
        let mut g = self.inner.lock().unwrap();
        if g.images.contains_key(&id) {
            return Ok((id, false));
        }
        let mdir = self.dir.join("imagedb/metadata/sha256").join(hex);
        std::fs::create_dir_all(&mdir)?;
        berth_config::paths::write_atomic(
            &mdir.join("meta.json"),
            &serde_json::to_vec(&meta).unwrap_or_default(),
        )?;
        berth_config::paths::write_atomic(&self.dir.join("imagedb/content/sha256").join(hex), raw)?;
        g.images.insert(
            id.clone(),
            Arc::new(Image {
                id: id.clone(),
                raw: raw.to_vec(),
                config,
                meta,
            }),
        );
        Ok((id, true))
    }

    /// Change an image's metadata.
    pub fn update_meta(&self, id: &str, f: impl FnOnce(&mut ImageMeta)) -> Result<(), StoreError> {
        let mut g = self.inner.lock().unwrap();
        let Some(img) = g.images.get(id) else {
            return Ok(());
        };
        let mut new = (**img).clone();
        f(&mut new.meta);
        let mdir = self.dir.join("imagedb/metadata/sha256").join(&id[7..]);
        std::fs::create_dir_all(&mdir)?;
        berth_config::paths::write_atomic(
            &mdir.join("meta.json"),
            &serde_json::to_vec(&new.meta).unwrap_or_default(),
        )?;
        g.images.insert(id.to_string(), Arc::new(new));
        Ok(())
    }

    /// Remove an image and every reference to it.
    pub fn delete(&self, id: &str) -> Result<Option<Arc<Image>>, StoreError> {
        let mut g = self.inner.lock().unwrap();
        let Some(img) = g.images.remove(id) else {
            return Ok(None);
        };
        let before = g.refs.len();
        g.refs.retain(|_, v| v != id);
        if g.refs.len() != before {
            self.save_refs(&g)?;
        }
        let hex = &id[7..];
        let _ = std::fs::remove_file(self.dir.join("imagedb/content/sha256").join(hex));
        let _ = std::fs::remove_dir_all(self.dir.join("imagedb/metadata/sha256").join(hex));
        Ok(Some(img))
    }

    /// The image a tag or digest reference points at.
    pub fn lookup(&self, r: &Reference) -> Option<String> {
        self.inner.lock().unwrap().refs.get(&r.to_string()).cloned()
    }

    /// Point `r` at `id`; answers the image it pointed at before.
    pub fn set_ref(&self, r: &Reference, id: &str) -> Result<Option<String>, StoreError> {
        let mut g = self.inner.lock().unwrap();
        let prev = g.refs.insert(r.to_string(), id.to_string());
        if prev.as_deref() != Some(id) {
            self.save_refs(&g)?;
        }
        drop(g);
        if r.tag.is_some() {
            let now = now_rfc3339();
            self.update_meta(id, |m| m.last_tag_time = Some(now))?;
        }
        Ok(prev)
    }

    /// Remove a reference; answers the image it pointed at.
    pub fn remove_ref(&self, r: &Reference) -> Result<Option<String>, StoreError> {
        let mut g = self.inner.lock().unwrap();
        let prev = g.refs.remove(&r.to_string());
        if prev.is_some() {
            self.save_refs(&g)?;
        }
        Ok(prev)
    }

    /// Every reference to `id` (tags and digests), sorted.
    pub fn refs_of(&self, id: &str) -> Vec<Reference> {
        self.inner
            .lock()
            .unwrap()
            .refs
            .iter()
            .filter(|(_, v)| *v == id)
            .filter_map(|(k, _)| Reference::parse(k).ok())
            .collect()
    }

    pub fn all_refs(&self) -> Vec<(Reference, String)> {
        self.inner
            .lock()
            .unwrap()
            .refs
            .iter()
            .filter_map(|(k, v)| Reference::parse(k).ok().map(|r| (r, v.clone())))
            .collect()
    }

    /// Images whose ID starts with the hex `prefix`.
    pub fn search(&self, prefix: &str) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .images
            .keys()
            .filter(|id| id[7..].starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Images whose recorded parent is `id`.
    pub fn children(&self, id: &str) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .images
            .values()
            .filter(|i| i.meta.parent.as_deref() == Some(id))
            .map(|i| i.id.clone())
            .collect()
    }

    fn save_refs(&self, g: &Inner) -> Result<(), StoreError> {
        let mut f = RepositoriesFile::default();
        for (k, id) in &g.refs {
            if let Ok(r) = Reference::parse(k) {
                f.repositories
                    .entry(r.familiar_name())
                    .or_default()
                    .insert(r.familiar_string(), id.clone());
            }
        }
        berth_config::paths::write_atomic(
            &self.dir.join("repositories.json"),
            &serde_json::to_vec(&f).unwrap_or_default(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: u32) -> Vec<u8> {
        format!(r#"{{"architecture":"amd64","os":"linux","created":"2024-01-0{n}T00:00:00Z","rootfs":{{"type":"layers","diff_ids":[]}}}}"#)
            .into_bytes()
    }

    #[test]
    fn images_and_refs_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = ImageStore::open(d.path(), "overlay2").unwrap();
        let (id, new) = s.create(&cfg(1), ImageMeta::default()).unwrap();
        assert!(new);
        assert!(!s.create(&cfg(1), ImageMeta::default()).unwrap().1);
        let r = Reference::parse_normalized("busybox:latest").unwrap();
        assert_eq!(s.set_ref(&r, &id).unwrap(), None);
        let dg =
            Reference::parse_normalized(&format!("busybox@sha256:{}", "c".repeat(64))).unwrap();
        s.set_ref(&dg, &id).unwrap();
        assert!(s.get(&id).unwrap().meta.last_tag_time.is_some());
        drop(s);

        let s = ImageStore::open(d.path(), "overlay2").unwrap();
        assert_eq!(s.lookup(&r), Some(id.clone()));
        assert_eq!(s.refs_of(&id).len(), 2);
        assert_eq!(s.search(&id[7..12]), vec![id.clone()]);
        assert_eq!(s.get(&id).unwrap().created_unix(), 1704067200);
        let repos: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.path().join("overlay2/repositories.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            repos["Repositories"]["busybox"]["busybox:latest"],
            id.as_str()
        );

        // another driver sees nothing
        let other = ImageStore::open(d.path(), "vfs").unwrap();
        assert_eq!(other.count(), 0);

        s.delete(&id).unwrap();
        assert_eq!(s.lookup(&r), None);
        let s = ImageStore::open(d.path(), "overlay2").unwrap();
        assert_eq!(s.count(), 0);
    }
}
