//! Request headers with meaning in the contract, each parsed once into a typed value:
//! `Idempotency-Key`, `If-Match`, `Prefer: wait=N` (RFC 7240) and `traceparent`. A
//! malformed header is a 400 in our format, before anything is written.

use super::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use std::time::Duration;

const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// `Idempotency-Key`: a repeat by the same actor returns the first job instead of a new one.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
            .trim();
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
            )));
        }
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

/// `If-Match: "3"` (or `W/"3"`, or `3`): the order version (ETag) the caller expects.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = value.to_str().unwrap_or_default().trim();
        let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        text.parse::<i64>().map(|v| IfMatch(Some(v))).map_err(|_| {
            ApiError::BadRequest("If-Match must be an order version (the ETag), like \"3\"".into())
        })
    }
}

/// `Prefer: wait=N` (RFC 7240): how long the caller would wait for the outcome. Uncapped
/// here; the use case caps it by configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreferWait(pub Option<Duration>);

impl<S: Send + Sync> FromRequestParts<S> for PreferWait {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        for value in parts.headers.get_all("prefer") {
            let text = value
                .to_str()
                .map_err(|_| ApiError::BadRequest("unreadable Prefer header".into()))?;
            for pref in text.split([',', ';']) {
                if let Some(n) = pref.trim().strip_prefix("wait=") {
                    let secs: u64 = n.trim().parse().map_err(|_| {
                        ApiError::BadRequest("Prefer: wait=N takes whole seconds".into())
                    })?;
                    return Ok(PreferWait(Some(Duration::from_secs(secs))));
                }
            }
        }
        Ok(PreferWait(None))
    }
}

/// The `traceparent` this request's work carries: the caller's trace continued, or a new
/// one (see [`crate::trace`]).
#[derive(Debug, Clone)]
pub struct TraceParent(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TraceParent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(TraceParent(crate::trace::for_request(&parts.headers)))
    }
}
