//! `GET /admin/overview` (admin, support): the operations snapshot of [`crate::orders::overview`].

use super::IngressState;
use crate::domain::{Actor, RejectCode, Role};
use crate::http::ApiError;
use crate::http::openapi::{Forbidden, TooManyRequests, Unauthorized, Unavailable};
use crate::orders::overview::{self, Overview};
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub fn router() -> Router<IngressState> {
    Router::new().route("/admin/overview", get(read))
}

#[utoipa::path(
    get,
    path = "/admin/overview",
    operation_id = "get_overview",
    tag = "admin",
    summary = "The operations snapshot: jobs by status, queues, outbox lag, bulks, history (admin, support)",
    responses(
        (status = 200, description = "The snapshot", body = Overview),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn read(
    State(state): State<IngressState>,
    actor: Actor,
) -> Result<Response, ApiError> {
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
