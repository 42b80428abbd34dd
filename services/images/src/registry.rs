//! The OCI distribution client. Written on reqwest rather than oci-client because
//! Docker's semantics need control it does not give: `registry-mirrors` tried before
//! Docker Hub with fallback, "insecure" meaning HTTPS without verification then plain
//! HTTP for `insecure-registries` and 127.0.0.0/8, the registry's error codes for
//! Docker's messages, ranged blob reads to resume an ingest, and streamed uploads
//! whose digest is known only at the end.
//!
//! A [`Repo`] is one repository on one endpoint with its credentials: it pings
//! `/v2/` once, answers a Basic or Bearer challenge (token realm, scopes, identity
//! tokens) and keeps the token for the requests that follow.

use base64::Engine;
use bus_schema::images::RegistryAuth;
use reqwest::{header, Method, StatusCode};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::reference::{Reference, DEFAULT_DOMAIN};

/// Docker Hub's registry host and its login address.
pub const HUB_REGISTRY: &str = "registry-1.docker.io";
pub const INDEX_SERVER: &str = "https://index.docker.io/v1/";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The endpoint could not be reached (connection refused, DNS, TLS).
    #[error("{0}")]
    Unreachable(String),
    /// The registry answered with an error status; `errors` are its error codes
    /// (`MANIFEST_UNKNOWN`, `DENIED`, ...) with messages.
    #[error("{}", status_message(*status, errors, url))]
    Status {
        status: u16,
        errors: Vec<(String, String)>,
        url: String,
    },
    #[error("{0}")]
    Invalid(String),
}

fn status_message(status: u16, errors: &[(String, String)], url: &str) -> String {
    if errors.is_empty() {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        return format!("unexpected status from {url}: {status} {reason}");
    }
    errors
        .iter()
        .map(|(c, m)| code_message(c, m))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Go's `errcode.Error.Error()`: "manifest unknown: manifest unknown".
pub fn code_message(code: &str, msg: &str) -> String {
    let c = code.to_lowercase().replace('_', " ");
    if msg.is_empty() {
        c
    } else {
        format!("{c}: {msg}")
    }
}

impl RegistryError {
    pub fn code(&self) -> Option<&str> {
        match self {
            RegistryError::Status { errors, .. } => errors.first().map(|(c, _)| c.as_str()),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RegistryError::Unreachable(_))
    }
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
            || matches!(
                self.code(),
                Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN")
            )
    }
    pub fn is_denied(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
            || matches!(self.code(), Some("DENIED" | "UNAUTHORIZED"))
    }
    /// The registry's error as Docker prints it, or the status line.
    pub fn cause(&self) -> String {
        self.to_string()
    }
}

/// What the daemon configuration says about registries.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Docker Hub mirrors (`http(s)://host[:port]`).
    pub mirrors: Vec<String>,
    /// `insecure-registries` entries that are hosts (`host[:port]`).
    pub insecure_hosts: Vec<String>,
    /// `insecure-registries` CIDRs, plus 127.0.0.0/8 always.
    pub insecure_cidrs: Vec<(IpAddr, u8)>,
}

impl RegistrySettings {
    pub fn from_config(cfg: &berth_config::DaemonConfig) -> RegistrySettings {
        let mut s = RegistrySettings {
            mirrors: cfg
                .registry_mirrors
                .iter()
                .map(|m| m.trim_end_matches('/').to_string())
                .collect(),
            insecure_cidrs: vec![
                (IpAddr::from([127, 0, 0, 0]), 8),
                ("::1".parse().unwrap(), 128),
            ],
            ..Default::default()
        };
        for r in &cfg.insecure_registries {
            let r = r
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            if let Some(c) = parse_cidr(r) {
                s.insecure_cidrs.push(c);
            } else {
                s.insecure_hosts.push(r.to_string());
            }
        }
        s
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    Some((ip.parse().ok()?, bits.parse().ok()?))
}

fn in_cidr(ip: IpAddr, (net, bits): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits.min(32))
            };
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits.min(128))
            };
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// One place a repository can be read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host[:port]` or `http://...`.
    pub base: String,
    pub mirror: bool,
    /// HTTPS without certificate verification (insecure registries).
    pub skip_verify: bool,
}

#[derive(Debug, Clone)]
enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    token: String,
    until: Instant,
}

/// The shared client: HTTP connection pools, challenges and tokens.
pub struct Registry {
    secure: reqwest::Client,
    insecure: reqwest::Client,
    settings: RegistrySettings,
    challenges: Mutex<HashMap<String, (Challenge, Instant)>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
}

const CHALLENGE_TTL: Duration = Duration::from_secs(60);

impl Registry {
    pub fn new(settings: RegistrySettings) -> Arc<Registry> {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let build = |skip: bool| {
            reqwest::Client::builder()
                .user_agent(concat!(
                    "berth/",
                    env!("CARGO_PKG_VERSION"),
                    " (docker-compatible)"
                ))
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(16)
                .tcp_nodelay(true)
                .tls_danger_accept_invalid_certs(skip)
        };
        // The verifying client needs the host's CA certificates; a host without them
        // (no ca-certificates package) still serves local and insecure registries, and
        // TLS pulls fail with an unknown-authority error instead of the service not
        // starting at all.
        let build = |skip: bool| {
            build(skip).build().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no CA certificates: TLS registries will be refused (install ca-certificates)");
                build(skip)
                    .tls_certs_only(std::iter::empty())
                    .build()
                    .expect("http client without CA certificates")
            })
        };
        Arc::new(Registry {
            secure: build(false),
            insecure: build(true),
            settings,
            challenges: Mutex::default(),
            tokens: Mutex::default(),
        })
    }

    /// The verifying HTTP client (imports from a URL).
    pub fn http(&self) -> &reqwest::Client {
        &self.secure
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// Docker's `isSecureIndex`: configured hosts, then the CIDRs of its addresses.
    pub async fn is_insecure(&self, host: &str) -> bool {
        if self.settings.insecure_hosts.iter().any(|h| h == host) {
            return true;
        }
        let hostname = host_part(host);
        let ips: Vec<IpAddr> = if let Ok(ip) = hostname.trim_matches(['[', ']']).parse::<IpAddr>() {
            vec![ip]
        } else if hostname == "localhost" {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            match tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host((hostname, 0)),
            )
            .await
            {
                Ok(Ok(a)) => a.map(|s| s.ip()).collect(),
                _ => vec![],
            }
        };
        ips.iter().any(|ip| {
            self.settings
                .insecure_cidrs
                .iter()
                .any(|c| in_cidr(*ip, *c))
        })
    }

    /// Where to read `r` from, in order: Hub mirrors first, then the registry itself
    /// (HTTPS, then plain HTTP for insecure registries).
    pub async fn endpoints(&self, domain: &str, with_mirrors: bool) -> Vec<Endpoint> {
        let mut v = Vec::new();
        if domain == DEFAULT_DOMAIN {
            if with_mirrors {
                for m in &self.settings.mirrors {
                    v.push(Endpoint {
                        base: m.clone(),
                        mirror: true,
                        skip_verify: false,
                    });
                }
            }
            v.push(Endpoint {
                base: format!("https://{HUB_REGISTRY}"),
                mirror: false,
                skip_verify: false,
            });
            return v;
        }
        if self.is_insecure(domain).await {
            v.push(Endpoint {
                base: format!("https://{domain}"),
                mirror: false,
                skip_verify: true,
            });
            v.push(Endpoint {
                base: format!("http://{domain}"),
                mirror: false,
                skip_verify: true,
            });
        } else {
            v.push(Endpoint {
                base: format!("https://{domain}"),
                mirror: false,
                skip_verify: false,
            });
        }
        v
    }

    fn client(&self, ep: &Endpoint) -> &reqwest::Client {
        if ep.skip_verify {
            &self.insecure
        } else {
            &self.secure
        }
    }

    /// A session on `path` (e.g. `library/busybox`) at `ep`.
    pub fn repo(
        self: &Arc<Self>,
        ep: Endpoint,
        path: &str,
        auth: Option<RegistryAuth>,
        push: bool,
    ) -> Repo {
        Repo {
            reg: self.clone(),
            ep,
            path: path.to_string(),
            auth,
            push,
            token: Mutex::new(None),
            extra_scopes: vec![],
        }
    }

    async fn challenge(&self, ep: &Endpoint) -> Result<Challenge, RegistryError> {
        if let Some((c, at)) = self.challenges.lock().unwrap().get(&ep.base) {
            if at.elapsed() < CHALLENGE_TTL {
                return Ok(c.clone());
            }
        }
        let url = format!("{}/v2/", ep.base);
        let resp = self
            .client(ep)
            .get(&url)
            .send()
            .await
            .map_err(|e| net_error("Get", &url, &e))?;
        let c = match resp.status() {
            StatusCode::UNAUTHORIZED => parse_challenge(resp.headers()),
            _ => Challenge::None,
        };
        self.challenges
            .lock()
            .unwrap()
            .insert(ep.base.clone(), (c.clone(), Instant::now()));
        Ok(c)
    }

    fn forget(&self, ep: &Endpoint) {
        self.challenges.lock().unwrap().remove(&ep.base);
    }

    /// `docker login`: check credentials against the registry named by
    /// `server_address` (Docker Hub when empty). Answers the identity token if the
    /// token server handed one out.
    pub async fn login(
        self: &Arc<Self>,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, RegistryError> {
        let addr = auth.server_address.clone().unwrap_or_default();
        let host = login_host(&addr);
        let mut last = None;
        for ep in self.endpoints(&host, false).await {
            match self.login_at(&ep, auth).await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_unreachable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Invalid("no endpoint".into())))
    }

    async fn login_at(
        &self,
        ep: &Endpoint,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, RegistryError> {
        self.forget(ep);
        let url = format!("{}/v2/", ep.base);
        match self.challenge(ep).await? {
            Challenge::None => Ok(None),
            Challenge::Basic => {
                let mut rb = self.client(ep).get(&url);
                if let (Some(u), p) = (&auth.username, &auth.password) {
                    rb = rb.basic_auth(u, p.as_deref());
                }
                let resp = rb.send().await.map_err(|e| net_error("Get", &url, &e))?;
                if resp.status().is_success() {
                    Ok(None)
                } else {
                    Err(RegistryError::Status {
                        status: resp.status().as_u16(),
                        errors: vec![(
                            "UNAUTHORIZED".into(),
                            format!(
                                "login attempt to {url} failed with status: {}",
                                status_line(resp.status())
                            ),
                        )],
                        url,
                    })
                }
            }
            Challenge::Bearer { realm, service } => {
                let (tok, refresh) = fetch_token(
                    self.client(ep),
                    &realm,
                    service.as_deref(),
                    &[],
                    Some(auth),
                    true,
                )
                .await?;
                let _ = tok;
                Ok(refresh)
            }
        }
    }
}

fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

/// The registry host a login address names.
pub fn login_host(addr: &str) -> String {
    let a = addr.trim();
    if a.is_empty()
        || a == INDEX_SERVER
        || a.contains("index.docker.io")
        || a == "docker.io"
        || a.contains("registry-1.docker.io")
    {
        return DEFAULT_DOMAIN.to_string();
    }
    let a = a
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    a.split('/').next().unwrap_or(a).to_string()
}

fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

fn parse_challenge(h: &header::HeaderMap) -> Challenge {
    let mut basic = false;
    for v in h.get_all(header::WWW_AUTHENTICATE) {
        let Ok(s) = v.to_str() else { continue };
        let (scheme, params) = s.trim().split_once(' ').unwrap_or((s.trim(), ""));
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let p = parse_params(params);
                if let Some(realm) = p.get("realm") {
                    return Challenge::Bearer {
                        realm: realm.clone(),
                        service: p.get("service").cloned(),
                    };
                }
            }
            "basic" => basic = true,
            _ => {}
        }
    }
    if basic {
        Challenge::Basic
    } else {
        // 401 without a challenge we know: try Basic as Docker does.
        Challenge::Basic
    }
}

/// `realm="x",service="y",scope="a b"` into a map.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let key = s[ks..i].trim().to_ascii_lowercase();
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(b[i] as char);
                i += 1;
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = s[vs.min(b.len())..i.min(b.len())].trim().to_string();
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
    }
    out
}

/// Ask a token server for a bearer token. With credentials, they go as Basic auth
/// (or as an OAuth refresh token for identity tokens). Answers (token, refresh token).
async fn fetch_token(
    client: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    scopes: &[String],
    auth: Option<&RegistryAuth>,
    offline: bool,
) -> Result<(String, Option<String>), RegistryError> {
    let mut url = reqwest::Url::parse(realm)
        .map_err(|e| RegistryError::Invalid(format!("invalid token realm {realm:?}: {e}")))?;
    let identity = auth.and_then(|a| a.identity_token.clone());
    let resp = if let Some(refresh) = identity {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh),
            ("client_id", "docker".into()),
        ];
        if let Some(s) = service {
            form.push(("service", s.into()));
        }
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", k, urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        client
            .post(url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| net_error("Post", url.as_str(), &e))?
    } else {
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
            if offline {
                q.append_pair("offline_token", "true");
                q.append_pair("client_id", "docker");
            }
        }
        let mut rb = client.get(url.clone());
        if let Some(a) = auth {
            if let Some(u) = &a.username {
                rb = rb.basic_auth(u, a.password.as_deref());
            }
        }
        rb.send()
            .await
            .map_err(|e| net_error("Get", url.as_str(), &e))?
    };
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| net_error("Get", url.as_str(), &e))?;
    if !status.is_success() {
        let mut errors = parse_errors(&body);
        if errors.is_empty() {
            errors.push((
                "UNAUTHORIZED".into(),
                "incorrect username or password".into(),
            ));
        }
        return Err(RegistryError::Status {
            status: status.as_u16(),
            errors,
            url: url.to_string(),
        });
    }
    let j: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| RegistryError::Invalid(format!("token response: {e}")))?;
    let token = j
        .get("token")
        .or_else(|| j.get("access_token"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| RegistryError::Invalid("token server answered without a token".into()))?;
    Ok((
        token.to_string(),
        j.get("refresh_token")
            .and_then(|t| t.as_str())
            .map(str::to_string),
    ))
}

fn urlencode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The registry's `{"errors":[{"code","message"}]}` body.
pub fn parse_errors(body: &[u8]) -> Vec<(String, String)> {
    let Ok(j) = serde_json::from_slice::<serde_json::Value>(body) else {
        return vec![];
    };
    let Some(errs) = j.get("errors").and_then(|e| e.as_array()) else {
        // token servers answer {"details": "..."}
        if let Some(d) = j.get("details").and_then(|d| d.as_str()) {
            return vec![("UNAUTHORIZED".into(), d.to_string())];
        }
        return vec![];
    };
    errs.iter()
        .map(|e| {
            (
                e.get("code")
                    .and_then(|c| c.as_str())
                    .unwrap_or("UNKNOWN")
                    .to_string(),
                e.get("message")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// Go's `url.Error` wording for a failed request:
/// `Get "http://127.0.0.1:5099/v2/": dial tcp 127.0.0.1:5099: connect: connection refused`.
fn net_error(method: &str, url: &str, e: &reqwest::Error) -> RegistryError {
    let mut chain = String::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        chain.push_str(&s.to_string().to_lowercase());
        chain.push(' ');
        src = s.source();
    }
    let hostport = reqwest::Url::parse(url)
        .ok()
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or(""),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_default();
    let detail = if chain.contains("connection refused") {
        format!("dial tcp {hostport}: connect: connection refused")
    } else if chain.contains("dns error") || chain.contains("failed to lookup") {
        format!("dial tcp: lookup {}: no such host", host_part(&hostport))
    } else if e.is_timeout() {
        format!("dial tcp {hostport}: i/o timeout")
    } else if chain.contains("unreachable") {
        format!("dial tcp {hostport}: connect: network is unreachable")
    } else {
        chain.trim().to_string()
    };
    if e.is_connect() || e.is_timeout() || e.is_request() {
        RegistryError::Unreachable(format!("{method} \"{url}\": {detail}"))
    } else {
        RegistryError::Invalid(format!("{method} \"{url}\": {detail}"))
    }
}

/// A repository on one endpoint, with the credentials of the request.
pub struct Repo {
    reg: Arc<Registry>,
    pub ep: Endpoint,
    pub path: String,
    auth: Option<RegistryAuth>,
    push: bool,
    token: Mutex<Option<String>>,
    extra_scopes: Vec<String>,
}

/// A manifest as fetched: raw bytes, media type, digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub body: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl Repo {
    /// Also ask for pull access on another repository (cross-repository mounts).
    pub fn with_mount_source(mut self, from: &str) -> Repo {
        self.extra_scopes.push(format!("repository:{from}:pull"));
        self
    }

    fn scopes(&self) -> Vec<String> {
        let mut v = vec![format!(
            "repository:{}:{}",
            self.path,
            if self.push { "pull,push" } else { "pull" }
        )];
        v.extend(self.extra_scopes.iter().cloned());
        v
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{}", self.ep.base, self.path, tail)
    }

    async fn authorization(&self, fresh: bool) -> Result<Option<String>, RegistryError> {
        if fresh {
            self.reg.forget(&self.ep);
            *self.token.lock().unwrap() = None;
        } else if let Some(t) = self.token.lock().unwrap().clone() {
            return Ok(Some(t));
        }
        let h = match self.reg.challenge(&self.ep).await? {
            Challenge::None => None,
            Challenge::Basic => match &self.auth {
                Some(RegistryAuth {
                    username: Some(u),
                    password,
                    ..
                }) => {
                    let raw = format!("{u}:{}", password.as_deref().unwrap_or(""));
                    Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    ))
                }
                _ => None,
            },
            Challenge::Bearer { realm, service } => {
                if let Some(t) = self.auth.as_ref().and_then(|a| a.registry_token.clone()) {
                    Some(format!("Bearer {t}"))
                } else {
                    let scopes = self.scopes();
                    let key = format!(
                        "{}|{}|{}",
                        self.ep.base,
                        scopes.join(" "),
                        self.auth
                            .as_ref()
                            .and_then(|a| a.username.clone())
                            .unwrap_or_default()
                    );
                    let cached = if fresh {
                        None
                    } else {
                        self.reg
                            .tokens
                            .lock()
                            .unwrap()
                            .get(&key)
                            .filter(|t| t.until > Instant::now())
                            .map(|t| t.token.clone())
                    };
                    let tok = match cached {
                        Some(t) => t,
                        None => {
                            let (t, _) = fetch_token(
                                self.reg.client(&self.ep),
                                &realm,
                                service.as_deref(),
                                &scopes,
                                self.auth.as_ref(),
                                false,
                            )
                            .await?;
                            self.reg.tokens.lock().unwrap().insert(
                                key,
                                CachedToken {
                                    token: t.clone(),
                                    until: Instant::now() + Duration::from_secs(50),
                                },
                            );
                            t
                        }
                    };
                    Some(format!("Bearer {tok}"))
                }
            }
        };
        *self.token.lock().unwrap() = h.clone();
        Ok(h)
    }

    /// Send a request with authorization; on 401, answer the challenge again once.
    async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let verb = method_word(&method);
        for attempt in 0..2 {
            let auth = self.authorization(attempt > 0).await?;
            // (HTTP to the registry, not the node bus)
            let mut rb = reqwest::Client::request(self.reg.client(&self.ep), method.clone(), url);
            if let Some(a) = &auth {
                rb = rb.header(header::AUTHORIZATION, a);
            }
            let resp = build(rb)
                .send()
                .await
                .map_err(|e| net_error(verb, url, &e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                continue;
            }
            return Ok(resp);
        }
        unreachable!()
    }

    async fn error_of(resp: reqwest::Response, url: &str) -> RegistryError {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let mut errors = parse_errors(&body);
        if errors.is_empty() {
            match status {
                401 => errors.push(("UNAUTHORIZED".into(), "authentication required".into())),
                403 => errors.push((
                    "DENIED".into(),
                    "requested access to the resource is denied".into(),
                )),
                _ => {}
            }
        }
        RegistryError::Status {
            status,
            errors,
            url: url.to_string(),
        }
    }

    /// GET a manifest by tag or digest. A digest reference is verified.
    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = crate::manifest::ACCEPT.join(", ");
        let resp = self
            .send(Method::GET, &url, |rb| {
                rb.header(header::ACCEPT, accept.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp, &url).await);
        }
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| net_error("Get", &url, &e))?
            .to_vec();
        let digest = crate::content::sha256_digest(&body);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(RegistryError::Invalid(format!(
                "manifest verification failed for digest {reference}"
            )));
        }
        Ok(FetchedManifest {
            body,
            media_type: ct,
            digest,
        })
    }

    /// GET a blob, from `offset` on when the registry supports ranges. Answers the
    /// response and whether it starts at `offset` (206) or at 0 (200).
    pub async fn blob(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<(reqwest::Response, bool), RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self
            .send(Method::GET, &url, |rb| {
                if offset > 0 {
                    rb.header(header::RANGE, format!("bytes={offset}-"))
                } else {
                    rb
                }
            })
            .await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => Ok((resp, true)),
            s if s.is_success() => Ok((resp, false)),
            _ => Err(Self::error_of(resp, &url).await),
        }
    }

    /// A small blob whole (configs).
    pub async fn blob_bytes(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let (resp, _) = self.blob(digest, 0).await?;
        let url = self.url(&format!("blobs/{digest}"));
        Ok(resp
            .bytes()
            .await
            .map_err(|e| net_error("Get", &url, &e))?
            .to_vec())
    }

    /// HEAD a blob: its size when present.
    pub async fn blob_exists(&self, digest: &str) -> Result<Option<u64>, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send(Method::HEAD, &url, |rb| rb).await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Self::error_of(resp, &url).await),
        }
    }

    /// Start an upload; with `mount` (digest, from repository) the registry may mount
    /// the blob instead (answers None then).
    pub async fn start_upload(
        &self,
        mount: Option<(&str, &str)>,
    ) -> Result<Option<String>, RegistryError> {
        let mut url = self.url("blobs/uploads/");
        if let Some((d, from)) = mount {
            url = format!("{url}?mount={d}&from={from}");
        }
        let resp = self
            .send(Method::POST, &url, |rb| {
                rb.header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(None),
            StatusCode::ACCEPTED | StatusCode::CREATED => {
                let loc = location(&resp, &self.ep.base).ok_or_else(|| {
                    RegistryError::Invalid("upload started without a Location".into())
                })?;
                Ok(Some(loc))
            }
            _ => Err(Self::error_of(resp, &url).await),
        }
    }

    /// Send the blob's bytes (a stream) to an upload, then close it with its digest.
    pub async fn upload(
        &self,
        loc: &str,
        body: reqwest::Body,
        digest_at_end: impl std::future::Future<Output = Option<String>>,
    ) -> Result<(), RegistryError> {
        let body = std::sync::Mutex::new(Some(body));
        let resp = self
            .send(Method::PATCH, loc, |rb| {
                let b = body
                    .lock()
                    .unwrap()
                    .take()
                    .unwrap_or_else(|| reqwest::Body::from(Vec::new()));
                rb.header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(b)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp, loc).await);
        }
        let next = location(&resp, &self.ep.base).unwrap_or_else(|| loc.to_string());
        let digest = digest_at_end
            .await
            .ok_or_else(|| RegistryError::Invalid("the layer stream ended with an error".into()))?;
        let sep = if next.contains('?') { '&' } else { '?' };
        let put = format!("{next}{sep}digest={digest}");
        let resp = self
            .send(Method::PUT, &put, |rb| {
                rb.header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp, &put).await);
        }
        Ok(())
    }

    /// PUT a manifest under a tag or digest; answers its digest.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: Vec<u8>,
    ) -> Result<String, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .send(Method::PUT, &url, |rb| {
                rb.header(header::CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp, &url).await);
        }
        Ok(crate::content::sha256_digest(&body))
    }
}

fn method_word(m: &Method) -> &'static str {
    match *m {
        Method::GET => "Get",
        Method::HEAD => "Head",
        Method::POST => "Post",
        Method::PUT => "Put",
        Method::PATCH => "Patch",
        Method::DELETE => "Delete",
        _ => "Request",
    }
}

fn location(resp: &reqwest::Response, base: &str) -> Option<String> {
    let l = resp.headers().get(header::LOCATION)?.to_str().ok()?;
    if l.starts_with("http://") || l.starts_with("https://") {
        Some(l.to_string())
    } else {
        Some(format!(
            "{}{}",
            base,
            if l.starts_with('/') {
                l.to_string()
            } else {
                format!("/{l}")
            }
        ))
    }
}

/// The path Docker uses for a reference on an endpoint: mirrors serve Hub paths.
pub fn repo_path(r: &Reference) -> &str {
    &r.path
}

#[cfg(test)]
mod tests {
    /// A host without CA certificates: the service starts (it used to panic) and a
    /// TLS request fails with a certificate error. Runs itself in a child process
    /// with the CA locations pointed at nothing (the environment is per process).
    #[test]
    fn no_ca_certificates_on_the_host() {
        if std::env::var_os("BERTH_TEST_NO_CA").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "registry::tests::no_ca_certificates_on_the_host", "--nocapture"])
                .env("BERTH_TEST_NO_CA", "1")
                .env("SSL_CERT_FILE", "/nonexistent/berth-no-ca.pem")
                .env("SSL_CERT_DIR", "/nonexistent/berth-no-ca")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        // the premise: a verifying client cannot be built here (the old code's panic)
        assert!(reqwest::Client::builder().build().is_err(), "the CA locations were not emptied");
        let reg = super::Registry::new(super::RegistrySettings::default());
        // the insecure client still works (it verifies nothing) and the verifying one exists
        let _ = reg.http();
    }

    use super::*;

    #[test]
    fn challenge_params() {
        let p = parse_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let mut h = header::HeaderMap::new();
        h.insert(
            header::WWW_AUTHENTICATE,
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg""#
                .parse()
                .unwrap(),
        );
        assert!(
            matches!(parse_challenge(&h), Challenge::Bearer { service: Some(s), .. } if s == "reg")
        );
        let mut h = header::HeaderMap::new();
        h.insert(
            header::WWW_AUTHENTICATE,
            r#"Basic realm="Registry Realm""#.parse().unwrap(),
        );
        assert!(matches!(parse_challenge(&h), Challenge::Basic));
    }

    #[test]
    fn errors_read_like_docker() {
        let e = parse_errors(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#,
        );
        let re = RegistryError::Status {
            status: 404,
            errors: e,
            url: "u".into(),
        };
        assert_eq!(re.to_string(), "manifest unknown: manifest unknown");
        assert!(re.is_not_found());
        assert_eq!(
            code_message("DENIED", "requested access to the resource is denied"),
            "denied: requested access to the resource is denied"
        );
    }

    #[tokio::test]
    async fn insecure_by_default_on_loopback() {
        let r = Registry::new(RegistrySettings::from_config(&berth_config::DaemonConfig {
            insecure_registries: vec!["10.1.0.0/16".into(), "myreg:5000".into()],
            registry_mirrors: vec!["http://127.0.0.1:5000/".into()],
            ..Default::default()
        }));
        assert!(r.is_insecure("127.0.0.1:5000").await);
        assert!(r.is_insecure("localhost:5000").await);
        assert!(r.is_insecure("10.1.2.3").await);
        assert!(r.is_insecure("myreg:5000").await);
        assert!(!r.is_insecure("10.2.0.1:5000").await);
        let eps = r.endpoints("docker.io", true).await;
        assert_eq!(eps[0].base, "http://127.0.0.1:5000");
        assert!(eps[0].mirror);
        assert_eq!(eps[1].base, "https://registry-1.docker.io");
        let eps = r.endpoints("127.0.0.1:5000", true).await;
        assert_eq!(
            eps.iter().map(|e| e.base.as_str()).collect::<Vec<_>>(),
            ["https://127.0.0.1:5000", "http://127.0.0.1:5000"]
        );
        assert_eq!(login_host(""), "docker.io");
        assert_eq!(login_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(login_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(login_host("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
    }

    #[tokio::test]
    async fn unreachable_reads_like_go() {
        let r = Registry::new(RegistrySettings::default());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = Endpoint {
            base: format!("http://127.0.0.1:{port}"),
            mirror: false,
            skip_verify: true,
        };
        let e = r
            .repo(ep, "x", None, false)
            .manifest("latest")
            .await
            .unwrap_err();
        assert!(e.is_unreachable());
        assert_eq!(
            e.to_string(),
            format!("Get \"http://127.0.0.1:{port}/v2/\": dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
    }
}
