//! The outbox relay: publishes committed outbox rows to `orderflow.events`.
//!
//! One relay is active at a time (a session-level Postgres advisory lock); others wait as
//! hot standbys and take over when its session ends. It first republishes rows that were
//! sequenced but not confirmed (a previous relay died mid-flight: same seqs, so consumers
//! dedupe), then sequences new rows in id order a batch at a time, commits the seqs,
//! publishes them — the next batch is queued while the broker confirms the previous one —
//! and moves the published cursor (`outbox_cursor`) past each fully confirmed batch.

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
/// It finds new rows through their partial index only (`outbox_unsequenced_idx`), in id
/// order. Left to itself the planner often prefers a bitmap scan plus a sort, or on a
/// young table a sequential scan. Both cost as much as the rows sequenced since the last
/// vacuum: a bitmap scan visits every index entry and heap page of a row that *was*
/// unsequenced, and never marks those entries dead, so the next round visits them again.
/// Autovacuum comes after a fifth of the table has changed, so on a large outbox that is
/// millions of rows a round. An ordered index scan stops after the batch, and marks dead
/// entries as it passes them, so the next round skips them. Measured on the 2-core
/// development box (docs/architecture.md, "Where a change spends its time"): a round of
/// ~10 rows took 1.5–2.7 ms and grew with the table; with the index scan it stays near
/// 0.2 ms.
///
/// And it plans every statement for the outbox as it is now (`force_custom_plan`). The
/// session lives as long as the relay holds the lock, and after five runs a prepared
/// statement would keep one generic plan made for the table as it was then. Made on an
/// empty outbox, that plan joined the batch to the table by walking the whole table and
/// running the batch's subquery again for every row: when a bulk operation then wrote
/// 100,000 events, one round of 2,000 took 120 s (`auto_explain`, `orderflow-bench bulk`),
/// and nothing was published meanwhile.
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
    let floor = seq_floor(pool, &publisher, &conn).await?;
    let poll = Duration::from_millis(cfg.relay_poll_ms);
    let mut retention =
        tokio::time::interval(Duration::from_secs(cfg.retention_interval_secs.max(1)));
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut position = Position {
        sent_through: outbox::published_seq(&mut *lock)
            .await
            .context("relay lock session")?,
        leftovers: true,
    };
    loop {
        drain(
            lock,
            &publisher,
            cfg.relay_batch_size,
            floor,
            &mut position,
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

/// At takeover: the lowest seq new events may follow. Normally the database knows every
/// seq the broker has seen. After a failover to a standby that had not received the latest
/// commits (asynchronous replication), the broker's marker can be ahead: those seqs were
/// published for events this database no longer numbers, and reusing them would give two
/// different events one id — consumers that dedupe by id would drop the second. They are
/// not reused: new events are numbered after the marker, loudly (docs/scaling.md).
async fn seq_floor(
    pool: &PgPool,
    publisher: &EventPublisher,
    conn: &lapin::Connection,
) -> anyhow::Result<i64> {
    let known = outbox::seq_high_water(&mut *pool.acquire().await?).await?;
    let sent = publisher.sent_high_water(conn).await?.unwrap_or(0);
    if sent > known {
        tracing::error!(
            from = known + 1,
            through = sent,
            "the broker has seen event seqs this database does not know (a failover lost \
             commits?); not reusing them: new events are numbered after {sent}"
        );
        counter!(metrics::RELAY_SEQ_CONFLICTS).increment(1);
    }
    Ok(sent.max(known))
}

/// Publish what the outbox holds (until shutdown): first what is sequenced but unconfirmed,
/// then new rows, sequenced a batch at a time (their seqs committed before they are sent),
/// until a batch comes back smaller than `batch` — rows committed after it notify the
/// listener, which calls this again.
/// Two batches are in flight: the next one is sequenced and queued while the broker
/// confirms the previous one, and the published cursor moves past a batch only once every
/// event of it, and of the batches before it, is confirmed. Returns how many were published.
/// Every statement runs on `lock`, the session holding the relay lock.
async fn drain(
    lock: &mut PgConnection,
    publisher: &EventPublisher,
    batch: i64,
    floor: i64,
    position: &mut Position,
    shutdown: &CancellationToken,
) -> anyhow::Result<usize> {
    let Position {
        sent_through,
        leftovers,
    } = position;
    let mut in_flight: Option<(i64, usize, Instant, Sending<'_>, Vec<Span>)> = None;
    let mut published = 0;
    let mut settle_only = false;
    loop {
        // Everything runs on the lock's session: a statement that succeeds there shows the
        // session, and so the lock, is still held (a standby has not taken over).
        let mut next = Vec::new();
        if !shutdown.is_cancelled() && !settle_only {
            if *leftovers {
                next = outbox::sequenced_after(&mut *lock, *sent_through, batch)
                    .await
                    .context("relay lock session")?;
                *leftovers = !next.is_empty();
            }
            if next.is_empty() {
                // One statement, committed when it returns: the seqs are durable before
                // any event leaves.
                next = outbox::sequence(&mut *lock, batch, floor)
                    .await
                    .context("relay lock session")?;
                // Fewer than a batch: the outbox had nothing more when it was read, and
                // whatever commits after that notifies the listener. The next pass only
                // settles this batch; no round to find the outbox empty.
                settle_only = (next.len() as i64) < batch;
            }
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

/// Where the active relay stands, kept across its drains (it alone moves the cursor while
/// it holds the lock).
struct Position {
    /// The last seq sent: the published cursor, or past it while a batch is in flight.
    sent_through: i64,
    /// Rows sequenced but not confirmed can only be left by a relay that died: they are
    /// all after the cursor, and are republished, once, at takeover, before anything new
    /// is sequenced.
    leftovers: bool,
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
