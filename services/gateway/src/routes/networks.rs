//! `/networks`: list, inspect, create, remove, prune (the network service), and
//! connect/disconnect (the runtime, which records the container's networks and
//! attaches a running container through the network service).

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
use bus_schema::{docker, BusError};

use crate::error::{ApiError, ApiResult};
use crate::util;
use crate::version::ApiVersion;

pub trait Backend: Send + Sync + 'static {
    fn network_list(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> impl Future<Output = Result<Vec<docker::NetworkInspect>, BusError>> + Send;
    /// `scope` (`local`, `swarm`, `global`) narrows the lookup; none looks at this
    /// node's networks, then the swarm's.
    fn network_inspect(
        &self,
        id: String,
        verbose: bool,
        scope: Option<String>,
    ) -> impl Future<Output = Result<docker::NetworkInspect, BusError>> + Send;
    fn network_create(
        &self,
        body: docker::NetworkCreateRequest,
    ) -> impl Future<Output = Result<docker::NetworkCreateResponse, BusError>> + Send;
    fn network_remove(&self, id: String) -> impl Future<Output = Result<(), BusError>> + Send;
    fn network_prune(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> impl Future<Output = Result<docker::NetworkPruneResponse, BusError>> + Send;
    fn network_connect(
        &self,
        id: String,
        req: docker::NetworkConnectRequest,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    fn network_disconnect(
        &self,
        id: String,
        req: docker::NetworkDisconnectRequest,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/networks", get(list::<B>))
        .route("/networks/create", post(create::<B>))
        .route("/networks/prune", post(prune::<B>))
        .route("/networks/{id}", get(inspect::<B>).delete(remove::<B>))
        .route("/networks/{id}/connect", post(connect::<B>))
        .route("/networks/{id}/disconnect", post(disconnect::<B>))
        .with_state(b)
}

/// A network as Moby writes `types.NetworkResource` for the client's version:
/// `IPAM.Options` always (`null` when none), no `EnableIPv4` before API 1.47.
fn network_json(n: &docker::NetworkInspect, v: ApiVersion) -> ApiResult<serde_json::Value> {
    let mut j = serde_json::to_value(n).map_err(|e| BusError::internal(e.to_string()))?;
    if let Some(o) = j.as_object_mut() {
        if v.less_than("1.47") {
            o.remove("EnableIPv4");
        }
        if let Some(ipam) = o.get_mut("IPAM").and_then(|i| i.as_object_mut()) {
            crate::goshape::fill(ipam, &[("Options", serde_json::Value::Null)]);
        }
        // a swarm network with no endpoint on this node: Moby's nil map and labels
        if o.get("Scope").and_then(|s| s.as_str()) == Some("swarm") {
            crate::goshape::fill(o, &[("Containers", serde_json::Value::Null), ("Labels", serde_json::Value::Null)]);
        }
    }
    Ok(j)
}

async fn list<B: Backend>(
    State(b): State<Arc<B>>,
    util::FirstQuery(q): util::FirstQuery,
    Extension(v): Extension<ApiVersion>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let filters = util::filters(&q)?;
    let list = b.network_list(filters).await?;
    Ok(Json(list.iter().map(|n| network_json(n, v)).collect::<ApiResult<_>>()?))
}

async fn inspect<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    util::FirstQuery(q): util::FirstQuery,
    Extension(v): Extension<ApiVersion>,
) -> ApiResult<Json<serde_json::Value>> {
    let scope = q.get("scope").filter(|s| !s.is_empty()).cloned();
    let n = b
        .network_inspect(id, util::bool_value(&q, "verbose"), scope)
        .await?;
    Ok(Json(network_json(&n, v)?))
}

async fn create<B: Backend>(State(b): State<Arc<B>>, body: Bytes) -> ApiResult<Response> {
    let req: docker::NetworkCreateRequest = util::json_body(&body)?;
    let r = b.network_create(req).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn remove<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    b.network_remove(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn prune<B: Backend>(
    State(b): State<Arc<B>>,
    util::FirstQuery(q): util::FirstQuery,
) -> ApiResult<Json<docker::NetworkPruneResponse>> {
    let filters = util::filters(&q)?;
    let mut r = b.network_prune(filters).await?;
    r.networks_deleted.get_or_insert_with(Vec::new);
    Ok(Json(r))
}

async fn connect<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: docker::NetworkConnectRequest = util::json_body(&body)?;
    if req.container.is_empty() {
        return Err(ApiError::bad_request("no container specified"));
    }
    b.network_connect(id, req).await?;
    Ok(StatusCode::OK)
}

async fn disconnect<B: Backend>(
    State(b): State<Arc<B>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: docker::NetworkDisconnectRequest = util::json_body(&body)?;
    if req.container.is_empty() {
        return Err(ApiError::bad_request("no container specified"));
    }
    b.network_disconnect(id, req).await?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use std::sync::Mutex;
    use tower::ServiceExt;

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    fn net(name: &str) -> docker::NetworkInspect {
        docker::NetworkInspect {
            name: Some(name.into()),
            id: Some(format!("{name}-id")),
            created: Some("2024-01-01T00:00:00.000000001Z".into()),
            containers: Some(HashMap::new()),
            enable_ipv4: Some(true),
            ipam: Some(docker::Ipam { driver: Some("default".into()), ..Default::default() }),
            ..Default::default()
        }
    }

    impl Backend for Fake {
        async fn network_list(
            &self,
            f: HashMap<String, Vec<String>>,
        ) -> Result<Vec<docker::NetworkInspect>, BusError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("list {:?}", f.get("name")));
            Ok(vec![net("bridge")])
        }
        async fn network_inspect(
            &self,
            id: String,
            _v: bool,
            scope: Option<String>,
        ) -> Result<docker::NetworkInspect, BusError> {
            if id == "nosuch" || scope.is_some_and(|s| s != "local") {
                return Err(BusError::not_found("network nosuch not found"));
            }
            if id == "ov" {
                return Ok(docker::NetworkInspect {
                    scope: Some("swarm".into()),
                    containers: None,
                    labels: None,
                    ..net(&id)
                });
            }
            Ok(net(&id))
        }
        async fn network_create(
            &self,
            body: docker::NetworkCreateRequest,
        ) -> Result<docker::NetworkCreateResponse, BusError> {
            if body.name == "dup" {
                return Err(BusError::conflict("network with name dup already exists"));
            }
            Ok(docker::NetworkCreateResponse {
                id: format!("{}-id", body.name),
                warning: String::new(),
            })
        }
        async fn network_remove(&self, id: String) -> Result<(), BusError> {
            if id == "bridge" {
                return Err(BusError::forbidden(
                    "bridge is a pre-defined network and cannot be removed",
                ));
            }
            Ok(())
        }
        async fn network_prune(
            &self,
            _f: HashMap<String, Vec<String>>,
        ) -> Result<docker::NetworkPruneResponse, BusError> {
            Ok(docker::NetworkPruneResponse {
                networks_deleted: None,
            })
        }
        async fn network_connect(
            &self,
            id: String,
            req: docker::NetworkConnectRequest,
        ) -> Result<(), BusError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("connect {id} {}", req.container));
            Ok(())
        }
        async fn network_disconnect(
            &self,
            id: String,
            req: docker::NetworkDisconnectRequest,
        ) -> Result<(), BusError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("disconnect {id} {} {:?}", req.container, req.force));
            Ok(())
        }
    }

    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (u16, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let b = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn routes_and_status_codes() {
        let f = Arc::new(Fake::default());
        let app = router(f.clone()).layer(axum::Extension(ApiVersion::parse("1.41").unwrap()));
        let (s, b) = call(
            &app,
            "GET",
            "/networks?filters=%7B%22name%22%3A%7B%22web%22%3Atrue%7D%7D",
            "",
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v[0]["Name"], "bridge");
        assert_eq!(v[0]["Containers"], serde_json::json!({}));
        assert_eq!(v[0]["Created"], "2024-01-01T00:00:00.000000001Z");
        // Moby 20.10's types.NetworkResource: IPAM.Options null, no EnableIPv4 (1.47)
        assert_eq!(v[0]["IPAM"]["Options"], serde_json::Value::Null);
        assert!(v[0].get("EnableIPv4").is_none(), "{b}");
        let app47 = router(f.clone()).layer(axum::Extension(ApiVersion::parse("1.47").unwrap()));
        let (_, b47) = call(&app47, "GET", "/networks/web", "").await;
        assert!(b47.contains("\"EnableIPv4\":true"), "{b47}");
        assert!(f.calls.lock().unwrap()[0].contains("web"));

        let (s, b) = call(&app, "GET", "/networks/web", "").await;
        assert_eq!(
            (
                s,
                serde_json::from_str::<serde_json::Value>(&b).unwrap()["Id"].clone()
            ),
            (200, "web-id".into())
        );
        let (s, b) = call(&app, "GET", "/networks/nosuch", "").await;
        assert_eq!(
            (s, b.as_str()),
            (404, r#"{"message":"network nosuch not found"}"#)
        );
        let (s, _) = call(&app, "GET", "/networks/web?scope=swarm", "").await;
        assert_eq!(s, 404);
        // a swarm network with no endpoint here: Moby's nil Containers and Labels
        let (s, b) = call(&app, "GET", "/networks/ov", "").await;
        assert_eq!(s, 200, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!((v["Containers"].clone(), v["Labels"].clone()), (serde_json::Value::Null, serde_json::Value::Null), "{b}");
        assert!(v.as_object().unwrap().contains_key("Labels"), "{b}");

        let (s, b) = call(
            &app,
            "POST",
            "/networks/create",
            r#"{"Name":"web","CheckDuplicate":true,"Driver":"bridge"}"#,
        )
        .await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(b, r#"{"Id":"web-id","Warning":""}"#);
        let (s, _) = call(&app, "POST", "/networks/create", r#"{"Name":"dup"}"#).await;
        assert_eq!(s, 409);
        // Moby 20.10's words (util::json_body)
        let (s, b) = call(&app, "POST", "/networks/create", "").await;
        assert_eq!((s, b.as_str()), (400, r#"{"message":"got EOF while reading request body"}"#));
        let (s, b) = call(&app, "POST", "/networks/create", "{nope").await;
        assert_eq!((s, b.as_str()), (400, r#"{"message":"invalid character 'n' looking for beginning of object key string"}"#));
        let (s, b) = call(&app, "POST", "/networks/web/connect", " ").await;
        assert_eq!((s, b.as_str()), (400, r#"{"message":"got EOF while reading request body"}"#));

        let (s, b) = call(&app, "DELETE", "/networks/web", "").await;
        assert_eq!((s, b.as_str()), (204, ""));
        let (s, _) = call(&app, "DELETE", "/networks/bridge", "").await;
        assert_eq!(s, 403);

        let (s, b) = call(&app, "POST", "/networks/prune", "").await;
        assert_eq!((s, b.as_str()), (200, r#"{"NetworksDeleted":[]}"#));

        let (s, _) = call(
            &app,
            "POST",
            "/networks/web/connect",
            r#"{"Container":"c1","EndpointConfig":{"Aliases":["a"]}}"#,
        )
        .await;
        assert_eq!(s, 200);
        let (s, _) = call(
            &app,
            "POST",
            "/networks/web/disconnect",
            r#"{"Container":"c1","Force":true}"#,
        )
        .await;
        assert_eq!(s, 200);
        let (s, _) = call(&app, "POST", "/networks/web/connect", r#"{"Container":""}"#).await;
        assert_eq!(s, 400);
        let calls = f.calls.lock().unwrap().clone();
        assert!(calls.contains(&"connect web c1".to_string()), "{calls:?}");
        assert!(
            calls.contains(&"disconnect web c1 Some(true)".to_string()),
            "{calls:?}"
        );
    }
}
