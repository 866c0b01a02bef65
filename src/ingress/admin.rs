//! Operating the job pipeline: list jobs by status, kind and error code (admin, support),
//! redrive or discard dead ones (admin). The use cases are [`crate::orders::dead`].

use super::IngressState;
use super::admission::QueueRoom;
use crate::domain::{Actor, JobKind, JobStatus, RejectCode, Role};
use crate::http::ApiError;
use crate::http::extract::{Json, Path, Query};
use crate::http::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized, Unavailable,
};
use crate::ingress::orders::JobAccepted;
use crate::orders::command::{MAX_REASON_CHARS, check_text};
use crate::orders::dead::{self, Redriven};
use crate::store::jobs::{self, JobFilter, JobView};
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
        .route("/admin/jobs/{id}/discard", post(discard))
        .route("/admin/jobs/dead/retry", post(retry_matching))
}

fn staff_only(actor: &Actor) -> Result<(), ApiError> {
    match actor.role {
        Role::Admin | Role::Support => Ok(()),
        _ => Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "only staff see the job pipeline",
        )),
    }
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
/// Error codes are short identifiers (`invalid_job`, `apply_failed`, ...).
const MAX_ERROR_CODE_CHARS: usize = 100;

/// An `error_code` filter, checked like any text that comes in (a NUL is a 400 here, not
/// a database error).
fn checked_error_code(code: Option<String>) -> Result<Option<String>, ApiError> {
    if let Some(code) = &code {
        check_text("error_code", code, MAX_ERROR_CODE_CHARS)
            .map_err(|e| ApiError::BadRequest(e.0))?;
    }
    Ok(code)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only jobs in this status (e.g. `dead`).
    status: Option<JobStatus>,
    /// Only jobs of this kind.
    kind: Option<JobKind>,
    /// Only jobs whose error has this code (e.g. `invalid_job`).
    error_code: Option<String>,
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
    summary = "List jobs, e.g. the dead ones (admin, support)",
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
    staff_only(&actor)?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let filter = JobFilter {
        status: p.status,
        kind: p.kind,
        error_code: checked_error_code(p.error_code)?,
    };
    let mut page = jobs::list(
        &mut *state.pool.acquire().await?,
        &filter,
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
    _room: QueueRoom,
) -> Result<Response, ApiError> {
    admin_only(&actor)?;
    let job = dead::redrive(&state.pool, &state.publisher, &actor, id).await?;
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

/// The dead-letter view's filter.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadFilter {
    kind: Option<JobKind>,
    error_code: Option<String>,
}

/// Redrive every dead job matching the filter, oldest first, up to [`dead::MAX_REDRIVE`].
#[utoipa::path(
    post,
    path = "/admin/jobs/dead/retry",
    operation_id = "retry_dead_jobs",
    tag = "admin",
    summary = "Redrive every dead job matching a filter, up to 1,000 per call (admin)",
    request_body = DeadFilter,
    responses(
        (status = 200, description = "What was requeued", body = Redriven),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retry_matching(
    State(state): State<IngressState>,
    actor: Actor,
    _room: QueueRoom,
    Json(filter): Json<DeadFilter>,
) -> Result<Response, ApiError> {
    admin_only(&actor)?;
    let error_code = checked_error_code(filter.error_code)?;
    let done = dead::redrive_matching(
        &state.pool,
        &state.publisher,
        &actor,
        filter.kind,
        error_code.as_deref(),
    )
    .await?;
    Ok(axum::Json(done).into_response())
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscardBody {
    reason: Option<String>,
}

/// Give up on a dead job: it ends `cancelled`, with why it died kept.
#[utoipa::path(
    post,
    path = "/admin/jobs/{id}/discard",
    operation_id = "discard_job",
    tag = "admin",
    summary = "Discard a dead job: it ends cancelled, its error kept (admin)",
    params(("id" = Uuid, Path, description = "Job id")),
    request_body(content = Option<DiscardBody>, description = "Optional: why it is discarded"),
    responses(
        (status = 200, description = "The job, cancelled", body = JobView),
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
pub(crate) async fn discard(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin_only(&actor)?;
    // The body is optional: none, or `{"reason": ".."}`.
    let body: DiscardBody = if body.iter().all(u8::is_ascii_whitespace) {
        DiscardBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?
    };
    if let Some(reason) = &body.reason {
        check_text("reason", reason, MAX_REASON_CHARS).map_err(|e| ApiError::BadRequest(e.0))?;
    }
    let job = dead::discard(&state.pool, &actor, id, body.reason).await?;
    Ok(axum::Json(JobView::from(job)).into_response())
}
