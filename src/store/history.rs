//! The append-only audit log: one row per committed change (and one for creation).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Entry {
    pub from_status: Option<String>,
    pub to_status: String,
    pub action: String,
    pub actor_id: Uuid,
    pub actor_role: String,
    pub reason: Option<String>,
    pub job_id: Option<Uuid>,
    pub bulk_id: Option<Uuid>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
}

/// The public shape of a history row (API.md).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    pub from: Option<String>,
    pub to: String,
    pub action: String,
    pub actor: ActorView,
    pub reason: Option<String>,
    pub job_id: Option<Uuid>,
    pub bulk_id: Option<Uuid>,
    pub version: i64,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActorView {
    pub id: Uuid,
    pub role: String,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        EntryView {
            from: e.from_status,
            to: e.to_status,
            action: e.action,
            actor: ActorView {
                id: e.actor_id,
                role: e.actor_role,
            },
            reason: e.reason,
            job_id: e.job_id,
            bulk_id: e.bulk_id,
            version: e.version,
            at: e.created_at,
        }
    }
}

pub async fn for_order(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<Entry>> {
    sqlx::query_as!(
        Entry,
        "select from_status, to_status, action, actor_id, actor_role, reason, job_id, bulk_id, version, created_at
         from order_status_history where order_id = $1 order by id",
        order_id,
    )
    .fetch_all(conn)
    .await
}

/// Delete up to `limit` of the oldest history rows written more than `days` days ago;
/// how many were deleted. The append-only trigger lets only a transaction that says it
/// is the retention job delete: run this in a transaction of its own.
pub async fn prune(conn: &mut PgConnection, days: u32, limit: i64) -> sqlx::Result<u64> {
    sqlx::query_scalar!("select set_config('orderflow.retention', 'on', true)")
        .fetch_one(&mut *conn)
        .await?;
    let done = sqlx::query!(
        "delete from order_status_history where id in (
             select id from order_status_history
             where created_at < now() - make_interval(days => $1)
             order by id limit $2)",
        days as i32,
        limit,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
