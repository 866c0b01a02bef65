//! Jobs: one row per accepted request, from `queued` to exactly one terminal state.

use crate::domain::{JobKind, JobStatus, Role};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone)]
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
    sqlx::query_as!(
        Job,
        r#"insert into jobs (id, kind, order_id, actor_id, actor_role, payload, idempotency_key, bulk_id, traceparent)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           on conflict (actor_id, idempotency_key) where idempotency_key is not null do nothing
           returning id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at"#,
        j.id,
        j.kind.as_str(),
        j.order_id,
        j.actor_id,
        j.actor_role.as_str(),
        j.payload,
        j.idempotency_key,
        j.bulk_id,
        j.traceparent,
    )
    .fetch_optional(conn)
    .await
}

/// What became of one change-status job of [`insert_for_orders`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderJob {
    /// Inserted: the order's customer (for the message's headers) and the row's time.
    Inserted {
        customer_id: Uuid,
        created_at: DateTime<Utc>,
    },
    /// No such order, or one its actor may not see: nothing inserted.
    NotVisible,
    /// The actor already used this idempotency key: nothing inserted.
    KeyUsed,
}

/// Insert change-status jobs, each only if its order exists and its actor may see it
/// (`sees_all`, else only the actor's own orders): the visibility check and the insert of
/// many requests in one statement. Returns one outcome per job, in order; a job the
/// statement returns no row for was not visible.
pub async fn insert_for_orders(
    conn: &mut PgConnection,
    new: &[(NewJob<'_>, bool)],
) -> sqlx::Result<Vec<OrderJob>> {
    let ids: Vec<Uuid> = new.iter().map(|(j, _)| j.id).collect();
    let orders: Vec<Option<Uuid>> = new.iter().map(|(j, _)| j.order_id).collect();
    let actors: Vec<Uuid> = new.iter().map(|(j, _)| j.actor_id).collect();
    let roles: Vec<Role> = new.iter().map(|(j, _)| j.actor_role).collect();
    let payloads: Vec<&Value> = new.iter().map(|(j, _)| j.payload).collect();
    let keys: Vec<Option<&str>> = new.iter().map(|(j, _)| j.idempotency_key).collect();
    let traceparents: Vec<Option<&str>> = new.iter().map(|(j, _)| j.traceparent).collect();
    let sees_all: Vec<bool> = new.iter().map(|(_, all)| *all).collect();
    let rows = sqlx::query!(
        r#"with visible as (
               select v.*, o.customer_id
               from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[],
                           $6::text[], $7::text[], $8::bool[])
                      as v(id, order_id, actor_id, actor_role, payload, idempotency_key, traceparent, sees_all)
               join orders o on o.id = v.order_id and (v.sees_all or o.customer_id = v.actor_id)
           ), ins as (
               insert into jobs (id, kind, order_id, actor_id, actor_role, payload, idempotency_key, traceparent)
               select id, 'change_status', order_id, actor_id, actor_role, payload, idempotency_key, traceparent
               from visible
               on conflict (actor_id, idempotency_key) where idempotency_key is not null do nothing
               returning id, created_at
           )
           select visible.id as "id!", visible.customer_id as "customer_id!", ins.created_at as "created_at?"
           from visible left join ins on ins.id = visible.id"#,
        &ids,
        &orders as &[Option<Uuid>],
        &actors,
        &roles as &[Role],
        &payloads as &[&Value],
        &keys as &[Option<&str>],
        &traceparents as &[Option<&str>],
        &sees_all,
    )
    .fetch_all(conn)
    .await?;
    let by_id: std::collections::HashMap<Uuid, OrderJob> = rows
        .into_iter()
        .map(|r| {
            let outcome = match r.created_at {
                Some(created_at) => OrderJob::Inserted {
                    customer_id: r.customer_id,
                    created_at,
                },
                None => OrderJob::KeyUsed,
            };
            (r.id, outcome)
        })
        .collect();
    Ok(ids
        .iter()
        .map(|id| by_id.get(id).copied().unwrap_or(OrderJob::NotVisible))
        .collect())
}

impl Job {
    /// The row [`insert_for_orders`] inserted for `new` at `created_at` (as the columns'
    /// defaults make it: queued, no attempt yet).
    pub fn queued(new: &NewJob<'_>, created_at: DateTime<Utc>) -> Job {
        Job {
            id: new.id,
            kind: new.kind,
            order_id: new.order_id,
            bulk_id: new.bulk_id,
            actor_id: new.actor_id,
            actor_role: new.actor_role,
            payload: new.payload.clone(),
            traceparent: new.traceparent.map(str::to_owned),
            status: JobStatus::Queued,
            attempts: 0,
            result: None,
            error: None,
            created_at,
            updated_at: created_at,
        }
    }
}

pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    actor_id: Uuid,
    key: &str,
) -> sqlx::Result<Option<Job>> {
    sqlx::query_as!(
        Job,
        r#"select id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at
           from jobs where actor_id = $1 and idempotency_key = $2"#,
        actor_id,
        key,
    )
    .fetch_optional(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as!(
        Job,
        r#"select id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at
           from jobs where id = $1"#,
        id,
    )
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
    let done = sqlx::query!(
        "update jobs set status = 'cancelled', error = $2, idempotency_key = null, updated_at = now()
         where id = $1 and status = 'queued'",
        id,
        error,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claim the given jobs for this transaction: lock those still to do. A job not returned
/// was already finished (or never existed): its delivery is a duplicate and must change
/// nothing. A lock, not an update: the batch's outcome ([`Finished`], written by
/// [`crate::store::changes::write`]) is the one write of each
/// job row (a `running` status would never be seen outside the transaction anyway), and a
/// second worker holding the same delivery waits here, then finds the job finished.
///
/// The rows are found by primary key alone and their status is checked here: with the
/// status in the statement, the planner may combine `jobs_status_idx` into the scan, and
/// that index holds an entry for every status a job has had — a bitmap scan of it visits
/// every job queued since the last vacuum, each batch.
pub async fn claim(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Job>> {
    let locked = sqlx::query_as!(
        Job,
        r#"select id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at
           from jobs where id = any($1)
           for update"#,
        ids,
    )
    .fetch_all(conn)
    .await?;
    Ok(locked
        .into_iter()
        .filter(|j| matches!(j.status, JobStatus::Queued | JobStatus::Retrying))
        .collect())
}

/// A job's terminal outcome, recorded with its batch ([`crate::store::changes::write`]).
/// A job claimed by [`claim`] (only locked, so still `queued`/`retrying`) counts this as an
/// attempt; a bulk job counted its attempt when [`claim_bulk`] marked it `running`.
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
    sqlx::query_as!(
        Job,
        r#"update jobs set status = 'running', attempts = attempts + 1, updated_at = now()
           where id = $1 and kind = 'bulk' and status in ('queued', 'retrying', 'running')
           returning id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Park a job that cannot be applied (a defect, not a business rejection) with its error.
pub async fn mark_dead(conn: &mut PgConnection, id: Uuid, error: &Value) -> sqlx::Result<()> {
    sqlx::query!(
        "update jobs set status = 'dead', error = $2, updated_at = now()
         where id = $1 and status in ('queued', 'retrying', 'running')",
        id,
        error,
    )
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
    sqlx::query!(
        "update jobs set status = 'retrying', attempts = greatest(attempts, $2), error = $3, updated_at = now()
         where id = $1 and status in ('queued', 'retrying')",
        id,
        attempts,
        error,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A job to publish again, with what its message headers need.
#[derive(Debug)]
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
    sqlx::query_as!(
        Stale,
        r#"update jobs j set updated_at = now()
           from (select id from jobs
                 where status in ('queued', 'retrying') and updated_at < now() - make_interval(secs => $1)
                 order by updated_at limit $2 for update skip locked) s
           where j.id = s.id
           returning j.id, j.actor_id, j.actor_role as "actor_role: Role", j.traceparent,
                     (select customer_id from orders o where o.id = j.order_id) as "customer_id?""#,
        older_than_secs,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Which jobs a listing shows (every field optional: none, all jobs).
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
    /// The `code` of the job's `error` (why it died, was rejected or is retrying).
    pub error_code: Option<String>,
}

/// One page of jobs matching `filter`, newest first (ids are UUIDv7).
pub async fn list(
    conn: &mut PgConnection,
    filter: &JobFilter,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as!(
        Job,
        r#"select id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at
           from jobs
           where ($1::text is null or status = $1) and ($2::uuid is null or id < $2)
             and ($4::text is null or kind = $4) and ($5::text is null or error->>'code' = $5)
           order by id desc limit $3"#,
        filter.status.map(JobStatus::as_str),
        before,
        limit,
        filter.kind.map(JobKind::as_str),
        filter.error_code.as_deref(),
    )
    .fetch_all(conn)
    .await
}

/// Ids of dead jobs of `kind` whose error has `error_code` (each optional), oldest first,
/// at most `limit`: what "retry every dead job matching" redrives.
pub async fn dead_matching(
    conn: &mut PgConnection,
    kind: Option<JobKind>,
    error_code: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "select id from jobs
         where status = 'dead' and ($1::text is null or kind = $1)
           and ($2::text is null or error->>'code' = $2)
         order by id limit $3",
        kind.map(JobKind::as_str),
        error_code,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Give up on a dead job: it becomes `cancelled`, keeping why it died under
/// `error.dead_error`. `None` unless it was dead (so a concurrent retry wins or loses
/// cleanly); its parked message, if shovelled back, then changes nothing.
pub async fn discard_dead(
    conn: &mut PgConnection,
    id: Uuid,
    error: &Value,
) -> sqlx::Result<Option<Job>> {
    sqlx::query_as!(
        Job,
        r#"update jobs set status = 'cancelled', error = $2 || jsonb_build_object('dead_error', error),
                  updated_at = now()
           where id = $1 and status = 'dead'
           returning id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at"#,
        id,
        error,
    )
    .fetch_optional(conn)
    .await
}

/// Put a dead job back to `queued` with its attempts reset. `None` unless it was dead, so
/// two concurrent redrives queue it once.
pub async fn requeue_dead(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as!(
        Job,
        r#"update jobs set status = 'queued', attempts = 0, error = null, updated_at = now()
           where id = $1 and status = 'dead'
           returning id, kind as "kind: JobKind", order_id, bulk_id, actor_id, actor_role as "actor_role: Role",
                  payload, traceparent, status as "status: JobStatus", attempts, result, error,
                  created_at, updated_at"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Undo [`requeue_dead`] when the job could not be published after all.
pub async fn back_to_dead(conn: &mut PgConnection, id: Uuid, error: &Value) -> sqlx::Result<()> {
    sqlx::query!(
        "update jobs set status = 'dead', error = $2, updated_at = now() where id = $1 and status = 'queued'",
        id,
        error,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The job that carries a bulk operation.
pub async fn job_of_bulk(conn: &mut PgConnection, bulk_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "select id from jobs where bulk_id = $1 and kind = 'bulk' order by id limit 1",
        bulk_id,
    )
    .fetch_optional(conn)
    .await
}
