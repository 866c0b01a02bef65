//! Dead jobs, operated by an admin: sent through the queue once more (one, or every one
//! matching the dead-letter view's filter) or given up on. A redrive is record-then-publish
//! like a submission: requeued in the database, published, and put back to `dead` if the
//! broker does not confirm ([`publish_or_compensate`]).

use super::submit::publish_or_compensate;
use crate::broker::publisher::JobPublisher;
use crate::broker::{JobMessage, JobRef};
use crate::domain::{Actor, JobKind};
use crate::http::ApiError;
use crate::store::jobs::{self, Job};
use crate::store::orders;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// Most dead jobs one "retry all matching" redrives; the answer says when more remain.
pub const MAX_REDRIVE: i64 = 1_000;

/// Requeue one dead job (attempts reset) and publish it; the job as requeued. 404 for an
/// unknown job, 409 `not_dead` for one that is not dead (two concurrent redrives queue it
/// once).
#[tracing::instrument(skip_all, fields(job_id = %id, by = %by.id), err)]
pub async fn redrive(
    pool: &PgPool,
    publisher: &JobPublisher,
    by: &Actor,
    id: Uuid,
) -> Result<Job, ApiError> {
    let mut conn = pool.acquire().await?;
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
    let published = publisher
        .publish(
            &JobMessage::one(JobRef {
                customer_id: customer,
                ..JobRef::new(id)
            }),
            Some(&submitter),
            job.traceparent.as_deref(),
        )
        .await;
    publish_or_compensate(pool, "redrive_failed", published, async |conn, error| {
        jobs::back_to_dead(conn, id, error).await.map(|()| true)
    })
    .await?;
    tracing::info!("dead job redriven");
    Ok(job)
}

/// What a redrive by filter did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Redriven {
    pub requeued: usize,
    pub job_ids: Vec<Uuid>,
    /// Matched, but another operator redrove or discarded them meanwhile.
    pub skipped: usize,
    /// More than [`MAX_REDRIVE`] matched: the rest wait for another call.
    pub more: bool,
}

/// Redrive every dead job of `kind` whose error has `error_code` (each optional), oldest
/// first, up to [`MAX_REDRIVE`]. Each is requeued once even when two operators click at once.
#[tracing::instrument(skip_all, fields(by = %by.id), err)]
pub async fn redrive_matching(
    pool: &PgPool,
    publisher: &JobPublisher,
    by: &Actor,
    kind: Option<JobKind>,
    error_code: Option<&str>,
) -> Result<Redriven, ApiError> {
    let ids = jobs::dead_matching(
        &mut *pool.acquire().await?,
        kind,
        error_code,
        MAX_REDRIVE + 1,
    )
    .await?;
    let more = ids.len() as i64 > MAX_REDRIVE;
    let mut job_ids = Vec::new();
    let mut skipped = 0;
    for id in ids.into_iter().take(MAX_REDRIVE as usize) {
        match redrive(pool, publisher, by, id).await {
            Ok(_) => job_ids.push(id),
            Err(ApiError::Conflict(..) | ApiError::NotFound(_)) => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    tracing::info!(requeued = job_ids.len(), skipped, "dead jobs redriven");
    Ok(Redriven {
        requeued: job_ids.len(),
        job_ids,
        skipped,
        more,
    })
}

/// Give up on a dead job: it ends `cancelled` (a terminal state), with why it died kept
/// under `error.dead_error`, and who gave up and why under `error`.
#[tracing::instrument(skip_all, fields(job_id = %id, by = %by.id), err)]
pub async fn discard(
    pool: &PgPool,
    by: &Actor,
    id: Uuid,
    reason: Option<String>,
) -> Result<Job, ApiError> {
    let error = json!({
        "code": "discarded",
        "message": reason.unwrap_or_else(|| "discarded by an operator".to_owned()),
        "by": by.id,
    });
    let mut conn = pool.acquire().await?;
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
    tracing::info!("dead job discarded");
    Ok(job)
}
