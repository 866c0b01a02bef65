//! Bulk operations, worked through in chunks. The first step snapshots the selection into
//! `bulk_chunks`; every later step applies the next chunk through the same [`Batch`] as
//! single changes and records each item's outcome, the counters and a `bulk.progress`
//! event in the chunk's transaction. A worker that dies mid-bulk loses at most the chunk
//! in hand: the redelivered job resumes at the first item without an outcome.

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

/// Outcome of one step.
#[derive(Debug)]
pub enum Step {
    /// A chunk (or the snapshot) was committed; there is more to do.
    Progressed(BulkOp),
    /// The bulk reached a terminal status.
    Finished(BulkOp),
}

/// Why a bulk's stored request cannot be worked: a defect, the bulk fails.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("unreadable bulk request: {0}")]
    Unreadable(String),
}

async fn progress(conn: &mut PgConnection, op: &BulkOp) -> sqlx::Result<()> {
    let events = [NewEvent::bulk_progress(op.id, op.view())];
    let changes = Changes {
        events: &events,
        ..Changes::default()
    };
    changes::write(conn, &changes).await
}

/// Do the next step of bulk `job` in one transaction.
#[tracing::instrument(skip_all, fields(bulk_id = ?job.bulk_id), err)]
pub async fn step(pool: &PgPool, job: &Job, chunk: i64) -> Result<Step, StepError> {
    let bulk_id = job
        .bulk_id
        .ok_or_else(|| StepError::Unreadable("bulk job without a bulk".into()))?;
    let mut tx = pool.begin().await?;
    let Some(op) = bulk::lock(&mut tx, bulk_id).await? else {
        return Err(StepError::Unreadable(
            "the bulk operation does not exist".into(),
        ));
    };
    if op.status.is_terminal() {
        return Ok(Step::Finished(op));
    }
    let request: ChangeCommand = serde_json::from_value(op.request.clone())
        .map_err(|e| StepError::Unreadable(e.to_string()))?;
    let selection: Selection = serde_json::from_value(op.selection.clone())
        .map_err(|e| StepError::Unreadable(e.to_string()))?;

    let step = if op.cancel_requested {
        bulk::skip_pending(&mut tx, bulk_id, "cancelled").await?;
        Step::Finished(bulk::finish(&mut tx, bulk_id, BulkStatus::Cancelled, None).await?)
    } else if op.status == BulkStatus::Queued {
        let total = bulk::snapshot(&mut tx, bulk_id, &selection, chunk).await?;
        tracing::info!(total, mode = %op.mode, "bulk started");
        let op = bulk::get(&mut tx, bulk_id).await?.expect("locked above");
        if total == 0 {
            Step::Finished(bulk::finish(&mut tx, bulk_id, BulkStatus::Completed, None).await?)
        } else {
            Step::Progressed(op)
        }
    } else if op.mode == BulkMode::Atomic {
        Step::Finished(atomic(&mut tx, &op, job, &request).await?)
    } else {
        if let Some(next) = bulk::next_chunk(&mut tx, bulk_id).await? {
            match apply_chunk(&mut tx, &op, job, &request, &next.items, Some(next.chunk)).await {
                Ok(op) => Step::Progressed(op),
                Err(e) if !crate::store::is_transient(&e) => {
                    // Some order cannot be written: apply this chunk order by order so
                    // only that one fails and every other order that may move, moves.
                    tracing::warn!(error = %e, "bulk chunk failed; isolating its orders");
                    drop(tx);
                    let latest = isolate(pool, &op, job, &request, &next).await?;
                    count_orders(&op, &latest);
                    return Ok(Step::Progressed(latest));
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            Step::Finished(bulk::finish(&mut tx, bulk_id, BulkStatus::Completed, None).await?)
        }
    };
    let (Step::Progressed(latest) | Step::Finished(latest)) = &step;
    progress(&mut tx, latest).await?;
    tx.commit().await?;
    count_orders(&op, latest);
    Ok(step)
}

/// Count, for `/metrics`, the orders a committed step moved to an outcome.
fn count_orders(before: &BulkOp, after: &BulkOp) {
    let moved = [
        (ItemOutcome::Applied, after.applied - before.applied),
        (ItemOutcome::Rejected, after.rejected - before.rejected),
        (ItemOutcome::Failed, after.failed - before.failed),
        (ItemOutcome::Skipped, after.skipped - before.skipped),
    ];
    for (outcome, n) in moved {
        if n > 0 {
            ::metrics::counter!(crate::metrics::BULK_ORDERS, "outcome" => outcome.as_str())
                .increment(n as u64);
        }
    }
}

/// Apply `items` (best effort): every order that may move, moves; the rest get their reason.
/// With `done`, these are the last items of that chunk.
async fn apply_chunk(
    conn: &mut PgConnection,
    op: &BulkOp,
    job: &Job,
    request: &ChangeCommand,
    items: &[(i32, Uuid)],
    done: Option<i32>,
) -> sqlx::Result<BulkOp> {
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
    batch.write(conn, &[]).await?;
    bulk::record(conn, op.id, &outcomes, done).await
}

/// Apply a chunk's items one per transaction; an item that cannot be written is recorded
/// `failed`. The chunk is finished in the last transaction, with the progress event.
async fn isolate(
    pool: &PgPool,
    op: &BulkOp,
    job: &Job,
    request: &ChangeCommand,
    chunk: &bulk::Chunk,
) -> sqlx::Result<BulkOp> {
    // From here on some of the chunk's items may have outcomes: a resumed bulk checks them.
    let mut tx = pool.begin().await?;
    bulk::mark_partial(&mut tx, op.id, chunk.chunk).await?;
    tx.commit().await?;
    for item in &chunk.items {
        let mut tx = pool.begin().await?;
        bulk::lock(&mut tx, op.id).await?;
        match apply_chunk(&mut tx, op, job, request, std::slice::from_ref(item), None).await {
            Ok(_) => tx.commit().await?,
            Err(e) if crate::store::is_transient(&e) => return Err(e),
            Err(e) => {
                drop(tx);
                tracing::error!(order_id = %item.1, error = %e, "order cannot be written; recorded as failed");
                let mut tx = pool.begin().await?;
                let failed = ItemRecord {
                    position: item.0,
                    order_id: item.1,
                    outcome: ItemOutcome::Failed,
                    code: Some("apply_failed".into()),
                    from: None,
                    to: None,
                };
                bulk::record(&mut tx, op.id, &[failed], None).await?;
                tx.commit().await?;
            }
        }
    }
    let mut tx = pool.begin().await?;
    bulk::lock(&mut tx, op.id).await?;
    let latest = bulk::record(&mut tx, op.id, &[], Some(chunk.chunk)).await?;
    progress(&mut tx, &latest).await?;
    tx.commit().await?;
    Ok(latest)
}

/// Apply every item or none: one transaction; any rejection writes no change at all.
async fn atomic(
    conn: &mut PgConnection,
    op: &BulkOp,
    job: &Job,
    request: &ChangeCommand,
) -> sqlx::Result<BulkOp> {
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
        batch.write(conn, &[]).await?;
        bulk::record(conn, op.id, &outcomes, None).await?;
        return bulk::finish(conn, op.id, BulkStatus::Completed, None).await;
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
    bulk::finish(conn, op.id, BulkStatus::Rejected, Some(&error)).await
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
