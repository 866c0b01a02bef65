//! axum's extractors with their rejections in our error format.

use super::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts};

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
