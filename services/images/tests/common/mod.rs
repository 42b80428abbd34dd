//! Service-test parts: a fake storage service on the bus (layers in memory, with the
//! real contract's checks: digests, parents, references), a fake runtime answering
//! `ContainersUsingImage`, Debian's docker-registry on loopback, and images made by
//! umoci and skopeo.

#![allow(dead_code)]

use berth_bus::{Bus, Responder, Server};
use berth_test_support::Nats;
use bus_schema::runtime::ContainersUsingImage;
use bus_schema::storage::*;
use bus_schema::stream::ByteChunk;
use bus_schema::{BusError, Service};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[derive(Debug, Clone)]
pub struct FakeLayer {
    pub diff_id: String,
    pub parent: Option<String>,
    pub size: u64,
    pub refs: u32,
    pub children: u32,
    pub tar: Vec<u8>,
}

#[derive(Default)]
pub struct FakeStorage {
    pub layers: Mutex<HashMap<String, FakeLayer>>,
    pub applies: Mutex<u32>,
}

impl FakeStorage {
    pub fn count(&self) -> usize {
        self.layers.lock().unwrap().len()
    }
    pub fn refs(&self, chain: &str) -> Option<u32> {
        self.layers.lock().unwrap().get(chain).map(|l| l.refs)
    }
    fn info(chain: &str, l: &FakeLayer) -> LayerInfo {
        LayerInfo {
            chain_id: chain.to_string(),
            diff_id: l.diff_id.clone(),
            parent: l.parent.clone(),
            size: l.size,
            references: l.refs,
        }
    }
    fn release(&self, chain: &str) -> Result<Vec<String>, BusError> {
        let mut g = self.layers.lock().unwrap();
        let l = g
            .get_mut(chain)
            .ok_or_else(|| BusError::not_found(format!("layer {chain} does not exist")))?;
        l.refs = l.refs.saturating_sub(1);
        let mut removed = vec![];
        let mut cur = Some(chain.to_string());
        while let Some(c) = cur.take() {
            let Some(l) = g.get(&c) else { break };
            if l.refs == 0 && l.children == 0 {
                let l = g.remove(&c).unwrap();
                removed.push(c);
                if let Some(p) = l.parent {
                    if let Some(pl) = g.get_mut(&p) {
                        pl.children -= 1;
                    }
                    cur = Some(p);
                }
            }
        }
        Ok(removed)
    }
}

fn decompress(media: &str, data: &[u8]) -> Result<Vec<u8>, BusError> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let zst = data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let mut out = Vec::new();
    if gz || media.ends_with("gzip") {
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|e| BusError::invalid(format!("gzip: {e}")))?;
    } else if zst || media.ends_with("zstd") {
        out = zstd::decode_all(data).map_err(|e| BusError::invalid(format!("zstd: {e}")))?;
    } else {
        out = data.to_vec();
    }
    Ok(out)
}

fn content_size(tar_bytes: &[u8]) -> Result<u64, BusError> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut n = 0;
    for e in a
        .entries()
        .map_err(|e| BusError::invalid(format!("tar: {e}")))?
    {
        let e = e.map_err(|e| BusError::invalid(format!("tar: {e}")))?;
        n += e.header().size().unwrap_or(0);
    }
    Ok(n)
}

/// Serve the storage subjects on `bus` from memory.
pub async fn fake_storage(bus: Bus) -> Arc<FakeStorage> {
    let st = Arc::new(FakeStorage::default());
    let s = Server::new(bus, Service::Storage);
    let a = st.clone();
    let s = s.stream(move |req: LayerApply, resp: Responder<LayerApply>| {
        let st = a.clone();
        async move {
            let (mut w, mut input) = resp.accept_duplex(()).await?;
            let mut data = Vec::new();
            while let Some(c) = input.next().await {
                match c {
                    Ok(c) => data.extend(c.0),
                    Err(_) => return Ok(()), // the caller failed its input: discard
                }
            }
            let res = (|| -> Result<(String, String, u64, Vec<u8>), BusError> {
                if let Some(d) = &req.compressed_digest {
                    if sha(&data) != *d {
                        return Err(BusError::invalid(format!("layer digest mismatch: {d}")));
                    }
                }
                let tar = decompress(&req.media_type, &data)?;
                let diff = sha(&tar);
                if let Some(d) = &req.diff_id {
                    if *d != diff {
                        return Err(BusError::invalid(format!(
                            "layer diff ID mismatch: expected {d}, got {diff}"
                        )));
                    }
                }
                let chain = match &req.parent {
                    None => diff.clone(),
                    Some(p) => sha(format!("{p} {diff}").as_bytes()),
                };
                let size = content_size(&tar)?;
                Ok((chain, diff, size, tar))
            })();
            let (chain, diff, size, tar) = match res {
                Ok(x) => x,
                Err(e) => return w.fail(e).await,
            };
            // wait for the parent, as overlay2 may apply children first
            if let Some(p) = &req.parent {
                let t = Instant::now();
                while !st.layers.lock().unwrap().contains_key(p) {
                    if t.elapsed() > Duration::from_secs(5) {
                        return w
                            .fail(BusError::not_found(format!(
                                "parent layer {p} does not exist"
                            )))
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            {
                let mut g = st.layers.lock().unwrap();
                *st.applies.lock().unwrap() += 1;
                match g.get_mut(&chain) {
                    Some(l) => l.refs += 1,
                    None => {
                        if let Some(p) = &req.parent {
                            g.get_mut(p).unwrap().children += 1;
                        }
                        g.insert(
                            chain.clone(),
                            FakeLayer {
                                diff_id: diff.clone(),
                                parent: req.parent.clone(),
                                size,
                                refs: 1,
                                children: 0,
                                tar,
                            },
                        );
                    }
                }
            }
            w.send(LayerApplied {
                chain_id: chain,
                diff_id: diff,
                size,
            })
            .await?;
            w.end().await
        }
    });
    let a = st.clone();
    let s = s.rpc(move |req: LayerStat| {
        let st = a.clone();
        async move {
            let g = st.layers.lock().unwrap();
            let l = g.get(&req.chain_id).ok_or_else(|| {
                BusError::not_found(format!("layer {} does not exist", req.chain_id))
            })?;
            Ok(FakeStorage::info(&req.chain_id, l))
        }
    });
    let a = st.clone();
    let s = s.rpc(move |req: LayerRetain| {
        let st = a.clone();
        async move {
            let mut g = st.layers.lock().unwrap();
            let l = g.get_mut(&req.chain_id).ok_or_else(|| {
                BusError::not_found(format!("layer {} does not exist", req.chain_id))
            })?;
            l.refs += 1;
            Ok(FakeStorage::info(&req.chain_id, l))
        }
    });
    let a = st.clone();
    let s = s.rpc(move |req: LayerRelease| {
        let st = a.clone();
        async move { st.release(&req.chain_id) }
    });
    let a = st.clone();
    let s = s.stream(move |req: LayerExport, resp: Responder<LayerExport>| {
        let st = a.clone();
        async move {
            let tar = st
                .layers
                .lock()
                .unwrap()
                .get(&req.chain_id)
                .map(|l| l.tar.clone())
                .ok_or_else(|| {
                    BusError::not_found(format!("layer {} does not exist", req.chain_id))
                })?;
            let mut w = resp.accept(()).await?;
            for c in tar.chunks(bus_schema::stream::MAX_CHUNK) {
                w.send(ByteChunk(c.to_vec())).await?;
            }
            w.end().await
        }
    });
    tokio::spawn(s.run());
    st
}

/// Answer `ContainersUsingImage` from a map the test fills.
pub async fn fake_runtime(bus: Bus) -> Arc<Mutex<HashMap<String, Vec<String>>>> {
    let m: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let a = m.clone();
    let s = Server::new(bus, Service::Runtime).rpc(move |req: ContainersUsingImage| {
        let m = a.clone();
        async move {
            Ok(m.lock()
                .unwrap()
                .get(&req.image_id)
                .cloned()
                .unwrap_or_default())
        }
    });
    tokio::spawn(s.run());
    m
}

/// A node's images service against the fake storage, and a client bus.
pub struct Env {
    pub nats: Nats,
    pub root: tempfile::TempDir,
    /// The images service through its typed client.
    pub client: berth_bus::images::ImagesClient,
    pub storage: Arc<FakeStorage>,
    pub runtime: Arc<Mutex<HashMap<String, Vec<String>>>>,
    pub images: Arc<berth_images::Images>,
}

pub async fn env(cfg: berth_config::DaemonConfig) -> Env {
    let nats = Nats::start();
    let node = "n1";
    let bus = Bus::connect(&nats.url(), None, node, "images")
        .await
        .unwrap();
    let client = Bus::connect(&nats.url(), None, node, "client")
        .await
        .unwrap();
    let storage = fake_storage(
        Bus::connect(&nats.url(), None, node, "storage")
            .await
            .unwrap(),
    )
    .await;
    let runtime = fake_runtime(
        Bus::connect(&nats.url(), None, node, "runtime")
            .await
            .unwrap(),
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    let images = berth_images::Images::open(bus.clone(), &cfg, root.path()).unwrap();
    let server =
        berth_images::adapter::server(bus, images.clone(), None, berth_images::registry_info(&cfg));
    tokio::spawn(server.run());
    tokio::time::sleep(Duration::from_millis(100)).await;
    Env {
        nats,
        root,
        client: berth_bus::images::ImagesClient::new(client).with_timeout(Duration::from_secs(60)),
        storage,
        runtime,
        images,
    }
}

/// Debian's docker-registry on 127.0.0.1:<free port>; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with("")
    }

    pub fn start_with(extra: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-img-reg-")
            .tempdir()
            .unwrap();
        let port = berth_test_support::free_port();
        let conf = dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { child, port, dir }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where docker-registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// skopeo copy from an OCI layout into this registry.
    pub fn push_oci(&self, layout: &Path, tag: &str, repo_tag: &str, extra: &[&str]) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra);
        c.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr()));
        run(&mut c);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An OCI layout made by umoci: image `t` with `layers` layers, each adding a
/// few files (layer i: /l<i>/file-*.txt), CMD ["sh"], architecture `arch`.
pub fn umoci_image(dir: &Path, layers: usize, arch: &str, salt: &str) -> PathBuf {
    let l = dir.join(format!("layout-{arch}-{salt}"));
    let b = dir.join(format!("bundle-{arch}-{salt}"));
    run(Command::new("umoci").args(["init", "--layout"]).arg(&l));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:t", l.display())));
    for i in 0..layers {
        let _ = std::fs::remove_dir_all(&b);
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:t", l.display()))
            .arg(&b));
        let d = b.join("rootfs").join(format!("l{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for f in 0..5 {
            std::fs::write(
                d.join(format!("file-{f}.txt")),
                format!("{salt} layer {i} file {f}\n").repeat(200 * (f + 1)),
            )
            .unwrap();
        }
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(format!("{}:t", l.display()))
            .arg(&b));
    }
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(format!("{}:t", l.display()))
        .args([
            "--config.cmd",
            "sh",
            "--architecture",
            arch,
            "--config.label",
            &format!("salt={salt}"),
        ]));
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&l));
    let _ = std::fs::remove_dir_all(&b);
    l
}

/// Manifest digest of `repo:tag` in the registry.
pub async fn remote_digest(
    reg: &Registry,
    repo: &str,
    tag: &str,
    accept: &str,
) -> (String, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(format!("http://{}/v2/{repo}/manifests/{tag}", reg.addr()))
        .header("Accept", accept)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let b = r.bytes().await.unwrap().to_vec();
    (sha(&b), b)
}

/// Collect a stream request's messages; the error ends it.
pub async fn messages(
    mut rd: bus_schema::BusStream<bus_schema::images::JsonMessage>,
) -> (Vec<bus_schema::images::JsonMessage>, Option<BusError>) {
    use futures_util::StreamExt as _;
    let mut v = Vec::new();
    while let Some(m) = rd.next().await {
        match m {
            Ok(m) => v.push(m),
            Err(e) => return (v, Some(e)),
        }
    }
    (v, None)
}

/// The input stream of a duplex call: these items, then its end.
pub fn input<T: Send + 'static>(items: Vec<T>) -> bus_schema::BusStream<T> {
    Box::pin(futures_util::stream::iter(items.into_iter().map(Ok)))
}

pub fn statuses(v: &[bus_schema::images::JsonMessage]) -> Vec<String> {
    v.iter()
        .filter_map(|m| match (&m.id, &m.status) {
            (Some(i), Some(s)) if s != "Downloading" && s != "Extracting" => {
                Some(format!("{i}: {s}"))
            }
            (None, Some(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// A registry front that answers with a Bearer challenge: `/token` hands out a
/// token for Basic `user:pass`, every other request needs it and is forwarded to
/// `upstream` (a plain docker-registry).
pub struct TokenProxy {
    pub port: u16,
    pub token_requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenProxy {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub async fn token_proxy(upstream: String, user: &str, pass: &str) -> TokenProxy {
    use base64::Engine;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    let client = reqwest::Client::new();
    let c2 = counter.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let (want, client, upstream, counter) =
                (want.clone(), client.clone(), upstream.clone(), c2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (want, client, upstream, counter) = (
                            want.clone(),
                            client.clone(),
                            upstream.clone(),
                            counter.clone(),
                        );
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let path = req.uri().path().to_string();
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            if path == "/token" {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let (st, body) = if auth == want {
                                    (
                                        200,
                                        r#"{"token":"tok-123","access_token":"tok-123","expires_in":300}"#,
                                    )
                                } else {
                                    (401, r#"{"details":"incorrect username or password"}"#)
                                };
                                return Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(st)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                );
                            }
                            if auth != "Bearer tok-123" {
                                return Ok(hyper::Response::builder()
                                .status(401)
                                .header("content-type", "application/json")
                                .header("www-authenticate", format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="test-registry""#))
                                .body(Full::new(Bytes::from(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#)))
                                .unwrap());
                            }
                            let method = req.method().clone();
                            let mut rb = reqwest::Client::request(&client, method, format!("http://{upstream}{pq}"));
                            for h in ["content-type", "accept", "range"] {
                                for v in req.headers().get_all(h) {
                                    rb = rb.header(h, v.to_str().unwrap_or(""));
                                }
                            }
                            let body = req.into_body().collect().await?.to_bytes();
                            let resp = rb.body(body).send().await.unwrap();
                            let mut out = hyper::Response::builder().status(resp.status().as_u16());
                            for (k, v) in resp.headers() {
                                let v = v
                                    .to_str()
                                    .unwrap_or("")
                                    .replace(&upstream, &format!("127.0.0.1:{port}"));
                                if k != "transfer-encoding" {
                                    out = out.header(k.as_str(), v);
                                }
                            }
                            let b = resp.bytes().await.unwrap();
                            Ok(out.body(Full::new(b)).unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TokenProxy {
        port,
        token_requests: counter,
        task,
    }
}
