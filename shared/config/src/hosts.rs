//! Where the Docker API listens: Docker's `-H`/`hosts` forms (`unix://PATH`,
//! `tcp://HOST:PORT`, `fd://`, `fd://N`) and binding them as dockerd does. `berth up`
//! binds (or receives from systemd) every listening socket and hands them to the
//! gateway as `fd://N`, so a gateway restart never closes them.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

/// dockerd's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// dockerd's default socket group.
pub const DEFAULT_GROUP: &str = "docker";
/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid host {0:?}: use unix:///path, tcp://host:port, fd:// or fd://N")]
    Invalid(String),
    #[error("failed to parse systemd fd address: should be a number: {0}")]
    FdNumber(String),
    #[error("no sockets found via socket activation: make sure the service was started by systemd")]
    NoActivatedSockets,
    #[error("too few socket activated files passed in by systemd")]
    TooFewActivated,
    #[error("{0} is in use by another engine")]
    InUse(String),
    #[error("could not change group of unix socket {path}: group {group} not found")]
    Group { path: String, group: String },
    #[error("failed to create unix socket {path}: {source}")]
    Unix { path: String, source: std::io::Error },
    #[error("binding tcp://{addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("fd {0} is not a listening socket")]
    NotListening(RawFd),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    Tcp(String),
    /// `fd://` (every socket systemd passed) or `fd://N`.
    Fd(Option<RawFd>),
}

pub fn parse_host(h: &str) -> Result<Host, HostError> {
    if let Some(p) = h.strip_prefix("unix://") {
        let p = if p.is_empty() { DEFAULT_SOCKET } else { p };
        return Ok(Host::Unix(PathBuf::from(p)));
    }
    if let Some(a) = h.strip_prefix("tcp://") {
        let a = if a.contains(':') { a.to_string() } else { format!("{a}:2376") };
        return Ok(Host::Tcp(a));
    }
    if let Some(n) = h.strip_prefix("fd://") {
        if n.is_empty() || n == "*" {
            return Ok(Host::Fd(None));
        }
        return n.parse().map(|n| Host::Fd(Some(n))).map_err(|_| HostError::FdNumber(n.to_string()));
    }
    if h.starts_with('/') {
        return Ok(Host::Unix(PathBuf::from(h)));
    }
    Err(HostError::Invalid(h.to_string()))
}

/// The gid of a group given by name or number (dockerd's `lookupGID`).
pub fn lookup_gid(group: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let by_name = text.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? == group {
            f.next();
            f.next()?.parse().ok()
        } else {
            None
        }
    });
    by_name.or_else(|| group.parse().ok())
}

/// Bind a unix socket as dockerd does: a stale socket file is replaced (a live one is
/// refused), mode 0660, owner root and group `group` (a missing `docker` group is only
/// a warning, returned; any other missing group is an error).
pub fn bind_unix(path: &Path, group: &str) -> Result<(std::os::unix::net::UnixListener, Option<String>), HostError> {
    let err = |source| HostError::Unix { path: path.display().to_string(), source };
    let gid = match (group, lookup_gid(group)) {
        ("", _) => None,
        (_, Some(g)) => Some(g),
        (g, None) if g == DEFAULT_GROUP => None,
        (g, None) => return Err(HostError::Group { path: path.display().to_string(), group: g.to_string() }),
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(HostError::InUse(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    let mut warning = None;
    match gid {
        Some(gid) => std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(err)?,
        None if !group.is_empty() => {
            warning = Some(format!(
                "could not change group of unix socket {}: group {group} not found",
                path.display()
            ))
        }
        None => {}
    }
    Ok((l, warning))
}

pub fn bind_tcp(addr: &str) -> Result<std::net::TcpListener, HostError> {
    std::net::TcpListener::bind(addr).map_err(|source| HostError::Tcp { addr: addr.to_string(), source })
}

/// What kind of listening socket an inherited fd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketKind {
    /// A unix socket and its path (empty for an abstract or unnamed one).
    Unix(PathBuf),
    /// A TCP socket and its local address.
    Tcp(std::net::SocketAddr),
}

/// Check that `fd` is a listening stream socket and say which kind.
pub fn socket_kind(fd: BorrowedFd<'_>) -> Result<SocketKind, HostError> {
    let raw = fd.as_raw_fd();
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int of the given size
    let r = unsafe {
        libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, &mut accepting as *mut _ as *mut libc::c_void, &mut len)
    };
    if r != 0 || accepting == 0 {
        return Err(HostError::NotListening(raw));
    }
    // SAFETY: sockaddr_storage is large enough for any address family
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if unsafe { libc::getsockname(raw, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return Err(HostError::NotListening(raw));
    }
    match ss.ss_family as i32 {
        libc::AF_UNIX => {
            // SAFETY: the family says this is a sockaddr_un
            let sun = unsafe { &*(&ss as *const _ as *const libc::sockaddr_un) };
            let off = std::mem::size_of::<libc::sa_family_t>();
            let n = (len as usize).saturating_sub(off).min(sun.sun_path.len());
            let bytes: Vec<u8> = sun.sun_path[..n].iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
            use std::os::unix::ffi::OsStringExt;
            Ok(SocketKind::Unix(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
        }
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: a listening socket of these families, duplicated so the listener
            // built to read its address does not close the original
            let dup = fd.try_clone_to_owned().map_err(|_| HostError::NotListening(raw))?;
            let l = std::net::TcpListener::from(dup);
            l.local_addr().map(SocketKind::Tcp).map_err(|_| HostError::NotListening(raw))
        }
        _ => Err(HostError::NotListening(raw)),
    }
}

/// The sockets systemd (or `systemd-socket-activate`) passed this process (fds 3..,
/// when `LISTEN_PID` is ours), marked close-on-exec. The variables are read, not
/// removed: children get them removed from their environment ([`SYSTEMD_VARS`]).
pub fn activated_fds() -> Vec<RawFd> {
    sd_notify::listen_fds().map(|it| it.collect()).unwrap_or_default()
}

/// Environment variables of systemd's protocols, which children must not inherit.
pub const SYSTEMD_VARS: &[&str] = &["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC"];

/// Pick the activated sockets `fd://` or `fd://N` names (dockerd's `listenFD`): all of
/// them, or the one numbered N (3 for the first).
pub fn select_activated(spec: Option<RawFd>, activated: &[RawFd]) -> Result<Vec<RawFd>, HostError> {
    if activated.is_empty() {
        return Err(HostError::NoActivatedSockets);
    }
    match spec {
        None => Ok(activated.to_vec()),
        Some(n) => {
            let i = n - LISTEN_FDS_START;
            if i < 0 || i as usize >= activated.len() {
                return Err(HostError::TooFewActivated);
            }
            Ok(vec![activated[i as usize]])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_forms() {
        assert_eq!(parse_host("unix:///tmp/a.sock").unwrap(), Host::Unix("/tmp/a.sock".into()));
        assert_eq!(parse_host("unix://").unwrap(), Host::Unix(DEFAULT_SOCKET.into()));
        assert_eq!(parse_host("tcp://0.0.0.0").unwrap(), Host::Tcp("0.0.0.0:2376".into()));
        assert_eq!(parse_host("fd://").unwrap(), Host::Fd(None));
        assert_eq!(parse_host("fd://4").unwrap(), Host::Fd(Some(4)));
        assert_eq!(
            parse_host("fd://x").unwrap_err().to_string(),
            "failed to parse systemd fd address: should be a number: x"
        );
        assert!(parse_host("ftp://x").is_err());
    }

    #[test]
    fn selects_activated_sockets_as_dockerd() {
        assert!(matches!(select_activated(None, &[]), Err(HostError::NoActivatedSockets)));
        assert_eq!(select_activated(None, &[3, 4]).unwrap(), vec![3, 4]);
        assert_eq!(select_activated(Some(4), &[3, 4]).unwrap(), vec![4]);
        assert!(matches!(select_activated(Some(5), &[3, 4]), Err(HostError::TooFewActivated)));
        assert!(matches!(select_activated(Some(1), &[3]), Err(HostError::TooFewActivated)));
    }

    #[test]
    fn binds_unix_sockets_0660_and_knows_them_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s/docker.sock");
        let (l, warn) = bind_unix(&p, "").unwrap();
        assert!(warn.is_none());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o660);
        assert_eq!(socket_kind(std::os::fd::AsFd::as_fd(&l)).unwrap(), SocketKind::Unix(p.clone()));
        // a live socket is refused, a stale one replaced
        assert!(matches!(bind_unix(&p, ""), Err(HostError::InUse(_))));
        drop(l);
        let (_l, _) = bind_unix(&p, "").unwrap();
        // a named group that does not exist is an error; the default one a warning
        let q = d.path().join("other.sock");
        let e = bind_unix(&q, "no-such-group-berth").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("could not change group of unix socket {}: group no-such-group-berth not found", q.display())
        );
        assert_eq!(lookup_gid("0"), Some(0));
        let t = bind_tcp("127.0.0.1:0").unwrap();
        assert!(matches!(socket_kind(std::os::fd::AsFd::as_fd(&t)).unwrap(), SocketKind::Tcp(_)));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(socket_kind(std::os::fd::AsFd::as_fd(&a)).is_err());
    }
}
