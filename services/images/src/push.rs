//! `docker push`. For each layer: the registry may have it already (HEAD), or
//! mount it from another repository of the same registry that a pull or push saw
//! holding it; otherwise it is uploaded, from the content store when the blob is
//! there, else exported from storage and gzip-compressed on the fly, the compressed
//! bytes kept in the content store for next time. Then the config and the
//! manifest; the pushed digest becomes a RepoDigest.

use bus_schema::event::Action;
use bus_schema::images::{ImagePush, JsonMessage};
use bus_schema::stream::MAX_CHUNK;
use bus_schema::BusError;
use futures_util::StreamExt;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::content::short_id;
use crate::manifest::{self, Descriptor, Manifest};
use crate::progress::{progress, status_id, Progress};
use crate::reference::Reference;
use crate::registry::Repo;
use crate::service::Images;
use crate::store::{BlobRef, Image};

enum Msg {
    Progress(JsonMessage),
    Done(usize, Result<Descriptor, BusError>),
}

impl Images {
    pub async fn push<P: Progress>(
        self: &Arc<Self>,
        req: &ImagePush,
        out: &mut P,
    ) -> Result<(), BusError> {
        let mut r = Reference::parse_normalized(&req.name)?;
        if let Some(t) = req.tag.as_deref().filter(|t| !t.is_empty()) {
            r = Reference::parse(&format!("{}:{t}", r.name()))?;
        }
        // What to push: one tag, or every tag of the repository.
        let targets: Vec<(Reference, String)> = match &r.tag {
            Some(_) => match self.store.lookup(&r) {
                Some(id) => vec![(r.clone(), id)],
                None => vec![],
            },
            None => self
                .store
                .all_refs()
                .into_iter()
                .filter(|(x, _)| x.tag.is_some() && x.digest.is_none() && x.name() == r.name())
                .collect(),
        };
        if targets.is_empty() {
            return Err(BusError::not_found(format!(
                "An image does not exist locally with the tag: {}",
                r.familiar_name()
            )));
        }
        out.send(JsonMessage::status(format!(
            "The push refers to repository [{}]",
            r.name()
        )))
        .await?;
        let mut last = None;
        for ep in self.registry.endpoints(&r.domain, false).await {
            let repo = Arc::new(self.registry.repo(ep, &r.path, req.auth.clone(), true));
            // Find out whether the endpoint answers (and the credentials work).
            match repo
                .blob_exists(&format!("sha256:{}", "0".repeat(64)))
                .await
            {
                Err(e) if e.is_unreachable() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            for (tr, id) in &targets {
                let img = self
                    .store
                    .get(id)
                    .ok_or_else(|| crate::error::no_such_image(id))?;
                self.push_one(&repo, tr, &img, out).await?;
            }
            return Ok(());
        }
        Err(last
            .map(BusError::from)
            .unwrap_or_else(|| BusError::internal("no endpoint to push to")))
    }

    async fn push_one<P: Progress>(
        self: &Arc<Self>,
        repo: &Arc<Repo>,
        r: &Reference,
        img: &Arc<Image>,
        out: &mut P,
    ) -> Result<(), BusError> {
        let n = img.meta.layers.len();
        // Top layer first, as Moby lists them.
        for l in img.meta.layers.iter().rev() {
            out.send(status_id("Preparing", &short_id(&l.diff_id)))
                .await?;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.max_uploads));
        for i in (0..n).rev() {
            let (me, repo, img, tx, sem) = (
                self.clone(),
                repo.clone(),
                img.clone(),
                tx.clone(),
                sem.clone(),
            );
            tokio::spawn(async move {
                let _p = sem.acquire_owned().await;
                let res = me.push_layer(&repo, &img, i, &tx).await;
                let _ = tx.send(Msg::Done(i, res));
            });
        }
        drop(tx);
        let mut descs: Vec<Option<Descriptor>> = vec![None; n];
        let mut first_err = None;
        let mut done = 0;
        while done < n {
            let Some(m) = rx.recv().await else { break };
            match m {
                Msg::Progress(p) => out.send(p).await?,
                Msg::Done(i, Ok(d)) => {
                    descs[i] = Some(d);
                    done += 1;
                }
                Msg::Done(_, Err(e)) => {
                    first_err.get_or_insert(e);
                    done += 1;
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let layers: Vec<Descriptor> = descs.into_iter().map(|d| d.unwrap()).collect();
        let oci = layers
            .iter()
            .any(|d| d.media_type.starts_with("application/vnd.oci."));
        let config_digest = crate::content::sha256_digest(&img.raw);
        if repo
            .blob_exists(&config_digest)
            .await
            .map_err(BusError::from)?
            .is_none()
        {
            let loc = repo.start_upload(None).await.map_err(BusError::from)?;
            if let Some(loc) = loc {
                let d = config_digest.clone();
                repo.upload(&loc, reqwest::Body::from(img.raw.clone()), async move {
                    Some(d)
                })
                .await
                .map_err(BusError::from)?;
            }
        }
        let m = Manifest {
            schema_version: 2,
            media_type: Some(
                if oci {
                    manifest::OCI_MANIFEST
                } else {
                    manifest::DOCKER_MANIFEST
                }
                .to_string(),
            ),
            config: Descriptor {
                media_type: if oci {
                    manifest::OCI_CONFIG
                } else {
                    manifest::DOCKER_CONFIG
                }
                .to_string(),
                digest: config_digest,
                size: img.raw.len() as i64,
                ..Default::default()
            },
            layers,
            annotations: None,
        };
        let body = serde_json::to_vec_pretty(&m).map_err(|e| BusError::internal(e.to_string()))?;
        let size = body.len();
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        let mt = m.media_type.clone().unwrap_or_default();
        let digest = repo
            .put_manifest(&tag, &mt, body.clone())
            .await
            .map_err(BusError::from)?;
        let _ = self.content.write(&body, Some(&digest));
        {
            let _g = self.refs_lock.lock().await;
            self.store.set_ref(&r.digested(&digest), &img.id)?;
            let source = format!("{}/{}", r.domain, r.path);
            let blobs: Vec<Descriptor> = m.layers.clone();
            self.store.update_meta(&img.id, |meta| {
                if meta.manifest.is_none() {
                    meta.manifest = Some(digest.clone());
                }
                for (l, d) in meta.layers.iter_mut().zip(blobs.iter()) {
                    match &mut l.blob {
                        Some(b) if b.digest == d.digest => {
                            if !b.sources.contains(&source) {
                                b.sources.push(source.clone());
                            }
                        }
                        _ => {
                            l.blob = Some(BlobRef {
                                digest: d.digest.clone(),
                                media_type: d.media_type.clone(),
                                size: d.size as u64,
                                sources: vec![source.clone()],
                            })
                        }
                    }
                }
            })?;
        }
        out.send(JsonMessage::status(format!(
            "{tag}: digest: {digest} size: {size}"
        )))
        .await?;
        out.send(JsonMessage {
            progress_detail: Some(Default::default()),
            aux: Some(serde_json::json!({"Tag": tag, "Digest": digest, "Size": size})),
            ..Default::default()
        })
        .await?;
        self.event(Action::Push, &r.familiar_string(), &r.familiar_name())
            .await;
        Ok(())
    }

    /// Push one layer; answers its descriptor in the manifest.
    async fn push_layer(
        &self,
        repo: &Repo,
        img: &Image,
        i: usize,
        tx: &mpsc::UnboundedSender<Msg>,
    ) -> Result<Descriptor, BusError> {
        let l = &img.meta.layers[i];
        let sid = short_id(&l.diff_id);
        let send = |m: JsonMessage| {
            let _ = tx.send(Msg::Progress(m));
        };
        let me_repo = format!("{}", repo.path);
        if let Some(b) = &l.blob {
            let desc = Descriptor {
                media_type: docker_media_type(&b.media_type),
                digest: b.digest.clone(),
                size: b.size as i64,
                ..Default::default()
            };
            if repo
                .blob_exists(&b.digest)
                .await
                .map_err(BusError::from)?
                .is_some()
            {
                send(status_id("Layer already exists", &sid));
                return Ok(desc);
            }
            // A cross-repository mount from a repository of the same registry.
            let host = repo.ep.base.split("://").nth(1).unwrap_or("");
            for src in &b.sources {
                let Some((dom, path)) = src.split_once('/') else {
                    continue;
                };
                let same_host =
                    dom == host || (dom == "docker.io" && host == crate::registry::HUB_REGISTRY);
                if !same_host || path == me_repo {
                    continue;
                }
                if let Ok(None) = repo.start_upload(Some((&b.digest, path))).await {
                    send(status_id(&format!("Mounted from {path}"), &sid));
                    return Ok(desc);
                }
            }
            if self.content.has(&b.digest) {
                send(status_id("Waiting", &sid));
                let loc = repo.start_upload(None).await.map_err(BusError::from)?;
                if let Some(loc) = loc {
                    let file = tokio::fs::File::open(self.content.path(&b.digest)?).await?;
                    let total = b.size;
                    let (ptx, sid2) = (tx.clone(), sid.clone());
                    let mut sent = 0u64;
                    let mut last = 0u64;
                    let stream = tokio_util::io::ReaderStream::with_capacity(file, MAX_CHUNK).map(
                        move |c| {
                            if let Ok(c) = &c {
                                sent += c.len() as u64;
                                if sent - last >= (total / 100).max(512 * 1024) || sent == total {
                                    last = sent;
                                    let _ = ptx.send(Msg::Progress(progress(
                                        "Pushing", &sid2, sent, total,
                                    )));
                                }
                            }
                            c
                        },
                    );
                    let d = b.digest.clone();
                    repo.upload(
                        &loc,
                        reqwest::Body::wrap_stream(stream),
                        async move { Some(d) },
                    )
                    .await
                    .map_err(BusError::from)?;
                }
                send(status_id("Pushed", &sid));
                return Ok(desc);
            }
        }
        // Export from storage, compress, upload, and keep the compressed blob.
        let mut export = self.layers.export(&l.chain_id).await?;
        let loc = repo
            .start_upload(None)
            .await
            .map_err(BusError::from)?
            .ok_or_else(|| BusError::internal("upload not started"))?;
        let (btx, brx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
        let (dtx, drx) = oneshot::channel::<Option<(String, u64)>>();
        let content = self.content.clone();
        let (ptx, sid2, total) = (tx.clone(), sid.clone(), l.size);
        let producer = tokio::spawn(async move {
            let res: Result<(String, u64), BusError> = async {
                let mut ing = content.ingest_unknown().await?;
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::with_capacity(MAX_CHUNK),
                    flate2::Compression::fast(),
                );
                let mut raw = 0u64;
                let mut last = 0u64;
                while let Some(c) = export.next().await {
                    let c = c?;
                    raw += c.0.len() as u64;
                    gz.write_all(&c.0).map_err(BusError::from)?;
                    if gz.get_ref().len() >= MAX_CHUNK {
                        let out = std::mem::take(gz.get_mut());
                        ing.write(&out).await?;
                        if btx.send(Ok(bytes::Bytes::from(out))).await.is_err() {
                            return Err(BusError::internal("upload stopped"));
                        }
                    }
                    if raw - last >= 512 * 1024 {
                        last = raw;
                        let _ = ptx.send(Msg::Progress(progress(
                            "Pushing",
                            &sid2,
                            raw,
                            total.max(raw),
                        )));
                    }
                }
                let tail = gz.finish().map_err(BusError::from)?;
                ing.write(&tail).await?;
                let _ = btx.send(Ok(bytes::Bytes::from(tail))).await;
                let (d, n) = ing.commit().await?;
                Ok((d, n))
            }
            .await;
            match res {
                Ok(x) => {
                    let _ = dtx.send(Some(x.clone()));
                    Ok(x)
                }
                Err(e) => {
                    let _ = btx
                        .send(Err(std::io::Error::other(e.message.clone())))
                        .await;
                    let _ = dtx.send(None);
                    Err(e)
                }
            }
        });
        let body =
            reqwest::Body::wrap_stream(futures_util::stream::unfold(brx, |mut rx| async move {
                rx.recv().await.map(|x| (x, rx))
            }));
        let (dtx2, drx2) = oneshot::channel::<Option<(String, u64)>>();
        let digest_fut = async move {
            let r = drx.await.ok().flatten();
            let _ = dtx2.send(r.clone());
            r.map(|(d, _)| d)
        };
        let up = repo.upload(&loc, body, digest_fut).await;
        let produced = producer
            .await
            .map_err(|e| BusError::internal(e.to_string()))?;
        let (digest, size) = produced?;
        up.map_err(BusError::from)?;
        let _ = drx2.await;
        send(status_id("Pushed", &sid));
        Ok(Descriptor {
            media_type: manifest::DOCKER_LAYER_GZIP.into(),
            digest,
            size: size as i64,
            ..Default::default()
        })
    }
}

/// Layers keep the media type they were pulled with.
fn docker_media_type(mt: &str) -> String {
    mt.to_string()
}
