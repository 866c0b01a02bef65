//! Jobs: one row per accepted request, from `queued` to exactly one terminal state.

use crate::domain::{JobKind, JobStatus, Role};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub kind: JobKind,
    pub order_id: Option<Uuid>,
    pub bulk_id: Option<Uuid>,
    pub actor_id: Uuid,
    pub actor_role: Role,
    pub payload: Value,
    /// The W3C trace context of the request that created the job.
    pub traceparent: Option<String>,
    pub status: JobStatus,
    pub attempts: i32,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The public shape of a job (API.md, "Jobs").
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    pub attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        JobView {
            id: j.id,
            kind: j.kind,
            status: j.status,
            attempts: j.attempts,
            order_id: j.order_id,
            bulk_id: j.bulk_id,
            result: j.result,
            error: j.error,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

const COLUMNS: &str = "id, kind, order_id, bulk_id, actor_id, actor_role, payload, traceparent, status, attempts, result, error, created_at, updated_at";

pub struct NewJob<'a> {
    pub id: Uuid,
    pub kind: JobKind,
    pub order_id: Option<Uuid>,
    pub bulk_id: Option<Uuid>,
    pub actor_id: Uuid,
    pub actor_role: Role,
    pub payload: &'a Value,
    pub idempotency_key: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

/// Insert a queued job. `None` when the actor already used this idempotency key.
pub async fn insert(conn: &mut PgConnection, j: &NewJob<'_>) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(&format!(
        "insert into jobs (id, kind, order_id, actor_id, actor_role, payload, idempotency_key, bulk_id, traceparent)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict (actor_id, idempotency_key) where idempotency_key is not null do nothing
         returning {COLUMNS}"
    ))
    .bind(j.id)
    .bind(j.kind)
    .bind(j.order_id)
    .bind(j.actor_id)
    .bind(j.actor_role)
    .bind(j.payload)
    .bind(j.idempotency_key)
    .bind(j.bulk_id)
    .bind(j.traceparent)
    .fetch_optional(conn)
    .await
}

pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    actor_id: Uuid,
    key: &str,
) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from jobs where actor_id = $1 and idempotency_key = $2"
    ))
    .bind(actor_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(&format!("select {COLUMNS} from jobs where id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Give up on a job whose publish was not confirmed: it becomes `cancelled` (a late
/// message for it then changes nothing) and its idempotency key is freed for a retry.
/// False when a worker already claimed it — the message did reach the queue after all.
pub async fn abandon_unqueued(
    conn: &mut PgConnection,
    id: Uuid,
    error: &Value,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update jobs set status = 'cancelled', error = $2, idempotency_key = null, updated_at = now()
         where id = $1 and status = 'queued'",
    )
    .bind(id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claim the given jobs for this transaction. A job not returned was already finished (or
/// never existed): its delivery is a duplicate and must change nothing.
pub async fn claim(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as(&format!(
        "update jobs set status = 'running', attempts = attempts + 1, updated_at = now()
         where id = any($1) and status in ('queued', 'retrying')
         returning {COLUMNS}"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// A job's terminal outcome, recorded with its batch.
pub struct Finished {
    pub id: Uuid,
    pub status: JobStatus,
    pub result: Option<Value>,
    pub error: Option<Value>,
}

/// Claim a bulk job. Unlike single jobs a bulk spans many transactions, so a `running`
/// bulk job can be claimed again: its worker died and the broker redelivered it; it
/// resumes from its last committed chunk.
pub async fn claim_bulk(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(&format!(
        "update jobs set status = 'running', attempts = attempts + 1, updated_at = now()
         where id = $1 and kind = 'bulk' and status in ('queued', 'retrying', 'running')
         returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Record many outcomes in one statement.
pub async fn finish_many(conn: &mut PgConnection, done: &[Finished]) -> sqlx::Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update jobs j set status = v.status, result = v.result, error = v.error, updated_at = now()
         from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[]) as v(id, status, result, error)
         where j.id = v.id",
    )
    .bind(done.iter().map(|d| d.id).collect::<Vec<_>>())
    .bind(done.iter().map(|d| d.status).collect::<Vec<_>>())
    .bind(done.iter().map(|d| d.result.clone()).collect::<Vec<_>>())
    .bind(done.iter().map(|d| d.error.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Park a job that cannot be applied (a defect, not a business rejection) with its error.
pub async fn mark_dead(conn: &mut PgConnection, id: Uuid, error: &Value) -> sqlx::Result<()> {
    sqlx::query("update jobs set status = 'dead', error = $2, updated_at = now() where id = $1 and status in ('queued', 'retrying', 'running')")
        .bind(id)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

/// Note that a job failed an attempt and waits in a delay queue for the next one.
pub async fn mark_retrying(
    conn: &mut PgConnection,
    id: Uuid,
    attempts: i32,
    error: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "update jobs set status = 'retrying', attempts = greatest(attempts, $2), error = $3, updated_at = now()
         where id = $1 and status in ('queued', 'retrying')",
    )
    .bind(id)
    .bind(attempts)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job to publish again, with what its message headers need.
#[derive(Debug, sqlx::FromRow)]
pub struct Stale {
    pub id: Uuid,
    pub actor_id: Uuid,
    pub actor_role: Role,
    pub customer_id: Option<Uuid>,
    pub traceparent: Option<String>,
}

/// Take up to `limit` jobs still `queued` or `retrying` after `older_than_secs`, touching
/// them so concurrent sweepers (and the next sweep) leave them alone for another period.
pub async fn take_stale(
    conn: &mut PgConnection,
    older_than_secs: f64,
    limit: i64,
) -> sqlx::Result<Vec<Stale>> {
    sqlx::query_as(
        "update jobs j set updated_at = now()
         from (select id from jobs
               where status in ('queued', 'retrying') and updated_at < now() - make_interval(secs => $1)
               order by updated_at limit $2 for update skip locked) s
         where j.id = s.id
         returning j.id, j.actor_id, j.actor_role, j.traceparent,
                   (select customer_id from orders o where o.id = j.order_id) as customer_id",
    )
    .bind(older_than_secs)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One page of jobs, newest first (ids are UUIDv7), optionally of one status.
pub async fn list(
    conn: &mut PgConnection,
    status: Option<JobStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from jobs
         where ($1::text is null or status = $1) and ($2::uuid is null or id < $2)
         order by id desc limit $3"
    ))
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Put a dead job back to `queued` with its attempts reset. `None` unless it was dead, so
/// two concurrent redrives queue it once.
pub async fn requeue_dead(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(&format!(
        "update jobs set status = 'queued', attempts = 0, error = null, updated_at = now()
         where id = $1 and status = 'dead' returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Undo [`requeue_dead`] when the job could not be published after all.
pub async fn back_to_dead(conn: &mut PgConnection, id: Uuid, error: &Value) -> sqlx::Result<()> {
    sqlx::query("update jobs set status = 'dead', error = $2, updated_at = now() where id = $1 and status = 'queued'")
        .bind(id)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

/// The job that carries a bulk operation.
pub async fn job_of_bulk(conn: &mut PgConnection, bulk_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "select id from jobs where bulk_id = $1 and kind = 'bulk' order by id limit 1",
    )
    .bind(bulk_id)
    .fetch_optional(conn)
    .await
}
