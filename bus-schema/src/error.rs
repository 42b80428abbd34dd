//! The one error model on the wire: a kind plus a message. The gateway maps kinds
//! to HTTP status codes in a single function (moby's `httpstatus.FromError`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// 404: no such container, image, network, volume...
    NotFound,
    /// 409: name in use, image in use, container running...
    Conflict,
    /// 400: bad parameter.
    InvalidArgument,
    /// 401: registry refused credentials.
    Unauthorized,
    /// 403: not allowed.
    Forbidden,
    /// 304: already started / already stopped.
    NotModified,
    /// 501: not implemented by this engine.
    NotImplemented,
    /// 503: a service is not there (no responders) or not ready.
    Unavailable,
    /// The bus request timed out.
    Timeout,
    /// The caller went away.
    Cancelled,
    /// 500: anything else.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct BusError {
    pub kind: ErrorKind,
    pub message: String,
}

impl BusError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BusError {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, m)
    }
    pub fn not_implemented(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotImplemented, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, m)
    }
    pub fn not_modified(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotModified, m)
    }
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }
    /// Prefix the message with context, keeping the kind.
    pub fn context(mut self, ctx: impl std::fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }
}

impl From<std::io::Error> for BusError {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::Conflict,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Forbidden,
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                ErrorKind::InvalidArgument
            }
            std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Internal,
        };
        BusError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip_error() {
        for k in [
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::InvalidArgument,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::NotModified,
            ErrorKind::NotImplemented,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Cancelled,
            ErrorKind::Internal,
        ] {
            crate::testutil::roundtrip(BusError::new(k, "boom"));
            crate::testutil::roundtrip::<crate::WireResult<u32>>(Err(BusError::new(k, "x")));
        }
        crate::testutil::roundtrip::<crate::WireResult<u32>>(Ok(7));
    }
}
