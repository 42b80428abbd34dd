//! `/_ping`, `/version`, `/info`.

use std::future::Future;
use std::sync::Arc;

use axum::{extract::State, response::IntoResponse, routing::get, Json, Router};
use bus_schema::{docker, system::InfoPart, BusError, Service};
use http::{HeaderMap, HeaderValue};

use crate::{error::ApiResult, host::HostFacts};

pub trait Backend: Send + Sync + 'static {
    /// Each backend service's part of `/info`, or why it could not answer.
    fn info_parts(&self)
        -> impl Future<Output = Vec<Result<InfoPart, (Service, BusError)>>> + Send;
    fn host(&self) -> &HostFacts;
    /// `/_ping`'s `Swarm` header: the node's swarm state (`inactive` when the swarm
    /// service does not answer at once).
    fn swarm_status(&self) -> impl Future<Output = String> + Send;
}

pub fn router<B: Backend>(b: Arc<B>) -> Router {
    Router::new()
        .route("/_ping", get(ping::<B>).head(ping::<B>))
        .route("/version", get(version::<B>))
        .route("/info", get(info::<B>))
        .with_state(b)
}

async fn ping<B: Backend>(State(b): State<Arc<B>>) -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    let swarm = HeaderValue::from_str(&b.swarm_status().await).unwrap_or(HeaderValue::from_static("inactive"));
    h.insert("Swarm", swarm);
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    (h, "OK")
}

async fn version<B: Backend>(State(b): State<Arc<B>>) -> Json<docker::SystemVersion> {
    Json(b.host().version())
}

async fn info<B: Backend>(
    State(b): State<Arc<B>>,
    axum::Extension(v): axum::Extension<crate::version::ApiVersion>,
) -> ApiResult<Json<serde_json::Value>> {
    let mut info =
        serde_json::to_value(b.host().info()).map_err(|e| BusError::internal(e.to_string()))?;
    let mut warnings: Vec<serde_json::Value> = Vec::new();
    for part in b.info_parts().await {
        match part {
            Ok(p) => {
                if let Ok(v) = serde_json::to_value(&p.info) {
                    merge(&mut info, v);
                }
            }
            Err((svc, e)) => {
                warnings.push(format!("WARNING: the {svc} service did not answer: {e}").into())
            }
        }
    }
    if !warnings.is_empty() {
        let w = info
            .as_object_mut()
            .unwrap()
            .entry("Warnings")
            .or_insert_with(|| serde_json::json!([]));
        if w.is_null() {
            *w = serde_json::json!([]);
        }
        if let Some(a) = w.as_array_mut() {
            a.extend(warnings);
        }
    }
    info_keys(&mut info, v);
    Ok(Json(info))
}

/// The keys of Moby's types.Info that berth has no value of its own for, as Moby
/// writes them when unset (API 1.41): commits of containerd/runc/init (berth runs
/// neither: empty), nil slices, and no `Warnings` list when there is none.
fn info_keys(info: &mut serde_json::Value, v: crate::version::ApiVersion) {
    use serde_json::{json, Value};
    let Some(o) = info.as_object_mut() else { return };
    let commit = json!({"ID": "", "Expected": ""});
    let mut keys = vec![
        ("BridgeNfIptables", json!(crate::host::bridge_nf("iptables"))),
        ("BridgeNfIp6tables", json!(crate::host::bridge_nf("ip6tables"))),
        ("ContainerdCommit", commit.clone()),
        ("RuncCommit", commit.clone()),
        ("InitCommit", commit),
        ("GenericResources", Value::Null),
        ("Warnings", Value::Null),
    ];
    if v.less_than("1.42") {
        // cgroup kernel memory accounting: berth sets no kmem limit
        keys.push(("KernelMemory", json!(false)));
        keys.push(("KernelMemoryTCP", json!(false)));
    }
    crate::goshape::fill(o, &keys);
    if o.get("Warnings").is_some_and(|w| w.as_array().is_some_and(|a| a.is_empty())) {
        o.insert("Warnings".into(), Value::Null);
    }
    if let Some(p) = o.get_mut("Plugins").and_then(Value::as_object_mut) {
        crate::goshape::fill(p, &[("Authorization", Value::Null)]);
    }
    if let Some(s) = o.get_mut("Swarm").and_then(Value::as_object_mut) {
        crate::goshape::fill(s, &[("RemoteManagers", Value::Null)]);
    }
    if v.less_than("1.44") {
        if let Some(r) = o.get_mut("RegistryConfig").and_then(Value::as_object_mut) {
            crate::goshape::fill(
                r,
                &[("AllowNondistributableArtifactsCIDRs", json!([])), ("AllowNondistributableArtifactsHostnames", json!([]))],
            );
        }
    }
}

/// Merge a service's part into the whole: objects merge, lists concatenate, and a
/// scalar from a service replaces the gateway's default.
pub fn merge(into: &mut serde_json::Value, part: serde_json::Value) {
    use serde_json::Value;
    match (into, part) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b),
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_parts() {
        let mut a = json!({"Containers": 0, "Plugins": {"Volume": ["local"]}, "Warnings": ["a"]});
        merge(
            &mut a,
            json!({"Containers": 3, "Plugins": {"Network": ["bridge"]}, "Warnings": ["b"]}),
        );
        assert_eq!(
            a,
            json!({"Containers": 3, "Plugins": {"Volume": ["local"], "Network": ["bridge"]}, "Warnings": ["a", "b"]})
        );
    }
}
