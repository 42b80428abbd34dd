//! Swarm mode: `/swarm`, `/nodes`, `/services`, `/tasks`, `/secrets`, `/configs`. Every
//! request goes to this node's swarm service, which answers from the cluster's store
//! when the node is a manager and with Docker's 503 when it is not.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use bus_schema::stream::StdioChunk;
use bus_schema::swarm::*;
use bus_schema::{docker, BusStream};
use futures_util::StreamExt;

use crate::error::{ApiError, ApiResult};
use crate::util::{self, bool_value, Query as Q};
use crate::version::ApiVersion;

pub trait Backend: Send + Sync + 'static {
    type Swarm: SwarmApi;
    /// This node's swarm service (its typed client over the bus).
    fn swarm(&self) -> &Self::Swarm;
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/swarm", get(swarm_inspect::<B>))
        .route("/swarm/init", post(swarm_init::<B>))
        .route("/swarm/join", post(swarm_join::<B>))
        .route("/swarm/leave", post(swarm_leave::<B>))
        .route("/swarm/update", post(swarm_update::<B>))
        .route("/swarm/unlockkey", get(swarm_unlock_key::<B>))
        .route("/swarm/unlock", post(swarm_unlock::<B>))
        .route("/nodes", get(node_list::<B>))
        .route("/nodes/{id}", get(node_inspect::<B>).delete(node_remove::<B>))
        .route("/nodes/{id}/update", post(node_update::<B>))
        .route("/services", get(service_list::<B>))
        .route("/services/create", post(service_create::<B>))
        .route("/services/{id}", get(service_inspect::<B>).delete(service_remove::<B>))
        .route("/services/{id}/update", post(service_update::<B>))
        .route("/services/{id}/logs", get(service_logs::<B>))
        .route("/tasks", get(task_list::<B>))
        .route("/tasks/{id}", get(task_inspect::<B>))
        .route("/tasks/{id}/logs", get(task_logs::<B>))
        .route("/secrets", get(secret_list::<B>))
        .route("/secrets/create", post(secret_create::<B>))
        .route("/secrets/{id}", get(secret_inspect::<B>).delete(secret_remove::<B>))
        .route("/secrets/{id}/update", post(secret_update::<B>))
        .route("/configs", get(config_list::<B>))
        .route("/configs/create", post(config_create::<B>))
        .route("/configs/{id}", get(config_inspect::<B>).delete(config_remove::<B>))
        .route("/configs/{id}/update", post(config_update::<B>))
        .with_state(b)
}

/// `?version=N`, required by updates (Moby: "invalid swarm version").
fn version(q: &Q, what: &str) -> ApiResult<u64> {
    q.get("version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("invalid {what} version '{}': strconv.ParseUint: parsing \"{}\": invalid syntax", q.get("version").cloned().unwrap_or_default(), q.get("version").cloned().unwrap_or_default())))
}

fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

async fn swarm_inspect<B: Backend>(State(b): State<Arc<B>>) -> ApiResult<Json<SwarmObject>> {
    Ok(Json(b.swarm().swarm_inspect(SwarmInspect {}).await?))
}

async fn swarm_init<B: Backend>(State(b): State<Arc<B>>, raw: Bytes) -> ApiResult<Json<String>> {
    let req: docker::SwarmInitRequest = util::json_body(&raw)?;
    Ok(Json(b.swarm().swarm_init(SwarmInit { req }).await?))
}

async fn swarm_join<B: Backend>(State(b): State<Arc<B>>, raw: Bytes) -> ApiResult<Response> {
    let req: docker::SwarmJoinRequest = util::json_body(&raw)?;
    b.swarm().swarm_join(SwarmJoin { req }).await?;
    Ok(ok_empty())
}

async fn swarm_leave<B: Backend>(State(b): State<Arc<B>>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Response> {
    b.swarm().swarm_leave(SwarmLeave { force: bool_value(&q, "force") }).await?;
    Ok(ok_empty())
}

async fn swarm_update<B: Backend>(State(b): State<Arc<B>>, util::FirstQuery(q): util::FirstQuery, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::SwarmSpec = util::json_body(&raw)?;
    let version = version(&q, "swarm")?;
    b.swarm().swarm_update(SwarmUpdate {
        version,
        spec,
        rotate_worker_token: bool_value(&q, "rotateWorkerToken"),
        rotate_manager_token: bool_value(&q, "rotateManagerToken"),
        rotate_manager_unlock_key: bool_value(&q, "rotateManagerUnlockKey"),
    })
    .await?;
    Ok(ok_empty())
}

async fn swarm_unlock_key<B: Backend>(State(b): State<Arc<B>>) -> ApiResult<Json<docker::UnlockKeyResponse>> {
    Ok(Json(b.swarm().swarm_unlock_key(SwarmUnlockKey {}).await?))
}

async fn swarm_unlock<B: Backend>(State(b): State<Arc<B>>, raw: Bytes) -> ApiResult<Response> {
    let req: docker::SwarmUnlockRequest = util::json_body(&raw)?;
    b.swarm().swarm_unlock(SwarmUnlock { key: req.unlock_key.unwrap_or_default() }).await?;
    Ok(ok_empty())
}

async fn node_list<B: Backend>(State(b): State<Arc<B>>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Json<Vec<docker::Node>>> {
    Ok(Json(b.swarm().node_list(NodeList { filters: util::filters(&q)? }).await?))
}

async fn node_inspect<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Json<docker::Node>> {
    Ok(Json(b.swarm().node_inspect(NodeInspect { id }).await?))
}

async fn node_update<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::NodeSpec = util::json_body(&raw)?;
    let version = version(&q, "node")?;
    b.swarm().node_update(NodeUpdate { id, version, spec }).await?;
    Ok(ok_empty())
}

async fn node_remove<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Response> {
    b.swarm().node_remove(NodeRemove { id, force: bool_value(&q, "force") }).await?;
    Ok(ok_empty())
}

fn registry_auth(h: &HeaderMap) -> Option<String> {
    h.get("X-Registry-Auth").and_then(|v| v.to_str().ok()).map(str::to_string).filter(|s| !s.is_empty())
}

async fn service_create<B: Backend>(State(b): State<Arc<B>>, headers: HeaderMap, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::ServiceSpec = util::json_body(&raw)?;
    let r = b.swarm().service_create(ServiceCreate { spec, auth: registry_auth(&headers) }).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn service_list<B: Backend>(State(b): State<Arc<B>>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Json<serde_json::Value>> {
    swarm_json(b.swarm().service_list(ServiceList { filters: util::filters(&q)?, status: bool_value(&q, "status") }).await?)
}

async fn service_inspect<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Json<serde_json::Value>> {
    swarm_json(b.swarm().service_inspect(ServiceInspect { id, insert_defaults: bool_value(&q, "insertDefaults") }).await?)
}

async fn service_update<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery, headers: HeaderMap, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::ServiceSpec = util::json_body(&raw)?;
    let version = version(&q, "service")?;
    let r = b
        .swarm().service_update(ServiceUpdate {
            id,
            version,
            spec,
            rollback: q.get("rollback").cloned().filter(|s| !s.is_empty()),
            registry_auth_from: q.get("registryAuthFrom").cloned().filter(|s| !s.is_empty()),
            auth: registry_auth(&headers),
        })
        .await?;
    // Moby answers `{"Warnings":null}` when there are none.
    Ok(Json(serde_json::json!({ "Warnings": r.warnings })).into_response())
}

async fn service_remove<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Response> {
    b.swarm().service_remove(ServiceRemove { id }).await?;
    Ok(ok_empty())
}

fn log_options(q: &Q) -> ApiResult<LogOptions> {
    let (stdout, stderr) = (bool_value(q, "stdout"), bool_value(q, "stderr"));
    if !stdout && !stderr {
        // Moby checks the streams before the swarm: 500, in or out of a swarm
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Bad parameters: you must choose at least one stream"));
    }
    let since = match q.get("since").filter(|s| !s.is_empty()) {
        None => 0.0,
        Some(s) => s.parse::<f64>().map_err(|_| ApiError::bad_request(format!("invalid value for since: {s}")))?,
    };
    Ok(LogOptions {
        follow: bool_value(q, "follow"),
        stdout,
        stderr,
        since,
        timestamps: bool_value(q, "timestamps"),
        tail: q.get("tail").cloned().filter(|s| !s.is_empty()).unwrap_or_else(|| "all".into()),
        details: bool_value(q, "details"),
    })
}

/// Log lines as multiplexed frames (Moby sends no Content-Type before API 1.42).
fn log_response(mut rd: BusStream<StdioChunk>, v: ApiVersion) -> Response {
    // dropping `rd` (client gone) stops the swarm service's readers
    let s = util::async_stream(move |tx| async move {
        while let Some(item) = rd.next().await {
            let c = match item {
                Ok(c) => c,
                // Moby writes a log stream's error on the system-error stream (3): the
                // CLI says "error from daemon in stream: …"
                Err(e) => StdioChunk { stream: 3, data: format!("Error grabbing logs: {}\n", e.message).into_bytes() },
            };
            let end = c.stream == 3;
            let mut frame = vec![c.stream, 0, 0, 0];
            frame.extend_from_slice(&(c.data.len() as u32).to_be_bytes());
            frame.extend_from_slice(&c.data);
            if tx.send(Ok(bytes::Bytes::from(frame))).await.is_err() || end {
                return;
            }
        }
    });
    let mut res = (StatusCode::OK, Body::from_stream(s)).into_response();
    if !v.less_than("1.42") {
        res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/vnd.docker.multiplexed-stream"));
    }
    res
}

async fn service_logs<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery, Extension(v): Extension<ApiVersion>) -> ApiResult<Response> {
    let opts = log_options(&q)?;
    let (_, rd) = b.swarm().service_logs(ServiceLogs { id, opts }).await?;
    Ok(log_response(rd, v))
}

async fn task_logs<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery, Extension(v): Extension<ApiVersion>) -> ApiResult<Response> {
    let opts = log_options(&q)?;
    let (_, rd) = b.swarm().task_logs(TaskLogs { id, opts }).await?;
    Ok(log_response(rd, v))
}

async fn task_list<B: Backend>(State(b): State<Arc<B>>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Json<serde_json::Value>> {
    swarm_json(b.swarm().task_list(TaskList { filters: util::filters(&q)? }).await?)
}

async fn task_inspect<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    swarm_json(b.swarm().task_inspect(TaskInspect { id }).await?)
}

/// A service or task (or a list of them) as Moby writes it ([`crate::goshape::swarm_object`]).
fn swarm_json<T: serde::Serialize>(v: T) -> ApiResult<Json<serde_json::Value>> {
    let mut j = serde_json::to_value(v).map_err(|e| bus_schema::BusError::internal(e.to_string()))?;
    match j.as_array_mut() {
        Some(items) => items.iter_mut().for_each(crate::goshape::swarm_object),
        None => crate::goshape::swarm_object(&mut j),
    }
    Ok(Json(j))
}

async fn secret_list<B: Backend>(State(b): State<Arc<B>>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Json<Vec<docker::Secret>>> {
    Ok(Json(b.swarm().secret_list(SecretList { filters: util::filters(&q)? }).await?))
}

/// A secret's or config's create answer: `{"ID": ...}` (Moby's SecretCreateResponse /
/// ConfigCreateResponse; docker-py reads `ID`).
fn created_id(r: docker::IdResponse) -> Response {
    (StatusCode::CREATED, Json(serde_json::json!({ "ID": r.id }))).into_response()
}

async fn secret_create<B: Backend>(State(b): State<Arc<B>>, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::SecretSpec = util::json_body(&raw)?;
    let r = b.swarm().secret_create(SecretCreate { spec }).await?;
    Ok(created_id(r))
}

async fn secret_inspect<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Json<docker::Secret>> {
    Ok(Json(b.swarm().secret_inspect(SecretInspect { id }).await?))
}

async fn secret_update<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::SecretSpec = util::json_body(&raw)?;
    let version = version(&q, "secret")?;
    b.swarm().secret_update(SecretUpdate { id, version, spec }).await?;
    Ok(ok_empty())
}

async fn secret_remove<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Response> {
    b.swarm().secret_remove(SecretRemove { id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn config_list<B: Backend>(State(b): State<Arc<B>>, util::FirstQuery(q): util::FirstQuery) -> ApiResult<Json<Vec<docker::Config>>> {
    Ok(Json(b.swarm().config_list(ConfigList { filters: util::filters(&q)? }).await?))
}

async fn config_create<B: Backend>(State(b): State<Arc<B>>, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::ConfigSpec = util::json_body(&raw)?;
    let r = b.swarm().config_create(ConfigCreate { spec }).await?;
    Ok(created_id(r))
}

async fn config_inspect<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Json<docker::Config>> {
    Ok(Json(b.swarm().config_inspect(ConfigInspect { id }).await?))
}

async fn config_update<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>, util::FirstQuery(q): util::FirstQuery, raw: Bytes) -> ApiResult<Response> {
    let spec: docker::ConfigSpec = util::json_body(&raw)?;
    let version = version(&q, "config")?;
    b.swarm().config_update(ConfigUpdate { id, version, spec }).await?;
    Ok(ok_empty())
}

async fn config_remove<B: Backend>(State(b): State<Arc<B>>, Path(id): Path<String>) -> ApiResult<Response> {
    b.swarm().config_remove(ConfigRemove { id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    /// A swarm service that is in no swarm: every request gets Docker's 503.
    struct NoSwarm;

    const NO: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";

    impl Backend for NoSwarm {
        type Swarm = NoSwarm;
        fn swarm(&self) -> &NoSwarm {
            self
        }
    }

    // the operations the test calls (the table's `Fake` answers the others)
    impl bus_schema::swarm::Fake for NoSwarm {
        async fn node_list(&self, _r: NodeList) -> Result<Vec<docker::Node>, bus_schema::BusError> {
            Err(bus_schema::BusError::unavailable(NO))
        }
        async fn service_list(&self, _r: ServiceList) -> Result<Vec<ServiceObject>, bus_schema::BusError> {
            Err(bus_schema::BusError::unavailable(NO))
        }
        async fn swarm_inspect(&self, _r: SwarmInspect) -> Result<SwarmObject, bus_schema::BusError> {
            Err(bus_schema::BusError::unavailable(NO))
        }
        async fn secret_create(&self, _r: SecretCreate) -> Result<docker::IdResponse, bus_schema::BusError> {
            Err(bus_schema::BusError::unavailable(NO))
        }
        // (answers as if it were a manager: the id tells what the spec held)
        async fn config_create(&self, r: ConfigCreate) -> Result<docker::IdResponse, bus_schema::BusError> {
            let t = r.spec.templating.map(|t| t.name).unwrap_or_default();
            Ok(docker::IdResponse { id: format!("{}-{t}", r.spec.name.unwrap_or_default()) })
        }
    }

    async fn call(method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let app = router(Arc::new(NoSwarm)).layer(Extension(ApiVersion::max()));
        let req = Request::builder().method(method).uri(uri).body(Body::from(body.to_string())).unwrap();
        let res = app.oneshot(req).await.unwrap();
        let st = res.status();
        let b = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (st, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn not_in_a_swarm_is_503_with_dockers_message() {
        for (m, u, b) in [("GET", "/nodes", ""), ("GET", "/services", ""), ("GET", "/swarm", ""), ("POST", "/secrets/create", "{}")] {
            let (st, body) = call(m, u, b).await;
            assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{m} {u}: {body}");
            assert!(body.contains("This node is not a swarm manager"), "{body}");
        }
    }

    #[tokio::test]
    async fn configs_answer_id_and_read_keys_as_go_does() {
        // docker-py sends the templating driver's name as `name`: Go's decoder takes it
        let (st, body) = call("POST", "/configs/create", r#"{"Name":"c","Data":"","Templating":{"name":"golang"}}"#).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        assert_eq!(body, r#"{"ID":"c-golang"}"#);
    }

    #[tokio::test]
    async fn bad_bodies_and_versions_are_400() {
        let (st, body) = call("POST", "/services/create", "").await;
        assert_eq!((st, body.as_str()), (StatusCode::BAD_REQUEST, r#"{"message":"got EOF while reading request body"}"#));
        // Moby decodes before it sees the swarm is off; the rest of the body is unread
        let (st, body) = call("POST", "/secrets/create", "{invalid json").await;
        assert_eq!((st, body.as_str()), (StatusCode::BAD_REQUEST, r#"{"message":"invalid character 'i' looking for beginning of object key string"}"#));
        let (st, _) = call("POST", "/secrets/create", "{}x").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        let (st, _) = call("POST", "/services/x/update", "{}").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        // Moby checks the streams first, with a 500
        let (st, body) = call("GET", "/services/x/logs", "").await;
        assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(body.contains("you must choose at least one stream"), "{body}");
    }
}
