//! The one apply path. A [`Batch`] locks a set of orders (id order) and their tracked
//! stock (sku order), runs the state machine on each requested change in turn — later
//! changes see earlier ones — and writes every effect set-wise in the caller's
//! transaction: orders, stock, history, outbox. Single jobs ([`apply_batch`]) and bulk
//! chunks ([`super::bulk`]) both go through it; bulk previews run it without writing.

use super::command::{ChangeCommand, Target};
use crate::domain::machine::{self, ChangeRequest, OrderContext, StockEffect, StockLine};
use crate::domain::{Action, Actor, JobStatus, OrderChange, OrderStatus, RejectCode, Rejection};
use crate::event::NewEvent;
use crate::store::changes::{self, Changes};
use crate::store::orders::{Order, OrderItem};
use crate::store::{inventory, jobs, orders};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// An accepted change, as applied in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub action: Action,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub version: i64,
}

/// Where a change comes from, for its audit row and its event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    pub job_id: Option<Uuid>,
    pub bulk_id: Option<Uuid>,
    /// The W3C trace context of the request behind the change, carried to its event.
    pub traceparent: Option<&'a str>,
}

/// Orders loaded (and usually locked) for a set of changes, with the effects so far.
pub struct Batch {
    now: DateTime<Utc>,
    orders: HashMap<Uuid, Order>,
    items: HashMap<Uuid, Vec<OrderItem>>,
    /// (on_hand, reserved) of tracked skus, kept current as changes apply.
    stock: HashMap<String, (i64, i64)>,
    changed: Vec<Uuid>,
    stock_deltas: BTreeMap<String, (i64, i64)>,
    /// (order, line, reserved units) of lines whose reservation changed.
    reservations: Vec<(Uuid, i32, i32)>,
    /// Every change applied so far, in order: each becomes a history row and an event.
    applied: Vec<OrderChange>,
}

impl Batch {
    /// Load `order_ids` with their items and stock. With `lock`, rows are locked for update
    /// (orders in id order, then skus in sku order: concurrent batches cannot deadlock).
    pub async fn load(
        conn: &mut PgConnection,
        order_ids: &[Uuid],
        lock: bool,
    ) -> sqlx::Result<Self> {
        let mut ids = order_ids.to_vec();
        ids.sort();
        ids.dedup();
        let now: DateTime<Utc> = sqlx::query_scalar("select now()")
            .fetch_one(&mut *conn)
            .await?;
        let orders: HashMap<Uuid, Order> = orders::load_many(conn, &ids, lock)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        let mut items: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
        for item in orders::items(conn, &ids).await? {
            items.entry(item.order_id).or_default().push(item);
        }
        let mut skus: Vec<String> = items.values().flatten().map(|i| i.sku.clone()).collect();
        skus.sort();
        skus.dedup();
        let stock = inventory::load_many(conn, &skus, lock)
            .await?
            .into_iter()
            .map(|s| (s.sku, (s.on_hand, s.reserved)))
            .collect();
        Ok(Batch {
            now,
            orders,
            items,
            stock,
            changed: Vec::new(),
            stock_deltas: BTreeMap::new(),
            reservations: Vec::new(),
            applied: Vec::new(),
        })
    }

    pub fn order(&self, id: Uuid) -> Option<&Order> {
        self.orders.get(&id)
    }

    /// The order's lines with the stock they draw on, as it is now in this batch.
    fn stock_lines(&self, order_id: Uuid) -> Vec<StockLine> {
        self.items
            .get(&order_id)
            .into_iter()
            .flatten()
            .map(|i| StockLine {
                sku: i.sku.clone(),
                quantity: i.quantity.into(),
                available: self
                    .stock
                    .get(&i.sku)
                    .map(|(on_hand, reserved)| on_hand - reserved),
            })
            .collect()
    }

    /// Every action judged for `actor` on this order as it is now (`valid-actions`).
    pub fn valid_actions(
        &self,
        order_id: Uuid,
        actor: &Actor,
    ) -> Option<Vec<machine::ActionAvailability>> {
        let order = self.orders.get(&order_id)?;
        let lines = self.stock_lines(order_id);
        Some(machine::valid_actions(&context(order, &lines), actor))
    }

    /// Judge `command` by `actor` on the order as it is now in this batch, and on success
    /// record the change: later changes in the batch see its effects.
    pub fn apply(
        &mut self,
        order_id: Uuid,
        actor: Actor,
        command: &ChangeCommand,
        origin: Origin<'_>,
    ) -> Result<Applied, Rejection> {
        let order = self.orders.get(&order_id).ok_or_else(|| {
            Rejection::new(RejectCode::InvalidTransition, "the order does not exist")
        })?;
        let action = match command.target {
            Target::Action(action) => action,
            Target::To(to) => machine::action_for_target(order.status, to)?,
        };
        let lines = self.stock_lines(order_id);
        let ctx = context(order, &lines);
        let req = ChangeRequest {
            expected_version: command.expected_version,
            tracking_number: command.tracking_number.as_deref(),
        };
        let decision = machine::decide(&ctx, &actor, action, &req)?;

        // Stock moves per line: confirm reserves tracked lines; release and shipping move
        // exactly what that line reserved (nothing, if its sku was not tracked then).
        for item in self.items.get_mut(&order_id).into_iter().flatten() {
            let Some(level) = self.stock.get_mut(&item.sku) else {
                continue;
            };
            let held = i64::from(item.reserved);
            let (reserved, on_hand, now_held) = match decision.stock {
                StockEffect::None => continue,
                StockEffect::Reserve => (i64::from(item.quantity) - held, 0, item.quantity),
                StockEffect::Release => (-held, 0, 0),
                StockEffect::Consume => (-held, -held, 0),
            };
            if now_held == item.reserved {
                continue;
            }
            item.reserved = now_held;
            self.reservations.push((order_id, item.line, now_held));
            level.0 += on_hand;
            level.1 += reserved;
            let delta = self.stock_deltas.entry(item.sku.clone()).or_default();
            delta.0 += reserved;
            delta.1 += on_hand;
        }

        let order = self.orders.get_mut(&order_id).expect("checked above");
        order.status = decision.to;
        order.payment_status = decision.payment_status;
        order.version += 1;
        order.updated_at = self.now;
        self.changed.push(order_id);
        self.applied.push(OrderChange {
            order_id,
            customer_id: order.customer_id,
            action: action.as_str(),
            from: Some(decision.from),
            to: decision.to,
            payment_status: decision.payment_status,
            version: order.version,
            at: self.now,
            actor,
            reason: command.reason.clone(),
            job_id: origin.job_id,
            bulk_id: origin.bulk_id,
            traceparent: origin.traceparent.map(str::to_owned),
        });
        Ok(Applied {
            action,
            from: decision.from,
            to: decision.to,
            version: order.version,
        })
    }

    /// Write every recorded effect in the caller's transaction, set-wise, with the
    /// `outcomes` of the jobs behind them: stock moves (when there are any), then orders,
    /// history, outbox and outcomes in one statement. The events are numbered there, so
    /// this must be the transaction's last write ([`changes`]).
    pub async fn write(
        self,
        conn: &mut PgConnection,
        outcomes: &[jobs::Finished],
    ) -> sqlx::Result<()> {
        self.write_parts(conn, outcomes, true).await.map(drop)
    }

    /// [`Batch::write`] without the events: they are returned, for the caller to write
    /// last ([`changes::write`]), after what it still has to lock — a bulk chunk's
    /// counters, under the bulk's row, which another chunk holds while it writes its own
    /// events.
    pub async fn write_holding_events(
        self,
        conn: &mut PgConnection,
    ) -> sqlx::Result<Vec<NewEvent>> {
        self.write_parts(conn, &[], false).await
    }

    /// Write the effects, and the events with them when `with_events`; returns the events
    /// not written.
    async fn write_parts(
        self,
        conn: &mut PgConnection,
        outcomes: &[jobs::Finished],
        with_events: bool,
    ) -> sqlx::Result<Vec<NewEvent>> {
        let deltas: Vec<(String, i64, i64)> = self
            .stock_deltas
            .into_iter()
            .map(|(sku, (r, o))| (sku, r, o))
            .collect();
        inventory::adjust(conn, &deltas).await?;
        orders::store_reservations(conn, &self.reservations).await?;
        let mut seen = HashSet::new();
        let states: Vec<&Order> = self
            .changed
            .iter()
            .filter(|id| seen.insert(**id))
            .map(|id| &self.orders[id])
            .collect();
        let events: Vec<NewEvent> = self.applied.iter().map(NewEvent::order).collect();
        let changes = Changes {
            at: self.now,
            states: &states,
            history: &self.applied,
            events: if with_events { &events } else { &[] },
            outcomes,
        };
        changes::write(conn, &changes).await?;
        Ok(if with_events { Vec::new() } else { events })
    }
}

fn context<'a>(order: &Order, lines: &'a [StockLine]) -> OrderContext<'a> {
    OrderContext {
        customer_id: order.customer_id,
        status: order.status,
        payment_status: order.payment_status,
        version: order.version,
        stock: lines,
    }
}

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

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Rejected(_) => "rejected",
            Outcome::Dead(_) => "dead",
            Outcome::Duplicate => "duplicate",
            Outcome::Deferred => "deferred",
        }
    }
}

/// Per job id, in delivery order.
pub type Report = Vec<(Uuid, Outcome)>;

/// Apply change-status jobs (delivery order; repeats allowed) in one transaction: claim
/// each job once (an unclaimable job is a duplicate delivery and changes nothing), apply,
/// record every outcome, commit. On error nothing is written.
#[tracing::instrument(skip_all, fields(jobs = job_ids.len()), err)]
pub async fn apply_batch(pool: &PgPool, job_ids: &[Uuid]) -> sqlx::Result<Report> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    let mut unique = job_ids.to_vec();
    unique.sort();
    unique.dedup();
    let mut claimed: HashMap<Uuid, jobs::Job> = jobs::claim(&mut tx, &unique)
        .await?
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    let order_ids: Vec<Uuid> = claimed.values().filter_map(|j| j.order_id).collect();
    let mut batch = Batch::load(&mut tx, &order_ids, true).await?;

    let mut report = Vec::with_capacity(job_ids.len());
    let mut finished = Vec::with_capacity(claimed.len());
    let mut accepted_at = Vec::with_capacity(claimed.len());
    // Exported, each job's span ends with the commit that makes its change true.
    let mut job_spans = Vec::new();
    for id in job_ids {
        let Some(job) = claimed.remove(id) else {
            report.push((*id, Outcome::Duplicate));
            continue;
        };
        let span = job_span(&job);
        let (outcome, done) = span.in_scope(|| batch.apply_job(&job));
        if !span.is_none() {
            span.record("outcome", outcome.as_str());
            job_spans.push(span);
        }
        finished.push(done);
        accepted_at.push(job.created_at);
        report.push((job.id, outcome));
    }
    batch.write(&mut tx, &finished).await?;
    tx.commit().await?;
    drop(job_spans);
    record_metrics(&report, &accepted_at, started);
    Ok(report)
}

/// One job's span in the batch (when spans are exported). A batch applies the changes of
/// many requests, so the batch's span cannot be in each of their traces: every job gets a
/// span of its own, child of the request that submitted it (the job's stored
/// `traceparent`) and linked to the batch's span — one trace per change, and the batch
/// one click away.
fn job_span(job: &jobs::Job) -> tracing::Span {
    crate::telemetry::hop(|| {
        let span = tracing::info_span!(
            parent: None,
            "apply job",
            otel.kind = "consumer",
            job_id = %job.id,
            order_id = job.order_id.map(tracing::field::display),
            outcome = tracing::field::Empty,
        );
        crate::trace::continue_from(&span, job.traceparent.as_deref());
        span.follows_from(tracing::Span::current());
        span
    })
}

/// What a committed batch adds to `/metrics`.
fn record_metrics(report: &Report, accepted_at: &[DateTime<Utc>], started: std::time::Instant) {
    let now = Utc::now();
    use crate::metrics::{BATCH_DURATION, BATCH_SIZE, JOB_WAIT, JOBS_APPLIED, JOBS_REJECTED};
    use ::metrics::{counter, histogram};
    histogram!(BATCH_DURATION).record(started.elapsed().as_secs_f64());
    histogram!(BATCH_SIZE).record(report.len() as f64);
    for (_, outcome) in report {
        match outcome {
            Outcome::Succeeded => counter!(JOBS_APPLIED).increment(1),
            Outcome::Rejected(r) => counter!(JOBS_REJECTED, "code" => r.code.as_str()).increment(1),
            _ => {}
        }
    }
    for at in accepted_at {
        let waited = (now - *at).to_std().unwrap_or_default();
        histogram!(JOB_WAIT).record(waited.as_secs_f64());
    }
}

impl Batch {
    /// Apply one claimed change-status job: its outcome, and the job's terminal record.
    fn apply_job(&mut self, job: &jobs::Job) -> (Outcome, jobs::Finished) {
        let finished = |status, result, error| jobs::Finished {
            id: job.id,
            status,
            result,
            error,
        };
        let command = serde_json::from_value::<ChangeCommand>(job.payload.clone());
        let why = match (command, job.order_id) {
            (Err(e), _) => format!("unreadable job payload: {e}"),
            (Ok(_), None) => "a change-status job without an order".into(),
            (Ok(command), Some(order_id)) => {
                let actor = Actor {
                    id: job.actor_id,
                    role: job.actor_role,
                };
                let origin = Origin {
                    job_id: Some(job.id),
                    bulk_id: job.bulk_id,
                    traceparent: job.traceparent.as_deref(),
                };
                return match self.apply(order_id, actor, &command, origin) {
                    Ok(applied) => {
                        tracing::debug!(job_id = %job.id, %order_id, action = %applied.action, to = %applied.to, "applied");
                        let result = json!({ "order_id": order_id, "status": applied.to, "version": applied.version });
                        (
                            Outcome::Succeeded,
                            finished(JobStatus::Succeeded, Some(result), None),
                        )
                    }
                    Err(r) => {
                        let error = json!({ "code": r.code, "message": r.message });
                        (
                            Outcome::Rejected(r),
                            finished(JobStatus::Rejected, None, Some(error)),
                        )
                    }
                };
            }
        };
        let error = json!({ "code": "invalid_job", "message": why });
        (
            Outcome::Dead(why),
            finished(JobStatus::Dead, None, Some(error)),
        )
    }
}
