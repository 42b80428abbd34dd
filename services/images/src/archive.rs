//! `docker save`, `docker load` and `docker import`.
//!
//! Save writes what Moby 25+ writes, readable by every Docker and by skopeo: an
//! OCI layout (`oci-layout`, `index.json`, `blobs/sha256/...`) that also carries
//! the docker-archive files (`manifest.json`, `repositories`), layers as
//! uncompressed tars named by their diff IDs. Load reads that, Moby 20.10's
//! `<id>/layer.tar` archives, skopeo's docker-archive and plain OCI layouts (layers
//! gzip, zstd or uncompressed). Import makes a one-layer image from a root
//! filesystem tarball, with Dockerfile `--change`s applied to its config.

use bus_schema::event::Action;
use bus_schema::images::{ImageImport, ImageLoad, ImageSave, JsonMessage};
use bus_schema::storage::{LayerApplied, LayerApply};
use bus_schema::stream::{ByteChunk, MAX_CHUNK};
use bus_schema::{docker, BusError};
use futures_util::StreamExt;
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::content::{digest_hex, sha256_digest, short_id};
use crate::manifest::{
    self, chain_ids, Descriptor, ImageConfigFile, Index, Manifest, Parsed, Wanted,
};
use crate::progress::{progress, Progress};
use crate::reference::{parse_any, AnyRef, Reference};
use crate::service::Images;
use crate::store::{Image, ImageMeta, LayerMeta};
use berth_rules::clock::now_rfc3339;

/// Where an archive's bytes go (save).
pub trait ByteSink: Send {
    fn send(&mut self, b: Vec<u8>) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// Where an archive's bytes come from (load, import).
pub trait ByteSource: Send {
    fn next(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, BusError>>> + Send;
}

/// A caller's input stream (load, import, plugin create) as a [`ByteSource`].
pub struct BusInput(pub bus_schema::BusStream<ByteChunk>);

impl ByteSource for BusInput {
    async fn next(&mut self) -> Option<Result<Vec<u8>, BusError>> {
        futures_util::StreamExt::next(&mut self.0).await.map(|r| r.map(|c| c.0))
    }
}

/// Collects bytes (tests).
#[derive(Default)]
pub struct VecSink(pub Vec<u8>);
impl ByteSink for VecSink {
    async fn send(&mut self, b: Vec<u8>) -> Result<(), BusError> {
        self.0.extend(b);
        Ok(())
    }
}

/// Bytes from memory (tests), in chunks.
pub struct VecSource(pub std::collections::VecDeque<Vec<u8>>);
impl VecSource {
    pub fn new(b: &[u8]) -> VecSource {
        VecSource(b.chunks(MAX_CHUNK).map(|c| c.to_vec()).collect())
    }
}
impl ByteSource for VecSource {
    async fn next(&mut self) -> Option<Result<Vec<u8>, BusError>> {
        self.0.pop_front().map(Ok)
    }
}

/// One tar entry header (ustar/GNU, root-owned).
fn tar_header(path: &str, size: u64, dir: bool) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    let _ = h.set_path(path);
    h.set_size(if dir { 0 } else { size });
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn pad(n: u64) -> Vec<u8> {
    vec![0u8; ((512 - n % 512) % 512) as usize]
}

struct SaveImage {
    img: Arc<Image>,
    tags: Vec<Reference>,
    name: String,
}

impl Images {
    fn tmp_dir(&self) -> Result<tempfile::TempDir, BusError> {
        let base = self.root.join("tmp");
        std::fs::create_dir_all(&base)?;
        Ok(tempfile::Builder::new()
            .prefix("archive-")
            .tempdir_in(base)?)
    }

    /// `docker save`. Unknown names fail before any byte is written.
    pub async fn save<S: ByteSink>(&self, req: &ImageSave, out: &mut S) -> Result<(), BusError> {
        let mut images: Vec<SaveImage> = Vec::new();
        for name in &req.names {
            let img = self.find(name)?;
            let tags: Vec<Reference> = match parse_any(name) {
                Ok(AnyRef::Named(r))
                    if r.digest.is_none()
                        && self.store.lookup(&r.clone().with_default_tag()).as_deref()
                            == Some(&img.id) =>
                {
                    if r.tag.is_some() {
                        vec![r]
                    } else {
                        // a name alone saves every tag of the repository
                        self.store
                            .refs_of(&img.id)
                            .into_iter()
                            .filter(|x| x.tag.is_some() && x.name() == r.name())
                            .collect()
                    }
                }
                _ => vec![],
            };
            match images.iter_mut().find(|s| s.img.id == img.id) {
                Some(s) => s.tags.extend(tags),
                None => images.push(SaveImage {
                    img,
                    tags,
                    name: name.clone(),
                }),
            }
        }
        let tmp = self.tmp_dir()?;
        // Export every distinct layer to a file first: tar headers need sizes.
        let mut layer_files: HashMap<String, (PathBuf, u64)> = HashMap::new();
        for s in &images {
            for l in &s.img.meta.layers {
                if layer_files.contains_key(&l.diff_id) {
                    continue;
                }
                let p = tmp.path().join(digest_hex(&l.diff_id)?);
                let n = self.export_layer(&l.chain_id, &l.diff_id, &p).await?;
                layer_files.insert(l.diff_id.clone(), (p, n));
            }
        }
        // Small files.
        let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut manifest_json = Vec::new();
        let mut index = Index {
            schema_version: 2,
            media_type: Some(manifest::OCI_INDEX.into()),
            manifests: vec![],
            annotations: None,
        };
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for s in &images {
            let cfg_digest = sha256_digest(&s.img.raw);
            small.insert(
                format!("blobs/sha256/{}", digest_hex(&cfg_digest)?),
                s.img.raw.clone(),
            );
            let layers: Vec<Descriptor> = s
                .img
                .meta
                .layers
                .iter()
                .map(|l| Descriptor {
                    media_type: manifest::OCI_LAYER.into(),
                    digest: l.diff_id.clone(),
                    size: layer_files[&l.diff_id].1 as i64,
                    ..Default::default()
                })
                .collect();
            let m = Manifest {
                schema_version: 2,
                media_type: Some(manifest::OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: manifest::OCI_CONFIG.into(),
                    digest: cfg_digest.clone(),
                    size: s.img.raw.len() as i64,
                    ..Default::default()
                },
                layers,
                annotations: None,
            };
            let mraw = serde_json::to_vec(&m).map_err(|e| BusError::internal(e.to_string()))?;
            let mdigest = sha256_digest(&mraw);
            small.insert(
                format!("blobs/sha256/{}", digest_hex(&mdigest)?),
                mraw.clone(),
            );
            let desc = |ann: Option<HashMap<String, String>>| Descriptor {
                media_type: manifest::OCI_MANIFEST.into(),
                digest: mdigest.clone(),
                size: mraw.len() as i64,
                annotations: ann,
                ..Default::default()
            };
            if s.tags.is_empty() {
                index.manifests.push(desc(None));
            }
            for t in &s.tags {
                index.manifests.push(desc(Some(HashMap::from([
                    ("io.containerd.image.name".to_string(), t.to_string()),
                    (
                        "org.opencontainers.image.ref.name".to_string(),
                        t.tag.clone().unwrap_or_default(),
                    ),
                ]))));
                if let Some(top) = s.img.meta.layers.last() {
                    repositories.entry(t.familiar_name()).or_default().insert(
                        t.tag.clone().unwrap_or_default(),
                        digest_hex(&top.diff_id)?.to_string(),
                    );
                }
            }
            manifest_json.push(serde_json::json!({
                "Config": format!("blobs/sha256/{}", digest_hex(&cfg_digest)?),
                "RepoTags": s.tags.iter().map(|t| t.familiar_string()).collect::<Vec<_>>(),
                "Layers": s.img.meta.layers.iter().map(|l| format!("blobs/sha256/{}", &l.diff_id[7..])).collect::<Vec<_>>(),
            }));
        }
        // Write the tar.
        out.send(
            [
                tar_header("blobs/", 0, true),
                tar_header("blobs/sha256/", 0, true),
            ]
            .concat(),
        )
        .await?;
        let mut written: Vec<&String> = Vec::new();
        for s in &images {
            for l in &s.img.meta.layers {
                if written.contains(&&l.diff_id) {
                    continue;
                }
                written.push(&l.diff_id);
                let (p, n) = &layer_files[&l.diff_id];
                out.send(tar_header(
                    &format!("blobs/sha256/{}", &l.diff_id[7..]),
                    *n,
                    false,
                ))
                .await?;
                let mut f = tokio::fs::File::open(p).await?;
                loop {
                    let mut buf = vec![0u8; MAX_CHUNK];
                    let k = f.read(&mut buf).await?;
                    if k == 0 {
                        break;
                    }
                    buf.truncate(k);
                    out.send(buf).await?;
                }
                out.send(pad(*n)).await?;
            }
        }
        small.insert(
            "index.json".into(),
            serde_json::to_vec(&index).map_err(|e| BusError::internal(e.to_string()))?,
        );
        small.insert(
            "manifest.json".into(),
            serde_json::to_vec(&manifest_json).map_err(|e| BusError::internal(e.to_string()))?,
        );
        small.insert(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        if !repositories.is_empty() {
            small.insert(
                "repositories".into(),
                serde_json::to_vec(&repositories).map_err(|e| BusError::internal(e.to_string()))?,
            );
        }
        for (path, data) in small {
            let mut b = tar_header(&path, data.len() as u64, false);
            let n = data.len() as u64;
            b.extend(data);
            b.extend(pad(n));
            out.send(b).await?;
        }
        out.send(vec![0u8; 1024]).await?;
        for s in &images {
            self.event(Action::Save, &s.img.id, &s.name).await;
        }
        Ok(())
    }

    /// Export one layer's diff to `path`, checking it hashes to `diff_id`.
    async fn export_layer(
        &self,
        chain_id: &str,
        diff_id: &str,
        path: &Path,
    ) -> Result<u64, BusError> {
        let mut rd = self.layers.export(chain_id).await?;
        let mut f = tokio::fs::File::create(path).await?;
        let mut h = sha2::Sha256::new();
        let mut n = 0u64;
        while let Some(c) = rd.next().await {
            let c = c?;
            h.update(&c.0);
            n += c.0.len() as u64;
            f.write_all(&c.0).await?;
        }
        f.flush().await?;
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != diff_id {
            return Err(BusError::internal(format!(
                "layer {chain_id} exported as {got}, expected {diff_id}"
            )));
        }
        Ok(n)
    }

    /// Unpack an archive from `input` into a temp dir (tar's unpack refuses paths
    /// that leave it).
    async fn receive_archive<I: ByteSource>(
        &self,
        input: &mut I,
    ) -> Result<tempfile::TempDir, BusError> {
        let tmp = self.tmp_dir()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
        let dest = tmp.path().join("x");
        let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }));
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let unpack = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dest)?;
            let mut ar = tar::Archive::new(reader);
            ar.set_preserve_permissions(false);
            ar.set_overwrite(true);
            ar.unpack(&dest)
        });
        let mut total = 0u64;
        let mut err = None;
        while let Some(c) = input.next().await {
            match c {
                Ok(b) => {
                    total += b.len() as u64;
                    if tx.send(Ok(bytes::Bytes::from(b))).await.is_err() {
                        break; // the unpacker stopped: its error says why
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.message.clone()))).await;
                    err = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let res = unpack
            .await
            .map_err(|e| BusError::internal(e.to_string()))?;
        if let Some(e) = err {
            return Err(e);
        }
        if total == 0 {
            return Err(BusError::invalid("unexpected EOF"));
        }
        res.map_err(|e| BusError::invalid(format!("failed to read the archive: {e}")))?;
        Ok(tmp)
    }

    /// `docker load`.
    pub async fn load<I: ByteSource, P: Progress>(
        &self,
        req: &ImageLoad,
        input: &mut I,
        out: &mut P,
    ) -> Result<(), BusError> {
        let tmp = self.receive_archive(input).await?;
        let dir = tmp.path().join("x");
        let entries = if dir.join("manifest.json").is_file() {
            read_docker_archive(&dir)?
        } else if dir.join("index.json").is_file() {
            read_oci_layout(&dir)?
        } else {
            return Err(BusError::invalid(
                "open manifest.json: no such file or directory (not a docker-archive or OCI layout)",
            ));
        };
        for e in entries {
            let config: ImageConfigFile = serde_json::from_slice(&e.config)
                .map_err(|x| BusError::invalid(format!("invalid image config: {x}")))?;
            if config.rootfs.diff_ids.len() != e.layers.len() {
                return Err(BusError::invalid(format!(
                    "invalid manifest, layers length mismatch: expected {}, got {}",
                    config.rootfs.diff_ids.len(),
                    e.layers.len()
                )));
            }
            let chains = chain_ids(&config.rootfs.diff_ids);
            let mut held: Vec<LayerApplied> = Vec::new();
            let mut failed = None;
            for (i, path) in e.layers.iter().enumerate() {
                let parent = if i == 0 {
                    None
                } else {
                    Some(chains[i - 1].clone())
                };
                match self
                    .load_layer(
                        path,
                        parent,
                        &config.rootfs.diff_ids[i],
                        &chains[i],
                        req.quiet,
                        out,
                    )
                    .await
                {
                    Ok(a) => held.push(a),
                    Err(x) => {
                        failed = Some(x);
                        break;
                    }
                }
            }
            if let Some(x) = failed {
                for a in held.iter().rev() {
                    self.layers.release_quietly(&a.chain_id).await;
                }
                return Err(x);
            }
            let n = held.len();
            for a in held.iter().take(n.saturating_sub(1)) {
                self.layers.release_quietly(&a.chain_id).await;
            }
            let meta = ImageMeta {
                layers: held
                    .iter()
                    .map(|a| LayerMeta {
                        diff_id: a.diff_id.clone(),
                        chain_id: a.chain_id.clone(),
                        size: a.size,
                        blob: None,
                    })
                    .collect(),
                ..Default::default()
            };
            let id = sha256_digest(&e.config);
            let _g = self.refs_lock.lock().await;
            // Moby says when a tag moves away from another image.
            let mut renamed = Vec::new();
            for t in &e.tags {
                if let Some(old) = self.store.lookup(t) {
                    if old != id {
                        renamed.push(format!(
                            "The image {} already exists, renaming the old one with ID {old} to empty string\n",
                            t.familiar_string()
                        ));
                    }
                }
            }
            self.commit_image(&e.config, meta, &e.tags).await?;
            drop(_g);
            for m in renamed {
                out.send(JsonMessage::stream(m)).await?;
            }
            if e.tags.is_empty() {
                out.send(JsonMessage::stream(format!("Loaded image ID: {id}\n")))
                    .await?;
            }
            for t in &e.tags {
                out.send(JsonMessage::stream(format!(
                    "Loaded image: {}\n",
                    t.familiar_string()
                )))
                .await?;
            }
            self.event(Action::Load, &id, &id).await;
        }
        Ok(())
    }

    async fn load_layer<P: Progress>(
        &self,
        path: &Path,
        parent: Option<String>,
        diff_id: &str,
        chain: &str,
        quiet: bool,
        out: &mut P,
    ) -> Result<LayerApplied, BusError> {
        if self.layers.stat(chain).await?.is_some() {
            let i = self.layers.retain(chain).await?;
            return Ok(LayerApplied {
                chain_id: i.chain_id,
                diff_id: i.diff_id,
                size: i.size,
            });
        }
        let mut f = tokio::fs::File::open(path).await?;
        let total = f.metadata().await?.len();
        let mut head = [0u8; 4];
        let k = f.read(&mut head).await?;
        let media = manifest::sniff_layer_type(&head[..k]);
        drop(f);
        let mut f = tokio::fs::File::open(path).await?;
        let (rd, mut wr) = self
            .layers
            .apply(LayerApply {
                parent,
                media_type: media.into(),
                compressed_digest: None,
                diff_id: Some(diff_id.to_string()),
            })
            .await?;
        let sid = short_id(diff_id);
        let mut sent = 0u64;
        let mut last = 0u64;
        let res: Result<(), BusError> = async {
            loop {
                let mut buf = vec![0u8; MAX_CHUNK];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                sent += n as u64;
                wr.send(ByteChunk(buf)).await?;
                if !quiet && (sent - last >= (total / 50).max(512 * 1024) || sent == total) {
                    last = sent;
                    out.send(progress("Loading layer", &sid, sent, total))
                        .await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            let _ = wr.fail(e.clone()).await;
            return Err(e);
        }
        wr.end().await?;
        let a = crate::layers::applied(rd).await?;
        if a.chain_id != chain {
            self.layers.release_quietly(&a.chain_id).await;
            return Err(BusError::invalid(format!(
                "layer {} has chain ID {}, the image expects {chain}",
                a.diff_id, a.chain_id
            )));
        }
        Ok(a)
    }

    /// `docker import`.
    pub async fn import<I: ByteSource, P: Progress>(
        &self,
        req: &ImageImport,
        input: &mut I,
        out: &mut P,
    ) -> Result<(), BusError> {
        let tag_ref = match req.repo.as_deref().filter(|r| !r.is_empty()) {
            Some(repo) => {
                let mut r = Reference::parse_normalized(repo)?;
                if let Some(t) = req.tag.as_deref().filter(|t| !t.is_empty()) {
                    r = Reference::parse(&format!("{}:{t}", r.name()))?;
                }
                Some(r.with_default_tag())
            }
            None => None,
        };
        let platform = match req.platform.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Wanted::parse(p).map_err(BusError::invalid)?,
            None => Wanted::host(),
        };
        let mut config = docker::ImageConfig::default();
        apply_changes(&mut config, &req.changes)?;

        // The layer: from the input stream or a URL.
        let mut url_body = None;
        if req.source != "-" && !req.source.is_empty() {
            let u = reqwest::Url::parse(&req.source)
                .map_err(|e| BusError::invalid(format!("invalid URL {}: {e}", req.source)))?;
            let resp = self
                .registry
                .http()
                .get(u.clone())
                .send()
                .await
                .map_err(|e| BusError::internal(format!("Get \"{u}\": {e}")))?;
            if !resp.status().is_success() {
                return Err(BusError::internal(format!(
                    "Get \"{u}\": {}",
                    resp.status()
                )));
            }
            url_body = Some(resp);
        }
        let mut src = ImportSource {
            url: url_body,
            input,
        };
        let first = match src.next().await {
            Some(r) => r?,
            None => return Err(BusError::invalid("unexpected EOF")),
        };
        let media = manifest::sniff_layer_type(&first);
        let (rd, mut wr) = self
            .layers
            .apply(LayerApply {
                parent: None,
                media_type: media.into(),
                compressed_digest: None,
                diff_id: None,
            })
            .await?;
        let res: Result<(), BusError> = async {
            for c in first.chunks(MAX_CHUNK) {
                wr.send(ByteChunk(c.to_vec())).await?;
            }
            while let Some(c) = src.next().await {
                let c = c?;
                for part in c.chunks(MAX_CHUNK) {
                    wr.send(ByteChunk(part.to_vec())).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            let _ = wr.fail(e.clone()).await;
            return Err(e);
        }
        wr.end().await?;
        let a = crate::layers::applied(rd).await?;
        let now = now_rfc3339();
        let msg = req
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("Imported from {}", req.source));
        let cfg = ImageConfigFile {
            architecture: platform.arch.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            created: Some(now.clone()),
            comment: Some(msg.clone()),
            docker_version: Some(berth_config::VERSION.to_string()),
            config: Some(config),
            rootfs: manifest::RootFs {
                typ: "layers".into(),
                diff_ids: vec![a.diff_id.clone()],
            },
            history: vec![manifest::History {
                created: Some(now),
                comment: Some(msg),
                ..Default::default()
            }],
            ..Default::default()
        };
        let raw = serde_json::to_vec(&cfg).map_err(|e| BusError::internal(e.to_string()))?;
        let meta = ImageMeta {
            layers: vec![LayerMeta {
                diff_id: a.diff_id.clone(),
                chain_id: a.chain_id.clone(),
                size: a.size,
                blob: None,
            }],
            ..Default::default()
        };
        let refs: Vec<Reference> = tag_ref.into_iter().collect();
        let _g = self.refs_lock.lock().await;
        let (id, _) = self.commit_image(&raw, meta, &refs).await?;
        drop(_g);
        out.send(JsonMessage::status(id.clone())).await?;
        self.event(Action::Import, &id, &id).await;
        Ok(())
    }
}

/// Import bytes: a URL's body or the request's input.
struct ImportSource<'a, I> {
    url: Option<reqwest::Response>,
    input: &'a mut I,
}

impl<I: ByteSource> ImportSource<'_, I> {
    async fn next(&mut self) -> Option<Result<Vec<u8>, BusError>> {
        match self.url.as_mut() {
            Some(resp) => match resp.chunk().await {
                Ok(Some(c)) => Some(Ok(c.to_vec())),
                Ok(None) => None,
                Err(e) => Some(Err(BusError::internal(e.to_string()))),
            },
            None => self.input.next().await,
        }
    }
}

/// One image found in an archive.
struct ArchiveImage {
    config: Vec<u8>,
    layers: Vec<PathBuf>,
    tags: Vec<Reference>,
}

fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf, BusError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(BusError::invalid(format!("invalid path in archive: {rel}")));
    }
    // an entry may be a symlink the archive carries: it is followed inside the
    // unpacked archive only (the kernel resolves it there), never to a host file
    let root = berth_fsutil::InRoot::open(dir)?;
    let fd = root
        .resolve(rel)
        .map_err(|e| BusError::invalid(format!("invalid path in archive: {rel}: {e}")))?;
    let real = berth_fsutil::at::fd_path(std::os::fd::AsFd::as_fd(&fd))?;
    // the unpacked archive is this service's private directory: its path is stable
    Ok(PathBuf::from(real))
}

fn read_docker_archive(dir: &Path) -> Result<Vec<ArchiveImage>, BusError> {
    let m: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)
            .map_err(|e| BusError::invalid(format!("invalid manifest.json: {e}")))?;
    let mut out = Vec::new();
    for e in m {
        let cfg_path = e
            .get("Config")
            .and_then(|c| c.as_str())
            .ok_or_else(|| BusError::invalid("manifest.json entry without Config"))?;
        let config = std::fs::read(safe_join(dir, cfg_path)?)?;
        let layers = e
            .get("Layers")
            .and_then(|l| l.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(|x| safe_join(dir, x))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let mut tags = Vec::new();
        for t in e
            .get("RepoTags")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(s) = t.as_str() {
                tags.push(Reference::parse_normalized(s)?.with_default_tag());
            }
        }
        out.push(ArchiveImage {
            config,
            layers,
            tags,
        });
    }
    Ok(out)
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, BusError> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| BusError::invalid(format!("invalid digest {digest}")))?;
    if !alg.chars().all(|c| c.is_ascii_alphanumeric())
        || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(BusError::invalid(format!("invalid digest {digest}")));
    }
    Ok(dir.join("blobs").join(alg).join(hex))
}

fn read_oci_layout(dir: &Path) -> Result<Vec<ArchiveImage>, BusError> {
    let idx: Index = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)
        .map_err(|e| BusError::invalid(format!("invalid index.json: {e}")))?;
    let mut by_manifest: Vec<(String, ArchiveImage)> = Vec::new();
    for d in &idx.manifests {
        let name = d.annotations.as_ref().and_then(|a| {
            a.get("io.containerd.image.name").cloned().or_else(|| {
                a.get("org.opencontainers.image.ref.name")
                    .filter(|n| n.contains('/') || n.contains(':'))
                    .cloned()
            })
        });
        let body = std::fs::read(blob_path(dir, &d.digest)?)?;
        let m = match manifest::parse(&d.media_type, &body)
            .map_err(|e| BusError::invalid(e.to_string()))?
        {
            Parsed::Manifest(m) => m,
            Parsed::Index(i) => {
                let sel = manifest::select(&i, &Wanted::host())
                    .or(i.manifests.first())
                    .ok_or_else(|| BusError::invalid("empty image index"))?;
                let b = std::fs::read(blob_path(dir, &sel.digest)?)?;
                match manifest::parse(&sel.media_type, &b)
                    .map_err(|e| BusError::invalid(e.to_string()))?
                {
                    Parsed::Manifest(m) => m,
                    Parsed::Index(_) => {
                        return Err(BusError::invalid("nested image indexes are not supported"))
                    }
                }
            }
        };
        let tag = match name {
            Some(n) => Some(Reference::parse_normalized(&n)?.with_default_tag()),
            None => None,
        };
        if let Some(e) = by_manifest.iter_mut().find(|(k, _)| *k == d.digest) {
            e.1.tags.extend(tag);
            continue;
        }
        let config = std::fs::read(blob_path(dir, &m.config.digest)?)?;
        let layers = m
            .layers
            .iter()
            .map(|l| blob_path(dir, &l.digest))
            .collect::<Result<Vec<_>, _>>()?;
        by_manifest.push((
            d.digest.clone(),
            ArchiveImage {
                config,
                layers,
                tags: tag.into_iter().collect(),
            },
        ));
    }
    Ok(by_manifest.into_iter().map(|(_, e)| e).collect())
}

/// Apply Dockerfile instructions (`docker import -c`, `docker commit -c`) to a config.
pub fn apply_changes(c: &mut docker::ImageConfig, changes: &[String]) -> Result<(), BusError> {
    for ch in changes {
        let ch = ch.trim();
        if ch.is_empty() {
            continue;
        }
        let (instr, rest) = ch.split_once(char::is_whitespace).unwrap_or((ch, ""));
        let rest = rest.trim();
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => c.cmd = Some(command_form(rest)?),
            "ENTRYPOINT" => c.entrypoint = Some(command_form(rest)?),
            "ENV" => {
                for (k, v) in key_values(rest, true)? {
                    let env = c.env.get_or_insert_with(Vec::new);
                    env.retain(|e| e.split('=').next() != Some(k.as_str()));
                    env.push(format!("{k}={v}"));
                }
            }
            "LABEL" => {
                for (k, v) in key_values(rest, false)? {
                    c.labels.get_or_insert_with(HashMap::new).insert(k, v);
                }
            }
            "EXPOSE" => {
                for p in words(rest)? {
                    let p = if p.contains('/') {
                        p
                    } else {
                        format!("{p}/tcp")
                    };
                    let ports = c.exposed_ports.get_or_insert_with(Vec::new);
                    if !ports.contains(&p) {
                        ports.push(p);
                    }
                }
            }
            "VOLUME" => {
                let v = if rest.starts_with('[') {
                    json_array(rest)?
                } else {
                    words(rest)?
                };
                for p in v {
                    let vols = c.volumes.get_or_insert_with(Vec::new);
                    if !vols.contains(&p) {
                        vols.push(p);
                    }
                }
            }
            "USER" => c.user = Some(rest.to_string()),
            "WORKDIR" => c.working_dir = Some(rest.to_string()),
            "STOPSIGNAL" => c.stop_signal = Some(rest.to_string()),
            "ONBUILD" => c
                .on_build
                .get_or_insert_with(Vec::new)
                .push(rest.to_string()),
            "SHELL" => c.shell = Some(json_array(rest)?),
            "HEALTHCHECK" => c.healthcheck = Some(healthcheck(rest)?),
            other => {
                return Err(BusError::invalid(format!(
                    "{other} is not a valid change command"
                )))
            }
        }
    }
    Ok(())
}

fn json_array(s: &str) -> Result<Vec<String>, BusError> {
    serde_json::from_str(s).map_err(|_| BusError::invalid(format!("invalid JSON array: {s}")))
}

/// Exec form (`["a","b"]`) or shell form (`/bin/sh -c "..."`).
fn command_form(s: &str) -> Result<Vec<String>, BusError> {
    if s.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(s) {
            return Ok(v);
        }
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), s.to_string()])
}

/// Shell-like words: quotes and backslash escapes.
fn words(s: &str) -> Result<Vec<String>, BusError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = s.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(ch) = chars.next() {
        match (quote, ch) {
            (None, c) if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            (None, '"') | (None, '\'') => {
                quote = Some(ch);
                have = true;
            }
            (Some(q), c) if c == q => quote = None,
            (q, '\\') if q != Some('\'') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    have = true;
                }
            }
            (_, c) => {
                cur.push(c);
                have = true;
            }
        }
    }
    if quote.is_some() {
        return Err(BusError::invalid(format!(
            "unexpected end of statement while looking for matching quote: {s}"
        )));
    }
    if have {
        out.push(cur);
    }
    Ok(out)
}

/// `K=V K2="v 2"` or the legacy `K V W` (ENV only).
fn key_values(s: &str, legacy: bool) -> Result<Vec<(String, String)>, BusError> {
    let ws = words(s)?;
    if ws.is_empty() {
        return Err(BusError::invalid("requires at least one argument"));
    }
    if !ws[0].contains('=') {
        if legacy {
            let (k, v) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
            return Ok(vec![(k.to_string(), v.trim().to_string())]);
        }
        return Err(BusError::invalid(format!(
            "LABEL names can not be blank or must be key=value: {s}"
        )));
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(BusError::invalid(format!(
                "Syntax error - can't find = in \"{w}\". Must be of the form: name=value"
            ))),
        })
        .collect()
}

fn healthcheck(s: &str) -> Result<docker::HealthConfig, BusError> {
    let mut h = docker::HealthConfig::default();
    if s.trim().eq_ignore_ascii_case("NONE") {
        h.test = Some(vec!["NONE".into()]);
        return Ok(h);
    }
    let mut rest = s.trim();
    while let Some(opt) = rest.strip_prefix("--") {
        let (kv, r) = opt.split_once(char::is_whitespace).unwrap_or((opt, ""));
        rest = r.trim_start();
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| BusError::invalid(format!("invalid HEALTHCHECK option --{kv}")))?;
        match k {
            "interval" => h.interval = Some(go_duration(v)?),
            "timeout" => h.timeout = Some(go_duration(v)?),
            "start-period" => h.start_period = Some(go_duration(v)?),
            "start-interval" => h.start_interval = Some(go_duration(v)?),
            "retries" => {
                h.retries = Some(
                    v.parse()
                        .map_err(|_| BusError::invalid(format!("invalid retries {v}")))?,
                )
            }
            _ => return Err(BusError::invalid(format!("unknown flag: --{k}"))),
        }
    }
    let (kw, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if !kw.eq_ignore_ascii_case("CMD") {
        return Err(BusError::invalid(format!(
            "Unknown type \"{kw}\" in HEALTHCHECK (try CMD)"
        )));
    }
    let cmd = cmd.trim();
    h.test = Some(if cmd.starts_with('[') {
        let mut v = vec!["CMD".to_string()];
        v.extend(json_array(cmd)?);
        v
    } else {
        vec!["CMD-SHELL".into(), cmd.to_string()]
    });
    Ok(h)
}

/// Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds.
fn go_duration(s: &str) -> Result<i64, BusError> {
    berth_rules::clock::parse_duration(s).map_err(BusError::invalid)
}

/// The config Moby's `docker import` records, for tests and `docker commit -c`.
pub fn changes_config(changes: &[String]) -> Result<docker::ImageConfig, BusError> {
    let mut c = docker::ImageConfig::default();
    apply_changes(&mut c, changes)?;
    Ok(c)
}

/// Stream a whole in-memory tar (helper for callers that build small archives).
pub async fn send_all<S: ByteSink>(data: &[u8], out: &mut S) -> Result<(), BusError> {
    for c in data.chunks(MAX_CHUNK) {
        out.send(c.to_vec()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_like_dockerfile() {
        let c = changes_config(&[
            r#"CMD ["sh"]"#.into(),
            "ENV PATH=/bin:/usr/bin A=\"b c\"".into(),
            "ENV LEGACY some value".into(),
            "LABEL a=1 b=\"two words\"".into(),
            "EXPOSE 80 53/udp".into(),
            "VOLUME /data /logs".into(),
            "WORKDIR /srv".into(),
            "USER nobody".into(),
            "ENTRYPOINT echo hi".into(),
            "HEALTHCHECK --interval=5s --retries=2 CMD true".into(),
        ])
        .unwrap();
        assert_eq!(c.cmd.unwrap(), vec!["sh"]);
        assert_eq!(
            c.env.unwrap(),
            vec!["PATH=/bin:/usr/bin", "A=b c", "LEGACY=some value"]
        );
        assert_eq!(c.labels.unwrap()["b"], "two words");
        assert_eq!(c.exposed_ports.unwrap(), vec!["80/tcp", "53/udp"]);
        assert_eq!(c.volumes.unwrap(), vec!["/data", "/logs"]);
        assert_eq!(c.working_dir.unwrap(), "/srv");
        assert_eq!(c.user.unwrap(), "nobody");
        assert_eq!(c.entrypoint.unwrap(), vec!["/bin/sh", "-c", "echo hi"]);
        let h = c.healthcheck.unwrap();
        assert_eq!(h.interval, Some(5_000_000_000));
        assert_eq!(h.retries, Some(2));
        assert_eq!(h.test.unwrap(), vec!["CMD-SHELL", "true"]);
        assert_eq!(
            changes_config(&["RUN x".into()]).unwrap_err().message,
            "RUN is not a valid change command"
        );
    }

    #[test]
    fn tar_headers_are_blocks() {
        assert_eq!(tar_header("blobs/", 0, true).len(), 512);
        assert_eq!(pad(1).len(), 511);
        assert_eq!(pad(512).len(), 0);
        assert!(safe_join(Path::new("/x"), "../etc").is_err());
        assert!(blob_path(Path::new("/x"), "sha256:../../e").is_err());
    }
}
