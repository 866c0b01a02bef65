//! The one HTTP error type. Every failure becomes `{"error": {"code", "message"}}` with the
//! status API.md gives; internal errors are logged with their cause and shown generically.

use crate::broker::publisher::PublishError;
use crate::domain::{RejectCode, Rejection};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong types, unknown fields, bad parameters.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    /// No such resource — or one the caller may not know exists.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The state machine (or an early role check) refused the change.
    #[error("{}", .0.message)]
    Rejected(Rejection, Option<Uuid>),
    /// A request conflicting with stored state outside the state machine.
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("request body too large")]
    PayloadTooLarge,
    /// The route exists but not for this method (axum adds the `Allow` header).
    #[error("this method is not allowed here; see the Allow header")]
    MethodNotAllowed,
    /// Over the caller's rate limit; retry after the duration.
    #[error("rate limited: retry in {}s", .0.as_secs_f64().ceil())]
    RateLimited(std::time::Duration),
    /// Database or broker down: nothing was accepted.
    #[error("{0}")]
    Unavailable(String),
    /// Admission control refused the request: nothing was accepted; retry after
    /// `Retry-After`.
    #[error("{0}")]
    Overloaded(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Rejected(r, _) => (
                StatusCode::from_u16(r.code.http_status()).expect("valid status"),
                r.code.as_str(),
            ),
            ApiError::Conflict(code, _) => (StatusCode::CONFLICT, code),
            ApiError::Unprocessable(code, _) => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn forbidden(code: RejectCode, message: impl Into<String>) -> Self {
        ApiError::Rejected(Rejection::new(code, message), None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error".to_owned()
            }
            ApiError::Unavailable(why) => {
                tracing::warn!(%why, "answering 503");
                "a dependency is unavailable; nothing was accepted, retry later".to_owned()
            }
            ApiError::Overloaded(why) => {
                format!(
                    "the server is at capacity ({why}); nothing was accepted, retry after Retry-After"
                )
            }
            other => other.to_string(),
        };
        let mut body = json!({ "error": { "code": code, "message": message } });
        if let ApiError::Rejected(_, Some(job_id)) = &self {
            body["error"]["job_id"] = json!(job_id);
        }
        let mut response = (status, Json(body)).into_response();
        match self {
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(wait) => {
                let secs = (wait.as_secs_f64().ceil() as u64).max(1);
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        unavailable_if_transient(&e)
            .unwrap_or_else(|| ApiError::Internal(anyhow::Error::new(e).context("database")))
    }
}

/// A database error shared by several requests (a failed group insert answers each of
/// its submissions with it): the same answer as an error of one's own.
impl From<std::sync::Arc<sqlx::Error>> for ApiError {
    fn from(e: std::sync::Arc<sqlx::Error>) -> Self {
        match std::sync::Arc::try_unwrap(e) {
            Ok(own) => own.into(),
            Err(shared) => unavailable_if_transient(&shared)
                .unwrap_or_else(|| ApiError::Internal(anyhow::anyhow!("database: {shared}"))),
        }
    }
}

/// A database failure worth retrying ([`crate::store::is_transient`]) is `503 unavailable`.
fn unavailable_if_transient(e: &sqlx::Error) -> Option<ApiError> {
    crate::store::is_transient(e).then(|| ApiError::Unavailable(format!("database: {e}")))
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}
