//! `GET /admin/overview` (admin, support): the operations snapshot of [`crate::orders::overview`].

use super::IngressState;
use crate::domain::{Actor, RejectCode, Role};
use crate::http::ApiError;
use crate::orders::overview;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub fn router() -> Router<IngressState> {
    Router::new().route("/admin/overview", get(read))
}

async fn read(State(state): State<IngressState>, actor: Actor) -> Result<Response, ApiError> {
    if !matches!(actor.role, Role::Admin | Role::Support) {
        return Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "the overview is for admin and support",
        ));
    }
    let snapshot = overview::read(
        &state.pool,
        &state.publisher,
        state.cfg.history_retention_days,
    )
    .await?;
    Ok(axum::Json(snapshot).into_response())
}
