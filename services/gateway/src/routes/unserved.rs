//! Routes of Docker's API that berth does not serve, answered as Moby answers them
//! with the feature off (swarm inactive), never with a bare 404 "page not found"
//! for a route Docker has. This is the app's fallback: a route an area serves always
//! wins, so the area that starts serving one of these (swarm) only adds its router,
//! and the entry here goes dead (remove it then; `docs/api.md`'s test reports the
//! route as served either way).

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};

use crate::error::ApiError;

/// Moby's answer to the swarm endpoints on a node that is not a manager.
pub const NOT_A_MANAGER: &str =
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
/// Moby's answer to `POST /swarm/leave` on a node outside any swarm.
pub const NOT_IN_SWARM: &str = "This node is not part of a swarm";
/// What berth answers to `swarm init` and `swarm join` until it has swarm mode.
pub const NO_SWARM_MODE: &str = "swarm mode is not available on this berth node: it cannot init or join a swarm";

/// How an unserved route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 503, [`NOT_A_MANAGER`].
    NotAManager,
    /// 503, [`NOT_IN_SWARM`].
    NotInSwarm,
    /// 503, [`NO_SWARM_MODE`].
    NoSwarmMode,
    /// Service and task logs: Moby checks the streams before the swarm (500 "Bad
    /// parameters" without stdout/stderr), then answers as [`Answer::NotAManager`].
    SwarmLogs,
    /// No plugin installed: an empty list.
    NoPlugins,
    /// No plugin installed: 404 `plugin "<name>" not found`.
    PluginNotFound,
    /// Installing or making plugins: not available yet (501).
    PluginsUnavailable,
    /// BuildKit's session: Moby's 400 without an upgrade; berth has no BuildKit.
    Session,
}

/// Docker's routes berth does not serve, with their answer. Path segments in braces
/// match any one segment.
pub const UNSERVED: &[(&str, &str, Answer)] = &[
    ("GET", "/swarm", Answer::NotAManager),
    ("POST", "/swarm/init", Answer::NoSwarmMode),
    ("POST", "/swarm/join", Answer::NoSwarmMode),
    ("POST", "/swarm/leave", Answer::NotInSwarm),
    ("POST", "/swarm/update", Answer::NotAManager),
    ("GET", "/swarm/unlockkey", Answer::NotAManager),
    ("POST", "/swarm/unlock", Answer::NotAManager),
    ("GET", "/nodes", Answer::NotAManager),
    ("GET", "/nodes/{id}", Answer::NotAManager),
    ("DELETE", "/nodes/{id}", Answer::NotAManager),
    ("POST", "/nodes/{id}/update", Answer::NotAManager),
    ("GET", "/services", Answer::NotAManager),
    ("POST", "/services/create", Answer::NotAManager),
    ("GET", "/services/{id}", Answer::NotAManager),
    ("DELETE", "/services/{id}", Answer::NotAManager),
    ("POST", "/services/{id}/update", Answer::NotAManager),
    ("GET", "/services/{id}/logs", Answer::SwarmLogs),
    ("GET", "/tasks", Answer::NotAManager),
    ("GET", "/tasks/{id}", Answer::NotAManager),
    ("GET", "/tasks/{id}/logs", Answer::SwarmLogs),
    ("GET", "/secrets", Answer::NotAManager),
    ("POST", "/secrets/create", Answer::NotAManager),
    ("GET", "/secrets/{id}", Answer::NotAManager),
    ("DELETE", "/secrets/{id}", Answer::NotAManager),
    ("POST", "/secrets/{id}/update", Answer::NotAManager),
    ("GET", "/configs", Answer::NotAManager),
    ("POST", "/configs/create", Answer::NotAManager),
    ("GET", "/configs/{id}", Answer::NotAManager),
    ("DELETE", "/configs/{id}", Answer::NotAManager),
    ("POST", "/configs/{id}/update", Answer::NotAManager),
    ("GET", "/plugins", Answer::NoPlugins),
    ("GET", "/plugins/privileges", Answer::NoPlugins),
    ("POST", "/plugins/pull", Answer::PluginsUnavailable),
    ("POST", "/plugins/create", Answer::PluginsUnavailable),
    ("GET", "/plugins/{*name}/json", Answer::PluginNotFound),
    ("DELETE", "/plugins/{*name}", Answer::PluginNotFound),
    ("POST", "/plugins/{*name}/enable", Answer::PluginNotFound),
    ("POST", "/plugins/{*name}/disable", Answer::PluginNotFound),
    ("POST", "/plugins/{*name}/upgrade", Answer::PluginNotFound),
    ("POST", "/plugins/{*name}/push", Answer::PluginNotFound),
    ("POST", "/plugins/{*name}/set", Answer::PluginNotFound),
    ("POST", "/session", Answer::Session),
];

/// Does `path` match `pattern`? `{x}` is one non-empty segment, `{*x}` one or more
/// (a plugin's name, `vieux/sshfs:latest`).
pub fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    fn m(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(a), Some(_)) if a.starts_with("{*") => (1..=s.len()).any(|n| s[..n].iter().all(|x| !x.is_empty()) && m(&p[1..], &s[n..])),
            (Some(a), Some(b)) if a.starts_with('{') => !b.is_empty() && m(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
            _ => false,
        }
    }
    m(&p, &s)
}

/// The unserved route `method path` is, if any.
pub fn lookup(method: &Method, path: &str) -> Option<Answer> {
    UNSERVED.iter().find(|(m, p, _)| method.as_str() == *m && matches(p, path)).map(|(_, _, a)| *a)
}

/// Marks a response the fallback gave (a response extension: clients never see
/// it), with the unserved route's answer if the route is Docker's; the API table
/// test tells served routes from the others by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback(pub Option<Answer>);

/// The fallback: Docker's answer for an unserved route, else Moby's 404 (which it
/// also gives for a known path with another method).
pub async fn fallback(req: Request) -> Response {
    let path = req.uri().path();
    let answer = lookup(req.method(), path);
    let q = req.uri().query().unwrap_or("");
    let mut res = match answer {
        Some(Answer::NoPlugins) => (StatusCode::OK, axum::Json(serde_json::json!([]))).into_response(),
        Some(Answer::PluginNotFound) => {
            let name = plugin_name(req.method(), path);
            ApiError::not_found(format!("plugin \"{name}\" not found")).into_response()
        }
        Some(Answer::Session) if !req.headers().contains_key(http::header::UPGRADE) => {
            ApiError::bad_request("no upgrade proto in request").into_response()
        }
        Some(Answer::Session) => {
            ApiError::bad_request("BuildKit is not supported by this engine: use the classic builder (DOCKER_BUILDKIT=0)").into_response()
        }
        Some(Answer::PluginsUnavailable) => {
            ApiError::new(StatusCode::NOT_IMPLEMENTED, "installing plugins is not supported by this engine yet").into_response()
        }
        Some(a) => answer_for(a, q).into_response(),
        None => ApiError::not_found("page not found").into_response(),
    };
    res.extensions_mut().insert(Fallback(answer));
    res
}

/// The plugin name in `/plugins/<name>[/op]` (it may hold slashes).
fn plugin_name(method: &Method, path: &str) -> String {
    let rest = path.trim_start_matches("/plugins/");
    if *method == Method::DELETE {
        return rest.to_string();
    }
    rest.rsplit_once('/').map(|(n, _)| n).unwrap_or(rest).to_string()
}

fn answer_for(a: Answer, query: &str) -> ApiError {
    let unavailable = |m: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m);
    match a {
        Answer::NotAManager => unavailable(NOT_A_MANAGER),
        Answer::NotInSwarm => unavailable(NOT_IN_SWARM),
        Answer::NoSwarmMode => unavailable(NO_SWARM_MODE),
        Answer::NoPlugins | Answer::PluginNotFound | Answer::PluginsUnavailable | Answer::Session => {
            ApiError::not_found("page not found")
        }
        Answer::SwarmLogs => {
            let q = crate::util::Params::parse(query).first;
            if !crate::util::bool_value(&q, "stdout") && !crate::util::bool_value(&q, "stderr") {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Bad parameters: you must choose at least one stream")
            } else {
                unavailable(NOT_A_MANAGER)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("/nodes/{id}", "/nodes/abc"));
        assert!(matches("/nodes/{id}", "/nodes/abc/"));
        assert!(!matches("/nodes/{id}", "/nodes/"));
        assert!(!matches("/nodes/{id}", "/nodes/a/b"));
        assert!(matches("/swarm", "/swarm"));
        assert!(!matches("/swarm", "/swarm/init"));
        assert_eq!(lookup(&Method::POST, "/swarm/leave"), Some(Answer::NotInSwarm));
        assert_eq!(lookup(&Method::GET, "/swarm/leave"), None);
        assert_eq!(lookup(&Method::GET, "/services/x/logs"), Some(Answer::SwarmLogs));
        assert_eq!(lookup(&Method::GET, "/plugins/vieux/sshfs:latest/json"), Some(Answer::PluginNotFound));
        assert_eq!(lookup(&Method::DELETE, "/plugins/a/b"), Some(Answer::PluginNotFound));
        assert_eq!(lookup(&Method::GET, "/plugins/json"), None);
        assert_eq!(plugin_name(&Method::GET, "/plugins/vieux/sshfs:latest/json"), "vieux/sshfs:latest");
        assert_eq!(plugin_name(&Method::DELETE, "/plugins/vieux/sshfs"), "vieux/sshfs");
    }

    #[test]
    fn answers_as_moby() {
        let e = answer_for(Answer::NotAManager, "");
        assert_eq!((e.status, e.message.as_str()), (StatusCode::SERVICE_UNAVAILABLE, NOT_A_MANAGER));
        let e = answer_for(Answer::SwarmLogs, "follow=1");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let e = answer_for(Answer::SwarmLogs, "stdout=1");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
