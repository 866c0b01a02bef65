//! The outbox: events written with their change, sequenced and published by the relay,
//! and kept for the retention window as the replay log.

use crate::event::{Event, NewEvent};
use serde_json::Value;
use sqlx::PgConnection;

/// Insert events in one statement, in slice order (their ids follow it).
pub async fn insert_many(conn: &mut PgConnection, events: &[NewEvent]) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into outbox (order_id, customer_id, event_type, routing_key, payload)
         select order_id, customer_id, event_type, routing_key, payload
         from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[]) with ordinality
              as t(order_id, customer_id, event_type, routing_key, payload, ord)
         order by ord",
    )
    .bind(events.iter().map(|e| e.order_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.customer_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.routing_key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| &e.payload).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct SequencedRow {
    seq: i64,
    routing_key: String,
    payload: Value,
}

impl From<SequencedRow> for Event {
    fn from(r: SequencedRow) -> Self {
        Event::sequenced(r.seq, r.routing_key, r.payload)
    }
}

/// Give the oldest unsequenced rows (id order) the next seqs, gap-free after the highest
/// seq so far. Only the relay holding the advisory lock calls this, so `max(seq)` is stable.
/// Returns how many rows were sequenced.
pub async fn assign_seqs(conn: &mut PgConnection, limit: i64) -> sqlx::Result<u64> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "select id from outbox where seq is null order by id limit $1 for update",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "update outbox o set seq = base.max_seq + t.ord
         from unnest($1::bigint[]) with ordinality as t(id, ord),
              (select coalesce(max(seq), 0) as max_seq from outbox) base
         where o.id = t.id",
    )
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Sequenced rows not yet confirmed by the broker, in seq order.
pub async fn unpublished(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Event>> {
    let rows: Vec<SequencedRow> = sqlx::query_as(
        "select seq, routing_key, payload from outbox
         where seq is not null and published_at is null order by seq limit $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Event::from).collect())
}

pub async fn mark_published(conn: &mut PgConnection, seqs: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "update outbox set published_at = now() where seq = any($1) and published_at is null",
    )
    .bind(seqs)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sequenced events with `after < seq < before`, in seq order (replay for SSE clients).
pub async fn replay(
    conn: &mut PgConnection,
    after: i64,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    let rows: Vec<SequencedRow> = sqlx::query_as(
        "select seq, routing_key, payload from outbox
         where seq > $1 and ($2::bigint is null or seq < $2) order by seq limit $3",
    )
    .bind(after)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Event::from).collect())
}

/// The lowest and highest seq still in the table (None when nothing is sequenced).
pub async fn seq_bounds(conn: &mut PgConnection) -> sqlx::Result<(Option<i64>, Option<i64>)> {
    sqlx::query_as("select min(seq), max(seq) from outbox")
        .fetch_one(conn)
        .await
}
