//! Job status: owner, support and admin may read; anyone else gets 404.

use super::IngressState;
use crate::domain::Actor;
use crate::http::ApiError;
use crate::http::extract::Path;
use crate::http::openapi::{BadRequest, NotFound, TooManyRequests, Unauthorized, Unavailable};
use crate::store::jobs::{self, JobView};
use crate::store::orders;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use uuid::Uuid;

pub fn router() -> Router<IngressState> {
    Router::new().route("/jobs/{id}", get(read))
}

#[utoipa::path(
    get,
    path = "/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    summary = "Read a job (its submitter, the order's customer, support, admin)",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn read(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<JobView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let job = jobs::get(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let visible = actor.role.sees_all_orders()
        || job.actor_id == actor.id
        || match job.order_id {
            Some(order_id) => orders::get(&mut conn, order_id)
                .await?
                .is_some_and(|o| o.customer_id == actor.id),
            None => false,
        };
    if !visible {
        return Err(ApiError::NotFound("job"));
    }
    Ok(axum::Json(job.into()))
}
