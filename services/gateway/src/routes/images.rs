//! `/images/...` and `/auth`: pull, push, import, load, save, list, inspect,
//! history, tag, remove, prune, and registry login. Image names contain slashes,
//! so `/images/{name}/<op>` is matched as moby does, on the path's last segment.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bus_schema::images::*;
use bus_schema::{docker, BusError};
use http::{HeaderMap, Method, StatusCode};

use crate::error::{ApiError, ApiResult};
use crate::util;
use crate::version::ApiVersion;

pub trait Backend: Send + Sync + 'static {
    type Images: ImagesApi;
    /// The images service (its typed client over the bus).
    fn images(&self) -> &Self::Images;
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
        .route("/distribution/{*rest}", get(distribution::<B>))
        .with_state(b)
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
    util::Params { first: q, all }: util::Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let platform = Some(get("platform")).filter(|p| !p.is_empty());
    let from_image = get("fromImage");
    if !from_image.is_empty() {
        let req = ImagePull {
            reference: pull_reference(&from_image, &get("tag")),
            platform,
            auth: util::registry_auth(&headers),
        };
        let ((), rd) = b.images().image_pull(req).await?;
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
    let input = if src == "-" { util::body_input(body) } else { Box::pin(futures_util::stream::empty()) };
    let ((), rd) = b.images().image_import(req, input).await?;
    Ok(util::json_stream(rd))
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// `RepoTags` and `RepoDigests` are lists, never `null` (list and inspect).
fn repo_lists_not_null(o: &mut JsonObject) {
    for k in ["RepoTags", "RepoDigests"] {
        if o.get(k).is_none_or(|x| x.is_null()) {
            o.insert(k.into(), serde_json::json!([]));
        }
    }
}

/// `VirtualSize` (= `Size`), which API versions before 1.44 have (list and inspect).
fn add_virtual_size(o: &mut JsonObject) {
    let size = o.get("Size").cloned().unwrap_or(serde_json::json!(0));
    o.insert("VirtualSize".into(), size);
}

/// `/images/json` as the client's API version has it (moby's image router):
/// untagged images are `<none>:<none>` before 1.43 (`[]` since), `VirtualSize`
/// before 1.44, no `Descriptor` before 1.48, `Containers` -1 before 1.51.
pub fn image_list_for_version(mut list: Vec<serde_json::Value>, v: ApiVersion) -> Vec<serde_json::Value> {
    use serde_json::{json, Value};
    for img in list.iter_mut() {
        let Some(o) = img.as_object_mut() else { continue };
        let empty = |x: Option<&Value>| x.and_then(|v| v.as_array()).is_none_or(|a| a.is_empty());
        if v.less_than("1.43") {
            if empty(o.get("RepoTags")) && empty(o.get("RepoDigests")) {
                o.insert("RepoTags".into(), json!(["<none>:<none>"]));
                o.insert("RepoDigests".into(), json!(["<none>@<none>"]));
            } else if empty(o.get("RepoDigests")) {
                // a tagged image without digests: Moby 20.10's nil slice
                o.insert("RepoDigests".into(), Value::Null);
            }
        } else {
            repo_lists_not_null(o);
        }
        if v.less_than("1.44") {
            add_virtual_size(o);
        }
        if v.less_than("1.48") {
            o.remove("Descriptor");
        }
        if v.less_than("1.51") {
            o.insert("Containers".into(), json!(-1));
        }
        // an image without labels: Go's nil map
        if o.get("Labels").is_none_or(|l| l.as_object().is_some_and(|m| m.is_empty())) {
            o.insert("Labels".into(), Value::Null);
        }
    }
    list
}

/// `/images/{name}/json` as the client's API version has it: `VirtualSize` before
/// 1.44; `Container` and `ContainerConfig` before 1.45; no `Descriptor` before 1.48;
/// `Parent`, `Comment`, `DockerVersion`, `Author` always before 1.52.
pub fn image_inspect_for_version(mut img: serde_json::Value, v: ApiVersion) -> serde_json::Value {
    use serde_json::{json, Value};
    let Some(o) = img.as_object_mut() else { return img };
    repo_lists_not_null(o);
    if v.less_than("1.44") {
        add_virtual_size(o);
        if o.get("Created").is_none_or(|c| c.as_str().is_none_or(str::is_empty)) {
            o.insert("Created".into(), json!("0001-01-01T00:00:00Z"));
        }
    }
    if v.less_than("1.45") {
        o.entry("Container").or_insert(json!(""));
        // an image config without container_config: Moby's zero container.Config
        if o.get("ContainerConfig").is_none_or(Value::is_null) {
            o.insert("ContainerConfig".into(), crate::goshape::zero_container_config());
        }
    }
    for k in ["Config", "ContainerConfig"] {
        if let Some(c) = o.get_mut(k).and_then(Value::as_object_mut) {
            crate::goshape::fill(c, &crate::goshape::container_config_keys());
        }
    }
    if v.less_than("1.48") {
        o.remove("Descriptor");
    }
    if v.less_than("1.52") {
        for k in ["Parent", "Comment", "DockerVersion", "Author"] {
            if o.get(k).is_none_or(|x| x.is_null()) {
                o.insert(k.into(), json!(""));
            }
        }
    }
    img
}

async fn list<B: Backend>(
    State(b): State<Arc<B>>,
    util::FirstQuery(q): util::FirstQuery,
    Extension(v): Extension<ApiVersion>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let mut filters = util::filters(&q)?;
    // the pre-1.25 `filter=name` parameter
    if let Some(f) = q.get("filter").filter(|f| !f.is_empty() && v.less_than("1.25") && !filters.contains_key("reference")) {
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
    let list = b.images().image_list(req).await?;
    let list: Vec<serde_json::Value> = list.iter().filter_map(|i| serde_json::to_value(i).ok()).collect();
    Ok(Json(image_list_for_version(list, v)))
}

async fn prune<B: Backend>(
    State(b): State<Arc<B>>,
    util::FirstQuery(q): util::FirstQuery,
) -> ApiResult<Json<docker::ImagePruneResponse>> {
    Ok(Json(
        b.images().image_prune(ImagePrune {
            filters: util::filters(&q)?,
        })
        .await?,
    ))
}

async fn load<B: Backend>(
    State(b): State<Arc<B>>,
    util::FirstQuery(q): util::FirstQuery,
    body: Body,
) -> ApiResult<Response> {
    let req = ImageLoad { quiet: util::bool_value(&q, "quiet") };
    let ((), rd) = b.images().image_load(req, util::body_input(body)).await?;
    Ok(util::json_stream(rd))
}

async fn save_many<B: Backend>(
    State(b): State<Arc<B>>,
    p: util::Params,
) -> ApiResult<Response> {
    let names = p.values("names").to_vec();
    save(b, names).await
}

async fn save<B: Backend>(b: Arc<B>, names: Vec<String>) -> ApiResult<Response> {
    let ((), rd) = b.images().image_save(ImageSave { names }).await?;
    Ok(util::bytes_stream(rd, "application/x-tar"))
}

/// `/images/{name}/json|history|tag|push|get` and `DELETE /images/{name}`.
async fn by_name<B: Backend>(
    State(b): State<Arc<B>>,
    Extension(v): Extension<ApiVersion>,
    method: Method,
    Path(rest): Path<String>,
    util::FirstQuery(q): util::FirstQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if method == Method::DELETE {
        let req = ImageRemove {
            name: rest,
            force: util::bool_value(&q, "force"),
            noprune: util::bool_value(&q, "noprune"),
        };
        return Ok(Json(b.images().image_remove(req).await?).into_response());
    }
    let (name, op) = match rest.rsplit_once('/') {
        Some((n, op)) if !n.is_empty() => (n.to_string(), op),
        _ => return Err(ApiError::not_found("page not found")),
    };
    match (method, op) {
        (Method::GET, "json") => {
            // Moby 20.10 wraps the lookup's error with the name as asked
            let d = b.images().image_inspect(ImageInspect { name: name.clone() }).await.map_err(|mut e| {
                if e.kind == bus_schema::ErrorKind::NotFound && e.message.starts_with("No such image: ") {
                    e.message = format!("no such image: {name}: {}", e.message);
                }
                e
            })?;
            let mut img = serde_json::to_value(&d.inspect).map_err(|e| BusError::internal(e.to_string()))?;
            // present when set at any version (moby's inspect); always before 1.52
            if let Some(o) = img.as_object_mut() {
                if !d.parent.is_empty() {
                    o.insert("Parent".into(), d.parent.clone().into());
                }
                if !d.docker_version.is_empty() {
                    o.insert("DockerVersion".into(), d.docker_version.clone().into());
                    // Docker's classic builder and commit (they write DockerVersion)
                    // record the container's config as `container_config`; berth keeps
                    // none, so its Config stands for it. An image from elsewhere
                    // (BuildKit, umoci) has none: the zero config below.
                    if v.less_than("1.45") && !o.contains_key("ContainerConfig") {
                        let c = o.get("Config").cloned().unwrap_or(serde_json::Value::Null);
                        o.insert("ContainerConfig".into(), c);
                    }
                }
            }
            Ok(Json(image_inspect_for_version(img, v)).into_response())
        }
        (Method::GET, "history") => {
            let h = b.images().image_history(ImageHistory { name }).await?;
            let mut j = serde_json::to_value(&h).map_err(|e| BusError::internal(e.to_string()))?;
            // a layer without tags: Go's nil slice
            for item in j.as_array_mut().into_iter().flatten().filter_map(|i| i.as_object_mut()) {
                if item.get("Tags").is_some_and(|t| t.as_array().is_some_and(|a| a.is_empty())) {
                    item.insert("Tags".into(), serde_json::Value::Null);
                }
            }
            Ok(Json(j).into_response())
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
            b.images().image_tag(req).await?;
            Ok(StatusCode::CREATED.into_response())
        }
        (Method::POST, "push") => {
            let req = ImagePush {
                name,
                tag: q.get("tag").cloned().filter(|t| !t.is_empty()),
                auth: util::registry_auth(&headers),
            };
            Ok(util::json_stream(b.images().image_push(req).await?.1))
        }
        _ => Err(ApiError::not_found("page not found")),
    }
}

/// `GET /distribution/{name}/json` (the name may hold slashes). Platforms are
/// `null` when the registry says none, as Moby writes them, and for an OCI image
/// manifest to API < 1.42 clients (Moby 20.10 read the platform of Docker schema2
/// manifests only, recorded side by side; docker-py at 1.51 expects it).
async fn distribution<B: Backend>(
    State(b): State<Arc<B>>,
    Extension(v): Extension<ApiVersion>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let Some(name) = rest.strip_suffix("/json").filter(|n| !n.is_empty()) else {
        return Err(ApiError::not_found("page not found"));
    };
    let r = b
        .images()
        .distribution_inspect(DistributionInspect { reference: name.to_string(), auth: util::registry_auth(&headers) })
        .await?;
    let mut j = serde_json::to_value(&r).map_err(|e| BusError::internal(e.to_string()))?;
    let oci_manifest = r.descriptor.media_type.as_deref() == Some("application/vnd.oci.image.manifest.v1+json");
    if r.platforms.is_empty() || (oci_manifest && v.less_than("1.42")) {
        j["Platforms"] = serde_json::Value::Null;
    }
    Ok(Json(j))
}

async fn auth<B: Backend>(
    State(b): State<Arc<B>>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let auth = util::auth_from_json(&body).unwrap_or_default();
    let r = b.images().registry_login(RegistryLogin { auth }).await?;
    // Moby always sends IdentityToken, "" when the registry gave none
    Ok(Json(serde_json::json!({
        "IdentityToken": r.identity_token.unwrap_or_default(),
        "Status": r.status,
    })))
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
    fn image_fields_follow_the_api_version() {
        use serde_json::json;
        let img = json!({"Id": "sha256:a", "RepoTags": [], "RepoDigests": [], "Size": 5, "Containers": 2, "Descriptor": {}});
        let old = image_list_for_version(vec![img.clone()], ApiVersion(1, 41));
        assert_eq!(old[0]["RepoTags"], json!(["<none>:<none>"]));
        assert_eq!(old[0]["RepoDigests"], json!(["<none>@<none>"]));
        assert_eq!(old[0]["VirtualSize"], 5);
        assert_eq!(old[0]["Containers"], -1);
        assert!(old[0].get("Descriptor").is_none());
        let new = image_list_for_version(vec![img], ApiVersion(1, 51));
        assert_eq!(new[0]["RepoTags"], json!([]));
        assert!(new[0].get("VirtualSize").is_none());
        assert_eq!(new[0]["Containers"], 2);
        assert!(new[0].get("Descriptor").is_some());
        let i = image_inspect_for_version(json!({"Id": "x", "Size": 1, "Config": {"Env": []}}), ApiVersion(1, 41));
        assert_eq!((i["Parent"].as_str(), i["Comment"].as_str(), i["Author"].as_str()), (Some(""), Some(""), Some("")));
        assert_eq!(i["RepoTags"], json!([]));
        assert_eq!(i["VirtualSize"], 1);
        assert_eq!(i["Container"], "");
        let i = image_inspect_for_version(json!({"Id": "x", "Size": 1}), ApiVersion(1, 52));
        assert!(i.get("Parent").is_none() && i.get("VirtualSize").is_none());
    }
}
