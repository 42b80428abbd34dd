//! The layer store: image layers named by chain ID, their metadata and tar-split
//! under `<driver home>/layerdb/<hex>/`, reference counts, garbage collection, and
//! the LayerApply data path (decompress, hash, extract, verify, commit).
//!
//! Snapshot keys: a committed layer is the snapshot named by its chain ID; an apply
//! in progress is `staging-<random>` (removed at start if the service died mid-apply).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bus_schema::storage::{LayerApplied, LayerInfo};
use bus_schema::BusError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apply::{apply_tar, ApplyOpts};
use crate::driver::{CommitOpts, DiffSource, Driver, DriverError, Kind};

pub const STAGING_PREFIX: &str = "staging-";
const SPLIT_FILE: &str = "tar-split.zst";
const META_FILE: &str = "meta.json";
/// How long a child waits for a parent that nothing is applying yet.
const MISSING_PARENT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub chain_id: String,
    pub diff_id: String,
    pub parent: Option<String>,
    pub size: u64,
    pub references: u32,
    pub created: i64,
}

impl LayerMeta {
    pub fn info(&self) -> LayerInfo {
        LayerInfo {
            chain_id: self.chain_id.clone(),
            diff_id: self.diff_id.clone(),
            parent: self.parent.clone(),
            size: self.size,
            references: self.references,
        }
    }
}

/// `chain(L1) = diff_id(L1)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))`.
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{p} {diff_id}").as_bytes()))
        ),
    }
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

pub fn not_found(chain: &str) -> BusError {
    BusError::not_found(format!("layer {chain} does not exist"))
}

struct Inflight {
    id: u64,
    expected: Option<String>,
}

#[derive(Default)]
struct State {
    layers: HashMap<String, LayerMeta>,
    inflight: Vec<Inflight>,
    next_id: u64,
    /// Container layers standing on a layer (they hold it like a child).
    rw_holds: HashMap<String, u32>,
}

pub struct LayerStore {
    driver: Arc<dyn Driver>,
    dir: PathBuf,
    state: Mutex<State>,
    version: tokio::sync::watch::Sender<u64>,
    devices: bool,
}

enum ParentState {
    Ready,
    Pending,
    Missing,
}

/// Input of an apply: chunks from the caller, failing if the caller failed.
pub type Input = tokio::sync::mpsc::Receiver<Result<Vec<u8>, BusError>>;

impl LayerStore {
    /// Open the store and reconcile it with the driver: staging snapshots, snapshots
    /// without metadata and metadata without snapshots are what a crash leaves; they go.
    pub fn open(driver: Arc<dyn Driver>) -> Result<LayerStore, BusError> {
        let dir = driver.home().join("layerdb");
        std::fs::create_dir_all(&dir)
            .map_err(|e| BusError::internal(format!("creating {}: {e}", dir.display())))?;
        let mut layers = HashMap::new();
        for e in std::fs::read_dir(&dir)
            .map_err(|e| BusError::internal(format!("reading {}: {e}", dir.display())))?
            .flatten()
        {
            let p = e.path().join(META_FILE);
            match crate::util::read_json::<LayerMeta>(&p) {
                Ok(m) => {
                    layers.insert(m.chain_id.clone(), m);
                }
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "dropping layer without readable metadata");
                    let _ = crate::util::remove_tree(&e.path());
                }
            }
        }
        let mut snaps = HashMap::new();
        driver
            .walk(&mut |i| {
                snaps.insert(i.name.clone(), i.clone());
            })
            .map_err(BusError::from)?;
        // Staging leftovers.
        for (name, _) in snaps.iter().filter(|(n, _)| n.starts_with(STAGING_PREFIX)) {
            tracing::info!(snapshot = %name, "removing a half-applied layer");
            let _ = driver.remove(name);
        }
        // Metadata whose snapshot is gone (and, in turn, its children).
        loop {
            let broken: Vec<String> = layers
                .values()
                .filter(|m| {
                    !snaps
                        .get(&m.chain_id)
                        .is_some_and(|s| s.kind == Kind::Committed)
                        || m.parent.as_ref().is_some_and(|p| !layers.contains_key(p))
                })
                .map(|m| m.chain_id.clone())
                .collect();
            if broken.is_empty() {
                break;
            }
            for c in broken {
                tracing::warn!(layer = %c, "dropping layer whose data is missing");
                layers.remove(&c);
                let _ = crate::util::remove_tree(&dir.join(hex_of(&c)));
            }
        }
        // Committed layer snapshots without metadata (an interrupted commit), leaves first.
        loop {
            let mut progress = false;
            let mut orphans: Vec<&String> = snaps
                .keys()
                .filter(|n| n.starts_with("sha256:") && !layers.contains_key(*n))
                .collect();
            orphans.sort();
            let mut removed = Vec::new();
            for o in orphans {
                if driver.remove(o).is_ok() {
                    removed.push(o.clone());
                    progress = true;
                }
            }
            for r in removed {
                snaps.remove(&r);
            }
            if !progress {
                break;
            }
        }
        let (version, _) = tokio::sync::watch::channel(0);
        Ok(LayerStore {
            driver,
            dir,
            state: Mutex::new(State {
                layers,
                ..Default::default()
            }),
            version,
            devices: unsafe { libc::geteuid() } == 0,
        })
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    fn layer_dir(&self, chain: &str) -> PathBuf {
        self.dir.join(hex_of(chain))
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub fn stat(&self, chain: &str) -> Result<LayerMeta, BusError> {
        self.state
            .lock()
            .unwrap()
            .layers
            .get(chain)
            .cloned()
            .ok_or_else(|| not_found(chain))
    }

    pub fn list(&self) -> Vec<LayerMeta> {
        self.state
            .lock()
            .unwrap()
            .layers
            .values()
            .cloned()
            .collect()
    }

    pub fn retain(&self, chain: &str) -> Result<LayerMeta, BusError> {
        let mut st = self.state.lock().unwrap();
        let m = st.layers.get_mut(chain).ok_or_else(|| not_found(chain))?;
        m.references += 1;
        let m = m.clone();
        self.persist(&m)?;
        Ok(m)
    }

    /// Drop a reference and collect what is no longer used; answers removed chain IDs.
    pub fn release(&self, chain: &str) -> Result<Vec<String>, BusError> {
        let mut st = self.state.lock().unwrap();
        let m = st.layers.get_mut(chain).ok_or_else(|| not_found(chain))?;
        if m.references == 0 {
            return Err(BusError::conflict(format!("layer {chain} is not retained")));
        }
        m.references -= 1;
        let m = m.clone();
        self.persist(&m)?;
        let removed = self.gc_locked(&mut st, chain);
        drop(st);
        self.bump();
        Ok(removed)
    }

    /// A container layer now stands on `chain` (it must exist).
    pub fn hold(&self, chain: &str) -> Result<(), BusError> {
        let mut st = self.state.lock().unwrap();
        if !st.layers.contains_key(chain) {
            return Err(not_found(chain));
        }
        *st.rw_holds.entry(chain.to_string()).or_default() += 1;
        Ok(())
    }

    /// Count a container layer found at start without checking (it existed before).
    pub fn restore_hold(&self, chain: &str) {
        *self
            .state
            .lock()
            .unwrap()
            .rw_holds
            .entry(chain.to_string())
            .or_default() += 1;
    }

    /// A container layer on `chain` is gone; collect the layer if nothing else holds it.
    pub fn unhold(&self, chain: &str) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        if let Some(n) = st.rw_holds.get_mut(chain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.rw_holds.remove(chain);
            }
        }
        let r = self.gc_locked(&mut st, chain);
        drop(st);
        self.bump();
        r
    }

    /// Remove `chain` if unreferenced and without children, then its parents in turn.
    fn gc_locked(&self, st: &mut State, chain: &str) -> Vec<String> {
        let mut removed = Vec::new();
        let mut cur = Some(chain.to_string());
        while let Some(c) = cur.take() {
            let Some(m) = st.layers.get(&c) else { break };
            let has_children = st.layers.values().any(|x| x.parent.as_deref() == Some(&c));
            if m.references > 0 || has_children || st.rw_holds.get(&c).copied().unwrap_or(0) > 0 {
                break;
            }
            // Metadata first: if removing the data fails half way, the start-up
            // reconciliation removes the rest.
            let parent = m.parent.clone();
            // The init layer its containers shared goes first.
            match self.driver.remove(&crate::rw::init_key(Some(&c))) {
                Ok(()) | Err(DriverError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(layer = %c, error = %e, "removing the init layer failed");
                    break;
                }
            }
            if let Err(e) = crate::util::remove_tree(&self.layer_dir(&c)) {
                tracing::warn!(layer = %c, error = %e, "removing layer metadata failed");
                break;
            }
            st.layers.remove(&c);
            if let Err(e) = self.driver.remove(&c) {
                tracing::warn!(layer = %c, error = %e, "removing layer data failed; it goes at the next start");
            }
            removed.push(c);
            cur = parent;
        }
        removed
    }

    /// Collect every unreferenced layer (at start).
    pub fn gc_all(&self) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        let candidates: Vec<String> = st
            .layers
            .values()
            .filter(|m| m.references == 0)
            .map(|m| m.chain_id.clone())
            .collect();
        let mut out = Vec::new();
        for c in candidates {
            out.extend(self.gc_locked(&mut st, &c));
        }
        out
    }

    fn persist(&self, m: &LayerMeta) -> Result<(), BusError> {
        let d = self.layer_dir(&m.chain_id);
        crate::util::write_json(&d.join(META_FILE), m, false).map_err(|e| {
            BusError::internal(format!("writing metadata of layer {}: {e}", m.chain_id))
        })
    }

    fn parent_state(&self, parent: &str, me: u64) -> ParentState {
        let st = self.state.lock().unwrap();
        if st.layers.contains_key(parent) {
            return ParentState::Ready;
        }
        if st
            .inflight
            .iter()
            .any(|i| i.id != me && i.expected.as_deref().is_none_or(|e| e == parent))
        {
            return ParentState::Pending;
        }
        ParentState::Missing
    }

    /// Wait until `parent` is committed. A parent nothing is applying yet gets a grace
    /// period (the caller may have sent the child's request first); then it is NotFound.
    /// With `input`, the caller's bytes are spooled to `spool` meanwhile.
    async fn wait_parent(
        &self,
        parent: &str,
        me: u64,
        mut input: Option<(&mut Input, &mut std::fs::File)>,
    ) -> Result<(), BusError> {
        use std::io::Write;
        let mut rx = self.version.subscribe();
        let start = tokio::time::Instant::now();
        let deadline = start + std::time::Duration::from_secs(30 * 60);
        let mut input_done = input.is_none();
        loop {
            let wake = match self.parent_state(parent, me) {
                ParentState::Ready => return Ok(()),
                ParentState::Pending => deadline,
                ParentState::Missing => {
                    let grace = start + MISSING_PARENT_GRACE;
                    if tokio::time::Instant::now() >= grace {
                        return Err(not_found(parent));
                    }
                    grace
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::new(
                    bus_schema::ErrorKind::Timeout,
                    format!("timed out waiting for parent layer {parent}"),
                ));
            }
            tokio::select! {
                c = async { input.as_mut().unwrap().0.recv().await }, if !input_done => match c {
                    Some(Ok(b)) => {
                        let f = &mut input.as_mut().unwrap().1;
                        f.write_all(&b).map_err(|e| BusError::internal(format!("spooling layer data: {e}")))?;
                    }
                    Some(Err(e)) => return Err(e),
                    None => input_done = true,
                },
                r = rx.changed() => { if r.is_err() { return Err(BusError::internal("layer store closed")); } }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// LayerApply: read the diff from `input`, apply it on top of `parent`, verify the
    /// digests, commit. The caller gets one reference. Nothing is kept on failure.
    pub async fn apply(
        self: &Arc<Self>,
        parent: Option<String>,
        media_type: String,
        compressed_digest: Option<String>,
        diff_id: Option<String>,
        mut input: Input,
    ) -> Result<LayerApplied, BusError> {
        for d in [&compressed_digest, &diff_id].into_iter().flatten() {
            if !valid_digest(d) {
                return Err(BusError::invalid(format!(
                    "invalid digest {d:?}: expected sha256:<64 hex>"
                )));
            }
        }
        let _ = media_type; // compression is detected from the bytes, as Docker does
        let expected = diff_id.as_ref().map(|d| chain_id(parent.as_deref(), d));
        let me = {
            let mut st = self.state.lock().unwrap();
            st.next_id += 1;
            let id = st.next_id;
            st.inflight.push(Inflight {
                id,
                expected: expected.clone(),
            });
            id
        };
        let res = self
            .apply_inner(parent, compressed_digest, diff_id, &mut input, me)
            .await;
        self.state.lock().unwrap().inflight.retain(|i| i.id != me);
        self.bump();
        res
    }

    async fn apply_inner(
        self: &Arc<Self>,
        parent: Option<String>,
        compressed_digest: Option<String>,
        diff_id: Option<String>,
        input: &mut Input,
        me: u64,
    ) -> Result<LayerApplied, BusError> {
        let caps = self.driver.capabilities();
        let mut spool: Option<std::fs::File> = None;
        if let Some(p) = &parent {
            if !caps.independent_layers && !matches!(self.parent_state(p, me), ParentState::Ready) {
                // Keep the caller's bytes flowing into a temporary file meanwhile.
                use std::io::Seek;
                let mut f = tempfile::tempfile_in(&self.dir)
                    .map_err(|e| BusError::internal(format!("creating a spool file: {e}")))?;
                self.wait_parent(p, me, Some((input, &mut f))).await?;
                f.rewind()
                    .map_err(|e| BusError::internal(format!("spooling layer data: {e}")))?;
                spool = Some(f);
            }
        }
        let staging = format!("{STAGING_PREFIX}{}", crate::util::random_hex(16));
        let base = if caps.independent_layers {
            None
        } else {
            parent.clone()
        };
        let store = self.clone();
        let st2 = staging.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, BusError>>(16);
        let job = tokio::task::spawn_blocking(move || -> Result<Extracted, BusError> {
            store
                .driver
                .prepare(&st2, base.as_deref())
                .map_err(BusError::from)?;
            let upper = store.driver.upper_dir(&st2).map_err(BusError::from)?;
            let reader = FeedReader {
                spool,
                rx,
                cur: Vec::new(),
                pos: 0,
            };
            extract(
                reader,
                &upper,
                &ApplyOpts {
                    whiteouts: caps.whiteouts,
                    devices: store.devices,
                    split: true,
                },
            )
        });
        // Pump the caller's chunks to the extracting thread.
        let pump = async {
            while let Some(c) = input.recv().await {
                let failed = c.is_err();
                if tx.send(c).await.is_err() || failed {
                    break;
                }
            }
            drop(tx);
        };
        let (res, ()) = tokio::join!(job, pump);
        let res = res
            .map_err(|e| BusError::internal(format!("layer apply task failed: {e}")))
            .and_then(|r| r);
        let out = match res {
            Ok(o) => o,
            Err(e) => {
                self.discard(&staging).await;
                return Err(e);
            }
        };
        if let Some(want) = &compressed_digest {
            if *want != out.compressed {
                self.discard(&staging).await;
                return Err(BusError::invalid(format!(
                    "filesystem layer verification failed for digest {want}: got {}",
                    out.compressed
                )));
            }
        }
        if let Some(want) = &diff_id {
            if *want != out.diff_id {
                self.discard(&staging).await;
                return Err(BusError::invalid(format!(
                    "layer diff_id mismatch: expected {want}, got {}",
                    out.diff_id
                )));
            }
        }
        let chain = chain_id(parent.as_deref(), &out.diff_id);
        if let Some(p) = &parent {
            if caps.independent_layers {
                if let Err(e) = self.wait_parent(p, me, None).await {
                    self.discard(&staging).await;
                    return Err(e);
                }
            }
        }
        let store = self.clone();
        let parent2 = parent.clone();
        let staging2 = staging.clone();
        let diff_id2 = out.diff_id.clone();
        let commit = tokio::task::spawn_blocking(move || {
            store.commit(
                &staging2,
                &chain,
                parent2,
                diff_id2,
                out.size,
                out.split,
                caps.independent_layers,
            )
        })
        .await
        .map_err(|e| BusError::internal(format!("layer commit task failed: {e}")))
        .and_then(|r| r);
        match commit {
            Ok(m) => Ok(LayerApplied {
                chain_id: m.chain_id,
                diff_id: m.diff_id,
                size: m.size,
            }),
            Err(e) => {
                self.discard(&staging).await;
                Err(e)
            }
        }
    }

    async fn discard(self: &Arc<Self>, staging: &str) {
        let store = self.clone();
        let s = staging.to_string();
        let _ = tokio::task::spawn_blocking(move || match store.driver.remove(&s) {
            Ok(()) | Err(DriverError::NotFound(_)) => {}
            Err(e) => tracing::warn!(snapshot = %s, error = %e, "removing a failed apply; it goes at the next start"),
        })
        .await;
    }

    /// Commit a staging snapshot as `chain`, or take a reference on an existing one.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        staging: &str,
        chain: &str,
        parent: Option<String>,
        diff_id: String,
        size: u64,
        split: Option<Vec<u8>>,
        attach_parent: bool,
    ) -> Result<LayerMeta, BusError> {
        let mut st = self.state.lock().unwrap();
        if let Some(m) = st.layers.get_mut(chain) {
            m.references += 1;
            let m = m.clone();
            drop(st);
            self.persist(&m)?;
            let _ = self.driver.remove(staging);
            return Ok(m);
        }
        if let Some(p) = &parent {
            if !st.layers.contains_key(p) {
                return Err(not_found(p));
            }
        }
        let m = LayerMeta {
            chain_id: chain.to_string(),
            diff_id,
            parent: parent.clone(),
            size,
            references: 1,
            created: crate::util::now_unix_nanos(),
        };
        let opts = CommitOpts {
            parent: if attach_parent { parent } else { None },
        };
        self.driver
            .commit(chain, staging, opts)
            .map_err(BusError::from)?;
        let d = self.layer_dir(chain);
        let write = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&d)?;
            if let Some(s) = &split {
                crate::util::write_file_atomic(&d.join(SPLIT_FILE), s, true)?;
            }
            crate::util::write_json(&d.join(META_FILE), &m, true)
        })();
        if let Err(e) = write {
            let _ = crate::util::remove_tree(&d);
            let _ = self.driver.remove(chain);
            return Err(BusError::internal(format!(
                "writing metadata of layer {chain}: {e}"
            )));
        }
        st.layers.insert(chain.to_string(), m.clone());
        Ok(m)
    }

    /// LayerExport: the layer's tar, byte for byte what was applied (its digest is the
    /// diff_id). Chunks go to `out` (blocking).
    pub fn export(
        &self,
        chain: &str,
        chunk: usize,
        out: &mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
    ) -> Result<(), BusError> {
        self.stat(chain)?;
        let root = match self.driver.diff_source(chain).map_err(BusError::from)? {
            DiffSource::Native { upper, .. } => upper,
            DiffSource::Naive { dir, .. } => dir,
        };
        let split_path = self.layer_dir(chain).join(SPLIT_FILE);
        match std::fs::File::open(&split_path) {
            Ok(f) => crate::split::replay(std::io::BufReader::new(f), &root, chunk, out)
                .map_err(|e| BusError::internal(format!("exporting layer {chain}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No record of the original stream: produce the diff afresh.
                let src = self.driver.diff_source(chain).map_err(BusError::from)?;
                crate::diff::write_diff_tar(&src, &crate::diff::DiffOpts::default(), &mut |b| {
                    out(b)
                })
                .map_err(|e| BusError::internal(format!("exporting layer {chain}: {e}")))
            }
            Err(e) => Err(BusError::internal(format!("exporting layer {chain}: {e}"))),
        }
    }
}

pub(crate) fn hex_of(chain: &str) -> String {
    chain.strip_prefix("sha256:").unwrap_or(chain).to_string()
}

struct Extracted {
    diff_id: String,
    compressed: String,
    size: u64,
    split: Option<Vec<u8>>,
}

/// Blocking reader over a spool file and then the channel of chunks.
struct FeedReader {
    spool: Option<std::fs::File>,
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, BusError>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(f) = self.spool.as_mut() {
            let n = f.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.spool = None;
        }
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "the layer data stream failed: {e}"
                    )))
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Hashes everything read through it.
pub struct DigestReader<R> {
    inner: R,
    hash: Sha256,
    pub count: u64,
}

impl<R: Read> DigestReader<R> {
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }
    pub fn digest(self) -> (String, R) {
        (
            format!("sha256:{}", hex::encode(self.hash.finalize())),
            self.inner,
        )
    }
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A reader that gives back bytes it peeked at.
struct Peeked<R> {
    head: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Decompress by magic bytes (Docker's `DecompressStream`), whatever the media type says.
pub fn decompress<'a, R: Read + 'a>(
    mut r: R,
) -> std::io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = vec![0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = r.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    head.truncate(n);
    let kind = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let p = Peeked {
        head,
        pos: 0,
        inner: r,
    };
    Ok(match kind {
        Compression::Gzip => (
            kind,
            Box::new(flate2::read::MultiGzDecoder::new(
                std::io::BufReader::with_capacity(256 << 10, p),
            )),
        ),
        Compression::Zstd => (kind, Box::new(zstd::stream::read::Decoder::new(p)?)),
        Compression::None => (kind, Box::new(p)),
    })
}

fn extract<R: Read>(
    reader: R,
    target: &std::path::Path,
    opts: &ApplyOpts,
) -> Result<Extracted, BusError> {
    let io = |e: std::io::Error| BusError::invalid(format!("reading layer data: {e}"));
    let mut compressed = DigestReader::new(reader);
    let mut shared = SharedDigest(&mut compressed);
    let (_, dec) = decompress(&mut shared).map_err(io)?;
    let uncompressed = DigestReader::new(dec);
    let (applied, mut uncompressed) =
        apply_tar(uncompressed, target, opts).map_err(BusError::from)?;
    // Hash to the end of both streams: the digests cover every byte.
    std::io::copy(&mut uncompressed, &mut std::io::sink()).map_err(io)?;
    let (diff_id, dec) = uncompressed.digest();
    drop(dec);
    std::io::copy(&mut compressed, &mut std::io::sink()).map_err(io)?;
    let (compressed, _) = compressed.digest();
    Ok(Extracted {
        diff_id,
        compressed,
        size: applied.size,
        split: applied.split,
    })
}

struct SharedDigest<'a, R>(&'a mut DigestReader<R>);

impl<R: Read> Read for SharedDigest<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_as_docker() {
        let d1 = "sha256:aaaa";
        assert_eq!(chain_id(None, d1), d1);
        let c2 = chain_id(Some(d1), "sha256:bbbb");
        assert_eq!(
            c2,
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb"))
            )
        );
    }

    #[test]
    fn detects_compression() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        let gz = gz.finish().unwrap();
        let (k, mut r) = decompress(&gz[..]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((k, s.as_str()), (Compression::Gzip, "hello"));
        let z = zstd::encode_all(&b"hello"[..], 1).unwrap();
        let (k, mut r) = decompress(&z[..]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((k, s.as_str()), (Compression::Zstd, "hello"));
        let (k, mut r) = decompress(&b"hi"[..]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((k, s.as_str()), (Compression::None, "hi"));
    }
}
