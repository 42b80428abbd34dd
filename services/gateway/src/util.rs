//! Helpers every route module uses: Docker's query conventions, filters, registry
//! auth headers, and bodies streamed from and to the bus.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bus_schema::{images::JsonMessage, images::RegistryAuth, stream::ByteChunk, BusError, BusStream};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};

use crate::error::ApiError;

/// Docker's IdResponse, `{"Id": "..."}` (exec create, commit): bollard's model
/// serializes its field as `id`, which strict clients (docker-py) do not read.
pub fn id_json(r: &bus_schema::docker::IdResponse) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "Id": r.id }))
}

/// A required JSON request body, as Moby 20.10's network, volume, exec and swarm routes
/// read theirs (`json.NewDecoder(r.Body).Decode`, `io.EOF` as InvalidParameter): no
/// value is a 400 "got EOF while reading request body", a body that does not decode a
/// 400 with Go's message; the first value is read and what follows ignored, `null`
/// is the zero value (see [`crate::gojson::decode_first`]).
pub fn json_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    match crate::gojson::decode_first(bytes) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(ApiError::bad_request("got EOF while reading request body")),
        Err(m) => Err(ApiError::bad_request(m)),
    }
}

/// A container config body, as Moby 20.10's container create and update read theirs:
/// the decoder's error is returned as is, a 500 (`EOF` when there is no value). With
/// `empty_ok` (commit) no value is `None`.
pub fn config_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8], empty_ok: bool) -> Result<Option<T>, ApiError> {
    match crate::gojson::decode_first(bytes) {
        Ok(None) if empty_ok => Ok(None),
        Ok(None) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "EOF")),
        Ok(v) => Ok(v),
        Err(m) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)),
    }
}

/// Query parameters, one value per key: the FIRST, as Go's `r.Form.Get` (docker-py
/// repeats keys: `dockerfile=<name>&dockerfile=<text>`). Read them with [`Params`].
pub type Query = HashMap<String, String>;

/// Every value of every query parameter, in order (`r.Form[k]`: `t`, `changes`,
/// `extrahosts`, `type` repeat).
pub type QueryAll = HashMap<String, Vec<String>>;

/// The query string decoded once, as dockerd's `r.ParseForm` sees it: `first` per
/// key (`r.Form.Get`) and `all` values (`r.Form[k]`). The only way routes read a
/// query: axum's `Query<HashMap>` keeps the LAST of repeated keys.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pub first: Query,
    pub all: QueryAll,
}

impl Params {
    pub fn parse(raw: &str) -> Params {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            p.all.entry(k.to_string()).or_default().push(v.to_string());
            p.first.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        p
    }

    /// All values of `k` (none: empty).
    pub fn values(&self, k: &str) -> &[String] {
        self.all.get(k).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Params::parse(parts.uri.query().unwrap_or("")))
    }
}

/// The first value of each query parameter (see [`Params`]).
pub struct FirstQuery(pub Query);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for FirstQuery {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(FirstQuery(Params::parse(parts.uri.query().unwrap_or("")).first))
    }
}

/// Docker's `httputils.BoolValue`: empty, 0, false, no, off, none are false.
pub fn bool_value(q: &Query, k: &str) -> bool {
    match q.get(k) {
        None => false,
        Some(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off" | "none"
        ),
    }
}

/// Docker's `httputils.BoolValueOrDefault`.
pub fn bool_or(q: &Query, k: &str, default: bool) -> bool {
    if q.get(k).is_none_or(|v| v.is_empty()) {
        default
    } else {
        bool_value(q, k)
    }
}

pub fn int_value(q: &Query, k: &str) -> Result<Option<i64>, ApiError> {
    match q.get(k) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v}"))),
    }
}

/// `filters` as the CLI sends it: `{"name":{"x":true}}` (current) or `{"name":["x"]}` (old).
pub fn filters(q: &Query) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let Some(raw) = q.get("filters").filter(|s| !s.is_empty()) else {
        return Ok(HashMap::new());
    };
    parse_filters(raw)
}

pub fn parse_filters(raw: &str) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("invalid filter: not an object"))?;
    let mut out = HashMap::new();
    for (k, v) in obj {
        let vals: Vec<String> = match v {
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(_, b)| b.as_bool().unwrap_or(true))
                .map(|(s, _)| s.clone())
                .collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => return Err(ApiError::bad_request(format!("invalid filter for {k}"))),
        };
        out.insert(k.clone(), vals);
    }
    Ok(out)
}

/// Decode `X-Registry-Auth` (base64url JSON of Docker's AuthConfig); absent or empty is None.
pub fn registry_auth(h: &HeaderMap) -> Option<RegistryAuth> {
    let v = h.get("X-Registry-Auth")?.to_str().ok()?.trim();
    if v.is_empty() {
        return None;
    }
    decode_auth(v)
}

pub fn decode_auth(v: &str) -> Option<RegistryAuth> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(v)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.trim_end_matches('='))
        })
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(v))
        .ok()?;
    auth_from_json(&bytes)
}

/// Docker's AuthConfig JSON (lowercase keys) to the bus type.
pub fn auth_from_json(bytes: &[u8]) -> Option<RegistryAuth> {
    let j: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let s = |k: &str| {
        j.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let a = RegistryAuth {
        username: s("username"),
        password: s("password"),
        server_address: s("serveraddress"),
        identity_token: s("identitytoken"),
        registry_token: s("registrytoken"),
    };
    if a == RegistryAuth::default() {
        None
    } else {
        Some(a)
    }
}

/// Stream Docker JSON messages as the response body (one JSON object per line).
/// A stream error becomes a final `{"errorDetail":..., "error":...}` message, as
/// Docker reports errors after the 200 status has been sent. Dropping the stream (the
/// client went away) cancels it at the service.
pub fn json_stream(mut rd: BusStream<JsonMessage>) -> Response {
    let s = async_stream(move |tx| async move {
        while let Some(item) = rd.next().await {
            let msg = match item {
                Ok(m) => m,
                Err(e) => JsonMessage::error(e.message),
            };
            let mut line = serde_json::to_vec(&msg).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Ok(bytes::Bytes::from(line))).await.is_err() {
                return;
            }
        }
    });
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(s),
    )
        .into_response()
}

/// Stream raw bytes (tar archives) as the response body.
pub fn bytes_stream(mut rd: BusStream<ByteChunk>, content_type: &'static str) -> Response {
    let s = async_stream(move |tx| async move {
        while let Some(item) = rd.next().await {
            match item {
                Ok(c) => {
                    if tx.send(Ok(bytes::Bytes::from(c.0))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Headers are gone: all we can do is cut the body short.
                    let _ = tx.send(Err(std::io::Error::other(e.message))).await;
                    return;
                }
            }
        }
    });
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, content_type)],
        Body::from_stream(s),
    )
        .into_response()
}

/// A request body as a bus input stream, in chunks under the bus limit; a body that
/// fails ends the stream with an error.
pub fn body_input(body: Body) -> BusStream<ByteChunk> {
    let max = bus_schema::stream::MAX_CHUNK;
    Box::pin(body.into_data_stream().flat_map(move |chunk| {
        let items: Vec<Result<ByteChunk, BusError>> = match chunk {
            Ok(b) => b.chunks(max).map(|part| Ok(ByteChunk(part.to_vec()))).collect(),
            Err(e) => vec![Err(BusError::invalid(format!("reading request body: {e}")))],
        };
        futures_util::stream::iter(items)
    }))
}

/// A request body as a bus input stream ([`body_input`]'s chunks), fed by a task;
/// when the service stops reading before the body ends (it answered an error
/// first), the task reads the rest of the body and drops it, up to 256 KiB, as Go's
/// server does for a handler that did not read it: the client's write then succeeds
/// and it reads the answer instead of a broken pipe. The task ends with the body.
pub fn draining_input(body: Body) -> (BusStream<ByteChunk>, tokio::task::JoinHandle<()>) {
    let (tx, input) = berth_bus::channel(16);
    let task = tokio::spawn(async move {
        let mut body = body_input(body);
        let mut tx = Some(tx);
        let mut dropped = 0usize;
        while let Some(item) = body.next().await {
            let c = match item {
                Ok(c) => c,
                Err(e) => {
                    if let Some(tx) = tx.take() {
                        tx.fail(e).await;
                    }
                    return;
                }
            };
            match tx.as_ref() {
                Some(t) => {
                    if t.send(c).await.is_err() {
                        tx = None;
                    }
                }
                None => {
                    dropped += c.0.len();
                    if dropped > 256 << 10 {
                        return;
                    }
                }
            }
        }
    });
    (input, task)
}

/// A body stream fed by a task; the task is dropped as soon as the client goes away
/// (it closes the connection, or hyper drops the body), even while it waits for
/// something to send: a `docker run -d` leaves its `wait` behind that way, and the bus
/// stream under it must end then. Call it while serving the request.
pub fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let dropped = tx.clone();
    let client = crate::listen::ClientConn::current();
    let task = f(tx);
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = dropped.closed() => {}
            _ = client.gone() => {}
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moby 20.10's answers to the bodies of network, volume, exec and swarm routes
    /// (recorded side by side: notes/contract-moby-json-bodies.txt).
    #[test]
    fn required_bodies_answer_as_moby() {
        let msg = |b: &str| json_body::<bus_schema::docker::NetworkCreateRequest>(b.as_bytes()).map_err(|e| (e.status.as_u16(), e.message));
        for empty in ["", " ", "\n"] {
            assert_eq!(msg(empty).unwrap_err(), (400, "got EOF while reading request body".to_string()));
        }
        assert_eq!(msg("{invalid json").unwrap_err(), (400, "invalid character 'i' looking for beginning of object key string".to_string()));
        assert_eq!(msg(r#"{"Name":"x","#).unwrap_err(), (400, "unexpected EOF".to_string()));
        assert_eq!(msg("[]").unwrap_err().0, 400);
        assert_eq!(msg(r#"{"Name":1}"#).unwrap_err().0, 400);
        // the value decoded, the rest unread; null is the zero value
        assert_eq!(msg(r#"{"name":"web"}x"#).unwrap().name, "web");
        assert_eq!(msg("null").unwrap().name, "");
    }

    /// Container create/update return the decoder's error as is (a 500, "EOF");
    /// commit takes no body.
    #[test]
    fn config_bodies_answer_as_moby() {
        type C = bus_schema::docker::ContainerUpdateBody;
        let e = config_body::<C>(b"", false).unwrap_err();
        assert_eq!((e.status.as_u16(), e.message.as_str()), (500, "EOF"));
        let e = config_body::<C>(b"{invalid json", false).unwrap_err();
        assert_eq!((e.status.as_u16(), e.message.as_str()), (500, "invalid character 'i' looking for beginning of object key string"));
        assert!(config_body::<C>(b" ", true).unwrap().is_none());
        assert!(config_body::<Option<C>>(b"null", true).unwrap().flatten().is_none());
        assert!(config_body::<Option<C>>(b"{}", true).unwrap().flatten().is_some());
    }

    /// Go's `url.ParseQuery`: `+` and `%xx` decoded, a key without `=` is empty,
    /// `Get` is the first value and `Form[k]` all of them in order.
    #[test]
    fn params_keep_the_first_value_and_all_values() {
        let p = Params::parse("dockerfile=.dockerfile.ab&dockerfile=FROM+busybox%0ACOPY+.+%2Fsrc&t=a%3A1&t=b&q&all=0&all=1");
        assert_eq!(p.first["dockerfile"], ".dockerfile.ab");
        assert_eq!(p.values("dockerfile")[1], "FROM busybox\nCOPY . /src");
        assert_eq!(p.values("t"), ["a:1", "b"]);
        assert_eq!(p.first["q"], "");
        assert!(!bool_value(&p.first, "all"));
        assert!(p.values("missing").is_empty());
        assert!(Params::parse("").first.is_empty());
    }

    /// Through a router, as every route reads its query: the first of repeated keys
    /// (axum's `Query<HashMap>` kept the last: `?all=0&all=1` listed all containers).
    #[tokio::test]
    async fn routes_read_the_first_value() {
        use tower::ServiceExt;
        let app = axum::Router::new().route(
            "/q",
            axum::routing::get(|FirstQuery(q): FirstQuery| async move { q.get("all").cloned().unwrap_or_default() }),
        );
        let req = http::Request::get("/q?all=0&all=1").body(Body::empty()).unwrap();
        let res = app.oneshot(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"0");
    }

    /// No route reads the query another way (axum's Query, a hand split of the raw string).
    #[test]
    fn every_route_reads_its_query_through_params() {
        for (name, src) in [
            ("build", include_str!("routes/build.rs")),
            ("containers", include_str!("routes/containers.rs")),
            ("events", include_str!("routes/events.rs")),
            ("images", include_str!("routes/images.rs")),
            ("mod", include_str!("routes/mod.rs")),
            ("networks", include_str!("routes/networks.rs")),
            ("system", include_str!("routes/system.rs")),
            ("unserved", include_str!("routes/unserved.rs")),
            ("volumes", include_str!("routes/volumes.rs")),
        ] {
            for bad in ["extract::Query", "Query<", "RawQuery", "split('&')"] {
                assert!(!src.contains(bad), "routes/{name}.rs reads its query with {bad}: use util::Params / FirstQuery");
            }
        }
    }

    /// A client gone (the body dropped) ends the feeding task even while it waits.
    #[tokio::test]
    async fn async_stream_task_ends_with_its_client() {
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let body = async_stream(move |_tx| async move {
            let _held = held_tx; // dropped when the task is
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        drop(body);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), held_rx).await;
        assert!(matches!(ended, Ok(Err(_))), "the task outlived its client");
    }

    /// A task that ends on its own ends the body.
    #[tokio::test]
    async fn async_stream_ends_with_its_task() {
        let body = async_stream(|tx| async move {
            let _ = tx.send(Ok(bytes::Bytes::from_static(b"x"))).await;
        });
        let items: Vec<_> = body.collect().await;
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn docker_bools() {
        let q: Query = [("a", "1"), ("b", "false"), ("c", "True"), ("d", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(bool_value(&q, "a"));
        assert!(!bool_value(&q, "b"));
        assert!(bool_value(&q, "c"));
        assert!(!bool_value(&q, "d"));
        assert!(!bool_value(&q, "missing"));
        assert!(bool_or(&q, "missing", true));
    }

    #[test]
    fn both_filter_forms() {
        let f = parse_filters(r#"{"name":{"web":true},"label":["a=b"]}"#).unwrap();
        assert_eq!(f["name"], vec!["web"]);
        assert_eq!(f["label"], vec!["a=b"]);
        assert!(parse_filters("nope").is_err());
    }

    #[test]
    fn registry_auth_header() {
        use base64::Engine;
        let raw = r#"{"username":"u","password":"p","serveraddress":"127.0.0.1:5000"}"#;
        let enc = base64::engine::general_purpose::URL_SAFE.encode(raw);
        let a = decode_auth(&enc).unwrap();
        assert_eq!(a.username.as_deref(), Some("u"));
        assert_eq!(a.server_address.as_deref(), Some("127.0.0.1:5000"));
        assert!(decode_auth(&base64::engine::general_purpose::URL_SAFE.encode("{}")).is_none());
    }
}
