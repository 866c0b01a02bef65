//! The outbox relay: publishes committed outbox rows to `orderflow.events`.
//!
//! One relay is active at a time (a session-level Postgres advisory lock); others wait as
//! hot standbys and take over when its session ends. Events are numbered as they commit
//! ([`crate::store::changes`]), so the relay only reads: whatever is after the published
//! cursor (`outbox_cursor`), in seq order, a batch at a time — the next batch is queued
//! while the broker confirms the previous one — and moves the cursor past each fully
//! confirmed batch. What a relay that died had sent but not seen confirmed is after the
//! cursor too, and goes out again with the same seqs (consumers dedupe).
//!
//! At takeover it checks that the database still has the last event the broker has seen
//! (see [`check_marker`]).

use crate::broker::publisher::{EventPublisher, Sending};
use crate::broker::{self, Names};
use crate::config::RelayConfig;
use crate::event::Event;
use crate::metrics;
use crate::store::{history, outbox};
use ::metrics::{counter, histogram};
use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Postgres};
use std::time::Duration;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Span;

/// The advisory lock key of the active relay (per database).
const RELAY_LOCK: i64 = 0x6f72_6465_7266_6c77; // "orderflw"

/// The NOTIFY channel the outbox insert trigger signals.
pub const OUTBOX_CHANNEL: &str = "orderflow_outbox";

/// Run the relay until `shutdown`: wait to become active, then publish; start over after
/// losing the database or the broker.
pub async fn run(
    pool: PgPool,
    amqp_url: String,
    names: Names,
    cfg: RelayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A standby must be back to polling for the lock quickly, whatever ended its session:
    // takeover time is bounded by this cap, not by the broker's backoff.
    let cap = Duration::from_millis(500);
    broker::supervise("outbox relay", &shutdown, cap, || {
        session(&pool, &amqp_url, &names, &cfg, &shutdown)
    })
    .await;
    Ok(())
}

/// Wait until this process holds the relay lock (or shutdown). The lock lives as long as
/// the returned connection.
async fn become_active(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<PoolConnection<Postgres>>> {
    let mut conn = pool
        .acquire()
        .await
        .context("acquiring the relay lock connection")?;
    let mut waiting_logged = false;
    loop {
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            // Never hand this session back to the pool: closing it is what frees the lock.
            return Ok(Some(conn));
        }
        if !waiting_logged {
            tracing::info!("another relay is active; standing by");
            waiting_logged = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn session(
    pool: &PgPool,
    url: &str,
    names: &Names,
    cfg: &RelayConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(lock) = become_active(pool, shutdown).await? else {
        return Ok(());
    };
    let mut lock = lock.detach();
    planner_settings(&mut lock).await?;
    tracing::info!("outbox relay active");
    let result = publish_loop(pool, &mut lock, url, names, cfg, shutdown).await;
    // Closing the detached connection ends the session and releases the lock.
    drop(lock);
    result
}

/// How the lock's session plans the relay's statements.
///
/// It reads the outbox through its seq index only, as an ordered index scan that stops
/// after the batch. And it plans every statement for the outbox as it is now
/// (`force_custom_plan`): the session lives as long as the relay holds the lock, and after
/// five runs a prepared statement would keep one generic plan made for the table as it was
/// then — made on an empty outbox, an earlier relay's plan walked the whole table for
/// every batch once a bulk operation had written 100,000 events (120 s a round; measured
/// with `auto_explain` and `orderflow-bench bulk`, docs/architecture.md). On a young table
/// the planner would also pick a sequential scan plus a sort over the index.
async fn planner_settings(lock: &mut PgConnection) -> sqlx::Result<()> {
    // Disabled plans are only priced out, not forbidden: the one-row `outbox_cursor` is
    // still scanned, at a price that would make the planner JIT-compile the statement
    // (~170 ms a round). No relay statement gains from JIT.
    sqlx::query(
        "select set_config('enable_seqscan', 'off', false),
                set_config('enable_bitmapscan', 'off', false),
                set_config('jit', 'off', false),
                set_config('plan_cache_mode', 'force_custom_plan', false)",
    )
    .execute(lock)
    .await?;
    Ok(())
}

async fn publish_loop(
    pool: &PgPool,
    lock: &mut PgConnection,
    url: &str,
    names: &Names,
    cfg: &RelayConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(pool)
        .await
        .context("connecting the NOTIFY listener")?;
    listener.listen(OUTBOX_CHANNEL).await?;
    let conn = broker::connect(url, "outbox-relay").await?;
    let publisher = EventPublisher::open(&conn, names).await?;
    check_marker(pool, &publisher, &conn).await?;
    let poll = Duration::from_millis(cfg.relay_poll_ms);
    let mut retention =
        tokio::time::interval(Duration::from_secs(cfg.retention_interval_secs.max(1)));
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last seq sent: the published cursor, or past it while a batch is in flight. The
    // active relay alone moves the cursor while it holds the lock.
    let mut sent_through = outbox::published_seq(&mut *lock)
        .await
        .context("relay lock session")?;
    loop {
        drain(
            lock,
            &publisher,
            cfg.relay_batch_size,
            &mut sent_through,
            shutdown,
        )
        .await?;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            n = listener.recv() => {
                n.context("NOTIFY listener")?;
                // One drain covers every commit notified so far (each worker batch
                // notifies once): the rest of what is buffered needs no round of its own.
                while listener.next_buffered().is_some() {}
            }
            _ = tokio::time::sleep(poll) => {}
            _ = retention.tick(), if cfg.outbox_retention_secs > 0 || cfg.history_retention_days > 0 => {
                if cfg.outbox_retention_secs > 0 {
                    prune(pool, cfg.outbox_retention_secs, cfg.relay_batch_size).await?;
                }
                if cfg.history_retention_days > 0 {
                    prune_history(pool, cfg.history_retention_days, cfg.relay_batch_size).await?;
                }
            }
        }
    }
    let _ = conn.close(200, "shutdown".into()).await;
    tracing::info!("outbox relay stopped");
    Ok(())
}

/// One retention pass: delete published events older than the retention window, a batch
/// per statement (short locks, no long transaction), until none is left to delete.
async fn prune(pool: &PgPool, retention_secs: u64, batch: i64) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let mut deleted = 0;
    loop {
        let n = outbox::prune(&mut conn, retention_secs as f64, batch.max(1)).await?;
        deleted += n;
        if n < batch.max(1) as u64 {
            break;
        }
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            retention_secs,
            "outbox retention: deleted old events"
        );
    }
    Ok(())
}

/// One pass over the audit log: delete status history older than `days`, oldest first, a
/// batch per transaction (the only writer allowed to delete history rows).
async fn prune_history(pool: &PgPool, days: u32, batch: i64) -> anyhow::Result<()> {
    let mut deleted = 0;
    loop {
        let mut tx = pool.begin().await?;
        let n = history::prune(&mut tx, days, batch.max(1)).await?;
        tx.commit().await?;
        deleted += n;
        if n < batch.max(1) as u64 {
            break;
        }
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            days,
            "history retention: deleted old status history"
        );
    }
    Ok(())
}

/// At takeover: make sure no seq the broker has seen will name a second event.
///
/// Normally the database has every event the broker has seen. After a failover to a
/// standby that had not received the latest commits (asynchronous replication), it does
/// not: the broker's marker names a seq past the published cursor that this database has
/// no event for, or — once writers here have numbered that far again — a different event
/// (the marker records the last sent event's outbox id and commit time). Publishing the
/// new events under those seqs would give two different events one id, and consumers
/// that dedupe by id would drop the second. So everything after the cursor is renumbered
/// after the marker, loudly (docs/scaling.md, "What a deployment must promise us").
async fn check_marker(
    pool: &PgPool,
    publisher: &EventPublisher,
    conn: &lapin::Connection,
) -> anyhow::Result<()> {
    let Some(marker) = publisher.sent_high_water(conn).await? else {
        return Ok(());
    };
    let mut db = pool.acquire().await?;
    let cursor = outbox::published_seq(&mut db).await?;
    if marker.seq <= cursor {
        return Ok(());
    }
    let known = outbox::identity(&mut db, marker.seq).await?;
    let same = match (known, marker.event) {
        (Some(known), Some(sent)) => known == sent,
        // A marker from before events had identities: only its seq can be checked.
        (_, None) => marker.seq <= outbox::seq_high_water(&mut db).await?,
        (None, Some(_)) => false,
    };
    if same {
        return Ok(());
    }
    let mut tx = sqlx::Acquire::begin(&mut *db).await?;
    let (first, moved) = outbox::renumber_unpublished(&mut tx, marker.seq).await?;
    tx.commit().await?;
    tracing::error!(
        sent_through = marker.seq,
        published_through = cursor,
        renumbered = moved,
        first_new_seq = first,
        "the broker has seen event seqs this database does not hold the same events for (a \
         failover lost commits?); not reusing them: the unpublished events are renumbered \
         after {}",
        marker.seq
    );
    counter!(metrics::RELAY_SEQ_CONFLICTS).increment(1);
    Ok(())
}

/// Publish what the outbox holds after `sent_through` (until shutdown), a batch at a time,
/// until a batch comes back smaller than `batch` — rows committed after it notify the
/// listener, which calls this again.
/// Two batches are in flight: the next one is read and queued while the broker confirms
/// the previous one, and the published cursor moves past a batch only once every event of
/// it, and of the batches before it, is confirmed. Returns how many were published.
/// Every statement runs on `lock`, the session holding the relay lock.
async fn drain(
    lock: &mut PgConnection,
    publisher: &EventPublisher,
    batch: i64,
    sent_through: &mut i64,
    shutdown: &CancellationToken,
) -> anyhow::Result<usize> {
    let mut in_flight: Option<(i64, usize, Instant, Sending<'_>, Vec<Span>)> = None;
    let mut published = 0;
    let mut settle_only = false;
    loop {
        // Everything runs on the lock's session: a statement that succeeds there shows the
        // session, and so the lock, is still held (a standby has not taken over).
        let mut next = Vec::new();
        if !shutdown.is_cancelled() && !settle_only {
            next = outbox::between(&mut *lock, *sent_through, None, batch)
                .await
                .context("relay lock session")?;
            // Fewer than a batch: the outbox had nothing more when it was read, and
            // whatever commits after that notifies the listener. The next pass only
            // settles this batch; no round to find the outbox empty.
            settle_only = (next.len() as i64) < batch;
        }
        let queued = match next.last() {
            Some(e) => {
                let (last, count) = (e.seq, next.len());
                let spans = publish_spans(&next);
                Some((last, count, Instant::now(), publisher.send(next), spans))
            }
            None => None,
        };
        if let Some((through, count, queued_at, confirms, spans)) = in_flight.take() {
            confirms.await.context("publishing events")?;
            // Each event's span ends with the broker's confirm.
            drop(spans);
            histogram!(metrics::RELAY_CONFIRM).record(queued_at.elapsed().as_secs_f64());
            outbox::mark_published(&mut *lock, through).await?;
            counter!(metrics::RELAY_PUBLISHED).increment(count as u64);
            published += count;
            tracing::debug!(events = count, through, "published");
        }
        let Some((last, count, queued_at, confirms, spans)) = queued else {
            return Ok(published);
        };
        *sent_through = last;
        in_flight = Some((last, count, queued_at, confirms, spans));
    }
}

/// When spans are exported, one per event, child of the request that caused it (the
/// outbox row's `traceparent`); none otherwise.
fn publish_spans(events: &[Event]) -> Vec<Span> {
    if !crate::telemetry::exporting() {
        return Vec::new();
    }
    events
        .iter()
        .map(|e| {
            let span = tracing::info_span!(
                parent: None,
                "publish event",
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.message.id = e.seq,
                messaging.rabbitmq.destination.routing_key = %e.routing_key,
                event_type = %e.event_type,
                order_id = e.order_id.map(tracing::field::display),
            );
            crate::trace::continue_from(&span, e.traceparent.as_deref());
            span
        })
        .collect()
}
