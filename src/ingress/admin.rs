//! Operating the job pipeline: list jobs by status (admin, support), redrive or discard
//! dead ones (admin).

use super::IngressState;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use crate::domain::{Actor, RejectCode, Role};
use crate::job::JobMessage;
use crate::store::jobs::{self, Job, JobView};
use crate::store::orders;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
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

const STATUSES: [&str; 7] = [
    "queued",
    "running",
    "succeeded",
    "rejected",
    "retrying",
    "dead",
    "cancelled",
];
const MAX_PAGE: i64 = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    kind: Option<String>,
    error_code: Option<String>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

async fn list(
    State(state): State<IngressState>,
    actor: Actor,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    staff_only(&actor)?;
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown status `{s}`; one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let mut page = jobs::list(
        &mut *state.pool.acquire().await?,
        p.status.as_deref(),
        p.kind.as_deref(),
        p.error_code.as_deref(),
        p.cursor,
        limit + 1,
    )
    .await?;
    let next_cursor = (page.len() as i64 > limit).then(|| page[limit as usize - 1].id);
    page.truncate(limit as usize);
    let views: Vec<JobView> = page.into_iter().map(Into::into).collect();
    Ok(axum::Json(json!({ "jobs": views, "next_cursor": next_cursor })).into_response())
}

/// Send a dead job through the queue once more, attempts reset.
async fn retry(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    admin_only(&actor)?;
    let job = redrive(&state, &actor, id).await?;
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "job_id": id, "order_id": job.order_id, "status": "queued" })),
    )
        .into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/jobs/{id}")).expect("uuid header"),
    );
    Ok(response)
}

/// Requeue one dead job and publish it; the job as requeued.
async fn redrive(state: &IngressState, actor: &Actor, id: Uuid) -> Result<Job, ApiError> {
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
    if let Err(e) = state
        .publisher
        .publish(
            &JobMessage { job_id: id },
            &submitter,
            customer,
            job.traceparent.as_deref(),
            false,
        )
        .await
    {
        let error = json!({ "code": "redrive_failed", "message": e.to_string() });
        jobs::back_to_dead(&mut *state.pool.acquire().await?, id, &error).await?;
        return Err(e.into());
    }
    tracing::info!(job_id = %id, by = %actor.id, "dead job redriven");
    Ok(job)
}

/// Most dead jobs one "retry all matching" redrives; the answer says when more remain.
const MAX_REDRIVE: i64 = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadFilter {
    kind: Option<String>,
    error_code: Option<String>,
}

/// Redrive every dead job matching the filter (the dead-letter view's), oldest first, up
/// to [`MAX_REDRIVE`]. Each is requeued once even when two operators click at once.
async fn retry_matching(
    State(state): State<IngressState>,
    actor: Actor,
    Json(filter): Json<DeadFilter>,
) -> Result<Response, ApiError> {
    admin_only(&actor)?;
    let ids = jobs::dead_matching(
        &mut *state.pool.acquire().await?,
        filter.kind.as_deref(),
        filter.error_code.as_deref(),
        MAX_REDRIVE + 1,
    )
    .await?;
    let more = ids.len() as i64 > MAX_REDRIVE;
    let mut requeued = Vec::new();
    let mut skipped = Vec::new();
    for id in ids.into_iter().take(MAX_REDRIVE as usize) {
        match redrive(&state, &actor, id).await {
            Ok(_) => requeued.push(id),
            // Another operator redrove or discarded it meanwhile.
            Err(ApiError::Conflict(..)) | Err(ApiError::NotFound(_)) => skipped.push(id),
            Err(e) => return Err(e),
        }
    }
    tracing::info!(requeued = requeued.len(), by = %actor.id, "dead jobs redriven");
    Ok(axum::Json(json!({
        "requeued": requeued.len(),
        "job_ids": requeued,
        "skipped": skipped.len(),
        "more": more,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiscardBody {
    reason: Option<String>,
}

/// Give up on a dead job: it ends `cancelled` (a terminal state), with why it died kept.
async fn discard(
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
    let reason = body.reason;
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::BadRequest(
            "`reason` is at most 500 characters".into(),
        ));
    }
    let error = json!({
        "code": "discarded",
        "message": reason.unwrap_or_else(|| "discarded by an operator".to_owned()),
        "by": actor.id,
    });
    let mut conn = state.pool.acquire().await?;
    let Some(job) = jobs::discard_dead(&mut conn, id, &error).await? else {
        return match jobs::get(&mut conn, id).await? {
            None => Err(ApiError::NotFound("job")),
            Some(j) => Err(ApiError::Conflict(
                "not_dead",
                format!(
                    "only dead jobs can be discarded; this one is `{}`",
                    j.status
                ),
            )),
        };
    };
    tracing::info!(job_id = %id, by = %actor.id, "dead job discarded");
    Ok(axum::Json(JobView::from(job)).into_response())
}
