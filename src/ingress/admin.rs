//! Operating the job pipeline (admin only): list jobs by status, redrive dead ones.

use super::IngressState;
use crate::broker::JobMessage;
use crate::domain::{Actor, JobStatus, RejectCode, Role};
use crate::http::ApiError;
use crate::http::extract::{Path, Query};
use crate::http::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized, Unavailable,
};
use crate::ingress::orders::JobAccepted;
use crate::orders::submit::publish_or_compensate;
use crate::store::jobs::{self, JobView};
use crate::store::orders;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn router() -> Router<IngressState> {
    Router::new()
        .route("/admin/jobs", get(list))
        .route("/admin/jobs/{id}/retry", post(retry))
}

fn admin_only(actor: &Actor) -> Result<(), ApiError> {
    if actor.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "only admins operate the job pipeline",
        ))
    }
}

const MAX_PAGE: i64 = 200;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only jobs in this status (e.g. `dead`).
    status: Option<JobStatus>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobPage {
    jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<Uuid>,
}

#[utoipa::path(
    get,
    path = "/admin/jobs",
    operation_id = "list_jobs",
    tag = "admin",
    summary = "List jobs, e.g. the dead ones (admin)",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]

async fn list(
    State(state): State<IngressState>,
    actor: Actor,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    admin_only(&actor)?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let mut page = jobs::list(
        &mut *state.pool.acquire().await?,
        p.status,
        p.cursor,
        limit + 1,
    )
    .await?;
    let next_cursor = (page.len() as i64 > limit).then(|| page[limit as usize - 1].id);
    page.truncate(limit as usize);
    let views: Vec<JobView> = page.into_iter().map(Into::into).collect();
    Ok(axum::Json(JobPage {
        jobs: views,
        next_cursor,
    })
    .into_response())
}

/// Send a dead job through the queue once more, attempts reset.
#[utoipa::path(
    post,
    path = "/admin/jobs/{id}/retry",
    operation_id = "retry_job",
    tag = "admin",
    summary = "Redrive a dead job, attempts reset (admin)",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 202, description = "Queued again", body = JobAccepted,
            headers(("Location" = String, description = "/jobs/{job_id}"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn retry(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    admin_only(&actor)?;
    let mut conn = state.pool.acquire().await?;
    let Some(job) = jobs::requeue_dead(&mut conn, id).await? else {
        return match jobs::get(&mut conn, id).await? {
            None => Err(ApiError::NotFound("job")),
            Some(j) => Err(ApiError::Conflict(
                "not_dead",
                format!("only dead jobs can be retried; this one is `{}`", j.status),
            )),
        };
    };
    let customer = match job.order_id {
        Some(order_id) => orders::get(&mut conn, order_id)
            .await?
            .map(|o| o.customer_id),
        None => None,
    };
    drop(conn);
    let submitter = Actor {
        id: job.actor_id,
        role: job.actor_role,
    };
    let published = state
        .publisher
        .publish(
            &JobMessage { job_id: id },
            &submitter,
            customer,
            job.traceparent.as_deref(),
            false,
        )
        .await;
    publish_or_compensate(
        &state.pool,
        "redrive_failed",
        published,
        async |conn, error| jobs::back_to_dead(conn, id, error).await.map(|()| true),
    )
    .await?;
    tracing::info!(job_id = %id, by = %actor.id, "dead job redriven");
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(JobAccepted {
            job_id: id,
            order_id: job.order_id,
            status: JobStatus::Queued,
        }),
    )
        .into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/jobs/{id}")).expect("uuid header"),
    );
    Ok(response)
}
