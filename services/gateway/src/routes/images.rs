//! `/images/...` and `/auth`: pull, push, import, load, save, list, inspect,
//! history, tag, remove, prune, and registry login. Image names contain slashes,
//! so `/images/{name}/<op>` is matched as moby does, on the path's last segment.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_bus::{StreamReader, StreamWriter};
use bus_schema::images::*;
use bus_schema::stream::ByteChunk;
use bus_schema::{docker, BusError};
use http::{HeaderMap, Method, StatusCode};

use crate::error::{ApiError, ApiResult};
use crate::util::{self, Query};

pub trait Backend: Send + Sync + 'static {
    fn image_pull(
        &self,
        req: ImagePull,
    ) -> impl Future<Output = Result<StreamReader<JsonMessage>, BusError>> + Send;
    fn image_push(
        &self,
        req: ImagePush,
    ) -> impl Future<Output = Result<StreamReader<JsonMessage>, BusError>> + Send;
    fn image_import(
        &self,
        req: ImageImport,
    ) -> impl Future<Output = Result<(StreamReader<JsonMessage>, StreamWriter<ByteChunk>), BusError>>
           + Send;
    fn image_load(
        &self,
        req: ImageLoad,
    ) -> impl Future<Output = Result<(StreamReader<JsonMessage>, StreamWriter<ByteChunk>), BusError>>
           + Send;
    fn image_save(
        &self,
        req: ImageSave,
    ) -> impl Future<Output = Result<StreamReader<ByteChunk>, BusError>> + Send;
    fn image_list(
        &self,
        req: ImageList,
    ) -> impl Future<Output = Result<Vec<docker::ImageSummary>, BusError>> + Send;
    fn image_inspect(
        &self,
        req: ImageInspect,
    ) -> impl Future<Output = Result<docker::ImageInspect, BusError>> + Send;
    fn image_history(
        &self,
        req: ImageHistory,
    ) -> impl Future<Output = Result<Vec<docker::ImageHistoryResponseItem>, BusError>> + Send;
    fn image_tag(&self, req: ImageTag) -> impl Future<Output = Result<(), BusError>> + Send;
    fn image_remove(
        &self,
        req: ImageRemove,
    ) -> impl Future<Output = Result<Vec<docker::ImageDeleteResponseItem>, BusError>> + Send;
    fn image_prune(
        &self,
        req: ImagePrune,
    ) -> impl Future<Output = Result<docker::ImagePruneResponse, BusError>> + Send;
    fn registry_login(
        &self,
        req: RegistryLogin,
    ) -> impl Future<Output = Result<docker::AuthResponse, BusError>> + Send;
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/images/create", post(create::<B>))
        .route("/images/json", get(list::<B>))
        .route("/images/prune", post(prune::<B>))
        .route("/images/load", post(load::<B>))
        .route("/images/get", get(save_many::<B>))
        .route(
            "/images/{*rest}",
            get(by_name::<B>).post(by_name::<B>).delete(by_name::<B>),
        )
        .route("/auth", post(auth::<B>))
        .with_state(b)
}

/// Every value of every query parameter, in order (`changes`, `names` repeat).
pub fn query_all(raw: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode(k)).or_default().push(decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn last(q: &HashMap<String, Vec<String>>) -> Query {
    q.iter()
        .filter_map(|(k, v)| v.last().map(|x| (k.clone(), x.clone())))
        .collect()
}

/// `fromImage` + `tag` as Moby combines them: a digest tag makes `name@digest`.
pub fn pull_reference(image: &str, tag: &str) -> String {
    if tag.is_empty() {
        return image.to_string();
    }
    let name = image.split('@').next().unwrap_or(image);
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let name = match name[last_slash..].find(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    };
    if tag.contains(':') {
        format!("{name}@{tag}")
    } else {
        format!("{name}:{tag}")
    }
}

async fn create<B: Backend>(
    State(b): State<Arc<B>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let all = query_all(raw.as_deref());
    let q = last(&all);
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let platform = Some(get("platform")).filter(|p| !p.is_empty());
    let from_image = get("fromImage");
    if !from_image.is_empty() {
        let req = ImagePull {
            reference: pull_reference(&from_image, &get("tag")),
            platform,
            auth: util::registry_auth(&headers),
        };
        let rd = b.image_pull(req).await?;
        return Ok(util::json_stream(rd));
    }
    let src = get("fromSrc");
    if src.is_empty() {
        return Err(ApiError::bad_request("fromImage or fromSrc is required"));
    }
    let req = ImageImport {
        source: src.clone(),
        repo: Some(get("repo")).filter(|s| !s.is_empty()),
        tag: Some(get("tag")).filter(|s| !s.is_empty()),
        changes: all.get("changes").cloned().unwrap_or_default(),
        message: Some(get("message")).filter(|s| !s.is_empty()),
        platform,
    };
    let (rd, w) = b.image_import(req).await?;
    if src == "-" {
        tokio::spawn(util::pump_body(body, w));
    } else {
        tokio::spawn(w.end());
    }
    Ok(util::json_stream(rd))
}

async fn list<B: Backend>(
    State(b): State<Arc<B>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Vec<docker::ImageSummary>>> {
    let q = last(&query_all(raw.as_deref()));
    let mut filters = util::filters(&q)?;
    // the pre-1.25 `filter=name` parameter
    if let Some(f) = q.get("filter").filter(|f| !f.is_empty()) {
        filters
            .entry("reference".into())
            .or_default()
            .push(f.clone());
    }
    let req = ImageList {
        all: util::bool_value(&q, "all"),
        digests: util::bool_value(&q, "digests"),
        filters,
    };
    Ok(Json(b.image_list(req).await?))
}

async fn prune<B: Backend>(
    State(b): State<Arc<B>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<docker::ImagePruneResponse>> {
    let q = last(&query_all(raw.as_deref()));
    Ok(Json(
        b.image_prune(ImagePrune {
            filters: util::filters(&q)?,
        })
        .await?,
    ))
}

async fn load<B: Backend>(
    State(b): State<Arc<B>>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let q = last(&query_all(raw.as_deref()));
    let (rd, w) = b
        .image_load(ImageLoad {
            quiet: util::bool_value(&q, "quiet"),
        })
        .await?;
    tokio::spawn(util::pump_body(body, w));
    Ok(util::json_stream(rd))
}

async fn save_many<B: Backend>(
    State(b): State<Arc<B>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let all = query_all(raw.as_deref());
    let names = all.get("names").cloned().unwrap_or_default();
    save(b, names).await
}

async fn save<B: Backend>(b: Arc<B>, names: Vec<String>) -> ApiResult<Response> {
    let rd = b.image_save(ImageSave { names }).await?;
    Ok(util::bytes_stream(rd, "application/x-tar"))
}

/// `/images/{name}/json|history|tag|push|get` and `DELETE /images/{name}`.
async fn by_name<B: Backend>(
    State(b): State<Arc<B>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = last(&query_all(raw.as_deref()));
    if method == Method::DELETE {
        let req = ImageRemove {
            name: rest,
            force: util::bool_value(&q, "force"),
            noprune: util::bool_value(&q, "noprune"),
        };
        return Ok(Json(b.image_remove(req).await?).into_response());
    }
    let (name, op) = match rest.rsplit_once('/') {
        Some((n, op)) if !n.is_empty() => (n.to_string(), op),
        _ => return Err(ApiError::not_found("page not found")),
    };
    match (method, op) {
        (Method::GET, "json") => {
            Ok(Json(b.image_inspect(ImageInspect { name }).await?).into_response())
        }
        (Method::GET, "history") => {
            Ok(Json(b.image_history(ImageHistory { name }).await?).into_response())
        }
        (Method::GET, "get") => save(b, vec![name]).await,
        (Method::POST, "tag") => {
            let repo = q.get("repo").cloned().unwrap_or_default();
            if repo.is_empty() {
                return Err(ApiError::bad_request("repo is required"));
            }
            let req = ImageTag {
                source: name,
                repo,
                tag: q.get("tag").cloned().filter(|t| !t.is_empty()),
            };
            b.image_tag(req).await?;
            Ok(StatusCode::CREATED.into_response())
        }
        (Method::POST, "push") => {
            let req = ImagePush {
                name,
                tag: q.get("tag").cloned().filter(|t| !t.is_empty()),
                auth: util::registry_auth(&headers),
            };
            Ok(util::json_stream(b.image_push(req).await?))
        }
        _ => Err(ApiError::not_found("page not found")),
    }
}

async fn auth<B: Backend>(
    State(b): State<Arc<B>>,
    body: Bytes,
) -> ApiResult<Json<docker::AuthResponse>> {
    let auth = util::auth_from_json(&body).unwrap_or_default();
    Ok(Json(b.registry_login(RegistryLogin { auth }).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_references() {
        assert_eq!(pull_reference("busybox", "latest"), "busybox:latest");
        assert_eq!(pull_reference("busybox", ""), "busybox");
        assert_eq!(
            pull_reference("localhost:5000/a/b", "1"),
            "localhost:5000/a/b:1"
        );
        assert_eq!(
            pull_reference("localhost:5000/a/b:2", "1"),
            "localhost:5000/a/b:1"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(pull_reference("x", &d), format!("x@{d}"));
    }

    #[test]
    fn repeated_query_values() {
        let q = query_all(Some(
            "changes=CMD+%5B%22sh%22%5D&changes=ENV+A%3Db&names=a&names=b%2Fc",
        ));
        assert_eq!(q["changes"], vec!["CMD [\"sh\"]", "ENV A=b"]);
        assert_eq!(q["names"], vec!["a", "b/c"]);
    }
}
