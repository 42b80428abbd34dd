//! Containers and exec: `/containers/...`, `/exec/...`.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::{Extension, Json, Router};
use berth_bus::runtime::RuntimeApi;
use futures_util::StreamExt;
use bus_schema::runtime as rt;
use bus_schema::{docker, BusError};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::error::{ApiError, ApiResult};
use crate::hijack;
use crate::util::{bool_or, bool_value, bytes_stream, filters, int_value, FirstQuery, Query as Q};
use crate::version::ApiVersion;

/// A backend call's future.
pub type Fut<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, BusError>> + Send + 'a>>;

/// What the container routes need: the runtime service, through its typed client
/// (`berth_bus::runtime::RuntimeClient` on the bus; any `RuntimeApi` in tests).
pub trait Backend: Send + Sync + 'static {
    type Runtime: RuntimeApi;
    fn runtime(&self) -> &Self::Runtime;
    /// The node's default runtime (daemon.json `default-runtime`, else runc).
    fn default_runtime(&self) -> &str {
        berth_config::daemon::DEFAULT_RUNTIME
    }
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/containers/json", get(list::<B>))
        .route("/containers/create", post(create::<B>))
        .route("/containers/prune", post(prune::<B>))
        .route("/containers/{id}/json", get(inspect::<B>))
        .route("/containers/{id}/start", post(start::<B>))
        .route("/containers/{id}/stop", post(stop::<B>))
        .route("/containers/{id}/restart", post(restart::<B>))
        .route("/containers/{id}/kill", post(kill::<B>))
        .route("/containers/{id}/pause", post(pause::<B>))
        .route("/containers/{id}/unpause", post(unpause::<B>))
        .route("/containers/{id}/rename", post(rename::<B>))
        .route("/containers/{id}/resize", post(resize::<B>))
        .route("/containers/{id}/wait", post(wait::<B>))
        .route("/containers/{id}", axum::routing::delete(remove::<B>))
        .route("/containers/{id}/{alias}", axum::routing::delete(remove_by_link_name::<B>))
        .route("/containers/{id}/{alias}/json", get(inspect_by_link_name::<B>))
        .route("/containers/{id}/logs", get(logs::<B>))
        .route("/containers/{id}/attach", post(attach::<B>))
        .route("/containers/{id}/attach/ws", get(attach_ws::<B>))
        .route("/containers/{id}/exec", post(exec_create::<B>))
        .route("/containers/{id}/top", get(top::<B>))
        .route("/containers/{id}/stats", get(stats::<B>))
        .route("/containers/{id}/update", post(update::<B>))
        .route("/containers/{id}/changes", get(changes::<B>))
        .route("/containers/{id}/export", get(export::<B>))
        .route("/containers/{id}/archive", head(archive_head::<B>).get(archive_get::<B>).put(archive_put::<B>))
        .route("/exec/{id}/start", post(exec_start::<B>))
        .route("/exec/{id}/resize", post(exec_resize::<B>))
        .route("/exec/{id}/json", get(exec_inspect::<B>))
        .with_state(b)
}

/// A create body as the client's API version means it (moby's container router):
/// fields a version did not have are ignored, defaults it had kept, options it
/// cannot express refused with Docker's words.
pub fn create_for_version(body: &mut docker::ContainerCreateBody, v: ApiVersion) -> ApiResult<()> {
    use docker::MountType;
    let hc = body.host_config.get_or_insert_with(Default::default);
    let mounts = hc.mounts.get_or_insert_with(Vec::new);
    if v.less_than("1.40") {
        for m in mounts.iter_mut() {
            if let Some(bo) = m.bind_options.as_mut() {
                bo.non_recursive = None;
            }
        }
        // older clients expect the default to be shareable
        if hc.ipc_mode.as_deref().is_none_or(str::is_empty) {
            hc.ipc_mode = Some("shareable".into());
        }
    }
    if v.less_than("1.42") {
        for m in mounts.iter_mut() {
            if let Some(bo) = m.bind_options.as_mut() {
                bo.create_mountpoint = None;
            }
            // invalid combinations older versions did not check
            if m.typ != Some(MountType::VOLUME) {
                m.volume_options = None;
            }
            if m.typ != Some(MountType::TMPFS) {
                m.tmpfs_options = None;
            }
        }
        hc.console_size = None;
    } else {
        for m in mounts.iter() {
            let t = m.typ.map(|t| t.to_string()).unwrap_or_default();
            if m.volume_options.is_some() && m.typ != Some(MountType::VOLUME) {
                return Err(ApiError::bad_request(format!("VolumeOptions must not be specified on mount type \"{t}\"")));
            }
            if m.bind_options.is_some() && m.typ != Some(MountType::BIND) {
                return Err(ApiError::bad_request(format!("BindOptions must not be specified on mount type \"{t}\"")));
            }
            if m.tmpfs_options.is_some() && m.typ != Some(MountType::TMPFS) {
                return Err(ApiError::bad_request(format!("TmpfsOptions must not be specified on mount type \"{t}\"")));
            }
        }
    }
    if v.less_than("1.43") {
        hc.annotations = None;
    }
    if v.less_than("1.44") {
        for m in mounts.iter() {
            if m.typ == Some(MountType::BIND) && m.bind_options.as_ref().and_then(|b| b.read_only_force_recursive).unwrap_or(false) {
                return Err(ApiError::bad_request("BindOptions.ReadOnlyForceRecursive needs API v1.44 or newer"));
            }
        }
    }
    if v.less_than("1.45")
        && mounts.iter().any(|m| m.volume_options.as_ref().and_then(|o| o.subpath.as_ref()).is_some_and(|s| !s.is_empty()))
    {
        return Err(ApiError::bad_request("VolumeOptions.Subpath needs API v1.45 or newer"));
    }
    if mounts.is_empty() {
        hc.mounts = None;
    }
    if v.less_than("1.44") {
        if let Some(h) = body.healthcheck.as_mut() {
            h.start_interval = None;
        }
    }
    Ok(())
}

async fn create<B: Backend>(
    State(b): State<Arc<B>>,
    FirstQuery(q): FirstQuery,
    Extension(v): Extension<ApiVersion>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let raw = body;
    let mut body: docker::ContainerCreateBody = crate::util::config_body(&raw, false)?.unwrap_or_default();
    create_for_version(&mut body, v)?;
    container_mac_address(&raw, &mut body);
    let name = q.get("name").filter(|n| !n.is_empty()).cloned();
    let platform = q.get("platform").filter(|n| !n.is_empty()).cloned();
    let r = b.runtime().container_create(rt::ContainerCreate { name, body, platform, plugin: None }).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

/// The container-wide `MacAddress` of a create body (`docker run --mac-address`,
/// docker-py's `mac_address`; the API model berth decodes into no longer has it) is
/// the address on the container's first network, as Moby applies it.
fn container_mac_address(raw: &[u8], body: &mut docker::ContainerCreateBody) {
    #[derive(serde::Deserialize, Default)]
    struct Legacy {
        #[serde(rename = "MacAddress", default)]
        mac_address: Option<String>,
    }
    let Ok(l) = crate::gojson::from_slice::<Legacy>(raw) else { return };
    let Some(mac) = l.mac_address.filter(|m| !m.is_empty()) else { return };
    let mode = body.host_config.as_ref().and_then(|h| h.network_mode.clone()).unwrap_or_default();
    if matches!(mode.as_str(), "host" | "none") || mode.starts_with("container:") {
        return;
    }
    let net = if mode.is_empty() || mode == "default" { "bridge".to_string() } else { mode };
    let eps = body.networking_config.get_or_insert_with(Default::default).endpoints_config.get_or_insert_with(Default::default);
    let ep = eps.entry(net).or_default();
    if ep.mac_address.as_deref().is_none_or(str::is_empty) {
        ep.mac_address = Some(mac);
    }
}

async fn list<B: Backend>(
    State(b): State<Arc<B>>,
    FirstQuery(q): FirstQuery,
    Extension(v): Extension<ApiVersion>,
) -> ApiResult<Json<serde_json::Value>> {
    let r = rt::ContainerList {
        all: bool_value(&q, "all"),
        limit: int_value(&q, "limit")?,
        size: bool_value(&q, "size"),
        filters: filters(&q)?,
    };
    let mut j = serde_json::to_value(b.runtime().container_list(r).await?).map_err(|e| BusError::internal(e.to_string()))?;
    for c in j.as_array_mut().into_iter().flatten() {
        crate::goshape::container_summary(c, v);
    }
    Ok(Json(j))
}

async fn inspect<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    FirstQuery(q): FirstQuery,
    Extension(v): Extension<ApiVersion>,
) -> ApiResult<Json<serde_json::Value>> {
    let r = b.runtime().container_inspect(rt::ContainerInspect { id, size: bool_value(&q, "size") }).await?;
    let mut j = serde_json::to_value(&r).map_err(|e| BusError::internal(e.to_string()))?;
    // Moby 20.10 writes the default runtime at the first start (a created
    // container's HostConfig has none: recorded); newer engines at create
    if !v.less_than("1.42") {
        if let Some(hc) = j.get_mut("HostConfig").and_then(|h| h.as_object_mut()) {
            hc.entry("Runtime").or_insert_with(|| b.default_runtime().into());
        }
    }
    legacy_network_fields(&mut j, v);
    crate::goshape::container_inspect(&mut j, v);
    Ok(Json(j))
}

/// `GET /containers/<parent>/<alias>/json`: inspect of the container a legacy link
/// names (`docker inspect parent/alias`).
async fn inspect_by_link_name<B: Backend>(
    state: State<Arc<B>>,
    Path((parent, alias)): Path<(String, String)>,
    q: FirstQuery,
    v: Extension<ApiVersion>,
) -> ApiResult<Json<serde_json::Value>> {
    inspect(state, Path(format!("{parent}/{alias}")), q, v).await
}

/// Before API 1.52 Docker also sent the default network's address at the top of
/// NetworkSettings (`IPAddress`, `Gateway`, `MacAddress`, `Bridge`...). Version
/// differences live in the router, as in moby.
fn legacy_network_fields(j: &mut serde_json::Value, v: ApiVersion) {
    if !v.less_than("1.52") {
        return;
    }
    let Some(ns) = j.get_mut("NetworkSettings").and_then(|n| n.as_object_mut()) else { return };
    let primary = ns
        .get("Networks")
        .and_then(|n| n.as_object())
        .and_then(|m| m.get("bridge").or_else(|| m.values().next()))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let s = |k: &str| primary.get(k).cloned().unwrap_or_else(|| serde_json::Value::String(String::new()));
    let i = |k: &str| primary.get(k).cloned().unwrap_or(serde_json::json!(0));
    for (k, v) in [
        ("Bridge", serde_json::json!("")),
        ("HairpinMode", serde_json::json!(false)),
        ("LinkLocalIPv6Address", serde_json::json!("")),
        ("LinkLocalIPv6PrefixLen", serde_json::json!(0)),
        ("SecondaryIPAddresses", serde_json::Value::Null),
        ("SecondaryIPv6Addresses", serde_json::Value::Null),
        ("EndpointID", s("EndpointID")),
        ("Gateway", s("Gateway")),
        ("GlobalIPv6Address", s("GlobalIPv6Address")),
        ("GlobalIPv6PrefixLen", i("GlobalIPv6PrefixLen")),
        ("IPAddress", s("IPAddress")),
        ("IPPrefixLen", i("IPPrefixLen")),
        ("IPv6Gateway", s("IPv6Gateway")),
        ("MacAddress", s("MacAddress")),
    ] {
        ns.entry(k.to_string()).or_insert(v);
    }
}

fn opt(q: &Q, k: &str) -> Option<String> {
    q.get(k).filter(|v| !v.is_empty()).cloned()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn start<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Response> {
    b.runtime().container_start(rt::ContainerStart { id }).await?;
    Ok(no_content())
}

async fn stop<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let timeout = int_value(&q, "t")?.or(int_value(&q, "timeout")?);
    b.runtime().container_stop(rt::ContainerStop { id, signal: opt(&q, "signal"), timeout }).await?;
    Ok(no_content())
}

async fn restart<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let timeout = int_value(&q, "t")?.or(int_value(&q, "timeout")?);
    b.runtime().container_restart(rt::ContainerRestart { id, signal: opt(&q, "signal"), timeout }).await?;
    Ok(no_content())
}

async fn kill<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    b.runtime().container_kill(rt::ContainerKill { id, signal: opt(&q, "signal") }).await?;
    Ok(no_content())
}

async fn pause<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Response> {
    b.runtime().container_pause(rt::ContainerPause { id }).await?;
    Ok(no_content())
}

async fn unpause<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Response> {
    b.runtime().container_unpause(rt::ContainerUnpause { id }).await?;
    Ok(no_content())
}

async fn rename<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let name = opt(&q, "name").ok_or_else(|| ApiError::bad_request("Neither old nor new names may be empty"))?;
    b.runtime().container_rename(rt::ContainerRename { id, name }).await?;
    Ok(no_content())
}

fn dims(q: &Q) -> ApiResult<(u16, u16)> {
    let h = int_value(q, "h")?.unwrap_or(0);
    let w = int_value(q, "w")?.unwrap_or(0);
    if h < 0 || w < 0 || h > u16::MAX as i64 || w > u16::MAX as i64 {
        return Err(ApiError::bad_request("invalid height or width"));
    }
    Ok((h as u16, w as u16))
}

async fn resize<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let (height, width) = dims(&q)?;
    b.runtime().container_resize(rt::ContainerResize { id, height, width }).await?;
    Ok(StatusCode::OK.into_response())
}

async fn exec_resize<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let (height, width) = dims(&q)?;
    b.runtime().exec_resize(rt::ExecResize { id, height, width }).await?;
    Ok(StatusCode::OK.into_response())
}

async fn remove<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let r = rt::ContainerRemove { id, force: bool_value(&q, "force"), volumes: bool_value(&q, "v"), link: bool_value(&q, "link") };
    b.runtime().container_remove(r).await?;
    Ok(no_content())
}

/// `DELETE /containers/<parent>/<alias>`: a legacy link's name has a slash (Moby's
/// route takes any path); with `?link=1` the link goes, else the container it names.
async fn remove_by_link_name<B: Backend>(
    state: State<Arc<B>>,
    Path((parent, alias)): Path<(String, String)>,
    q: FirstQuery,
) -> ApiResult<Response> {
    remove(state, Path(format!("{parent}/{alias}")), q).await
}

/// The status is sent at once and the body when the condition is met, as Docker does.
async fn wait<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let condition = opt(&q, "condition").unwrap_or_else(|| "not-running".into());
    if !["not-running", "next-exit", "removed"].contains(&condition.as_str()) {
        return Err(ApiError::bad_request(format!("invalid condition: \"{condition}\"")));
    }
    let ((), mut rd) = b.runtime().container_wait(rt::ContainerWait { id, condition }).await?;
    let s = crate::util::async_stream(move |tx| async move {
        let body = match rd.next().await {
            Some(Ok(r)) => wait_body(r.status_code, r.error.and_then(|e| e.message)),
            Some(Err(e)) => wait_body(-1, Some(e.message)),
            None => return,
        };
        let mut body = body;
        body.push(b'\n');
        let _ = tx.send(Ok(bytes::Bytes::from(body))).await;
    });
    Ok((StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], Body::from_stream(s)).into_response())
}

/// Moby's ContainerWaitOKBody: `Error` is always there, `null` without an error
/// (bollard's type leaves it out, which strict clients read as a different answer).
fn wait_body(status: i64, error: Option<String>) -> Vec<u8> {
    let error = error.map(|m| serde_json::json!({ "Message": m }));
    serde_json::to_vec(&serde_json::json!({ "Error": error, "StatusCode": status })).unwrap_or_default()
}

fn stream_content_type(tty: bool, v: ApiVersion) -> &'static str {
    if !tty && !v.less_than("1.42") {
        "application/vnd.docker.multiplexed-stream"
    } else {
        "application/vnd.docker.raw-stream"
    }
}

async fn logs<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    FirstQuery(q): FirstQuery,
    Extension(v): Extension<ApiVersion>,
) -> ApiResult<Response> {
    let (stdout, stderr) = (bool_value(&q, "stdout"), bool_value(&q, "stderr"));
    if !stdout && !stderr {
        return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
    }
    let time = |k: &str| -> ApiResult<f64> {
        match q.get(k).filter(|s| !s.is_empty()) {
            None => Ok(0.0),
            // Moby's ParseTimestamps: seconds with an optional fraction (no `1e9`, `inf`)
            Some(s) => berth_rules::clock::parse_timestamp(s)
                .map(|ns| ns as f64 / 1e9)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {s}"))),
        }
    };
    let r = rt::ContainerLogs {
        id,
        follow: bool_value(&q, "follow"),
        stdout,
        stderr,
        since: time("since")?,
        until: time("until")?,
        timestamps: bool_value(&q, "timestamps"),
        tail: opt(&q, "tail").unwrap_or_else(|| "all".into()),
    };
    let (info, mut rd) = b.runtime().container_logs(r).await?;
    let tty = info.tty;
    let s = crate::util::async_stream(move |tx| async move {
        while let Some(item) = rd.next().await {
            let c = match item {
                Ok(c) => c,
                Err(e) => {
                    // the runtime died or the bus dropped: say so in the stream (the
                    // headers are gone), then end it
                    let _ = tx.send(Ok(bytes::Bytes::from(crate::hijack::error_in_stream(tty, &e.message)))).await;
                    return;
                }
            };
            let bytes = if tty {
                c.data
            } else {
                let mut v = vec![c.stream, 0, 0, 0];
                v.extend_from_slice(&(c.data.len() as u32).to_be_bytes());
                v.extend_from_slice(&c.data);
                v
            };
            if tx.send(Ok(bytes::Bytes::from(bytes))).await.is_err() {
                // dropping the stream cancels it
                return;
            }
        }
    });
    Ok((StatusCode::OK, [(http::header::CONTENT_TYPE, stream_content_type(tty, v))], Body::from_stream(s)).into_response())
}

async fn attach<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    FirstQuery(q): FirstQuery,
    Extension(v): Extension<ApiVersion>,
    mut req: Request,
) -> ApiResult<Response> {
    let detach = hijack::detach_keys(q.get("detachKeys").map(|s| s.as_str())).map_err(ApiError::bad_request)?;
    let r = attach_request(id, &q);
    let want_stdin = r.stdin;
    let on_upgrade = req.headers().contains_key(http::header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
    let (input, stdin) = berth_bus::channel(16);
    let (info, out) = b.runtime().container_attach(r, stdin).await?;
    let session = hijack::Session::new(info.tty, detach);
    let Some(on_upgrade) = on_upgrade else {
        // no stdin: dropping the emitter ends the input
        drop(input);
        return Ok(hijack::body_response(out, session));
    };
    let input = want_stdin.then_some(input);
    tokio::spawn(hijack::pump(on_upgrade, out, input, session));
    Ok(hijack::upgrade_response(info.tty, !v.less_than("1.42")))
}

/// The attach options of a `/attach` or `/attach/ws` query.
fn attach_request(id: String, q: &Q) -> rt::ContainerAttach {
    rt::ContainerAttach {
        id,
        stream: bool_value(q, "stream"),
        logs: bool_value(q, "logs"),
        stdin: bool_value(q, "stdin"),
        stdout: bool_value(q, "stdout"),
        stderr: bool_value(q, "stderr"),
        detach_keys: opt(q, "detachKeys"),
    }
}

/// `GET /containers/{id}/attach/ws`: the container's output as WebSocket messages
/// (raw, never multiplexed; binary frames from API 1.28 on, text before, as Moby
/// sends them), each message from the client to its stdin. The container is
/// looked up before the handshake, so a missing one is Docker's 404.
async fn attach_ws<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    FirstQuery(q): FirstQuery,
    Extension(v): Extension<ApiVersion>,
    ws: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let r = attach_request(id, &q);
    let want_stdin = r.stdin;
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            // the container first, as Moby looks it up before the handshake
            b.runtime().container_inspect(rt::ContainerInspect { id: r.id, size: false }).await?;
            return Err(ApiError::bad_request(e.body_text()));
        }
    };
    let (input, stdin) = berth_bus::channel(16);
    let (_, out) = b.runtime().container_attach(r, stdin).await?;
    let input = want_stdin.then_some(input);
    let binary = !v.less_than("1.28");
    Ok(ws.on_upgrade(move |socket| hijack::pump_ws(socket, out, input, binary)))
}

async fn exec_create<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, body: axum::body::Bytes) -> ApiResult<Response> {
    let config: docker::ExecConfig = crate::util::json_body(&body)?;
    if config.cmd.as_ref().is_none_or(|c| c.is_empty()) {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let r = b.runtime().exec_create(rt::ExecCreate { container: id, config }).await?;
    Ok((StatusCode::CREATED, crate::util::id_json(&r)).into_response())
}

/// As Moby: an unknown exec is an error; otherwise the connection is hijacked (101,
/// or 200 without an `Upgrade` header) before the process starts, and a process
/// that cannot start is reported on the stream's stdout. The output is framed
/// unless this request asks for a TTY; the detach keys are the exec's.
async fn exec_start<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    Extension(v): Extension<ApiVersion>,
    mut req: Request,
) -> ApiResult<Response> {
    let on_upgrade = req.headers().contains_key(http::header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
    let body = axum::body::to_bytes(std::mem::replace(req.body_mut(), Body::empty()), 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cfg: docker::ExecStartConfig = crate::util::json_body(&body)?;
    let detach = cfg.detach.unwrap_or(false);
    let tty = cfg.tty.unwrap_or(false);
    let r = rt::ExecStart {
        id: id.clone(),
        detach,
        tty,
        console_size: cfg
            .console_size
            .as_ref()
            .filter(|c| c.len() == 2 && tty && !v.less_than("1.42"))
            .map(|c| (c[0] as u16, c[1] as u16)),
    };
    if detach {
        // no input, and the (empty) output is not read: dropping both ends them
        let _ = b.runtime().exec_start(r, Box::pin(futures_util::stream::empty())).await?;
        return Ok(StatusCode::OK.into_response());
    }
    let ex = b.runtime().exec_inspect(rt::ExecInspect { id }).await?;
    let exec_tty = ex.process_config.as_ref().and_then(|p| p.tty).unwrap_or(false);
    let keys = hijack::detach_keys(ex.detach_keys.as_deref()).unwrap_or_default();
    let session = hijack::Session { framed: !tty, detach: if exec_tty { keys } else { Vec::new() } };
    let Some(on_upgrade) = on_upgrade else {
        return match b.runtime().exec_start(r, Box::pin(futures_util::stream::empty())).await {
            Ok((_, out)) => Ok(hijack::body_response(out, session)),
            Err(e) => {
                let line = format!("{}\r\n", e.message);
                let bytes = if session.framed { hijack::frame(1, line.as_bytes()) } else { line.into_bytes() };
                Ok((StatusCode::OK, [(http::header::CONTENT_TYPE, "application/vnd.docker.raw-stream")], bytes).into_response())
            }
        };
    };
    let client = crate::listen::ClientConn::current().hold();
    tokio::spawn(async move {
        // the process starts once the 101 is on the wire, as Moby's does, and the
        // client has read it (see `HeldConn::read_all`)
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade failed");
                return;
            }
        };
        client.read_all(std::time::Duration::from_secs(1)).await;
        // its copy of the socket would keep the connection open past the stream's end
        drop(client);
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let (input, stdin) = berth_bus::channel(16);
        match b.runtime().exec_start(r, stdin).await {
            Ok((_, out)) => hijack::pump_io(io, out, Some(input), session).await,
            Err(e) => hijack::write_error(io, &session, &e.message).await,
        }
    });
    Ok(hijack::upgrade_response(tty, !v.less_than("1.42")))
}

/// Moby's ExecInspect: `ExitCode` null until the exec ends, `ProcessConfig.user`
/// only when set (`omitempty`).
async fn exec_inspect<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let r = b.runtime().exec_inspect(rt::ExecInspect { id }).await?;
    let mut j = serde_json::to_value(&r).map_err(|e| BusError::internal(e.to_string()))?;
    if let Some(o) = j.as_object_mut() {
        crate::goshape::fill(o, &[("ExitCode", serde_json::Value::Null)]);
        if let Some(pc) = o.get_mut("ProcessConfig").and_then(|p| p.as_object_mut()) {
            if pc.get("user").is_some_and(|u| u.as_str().is_none_or(str::is_empty)) {
                pc.remove("user");
            }
        }
    }
    Ok(Json(j))
}

async fn top<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Json<docker::ContainerTopResponse>> {
    Ok(Json(b.runtime().container_top(rt::ContainerTop { id, ps_args: opt(&q, "ps_args") }).await?))
}

async fn stats<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let stream = bool_or(&q, "stream", true);
    let ((), mut rd) = b.runtime().container_stats(rt::ContainerStats { id, stream, one_shot: bool_value(&q, "one-shot") }).await?;
    let s = crate::util::async_stream(move |tx| async move {
        while let Some(Ok(v)) = rd.next().await {
            let mut line = serde_json::to_vec(&v).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Ok(bytes::Bytes::from(line))).await.is_err() {
                return;
            }
        }
    });
    Ok((StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], Body::from_stream(s)).into_response())
}

async fn update<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, body: axum::body::Bytes) -> ApiResult<Json<serde_json::Value>> {
    let body: docker::ContainerUpdateBody = crate::util::config_body(&body, false)?.unwrap_or_default();
    let r = b.runtime().container_update(rt::ContainerUpdate { id, body }).await?;
    // no warnings: Go's nil slice
    let w = r.warnings.filter(|w| !w.is_empty());
    Ok(Json(serde_json::json!({ "Warnings": w })))
}

async fn prune<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery) -> ApiResult<Json<docker::ContainerPruneResponse>> {
    Ok(Json(b.runtime().container_prune(rt::ContainerPrune { filters: filters(&q)? }).await?))
}

/// No changes: `null` (Go's nil slice), as Moby answers.
async fn changes<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Json<Option<Vec<docker::FilesystemChange>>>> {
    let c = b.runtime().container_changes(rt::ContainerChanges { id }).await?;
    Ok(Json((!c.is_empty()).then_some(c)))
}

/// Moby sends the export as `application/octet-stream` (archive GET is x-tar).
async fn export<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Response> {
    let ((), rd) = b.runtime().container_export(rt::ContainerExport { id }).await?;
    Ok(bytes_stream(rd, "application/octet-stream"))
}

fn stat_header(st: &rt::PathStat) -> HeaderValue {
    use base64::Engine;
    let j = serde_json::to_vec(st).unwrap_or_default();
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(j)).unwrap()
}

fn archive_path(q: &Q) -> ApiResult<String> {
    opt(q, "path").ok_or_else(|| ApiError::bad_request("path is required"))
}

async fn archive_head<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let st = b.runtime().container_archive_stat(rt::ContainerArchiveStat { id, path: archive_path(&q)? }).await?;
    let mut h = HeaderMap::new();
    h.insert("X-Docker-Container-Path-Stat", stat_header(&st));
    Ok((StatusCode::OK, h).into_response())
}

async fn archive_get<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery) -> ApiResult<Response> {
    let (st, rd) = b.runtime().container_archive_get(rt::ContainerArchiveGet { id, path: archive_path(&q)? }).await?;
    let mut res = bytes_stream(rd, "application/x-tar");
    res.headers_mut().insert("X-Docker-Container-Path-Stat", stat_header(&st));
    Ok(res)
}

async fn archive_put<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, FirstQuery(q): FirstQuery, body: Body) -> ApiResult<Response> {
    let r = rt::ContainerArchivePut {
        id,
        path: archive_path(&q)?,
        no_overwrite_dir_non_dir: bool_value(&q, "noOverwriteDirNonDir"),
        copy_uid_gid: bool_value(&q, "copyUIDGID"),
    };
    let ((), mut done) = b.runtime().container_archive_put(r, crate::util::body_input(body)).await?;
    // the service ends its (empty) output stream when the archive is extracted
    let mut result = Ok(());
    while let Some(item) = done.next().await {
        if let Err(e) = item {
            result = Err(e);
            break;
        }
    }
    result?;
    Ok(StatusCode::OK.into_response())
}

#[cfg(test)]
mod fake_runtime_tests {
    //! The routes over a fake runtime (the table's `Fake`: only what a test calls),
    //! no bus: the typed seam of issue 15.
    use super::*;
    use bus_schema::runtime::Fake;
    use bus_schema::stream::{ByteChunk, StdioChunk};
    use bus_schema::BusStream;
    use std::sync::Mutex;
    use tower::ServiceExt;

    #[derive(Default)]
    struct FakeRuntime {
        put: Mutex<Vec<u8>>,
    }

    impl Fake for FakeRuntime {
        async fn container_inspect(&self, r: rt::ContainerInspect) -> Result<docker::ContainerInspectResponse, BusError> {
            Err(BusError::not_found(format!("No such container: {}", r.id)))
        }
        async fn container_logs(&self, _r: rt::ContainerLogs) -> Result<(rt::StreamInfo, BusStream<StdioChunk>), BusError> {
            let items = vec![Ok(StdioChunk { stream: 1, data: b"out\n".to_vec() }), Ok(StdioChunk { stream: 2, data: b"err\n".to_vec() })];
            Ok((rt::StreamInfo { tty: false }, Box::pin(futures_util::stream::iter(items))))
        }
        async fn container_changes(&self, _r: rt::ContainerChanges) -> Result<Vec<docker::FilesystemChange>, BusError> {
            Ok(vec![])
        }
        async fn container_archive_put(&self, _r: rt::ContainerArchivePut, mut input: BusStream<ByteChunk>) -> Result<((), BusStream<()>), BusError> {
            while let Some(c) = input.next().await {
                self.put.lock().unwrap().extend_from_slice(&c?.0);
            }
            Ok(((), Box::pin(futures_util::stream::empty())))
        }
    }

    struct B(Arc<FakeRuntime>);
    impl Backend for B {
        type Runtime = FakeRuntime;
        fn runtime(&self) -> &FakeRuntime {
            &self.0
        }
    }

    async fn call(app: &Router, method: &str, uri: &str, body: &'static [u8]) -> (StatusCode, Vec<u8>) {
        let req = http::Request::builder().method(method).uri(uri).body(Body::from(body)).unwrap();
        let req = crate::version::rewrite(req).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        (status, axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap().to_vec())
    }

    #[tokio::test]
    async fn routes_over_a_fake_runtime() {
        let fake = Arc::new(FakeRuntime::default());
        let app = router(Arc::new(B(fake.clone())));
        let (s, b) = call(&app, "GET", "/v1.41/containers/nope/json", b"").await;
        assert_eq!((s, String::from_utf8(b).unwrap()), (StatusCode::NOT_FOUND, r#"{"message":"No such container: nope"}"#.to_string()));
        // logs: multiplexed frames, stream byte and big-endian length
        let (s, b) = call(&app, "GET", "/v1.41/containers/c/logs?stdout=1&stderr=1", b"").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b, b"\x01\0\0\0\0\0\0\x04out\n\x02\0\0\0\0\0\0\x04err\n");
        let (s, _) = call(&app, "GET", "/v1.41/containers/c/logs", b"").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // no changes: Go's nil slice
        let (s, b) = call(&app, "GET", "/v1.41/containers/c/changes", b"").await;
        assert_eq!((s, b.as_slice()), (StatusCode::OK, &b"null"[..]));
        // the request body reaches the runtime as its input stream
        let (s, _) = call(&app, "PUT", "/v1.41/containers/c/archive?path=/", b"tar bytes").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(fake.put.lock().unwrap().as_slice(), b"tar bytes");
        // unimplemented by the fake: the table's NotImplemented, as a 501
        let (s, _) = call(&app, "GET", "/v1.41/containers/c/top", b"").await;
        assert_eq!(s, StatusCode::NOT_IMPLEMENTED);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wait_answers_error_null_as_moby() {
        assert_eq!(super::wait_body(0, None), br#"{"Error":null,"StatusCode":0}"#);
        assert_eq!(super::wait_body(-1, Some("x".into())), br#"{"Error":{"Message":"x"},"StatusCode":-1}"#);
    }

    use super::*;

    fn body(j: serde_json::Value) -> docker::ContainerCreateBody {
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn create_follows_the_api_version() {
        let mut b = body(serde_json::json!({"Image": "x", "HostConfig": {"ConsoleSize": [10, 20]}}));
        create_for_version(&mut b, ApiVersion(1, 39)).unwrap();
        let hc = b.host_config.unwrap();
        assert_eq!(hc.ipc_mode.as_deref(), Some("shareable"));
        assert_eq!(hc.console_size, None);
        let mut b = body(serde_json::json!({"Image": "x", "HostConfig": {"ConsoleSize": [10, 20]}}));
        create_for_version(&mut b, ApiVersion(1, 51)).unwrap();
        let hc = b.host_config.unwrap();
        assert_eq!(hc.ipc_mode, None);
        assert_eq!(hc.console_size, Some(vec![10, 20]));
        let sub = serde_json::json!({"Image": "x", "HostConfig": {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/m", "VolumeOptions": {"Subpath": "d"}}]}});
        assert_eq!(create_for_version(&mut body(sub.clone()), ApiVersion(1, 44)).unwrap_err().message, "VolumeOptions.Subpath needs API v1.45 or newer");
        create_for_version(&mut body(sub), ApiVersion(1, 45)).unwrap();
        let bad = serde_json::json!({"Image": "x", "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/m", "VolumeOptions": {}}]}});
        assert_eq!(create_for_version(&mut body(bad.clone()), ApiVersion(1, 42)).unwrap_err().message, "VolumeOptions must not be specified on mount type \"bind\"");
        let mut b = body(bad);
        create_for_version(&mut b, ApiVersion(1, 41)).unwrap();
        assert!(b.host_config.unwrap().mounts.unwrap()[0].volume_options.is_none());
    }
}
