//! API versioning: `/v1.NN/...` and unversioned paths, the supported range, and the
//! headers Docker sends on every response.

use axum::{extract::Request, middleware::Next, response::Response};
use http::{HeaderValue, StatusCode};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u16, pub u16);

impl ApiVersion {
    pub fn parse(s: &str) -> Option<ApiVersion> {
        let (a, b) = s.split_once('.')?;
        Some(ApiVersion(a.parse().ok()?, b.parse().ok()?))
    }
    pub fn max() -> ApiVersion {
        ApiVersion::parse(berth_config::API_VERSION).unwrap()
    }
    pub fn min() -> ApiVersion {
        ApiVersion::parse(berth_config::MIN_API_VERSION).unwrap()
    }
    /// Version-dependent behaviour lives in the routers only, as in moby.
    pub fn less_than(self, other: &str) -> bool {
        ApiVersion::parse(other).map(|o| self < o).unwrap_or(false)
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Split `/v1.45/containers/json` into (Some(1.45), "/containers/json").
pub fn split_version(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest.find('/').unwrap_or(rest.len());
        let v = &rest[..end];
        if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return (Some(v), &rest[end..]);
        }
    }
    (None, path)
}

/// Rewrite the URI before routing: strip the version prefix and record the version.
pub fn rewrite(mut req: Request) -> Result<Request, ApiError> {
    let path = req.uri().path().to_string();
    let (v, rest) = split_version(&path);
    let version = match v {
        None => ApiVersion::max(),
        Some(v) => {
            let parsed = ApiVersion::parse(v)
                .ok_or_else(|| ApiError::bad_request(format!("invalid API version: {v}")))?;
            if parsed < ApiVersion::min() {
                return Err(ApiError::bad_request(format!(
                    "client version {v} is too old. Minimum supported API version is {}, please upgrade your client to a newer version",
                    berth_config::MIN_API_VERSION
                )));
            }
            if parsed > ApiVersion::max() {
                return Err(ApiError::bad_request(format!(
                    "client version {v} is too new. Maximum supported API version is {}",
                    berth_config::API_VERSION
                )));
            }
            parsed
        }
    };
    if v.is_some() {
        let new_path = if rest.is_empty() { "/" } else { rest };
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path.to_string(),
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| ApiError::bad_request("invalid path"))?,
        );
        *req.uri_mut() =
            http::Uri::from_parts(parts).map_err(|_| ApiError::bad_request("invalid path"))?;
    }
    req.extensions_mut().insert(version);
    Ok(req)
}

/// Headers on every response, as dockerd sends them.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        "Api-Version",
        HeaderValue::from_static(berth_config::API_VERSION),
    );
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert(http::header::SERVER, server_header());
    res
}

/// `Server: berth/<version> (linux)`, as dockerd's `Docker/<version> (<os>)`.
pub fn server_header() -> HeaderValue {
    HeaderValue::from_str(&format!("berth/{} (linux)", berth_config::VERSION)).unwrap_or(HeaderValue::from_static("berth"))
}

pub fn not_found_status() -> StatusCode {
    StatusCode::NOT_FOUND
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn splits_versions() {
        assert_eq!(
            split_version("/v1.45/containers/json"),
            (Some("1.45"), "/containers/json")
        );
        assert_eq!(split_version("/_ping"), (None, "/_ping"));
        assert_eq!(split_version("/v1.24"), (Some("1.24"), ""));
        assert_eq!(split_version("/volumes/x"), (None, "/volumes/x"));
        assert!(ApiVersion::parse("1.9") < ApiVersion::parse("1.24"));
        assert!(ApiVersion::max() >= ApiVersion(1, 45));
    }
}
