//! `/volumes` (list, create, inspect, remove, prune) and `/system/df` (the storage
//! part: layers size and local volumes with their usage).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use bus_schema::storage::{StorageUsage, VolumeCreate};
use bus_schema::{docker, BusError};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::util::{self, FirstQuery};
use crate::version::ApiVersion;

pub trait Backend: Send + Sync + 'static {
    fn volume_list(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> impl Future<Output = Result<Vec<docker::Volume>, BusError>> + Send;
    fn volume_create(
        &self,
        req: VolumeCreate,
    ) -> impl Future<Output = Result<docker::Volume, BusError>> + Send;
    fn volume_inspect(
        &self,
        name: String,
    ) -> impl Future<Output = Result<docker::Volume, BusError>> + Send;
    fn volume_remove(
        &self,
        name: String,
        force: bool,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    fn volume_prune(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> impl Future<Output = Result<docker::VolumePruneResponse, BusError>> + Send;
    /// Layer and volume usage as the storage service sees it.
    fn storage_usage(&self) -> impl Future<Output = Result<StorageUsage, BusError>> + Send;
    /// `system df`'s images (with sizes and container counts), from the images service.
    fn image_df(&self) -> impl Future<Output = Result<Vec<docker::ImageSummary>, BusError>> + Send {
        async { Ok(vec![]) }
    }
    /// `system df`'s containers (with SizeRw), from the runtime.
    fn container_df(&self) -> impl Future<Output = Result<Vec<docker::ContainerSummary>, BusError>> + Send {
        async { Ok(vec![]) }
    }
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/volumes", get(list::<B>))
        .route("/volumes/create", post(create::<B>))
        .route("/volumes/prune", post(prune::<B>))
        .route("/volumes/{name}", get(inspect::<B>).delete(remove::<B>))
        .route("/system/df", get(df::<B>))
        .with_state(b)
}

/// Docker's JSON for a volume: empty `Labels`/`Options` are `null`, as Moby sends them.
pub fn volume_json(v: &docker::Volume) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Some(o) = j.as_object_mut() {
        for k in ["Labels", "Options"] {
            if o.get(k)
                .and_then(|x| x.as_object())
                .is_some_and(|m| m.is_empty())
            {
                o.insert(k.into(), Value::Null);
            }
        }
    }
    j
}

async fn list<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery) -> ApiResult<Json<Value>> {
    let filters = util::filters(&q)?;
    let vols = b.volume_list(filters).await?;
    Ok(Json(serde_json::json!({
        "Volumes": vols.iter().map(volume_json).collect::<Vec<_>>(),
        "Warnings": [],
    })))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    driver_opts: Option<HashMap<String, String>>,
    #[serde(default)]
    labels: Option<HashMap<String, String>>,
}

async fn create<B: Backend>(
    State(b): State<Arc<B>>,
    version: Option<Extension<ApiVersion>>,
    body: Bytes,
) -> ApiResult<Response> {
    let c: CreateBody = util::json_body(&body)?;
    let name = c.name.filter(|n| !n.is_empty());
    // a volume created without a name is anonymous (Moby 23+ labels it so), and so
    // pruned by API 1.42+ without `all`; older clients get Moby 20.10's answer: no
    // label (`"Labels": null`), as prune removes every unused volume for them anyway
    let anonymous = name.is_none() && !version.is_some_and(|Extension(v)| v.less_than("1.42"));
    let req = VolumeCreate {
        name,
        driver: c
            .driver
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "local".into()),
        driver_opts: c.driver_opts.unwrap_or_default(),
        labels: c.labels.unwrap_or_default(),
        anonymous,
    };
    let v = b.volume_create(req).await?;
    Ok((StatusCode::CREATED, Json(volume_json(&v))).into_response())
}

async fn inspect<B: Backend>(
    State(b): State<Arc<B>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(volume_json(&b.volume_inspect(name).await?)))
}

async fn remove<B: Backend>(
    State(b): State<Arc<B>>,
    Path(name): Path<String>,
    FirstQuery(q): FirstQuery,
) -> ApiResult<StatusCode> {
    b.volume_remove(name, util::bool_value(&q, "force")).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn prune<B: Backend>(
    State(b): State<Arc<B>>,
    version: Option<Extension<ApiVersion>>,
    FirstQuery(q): FirstQuery,
) -> ApiResult<Json<docker::VolumePruneResponse>> {
    let mut filters = util::filters(&q)?;
    // API 1.42 made prune remove only anonymous volumes; older clients keep "all".
    if version.is_some_and(|Extension(v)| v.less_than("1.42")) {
        filters.entry("all".into()).or_default().push("true".into());
    }
    let mut r = b.volume_prune(filters).await?;
    r.volumes_deleted.get_or_insert_with(Vec::new);
    r.space_reclaimed.get_or_insert(0);
    Ok(Json(r))
}

/// `GET /system/df`: LayersSize and Volumes from storage, Images from the images
/// service, Containers from the runtime (asked together). The classic builder keeps
/// its cache as images, so BuildCache is empty, as Moby's is without BuildKit.
async fn df<B: Backend>(
    State(b): State<Arc<B>>,
    Extension(v): Extension<crate::version::ApiVersion>,
    p: util::Params,
) -> ApiResult<Json<Value>> {
    let types = p.values("type");
    for t in types {
        if !matches!(t.as_str(), "container" | "image" | "volume" | "build-cache") {
            return Err(ApiError::bad_request(format!("unknown object type: {t}")));
        }
    }
    let want = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
    let (u, images, containers) = tokio::join!(
        b.storage_usage(),
        async { if want("image") { b.image_df().await } else { Ok(vec![]) } },
        async { if want("container") { b.container_df().await } else { Ok(vec![]) } },
    );
    let u = u?;
    let mut out = serde_json::Map::new();
    if want("image") {
        out.insert("LayersSize".into(), u.layers.values().sum::<i64>().into());
        out.insert("Images".into(), Value::Array(df_images(images?, v)));
    }
    if want("container") {
        let mut cs = serde_json::to_value(containers?).unwrap_or(Value::Array(vec![]));
        for c in cs.as_array_mut().into_iter().flatten() {
            crate::goshape::container_summary(c, v);
        }
        out.insert("Containers".into(), cs);
    }
    if want("volume") {
        out.insert(
            "Volumes".into(),
            Value::Array(u.volumes.iter().map(volume_json).collect()),
        );
    }
    if want("build-cache") {
        // Moby without BuildKit: no cache records, a nil slice
        out.insert("BuildCache".into(), Value::Null);
        out.insert("BuilderSize".into(), 0.into());
    }
    Ok(Json(Value::Object(out)))
}

/// df's images as Moby writes them: the image list's shape for the version, with
/// the real container counts (df counts them, the list says -1 before 1.51).
fn df_images(images: Vec<docker::ImageSummary>, v: crate::version::ApiVersion) -> Vec<Value> {
    let counts: Vec<Value> = images.iter().map(|i| i.containers.into()).collect();
    let list = images.iter().filter_map(|i| serde_json::to_value(i).ok()).collect();
    let mut list = crate::routes::images::image_list_for_version(list, v);
    for (img, n) in list.iter_mut().zip(counts) {
        if let Some(o) = img.as_object_mut() {
            o.insert("Containers".into(), n);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::ServiceExt;

    #[derive(Default)]
    struct Fake {
        vols: Mutex<Vec<docker::Volume>>,
        last_prune: Mutex<Option<HashMap<String, Vec<String>>>>,
    }

    fn vol(name: &str) -> docker::Volume {
        docker::Volume {
            name: name.into(),
            driver: "local".into(),
            mountpoint: format!("/r/storage/volumes/{name}/_data"),
            created_at: Some("2026-01-01T00:00:00Z".into()),
            scope: Some(docker::VolumeScopeEnum::LOCAL),
            ..Default::default()
        }
    }

    impl Backend for Fake {
        async fn volume_list(
            &self,
            f: HashMap<String, Vec<String>>,
        ) -> Result<Vec<docker::Volume>, BusError> {
            if f.contains_key("bogus") {
                return Err(BusError::invalid("Invalid filter 'bogus'"));
            }
            Ok(self.vols.lock().unwrap().clone())
        }
        async fn volume_create(&self, r: VolumeCreate) -> Result<docker::Volume, BusError> {
            let mut v = vol(r.name.as_deref().unwrap_or("anon"));
            v.labels = r.labels;
            self.vols.lock().unwrap().push(v.clone());
            Ok(v)
        }
        async fn volume_inspect(&self, name: String) -> Result<docker::Volume, BusError> {
            self.vols
                .lock()
                .unwrap()
                .iter()
                .find(|v| v.name == name)
                .cloned()
                .ok_or_else(|| BusError::not_found(format!("get {name}: no such volume")))
        }
        async fn volume_remove(&self, name: String, force: bool) -> Result<(), BusError> {
            if name == "busy" {
                return Err(BusError::conflict("remove busy: volume is in use - [abc]"));
            }
            if !force && !self.vols.lock().unwrap().iter().any(|v| v.name == name) {
                return Err(BusError::not_found(format!("get {name}: no such volume")));
            }
            Ok(())
        }
        async fn volume_prune(
            &self,
            f: HashMap<String, Vec<String>>,
        ) -> Result<docker::VolumePruneResponse, BusError> {
            *self.last_prune.lock().unwrap() = Some(f);
            Ok(docker::VolumePruneResponse {
                volumes_deleted: None,
                space_reclaimed: None,
            })
        }
        async fn storage_usage(&self) -> Result<StorageUsage, BusError> {
            let mut v = vol("v1");
            v.usage_data = Some(docker::VolumeUsageData {
                size: 5,
                ref_count: 1,
            });
            Ok(StorageUsage {
                layers: HashMap::from([("a".into(), 3), ("b".into(), 4)]),
                volumes: vec![v],
            })
        }
    }

    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let req = crate::version::rewrite(req).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let b = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            if b.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&b).unwrap()
            },
        )
    }

    #[tokio::test]
    async fn volume_routes_match_moby() {
        let fake = Arc::new(Fake::default());
        let app = router(fake.clone());
        let (s, j) = call(
            &app,
            "POST",
            "/v1.51/volumes/create",
            r#"{"Name":"v1","Labels":{"a":"b"}}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(j["Name"], "v1");
        assert_eq!(j["Options"], Value::Null, "empty options are null");
        assert_eq!(j["Labels"]["a"], "b");
        assert_eq!(j["Scope"], "local");
        let (s, j) = call(&app, "POST", "/volumes/create", "").await;
        assert_eq!(
            (s, j["message"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("got EOF while reading request body")
            )
        );
        // Go's Decoder reads the first value: Moby creates an anonymous volume for these
        for body in ["null", "{}x"] {
            let (s, j) = call(&app, "POST", "/volumes/create", body).await;
            assert_eq!(s, StatusCode::CREATED, "{body}: {j}");
        }
        let (s, j) = call(&app, "POST", "/volumes/create", "{invalid json").await;
        assert_eq!(
            (s, j["message"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid character 'i' looking for beginning of object key string"))
        );
        let (s, j) = call(&app, "GET", "/volumes", "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["Volumes"][0]["Name"], "v1");
        assert_eq!(j["Warnings"], serde_json::json!([]));
        let (s, j) = call(
            &app,
            "GET",
            "/volumes?filters=%7B%22bogus%22%3A%7B%22x%22%3Atrue%7D%7D",
            "",
        )
        .await;
        assert_eq!(
            (s, j["message"].as_str()),
            (StatusCode::BAD_REQUEST, Some("Invalid filter 'bogus'"))
        );
        let (s, j) = call(&app, "GET", "/volumes/nope", "").await;
        assert_eq!(
            (s, j["message"].as_str()),
            (StatusCode::NOT_FOUND, Some("get nope: no such volume"))
        );
        let (s, _) = call(&app, "DELETE", "/volumes/v1", "").await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, j) = call(&app, "DELETE", "/volumes/busy", "").await;
        assert_eq!(
            (s, j["message"].as_str()),
            (
                StatusCode::CONFLICT,
                Some("remove busy: volume is in use - [abc]")
            )
        );
        let (s, _) = call(&app, "DELETE", "/volumes/nope?force=1", "").await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, j) = call(&app, "POST", "/v1.41/volumes/prune", "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            j,
            serde_json::json!({"VolumesDeleted": [], "SpaceReclaimed": 0})
        );
        assert_eq!(
            fake.last_prune.lock().unwrap().as_ref().unwrap()["all"],
            vec!["true"],
            "old clients prune all"
        );
        call(&app, "POST", "/v1.51/volumes/prune", "").await;
        assert!(!fake
            .last_prune
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .contains_key("all"));
        let (s, j) = call(&app, "GET", "/system/df", "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["LayersSize"], 7);
        // no BuildKit: Moby's nil slice
        assert_eq!(j["BuildCache"], serde_json::Value::Null);
        assert_eq!(
            j["Volumes"][0]["UsageData"],
            serde_json::json!({"Size": 5, "RefCount": 1})
        );
        let (_, j) = call(&app, "GET", "/system/df?type=volume", "").await;
        assert!(j.get("Images").is_none() && j.get("Volumes").is_some());
    }
}
