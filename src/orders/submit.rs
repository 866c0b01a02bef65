//! Submitting a change of one order: the job row is recorded — with concurrent
//! submissions, in one statement that also checks the order is visible ([`super::intake`])
//! — (or, for a repeated `Idempotency-Key`, the first one is found), then the job message
//! (with the other jobs of that statement) is published and the broker's confirm awaited —
//! a 202 only for a durably queued job. If the broker does not
//! confirm, the record is undone ([`publish_or_compensate`], shared with bulk and redrive).

use super::command::ChangeCommand;
use super::intake::{Entry, Intake, OwnedJob, Recorded};
use super::read::OrderView;
use crate::broker::publisher::{JobPublisher, PublishError, ReplyWaiter};
use crate::domain::{Actor, JobKind, JobStatus, RejectCode, Rejection, machine};
use crate::http::ApiError;
use crate::store::jobs::{self, Job, OrderJob};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// One change-status request, parsed.
pub struct ChangeSubmission {
    pub order_id: Uuid,
    pub command: ChangeCommand,
    pub idempotency_key: Option<String>,
    pub traceparent: String,
    /// How long to wait for the outcome (`Prefer: wait`), already capped.
    pub wait: Option<Duration>,
}

/// What became of a submission.
#[derive(Debug)]
pub enum Submitted {
    /// Queued, or still in flight when the wait ran out.
    Queued(Job),
    /// A repeat of an earlier submission (same actor and key): its first job, as it is now.
    Repeat(Job),
    /// Applied within the wait: the job and the order after it.
    Applied(Job, OrderView),
    /// Queued, and the caller asked to wait for the outcome: see [`Pending::outcome`].
    Pending(Pending),
}

/// A queued job whose caller waits for its outcome (`Prefer: wait`).
#[derive(Debug)]
pub struct Pending {
    job: Job,
    waiter: ReplyWaiter,
    limit: Duration,
}

impl Pending {
    /// Wait for the worker's reply (at most the wait asked for), then read the outcome:
    /// applied (with the order), rejected (the error, 409/422), or still queued.
    pub async fn outcome(self, pool: &PgPool) -> Result<Submitted, ApiError> {
        let Pending { job, waiter, limit } = self;
        waiter.wait(limit).await;
        // The reply only wakes us; the database says what happened.
        outcome(&mut *pool.acquire().await?, job.id).await
    }

    /// The job as it was queued.
    pub fn job(&self) -> &Job {
        &self.job
    }
}

/// Record and queue a change of `order_id` by `actor`. With a wait, the result is
/// [`Submitted::Pending`]: the job is queued, and its outcome is for the caller to await.
#[tracing::instrument(skip_all, fields(order_id = %s.order_id, actor = %actor.id, job_id))]
pub async fn submit_change(
    pool: &PgPool,
    intake: &Intake,
    publisher: &JobPublisher,
    actor: Actor,
    s: ChangeSubmission,
) -> Result<Submitted, ApiError> {
    if let Some(action) = s.command.action() {
        if !machine::role_may(actor.role, action) {
            return Err(ApiError::forbidden(
                RejectCode::ForbiddenRole,
                format!("role `{}` may not {action}", actor.role),
            ));
        }
    }
    let payload = serde_json::to_value(&s.command).expect("a command serializes");
    let job_id = Uuid::now_v7();
    tracing::Span::current().record("job_id", tracing::field::display(job_id));
    // Registered before the publish, so no reply is missed.
    let waiter = s.wait.map(|_| publisher.expect_reply(job_id));
    let entry = Entry {
        job: OwnedJob {
            id: job_id,
            order_id: s.order_id,
            actor,
            payload,
            idempotency_key: s.idempotency_key,
            traceparent: s.traceparent,
        },
        sees_all: actor.role.sees_all_orders(),
        reply: waiter.is_some(),
    };
    let Recorded {
        entry,
        outcome,
        queued,
    } = intake.record(entry).await?;
    let (job, queued) = match (outcome, queued) {
        (OrderJob::Inserted { created_at, .. }, Some(queued)) => {
            (Job::queued(&entry.job.as_new(), created_at), queued)
        }
        (OrderJob::KeyUsed, _) => return replay(pool, &entry.job).await,
        _ => return Err(ApiError::NotFound("order")),
    };

    // Published with the other jobs of its batch (see `intake`).
    let published = queued
        .confirmed()
        .instrument(publisher.publish_span(job_id))
        .await;
    publish_or_compensate(pool, "not_queued", published, async |conn, error| {
        jobs::abandon_unqueued(conn, job_id, error).await
    })
    .await?;
    ::metrics::counter!(crate::metrics::JOBS_ACCEPTED, "kind" => JobKind::ChangeStatus.as_str())
        .increment(1);

    Ok(match (waiter, s.wait) {
        (Some(waiter), Some(limit)) => Submitted::Pending(Pending { job, waiter, limit }),
        _ => Submitted::Queued(job),
    })
}

/// The job as it is after the wait: applied (with the order), rejected (the error), or
/// still queued.
async fn outcome(conn: &mut PgConnection, job_id: Uuid) -> Result<Submitted, ApiError> {
    let job = jobs::get(conn, job_id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    match job.status {
        JobStatus::Succeeded => {
            let order_id = job.order_id.ok_or(ApiError::NotFound("order"))?;
            let order = OrderView::load(conn, order_id)
                .await?
                .ok_or(ApiError::NotFound("order"))?;
            Ok(Submitted::Applied(job, order))
        }
        JobStatus::Rejected => {
            let error = job.error.clone().unwrap_or_default();
            let code: RejectCode = serde_json::from_value(error["code"].clone())
                .map_err(|e| anyhow::anyhow!("job {job_id} has an unknown rejection code: {e}"))?;
            let message = error["message"].as_str().unwrap_or_default().to_owned();
            Err(ApiError::Rejected(
                Rejection::new(code, message),
                Some(job_id),
            ))
        }
        _ => Ok(Submitted::Queued(job)),
    }
}

/// The first job of the actor's idempotency key (the one this submission repeats) — an
/// error if it was for another order.
async fn replay(pool: &PgPool, job: &OwnedJob) -> Result<Submitted, ApiError> {
    let key = job
        .idempotency_key
        .as_deref()
        .expect("only keyed inserts can conflict");
    let first = jobs::by_idempotency_key(&mut *pool.acquire().await?, job.actor.id, key)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    if first.order_id != Some(job.order_id) {
        return Err(ApiError::Unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for another order".into(),
        ));
    }
    Ok(Submitted::Repeat(first))
}

/// Settle a publish of recorded work. Unconfirmed, the record is undone by `compensate`
/// (given the error to store, `{code, message}`) so nothing applies it later, and the
/// caller answers 503 — unless `compensate` finds a worker already took it (false): the
/// message did reach the queue after all, and the work stands.
pub async fn publish_or_compensate(
    pool: &PgPool,
    code: &'static str,
    published: Result<(), PublishError>,
    compensate: impl AsyncFnOnce(&mut PgConnection, &Value) -> sqlx::Result<bool>,
) -> Result<(), ApiError> {
    let Err(e) = published else {
        tracing::info!("job queued");
        return Ok(());
    };
    let error = json!({ "code": code, "message": e.to_string() });
    let undone = match pool.acquire().await {
        Ok(mut conn) => compensate(&mut conn, &error).await,
        Err(db) => Err(db),
    };
    match undone {
        Ok(true) => Err(e.into()),
        Ok(false) => {
            tracing::warn!(error = %e, "publish unconfirmed but a worker already took the job");
            Ok(())
        }
        Err(db) => {
            tracing::error!(error = %db, "could not undo an unconfirmed job; the sweeper will requeue it");
            Err(e.into())
        }
    }
}
