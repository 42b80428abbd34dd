//! Plugins in a registry, as Moby 20.10 distributes them: a schema 2 manifest whose
//! config is the plugin's config.json (media type
//! `application/vnd.docker.plugin.v1+json`) and whose layers are the rootfs as gzip
//! tars. `privileges` reads the config only; `pull` (`docker plugin install`)
//! applies the layers in storage and stores the plugin disabled, as `create` does,
//! once the privileges the client granted are the ones the config asks for;
//! `upgrade` does the same for a disabled plugin, keeping its ID, name and
//! settings; `push` sends the stored config and the rootfs (exported from storage,
//! gzip-compressed) and a manifest. Progress lines and errors are Moby's.

use super::*;
use crate::content::{sha256_digest, short_id};
use crate::manifest::{Manifest, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::progress::{progress, status_id, Progress};
use crate::registry::{FetchedManifest, Registry, RegistryError, Repo};
use bus_schema::images::{JsonMessage, RegistryAuth};
use sha2::Digest as _;

/// The config media type of a plugin manifest (distribution's `MediaTypePluginConfig`).
pub const PLUGIN_CONFIG: &str = "application/vnd.docker.plugin.v1+json";

/// Moby's computePrivileges, in its order. None (Go's nil) when there are none.
pub fn compute_privileges(c: &PluginConfig) -> Option<Vec<PluginPrivilege>> {
    let p = |name: &str, description: &str, value: Vec<String>| PluginPrivilege { name: name.into(), description: description.into(), value: Some(value) };
    let mut v = Vec::new();
    let net = c.network.typ.as_str();
    if net != "null" && net != "bridge" && !net.is_empty() {
        v.push(p("network", "permissions to access a network", vec![net.to_string()]));
    }
    if c.ipc_host {
        v.push(p("host ipc namespace", "allow access to host ipc namespace", vec!["true".into()]));
    }
    if c.pid_host {
        v.push(p("host pid namespace", "allow access to host pid namespace", vec!["true".into()]));
    }
    for m in c.mounts.iter().flatten() {
        if let Some(src) = &m.source {
            v.push(p("mount", "host path to mount", vec![src.clone()]));
        }
    }
    for d in c.linux.devices.iter().flatten() {
        if let Some(path) = &d.path {
            v.push(p("device", "host device to access", vec![path.clone()]));
        }
    }
    if c.linux.allow_all_devices {
        v.push(p("allow-all-devices", "allow 'rwm' access to all devices", vec!["true".into()]));
    }
    if let Some(caps) = c.linux.capabilities.as_ref().filter(|c| !c.is_empty()) {
        v.push(p("capabilities", "list of additional capabilities required", caps.clone()));
    }
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

/// Moby's validatePrivileges: the same privileges in any order, each one's values
/// in any order (descriptions are not compared). Moby 20.10 leaves the first of
/// the sorted privileges out of its comparison (its loop starts at 1); berth
/// compares them all.
pub fn privileges_match(required: &[PluginPrivilege], given: &[PluginPrivilege]) -> bool {
    fn norm(v: &[PluginPrivilege]) -> Vec<(String, Option<Vec<String>>)> {
        let mut v: Vec<_> = v
            .iter()
            .map(|p| {
                let mut val = p.value.clone();
                if let Some(x) = val.as_mut() {
                    x.sort();
                }
                (p.name.clone(), val)
            })
            .collect();
        v.sort();
        v
    }
    required.len() == given.len() && norm(required) == norm(given)
}

fn parse_ref(s: &str) -> Result<Reference, BusError> {
    Reference::parse_normalized(s).map_err(|e| BusError::internal(ref_error(&e)))
}

/// Moby's parseRemoteRef: the remote with `:latest` when it names no tag; a remote
/// with a tag and a digest is pulled by digest, its tag kept for the local name.
pub fn remote_ref(remote: &str) -> Result<(Reference, Option<String>), BusError> {
    let r = parse_ref(remote)?;
    if r.digest.is_some() {
        let tag = r.tag.clone();
        let mut r = r;
        r.tag = None;
        return Ok((r, tag));
    }
    Ok((r.with_default_tag(), None))
}

/// Moby's getName: the alias (`:latest` implied, no digest), else the remote's
/// familiar name.
pub fn local_name(r: &Reference, tag: Option<&str>, alias: &str) -> Result<String, BusError> {
    if alias.is_empty() {
        if r.digest.is_some() {
            return Ok(r.name_only().tagged(tag.unwrap_or("latest")).familiar_string());
        }
        return Ok(r.familiar_string());
    }
    let a = parse_ref(alias)?;
    if a.digest.is_some() {
        return Err(BusError::internal("cannot use digest in plugin tag"));
    }
    Ok(a.with_default_tag().familiar_string())
}

/// A plugin manifest: Docker's schema 2 (or OCI) with the plugin config; anything
/// else is refused with Moby's words.
pub fn plugin_manifest(fm: &FetchedManifest) -> Result<Manifest, String> {
    const MISSING: &str = "fetched plugin image but plugin config is missing";
    let m: Manifest = serde_json::from_slice(&fm.body).map_err(|_| MISSING.to_string())?;
    let mt = m.media_type.clone().unwrap_or_else(|| fm.media_type.clone());
    if (mt != DOCKER_MANIFEST && mt != OCI_MANIFEST && !mt.is_empty()) || m.config.media_type != PLUGIN_CONFIG {
        return Err(MISSING.into());
    }
    Ok(m)
}

/// The manifest Moby's plugin push writes: compact, its keys in this order.
#[derive(Serialize)]
struct PushManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    config: PushDescriptor<'a>,
    layers: Vec<PushDescriptor<'a>>,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
}

#[derive(Serialize)]
struct PushDescriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

/// A remote plugin resolved: where it is, its manifest and tag.
pub struct Resolved {
    repo: Repo,
    reference: Reference,
    fetched: FetchedManifest,
}

/// What a pull fetched and applied: the config (raw and decoded) and the rootfs
/// layers (one storage reference each, bottom first).
struct Fetched {
    config_raw: Vec<u8>,
    config: PluginConfig,
    chains: Vec<String>,
}

/// A blob to push: a gzip of a rootfs layer in a temp file.
struct Blob {
    file: std::fs::File,
    digest: String,
    size: u64,
}

fn resolve_error(r: &Reference, e: RegistryError) -> BusError {
    match &e {
        RegistryError::Unreachable(m) => {
            BusError::internal(format!("error resolving plugin reference: failed to do request: {}", m.replacen("Get ", "Head ", 1)))
        }
        e if e.is_not_found() => BusError::not_found(format!("error resolving plugin reference: {r}: not found")),
        e => BusError::internal(format!("error resolving plugin reference: {e}")),
    }
}

/// Writes through to `inner` while hashing and counting.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Plugins {
    fn registry(&self) -> Result<&Arc<Registry>, BusError> {
        self.registry.as_ref().ok_or_else(|| BusError::internal("no registry client"))
    }

    /// The remote's manifest, from the first endpoint that has it (Hub mirrors
    /// first, HTTPS then HTTP for insecure registries).
    pub async fn resolve_remote(&self, r: &Reference, auth: Option<RegistryAuth>) -> Result<Resolved, BusError> {
        let reg = self.registry()?;
        let reference = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
        let mut last = None;
        for ep in reg.endpoints(&r.domain, true).await {
            let fallback_ok = ep.mirror;
            let repo = reg.repo(ep, &r.path, auth.clone(), false);
            match repo.manifest(&reference).await {
                Ok(fetched) => return Ok(Resolved { repo, reference: r.clone(), fetched }),
                Err(e) => {
                    let next = fallback_ok || e.is_unreachable();
                    last = Some(e);
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(match last {
            Some(e) => resolve_error(r, e),
            None => BusError::internal("no endpoint to pull from"),
        })
    }

    /// `GET /plugins/privileges?remote=`. A remote that cannot be fetched answers
    /// an empty list, as Moby 20.10 does.
    pub async fn privileges(&self, req: &PluginPrivilegeList) -> Result<Option<Vec<PluginPrivilege>>, BusError> {
        let (r, _) = remote_ref(&req.remote)?;
        let Ok(res) = self.resolve_remote(&r, req.auth.clone()).await else {
            return Ok(Some(vec![]));
        };
        let no_config = || BusError::internal(format!("did not find plugin config for specified reference {r}"));
        let m = plugin_manifest(&res.fetched).map_err(|_| no_config())?;
        let Ok(raw) = res.repo.blob_bytes(&m.config.digest).await else {
            return Ok(Some(vec![]));
        };
        let cfg: PluginConfig = bus_schema::gojson::decode_first(&raw).ok().flatten().unwrap_or_default();
        Ok(compute_privileges(&cfg))
    }

    /// The checks Moby makes before its first progress line (their errors are the
    /// request's): the remote and the name parse, the name is free, the remote
    /// resolves. Answers the plugin's name.
    pub async fn pull_prepare(&self, req: &PluginPull) -> Result<(String, Resolved), BusError> {
        let (r, tag) = remote_ref(&req.remote)?;
        let name = local_name(&r, tag.as_deref(), &req.name)?;
        if self.records.lock().await.values().any(|rec| rec.plugin.name == name) {
            return Err(BusError::invalid(format!("plugin {name} already exists")));
        }
        let res = self.resolve_remote(&r, req.auth.clone()).await?;
        Ok((name, res))
    }

    /// The rest of `POST /plugins/pull`: fetch, check the privileges, store.
    pub async fn pull_run<P: Progress>(&self, name: &str, res: Resolved, privileges: &[PluginPrivilege], out: &mut P) -> Result<(), BusError> {
        let f = self.fetch(&res, name, privileges, out).await?;
        let blob = f.config_raw.clone();
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| BusError::internal(e.to_string()))?;
        let id = hex::encode(id);
        let mut plugin = Plugin { config: f.config, enabled: false, id: id.clone(), name: name.to_string(), plugin_reference: res.reference.to_string(), ..Default::default() };
        plugin.init_settings();
        let (top, lower) = f.chains.split_last().map(|(t, l)| (t.clone(), l.to_vec())).unwrap_or_default();
        let rec = Record { plugin, config_digest: sha256_digest(&blob), chain_id: top, lower };
        let mut recs = self.records.lock().await;
        let r = if recs.values().any(|x| x.plugin.name == name) {
            Err(BusError::conflict(format!("plugin {name} already exists")))
        } else {
            self.save(&id, &rec, Some(&blob))
        };
        if let Err(e) = r {
            drop(recs);
            self.release_chains(&f.chains).await;
            return Err(e);
        }
        recs.insert(id, rec);
        Ok(())
    }

    async fn release_chains(&self, chains: &[String]) {
        for c in chains.iter().rev() {
            self.layers.release_quietly(c).await;
        }
    }

    /// Fetch the config and apply the layers (progress as Moby's plugin pull), then
    /// check the privileges; on an error nothing is kept.
    /// Once fetched, the `pull` event (Moby's: the remote as the Actor ID, `name` the
    /// plugin's; before the privileges are checked, as Moby logs it).
    async fn fetch<P: Progress>(&self, res: &Resolved, name: &str, privileges: &[PluginPrivilege], out: &mut P) -> Result<Fetched, BusError> {
        let r = &res.reference;
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        out.send(JsonMessage::status(format!("Pulling from {}", r.familiar_name())).with_id(tag)).await?;
        out.send(JsonMessage::status(format!("Digest: {}", res.fetched.digest))).await?;
        let m = plugin_manifest(&res.fetched).map_err(BusError::internal)?;
        let raw = res.repo.blob_bytes(&m.config.digest).await.map_err(BusError::from)?;
        if sha256_digest(&raw) != m.config.digest {
            return Err(BusError::internal(format!("digest mismatch for the plugin config {}", m.config.digest)));
        }
        let config: PluginConfig = match bus_schema::gojson::decode_first(&raw) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(BusError::internal("failed to parse config: EOF")),
            Err(e) => return Err(BusError::internal(format!("failed to parse config: {e}"))),
        };
        let mut chains: Vec<String> = Vec::new();
        let res_layers = async {
            for l in &m.layers {
                let sid = short_id(&l.digest);
                out.send(status_id("Waiting", &sid)).await?;
                let applied = self.apply_remote(&res.repo, l, chains.last().cloned(), &sid, out).await?;
                chains.push(applied);
                out.send(status_id("Complete", &sid)).await?;
            }
            self.event(bus_schema::event::Action::Pull, &r.familiar_string(), name).await;
            let required = compute_privileges(&config).unwrap_or_default();
            if !privileges_match(&required, privileges) {
                return Err(BusError::internal("incorrect privileges"));
            }
            for l in &m.layers {
                out.send(status_id("Download complete", &short_id(&l.digest))).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = res_layers {
            self.release_chains(&chains).await;
            return Err(e);
        }
        Ok(Fetched { config_raw: raw, config, chains })
    }

    /// Stream one layer blob from the registry into storage (which checks its
    /// digest and the tar); answers its chain ID.
    async fn apply_remote<P: Progress>(&self, repo: &Repo, l: &crate::manifest::Descriptor, parent: Option<String>, sid: &str, out: &mut P) -> Result<String, BusError> {
        let (rd, mut wr) = self
            .layers
            .apply(LayerApply { parent, media_type: l.media_type.clone(), compressed_digest: Some(l.digest.clone()), diff_id: None })
            .await?;
        let total = l.size.max(0) as u64;
        let fed: Result<(), BusError> = async {
            let (mut resp, _) = repo.blob(&l.digest, 0).await.map_err(BusError::from)?;
            let (mut got, mut shown) = (0u64, 0u64);
            while let Some(c) = resp.chunk().await.map_err(|e| BusError::internal(format!("reading the layer {}: {e}", l.digest)))? {
                got += c.len() as u64;
                for part in c.chunks(MAX_CHUNK) {
                    wr.send(ByteChunk(part.to_vec())).await?;
                }
                if got - shown >= 512 * 1024 {
                    shown = got;
                    out.send(progress("Extracting", sid, got, total.max(got))).await?;
                }
            }
            out.send(progress("Extracting", sid, got, total.max(got))).await?;
            Ok(())
        }
        .await;
        if let Err(e) = fed {
            let _ = wr.fail(e.clone()).await;
            return Err(e);
        }
        wr.end().await?;
        Ok(layers::applied(rd).await?.chain_id)
    }

    /// Upgrade's checks before its first progress line: the plugin (named as
    /// Moby's getName names it) exists and is disabled; the remote resolves.
    pub async fn upgrade_prepare(&self, req: &PluginUpgrade) -> Result<(String, Resolved), BusError> {
        let (r, _) = remote_ref(&req.remote)?;
        // getName of the plugin's name as given: `:latest` added to a bare name
        let given = parse_ref(&req.name)?;
        if given.digest.is_some() {
            return Err(BusError::internal("cannot use digest in plugin tag"));
        }
        let name = if given.is_name_only() { format!("{}:latest", req.name) } else { req.name.clone() };
        {
            let recs = self.records.lock().await;
            let id = resolve(&recs, &name)?;
            let p = &recs[&id].plugin;
            if p.enabled {
                return Err(BusError::conflict(format!("plugin must be disabled before upgrading: plugin {} is enabled", p.name)));
            }
        }
        let res = self.resolve_remote(&r, req.auth.clone()).await?;
        Ok((name, res))
    }

    /// The rest of `POST /plugins/{name}/upgrade`: the new config and rootfs
    /// replace the old ones; ID, name and settings stay.
    pub async fn upgrade_run<P: Progress>(&self, name: &str, res: Resolved, privileges: &[PluginPrivilege], out: &mut P) -> Result<(), BusError> {
        let f = self.fetch(&res, name, privileges, out).await?;
        let mut recs = self.records.lock().await;
        let checked = resolve(&recs, name).and_then(|id| {
            if recs[&id].plugin.enabled {
                Err(BusError::conflict(format!("plugin must be disabled before upgrading: plugin {} is enabled", recs[&id].plugin.name)))
            } else {
                Ok(id)
            }
        });
        let id = match checked {
            Ok(id) => id,
            Err(e) => {
                drop(recs);
                self.release_chains(&f.chains).await;
                return Err(e);
            }
        };
        let old = recs[&id].clone();
        // the old container runs the old rootfs: it goes (made again at enable)
        self.remove_container(&id).await;
        let mut rec = old.clone();
        rec.plugin.config = f.config;
        rec.plugin.plugin_reference = res.reference.to_string();
        rec.config_digest = sha256_digest(&f.config_raw);
        let (top, lower) = f.chains.split_last().map(|(t, l)| (t.clone(), l.to_vec())).unwrap_or_default();
        rec.chain_id = top;
        rec.lower = lower;
        if let Err(e) = self.save(&id, &rec, Some(&f.config_raw)) {
            drop(recs);
            self.release_chains(&f.chains).await;
            return Err(e);
        }
        recs.insert(id, rec);
        drop(recs);
        let mut old_chains = old.lower.clone();
        old_chains.push(old.chain_id.clone());
        self.release_chains(&old_chains).await;
        Ok(())
    }

    /// `POST /plugins/{name}/push`, with Moby's progress: the repository, each blob
    /// (manifest, layers, config) "Preparing" for each endpoint tried, "Upload
    /// complete", then the result as `aux`.
    pub async fn push<P: Progress>(&self, req: &PluginPush, out: &mut P) -> Result<(), BusError> {
        let (id, rec) = {
            let recs = self.records.lock().await;
            let id = resolve(&recs, &req.name)?;
            (id.clone(), recs[&id].clone())
        };
        let r = parse_ref(&rec.plugin.name)?.with_default_tag();
        let config_raw = std::fs::read(self.dir.join(&id).join("config.json")).map_err(io_err("reading the plugin config"))?;
        out.send(JsonMessage::status(format!("The push refers to repository [{}]", r.name()))).await?;
        let mut chains = rec.lower.clone();
        chains.push(rec.chain_id.clone());
        let mut blobs = Vec::new();
        for c in &chains {
            blobs.push(self.gzip_layer(c).await?);
        }
        let config_digest = sha256_digest(&config_raw);
        let manifest = PushManifest {
            schema_version: 2,
            config: PushDescriptor { media_type: PLUGIN_CONFIG, digest: &config_digest, size: config_raw.len() as u64 },
            layers: blobs.iter().map(|b| PushDescriptor { media_type: DOCKER_LAYER_GZIP, digest: &b.digest, size: b.size }).collect(),
            media_type: DOCKER_MANIFEST,
        };
        let body = serde_json::to_vec(&manifest).map_err(|e| BusError::internal(e.to_string()))?;
        let manifest_digest = sha256_digest(&body);
        let mut ids = vec![short_id(&manifest_digest)];
        ids.extend(blobs.iter().map(|b| short_id(&b.digest)));
        ids.push(short_id(&config_digest));
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        let reg = self.registry()?;
        let mut last = None;
        for ep in reg.endpoints(&r.domain, false).await {
            for i in &ids {
                out.send(status_id("Preparing", i)).await?;
            }
            let repo = reg.repo(ep, &r.path, req.auth.clone(), true);
            match repo.blob_exists(&format!("sha256:{}", "0".repeat(64))).await {
                Err(e) if e.is_unreachable() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(push_error(e)),
                Ok(_) => {}
            }
            for b in &blobs {
                upload_file(&repo, b).await?;
            }
            if repo.blob_exists(&config_digest).await.map_err(push_error)?.is_none() {
                if let Some(loc) = repo.start_upload(None).await.map_err(push_error)? {
                    let d = config_digest.clone();
                    repo.upload(&loc, reqwest::Body::from(config_raw.clone()), async move { Some(d) }).await.map_err(push_error)?;
                }
            }
            repo.put_manifest(&tag, DOCKER_MANIFEST, body.clone()).await.map_err(push_error)?;
            for i in &ids {
                out.send(status_id("Upload complete", i)).await?;
            }
            out.send(JsonMessage {
                progress_detail: Some(Default::default()),
                aux: Some(serde_json::json!({"Tag": tag, "Digest": manifest_digest, "Size": body.len()})),
                ..Default::default()
            })
            .await?;
            return Ok(());
        }
        Err(match last {
            Some(e) => push_error(e),
            None => BusError::internal("error pushing plugin: no endpoint to push to"),
        })
    }

    /// A rootfs layer exported from storage, gzip-compressed into a temp file.
    async fn gzip_layer(&self, chain_id: &str) -> Result<Blob, BusError> {
        std::fs::create_dir_all(&self.tmp).map_err(io_err("compressing the plugin rootfs"))?;
        let file = tempfile::tempfile_in(&self.tmp).map_err(io_err("compressing the plugin rootfs"))?;
        let out = file.try_clone().map_err(io_err("compressing the plugin rootfs"))?;
        let mut gz = flate2::write::GzEncoder::new(Hashing { inner: std::io::BufWriter::new(out), hash: sha2::Sha256::new(), n: 0 }, flate2::Compression::default());
        let mut export = self.layers.export(chain_id).await?;
        use futures_util::StreamExt as _;
        while let Some(c) = export.next().await {
            gz.write_all(&c?.0).map_err(io_err("compressing the plugin rootfs"))?;
        }
        let mut h = gz.finish().map_err(io_err("compressing the plugin rootfs"))?;
        h.flush().map_err(io_err("compressing the plugin rootfs"))?;
        let digest = format!("sha256:{}", hex::encode(h.hash.finalize()));
        Ok(Blob { file, digest, size: h.n })
    }
}

fn push_error(e: RegistryError) -> BusError {
    BusError::internal(format!("error pushing plugin: {e}"))
}

/// Upload a blob from its temp file unless the registry has it.
async fn upload_file(repo: &Repo, b: &Blob) -> Result<(), BusError> {
    if repo.blob_exists(&b.digest).await.map_err(push_error)?.is_some() {
        return Ok(());
    }
    let Some(loc) = repo.start_upload(None).await.map_err(push_error)? else { return Ok(()) };
    let mut f = b.file.try_clone().map_err(io_err("reading the plugin rootfs"))?;
    f.rewind().map_err(io_err("reading the plugin rootfs"))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(f), MAX_CHUNK);
    let d = b.digest.clone();
    repo.upload(&loc, reqwest::Body::wrap_stream(stream), async move { Some(d) }).await.map_err(push_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> PluginConfig {
        bus_schema::gojson::from_slice(json.as_bytes()).unwrap()
    }

    #[test]
    fn privileges_in_mobys_order() {
        // the config Moby 20.10 answered for (recorded on a dockerd 20.10.24)
        let c = config(
            r#"{"network":{"type":"host"},"ipchost":true,"pidhost":true,
            "mounts":[{"name":"m1","source":"/tmp","destination":"/m1","type":"bind"},{"name":"m2","destination":"/m2","settable":["source"]}],
            "linux":{"capabilities":["CAP_SYS_ADMIN","CAP_NET_ADMIN"],"allowalldevices":true,"devices":[{"name":"d1","path":"/dev/fuse"}]}}"#,
        );
        let p = compute_privileges(&c).unwrap();
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"[{"Name":"network","Description":"permissions to access a network","Value":["host"]},{"Name":"host ipc namespace","Description":"allow access to host ipc namespace","Value":["true"]},{"Name":"host pid namespace","Description":"allow access to host pid namespace","Value":["true"]},{"Name":"mount","Description":"host path to mount","Value":["/tmp"]},{"Name":"device","Description":"host device to access","Value":["/dev/fuse"]},{"Name":"allow-all-devices","Description":"allow 'rwm' access to all devices","Value":["true"]},{"Name":"capabilities","Description":"list of additional capabilities required","Value":["CAP_SYS_ADMIN","CAP_NET_ADMIN"]}]"#
        );
        // `none` is a privilege too (only "", "null" and "bridge" are not)
        let none = compute_privileges(&config(r#"{"network":{"type":"none"}}"#)).unwrap();
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].value, Some(vec!["none".to_string()]));
        assert_eq!(compute_privileges(&config(r#"{"network":{"type":"bridge"}}"#)), None);
        assert_eq!(serde_json::to_string(&compute_privileges(&config("{}"))).unwrap(), "null");
    }

    #[test]
    fn privileges_must_match() {
        let c = config(r#"{"network":{"type":"host"},"linux":{"capabilities":["CAP_SYS_ADMIN","CAP_NET_ADMIN"]}}"#);
        let req = compute_privileges(&c).unwrap();
        assert!(privileges_match(&req, &req));
        // any order, values in any order, descriptions not compared
        let mut given: Vec<PluginPrivilege> = req.iter().rev().cloned().collect();
        given[0].value = Some(vec!["CAP_NET_ADMIN".into(), "CAP_SYS_ADMIN".into()]);
        given[1].description = String::new();
        assert!(privileges_match(&req, &given));
        assert!(!privileges_match(&req, &[]));
        assert!(!privileges_match(&req, &req[..1]));
        let mut other = req.clone();
        other[0].value = Some(vec!["none".into()]);
        assert!(!privileges_match(&req, &other), "a different network");
        assert!(privileges_match(&[], &[]));
    }

    #[test]
    fn remote_and_local_names_as_moby() {
        let (r, t) = remote_ref("localhost:5000/x/y").unwrap();
        assert_eq!((r.to_string(), t), ("localhost:5000/x/y:latest".to_string(), None));
        assert_eq!(local_name(&r, None, "").unwrap(), "localhost:5000/x/y:latest");
        let (r, _) = remote_ref("vieux/sshfs").unwrap();
        assert_eq!(r.to_string(), "docker.io/vieux/sshfs:latest");
        assert_eq!(local_name(&r, None, "").unwrap(), "vieux/sshfs:latest");
        assert_eq!(local_name(&r, None, "a").unwrap(), "a:latest");
        assert_eq!(local_name(&r, None, "docker.io/library/a:v1").unwrap(), "a:v1");
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(local_name(&r, None, &format!("a@{d}")).unwrap_err().message, "cannot use digest in plugin tag");
        assert_eq!(local_name(&r, None, "Bad").unwrap_err().message, "invalid reference format: repository name must be lowercase");
        let (r, t) = remote_ref(&format!("x/y:v2@{d}")).unwrap();
        assert_eq!(t.as_deref(), Some("v2"));
        assert_eq!(r.tag, None);
        assert_eq!(local_name(&r, t.as_deref(), "").unwrap(), "x/y:v2");
        assert_eq!(remote_ref("Bad").unwrap_err().message, "invalid reference format: repository name must be lowercase");
        assert_eq!(remote_ref("").unwrap_err().message, "invalid reference format");
    }

    fn fetched(body: &str, ct: &str) -> FetchedManifest {
        FetchedManifest { body: body.as_bytes().to_vec(), media_type: ct.into(), digest: sha256_digest(body.as_bytes()) }
    }

    #[test]
    fn manifests_of_plugins_only() {
        // as Moby 20.10's plugin push wrote it to a registry
        let m = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.docker.plugin.v1+json","digest":"sha256:681d613428b87e767f4bd7356723cb4484177a080dda121b4ba05fee1d7d8a8a","size":961},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:a828f3fc74e929ee9fc5cea92544013b92db29fd8bf200fa6fb79fbe3f64e743","size":152}],"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        let p = plugin_manifest(&fetched(m, DOCKER_MANIFEST)).unwrap();
        assert_eq!(p.config.size, 961);
        assert_eq!(p.layers.len(), 1);
        assert_eq!(p.layers[0].media_type, DOCKER_LAYER_GZIP);
        // an image is not a plugin
        let img = m.replace(PLUGIN_CONFIG, crate::manifest::DOCKER_CONFIG);
        assert_eq!(plugin_manifest(&fetched(&img, DOCKER_MANIFEST)).unwrap_err(), "fetched plugin image but plugin config is missing");
        let list = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(plugin_manifest(&fetched(list, crate::manifest::DOCKER_LIST)).is_err());
        // what push writes has Moby's shape, key for key
        let d = "sha256:681d613428b87e767f4bd7356723cb4484177a080dda121b4ba05fee1d7d8a8a";
        let l = "sha256:a828f3fc74e929ee9fc5cea92544013b92db29fd8bf200fa6fb79fbe3f64e743";
        let ours = PushManifest {
            schema_version: 2,
            config: PushDescriptor { media_type: PLUGIN_CONFIG, digest: d, size: 961 },
            layers: vec![PushDescriptor { media_type: DOCKER_LAYER_GZIP, digest: l, size: 152 }],
            media_type: DOCKER_MANIFEST,
        };
        assert_eq!(serde_json::to_string(&ours).unwrap(), m);
    }
}
