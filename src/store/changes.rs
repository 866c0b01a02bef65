//! The one write of order changes: the orders' new states, their audit rows, their outbox
//! rows and the outcomes of the jobs behind them, in one statement (one round trip to the
//! database, whatever the batch holds).
//!
//! Every part is optional: an empty part writes nothing. The outbox's statement trigger
//! still wakes the relay then, which finds nothing new; every caller but an all-rejected
//! batch writes events anyway.
//!
//! # Events are numbered here, and written last
//!
//! Outbox rows get their `seq` in the insert: the next numbers after `outbox_head`, whose
//! one row the statement updates — after the rest of the statement's writes, so the lock
//! is taken as late as it can be — and which stays locked until the transaction ends. So
//! seqs become visible in order and without gaps: the next writer numbers after this
//! one's commit, or reuses its numbers if it rolled back. The relay only has to read
//! what is after its published cursor (docs/storage.md, "Outbox").
//!
//! Because the lock is held to the end, writing events must be the last thing a
//! transaction locks anything for: a transaction that waited for a row lock while holding
//! the head could wait for one that waits for the head. Every caller writes its events in
//! its last statement before `COMMIT` (a bulk chunk holds its events back until after its
//! counters, see [`crate::orders::apply::Batch::write_holding_events`]).

use crate::domain::{JobStatus, OrderChange, OrderStatus, Role};
use crate::event::NewEvent;
use crate::store::jobs::Finished;
use crate::store::orders::{Order, bounds};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// What one transaction changed, to be written together.
#[derive(Default)]
pub struct Changes<'a> {
    /// When the changes happened: the orders' `updated_at` and the audit rows' `created_at`.
    pub at: DateTime<Utc>,
    /// Orders whose status, payment status or version changed (each once, as it is now).
    pub states: &'a [&'a Order],
    /// One audit row per change, in the order they were applied.
    pub history: &'a [OrderChange],
    /// Outbox rows, in the order they must be published; numbered as they are written,
    /// which must be the transaction's last lock (see the module's docs).
    pub events: &'a [NewEvent],
    /// Terminal outcomes of the jobs applied (claimed by [`crate::store::jobs::claim`], or a
    /// bulk job's own).
    pub outcomes: &'a [Finished],
}

impl Changes<'_> {
    /// Nothing to write.
    fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.history.is_empty()
            && self.events.is_empty()
            && self.outcomes.is_empty()
    }
}

/// Write `changes` in the caller's transaction (nothing at all when they are empty).
pub async fn write(conn: &mut PgConnection, changes: &Changes<'_>) -> sqlx::Result<()> {
    fn col<'a, S, T>(rows: &'a [S], f: impl Fn(&'a S) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    if changes.is_empty() {
        return Ok(());
    }
    let Changes {
        at,
        states,
        history,
        events,
        outcomes,
    } = changes;
    // The id range lets the planner walk the primary key for a long id list (bulk chunks
    // are consecutive in id order); no states, no range: nothing matches.
    let ids = col(states, |o| o.id);
    let (low, high) = bounds(&ids).unzip();
    sqlx::query!(
        "with states as (
             update orders o set status = v.status, payment_status = v.payment, version = v.version, updated_at = $5
             from unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[]) as v(id, status, payment, version)
             where o.id = v.id and o.id between $6 and $7
             returning 1
         ), history as (
             insert into order_status_history
               (order_id, from_status, to_status, action, actor_id, actor_role, reason, job_id, bulk_id, version, created_at)
             select *, $5 from unnest($8::uuid[], $9::text[], $10::text[], $11::text[], $12::uuid[], $13::text[],
                                      $14::text[], $15::uuid[], $16::uuid[], $17::bigint[])
             returning 1
         ), outcomes as (
             update jobs j set status = v.status, result = v.result, error = v.error,
                    attempts = j.attempts + (j.status <> 'running')::int, updated_at = now()
             from unnest($18::uuid[], $19::text[], $20::jsonb[], $21::jsonb[]) as v(id, status, result, error)
             where j.id = v.id
             returning 1
         ), head as (
             -- The counts only make the other writes run first (see the module's docs).
             update outbox_head set last_seq = last_seq + $29
             where $29 > 0
               and (select count(*) from states) + (select count(*) from history)
                   + (select count(*) from outcomes) >= 0
             returning last_seq - $29 as base
         )
         insert into outbox (seq, order_id, customer_id, event_type, routing_key, to_status, traceparent, payload)
         select head.base + t.ord, order_id, customer_id, event_type, routing_key, to_status, traceparent, payload::json
         from head,
              unnest($22::uuid[], $23::uuid[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[])
              with ordinality as t(order_id, customer_id, event_type, routing_key, to_status, traceparent, payload, ord)
         order by ord",
        &ids,
        &col(states, |o| o.status.as_str()) as &[&str],
        &col(states, |o| o.payment_status.as_str()) as &[&str],
        &col(states, |o| o.version),
        at,
        low,
        high,
        &col(history, |c| c.order_id),
        &col(history, |c| c.from) as &[Option<OrderStatus>],
        &col(history, |c| c.to) as &[OrderStatus],
        &col(history, |c| c.action) as &[&str],
        &col(history, |c| c.actor.id),
        &col(history, |c| c.actor.role) as &[Role],
        &col(history, |c| c.reason.as_deref()) as &[Option<&str>],
        &col(history, |c| c.job_id) as &[Option<Uuid>],
        &col(history, |c| c.bulk_id) as &[Option<Uuid>],
        &col(history, |c| c.version),
        &col(outcomes, |d| d.id),
        &col(outcomes, |d| d.status) as &[JobStatus],
        &col(outcomes, |d| d.result.as_ref()) as &[Option<&Value>],
        &col(outcomes, |d| d.error.as_ref()) as &[Option<&Value>],
        &col(events, |e| e.order_id) as &[Option<Uuid>],
        &col(events, |e| e.customer_id) as &[Option<Uuid>],
        &col(events, |e| e.event_type) as &[&str],
        &col(events, |e| e.routing_key.as_str()) as &[&str],
        &col(events, |e| e.to_status) as &[Option<&str>],
        &col(events, |e| e.traceparent.as_deref()) as &[Option<&str>],
        &col(events, |e| e.payload.as_str()) as &[&str],
        events.len() as i64,
    )
    .execute(conn)
    .await?;
    Ok(())
}
