//! A committed change of one order — or its creation — as plain data: the one record the
//! audit-history row and the outbox event are both made from, so the two cannot disagree.

use super::{Actor, OrderStatus, PaymentStatus};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The action name history and events record for an order's creation.
pub const CREATE: &str = "create";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderChange {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// An [`Action`](super::Action)'s wire name, or [`CREATE`].
    pub action: &'static str,
    /// None for a creation.
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub payment_status: PaymentStatus,
    /// The order's version after the change.
    pub version: i64,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub reason: Option<String>,
    pub job_id: Option<Uuid>,
    pub bulk_id: Option<Uuid>,
    /// The W3C trace context of the request behind the change, carried to its event.
    pub traceparent: Option<String>,
}
