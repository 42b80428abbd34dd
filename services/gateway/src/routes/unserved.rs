//! Routes of Docker's API that berth does not serve, answered as Moby answers them
//! with the feature off (no BuildKit), never with a bare 404 "page not
//! found" for a route Docker has. This is the app's fallback: a route an area serves
//! always wins, so the area that starts serving one of these only adds its router,
//! and the entry here goes dead (remove it then; `docs/api.md`'s test reports the
//! route as served either way). The swarm routes are served (routes::swarm): the
//! swarm service answers Moby's 503s when the node is in no swarm.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::Method;

use crate::error::ApiError;

/// How an unserved route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// BuildKit's session: Moby's 400 without an upgrade; berth has no BuildKit.
    Session,
}

/// Docker's routes berth does not serve, with their answer. Path segments in braces
/// match any one segment.
pub const UNSERVED: &[(&str, &str, Answer)] = &[
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
    let mut res = match answer {
        Some(Answer::Session) if !req.headers().contains_key(http::header::UPGRADE) => {
            ApiError::bad_request("no upgrade proto in request").into_response()
        }
        Some(Answer::Session) => {
            ApiError::bad_request("BuildKit is not supported by this engine: use the classic builder (DOCKER_BUILDKIT=0)").into_response()
        }
        None => ApiError::not_found("page not found").into_response(),
    };
    res.extensions_mut().insert(Fallback(answer));
    res
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
        assert!(matches("/session", "/session"));
        assert!(!matches("/session", "/session/x"));
        assert_eq!(lookup(&Method::POST, "/session"), Some(Answer::Session));
        assert_eq!(lookup(&Method::GET, "/session"), None);
        assert!(matches("/plugins/{*name}/push", "/plugins/vieux/sshfs:latest/push"));
        assert!(!matches("/plugins/{*name}/push", "/plugins/push"));
        assert_eq!(lookup(&Method::GET, "/plugins/vieux/sshfs/json"), None);
    }
}
