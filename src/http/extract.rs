//! axum's extractors with their rejections in our error format, and the caller as an
//! [`Actor`] from its bearer token.

use super::error::ApiError;
use crate::auth::{HasKeys, token_of};
use crate::domain::Actor;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;

/// A JSON body; malformed JSON, wrong types and unknown fields are 400s in our format.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// Path parameters; a malformed id is a 400 in our format.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters; unknown or malformed ones are 400s in our format.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl<S> FromRequestParts<S> for Actor
where
    S: HasKeys + Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token =
            token_of(parts).ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        state.keys().verify(&token).map_err(|e| {
            tracing::debug!(error = %e, "token refused");
            ApiError::Unauthorized("invalid token".into())
        })
    }
}
