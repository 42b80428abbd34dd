//! `docker pull`. The manifest (through an index for the wanted platform) and the
//! config are fetched first, from the first endpoint that answers (Hub mirrors,
//! then the registry; HTTPS then HTTP for insecure ones); errors up to here are the
//! request's error, as Moby answers them with an HTTP status. Then each layer whose
//! chain ID storage lacks is downloaded and, in the same pass, hashed into the
//! content store's ingest and streamed into storage's `LayerApply`; layers run in
//! parallel (`max-concurrent-downloads`, permits handed out in layer order). A blob
//! that fails its digest is refused: its ingest is removed, storage is told to
//! discard, and everything the pull had taken is given back.

use bus_schema::event::Action;
use bus_schema::images::{DistributionInspect, ImagePull, JsonMessage};
use bus_schema::storage::LayerApply;
use bus_schema::stream::{ByteChunk, MAX_CHUNK};
use bus_schema::{docker, BusError, ErrorKind};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::content::{short_id, ContentError};
use crate::layers::applied;
use crate::manifest::{self, chain_ids, Descriptor, ImageConfigFile, Manifest, Parsed, Wanted};
use crate::progress::{message_id, progress, status_id, Progress};
use crate::reference::Reference;
use crate::registry::{FetchedManifest, RegistryError, Repo};
use crate::service::Images;
use crate::store::{BlobRef, ImageMeta, LayerMeta};

/// An image as the registry describes it, before any layer is fetched.
pub(crate) struct Remote {
    /// The digest the reference resolved to (an index's when there is one): the
    /// RepoDigest and the "Digest:" line.
    pub digest: String,
    /// The platform manifest and its digest.
    pub manifest: Manifest,
    pub manifest_digest: String,
    pub manifest_raw: Vec<u8>,
    pub config_raw: Vec<u8>,
    pub config: ImageConfigFile,
}

enum PullErr {
    Registry(RegistryError),
    Bus(BusError),
}

impl From<RegistryError> for PullErr {
    fn from(e: RegistryError) -> Self {
        PullErr::Registry(e)
    }
}

/// Moby's `translatePullError`.
pub(crate) fn pull_error(r: &Reference, e: RegistryError) -> BusError {
    match &e {
        RegistryError::Unreachable(m) => BusError::internal(m.clone()),
        RegistryError::Status { status, errors, .. } => {
            let code = errors.first().map(|(c, _)| c.as_str()).unwrap_or("");
            let cause = if errors.is_empty() && *status == 404 {
                "manifest unknown: manifest unknown".into()
            } else {
                e.to_string()
            };
            match (code, *status) {
                ("NAME_UNKNOWN", _) => BusError::not_found(format!("repository {} not found: {cause}", r.familiar_name())),
                ("DENIED" | "UNAUTHORIZED", _) | (_, 401 | 403) => BusError::not_found(format!(
                    "pull access denied for {}, repository does not exist or may require 'docker login': {cause}",
                    r.familiar_name()
                )),
                ("MANIFEST_UNKNOWN", _) | (_, 404) => {
                    BusError::not_found(format!("manifest for {} not found: {cause}", r.familiar_string()))
                }
                _ => BusError::internal(cause),
            }
        }
        RegistryError::Invalid(m) => BusError::internal(m.clone()),
    }
}

enum Msg {
    Progress(JsonMessage),
    Done(usize, Result<Fetched, BusError>),
}

/// A layer the pull now holds one reference on.
struct Fetched {
    chain_id: String,
    diff_id: String,
    size: u64,
}

struct Job {
    index: usize,
    desc: Descriptor,
    diff_id: String,
    chain_id: String,
    parent: Option<String>,
}

impl Images {
    /// `docker pull`. Errors before the first message are the request's error.
    pub async fn pull<P: Progress>(
        self: &Arc<Self>,
        req: &ImagePull,
        out: &mut P,
    ) -> Result<(), BusError> {
        let r = Reference::parse_normalized(&req.reference)?.with_default_tag();
        let wanted = match req.platform.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Some(Wanted::parse(p).map_err(BusError::invalid)?),
            None => None,
        };
        let mut last: Option<PullErr> = None;
        let mut found = None;
        for ep in self.registry.endpoints(&r.domain, true).await {
            let mirror = ep.mirror;
            let repo = self.registry.repo(ep, &r.path, req.auth.clone(), false);
            match self.resolve_remote(&repo, &r, wanted.as_ref()).await {
                Ok(remote) => {
                    found = Some((repo, remote));
                    break;
                }
                Err(e) => {
                    let fallback =
                        mirror || matches!(&e, PullErr::Registry(re) if re.is_unreachable());
                    tracing::debug!(endpoint = %repo.ep.base, "pull endpoint failed");
                    last = Some(e);
                    if !fallback {
                        break;
                    }
                }
            }
        }
        let Some((repo, remote)) = found else {
            return match last {
                Some(PullErr::Registry(e))
                    if e.is_unreachable() && crate::hello::is_hello_world(&r) =>
                {
                    tracing::info!(error = %e, "registry unreachable: installing the embedded hello-world image");
                    self.install_hello(&r, out).await
                }
                Some(PullErr::Registry(e)) => Err(pull_error(&r, e)),
                Some(PullErr::Bus(e)) => Err(e),
                None => Err(BusError::internal("no endpoint to pull from")),
            };
        };
        let t0 = std::time::Instant::now();
        let res = self.pull_remote(&r, Arc::new(repo), remote, out).await;
        berth_telemetry::metrics::observe(
            "berth_pull_duration_seconds",
            "Duration of image pulls from a registry.",
            &[("result", if res.is_ok() { "ok" } else { "error" })],
            t0.elapsed().as_secs_f64(),
        );
        res
    }

    /// `GET /distribution/{name}/json`: the top manifest of `reference` in the first
    /// registry that has it (mirrors first, as pulls go) and its platforms: an
    /// index's entries, or a single manifest's config (Moby reads it for Docker's
    /// schema 2; OCI manifests are read the same way here).
    pub async fn distribution(
        self: &Arc<Self>,
        req: &DistributionInspect,
    ) -> Result<docker::DistributionInspect, BusError> {
        let r = Reference::parse_normalized(&req.reference)?.with_default_tag();
        let reference = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
        let mut last = None;
        for ep in self.registry.endpoints(&r.domain, true).await {
            let mirror = ep.mirror;
            let repo = self.registry.repo(ep, &r.path, req.auth.clone(), false);
            match repo.manifest(&reference).await {
                Ok(top) => return distribution_of(&repo, top).await.map_err(|e| pull_error(&r, e)),
                Err(e) => {
                    let fallback = mirror || e.is_unreachable();
                    last = Some(e);
                    if !fallback {
                        break;
                    }
                }
            }
        }
        Err(match last {
            Some(e) => pull_error(&r, e),
            None => BusError::internal("no endpoint to ask"),
        })
    }

    async fn resolve_remote(
        &self,
        repo: &Repo,
        r: &Reference,
        wanted: Option<&Wanted>,
    ) -> Result<Remote, PullErr> {
        let reference = r
            .digest
            .clone()
            .or_else(|| r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let top = repo.manifest(&reference).await?;
        let platform = wanted.cloned().unwrap_or_else(Wanted::host);
        let bad = |e: manifest::FormatError| PullErr::Bus(BusError::internal(e.to_string()));
        let (manifest_raw, manifest_digest, m, from_index) =
            match manifest::parse(&top.media_type, &top.body).map_err(bad)? {
                Parsed::Manifest(m) => (top.body.clone(), top.digest.clone(), m, false),
                Parsed::Index(idx) => {
                    let d = manifest::select(&idx, &platform).ok_or_else(|| {
                        PullErr::Bus(BusError::not_found(format!(
                            "no matching manifest for {platform} in the manifest list entries"
                        )))
                    })?;
                    let sub = repo.manifest(&d.digest).await?;
                    match manifest::parse(&sub.media_type, &sub.body).map_err(bad)? {
                        Parsed::Manifest(m) => (sub.body, sub.digest, m, true),
                        Parsed::Index(_) => {
                            return Err(PullErr::Bus(BusError::internal(
                                "nested manifest lists are not supported",
                            )))
                        }
                    }
                }
            };
        let config_raw = repo.blob_bytes(&m.config.digest).await?;
        if crate::content::sha256_digest(&config_raw) != m.config.digest {
            return Err(PullErr::Bus(BusError::internal(format!(
                "image config verification failed for digest {}",
                m.config.digest
            ))));
        }
        let config: ImageConfigFile = serde_json::from_slice(&config_raw)
            .map_err(|e| PullErr::Bus(BusError::internal(format!("invalid image config: {e}"))))?;
        if let (Some(w), false) = (wanted, from_index) {
            let p = manifest::Platform {
                architecture: config.architecture.clone(),
                os: config.os.clone(),
                variant: config.variant.clone(),
                ..Default::default()
            };
            if !w.matches(&p) {
                return Err(PullErr::Bus(BusError::not_found(format!(
                    "image with reference {} was found but does not match the specified platform: wanted {w}, actual: {}/{}{}",
                    r.familiar_string(),
                    config.os,
                    config.architecture,
                    config.variant.as_deref().map(|v| format!("/{v}")).unwrap_or_default()
                ))));
            }
        }
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(PullErr::Bus(BusError::internal(format!(
                "invalid image: the manifest has {} layers and the config {} diff IDs",
                m.layers.len(),
                config.rootfs.diff_ids.len()
            ))));
        }
        Ok(Remote {
            digest: top.digest,
            manifest: m,
            manifest_digest,
            manifest_raw,
            config_raw,
            config,
        })
    }

    async fn pull_remote<P: Progress>(
        self: &Arc<Self>,
        r: &Reference,
        repo: Arc<Repo>,
        remote: Remote,
        out: &mut P,
    ) -> Result<(), BusError> {
        let shown = if r.digest.is_some() {
            r.familiar_string()
        } else {
            r.tag.clone().unwrap_or_default()
        };
        out.send(message_id(&format!("Pulling from {}", r.path), &shown))
            .await?;
        let refs: Vec<Reference> = match &r.tag {
            Some(t) if r.digest.is_none() => vec![r.tagged(t), r.digested(&remote.digest)],
            _ => vec![r.digested(&remote.digest)],
        };
        let id = crate::content::sha256_digest(&remote.config_raw);
        let chains = chain_ids(&remote.config.rootfs.diff_ids);

        // Already here: only the references change.
        if let Some(img) = self.store.get(&id) {
            let present = match img.meta.top_chain() {
                None => true,
                Some(t) => self.layers.stat(t).await?.is_some(),
            };
            if present {
                let _g = self.refs_lock.lock().await;
                let mut updated = false;
                for rf in &refs {
                    if self.store.set_ref(rf, &img.id)?.as_deref() != Some(img.id.as_str()) {
                        updated = true;
                    }
                }
                drop(_g);
                return self.finish_pull(r, &remote.digest, updated, out).await;
            }
        }

        let mut blobs: Vec<String> = remote
            .manifest
            .layers
            .iter()
            .map(|d| d.digest.clone())
            .collect();
        blobs.push(remote.manifest_digest.clone());
        let inflight = self.hold_blobs(blobs);
        let fetched = match self
            .pull_layers(r, repo.clone(), &remote, &chains, out)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                drop(inflight);
                self.gc_blobs();
                return Err(e);
            }
        };
        let source = format!("{}/{}", r.domain, r.path);
        let layers: Vec<LayerMeta> = fetched
            .iter()
            .zip(remote.manifest.layers.iter())
            .map(|(f, d)| LayerMeta {
                diff_id: f.diff_id.clone(),
                chain_id: f.chain_id.clone(),
                size: f.size,
                blob: Some(BlobRef {
                    digest: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    size: d.size.max(0) as u64,
                    sources: vec![source.clone()],
                }),
            })
            .collect();
        let stored_manifest = self
            .content
            .write(&remote.manifest_raw, Some(&remote.manifest_digest))
            .ok();
        let meta = ImageMeta {
            layers,
            manifest: stored_manifest,
            ..Default::default()
        };
        // The image keeps the reference on its top layer; children hold their parents.
        let n = fetched.len();
        for f in fetched.iter().take(n.saturating_sub(1)) {
            self.layers.release_quietly(&f.chain_id).await;
        }
        let _g = self.refs_lock.lock().await;
        let (_, updated) = self.commit_image(&remote.config_raw, meta, &refs).await?;
        drop(_g);
        drop(inflight);
        self.finish_pull(r, &remote.digest, updated, out).await
    }

    pub(crate) async fn finish_pull<P: Progress>(
        &self,
        r: &Reference,
        digest: &str,
        updated: bool,
        out: &mut P,
    ) -> Result<(), BusError> {
        out.send(JsonMessage::status(format!("Digest: {digest}")))
            .await?;
        let status = if updated {
            "Downloaded newer image for"
        } else {
            "Image is up to date for"
        };
        out.send(JsonMessage::status(format!(
            "Status: {status} {}",
            r.familiar_string()
        )))
        .await?;
        self.event(Action::Pull, &r.familiar_string(), &r.familiar_name())
            .await;
        Ok(())
    }

    /// Fetch and apply every layer storage lacks; answers one held reference per layer.
    async fn pull_layers<P: Progress>(
        self: &Arc<Self>,
        _r: &Reference,
        repo: Arc<Repo>,
        remote: &Remote,
        chains: &[String],
        out: &mut P,
    ) -> Result<Vec<Fetched>, BusError> {
        let descs = &remote.manifest.layers;
        let diff_ids = &remote.config.rootfs.diff_ids;
        let mut results: Vec<Option<Result<Fetched, BusError>>> =
            (0..descs.len()).map(|_| None).collect();
        // Layers storage already has: a prefix of the chain.
        let mut jobs = Vec::new();
        let mut messages = Vec::new();
        for (i, d) in descs.iter().enumerate() {
            let sid = short_id(&d.digest);
            let existing = if jobs.is_empty() {
                self.layers.stat(&chains[i]).await?
            } else {
                None
            };
            match existing {
                Some(_) => match self.layers.retain(&chains[i]).await {
                    Ok(info) => {
                        messages.push(status_id("Already exists", &sid));
                        results[i] = Some(Ok(Fetched {
                            chain_id: chains[i].clone(),
                            diff_id: diff_ids[i].clone(),
                            size: info.size,
                        }));
                    }
                    Err(e) => {
                        results[i] = Some(Err(e));
                        break;
                    }
                },
                None => {
                    messages.push(status_id("Pulling fs layer", &sid));
                    jobs.push(Job {
                        index: i,
                        desc: d.clone(),
                        diff_id: diff_ids[i].clone(),
                        chain_id: chains[i].clone(),
                        parent: if i == 0 {
                            None
                        } else {
                            Some(chains[i - 1].clone())
                        },
                    });
                }
            }
        }
        if results.iter().any(|x| matches!(x, Some(Err(_)))) {
            let err = self.give_back(&mut results).await;
            return Err(err);
        }
        for m in messages {
            out.send(m).await?;
        }
        for j in jobs.iter().skip(self.max_downloads) {
            out.send(status_id("Waiting", &short_id(&j.desc.digest)))
                .await?;
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let cancel = CancellationToken::new();
        let pending = jobs.len();
        {
            let sem = Arc::new(tokio::sync::Semaphore::new(self.max_downloads));
            let me = self.clone();
            let (tx, cancel) = (tx.clone(), cancel.clone());
            tokio::spawn(async move {
                for job in jobs {
                    let permit = tokio::select! {
                        p = sem.clone().acquire_owned() => p.ok(),
                        _ = cancel.cancelled() => None,
                    };
                    let idx = job.index;
                    let Some(permit) = permit else {
                        let _ = tx.send(Msg::Done(idx, Err(cancelled())));
                        continue;
                    };
                    let (me, repo, tx, cancel) =
                        (me.clone(), repo.clone(), tx.clone(), cancel.clone());
                    tokio::spawn(async move {
                        let res = me.fetch_layer(&repo, &job, &tx, &cancel).await;
                        drop(permit);
                        let _ = tx.send(Msg::Done(idx, res));
                    });
                }
            });
        }
        drop(tx);
        let fetch_bytes: i64 = descs
            .iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_none())
            .map(|(_, d)| d.size.max(0))
            .sum();
        let mut done = 0;
        let mut client_gone = None;
        let mut root: Option<BusError> = None;
        while done < pending {
            let Some(m) = rx.recv().await else { break };
            match m {
                Msg::Progress(p) => {
                    if client_gone.is_none() {
                        if let Err(e) = out.send(p).await {
                            cancel.cancel();
                            client_gone = Some(e);
                        }
                    }
                }
                Msg::Done(i, res) => {
                    done += 1;
                    if let Err(e) = &res {
                        cancel.cancel();
                        // The first failure is the cause; later ones follow from it.
                        if e.kind != ErrorKind::Cancelled && root.is_none() {
                            root = Some(e.clone());
                        }
                    }
                    results[i] = Some(res);
                }
            }
        }
        let failed = client_gone.is_some() || results.iter().any(|x| !matches!(x, Some(Ok(_))));
        if failed {
            let err = self.give_back(&mut results).await;
            return Err(client_gone.or(root).unwrap_or(err));
        }
        berth_telemetry::metrics::counter_add(
            "berth_pull_bytes_total",
            "Compressed layer bytes downloaded by pulls.",
            &[],
            fetch_bytes as f64,
        );
        Ok(results.into_iter().map(|x| x.unwrap().unwrap()).collect())
    }

    /// Undo a failed pull: release every layer reference taken, remove the blobs it
    /// committed. Answers the first real error.
    async fn give_back(&self, results: &mut [Option<Result<Fetched, BusError>>]) -> BusError {
        let mut first: Option<BusError> = None;
        for r in results.iter_mut().rev() {
            match r.take() {
                Some(Ok(f)) => {
                    self.layers.release_quietly(&f.chain_id).await;
                }
                Some(Err(e)) => {
                    if first.as_ref().is_none_or(|f| {
                        f.kind == ErrorKind::Cancelled && e.kind != ErrorKind::Cancelled
                    }) {
                        first = Some(e);
                    }
                }
                None => {}
            }
        }
        first.unwrap_or_else(|| BusError::internal("pull failed"))
    }

    async fn fetch_layer(
        &self,
        repo: &Repo,
        job: &Job,
        tx: &mpsc::UnboundedSender<Msg>,
        cancel: &CancellationToken,
    ) -> Result<Fetched, BusError> {
        let sid = short_id(&job.desc.digest);
        let send = |m: JsonMessage| {
            let _ = tx.send(Msg::Progress(m));
        };
        let _lock = self.content.lock(&job.desc.digest).await;
        // A concurrent pull may have applied it meanwhile.
        if self.layers.stat(&job.chain_id).await?.is_some() {
            let info = self.layers.retain(&job.chain_id).await?;
            send(status_id("Already exists", &sid));
            return Ok(Fetched {
                chain_id: job.chain_id.clone(),
                diff_id: job.diff_id.clone(),
                size: info.size,
            });
        }
        let total = job.desc.size.max(0) as u64;
        let (rd, mut wr) = self
            .layers
            .apply(LayerApply {
                parent: job.parent.clone(),
                media_type: job.desc.media_type.clone(),
                compressed_digest: Some(job.desc.digest.clone()),
                diff_id: Some(job.diff_id.clone()),
            })
            .await?;
        let fed = if self.content.has(&job.desc.digest) {
            self.feed_local(&job.desc.digest, &mut wr, cancel)
                .await
                .map(|()| false)
        } else {
            self.feed_remote(repo, job, &mut wr, cancel, &send, total)
                .await
                .map(|()| true)
        };
        let new_blob = match fed {
            Ok(n) => n,
            Err(e) => {
                let _ = wr.fail(e.clone()).await;
                return Err(e);
            }
        };
        send(status_id("Verifying Checksum", &sid));
        send(status_id("Download complete", &sid));
        wr.end().await?;
        // Once storage has all the bytes it answers soon; wait for that answer even
        // when the pull is being cancelled, so that the reference it hands out is
        // given back rather than leaked.
        let mut answer = Box::pin(applied(rd));
        let done = tokio::select! {
            r = &mut answer => r,
            _ = cancel.cancelled() => match tokio::time::timeout(std::time::Duration::from_secs(30), answer).await {
                Ok(r) => r,
                Err(_) => Err(cancelled()),
            },
        };
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                if new_blob {
                    let _ = self.content.delete(&job.desc.digest);
                }
                return Err(e);
            }
        };
        if done.chain_id != job.chain_id {
            self.layers.release_quietly(&done.chain_id).await;
            return Err(BusError::internal(format!(
                "layer {} applied as {} but the image expects {}",
                job.desc.digest, done.chain_id, job.chain_id
            )));
        }
        send(progress("Extracting", &sid, total, total));
        send(status_id("Pull complete", &sid));
        Ok(Fetched {
            chain_id: done.chain_id,
            diff_id: done.diff_id,
            size: done.size,
        })
    }

    /// A blob already in the content store goes to storage without a download.
    async fn feed_local(
        &self,
        digest: &str,
        wr: &mut crate::layers::Feed,
        cancel: &CancellationToken,
    ) -> Result<(), BusError> {
        let mut f = tokio::fs::File::open(self.content.path(digest)?).await?;
        loop {
            let mut buf = vec![0u8; MAX_CHUNK];
            let n = read_full(&mut f, &mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            wr.send(ByteChunk(buf)).await?;
        }
    }

    /// Download into the ingest and storage at once; resume a partial ingest.
    async fn feed_remote(
        &self,
        repo: &Repo,
        job: &Job,
        wr: &mut crate::layers::Feed,
        cancel: &CancellationToken,
        send: &impl Fn(JsonMessage),
        total: u64,
    ) -> Result<(), BusError> {
        let digest = &job.desc.digest;
        let sid = short_id(digest);
        let mut ing = self.content.ingest(digest, Some(total)).await?;
        let resume = ing.resume_from();
        let (mut resp, ranged) = repo.blob(digest, resume).await.map_err(BusError::from)?;
        if resume > 0 {
            if ranged {
                while let Some(chunk) = ing.replay_chunk(MAX_CHUNK).await? {
                    wr.send(ByteChunk(chunk)).await?;
                }
            } else {
                ing.restart().await?;
            }
        }
        let step = (total / 100).max(512 * 1024);
        let mut last = ing.offset();
        let mut buf: Vec<u8> = Vec::with_capacity(MAX_CHUNK);
        loop {
            let next = tokio::select! {
                c = resp.chunk() => c,
                _ = cancel.cancelled() => {
                    // Another layer failed the pull: keep nothing of this one.
                    ing.abort().await;
                    return Err(cancelled());
                }
            };
            let chunk = match next {
                Ok(Some(c)) => Some(c),
                Ok(None) => None,
                Err(e) => {
                    return Err(BusError::internal(format!(
                        "failed to download layer {digest}: {e}"
                    )));
                }
            };
            let end = chunk.is_none();
            if let Some(c) = &chunk {
                let mut rest: &[u8] = c;
                while !rest.is_empty() {
                    let take = (MAX_CHUNK - buf.len()).min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == MAX_CHUNK {
                        let full = std::mem::replace(&mut buf, Vec::with_capacity(MAX_CHUNK));
                        ing.write(&full).await?;
                        wr.send(ByteChunk(full)).await?;
                    }
                }
            }
            if end && !buf.is_empty() {
                let full = std::mem::take(&mut buf);
                ing.write(&full).await?;
                wr.send(ByteChunk(full)).await?;
            }
            let off = ing.offset() + buf.len() as u64;
            if off - last >= step || (end && off != last) {
                last = off;
                send(progress("Downloading", &sid, off, total));
            }
            if end {
                break;
            }
        }
        match ing.commit().await {
            Ok(_) => Ok(()),
            Err(e @ (ContentError::DigestMismatch(_) | ContentError::SizeMismatch { .. })) => {
                Err(BusError::invalid(e.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

fn cancelled() -> BusError {
    BusError::new(ErrorKind::Cancelled, "pull cancelled")
}

async fn distribution_of(repo: &Repo, top: FetchedManifest) -> Result<docker::DistributionInspect, RegistryError> {
    let platform = |p: &manifest::Platform| docker::OciPlatform {
        architecture: Some(p.architecture.clone()),
        os: Some(p.os.clone()),
        os_version: p.os_version.clone(),
        os_features: p.os_features.clone(),
        variant: p.variant.clone(),
    };
    let platforms = match manifest::parse(&top.media_type, &top.body) {
        Ok(Parsed::Index(idx)) => idx.manifests.iter().filter_map(|d| d.platform.as_ref()).map(platform).collect(),
        // the platform from the image config, for a Docker schema2 and an OCI image
        // manifest alike (Moby 20.10 read schema2 only: the gateway answers null for an
        // OCI manifest to API < 1.42 clients)
        Ok(Parsed::Manifest(m)) => match repo.blob_bytes(&m.config.digest).await {
            Ok(raw) => match serde_json::from_slice::<ImageConfigFile>(&raw) {
                Ok(c) if !c.os.is_empty() || !c.architecture.is_empty() => vec![docker::OciPlatform {
                    architecture: Some(c.architecture),
                    os: Some(c.os),
                    os_version: c.os_version,
                    os_features: None,
                    variant: c.variant,
                }],
                _ => vec![],
            },
            Err(_) => vec![],
        },
        Err(e) => return Err(RegistryError::Invalid(e.to_string())),
    };
    Ok(docker::DistributionInspect {
        descriptor: docker::OciDescriptor {
            media_type: Some(top.media_type.clone()),
            digest: Some(top.digest.clone()),
            size: Some(top.body.len() as i64),
            ..Default::default()
        },
        platforms,
    })
}
