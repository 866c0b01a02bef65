//! What every documented operation shares in the OpenAPI document: the one error body,
//! a reusable response per error status (API.md's table), and the names of the two ways a
//! caller presents its token. The document itself is assembled in [`crate::app::openapi`].

// The response types below exist for their `ToResponse` derive: the document's reusable
// responses, each a reference to `ErrorBody`. Nothing constructs them.
#![allow(dead_code)]

use serde::Serialize;
use utoipa::{ToResponse, ToSchema};
use uuid::Uuid;

/// `Authorization: Bearer <JWT>` (HS256 with `JWT_SECRET`; claims `sub`, `role`, `exp`).
pub const BEARER: &str = "bearer";
/// `?access_token=<JWT>`: the SSE stream only, because EventSource cannot set headers.
pub const ACCESS_TOKEN: &str = "access_token";

/// Every error: `{"error": {"code", "message"}}` (see [`super::ApiError`], which renders it).
#[derive(Serialize, ToSchema)]
#[schema(description = "Every error: `{\"error\": {\"code\", \"message\"}}`.")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, e.g. `invalid_request`, `forbidden_role`, `not_found`,
    /// `invalid_transition`, `version_conflict`, `payment_required`, `rate_limited`.
    pub code: String,
    /// Human text; may change between versions.
    pub message: String,
    /// The job whose outcome this is (a rejection answered to `Prefer: wait`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
}

/// Malformed JSON, wrong types, unknown fields, bad parameters or headers, text with NUL
/// characters or over its bound (`invalid_request`). Nothing was written.
#[derive(ToResponse)]
pub struct BadRequest(ErrorBody);

/// Missing, expired or invalid token (`unauthorized`).
#[derive(ToResponse)]
pub struct Unauthorized(ErrorBody);

/// This role may never do this (`forbidden_role`).
#[derive(ToResponse)]
pub struct Forbidden(ErrorBody);

/// No such resource, or one the caller may not see (`not_found`).
#[derive(ToResponse)]
pub struct NotFound(ErrorBody);

/// The request conflicts with the resource's state (`invalid_transition`,
/// `version_conflict`, `below_reserved`, `not_dead`, `not_running`, ...).
#[derive(ToResponse)]
pub struct Conflict(ErrorBody);

/// The request body is larger than `BODY_LIMIT_BYTES` (bulk: `BULK_BODY_LIMIT_BYTES`)
/// (`payload_too_large`).
#[derive(ToResponse)]
pub struct PayloadTooLarge(ErrorBody);

/// A guard failed (`payment_required`, `out_of_stock`, `missing_field`, `not_owner`).
#[derive(ToResponse)]
pub struct Unprocessable(ErrorBody);

/// Over the caller's rate limit (`rate_limited`); retry after `Retry-After` seconds.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))]
pub struct TooManyRequests(ErrorBody);

/// The database or the broker is unavailable (`unavailable`), or the server is at capacity
/// (`overloaded`); nothing was accepted.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))]
pub struct Unavailable(ErrorBody);
