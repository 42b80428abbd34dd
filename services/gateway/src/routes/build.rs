//! `POST /build` (classic builder), `POST /commit`, `POST /build/prune`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bus_schema::builder::{BuildPrune, BuilderApi, ContainerCommit, ImageBuild};
use bus_schema::docker;
use bus_schema::images::RegistryAuth;
use http::{HeaderMap, StatusCode};

use crate::error::{ApiError, ApiResult};
use crate::util::{body_input, bool_or, bool_value, int_value, json_stream, FirstQuery, Params};

pub trait Backend: Send + Sync + 'static {
    type Builder: BuilderApi;
    /// The builder service (its typed client over the bus).
    fn builder(&self) -> &Self::Builder;
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/build", post(build::<B>))
        .route("/build/prune", post(prune::<B>))
        .route("/commit", post(commit::<B>))
        .with_state(b)
}

fn json_map<T: serde::de::DeserializeOwned + Default>(q: &HashMap<String, String>, k: &str) -> ApiResult<T> {
    match q.get(k).filter(|s| !s.is_empty()) {
        None => Ok(T::default()),
        Some(s) => serde_json::from_str(s).map_err(|e| ApiError::bad_request(format!("invalid {k}: {e}"))),
    }
}

fn registry_config(h: &HeaderMap) -> HashMap<String, RegistryAuth> {
    use base64::Engine;
    let Some(v) = h.get("X-Registry-Config").and_then(|v| v.to_str().ok()) else { return HashMap::new() };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE.decode(v.trim()).or_else(|_| base64::engine::general_purpose::STANDARD.decode(v.trim())) else {
        return HashMap::new();
    };
    let Ok(m) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(&bytes) else { return HashMap::new() };
    m.into_iter()
        .filter_map(|(k, v)| crate::util::auth_from_json(v.to_string().as_bytes()).map(|a| (k, a)))
        .collect()
}

async fn build<B: Backend>(State(b): State<Arc<B>>, Params { first: q, all }: Params, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    if bool_value(&q, "squash") {
        return Err(ApiError::bad_request("squash is only supported with experimental mode"));
    }
    if q.get("version").is_some_and(|v| v == "2") {
        return Err(ApiError::bad_request("BuildKit is not supported by this engine: use the classic builder (DOCKER_BUILDKIT=0)"));
    }
    let r = ImageBuild {
        dockerfile: q.get("dockerfile").cloned().unwrap_or_default(),
        tags: all.get("t").cloned().unwrap_or_default().into_iter().filter(|t| !t.is_empty()).collect(),
        target: q.get("target").filter(|t| !t.is_empty()).cloned(),
        build_args: json_map(&q, "buildargs")?,
        labels: json_map(&q, "labels")?,
        no_cache: bool_value(&q, "nocache"),
        pull: bool_value(&q, "pull"),
        quiet: bool_value(&q, "q"),
        rm: bool_or(&q, "rm", true),
        force_rm: bool_value(&q, "forcerm"),
        network_mode: q.get("networkmode").filter(|t| !t.is_empty()).cloned(),
        platform: q.get("platform").filter(|t| !t.is_empty()).cloned(),
        auth: registry_config(&headers),
        remote: q.get("remote").filter(|t| !t.is_empty()).cloned(),
        memory: int_value(&q, "memory")?,
        cpu_shares: int_value(&q, "cpushares")?,
        shm_size: int_value(&q, "shmsize")?,
        // every `extrahosts` value (Moby reads r.Form["extrahosts"]), each `host:ip`
        extra_hosts: all.get("extrahosts").cloned().unwrap_or_default().into_iter().filter(|x| !x.is_empty()).collect(),
        cache_from: json_map::<Option<Vec<String>>>(&q, "cachefrom")?.unwrap_or_default(),
    };
    for t in &r.tags {
        if t.chars().any(|c| c.is_ascii_uppercase()) && !t.contains('/') {
            return Err(ApiError::bad_request(format!("invalid reference format: repository name (library/{t}) must be lowercase")));
        }
    }
    let ((), rd) = b.builder().image_build(r, body_input(body)).await?;
    // Moby reads the context and parses the Dockerfile before it answers: a failure
    // there is an HTTP status (400 parse error, 500 no Dockerfile), not a 200 stream.
    Ok(json_stream(berth_bus::first_item(rd).await?))
}

async fn prune<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery) -> ApiResult<Json<serde_json::Value>> {
    let r = b.builder().build_prune(BuildPrune { all: bool_value(&q, "all") }).await?;
    // nothing deleted: Go's nil slice, as Moby answers
    Ok(Json(serde_json::json!({
        "CachesDeleted": r.caches_deleted.filter(|c| !c.is_empty()),
        "SpaceReclaimed": r.space_reclaimed.unwrap_or(0),
    })))
}

async fn commit<B: Backend>(State(b): State<Arc<B>>, Params { first: q, all }: Params, body: axum::body::Bytes) -> ApiResult<Response> {
    let container = q.get("container").filter(|c| !c.is_empty()).cloned().ok_or_else(|| ApiError::bad_request("container is required"))?;
    // Moby: no body or `null` is no config; one that does not decode is its 500
    let config = crate::util::config_body::<Option<docker::ContainerConfig>>(&body, true)?.flatten();
    let r = ContainerCommit {
        container,
        repo: q.get("repo").filter(|s| !s.is_empty()).cloned(),
        tag: q.get("tag").filter(|s| !s.is_empty()).cloned(),
        comment: q.get("comment").cloned(),
        author: q.get("author").cloned(),
        pause: bool_or(&q, "pause", true),
        changes: all.get("changes").cloned().unwrap_or_default().into_iter().filter(|c| !c.is_empty()).collect(),
        config,
    };
    let id = b.builder().container_commit(r).await?;
    Ok((StatusCode::CREATED, crate::util::id_json(&id)).into_response())
}
