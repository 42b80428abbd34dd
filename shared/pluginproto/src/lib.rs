//! Docker's plugin protocol, the client side: JSON over HTTP/1.1 on the plugin's
//! unix socket (`POST /Plugin.Activate`, `POST /VolumeDriver.Mount`, ...), with
//! Docker's media type. The images service activates a managed plugin with it when
//! the plugin is enabled; the storage service calls volume-driver plugins with it.
//!
//! Each call opens its own connection (as Moby's client does per request, keeping
//! none alive across a plugin restart) and is bounded by a timeout, so a plugin that
//! died answers a connect error and one that hangs a timeout, never a hang.
//!
//! Errors are worded as Moby's pkg/plugins client words them: a non-200 answer is
//! `<Method>: <Err of the body>` (or the body itself), an `Err` in a 200 answer is
//! that text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Docker's plugin media type (requests and answers).
pub const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// An answer larger than this is refused (a volume list of a big driver fits).
pub const MAX_ANSWER: usize = 16 << 20;
/// Where the plugin's socket is inside its rootfs: Moby binds the plugin's runtime
/// directory at `/run/docker/plugins`.
pub const SOCKET_DIR_IN_PLUGIN: &str = "/run/docker/plugins";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The socket is not there or nobody listens (the plugin is not running).
    #[error("dial unix {path}: connect: {message}")]
    Connect { path: String, message: String },
    #[error("{method}: timeout after {secs}s waiting for the plugin to answer")]
    Timeout { method: String, secs: u64 },
    /// An answer other than 200.
    #[error("{method}: {message}")]
    Status { method: String, status: u16, message: String },
    /// The plugin's `Err` in a 200 answer.
    #[error("{0}")]
    Remote(String),
    /// A broken exchange or an answer that is not the protocol's JSON.
    #[error("{method}: {message}")]
    Protocol { method: String, message: String },
}

/// Connect to a unix socket whose path may be longer than `sun_path` allows (a node
/// under a deep data root): through the parent directory's descriptor in /proc.
async fn connect(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::fd::AsRawFd;
    if path.as_os_str().len() < 100 {
        return tokio::net::UnixStream::connect(path).await;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return tokio::net::UnixStream::connect(path).await;
    };
    let d = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())).join(name);
    let s = tokio::net::UnixStream::connect(&short).await;
    drop(d);
    s
}

/// Sends `POST /<method>` with `body` as JSON: the answer's status and body, and
/// the connection's task (aborted once the body was read).
async fn send(
    sock: &Path,
    method: &str,
    body: &impl Serialize,
) -> Result<(http::StatusCode, hyper::body::Incoming, tokio::task::JoinHandle<Result<(), hyper::Error>>), Error> {
    let proto = |m: String| Error::Protocol { method: method.to_string(), message: m };
    let json = serde_json::to_vec(body).map_err(|e| proto(e.to_string()))?;
    let stream = connect(sock)
        .await
        .map_err(|e| Error::Connect { path: sock.display().to_string(), message: io_text(&e) })?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| proto(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post(format!("/{method}"))
        .header(http::header::HOST, "plugin")
        .header(http::header::CONTENT_TYPE, MEDIA_TYPE)
        .header(http::header::ACCEPT, MEDIA_TYPE)
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| proto(e.to_string()))?;
    let resp = match tx.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            conn.abort();
            return Err(proto(e.to_string()));
        }
    };
    let status = resp.status();
    Ok((status, resp.into_body(), conn))
}

/// A non-200 answer as Moby's client words it: the body's `Err`, else the body.
fn status_error(method: &str, status: http::StatusCode, body: &[u8]) -> Error {
    #[derive(Deserialize)]
    struct ErrBody {
        #[serde(rename = "Err", alias = "err", default)]
        err: String,
    }
    let message = match serde_json::from_slice::<ErrBody>(body) {
        Ok(e) if !e.err.is_empty() => e.err,
        _ => String::from_utf8_lossy(body).trim_end().to_string(),
    };
    Error::Status { method: method.to_string(), status: status.as_u16(), message }
}

/// One call: `POST /<method>` with `body` as JSON; answers the body of a 200.
pub async fn call_raw(sock: &Path, method: &str, body: &impl Serialize, timeout: Duration) -> Result<Bytes, Error> {
    let proto = |m: String| Error::Protocol { method: method.to_string(), message: m };
    let exchange = async {
        let (status, body, conn) = send(sock, method, body).await?;
        let body = Limited::new(body, MAX_ANSWER).collect().await.map_err(|e| proto(e.to_string()));
        conn.abort();
        let body = body?.to_bytes();
        if status != http::StatusCode::OK {
            return Err(status_error(method, status, &body));
        }
        Ok(body)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout { method: method.to_string(), secs: timeout.as_secs() }),
    }
}

/// The body of a 200 answer read as it comes (Moby's client `Stream`, as
/// `/LogDriver.ReadLogs` answers): unbounded in size and time.
pub struct AnswerStream {
    method: String,
    body: hyper::body::Incoming,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl AnswerStream {
    /// The next piece of the body; None at its end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            match self.body.frame().await? {
                Ok(f) => match f.into_data() {
                    Ok(d) if d.is_empty() => continue,
                    Ok(d) => return Some(Ok(d)),
                    Err(_) => continue, // trailers
                },
                Err(e) => return Some(Err(Error::Protocol { method: self.method.clone(), message: e.to_string() })),
            }
        }
    }
}

impl Drop for AnswerStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// A call whose answer is a stream: `timeout` bounds the wait for the answer's
/// head (a non-200 answer is read whole, as [`call_raw`] reads it), not the body.
pub async fn call_stream(sock: &Path, method: &str, body: &impl Serialize, timeout: Duration) -> Result<AnswerStream, Error> {
    let proto = |m: String| Error::Protocol { method: method.to_string(), message: m };
    let exchange = async {
        let (status, body, conn) = send(sock, method, body).await?;
        if status != http::StatusCode::OK {
            let body = Limited::new(body, MAX_ANSWER).collect().await.map_err(|e| proto(e.to_string()));
            conn.abort();
            return Err(status_error(method, status, &body?.to_bytes()));
        }
        Ok(AnswerStream { method: method.to_string(), body, conn })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout { method: method.to_string(), secs: timeout.as_secs() }),
    }
}

/// Go's wording of the usual connect errors (`connection refused`, `no such file or
/// directory`).
fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let s = std::io::Error::from_raw_os_error(n).to_string();
            // Rust appends " (os error N)"
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}

/// A call whose answer is JSON with an `Err` field.
pub async fn call<T: DeserializeOwned + HasErr>(sock: &Path, method: &str, body: &impl Serialize, timeout: Duration) -> Result<T, Error> {
    let b = call_raw(sock, method, body, timeout).await?;
    let b: &[u8] = if b.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &b };
    let v: T = serde_json::from_slice(b).map_err(|e| Error::Protocol { method: method.to_string(), message: format!("decoding the answer: {e}") })?;
    match v.err() {
        Some(e) if !e.is_empty() => Err(Error::Remote(e.to_string())),
        _ => Ok(v),
    }
}

pub trait HasErr {
    fn err(&self) -> Option<&str>;
}

/// `/Plugin.Activate`'s answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    #[serde(rename = "Implements", alias = "implements")]
    pub implements: Vec<String>,
    #[serde(rename = "Err", alias = "err", skip_serializing_if = "String::is_empty")]
    pub err: String,
}

impl HasErr for Manifest {
    fn err(&self) -> Option<&str> {
        Some(&self.err)
    }
}

/// `POST /Plugin.Activate`: what the plugin implements (`VolumeDriver`, ...).
pub async fn activate(sock: &Path, timeout: Duration) -> Result<Vec<String>, Error> {
    let m: Manifest = call(sock, "Plugin.Activate", &serde_json::json!({}), timeout).await?;
    Ok(m.implements)
}

/// What `/Plugin.Activate` answers for an interface type of a plugin's config
/// (`docker.volumedriver/1.0` -> `VolumeDriver`), as Moby's v2 plugins map them.
pub fn implements_of(typ: &str) -> Option<&'static str> {
    let cap = typ.split('/').next().unwrap_or(typ);
    let cap = cap.rsplit('.').next().unwrap_or(cap);
    match cap {
        "volumedriver" => Some("VolumeDriver"),
        "networkdriver" => Some("NetworkDriver"),
        "ipamdriver" => Some("IpamDriver"),
        "authz" => Some("authz"),
        "logdriver" => Some("LogDriver"),
        "metricscollector" => Some("MetricsCollector"),
        _ => None,
    }
}

/// The volume-driver answers (docs.docker.com/engine/extend/plugins_volume).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeAnswer {
    #[serde(rename = "Mountpoint", alias = "mountpoint")]
    pub mountpoint: String,
    #[serde(rename = "Volume", alias = "volume")]
    pub volume: Option<VolumeInfo>,
    #[serde(rename = "Volumes", alias = "volumes")]
    pub volumes: Option<Vec<VolumeInfo>>,
    #[serde(rename = "Capabilities", alias = "capabilities")]
    pub capabilities: Option<Capabilities>,
    #[serde(rename = "Err", alias = "err")]
    pub err: String,
}

impl HasErr for VolumeAnswer {
    fn err(&self) -> Option<&str> {
        Some(&self.err)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeInfo {
    #[serde(rename = "Name", alias = "name")]
    pub name: String,
    #[serde(rename = "Mountpoint", alias = "mountpoint")]
    pub mountpoint: String,
    #[serde(rename = "CreatedAt", alias = "createdAt", skip_serializing_if = "String::is_empty")]
    pub created_at: String,
    #[serde(rename = "Status", alias = "status", skip_serializing_if = "Option::is_none")]
    pub status: Option<HashMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    #[serde(rename = "Scope", alias = "scope")]
    pub scope: String,
}

#[derive(Serialize)]
struct NameReq<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
}

#[derive(Serialize)]
struct CreateReq<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Opts")]
    opts: &'a HashMap<String, String>,
}

#[derive(Serialize)]
struct MountReq<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "ID")]
    id: &'a str,
}

/// A volume-driver plugin behind its socket.
#[derive(Debug, Clone)]
pub struct VolumeDriver {
    pub sock: PathBuf,
    pub timeout: Duration,
}

impl VolumeDriver {
    pub fn new(sock: PathBuf, timeout: Duration) -> VolumeDriver {
        VolumeDriver { sock, timeout }
    }

    async fn ask(&self, method: &str, body: &impl Serialize) -> Result<VolumeAnswer, Error> {
        call(&self.sock, method, body, self.timeout).await
    }

    pub async fn create(&self, name: &str, opts: &HashMap<String, String>) -> Result<(), Error> {
        self.ask("VolumeDriver.Create", &CreateReq { name, opts }).await.map(|_| ())
    }

    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        self.ask("VolumeDriver.Remove", &NameReq { name }).await.map(|_| ())
    }

    /// The mountpoint, as the plugin sees it.
    pub async fn path(&self, name: &str) -> Result<String, Error> {
        self.ask("VolumeDriver.Path", &NameReq { name }).await.map(|a| a.mountpoint)
    }

    /// Mount for container `id`; the mountpoint, as the plugin sees it.
    pub async fn mount(&self, name: &str, id: &str) -> Result<String, Error> {
        self.ask("VolumeDriver.Mount", &MountReq { name, id }).await.map(|a| a.mountpoint)
    }

    pub async fn unmount(&self, name: &str, id: &str) -> Result<(), Error> {
        self.ask("VolumeDriver.Unmount", &MountReq { name, id }).await.map(|_| ())
    }

    pub async fn get(&self, name: &str) -> Result<VolumeInfo, Error> {
        let a = self.ask("VolumeDriver.Get", &NameReq { name }).await?;
        a.volume.ok_or_else(|| Error::Remote(format!("no such volume: {name}")))
    }

    pub async fn list(&self) -> Result<Vec<VolumeInfo>, Error> {
        self.ask("VolumeDriver.List", &serde_json::json!({})).await.map(|a| a.volumes.unwrap_or_default())
    }

    /// The driver's scope (`local` when it does not say, as Moby defaults it).
    pub async fn capabilities(&self) -> Result<String, Error> {
        let a = self.ask("VolumeDriver.Capabilities", &serde_json::json!({})).await?;
        Ok(a.capabilities.map(|c| c.scope).filter(|s| !s.is_empty()).unwrap_or_else(|| "local".into()))
    }
}

/// A path the plugin answered, as the host sees it: Moby's ScopedPath (inside the
/// propagated mount: under the host side of that mount; else under the plugin's
/// rootfs). `..` cannot climb out: the path is cleaned as an absolute path first.
/// Only a string: a link the plugin placed on the way is not resolved here (see
/// [`scoped_root`] for I/O).
pub fn scoped_path(rootfs: &Path, propagated: Option<(&str, &Path)>, inside: &str) -> PathBuf {
    let (root, rel) = scoped_root(rootfs, propagated, inside);
    match rel.trim_start_matches('/') {
        "" => root,
        r => root.join(r),
    }
}

/// [`scoped_path`] as the root the path is in (the plugin's rootfs or the host
/// side of its propagated mount) and the path inside that root (absolute, clean),
/// for I/O that resolves it in the root (openat2 `RESOLVE_IN_ROOT`).
pub fn scoped_root(rootfs: &Path, propagated: Option<(&str, &Path)>, inside: &str) -> (PathBuf, String) {
    let cleaned = berth_rules::path::clean_in_root(inside);
    let clean = cleaned.trim_start_matches('/');
    if let Some((pm, host)) = propagated {
        let pm = pm.trim_matches('/');
        if !pm.is_empty() {
            if clean == pm {
                return (host.to_path_buf(), "/".into());
            }
            if let Some(rest) = clean.strip_prefix(pm).and_then(|r| r.strip_prefix('/')) {
                return (host.to_path_buf(), format!("/{rest}"));
            }
        }
    }
    (rootfs.to_path_buf(), cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn scoped_paths() {
        let root = Path::new("/r");
        assert_eq!(scoped_path(root, None, "/data/v1"), PathBuf::from("/r/data/v1"));
        assert_eq!(scoped_path(root, None, "/../../etc"), PathBuf::from("/r/etc"));
        let pm = Some(("/mnt/vols", Path::new("/h/pm")));
        assert_eq!(scoped_path(root, pm, "/mnt/vols/a"), PathBuf::from("/h/pm/a"));
        assert_eq!(scoped_path(root, pm, "/mnt/vols"), PathBuf::from("/h/pm"));
        assert_eq!(scoped_path(root, pm, "/mnt/volsx/a"), PathBuf::from("/r/mnt/volsx/a"));
        assert_eq!(scoped_root(root, pm, "/mnt/vols/a/../b"), (PathBuf::from("/h/pm"), "/b".to_string()));
        assert_eq!(scoped_root(root, pm, "/run/docker/logging/x"), (PathBuf::from("/r"), "/run/docker/logging/x".to_string()));
        assert_eq!(implements_of("docker.volumedriver/1.0"), Some("VolumeDriver"));
    }

    /// A one-shot server on a unix socket: answers `status` and `body`, hands the
    /// request it read back.
    async fn serve_once(path: &Path, status: &'static str, body: &'static str) -> tokio::task::JoinHandle<String> {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            loop {
                let n = s.read(&mut tmp).await.unwrap();
                buf.extend_from_slice(&tmp[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let answer = format!("HTTP/1.1 {status}\r\nContent-Type: {MEDIA_TYPE}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf).to_string()
        })
    }

    #[tokio::test]
    async fn calls_and_errors_as_moby() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("p.sock");
        let t = Duration::from_secs(5);
        let srv = serve_once(&sock, "200 OK", r#"{"Implements":["VolumeDriver"]}"#).await;
        assert_eq!(activate(&sock, t).await.unwrap(), vec!["VolumeDriver"]);
        let req = srv.await.unwrap();
        assert!(req.starts_with("POST /Plugin.Activate HTTP/1.1\r\n"), "{req}");
        assert!(req.to_ascii_lowercase().contains(&format!("content-type: {MEDIA_TYPE}")), "{req}");
        std::fs::remove_file(&sock).unwrap();

        let srv = serve_once(&sock, "200 OK", r#"{"Mountpoint":"/data/v","Err":""}"#).await;
        let vd = VolumeDriver::new(sock.clone(), t);
        assert_eq!(vd.mount("v", "c1").await.unwrap(), "/data/v");
        assert!(srv.await.unwrap().ends_with(r#"{"Name":"v","ID":"c1"}"#));
        std::fs::remove_file(&sock).unwrap();

        let srv = serve_once(&sock, "200 OK", r#"{"Err":"no such volume"}"#).await;
        assert_eq!(vd.remove("v").await.unwrap_err().to_string(), "no such volume");
        srv.await.unwrap();
        std::fs::remove_file(&sock).unwrap();

        let srv = serve_once(&sock, "500 Internal Server Error", r#"{"Err":"boom"}"#).await;
        assert_eq!(vd.create("v", &HashMap::new()).await.unwrap_err().to_string(), "VolumeDriver.Create: boom");
        srv.await.unwrap();
        std::fs::remove_file(&sock).unwrap();

        // nobody listening: a clear error at once
        let e = vd.path("v").await.unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e}");
        assert!(e.to_string().ends_with("connect: no such file or directory"), "{e}");

        // a plugin that accepts and never answers: the timeout
        let _l = tokio::net::UnixListener::bind(&sock).unwrap();
        let slow = VolumeDriver::new(sock.clone(), Duration::from_millis(200));
        let e = slow.path("v").await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn long_socket_paths_connect() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("p.sock");
        // bind through the same trick (bind has the same length limit)
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&deep).unwrap();
        let short = format!("/proc/self/fd/{}/p.sock", dir.as_raw_fd());
        let srv = serve_once(Path::new(&short), "200 OK", r#"{"Implements":["VolumeDriver"]}"#).await;
        assert_eq!(activate(&sock, Duration::from_secs(5)).await.unwrap(), vec!["VolumeDriver"]);
        srv.await.unwrap();
    }

    /// A streamed answer (no length, ended by the close) is read piece by piece as
    /// it comes; an error answer is Moby's words.
    #[tokio::test]
    async fn streamed_answers() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let srv = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).await.unwrap();
            let req = String::from_utf8_lossy(&tmp[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-json-stream\r\nConnection: close\r\n\r\nfirst").await.unwrap();
            s.flush().await.unwrap();
            // the second piece only once the client has the first
            go_rx.await.unwrap();
            s.write_all(b"second").await.unwrap();
            req
        });
        let mut st = call_stream(&sock, "LogDriver.ReadLogs", &serde_json::json!({"Config": {"Follow": true}}), Duration::from_secs(5)).await.unwrap();
        assert_eq!(&st.chunk().await.unwrap().unwrap()[..], b"first");
        go_tx.send(()).unwrap();
        let mut rest = Vec::new();
        while let Some(c) = st.chunk().await {
            rest.extend_from_slice(&c.unwrap());
        }
        assert_eq!(rest, b"second");
        let req = srv.await.unwrap();
        assert!(req.starts_with("POST /LogDriver.ReadLogs HTTP/1.1\r\n"), "{req}");
        std::fs::remove_file(&sock).unwrap();

        let srv = serve_once(&sock, "500 Internal Server Error", r#"{"Err":"no logs"}"#).await;
        let e = call_stream(&sock, "LogDriver.ReadLogs", &serde_json::json!({}), Duration::from_secs(5)).await.err().unwrap();
        assert_eq!(e.to_string(), "LogDriver.ReadLogs: no logs");
        srv.await.unwrap();
    }
}
