//! `/plugins`: managed plugins (create from a tar, list, inspect, set, enable,
//! disable, remove), served by the images service. A plugin's name may hold slashes
//! (`vieux/sshfs:latest`), so `/plugins/{name}/{op}` is one wildcard route split
//! here as Moby's `{name:.*}/op` routes split it. Installing from a registry
//! (`pull`, `privileges`, `upgrade`) and `push` are not served yet: those answer as
//! routes::unserved says.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Json, Router,
};
use berth_bus::{StreamReader, StreamWriter};
use bus_schema::plugin::{Plugin, PluginCreate};
use bus_schema::stream::ByteChunk;
use http::Method;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::routes::containers::Fut;
use crate::routes::unserved::{self, Answer, Fallback};
use crate::util::{self, FirstQuery, Params};


pub trait Backend: Send + Sync + 'static {
    fn plugin_create(&self, r: PluginCreate) -> Fut<'_, (StreamReader<()>, StreamWriter<ByteChunk>)>;
    fn plugin_list(&self, filters: std::collections::HashMap<String, Vec<String>>) -> Fut<'_, Vec<Plugin>>;
    fn plugin_inspect(&self, name: String) -> Fut<'_, Plugin>;
    fn plugin_set(&self, name: String, args: Vec<String>) -> Fut<'_, ()>;
    fn plugin_enable(&self, name: String, timeout: i64) -> Fut<'_, ()>;
    fn plugin_disable(&self, name: String, force: bool) -> Fut<'_, ()>;
    fn plugin_remove(&self, name: String, force: bool) -> Fut<'_, ()>;
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/plugins", get(list::<B>))
        .route("/plugins/create", post(create::<B>))
        .route("/plugins/{*rest}", any(by_name::<B>))
        .with_state(b)
}

async fn list<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery) -> ApiResult<Json<Vec<Plugin>>> {
    let filters = util::filters(&q)?;
    Ok(Json(b.plugin_list(filters).await?))
}

async fn create<B: Backend>(State(b): State<Arc<B>>, FirstQuery(q): FirstQuery, body: Body) -> ApiResult<Response> {
    let name = q.get("name").cloned().unwrap_or_default();
    let (mut done, input) = b.plugin_create(PluginCreate { name }).await?;
    let pump = tokio::spawn(util::pump_body_draining(body, input));
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
            b.plugin_remove(rest.clone(), util::bool_value(&q, "force")).await.map(|_| StatusCode::OK.into_response()).map_err(Into::into)
        }
        (&Method::GET, Some((name, "json"))) => b.plugin_inspect(name.to_string()).await.map(|p| Json(p).into_response()).map_err(Into::into),
        (&Method::POST, Some((name, "enable"))) => {
            // Moby's strconv.Atoi of `timeout` comes first (the CLI always sends it)
            let t = q.get("timeout").map(String::as_str).unwrap_or("");
            match t.parse::<i64>() {
                Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("strconv.Atoi: parsing {t:?}: invalid syntax"))),
                Ok(t) => b.plugin_enable(name.to_string(), t).await.map(|_| StatusCode::OK.into_response()).map_err(Into::into),
            }
        }
        (&Method::POST, Some((name, "disable"))) => b
            .plugin_disable(name.to_string(), util::bool_value(&q, "force"))
            .await
            .map(|_| StatusCode::OK.into_response())
            .map_err(Into::into),
        (&Method::POST, Some((name, "set"))) => {
            let name = name.to_string();
            match axum::body::to_bytes(req.into_body(), crate::MAX_BODY).await {
                Err(e) => Err(ApiError::bad_request(e.to_string())),
                Ok(body) => match set_args(&body) {
                    Err(e) => Err(e),
                    Ok(args) => b.plugin_set(name, args).await.map(|_| StatusCode::NO_CONTENT.into_response()).map_err(Into::into),
                },
            }
        }
        (&Method::POST, Some((name, "push" | "upgrade"))) => {
            // not served yet: an unknown plugin answers as routes::unserved (404,
            // Moby's first check), a known one 501
            let mut r = match b.plugin_inspect(name.to_string()).await {
                Err(e) if e.kind == bus_schema::ErrorKind::NotFound => return unserved::fallback(req).await,
                Err(e) => ApiError::from(e).into_response(),
                Ok(_) => ApiError::new(StatusCode::NOT_IMPLEMENTED, "pushing and upgrading plugins is not supported by this engine yet").into_response(),
            };
            r.extensions_mut().insert(Fallback(Some(Answer::PluginNotFound)));
            return r;
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
}
