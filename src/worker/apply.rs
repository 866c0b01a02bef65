//! Apply a batch of change-status jobs in ONE transaction: claim each job once, lock the
//! orders (id order) and their tracked stock (sku order), run the state machine in delivery
//! order, and write orders, stock, history, outbox and job outcomes together.

use crate::domain::machine::{self, ChangeRequest, OrderContext, StockEffect, StockLine};
use crate::domain::{Actor, Rejection};
use crate::event::{Change, NewEvent};
use crate::job::ChangeStatus;
use crate::store::orders::{Order, OrderItem};
use crate::store::{history, inventory, jobs, orders, outbox};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What became of one job of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Rejected(Rejection),
    /// The job's stored request cannot be read: a defect, parked as `dead`.
    Dead(String),
    /// Already finished (a redelivery) or unknown: nothing was changed.
    Duplicate,
    /// Not applied: the worker sent it to a delay queue (or the dead queue) after a failure.
    Deferred,
}

/// Per job id, in delivery order.
pub type Report = Vec<(Uuid, Outcome)>;

/// Apply `job_ids` (delivery order; repeats allowed) and commit. On error nothing is written.
#[tracing::instrument(skip_all, fields(jobs = job_ids.len()), err)]
pub async fn apply_batch(pool: &PgPool, job_ids: &[Uuid]) -> sqlx::Result<Report> {
    let mut tx = pool.begin().await?;
    let report = apply_in(&mut tx, job_ids).await?;
    tx.commit().await?;
    Ok(report)
}

async fn apply_in(conn: &mut PgConnection, job_ids: &[Uuid]) -> sqlx::Result<Report> {
    let mut unique = Vec::with_capacity(job_ids.len());
    let mut seen = HashSet::new();
    for id in job_ids {
        if seen.insert(*id) {
            unique.push(*id);
        }
    }
    let mut claimed: HashMap<Uuid, jobs::Job> =
        jobs::claim(conn, &unique).await?.into_iter().map(|j| (j.id, j)).collect();

    let mut order_ids: Vec<Uuid> = claimed.values().filter_map(|j| j.order_id).collect();
    order_ids.sort();
    order_ids.dedup();
    let mut orders: HashMap<Uuid, Order> =
        orders::lock_many(conn, &order_ids).await?.into_iter().map(|o| (o.id, o)).collect();
    let mut items: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
    for item in orders::items(conn, &order_ids).await? {
        items.entry(item.order_id).or_default().push(item);
    }
    let mut skus: Vec<String> = items.values().flatten().map(|i| i.sku.clone()).collect();
    skus.sort();
    skus.dedup();
    // (on_hand, reserved) of tracked skus, kept current as the batch applies changes.
    let mut stock: HashMap<String, (i64, i64)> = inventory::lock_many(conn, &skus)
        .await?
        .into_iter()
        .map(|s| (s.sku, (s.on_hand, s.reserved)))
        .collect();

    let mut report = Vec::with_capacity(job_ids.len());
    for id in job_ids {
        let Some(job) = claimed.remove(id) else {
            report.push((*id, Outcome::Duplicate));
            continue;
        };
        let outcome = apply_one(conn, &job, &mut orders, &items, &mut stock).await?;
        let (status, result, error) = match &outcome {
            Outcome::Succeeded => {
                let order = &orders[&job.order_id.expect("change_status jobs have an order")];
                ("succeeded", Some(json!({ "order_id": order.id, "status": order.status, "version": order.version })), None)
            }
            Outcome::Rejected(r) => ("rejected", None, Some(json!({ "code": r.code, "message": r.message }))),
            Outcome::Dead(why) => ("dead", None, Some(json!({ "code": "invalid_job", "message": why }))),
            Outcome::Duplicate | Outcome::Deferred => unreachable!("apply_one decides, it does not defer"),
        };
        jobs::finish(conn, job.id, status, result.as_ref(), error.as_ref()).await?;
        report.push((*id, outcome));
    }
    Ok(report)
}

#[tracing::instrument(skip_all, fields(job_id = %job.id, order_id = ?job.order_id))]
async fn apply_one(
    conn: &mut PgConnection,
    job: &jobs::Job,
    orders: &mut HashMap<Uuid, Order>,
    items: &HashMap<Uuid, Vec<OrderItem>>,
    stock: &mut HashMap<String, (i64, i64)>,
) -> sqlx::Result<Outcome> {
    let request: ChangeStatus = match serde_json::from_value(job.payload.clone()) {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::Dead(format!("unreadable job payload: {e}"))),
    };
    let Some(order) = job.order_id.and_then(|id| orders.get(&id)) else {
        return Ok(Outcome::Dead("the job's order does not exist".into()));
    };
    let actor = Actor { id: job.actor_id, role: job.actor_role };
    let action = match (request.action, request.to) {
        (Some(action), _) => action,
        (None, Some(to)) => match machine::action_for_target(order.status, to) {
            Ok(action) => action,
            Err(r) => return Ok(Outcome::Rejected(r)),
        },
        (None, None) => return Ok(Outcome::Dead("job names neither action nor target status".into())),
    };
    let order_items = items.get(&order.id).map(Vec::as_slice).unwrap_or_default();
    let lines: Vec<StockLine> = order_items
        .iter()
        .map(|i| StockLine {
            sku: i.sku.clone(),
            quantity: i.quantity.into(),
            available: stock.get(&i.sku).map(|(on_hand, reserved)| on_hand - reserved),
        })
        .collect();
    let ctx = OrderContext {
        customer_id: order.customer_id,
        status: order.status,
        payment_status: order.payment_status,
        version: order.version,
        stock: &lines,
    };
    let req = ChangeRequest {
        expected_version: request.expected_version,
        tracking_number: request.tracking_number.as_deref(),
    };
    let decision = match machine::decide(&ctx, &actor, action, &req) {
        Ok(d) => d,
        Err(r) => return Ok(Outcome::Rejected(r)),
    };

    // Stock first: (reserved delta, on_hand delta) per tracked sku.
    let deltas: Vec<(String, i64, i64)> = order_items
        .iter()
        .filter(|i| stock.contains_key(&i.sku))
        .filter_map(|i| {
            let q = i64::from(i.quantity);
            match decision.stock {
                StockEffect::None => None,
                StockEffect::Reserve => Some((i.sku.clone(), q, 0)),
                StockEffect::Release => Some((i.sku.clone(), -q, 0)),
                StockEffect::Consume => Some((i.sku.clone(), -q, -q)),
            }
        })
        .collect();
    inventory::adjust(conn, &deltas).await?;
    for (sku, reserved, on_hand) in &deltas {
        let entry = stock.get_mut(sku).expect("filtered to tracked skus");
        entry.1 += reserved;
        entry.0 += on_hand;
    }

    let updated = orders::update_state(conn, order.id, decision.to, decision.payment_status).await?;
    let change = Change {
        action: action.as_str(),
        from: Some(decision.from),
        actor,
        reason: request.reason.as_deref(),
        job_id: Some(job.id),
        bulk_id: job.bulk_id,
    };
    history::insert(
        conn,
        &history::NewEntry {
            order_id: updated.id,
            from: Some(decision.from.as_str()),
            to: decision.to.as_str(),
            action: action.as_str(),
            actor_id: actor.id,
            actor_role: actor.role,
            reason: change.reason,
            job_id: change.job_id,
            bulk_id: change.bulk_id,
            version: updated.version,
        },
    )
    .await?;
    outbox::insert(conn, &NewEvent::order(&updated, &change)).await?;
    tracing::debug!(action = %action, from = %decision.from, to = %decision.to, version = updated.version, "applied");
    orders.insert(updated.id, updated);
    Ok(Outcome::Succeeded)
}
