//! The outbox: events written with their change, sequenced and published by the relay,
//! and kept for the retention window as the replay log.

use crate::event::Event;
use sqlx::PgConnection;
use uuid::Uuid;

/// A sequenced outbox row as read back: the payload stays JSON text, nothing is parsed.
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
        }
    }
}

fn events(mut rows: Vec<StoredEvent>) -> Vec<Event> {
    rows.sort_unstable_by_key(|r| r.seq);
    rows.into_iter().map(Event::from).collect()
}

/// Give the oldest unsequenced rows (id order) the next seqs, gap-free after the highest
/// seq so far — and after `floor`, seqs the broker has seen that this database does not
/// know (see the relay's takeover check) — and return them in seq order. Only the relay
/// holding the advisory lock calls this, so `max(seq)` is stable; were two ever to race,
/// the unique `seq` fails one of them.
pub async fn sequence(conn: &mut PgConnection, limit: i64, floor: i64) -> sqlx::Result<Vec<Event>> {
    // After retention pruned every published row, the cursor still remembers the last seq.
    let rows = sqlx::query_as!(
        StoredEvent,
        r#"with next as (select id from outbox where seq is null order by id limit $1),
                numbered as (select id, row_number() over (order by id) as ord from next),
                base as (select greatest(coalesce(max(seq), 0),
                                         (select published_seq from outbox_cursor),
                                         $2) as max_seq
                         from outbox)
           update outbox o set seq = base.max_seq + n.ord
           from numbered n, base
           where o.id = n.id
           returning seq as "seq!", event_type, routing_key, order_id, customer_id, to_status,
                  traceparent, payload::text as "payload!""#,
        limit,
        floor,
    )
    .fetch_all(conn)
    .await?;
    Ok(events(rows))
}

/// The highest seq this database knows of: the greatest stamped, or the published cursor
/// (which outlives pruned rows).
pub async fn seq_high_water(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select greatest(coalesce((select max(seq) from outbox), 0),
                           (select published_seq from outbox_cursor)) as "high!""#
    )
    .fetch_one(conn)
    .await
}

/// Sequenced rows after `after`, in seq order. After the published cursor, these are
/// what a relay that died mid-flight left unconfirmed.
pub async fn sequenced_after(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    let rows = sqlx::query_as!(
        StoredEvent,
        r#"select seq as "seq!", event_type, routing_key, order_id, customer_id, to_status,
                  traceparent, payload::text as "payload!"
           from outbox where seq > $1 order by seq limit $2"#,
        after,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(events(rows))
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
             where seq is not null and seq <= (select published_seq from outbox_cursor)
             order by seq limit $2),
         upto as (
             select coalesce(min(seq) filter (where created_at >= now() - make_interval(secs => $1)) - 1,
                             max(seq)) as seq
             from oldest)
         delete from outbox where seq is not null and seq <= (select seq from upto)",
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

/// Whether every row with `id <= up_to_id` is sequenced and published (`None`: all rows).
pub async fn is_published(conn: &mut PgConnection, up_to_id: Option<i64>) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select not exists (select 1 from outbox where seq is null and ($1::bigint is null or id <= $1))
              and not exists (select 1 from outbox
                              where seq > (select published_seq from outbox_cursor)
                                and ($1::bigint is null or id <= $1)) as "published!""#,
        up_to_id,
    )
    .fetch_one(conn)
    .await
}

/// Sequenced events with `after < seq < before`, in seq order (replay for SSE clients).
pub async fn replay(
    conn: &mut PgConnection,
    after: i64,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    let rows = sqlx::query_as!(
        StoredEvent,
        r#"select seq as "seq!", event_type, routing_key, order_id, customer_id, to_status,
                  traceparent, payload::text as "payload!"
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

/// The lowest and highest seq still in the table (None when nothing is sequenced).
pub async fn seq_bounds(conn: &mut PgConnection) -> sqlx::Result<(Option<i64>, Option<i64>)> {
    let bounds = sqlx::query!("select min(seq) as low, max(seq) as high from outbox")
        .fetch_one(conn)
        .await?;
    Ok((bounds.low, bounds.high))
}

/// Outbox lag: how many committed events are not yet published, and the age in seconds of
/// the oldest of them (0 when none). Both sets are small and indexed (unsequenced rows,
/// and seqs past the published cursor), so this is cheap to sample.
pub async fn lag(conn: &mut PgConnection) -> sqlx::Result<(i64, f64)> {
    let row = sqlx::query!(
        r#"with pending as (
               select created_at from outbox where seq is null
               union all
               select created_at from outbox where seq > (select published_seq from outbox_cursor))
           select count(*)::bigint as "count!",
                  coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as "age!"
           from pending"#
    )
    .fetch_one(conn)
    .await?;
    Ok((row.count, row.age))
}
