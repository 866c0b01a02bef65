//! What the operations overview reads: job counts by state, the relay's lag, bulks in
//! flight, the age of the audit log and the recent rate of changes. Read-only, and each
//! query bounded so that a console polling every few seconds costs little.

use crate::domain::{BulkMode, BulkStatus, JobStatus};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// How many jobs are in one status.
#[derive(Debug)]
pub struct StatusCount {
    pub status: JobStatus,
    pub count: i64,
}

/// Jobs per status (statuses with no job are absent).
pub async fn jobs_by_status(conn: &mut PgConnection) -> sqlx::Result<Vec<StatusCount>> {
    sqlx::query_as!(
        StatusCount,
        r#"select status as "status: JobStatus", count(*) as "count!" from jobs group by status"#
    )
    .fetch_all(conn)
    .await
}

/// How far the relay is behind the writers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxLag {
    /// Always 0: events are numbered as they commit (migration 0009). Kept so that
    /// clients reading it do not break.
    #[schema(deprecated)]
    pub unsequenced: i64,
    /// Committed events the broker has not confirmed yet.
    pub unconfirmed: i64,
    pub published_seq: i64,
    /// Commit time of the oldest event not yet published (none: the relay is caught up).
    pub oldest_unpublished_at: Option<DateTime<Utc>>,
}

pub async fn outbox_lag(conn: &mut PgConnection) -> sqlx::Result<OutboxLag> {
    sqlx::query_as!(
        OutboxLag,
        r#"with cur as (select published_seq from outbox_cursor)
           select 0::bigint as "unsequenced!",
                  (select count(*) from outbox, cur where seq > cur.published_seq) as "unconfirmed!",
                  (select published_seq from cur) as "published_seq!",
                  (select min(created_at) from outbox, cur where seq > cur.published_seq)
                      as oldest_unpublished_at"#
    )
    .fetch_one(conn)
    .await
}

/// A bulk operation still queued or running, with its counters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkInFlight {
    pub id: Uuid,
    pub status: BulkStatus,
    pub mode: BulkMode,
    pub action: Option<String>,
    pub total: i32,
    pub applied: i32,
    pub rejected: i32,
    pub failed: i32,
    pub skipped: i32,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` bulks in flight, oldest first, and how many there are in all.
pub async fn bulks_in_flight(
    conn: &mut PgConnection,
    limit: i64,
) -> sqlx::Result<(i64, Vec<BulkInFlight>)> {
    let count = sqlx::query_scalar!(
        r#"select count(*) as "count!" from bulk_operations where status in ('queued', 'running')"#
    )
    .fetch_one(&mut *conn)
    .await?;
    let rows = sqlx::query_as!(
        BulkInFlight,
        r#"select id, status as "status: BulkStatus", mode as "mode: BulkMode",
                  coalesce(request->>'action', request->>'to') as action,
                  total, applied, rejected, failed, skipped, cancel_requested, created_at
           from bulk_operations where status in ('queued', 'running')
           order by created_at limit $1"#,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok((count, rows))
}

/// When the oldest audit row still kept was written (none: the log is empty).
pub async fn oldest_history(conn: &mut PgConnection) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar!(
        "select created_at from order_status_history
         where id = (select min(id) from order_status_history)"
    )
    .fetch_optional(conn)
    .await
}

/// History rows (changes, creations included) per `bucket_secs` over the last
/// `window_secs`, oldest bucket first, empty buckets included. Reads at most the newest
/// `max_rows` rows (walking the primary key backwards), so a burst larger than that
/// undercounts the window's older buckets instead of scanning the whole log.
pub async fn change_rate(
    conn: &mut PgConnection,
    window_secs: i64,
    bucket_secs: i64,
    max_rows: i64,
) -> sqlx::Result<Vec<(DateTime<Utc>, i64)>> {
    let bucket_secs = bucket_secs.max(1);
    let now = Utc::now().timestamp();
    let last = now - now.rem_euclid(bucket_secs);
    let first = last - (window_secs / bucket_secs - 1).max(0) * bucket_secs;
    let counted = sqlx::query!(
        r#"select (floor(extract(epoch from created_at) / $2) * $2)::bigint as "at!", count(*) as "count!"
           from (select created_at from order_status_history order by id desc limit $3) recent
           where created_at >= to_timestamp($1)
           group by 1"#,
        first as f64,
        bucket_secs as f64,
        max_rows,
    )
    .fetch_all(conn)
    .await?;
    Ok((first..=last)
        .step_by(bucket_secs as usize)
        .map(|at| {
            let n = counted.iter().find(|r| r.at == at).map_or(0, |r| r.count);
            (DateTime::from_timestamp(at, 0).unwrap_or_default(), n)
        })
        .collect())
}
