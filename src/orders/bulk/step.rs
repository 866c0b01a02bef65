//! Bulk operations, worked through in chunks. The first [`control`] step snapshots the
//! selection into `bulk_chunks`. Then chunks are claimed and applied, several at once, each
//! in its own transaction ([`apply_next`]) through the same [`Batch`] as single changes,
//! which records each item's outcome, the counters and a `bulk.progress` event with the
//! chunk. When no chunk is left (or a cancel was asked for), [`control`] ends the bulk. A
//! worker that dies mid-bulk loses at most the chunks in hand: the redelivered job resumes
//! with the chunks not done, at the first item without an outcome.
//!
//! Locks are always taken in one order — chunk rows, then the bulk's row, then the outbox
//! head (events are written last, see [`changes`]) — so chunks applied at once, their
//! isolation, the control step and single changes cannot deadlock one another.

use crate::domain::{Actor, BulkMode, BulkStatus, ItemOutcome};
use crate::event::NewEvent;
use crate::orders::apply::{Batch, Origin};
use crate::orders::command::ChangeCommand;
use crate::store::bulk::{self, BulkOp, ItemRecord, Selection};
use crate::store::changes::{self, Changes};
use crate::store::jobs::Job;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What the bulk needs after a [`control`] step.
#[derive(Debug)]
pub enum Control {
    /// Chunks are left: apply them with [`apply_next`], this change to each order.
    Chunks(Box<ChangeCommand>),
    /// The bulk reached a terminal status.
    Finished(BulkOp),
}

/// Outcome of one [`apply_next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lane {
    /// A chunk was applied (or finished by another transaction while this one isolated
    /// its orders): there may be more.
    Worked,
    /// No chunk is left to claim, or a cancel was asked for: back to [`control`].
    Drained,
}

/// Why a bulk's stored request cannot be worked: a defect, the bulk fails.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("unreadable bulk request: {0}")]
    Unreadable(String),
}

/// The transaction's events, held back so far, then the bulk's progress: its last write.
async fn progress(
    conn: &mut PgConnection,
    op: &BulkOp,
    mut events: Vec<NewEvent>,
) -> sqlx::Result<()> {
    events.push(NewEvent::bulk_progress(op.id, op.view()));
    write_events(conn, &events).await
}

/// Write the events a chunk held back: the transaction's last write ([`changes`]).
async fn write_events(conn: &mut PgConnection, events: &[NewEvent]) -> sqlx::Result<()> {
    let changes = Changes {
        events,
        ..Changes::default()
    };
    changes::write(conn, &changes).await
}

fn bulk_id(job: &Job) -> Result<Uuid, StepError> {
    job.bulk_id
        .ok_or_else(|| StepError::Unreadable("bulk job without a bulk".into()))
}

/// Start, cancel or end bulk `job` in one transaction, with every chunk not done locked
/// (waiting for those being applied): its snapshot when it is queued (with the whole of an
/// atomic bulk), the skipped items and the end when a cancel was asked for, and the end of
/// a best-effort bulk whose chunks are all done. Otherwise it writes nothing and hands the
/// chunks to [`apply_next`].
#[tracing::instrument(skip_all, fields(bulk_id = ?job.bulk_id), err)]
pub async fn control(pool: &PgPool, job: &Job, chunk: i64) -> Result<Control, StepError> {
    let bulk_id = bulk_id(job)?;
    let mut tx = pool.begin().await?;
    let chunks_left = bulk::lock_chunks_left(&mut tx, bulk_id).await?;
    let Some(op) = bulk::lock(&mut tx, bulk_id).await? else {
        return Err(StepError::Unreadable(
            "the bulk operation does not exist".into(),
        ));
    };
    if op.status.is_terminal() {
        return Ok(Control::Finished(op));
    }
    let request: ChangeCommand = serde_json::from_value(op.request.clone())
        .map_err(|e| StepError::Unreadable(e.to_string()))?;
    let selection: Selection = serde_json::from_value(op.selection.clone())
        .map_err(|e| StepError::Unreadable(e.to_string()))?;

    let mut events = Vec::new();
    let latest = if op.cancel_requested {
        bulk::skip_pending(&mut tx, bulk_id, "cancelled").await?;
        bulk::finish(&mut tx, bulk_id, BulkStatus::Cancelled, None).await?
    } else if op.status == BulkStatus::Queued {
        let total = bulk::snapshot(&mut tx, bulk_id, &selection, chunk).await?;
        tracing::info!(total, mode = %op.mode, "bulk started");
        if total == 0 {
            bulk::finish(&mut tx, bulk_id, BulkStatus::Completed, None).await?
        } else if op.mode == BulkMode::Atomic {
            // All or nothing: in the snapshot's transaction, never in chunks.
            let latest;
            (latest, events) = atomic(&mut tx, &op, job, &request).await?;
            latest
        } else {
            bulk::get(&mut tx, bulk_id).await?.expect("locked above")
        }
    } else if op.mode == BulkMode::Atomic {
        let latest;
        (latest, events) = atomic(&mut tx, &op, job, &request).await?;
        latest
    } else if chunks_left == 0 {
        bulk::finish(&mut tx, bulk_id, BulkStatus::Completed, None).await?
    } else {
        return Ok(Control::Chunks(Box::new(request)));
    };
    progress(&mut tx, &latest, events).await?;
    tx.commit().await?;
    count_orders(moved_between(&op, &latest));
    Ok(if latest.status.is_terminal() {
        Control::Finished(latest)
    } else {
        Control::Chunks(Box::new(request))
    })
}

/// Claim the next chunk of bulk `job` that no other transaction holds and apply it,
/// `request` to each of its orders, in one transaction with its outcomes, the counters and
/// a progress event. A chunk that cannot be written whole is applied order by order
/// instead, so that only the order that cannot be written fails.
#[tracing::instrument(skip_all, fields(bulk_id = ?job.bulk_id), err)]
pub async fn apply_next(
    pool: &PgPool,
    job: &Job,
    request: &ChangeCommand,
) -> Result<Lane, StepError> {
    let bulk_id = bulk_id(job)?;
    let mut tx = pool.begin().await?;
    let Some(next) = bulk::claim_chunk(&mut tx, bulk_id).await? else {
        return Ok(Lane::Drained);
    };
    let Some(op) = bulk::get(&mut tx, bulk_id).await? else {
        return Err(StepError::Unreadable(
            "the bulk operation does not exist".into(),
        ));
    };
    if op.status != BulkStatus::Running || op.cancel_requested {
        return Ok(Lane::Drained);
    }
    match apply_chunk(&mut tx, &op, job, request, &next.items, Some(next.chunk)).await {
        Ok((latest, ..)) if latest.cancel_requested => {
            // A cancel committed before this chunk's counters took the bulk's row: it may
            // have been answered already, and no chunk commits after that. Nothing of
            // this one is kept (a cancel that comes later waits for this commit).
            tracing::debug!(
                chunk = next.chunk,
                "bulk cancelled; chunk in hand rolled back"
            );
            return Ok(Lane::Drained);
        }
        Ok((latest, outcomes, events)) => {
            progress(&mut tx, &latest, events).await?;
            tx.commit().await?;
            count_orders(tally(&outcomes));
            tracing::debug!(
                chunk = next.chunk,
                applied = latest.applied,
                rejected = latest.rejected,
                pending = latest.pending(),
                "bulk chunk committed"
            );
        }
        Err(e) if !crate::store::is_transient(&e) => {
            // Some order cannot be written: apply this chunk order by order so only that
            // one fails and every other order that may move, moves.
            tracing::warn!(error = %e, chunk = next.chunk, "bulk chunk failed; isolating its orders");
            drop(tx);
            isolate(pool, &op, job, request, &next).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Lane::Worked)
}

/// Orders that reached each outcome.
type Moved = [(ItemOutcome, i32); 4];

fn moved_between(before: &BulkOp, after: &BulkOp) -> Moved {
    [
        (ItemOutcome::Applied, after.applied - before.applied),
        (ItemOutcome::Rejected, after.rejected - before.rejected),
        (ItemOutcome::Failed, after.failed - before.failed),
        (ItemOutcome::Skipped, after.skipped - before.skipped),
    ]
}

fn tally(outcomes: &[ItemRecord]) -> Moved {
    [
        ItemOutcome::Applied,
        ItemOutcome::Rejected,
        ItemOutcome::Failed,
        ItemOutcome::Skipped,
    ]
    .map(|o| (o, outcomes.iter().filter(|i| i.outcome == o).count() as i32))
}

/// Count, for `/metrics`, the orders a committed transaction moved to an outcome.
fn count_orders(moved: Moved) {
    for (outcome, n) in moved {
        if n > 0 {
            ::metrics::counter!(crate::metrics::BULK_ORDERS, "outcome" => outcome.as_str())
                .increment(n as u64);
        }
    }
}

/// Apply `items` (best effort): every order that may move, moves; the rest get their reason.
/// With `done`, these are the last items of that chunk. Returns the bulk as updated, the
/// outcomes, and the events, for the caller to write last.
async fn apply_chunk(
    conn: &mut PgConnection,
    op: &BulkOp,
    job: &Job,
    request: &ChangeCommand,
    items: &[(i32, Uuid)],
    done: Option<i32>,
) -> sqlx::Result<(BulkOp, Vec<ItemRecord>, Vec<NewEvent>)> {
    let ids: Vec<Uuid> = items.iter().map(|(_, id)| *id).collect();
    let mut batch = Batch::load(conn, &ids, true).await?;
    let actor = Actor {
        id: op.actor_id,
        role: op.actor_role,
    };
    let outcomes: Vec<ItemRecord> = items
        .iter()
        .map(|(position, order_id)| {
            judge(&mut batch, *position, *order_id, actor, request, job, op.id)
        })
        .collect();
    let events = batch.write_holding_events(conn).await?;
    let latest = bulk::record(conn, op.id, &outcomes, done).await?;
    Ok((latest, outcomes, events))
}

/// Whether `item` of `chunk` still needs applying, with the chunk locked for the rest of
/// the transaction: another transaction may have claimed the chunk in between (see
/// [`isolate`]).
async fn still_pending(
    conn: &mut PgConnection,
    bulk_id: Uuid,
    chunk: i32,
    item: (i32, Uuid),
) -> sqlx::Result<bool> {
    Ok(bulk::lock_chunk(conn, bulk_id, chunk).await?
        && bulk::item_pending(conn, bulk_id, item.0, item.1).await?)
}

/// Apply a chunk's items one per transaction; an item that cannot be written is recorded
/// `failed`. The chunk is finished in the last transaction, with the progress event.
///
/// The chunk is not held between these transactions: another one may claim it (and, if
/// it fails the same way, isolate it too). Each transaction therefore locks the chunk and
/// applies its item only if it is still pending.
async fn isolate(
    pool: &PgPool,
    op: &BulkOp,
    job: &Job,
    request: &ChangeCommand,
    chunk: &bulk::Chunk,
) -> sqlx::Result<()> {
    // From here on some of the chunk's items may have outcomes: whoever claims it checks them.
    let mut tx = pool.begin().await?;
    if !bulk::lock_chunk(&mut tx, op.id, chunk.chunk).await? {
        return Ok(());
    }
    bulk::mark_partial(&mut tx, op.id, chunk.chunk).await?;
    tx.commit().await?;
    for &item in &chunk.items {
        let mut tx = pool.begin().await?;
        if !still_pending(&mut tx, op.id, chunk.chunk, item).await? {
            continue;
        }
        match apply_chunk(&mut tx, op, job, request, &[item], None).await {
            // Cancelled meanwhile (see `apply_next`): the rest is skipped by `control`.
            Ok((latest, ..)) if latest.cancel_requested => return Ok(()),
            Ok((_, outcomes, events)) => {
                write_events(&mut tx, &events).await?;
                tx.commit().await?;
                count_orders(tally(&outcomes));
            }
            Err(e) if crate::store::is_transient(&e) => return Err(e),
            Err(e) => {
                drop(tx);
                tracing::error!(order_id = %item.1, error = %e, "order cannot be written; recorded as failed");
                let mut tx = pool.begin().await?;
                if !still_pending(&mut tx, op.id, chunk.chunk, item).await? {
                    continue;
                }
                let failed = [ItemRecord {
                    position: item.0,
                    order_id: item.1,
                    outcome: ItemOutcome::Failed,
                    code: Some("apply_failed".into()),
                    from: None,
                    to: None,
                }];
                bulk::record(&mut tx, op.id, &failed, None).await?;
                tx.commit().await?;
                count_orders(tally(&failed));
            }
        }
    }
    let mut tx = pool.begin().await?;
    if bulk::lock_chunk(&mut tx, op.id, chunk.chunk).await? {
        let latest = bulk::record(&mut tx, op.id, &[], Some(chunk.chunk)).await?;
        progress(&mut tx, &latest, Vec::new()).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Apply every item or none: one transaction; any rejection writes no change at all.
/// Returns the bulk as updated and the events, for the caller to write last.
async fn atomic(
    conn: &mut PgConnection,
    op: &BulkOp,
    job: &Job,
    request: &ChangeCommand,
) -> sqlx::Result<(BulkOp, Vec<NewEvent>)> {
    let items = bulk::all_pending_items(conn, op.id).await?;
    let ids: Vec<Uuid> = items.iter().map(|(_, id)| *id).collect();
    let mut batch = Batch::load(conn, &ids, true).await?;
    let actor = Actor {
        id: op.actor_id,
        role: op.actor_role,
    };
    let mut outcomes: Vec<ItemRecord> = items
        .iter()
        .map(|(position, order_id)| {
            judge(&mut batch, *position, *order_id, actor, request, job, op.id)
        })
        .collect();
    let rejected = outcomes
        .iter()
        .filter(|o| o.outcome == ItemOutcome::Rejected)
        .count();
    if rejected == 0 {
        let events = batch.write_holding_events(conn).await?;
        bulk::record(conn, op.id, &outcomes, None).await?;
        let latest = bulk::finish(conn, op.id, BulkStatus::Completed, None).await?;
        return Ok((latest, events));
    }
    // Nothing is written: the would-be changes are reported as skipped, with the reason.
    drop(batch);
    for o in outcomes
        .iter_mut()
        .filter(|o| o.outcome == ItemOutcome::Applied)
    {
        o.outcome = ItemOutcome::Skipped;
        o.code = Some("atomic_aborted".into());
        o.to = o.from;
    }
    bulk::record(conn, op.id, &outcomes, None).await?;
    let error = json!({
        "code": "atomic_rejected",
        "message": format!("{rejected} of {} orders would be rejected; nothing was changed", outcomes.len()),
    });
    let latest = bulk::finish(conn, op.id, BulkStatus::Rejected, Some(&error)).await?;
    Ok((latest, Vec::new()))
}

fn judge(
    batch: &mut Batch,
    position: i32,
    order_id: Uuid,
    actor: Actor,
    request: &ChangeCommand,
    job: &Job,
    bulk_id: Uuid,
) -> ItemRecord {
    let Some(from) = batch.order(order_id).map(|o| o.status) else {
        // An id of an explicit selection without an order.
        return ItemRecord {
            position,
            order_id,
            outcome: ItemOutcome::Rejected,
            code: Some(bulk::NOT_FOUND.into()),
            from: None,
            to: None,
        };
    };
    let from = Some(from);
    let origin = Origin {
        job_id: Some(job.id),
        bulk_id: Some(bulk_id),
        traceparent: job.traceparent.as_deref(),
    };
    match batch.apply(order_id, actor, request, origin) {
        Ok(applied) => ItemRecord {
            position,
            order_id,
            outcome: ItemOutcome::Applied,
            code: None,
            from,
            to: Some(applied.to),
        },
        Err(r) => ItemRecord {
            position,
            order_id,
            outcome: ItemOutcome::Rejected,
            code: Some(r.code.as_str().to_owned()),
            to: from,
            from,
        },
    }
}
