//! `/plugins`: managed plugins (create from a tar, list, inspect, set, enable,
//! disable, remove), served by the images service. A plugin's name may hold slashes
//! (`vieux/sshfs:latest`), so `/plugins/{name}/{op}` is one wildcard route split
//! here as Moby's `{name:.*}/op` routes split it. Installing from a registry
//! (`privileges`, `pull`), `push` and `upgrade` stream Docker's JSON progress
//! lines; `pull` and `upgrade` name the plugin in `Docker-Plugin-Name` (the CLI
//! enables the plugin it installed by that name).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Json, Router,
};
use berth_bus::images::ImagesApi as _;
use bus_schema::images::JsonMessage;
use bus_schema::plugin::{
    Plugin, PluginCreate, PluginDisable, PluginEnable, PluginInspect, PluginList, PluginPrivilege, PluginPrivilegeList, PluginPull, PluginPush,
    PluginRemove, PluginSet, PluginUpgrade,
};
use bus_schema::BusStream;
use futures_util::StreamExt;
use http::HeaderMap;
use http::Method;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
/// Plugins are the images service's: the routes call it through the images area's
/// backend (its typed client).
use crate::routes::images::Backend;
use crate::routes::unserved;
use crate::util::{self, FirstQuery, Params};


pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/plugins", get(list::<B>))
        .route("/plugins/create", post(create::<B>))
        .route("/plugins/privileges", get(privileges::<B>))
        .route("/plugins/pull", post(pull::<B>))
        .route("/plugins/{*rest}", any(by_name::<B>))
        .with_state(b)
}

async fn list<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery) -> ApiResult<Json<Vec<Plugin>>> {
    let filters = util::filters(&q)?;
    Ok(Json(b.images().plugin_list(PluginList { filters }).await?))
}

async fn create<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery, body: Body) -> ApiResult<Response> {
    let name = q.get("name").cloned().unwrap_or_default();
    let (input, pump) = util::draining_input(body);
    let ((), mut done) = match b.images().plugin_create(PluginCreate { name }, input).await {
        Ok(x) => x,
        Err(e) => {
            pump.abort();
            return Err(e.into());
        }
    };
    let mut result = Ok(());
    while let Some(item) = done.next().await {
        if let Err(e) = item {
            result = Err(e);
            break;
        }
    }
    // an early error (the name exists): the client is still sending the tar
    if tokio::time::timeout(std::time::Duration::from_secs(5), pump).await.is_err() {
        tracing::debug!("plugin create: the client kept sending after the answer");
    }
    result?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn privileges<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery, headers: HeaderMap) -> ApiResult<Json<Option<Vec<PluginPrivilege>>>> {
    let remote = q.get("remote").cloned().unwrap_or_default();
    Ok(Json(b.images().plugin_privilege_list(PluginPrivilegeList { remote, auth: util::registry_auth(&headers) }).await?))
}

/// The progress stream, with the plugin's name in `Docker-Plugin-Name`.
fn named_stream(name: &str, rd: BusStream<JsonMessage>) -> Response {
    let mut r = util::json_stream(rd);
    if let Ok(v) = http::HeaderValue::from_str(name) {
        r.headers_mut().insert("Docker-Plugin-Name", v);
    }
    r
}

async fn pull<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let body = axum::body::to_bytes(body, crate::MAX_BODY).await.map_err(|e| ApiError::bad_request(e.to_string()))?;
    let privileges = privileges_body(&body)?;
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let (name, rd) = b.images().plugin_pull(PluginPull { remote: get("remote"), name: get("name"), privileges, auth: util::registry_auth(&headers) }).await?;
    Ok(named_stream(&name, rd))
}

/// Go's `json.Decoder.Decode(&types.PluginPrivileges)` of a pull or upgrade body,
/// then `dec.More()`, with Moby's answers (500s).
fn privileges_body(body: &[u8]) -> Result<Vec<PluginPrivilege>, ApiError> {
    let fail = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to parse privileges: {m}"));
    let mut it = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let v = match it.next() {
        None => return Err(fail("EOF".into())),
        Some(Err(e)) if e.is_eof() => return Err(fail("unexpected EOF".into())),
        Some(Err(_)) => return Err(fail(util::json_body::<Value>(body).err().map(|e| e.message).unwrap_or_default())),
        Some(Ok(v)) => v,
    };
    if it.next().is_some() {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "invalid privileges"));
    }
    let kind = match &v {
        Value::Array(_) | Value::Null => None,
        Value::Object(_) => Some("object"),
        Value::String(_) => Some("string"),
        Value::Number(_) => Some("number"),
        Value::Bool(_) => Some("bool"),
    };
    if let Some(k) = kind {
        return Err(fail(format!("json: cannot unmarshal {k} into Go value of type types.PluginPrivileges")));
    }
    if v.is_null() {
        return Ok(vec![]);
    }
    bus_schema::gojson::from_slice(&serde_json::to_vec(&v).unwrap_or_default()).map_err(|e| fail(e.to_string()))
}

/// Go's `json.Decoder.Decode(&[]string)` of the set body, with Moby's answers.
fn set_args(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let v: Value = util::json_body(body)?;
    let kind = |v: &Value| match v {
        Value::Object(_) => "object",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Null => "null",
    };
    match v {
        Value::Null => Ok(vec![]),
        Value::Array(a) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                Value::Null => Ok(String::new()),
                x => Err(ApiError::bad_request(format!("json: cannot unmarshal {} into Go value of type string", kind(&x)))),
            })
            .collect(),
        v => Err(ApiError::bad_request(format!("json: cannot unmarshal {} into Go value of type []string", kind(&v)))),
    }
}

/// `GET {name}/json`, `POST {name}/enable|disable|set`, `DELETE {name}`; anything
/// else under /plugins/ answers as routes::unserved.
async fn by_name<B: Backend>(State(b): State<Arc<B>>, Path(rest): Path<String>, req: Request) -> Response {
    let q = Params::parse(req.uri().query().unwrap_or("")).first;
    let method = req.method().clone();
    let split = rest.rsplit_once('/');
    let res: ApiResult<Response> = match (&method, split) {
        (&Method::DELETE, _) => {
            b.images().plugin_remove(PluginRemove { name: rest.clone(), force: util::bool_value(&q, "force") }).await.map(|_| StatusCode::OK.into_response()).map_err(Into::into)
        }
        (&Method::GET, Some((name, "json"))) => b.images().plugin_inspect(PluginInspect { name: name.to_string() }).await.map(|p| Json(p).into_response()).map_err(Into::into),
        (&Method::POST, Some((name, "enable"))) => {
            // Moby's strconv.Atoi of `timeout` comes first (the CLI always sends it)
            let t = q.get("timeout").map(String::as_str).unwrap_or("");
            match t.parse::<i64>() {
                Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("strconv.Atoi: parsing {t:?}: invalid syntax"))),
                Ok(t) => b.images().plugin_enable(PluginEnable { name: name.to_string(), timeout: t }).await.map(|_| StatusCode::OK.into_response()).map_err(Into::into),
            }
        }
        (&Method::POST, Some((name, "disable"))) => b
            .images()
            .plugin_disable(PluginDisable { name: name.to_string(), force: util::bool_value(&q, "force") })
            .await
            .map(|_| StatusCode::OK.into_response())
            .map_err(Into::into),
        (&Method::POST, Some((name, "set"))) => {
            let name = name.to_string();
            match axum::body::to_bytes(req.into_body(), crate::MAX_BODY).await {
                Err(e) => Err(ApiError::bad_request(e.to_string())),
                Ok(body) => match set_args(&body) {
                    Err(e) => Err(e),
                    Ok(args) => b.images().plugin_set(PluginSet { name, args }).await.map(|_| StatusCode::NO_CONTENT.into_response()).map_err(Into::into),
                },
            }
        }
        (&Method::POST, Some((name, "push"))) => {
            let auth = util::registry_auth(req.headers());
            b.images().plugin_push(PluginPush { name: name.to_string(), auth }).await.map(|((), rd)| util::json_stream(rd)).map_err(Into::into)
        }
        (&Method::POST, Some((name, "upgrade"))) => {
            let name = name.to_string();
            let auth = util::registry_auth(req.headers());
            let remote = q.get("remote").cloned().unwrap_or_default();
            match axum::body::to_bytes(req.into_body(), crate::MAX_BODY).await {
                Err(e) => Err(ApiError::bad_request(e.to_string())),
                Ok(body) => match privileges_body(&body) {
                    Err(e) => Err(e),
                    Ok(privileges) => b
                        .images()
                        .plugin_upgrade(PluginUpgrade { name, remote, privileges, auth })
                        .await
                        .map(|(n, rd)| named_stream(&n, rd))
                        .map_err(Into::into),
                },
            }
        }
        _ => return unserved::fallback(req).await,
    };
    res.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bodies_as_moby() {
        assert_eq!(set_args(br#"["DEBUG=1"]"#).unwrap(), vec!["DEBUG=1"]);
        assert_eq!(set_args(b"null").unwrap(), Vec::<String>::new());
        assert_eq!(set_args(b"").unwrap_err().message, "got EOF while reading request body");
        assert_eq!(set_args(br#"{"a":1}"#).unwrap_err().message, "json: cannot unmarshal object into Go value of type []string");
        assert_eq!(set_args(b"[1]").unwrap_err().message, "json: cannot unmarshal number into Go value of type string");
        assert_eq!(set_args(b"garbage").unwrap_err().message, "invalid character 'g' looking for beginning of value");
    }

    #[test]
    fn privileges_bodies_as_moby() {
        // Moby 20.10's answers, recorded on a dockerd 20.10.24
        let p = privileges_body(br#"[{"Name":"network","Description":"permissions to access a network","Value":["host"]}]"#).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].value, Some(vec!["host".to_string()]));
        // Go matches keys without case
        assert_eq!(privileges_body(br#"[{"name":"network","value":["none"]}]"#).unwrap()[0].name, "network");
        assert!(privileges_body(b"[]").unwrap().is_empty());
        assert!(privileges_body(b"null").unwrap().is_empty());
        let e = privileges_body(b"").unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "failed to parse privileges: EOF"));
        assert_eq!(privileges_body(b"{}").unwrap_err().message, "failed to parse privileges: json: cannot unmarshal object into Go value of type types.PluginPrivileges");
        assert_eq!(privileges_body(b"[] []").unwrap_err().message, "invalid privileges");
    }
}
