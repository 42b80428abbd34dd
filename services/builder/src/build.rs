//! `docker build` with the classic builder: one image per step, Docker's output
//! (`Step N/M : ...`, ` ---> id`), Docker's cache rules, multi-stage builds.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bus::images::{ImagesApi, ImagesClient};
use berth_bus::runtime::{RuntimeApi, RuntimeClient};
use berth_bus::storage::{StorageApi, StorageClient};
use berth_bus::{Bus, Sink};
use bus_schema::BusStream;
use futures_util::StreamExt;
use bus_schema::images::{HistoryEntry, ImageCreateFromLayer, ImageInspect, ImagePull, ImageResolve, ImageTag, JsonMessage, ResolvedImage};
use bus_schema::runtime::{ContainerAttach, ContainerCreate, ContainerRemove, ContainerStart, ContainerWait};
use bus_schema::storage::{LayerApplied, RwLayerCommit, RwLayerCreate, RwLayerMount, RwLayerRemove, RwLayerUnmount};
use bus_schema::stream::ByteChunk;
use bus_schema::{builder::ImageBuild, docker, BusError, ErrorKind};
use sha2::{Digest, Sha256};

use crate::config::{apply, command, default_shell, env_map};
use crate::context;
use crate::dockerfile::{self, Instruction};
use crate::shell::expand;

/// Proxy build args Docker accepts without an ARG instruction.
const PREDEFINED_ARGS: &[&str] = &["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"];

pub struct Builder {
    pub bus: Bus,
    pub storage: StorageClient,
    pub images: ImagesClient,
    pub runtime: RuntimeClient,
    pub dir: PathBuf,
    cache: std::sync::Mutex<HashMap<String, String>>,
}

/// A failed build: the message and the code Docker puts in `errorDetail`.
pub struct BuildError {
    pub message: String,
    pub code: i64,
    /// Failed before the first step (the context, the Dockerfile): Moby answers these
    /// with an HTTP status (parse errors 400, no Dockerfile 500), not a 200 stream.
    pub early: Option<ErrorKind>,
}

impl From<BusError> for BuildError {
    fn from(e: BusError) -> Self {
        BuildError { message: e.message, code: 1, early: None }
    }
}

impl From<String> for BuildError {
    fn from(message: String) -> Self {
        BuildError { message, code: 1, early: None }
    }
}

impl BuildError {
    fn early(kind: ErrorKind, message: impl Into<String>) -> BuildError {
        BuildError { message: message.into(), code: 1, early: Some(kind) }
    }
}

type R<T> = Result<T, BuildError>;

struct Stage {
    name: Option<String>,
    image: Option<String>,
    chain: Option<String>,
    config: docker::ImageConfig,
    args: HashMap<String, String>,
    cmd_set: bool,
}

struct Out<'a> {
    w: &'a mut Sink<JsonMessage>,
    quiet: bool,
    /// `--cache-from`: when given, only these images and their parents serve the
    /// cache (Moby's classic builder then ignores the local cache).
    cache_sources: Vec<String>,
}

impl Out<'_> {
    async fn say(&mut self, s: impl Into<String>) -> Result<(), BusError> {
        if self.quiet {
            return Ok(());
        }
        self.w.send(JsonMessage::stream(s)).await
    }
}

fn short(id: &str) -> &str {
    let h = id.trim_start_matches("sha256:");
    &h[..h.len().min(12)]
}

impl Builder {
    pub fn new(bus: Bus, dir: PathBuf) -> Builder {
        let cache = std::fs::read(dir.join("cache.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Builder {
            storage: StorageClient::new(bus.clone()),
            images: ImagesClient::new(bus.clone()),
            runtime: RuntimeClient::new(bus.clone()),
            bus,
            dir,
            cache: std::sync::Mutex::new(cache),
        }
    }

    fn cache_get(&self, key: &str) -> Option<String> {
        self.cache.lock().unwrap().get(key).cloned()
    }

    fn cache_put(&self, key: String, id: String) {
        let mut c = self.cache.lock().unwrap();
        c.insert(key, id);
        if let Ok(b) = serde_json::to_vec(&*c) {
            let _ = berth_config::paths::write_atomic(&self.dir.join("cache.json"), &b);
        }
    }

    pub fn prune_cache(&self) -> usize {
        let mut c = self.cache.lock().unwrap();
        let n = c.len();
        c.clear();
        let _ = std::fs::remove_file(self.dir.join("cache.json"));
        n
    }

    /// Run a build: receive the context, then the steps. The output ends with the
    /// image ID in `aux` or with an error message carrying Docker's code.
    pub async fn build(self: &Arc<Self>, req: ImageBuild, input: BusStream<ByteChunk>, w: &mut Sink<JsonMessage>) -> R<String> {
        let (ctx, df, guard) = self.prepare(&req, input).await.map_err(|mut e| {
            e.early.get_or_insert(ErrorKind::Internal);
            e
        })?;
        let res = self.run(&req, &df, &ctx, w).await;
        drop(guard);
        res
    }

    /// The context unpacked and the Dockerfile parsed, before anything is streamed.
    async fn prepare(&self, req: &ImageBuild, mut input: BusStream<ByteChunk>) -> R<(PathBuf, dockerfile::Dockerfile, TmpGuard)> {
        let id = crate::new_id();
        let tmp = context::tmp_dir(&self.dir, &id);
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let guard = TmpGuard(tmp.clone());
        if let Some(remote) = req.remote.as_deref().filter(|r| !r.is_empty()) {
            return Err(format!("remote build contexts are not supported by this engine: {remote}").into());
        }
        // the context
        let tar = tmp.join("context.tar");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tar).map_err(|e| e.to_string())?;
            while let Some(c) = input.next().await {
                let c = c?;
                f.write_all(&c.0).map_err(|e| e.to_string())?;
            }
        }
        let ctx = tmp.join("ctx");
        let (tar2, ctx2) = (tar.clone(), ctx.clone());
        tokio::task::spawn_blocking(move || context::unpack(&tar2, &ctx2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("Error processing tar file: {e}"))?;
        let _ = std::fs::remove_file(&tar);

        let dfname = if req.dockerfile.is_empty() { "Dockerfile".to_string() } else { req.dockerfile.clone() };
        let mut dfrel = context::clean_rel(&dfname).map_err(|_| format!("Cannot locate specified Dockerfile: {dfname}"))?;
        // the default name falls back to `dockerfile`, as Moby's does
        if dfname == "Dockerfile" && !ctx.join(&dfrel).exists() && ctx.join("dockerfile").exists() {
            dfrel = "dockerfile".into();
        }
        let text = std::fs::read_to_string(ctx.join(&dfrel)).map_err(|_| format!("Cannot locate specified Dockerfile: {dfname}"))?;
        let df = dockerfile::parse(&text).map_err(|e| BuildError::early(ErrorKind::InvalidArgument, e.to_string()))?;
        crate::dockerignore::remove_ignored_build_files(&ctx, &dfrel)?;
        Ok((ctx, df, guard))
    }

    async fn run(self: &Arc<Self>, req: &ImageBuild, df: &dockerfile::Dockerfile, ctx: &Path, w: &mut Sink<JsonMessage>) -> R<String> {
        let mut out = Out { w, quiet: req.quiet, cache_sources: req.cache_from.clone() };
        let total = df.instructions.len();
        let esc = df.escape;
        // build args given by the user, and which were used
        let given: HashMap<String, String> = req.build_args.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect();
        let mut used: HashSet<String> = HashSet::new();
        let mut global_args: HashMap<String, String> = HashMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        let mut stop_after: Option<usize> = None;
        if let Some(t) = req.target.as_deref().filter(|t| !t.is_empty()) {
            // find the stage index of the target
            let mut idx = 0;
            let mut found = None;
            for ins in &df.instructions {
                if ins.cmd == "FROM" {
                    let words: Vec<&str> = ins.rest.split_whitespace().collect();
                    if words.len() == 3 && words[1].eq_ignore_ascii_case("as") && words[2].eq_ignore_ascii_case(t) {
                        found = Some(idx);
                    }
                    idx += 1;
                }
            }
            stop_after = Some(found.ok_or_else(|| format!("failed to reach build target {t} in Dockerfile"))?);
        }
        let mut step = 0;
        for ins in &df.instructions {
            step += 1;
            if ins.cmd == "FROM" {
                if let Some(s) = stop_after {
                    if stages.len() > s {
                        break;
                    }
                }
            }
            out.say(format!("Step {step}/{total} : {}\n", ins.original)).await?;
            if ins.cmd == "ARG" && stages.is_empty() {
                let (k, v) = arg_decl(&ins.rest, &global_args, esc)?;
                let val = given.get(&k).cloned().or(v);
                used.insert(k.clone());
                if let Some(val) = val {
                    global_args.insert(k, val);
                }
                continue;
            }
            if ins.cmd == "FROM" {
                let st = self.from(req, ins, &global_args, &stages, esc, &mut out).await?;
                stages.push(st);
                let st = stages.last().unwrap();
                out.say(format!(" ---> {}\n", st.image.as_deref().map(short).unwrap_or(""))).await?;
                // ONBUILD triggers of the base
                let triggers = st.config.on_build.clone().unwrap_or_default();
                if !triggers.is_empty() {
                    out.say(format!("# Executing {} build trigger{}\n", triggers.len(), if triggers.len() == 1 { "" } else { "s" })).await?;
                    let st = stages.last_mut().unwrap();
                    st.config.on_build = None;
                    for t in triggers {
                        let tdf = dockerfile::parse(&format!("{t}\n")).map_err(|e| e.to_string())?;
                        let tins = tdf.instructions[0].clone();
                        self.step(req, &tins, st, ctx, &given, &mut used, esc, &mut out, &[]).await?;
                    }
                }
                continue;
            }
            let n = stages.len().saturating_sub(1);
            let (done, rest) = stages.split_at_mut(n);
            let Some(st) = rest.first_mut() else {
                return Err(format!("no build stage in current context").into());
            };
            self.step(req, ins, st, ctx, &given, &mut used, esc, &mut out, done).await?;
        }
        let last = stages.last_mut().ok_or_else(|| "no build stage in current context".to_string())?;
        // --label applies to the final image
        if !req.labels.is_empty() {
            let labels = last.config.labels.get_or_insert_with(HashMap::new);
            labels.extend(req.labels.clone());
            let created_by = format!("/bin/sh -c #(nop)  LABEL {}", req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
            self.commit(last, None, created_by).await?;
        }
        let unused: Vec<String> = given.keys().filter(|k| !used.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str())).cloned().collect();
        if !unused.is_empty() {
            let mut u = unused;
            u.sort();
            out.say(format!("[Warning] One or more build-args [{}] were not consumed\n", u.join(" "))).await?;
        }
        let id = last.image.clone().ok_or_else(|| "no image was built".to_string())?;
        if out.quiet {
            // `-q`: the image ID alone, as a stream line (the CLI prints it)
            out.w.send(JsonMessage::stream(format!("{id}\n"))).await?;
        } else {
            out.w
                .send(JsonMessage { aux: Some(serde_json::json!({ "ID": id })), ..Default::default() })
                .await?;
        }
        out.say(format!("Successfully built {}\n", short(&id))).await?;
        for t in &req.tags {
            let (repo, tag) = split_tag(t);
            self.images.image_tag(ImageTag { source: id.clone(), repo: repo.clone(), tag: Some(tag.clone()) }).await?;
            out.say(format!("Successfully tagged {repo}:{tag}\n")).await?;
        }
        Ok(id)
    }

    async fn from(
        &self,
        req: &ImageBuild,
        ins: &Instruction,
        global_args: &HashMap<String, String>,
        stages: &[Stage],
        esc: char,
        out: &mut Out<'_>,
    ) -> R<Stage> {
        let words: Vec<String> = ins.rest.split_whitespace().map(str::to_string).collect();
        let (base, name) = match words.as_slice() {
            [b] => (b.clone(), None),
            [b, a, n] if a.eq_ignore_ascii_case("as") => (b.clone(), Some(n.to_ascii_lowercase())),
            _ => return Err("FROM requires either one or three arguments".to_string().into()),
        };
        let base = expand(&base, global_args, esc)?;
        if base.is_empty() {
            return Err("base name (${..}) should not be blank".to_string().into());
        }
        let mut st = Stage { name, image: None, chain: None, config: docker::ImageConfig::default(), args: HashMap::new(), cmd_set: false };
        if base == "scratch" {
            return Ok(st);
        }
        // an earlier stage by name
        if let Some(prev) = stages.iter().find(|s| s.name.as_deref() == Some(base.to_ascii_lowercase().as_str())) {
            st.image = prev.image.clone();
            st.chain = prev.chain.clone();
            st.config = prev.config.clone();
            return Ok(st);
        }
        let img = self.resolve_or_pull(&base, req.pull, ins.flag("platform").or(req.platform.as_deref()), out).await?;
        st.image = Some(img.id.clone());
        st.chain = img.chain_id.clone();
        st.config = img.config.clone();
        Ok(st)
    }

    async fn resolve_or_pull(&self, reference: &str, pull: bool, platform: Option<&str>, out: &mut Out<'_>) -> R<ResolvedImage> {
        if !pull {
            match self.images.image_resolve(ImageResolve { reference: reference.to_string() }).await {
                Ok(i) => return Ok(i),
                Err(e) if e.is(ErrorKind::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (_, mut rd) = self
            .images
            .image_pull(ImagePull { reference: reference.to_string(), platform: platform.map(str::to_string), auth: None })
            .await?;
        while let Some(m) = rd.next().await {
            let m = m?;
            if !out.quiet && m.error.is_none() {
                out.w.send(m).await?;
            }
        }
        Ok(self.images.image_resolve(ImageResolve { reference: reference.to_string() }).await?)
    }

    /// The variables visible to substitution: stage ARGs, then ENV (ENV wins).
    fn vars(st: &Stage) -> HashMap<String, String> {
        let mut v = st.args.clone();
        v.extend(env_map(&st.config));
        v
    }

    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        req: &ImageBuild,
        ins: &Instruction,
        st: &mut Stage,
        ctx: &Path,
        given: &HashMap<String, String>,
        used: &mut HashSet<String>,
        esc: char,
        out: &mut Out<'_>,
        done: &[Stage],
    ) -> R<()> {
        match ins.cmd.as_str() {
            "ARG" => {
                let vars = Self::vars(st);
                let (k, v) = arg_decl(&ins.rest, &vars, esc)?;
                used.insert(k.clone());
                let val = given.get(&k).cloned().or(v);
                if let Some(val) = val {
                    st.args.insert(k, val);
                }
                // ARG changes no image; Docker still prints the step's image
                out.say(format!(" ---> {}\n", st.image.as_deref().map(short).unwrap_or(""))).await?;
                Ok(())
            }
            "RUN" => self.run_step(req, ins, st, esc, out).await,
            "COPY" | "ADD" => self.copy_step(ins, st, ctx, esc, out, done).await,
            _ => {
                let vars = Self::vars(st);
                let applied = apply(&mut st.config, ins, &vars, esc, &mut st.cmd_set)?;
                let key = cache_key(st.image.as_deref(), &applied.created_by, "");
                if !req.no_cache {
                    if let Some(id) = self.cached(&key, &out.cache_sources).await {
                        st.image = Some(id.clone());
                        out.say(format!(" ---> Using cache\n ---> {}\n", short(&id))).await?;
                        return Ok(());
                    }
                }
                let id = self.commit(st, None, applied.created_by).await?;
                self.cache_put(key, id.clone());
                out.say(format!(" ---> {}\n", short(&id))).await?;
                Ok(())
            }
        }
    }

    async fn cached(&self, key: &str, sources: &[String]) -> Option<String> {
        let id = self.cache_get(key)?;
        self.images.image_inspect(ImageInspect { name: id.clone() }).await.ok()?;
        if !sources.is_empty() && !self.in_cache_sources(&id, sources).await {
            return None;
        }
        step_metric("hit");
        Some(id)
    }

    /// Is `id` one of `sources` or a parent of one (the images `--cache-from` names)?
    async fn in_cache_sources(&self, id: &str, sources: &[String]) -> bool {
        for s in sources {
            let mut cur = match self.images.image_inspect(ImageInspect { name: s.clone() }).await {
                Ok(i) => i,
                Err(_) => continue,
            };
            for _ in 0..10_000 {
                if cur.inspect.id.as_deref() == Some(id) {
                    return true;
                }
                let Some(p) = Some(cur.parent.clone()).filter(|p| !p.is_empty()) else { break };
                cur = match self.images.image_inspect(ImageInspect { name: p }).await {
                    Ok(i) => i,
                    Err(_) => break,
                };
            }
        }
        false
    }

    /// A new image for the stage: its config and, optionally, a new layer.
    async fn commit(&self, st: &mut Stage, layer: Option<LayerApplied>, created_by: String) -> R<String> {
        step_metric("miss");
        // a layer without changes is not added to the image (the images service
        // lets it go, as Moby's CommitImage): the stage stays on its chain
        let new_chain = layer.as_ref().filter(|l| l.diff_id != bus_schema::storage::EMPTY_LAYER_DIFF_ID).map(|l| l.chain_id.clone());
        let empty = new_chain.is_none();
        let id = self
            .images
            .image_create_from_layer(ImageCreateFromLayer {
                parent: st.image.clone(),
                layer,
                config: st.config.clone(),
                history: HistoryEntry { created_by, comment: None, author: None, empty_layer: empty },
                author: None,
                comment: None,
                tags: vec![],
                record_parent: true,
            })
            .await?;
        st.image = Some(id.clone());
        if new_chain.is_some() {
            st.chain = new_chain;
        }
        Ok(id)
    }

    async fn run_step(&self, req: &ImageBuild, ins: &Instruction, st: &mut Stage, _esc: char, out: &mut Out<'_>) -> R<()> {
        let shell = st.config.shell.clone().unwrap_or_else(default_shell);
        let cmd = command(ins, &shell);
        let created_by = cmd.join(" ");
        let mut env = st.config.env.clone().unwrap_or_default();
        let mut argkeys: Vec<&String> = st.args.keys().collect();
        argkeys.sort();
        for k in &argkeys {
            if !env.iter().any(|e| e.split('=').next() == Some(k.as_str())) {
                env.push(format!("{k}={}", st.args[*k]));
            }
        }
        let argsig: String = argkeys.iter().map(|k| format!("{k}={}", st.args[*k])).collect::<Vec<_>>().join(" ");
        let key = cache_key(st.image.as_deref(), &created_by, &argsig);
        if !req.no_cache {
            if let Some(id) = self.cached(&key, &out.cache_sources).await {
                if let Ok(img) = self.images.image_resolve(ImageResolve { reference: id.clone() }).await {
                    st.image = Some(id.clone());
                    st.chain = img.chain_id;
                    out.say(format!(" ---> Using cache\n ---> {}\n", short(&id))).await?;
                    return Ok(());
                }
            }
        }
        let image = st.image.clone().ok_or_else(|| "no image to run the command in (FROM scratch has no shell)".to_string())?;
        let body = docker::ContainerCreateBody {
            image: Some(image),
            cmd: Some(cmd.clone()),
            entrypoint: Some(vec![]),
            env: Some(env),
            user: st.config.user.clone(),
            working_dir: st.config.working_dir.clone(),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            labels: Some(HashMap::new()),
            host_config: Some(docker::HostConfig {
                network_mode: req.network_mode.clone().filter(|m| !m.is_empty()),
                memory: req.memory.filter(|m| *m > 0),
                cpu_shares: req.cpu_shares.filter(|c| *c > 0),
                shm_size: req.shm_size.filter(|s| *s > 0),
                extra_hosts: if req.extra_hosts.is_empty() { None } else { Some(req.extra_hosts.clone()) },
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self.runtime.container_create(ContainerCreate { name: None, body, platform: None, plugin: None }).await?;
        let cid = created.id;
        out.say(format!(" ---> Running in {}\n", &cid[..12])).await?;
        let res = self.run_container(&cid, out).await;
        let code = match res {
            Ok(c) => c,
            Err(e) => {
                self.remove_container(&cid).await;
                return Err(e);
            }
        };
        if code != 0 {
            if req.force_rm {
                self.remove_container(&cid).await;
            }
            return Err(BuildError { message: format!("The command '{created_by}' returned a non-zero code: {code}"), code, early: None });
        }
        let layer = self.storage.rw_layer_commit(RwLayerCommit { id: cid.clone() }).await;
        if req.rm || req.force_rm {
            self.remove_container(&cid).await;
            out.say(format!("Removing intermediate container {}\n", &cid[..12])).await?;
        }
        let layer = layer?;
        let id = self.commit(st, Some(layer), created_by).await?;
        self.cache_put(key, id.clone());
        out.say(format!(" ---> {}\n", short(&id))).await?;
        Ok(())
    }

    /// Attach, wait, start, stream the output; answers the exit code.
    async fn run_container(&self, cid: &str, out: &mut Out<'_>) -> R<i64> {
        // no stdin: the input ends at once
        let (_, mut rd) = self
            .runtime
            .container_attach(
                ContainerAttach {
                    id: cid.to_string(),
                    stream: true,
                    logs: false,
                    stdin: false,
                    stdout: true,
                    stderr: true,
                    detach_keys: None,
                },
                Box::pin(futures_util::stream::empty()),
            )
            .await?;
        let (_, mut wait) = self.runtime.container_wait(ContainerWait { id: cid.to_string(), condition: "next-exit".into() }).await?;
        self.runtime.container_start(ContainerStart { id: cid.to_string() }).await?;
        while let Some(c) = rd.next().await {
            let Ok(c) = c else { break };
            let text = String::from_utf8_lossy(&c.data).into_owned();
            // stderr in red, each write wrapped as Moby's NewStderrWriter wraps it
            let text = if c.stream == 2 { format!("\x1b[91m{text}\x1b[0m") } else { text };
            out.say(text).await?;
        }
        let code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(e)) => return Err(e.into()),
            None => -1,
        };
        Ok(code)
    }

    async fn remove_container(&self, cid: &str) {
        let _ = self.runtime.container_remove(ContainerRemove { id: cid.to_string(), force: true, volumes: true, link: false }).await;
    }

    async fn copy_step(&self, ins: &Instruction, st: &mut Stage, ctx: &Path, esc: char, out: &mut Out<'_>, done: &[Stage]) -> R<()> {
        let is_add = ins.cmd == "ADD";
        let vars = Self::vars(st);
        let words: Vec<String> = match &ins.json {
            Some(v) => v.iter().map(|s| expand(s, &vars, esc)).collect::<Result<_, _>>()?,
            None => dockerfile::split_words(&expand(&ins.rest, &vars, esc)?, esc).iter().map(|w| dockerfile::unquote(w, esc)).collect(),
        };
        if words.len() < 2 {
            return Err(format!("{} requires at least two arguments, but only one was provided. Destination could not be determined.", ins.cmd).into());
        }
        let (srcs, dest) = words.split_at(words.len() - 1);
        let dest = dest[0].clone();
        // where sources come from: the context, or an earlier stage / image
        let from = ins.flag("from").map(|f| expand(f, &vars, esc)).transpose()?;
        let mut from_layer: Option<(String, PathBuf)> = None;
        let src_root: PathBuf = match from.as_deref() {
            None => ctx.to_path_buf(),
            Some(f) => {
                let (image, chain) = match done.iter().enumerate().find(|(i, s)| s.name.as_deref() == Some(f.to_ascii_lowercase().as_str()) || f == i.to_string()) {
                    Some((_, s)) => (s.image.clone(), s.chain.clone()),
                    None => {
                        let img = self.resolve_or_pull(f, false, None, out).await?;
                        (Some(img.id), img.chain_id)
                    }
                };
                let _ = image;
                let lid = format!("build-from-{}", crate::new_id());
                self.storage.rw_layer_create(RwLayerCreate { id: lid.clone(), parent: chain }).await?;
                let path = self.storage.rw_layer_mount(RwLayerMount { id: lid.clone() }).await?.path;
                from_layer = Some((lid, PathBuf::from(&path)));
                PathBuf::from(path)
            }
        };
        let result = self.copy_into_new_layer(ins, st, &src_root, from.is_some(), srcs, &dest, is_add, out).await;
        if let Some((lid, _)) = from_layer {
            let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: lid.clone() }).await;
            let _ = self.storage.rw_layer_remove(RwLayerRemove { id: lid }).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_into_new_layer(
        &self,
        ins: &Instruction,
        st: &mut Stage,
        src_root: &Path,
        from_image: bool,
        srcs: &[String],
        dest: &str,
        is_add: bool,
        out: &mut Out<'_>,
    ) -> R<()> {
        let what = ins.cmd.as_str();
        let mut matched = Vec::new();
        // ADD <url>: downloaded beside the context for this step (never extracted)
        let mut remote = Vec::new();
        let _remote_dir = TmpGuard(src_root.join(".berth-remote"));
        for s in srcs {
            if is_add && (s.starts_with("http://") || s.starts_with("https://")) {
                let rel = download(s, &_remote_dir.0, src_root).await.map_err(|e| format!("{what} failed: {e}"))?;
                remote.push(rel.clone());
                matched.push(rel);
                continue;
            }
            let found = if from_image {
                // the stage's root resolves its own links (the kernel, inside that root)
                let root = berth_fsutil::InRoot::open(src_root).map_err(|e| e.to_string())?;
                if root.resolve_nofollow(s).is_err() {
                    return Err(format!("{what} failed: stat {s}: file does not exist").into());
                }
                vec![berth_fsutil::clean(s).trim_start_matches('/').to_string()]
            } else {
                context::matches(src_root, s).map_err(|e| format!("{what} failed: {e}"))?
            };
            matched.extend(found);
        }
        let workdir = st.config.working_dir.clone().unwrap_or_else(|| "/".into());
        let dest_abs = if dest.starts_with('/') { dest.to_string() } else { format!("{}/{}", workdir.trim_end_matches('/'), dest) };
        let dest_is_dir = dest.ends_with('/') || dest == "." || matched.len() > 1;
        if matched.len() > 1 && !dest.ends_with('/') {
            return Err(format!("When using {what} with more than one source file, the destination must be a directory and end with a /").into());
        }
        let hash = {
            let (root, m) = (src_root.to_path_buf(), matched.clone());
            tokio::task::spawn_blocking(move || context::hash(&root, &m)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?
        };
        let is_file = |m: &str| {
            berth_fsutil::InRoot::open(src_root)
                .and_then(|r| r.resolve(m))
                .and_then(|fd| berth_fsutil::at::fstat(std::os::fd::AsFd::as_fd(&fd)))
                .is_ok_and(|st| berth_fsutil::at::file_type(&st) == rustix::fs::FileType::RegularFile)
        };
        let kind = if matched.len() == 1 && is_file(&matched[0]) { "file" } else { "dir" };
        let created_by = format!("/bin/sh -c #(nop) {what} {kind}:{hash} in {dest} ");
        let chown = ins.flag("chown").map(str::to_string).unwrap_or_default();
        let chmod = ins.flag("chmod").map(str::to_string).unwrap_or_default();
        let key = cache_key(st.image.as_deref(), &created_by, &format!("{chown}|{chmod}"));
        if let Some(id) = self.cached(&key, &out.cache_sources).await {
            if let Ok(img) = self.images.image_resolve(ImageResolve { reference: id.clone() }).await {
                st.image = Some(id.clone());
                st.chain = img.chain_id;
                out.say(format!(" ---> Using cache\n ---> {}\n", short(&id))).await?;
                return Ok(());
            }
        }
        // a scratch layer on top of the stage's image
        let lid = format!("build-{}", crate::new_id());
        self.storage.rw_layer_create(RwLayerCreate { id: lid.clone(), parent: st.chain.clone() }).await?;
        let res: R<LayerApplied> = async {
            let root = PathBuf::from(self.storage.rw_layer_mount(RwLayerMount { id: lid.clone() }).await?.path);
            let chmod_v = if chmod.is_empty() { None } else { Some(u32::from_str_radix(&chmod, 8).map_err(|_| format!("invalid chmod parameter: {chmod}"))?) };
            let owner = if chown.is_empty() { None } else { Some(resolve_owner(&root, &chown)?) };
            let (src_root, matched, dest_abs, remote) = (src_root.to_path_buf(), matched.clone(), dest_abs.clone(), remote.clone());
            let r2 = root.clone();
            let copied = tokio::task::spawn_blocking(move || -> Result<(), String> {
                let opts = context::CopyOpts { owner, chmod: chmod_v };
                // both sides resolved by the kernel inside their roots, copied on descriptors
                let from = berth_fsutil::InRoot::open(&src_root).map_err(|e| e.to_string())?;
                let into = berth_fsutil::InRoot::open(&r2).map_err(|e| e.to_string())?;
                for m in &matched {
                    let src = format!("/{m}");
                    let is_dir = from
                        .parent(&src)
                        .ok()
                        .and_then(|(d, n)| berth_fsutil::at::lstat(std::os::fd::AsFd::as_fd(&d), std::ffi::OsStr::new(&n)).ok().flatten())
                        .is_some_and(|st| berth_fsutil::at::is_dir(&st));
                    let target_rel = if is_dir || !dest_is_dir {
                        dest_abs.clone()
                    } else {
                        format!("{}/{}", dest_abs.trim_end_matches('/'), Path::new(m).file_name().unwrap_or_default().to_string_lossy())
                    };
                    if is_add && !is_dir && !remote.contains(m) {
                        let into_dir = if dest_is_dir { dest_abs.clone() } else { target_rel.clone() };
                        if context::extract_archive(&from, &src, &into, &into_dir, &opts).map_err(|e| e.to_string())? {
                            continue;
                        }
                    }
                    context::copy_into(&from, &src, &into, &target_rel, &opts).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
            let _ = self.storage.rw_layer_unmount(RwLayerUnmount { id: lid.clone() }).await;
            copied.map_err(|e| format!("{what} failed: {e}"))?;
            Ok(self.storage.rw_layer_commit(RwLayerCommit { id: lid.clone() }).await?)
        }
        .await;
        let _ = self.storage.rw_layer_remove(RwLayerRemove { id: lid }).await;
        let layer = res?;
        let id = self.commit(st, Some(layer), created_by).await?;
        self.cache_put(key, id.clone());
        out.say(format!(" ---> {}\n", short(&id))).await?;
        Ok(())
    }
}

/// Fetch an `ADD` URL into `dir` (under `ctx`): the file is named after the URL's
/// last path segment, mode 0600 as Docker makes it. Returns its path relative to `ctx`.
async fn download(url: &str, dir: &Path, ctx: &Path) -> Result<String, String> {
    let name = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !n.contains(':'))
        .unwrap_or("__unnamed__")
        .to_string();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| format!("error downloading {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("invalid response status {}", resp.status().as_u16()));
    }
    // the directory sits in the context the client sent: whatever the client put there
    // under that name (a link to a host directory) goes first; nothing else writes there
    // (the builder is the context's only writer once unpacked: removing, then creating
    // with O_EXCL, leaves no link to follow)
    let remove = |p: &Path| -> Result<(), String> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(|e| e.to_string()),
            Ok(_) => std::fs::remove_file(p).map_err(|e| e.to_string()),
            Err(_) => Ok(()),
        }
    };
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        remove(dir)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join(&name);
    remove(&path)?;
    let mut f = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await.map_err(|e| e.to_string())?;
    let mut resp = resp;
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("error downloading {url}: {e}"))? {
        f.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    f.flush().await.map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    Ok(path.strip_prefix(ctx).map_err(|e| e.to_string())?.to_string_lossy().into_owned())
}

struct TmpGuard(PathBuf);
impl Drop for TmpGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ARG NAME[=default]`.
fn arg_decl(rest: &str, vars: &HashMap<String, String>, esc: char) -> Result<(String, Option<String>), String> {
    let r = rest.trim();
    match r.split_once('=') {
        Some((k, v)) => Ok((k.trim().to_string(), Some(dockerfile::unquote(&expand(v, vars, esc)?, esc)))),
        None => Ok((r.to_string(), None)),
    }
}

/// Build steps done, by whether the cache served them.
fn step_metric(cache: &str) {
    berth_telemetry::metrics::counter_add("berth_build_steps_total", "Build steps, by cache hit or miss.", &[("cache", cache)], 1.0);
}

fn cache_key(parent: Option<&str>, created_by: &str, extra: &str) -> String {
    let mut h = Sha256::new();
    h.update(parent.unwrap_or("scratch").as_bytes());
    h.update(b"\n");
    h.update(created_by.as_bytes());
    h.update(b"\n");
    h.update(extra.as_bytes());
    hex::encode(h.finalize())
}

/// `repo[:tag]` with `latest` by default (a port in the registry part is not a tag).
pub fn split_tag(t: &str) -> (String, String) {
    let t = t.split('@').next().unwrap_or(t);
    match t.rfind(':') {
        Some(i) if !t[i + 1..].contains('/') => (t[..i].to_string(), t[i + 1..].to_string()),
        _ => (t.to_string(), "latest".to_string()),
    }
}

/// `--chown user[:group]` resolved in the image's /etc/passwd and /etc/group.
fn resolve_owner(root: &Path, spec: &str) -> Result<context::Owner, String> {
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    let read = |f: &str| berth_fsutil::read_in_root(root, f).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lookup = |text: &str, name: &str, field: usize| -> Option<u32> {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() == Some(&name) {
                f.get(field).and_then(|x| x.parse().ok())
            } else {
                None
            }
        })
    };
    let passwd = read("/etc/passwd");
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => lookup(&passwd, u, 2).ok_or_else(|| format!("unable to convert uid/gid chown string to host mapping: can't find uid for user {u}: no such user: {u}"))?,
    };
    let gid = if g.is_empty() {
        if u.parse::<u32>().is_ok() {
            uid
        } else {
            lookup(&passwd, u, 3).unwrap_or(uid)
        }
    } else {
        match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(&read("/etc/group"), g, 2).ok_or_else(|| format!("unable to convert uid/gid chown string to host mapping: can't find gid for group {g}: no such group: {g}"))?,
        }
    };
    Ok(context::Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn tags() {
        assert_eq!(split_tag("x"), ("x".into(), "latest".into()));
        assert_eq!(split_tag("x:1"), ("x".into(), "1".into()));
        assert_eq!(split_tag("localhost:5000/x"), ("localhost:5000/x".into(), "latest".into()));
        assert_eq!(split_tag("localhost:5000/x:2"), ("localhost:5000/x".into(), "2".into()));
    }
}
