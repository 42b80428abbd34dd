//! Listening: unix sockets (mode 0660, group `docker` when it exists) and TCP with TLS
//! only. Every connection is HTTP/1.1 with upgrades (hijacked attach/exec streams).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use hyper_util::service::TowerToHyperService;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    Tcp(String),
}

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

pub fn parse_host(h: &str) -> anyhow::Result<Host> {
    if let Some(p) = h.strip_prefix("unix://") {
        let p = if p.is_empty() { DEFAULT_SOCKET } else { p };
        return Ok(Host::Unix(PathBuf::from(p)));
    }
    if let Some(a) = h.strip_prefix("tcp://") {
        let a = if a.contains(':') {
            a.to_string()
        } else {
            format!("{a}:2376")
        };
        return Ok(Host::Tcp(a));
    }
    if h.starts_with('/') {
        return Ok(Host::Unix(PathBuf::from(h)));
    }
    bail!("invalid host {h:?}: use unix:///path or tcp://host:port")
}

/// TLS settings from daemon.json (`tlscert`, `tlskey`, `tlscacert`, `tlsverify`).
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub verify: bool,
}

pub fn tls_from_config(cfg: &berth_config::DaemonConfig) -> Option<Tls> {
    let (cert, key) = (cfg.tlscert.clone()?, cfg.tlskey.clone()?);
    Some(Tls {
        cert,
        key,
        ca: cfg.tlscacert.clone(),
        verify: cfg.tlsverify.unwrap_or(false),
    })
}

fn docker_gid() -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? == "docker" {
            f.next();
            f.next()?.parse().ok()
        } else {
            None
        }
    })
}

/// Bind a unix socket: replace a stale socket file, set mode 0660 and group `docker`.
pub fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another engine", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = docker_gid() {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        unsafe { libc::chown(c.as_ptr(), 0, gid) };
    }
    Ok(l)
}

fn load_tls(t: &Tls) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(&t.cert)?))
            .collect::<Result<_, _>>()
            .context("reading tlscert")?;
    let key =
        rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(&t.key)?))
            .context("reading tlskey")?
            .context("no private key in tlskey")?;
    let builder = rustls::ServerConfig::builder();
    let cfg = if t.verify {
        let ca = t.ca.as_ref().context("tlsverify needs tlscacert")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(ca)?)) {
            roots.add(c?)?;
        }
        let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
        builder
            .with_client_cert_verifier(v)
            .with_single_cert(certs, key)?
    } else {
        builder.with_no_client_auth().with_single_cert(certs, key)?
    };
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

type Svc = tower::util::BoxCloneSyncService<
    Request<hyper::body::Incoming>,
    axum::response::Response,
    std::convert::Infallible,
>;

/// The client connection a request came on, to notice the client going away while a
/// streamed answer waits for something to send (a `wait`, `logs -f`, `events`): hyper
/// does not read a busy connection, half-close being on. Holds a weak handle on a copy
/// of the socket's fd, which the connection's task owns while it serves.
#[derive(Clone, Default)]
pub struct ClientConn(Option<std::sync::Weak<OwnedFd>>);

tokio::task_local! {
    static CLIENT: ClientConn;
}

impl ClientConn {
    /// The connection of the request being served (none outside one, e.g. in tests).
    pub fn current() -> ClientConn {
        CLIENT.try_with(|c| c.clone()).unwrap_or_default()
    }

    /// Resolves once the client has closed the connection or shut its writing side
    /// (which Go's server, and so Moby, takes for the same); never without one.
    pub async fn gone(self) {
        let Some(weak) = self.0 else { return std::future::pending().await };
        let Some(fd) = weak.upgrade().map(|fd| fd.try_clone()) else { return };
        // its own copy: registered with the reactor apart from hyper's
        let Ok(fd) = fd else { return std::future::pending().await };
        // SAFETY: an OwnedFd, owned by the AsyncFd for its whole life
        let Ok(afd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut ready) = afd.readable().await else { return std::future::pending().await };
            if ready.ready().is_read_closed() {
                return;
            }
            // data (a pipelined request) is hyper's to read: wait for the next change
            ready.clear_ready();
        }
    }
}

fn serve_conn<IO>(io: IO, fd: RawFd, svc: Svc)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let own = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok().map(Arc::new);
        let client = ClientConn(own.as_ref().map(Arc::downgrade));
        let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
            let svc = svc.clone();
            CLIENT.scope(client.clone(), tower::ServiceExt::oneshot(svc, req))
        });
        let hyper_svc = TowerToHyperService::new(svc);
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            // the CLI shuts its write side right after a hijack without stdin; the
            // connection must live on for the output
            .half_close(true)
            // Go writes canonical header names (`Api-Version`, `Content-Type`)
            .title_case_headers(true)
            .serve_connection(TokioIo::new(io), hyper_svc)
            .with_upgrades()
            .await;
        drop(own);
    });
    let _ = TokioExecutor::new();
}

/// Serve `router` on every host until the future is dropped.
pub async fn serve_all(
    hosts: Vec<Host>,
    tls: Option<Tls>,
    router: axum::Router,
) -> anyhow::Result<()> {
    let inner = crate::service(router);
    let svc: Svc = tower::util::BoxCloneSyncService::new(tower::ServiceExt::map_request(
        inner,
        |r: Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for h in hosts {
        match h {
            Host::Unix(p) => {
                let l = bind_unix(&p)?;
                tracing::info!(socket = %p.display(), "API listening");
                let svc = svc.clone();
                tasks.spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                let fd = s.as_raw_fd();
                                serve_conn(s, fd, svc.clone())
                            }
                            Err(e) => tracing::warn!(error = %e, "accept failed"),
                        }
                    }
                });
            }
            Host::Tcp(addr) => {
                let Some(t) = tls.as_ref() else {
                    bail!("refusing to listen on tcp://{addr} without TLS: set tlscert and tlskey (and tlsverify, tlscacert) in daemon.json");
                };
                let acceptor = load_tls(t)?;
                let l = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("binding tcp://{addr}"))?;
                tracing::info!(addr = %addr, "API listening with TLS");
                let svc = svc.clone();
                tasks.spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                let acc = acceptor.clone();
                                let svc = svc.clone();
                                tokio::spawn(async move {
                                    let fd = s.as_raw_fd();
                                    if let Ok(tls) = acc.accept(s).await {
                                        serve_conn(tls, fd, svc);
                                    }
                                });
                            }
                            Err(e) => tracing::warn!(error = %e, "accept failed"),
                        }
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_hosts() {
        assert_eq!(
            parse_host("unix:///tmp/a.sock").unwrap(),
            Host::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            parse_host("unix://").unwrap(),
            Host::Unix(DEFAULT_SOCKET.into())
        );
        assert_eq!(
            parse_host("tcp://0.0.0.0").unwrap(),
            Host::Tcp("0.0.0.0:2376".into())
        );
        assert!(parse_host("ftp://x").is_err());
    }
}
