//! Listening: unix sockets (mode 0660, group `docker` when it exists) and TCP with TLS
//! only. Every connection is HTTP/1.1 with upgrades (hijacked attach/exec streams).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::Request;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use hyper_util::service::TowerToHyperService;

pub use berth_config::hosts::{Host, DEFAULT_SOCKET};

pub fn parse_host(h: &str) -> anyhow::Result<Host> {
    Ok(berth_config::hosts::parse_host(h)?)
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

/// A socket the API is served on.
pub enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// What [`open`] gives: the listeners and the socket files this process made (removed
/// when it stops; sockets handed over by `berth up` or systemd are theirs).
pub struct Opened {
    pub listeners: Vec<(String, Listener)>,
    pub own_files: Vec<PathBuf>,
}

fn refuse_tcp_without_tls(addr: &str, tls: bool) -> anyhow::Result<()> {
    if !tls {
        bail!("refusing to listen on tcp://{addr} without TLS: set tlscert and tlskey (and tlsverify, tlscacert) in daemon.json");
    }
    Ok(())
}

/// A listening socket inherited as fd `fd` (from systemd or `berth up`).
fn inherited(fd: RawFd, tls: bool) -> anyhow::Result<(String, Listener)> {
    use berth_config::hosts::{socket_kind, SocketKind};
    // SAFETY: a borrowed look before taking ownership
    let kind = socket_kind(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: the fd was handed to this process to serve on; nothing else owns it
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(match kind {
        SocketKind::Unix(p) => {
            let l = std::os::unix::net::UnixListener::from(owned);
            l.set_nonblocking(true)?;
            (format!("fd://{fd} (unix://{})", p.display()), Listener::Unix(tokio::net::UnixListener::from_std(l)?))
        }
        SocketKind::Tcp(a) => {
            refuse_tcp_without_tls(&a.to_string(), tls)?;
            let l = std::net::TcpListener::from(owned);
            l.set_nonblocking(true)?;
            (format!("fd://{fd} (tcp://{a})"), Listener::Tcp(tokio::net::TcpListener::from_std(l)?))
        }
    })
}

/// Open every host as dockerd does: unix sockets bound 0660 with group `group`, TCP
/// only with TLS, `fd://` and `fd://N` from the sockets systemd passed, or (`fd://N`
/// without systemd's variables) a listening socket `berth up` handed over.
pub fn open(hosts: &[Host], group: &str, tls: bool) -> anyhow::Result<Opened> {
    use berth_config::hosts as h;
    let activated = h::activated_fds();
    let mut out = Opened { listeners: Vec::new(), own_files: Vec::new() };
    for host in hosts {
        match host {
            Host::Unix(p) => {
                let (l, warning) = h::bind_unix(p, group)?;
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
                l.set_nonblocking(true)?;
                out.own_files.push(p.clone());
                out.listeners.push((format!("unix://{}", p.display()), Listener::Unix(tokio::net::UnixListener::from_std(l)?)));
            }
            Host::Tcp(addr) => {
                refuse_tcp_without_tls(addr, tls)?;
                let l = h::bind_tcp(addr)?;
                l.set_nonblocking(true)?;
                out.listeners.push((format!("tcp://{addr}"), Listener::Tcp(tokio::net::TcpListener::from_std(l)?)));
            }
            Host::Fd(n) => {
                let fds = if activated.is_empty() {
                    match n {
                        Some(n) => vec![*n],
                        None => return Err(h::HostError::NoActivatedSockets.into()),
                    }
                } else {
                    h::select_activated(*n, &activated)?
                };
                for fd in fds {
                    out.listeners.push(inherited(fd, tls)?);
                }
            }
        }
    }
    Ok(out)
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

    /// A copy of the connection's socket that outlives hyper's hold on it (a hijack
    /// ends hyper's connection task, and with it this handle's fd).
    pub fn hold(&self) -> HeldConn {
        HeldConn(self.0.as_ref().and_then(|w| w.upgrade()).and_then(|fd| fd.try_clone().ok()))
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

/// See [`ClientConn::hold`].
pub struct HeldConn(Option<OwnedFd>);

impl HeldConn {
    /// Resolves once the client has read everything written to it so far (the
    /// socket's send queue is empty: SIOCOUTQ, which on a unix socket counts what
    /// the peer has not read yet), or after `max`. A hijacked stream starts its
    /// process after this: clients that parse the 101 through a buffered reader and
    /// then read the raw socket (docker-py, its issue 1799) lose whatever arrived
    /// with the 101. Moby's slower exec start hides that race; berth's shim starts a
    /// process in a few milliseconds. Immediate without a connection.
    pub async fn read_all(&self, max: Duration) {
        let Some(fd) = self.0.as_ref() else { return };
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: SIOCOUTQ writes one int; the fd is ours and open
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
            if r != 0 || queued <= 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn serve_conn<IO>(conns: &tokio_util::task::TaskTracker, io: IO, fd: RawFd, svc: Svc, mut drain: tokio::sync::watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    conns.spawn(async move {
        let own = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok().map(Arc::new);
        let client = ClientConn(own.as_ref().map(Arc::downgrade));
        let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
            let svc = svc.clone();
            CLIENT.scope(client.clone(), tower::ServiceExt::oneshot(svc, req))
        });
        let hyper_svc = TowerToHyperService::new(svc);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            // the CLI shuts its write side right after a hijack without stdin; the
            // connection must live on for the output
            .half_close(true)
            // Go writes canonical header names (`Api-Version`, `Content-Type`)
            .title_case_headers(true)
            .serve_connection(TokioIo::new(io), hyper_svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = async { drain.wait_for(|d| *d).await.map(|_| ()) } => {
                // finish the request in flight, then close
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        drop(own);
    });
}

/// Serve `router` on every host until the future is dropped.
pub async fn serve_all(hosts: Vec<Host>, tls: Option<Tls>, router: axum::Router) -> anyhow::Result<()> {
    let opened = open(&hosts, berth_config::hosts::DEFAULT_GROUP, tls.is_some())?;
    serve_until(opened.listeners, tls, router, std::future::pending()).await
}

/// Serve `router` on `listeners` until `stop` resolves (to how long to drain); then
/// stop accepting, let each connection finish the request it serves (idle keep-alive
/// connections close), and wait that long for them. Tells `berth up` once it serves.
pub async fn serve_until(
    listeners: Vec<(String, Listener)>,
    tls: Option<Tls>,
    router: axum::Router,
    stop: impl std::future::Future<Output = Duration>,
) -> anyhow::Result<()> {
    let inner = crate::service(router);
    let svc: Svc = tower::util::BoxCloneSyncService::new(tower::ServiceExt::map_request(
        inner,
        |r: Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
    ));
    let acceptor = match &tls {
        Some(t) if listeners.iter().any(|(_, l)| matches!(l, Listener::Tcp(_))) => Some(load_tls(t)?),
        _ => None,
    };
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let conns = tokio_util::task::TaskTracker::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (name, l) in listeners {
        let svc = svc.clone();
        let conns = conns.clone();
        let drain_rx = drain_rx.clone();
        match l {
            Listener::Unix(l) => {
                tracing::info!(socket = %name, "API listening");
                tasks.spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                let fd = s.as_raw_fd();
                                serve_conn(&conns, s, fd, svc.clone(), drain_rx.clone())
                            }
                            Err(e) => tracing::warn!(error = %e, "accept failed"),
                        }
                    }
                });
            }
            Listener::Tcp(l) => {
                let acc = acceptor.clone().expect("TLS checked when opened");
                tracing::info!(addr = %name, "API listening with TLS");
                tasks.spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                let (acc, svc, drain_rx, c) = (acc.clone(), svc.clone(), drain_rx.clone(), conns.clone());
                                conns.spawn(async move {
                                    let fd = s.as_raw_fd();
                                    if let Ok(tls) = acc.accept(s).await {
                                        serve_conn(&c, tls, fd, svc, drain_rx);
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
    berth_bus::service::ready();
    let drain = tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => Duration::ZERO,
        d = stop => d,
    };
    // stop accepting (the listening sockets close unless `berth up` holds them too),
    // then drain
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(svc);
    let _ = drain_tx.send(true);
    conns.close();
    let _ = tokio::time::timeout(drain, conns.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_hosts() {
        assert_eq!(parse_host("unix:///tmp/a.sock").unwrap(), Host::Unix("/tmp/a.sock".into()));
        assert_eq!(parse_host("fd://3").unwrap(), Host::Fd(Some(3)));
        assert!(parse_host("ftp://x").is_err());
    }

    #[tokio::test]
    async fn serves_a_socket_handed_over_by_fd_and_refuses_tcp_without_tls() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("api.sock");
        let (l, _) = berth_config::hosts::bind_unix(&p, "").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(l);
        let opened = open(&[Host::Fd(Some(fd))], "", false).unwrap();
        assert!(opened.own_files.is_empty());
        assert!(opened.listeners[0].0.contains(&p.display().to_string()), "{}", opened.listeners[0].0);
        let t = berth_config::hosts::bind_tcp("127.0.0.1:0").unwrap();
        let tfd = std::os::fd::IntoRawFd::into_raw_fd(t);
        let e = open(&[Host::Fd(Some(tfd))], "", false).err().unwrap();
        assert!(e.to_string().contains("without TLS"), "{e}");
        let e = open(&[Host::Fd(None)], "", false).err().unwrap();
        assert_eq!(e.to_string(), "no sockets found via socket activation: make sure the service was started by systemd");
    }
}
