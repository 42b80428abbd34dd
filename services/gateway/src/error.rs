//! Errors as the Docker API returns them: `{"message": "..."}` with a status code.

use axum::response::{IntoResponse, Response};
use bus_schema::{BusError, ErrorKind};
use http::StatusCode;

/// The one mapping from error kinds to HTTP status (moby's `httpstatus.FromError`).
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotModified => StatusCode::NOT_MODIFIED,
        ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout | ErrorKind::Cancelled | ErrorKind::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> ApiError {
        ApiError {
            status: status_for(e.kind),
            message: e.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NOT_MODIFIED {
            // 304 carries no body.
            return self.status.into_response();
        }
        let body = serde_json::json!({ "message": self.message }).to_string();
        (
            self.status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn kinds_map_to_dockers_codes() {
        assert_eq!(status_for(ErrorKind::NotFound), 404);
        assert_eq!(status_for(ErrorKind::Conflict), 409);
        assert_eq!(status_for(ErrorKind::InvalidArgument), 400);
        assert_eq!(status_for(ErrorKind::Unauthorized), 401);
        assert_eq!(status_for(ErrorKind::NotModified), 304);
        assert_eq!(status_for(ErrorKind::Unavailable), 503);
        assert_eq!(status_for(ErrorKind::Internal), 500);
    }
}
