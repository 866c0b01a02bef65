//! The outbox: events written with their change and numbered as they commit
//! ([`crate::store::changes`]), published by the relay, and kept for the retention window
//! as the replay log.

use crate::event::{Event, EventIdentity};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// An outbox row as read back: the payload stays JSON text, nothing is parsed.
#[derive(Debug)]
struct StoredEvent {
    seq: i64,
    event_type: String,
    routing_key: String,
    order_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    to_status: Option<String>,
    traceparent: Option<String>,
    payload: String,
    id: i64,
    created_at: DateTime<Utc>,
}

impl From<StoredEvent> for Event {
    fn from(r: StoredEvent) -> Self {
        Event {
            data: crate::event::data_with_seq(r.seq, &r.payload),
            seq: r.seq,
            event_type: r.event_type,
            routing_key: r.routing_key,
            order_id: r.order_id,
            customer_id: r.customer_id,
            to: r.to_status,
            traceparent: r.traceparent,
            stored: Some(EventIdentity {
                id: r.id,
                created_at: r.created_at,
            }),
        }
    }
}

fn events(mut rows: Vec<StoredEvent>) -> Vec<Event> {
    rows.sort_unstable_by_key(|r| r.seq);
    rows.into_iter().map(Event::from).collect()
}

/// The highest seq this database knows of: the outbox head (the last seq any committed
/// event has; it outlives pruned rows).
pub async fn seq_high_water(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!("select last_seq from outbox_head")
        .fetch_one(conn)
        .await
}

/// Which event `seq` is, if the outbox has it: its row's id and commit time — what the
/// relay's marker on the broker records of the last event it sent (see
/// [`renumber_unpublished`]).
pub async fn identity(conn: &mut PgConnection, seq: i64) -> sqlx::Result<Option<EventIdentity>> {
    sqlx::query_as!(
        EventIdentity,
        "select id, created_at from outbox where seq = $1",
        seq
    )
    .fetch_optional(conn)
    .await
}

/// After a failover that lost commits the broker had seen events of: give every event
/// after the published cursor a new seq after `floor` (the last seq the broker has seen),
/// in the same order and gap-free, and move the head past them, under the head's lock —
/// no writer numbers anything meanwhile. Their old seqs may name other events downstream.
/// Returns the first new seq and how many were renumbered. The caller commits.
pub async fn renumber_unpublished(conn: &mut PgConnection, floor: i64) -> sqlx::Result<(i64, i64)> {
    sqlx::query_scalar!("select last_seq from outbox_head for update")
        .fetch_one(&mut *conn)
        .await?;
    let cursor = published_seq(&mut *conn).await?;
    // Through negative seqs, which nothing else holds: a unique index is checked row by
    // row, and moving the range in place would collide with itself.
    sqlx::query!("update outbox set seq = -seq where seq > $1", cursor)
        .execute(&mut *conn)
        .await?;
    let moved = sqlx::query!(
        "update outbox set seq = $2 + (-seq - $1) where seq < 0",
        cursor,
        floor
    )
    .execute(&mut *conn)
    .await?
    .rows_affected() as i64;
    sqlx::query!(
        "update outbox_head set last_seq = $1::bigint + $2::bigint",
        floor,
        moved
    )
    .execute(&mut *conn)
    .await?;
    Ok((floor + 1, moved))
}

/// Every event up to `seq` is confirmed by the broker (the relay publishes in seq order).
pub async fn mark_published(conn: &mut PgConnection, seq: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "update outbox_cursor set published_seq = greatest(published_seq, $1)",
        seq,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Delete up to `limit` of the oldest events that are published and older than
/// `older_than_secs`: always a prefix in seq order, so what stays is one unbroken range and
/// a resume point before it is answered with `reset`. Never an unpublished event.
/// Returns how many were deleted.
pub async fn prune(conn: &mut PgConnection, older_than_secs: f64, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "with oldest as (
             select seq, created_at from outbox
             where seq <= (select published_seq from outbox_cursor)
             order by seq limit $2),
         upto as (
             select coalesce(min(seq) filter (where created_at >= now() - make_interval(secs => $1)) - 1,
                             max(seq)) as seq
             from oldest)
         delete from outbox where seq <= (select seq from upto)",
        older_than_secs,
        limit,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// The highest seq the broker has confirmed.
pub async fn published_seq(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!("select published_seq from outbox_cursor")
        .fetch_one(conn)
        .await
}

/// Whether every row with `id <= up_to_id` is published (`None`: all rows).
pub async fn is_published(conn: &mut PgConnection, up_to_id: Option<i64>) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select not exists (select 1 from outbox
                              where seq > (select published_seq from outbox_cursor)
                                and ($1::bigint is null or id <= $1)) as "published!""#,
        up_to_id,
    )
    .fetch_one(conn)
    .await
}

/// Committed events with `after < seq < before` (`before` None: no upper bound), in seq
/// order: what the relay publishes next, and what SSE clients replay. Seqs become visible
/// in order (see [`crate::store::changes`]), so this is never a range with a hole that a
/// later commit fills.
pub async fn between(
    conn: &mut PgConnection,
    after: i64,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    let rows = sqlx::query_as!(
        StoredEvent,
        r#"select seq, event_type, routing_key, order_id, customer_id, to_status,
                  traceparent, payload::text as "payload!", id, created_at
           from outbox
           where seq > $1 and ($2::bigint is null or seq < $2) order by seq limit $3"#,
        after,
        before,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(events(rows))
}

/// The lowest and highest seq still in the table (None when it is empty).
pub async fn seq_bounds(conn: &mut PgConnection) -> sqlx::Result<(Option<i64>, Option<i64>)> {
    let bounds = sqlx::query!("select min(seq) as low, max(seq) as high from outbox")
        .fetch_one(conn)
        .await?;
    Ok((bounds.low, bounds.high))
}

/// Outbox lag: how many committed events are not yet published, and the age in seconds of
/// the oldest of them (0 when none). They are the seqs past the published cursor, an
/// index range, so this is cheap to sample.
pub async fn lag(conn: &mut PgConnection) -> sqlx::Result<(i64, f64)> {
    let row = sqlx::query!(
        r#"select count(*)::bigint as "count!",
                  coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as "age!"
           from outbox where seq > (select published_seq from outbox_cursor)"#
    )
    .fetch_one(conn)
    .await?;
    Ok((row.count, row.age))
}
