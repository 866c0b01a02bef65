//! An event on its way out: written as an outbox row in the change's transaction, given a
//! `seq` by the relay, published to `orderflow.events`, streamed by the SSE bridge. The
//! JSON is the same everywhere (API.md, "Live events").

use crate::domain::{Actor, OrderStatus};
use crate::store::orders::Order;
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

pub const ORDER_CREATED: &str = "order.created";
pub const ORDER_STATUS_CHANGED: &str = "order.status_changed";
pub const BULK_PROGRESS: &str = "bulk.progress";

/// An event to be written to the outbox (it has no `seq` yet).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub order_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub event_type: &'static str,
    pub routing_key: String,
    pub payload: Value,
}

/// Who changed what, for the event and the audit row alike.
pub struct Change<'a> {
    pub action: &'a str,
    pub from: Option<OrderStatus>,
    pub actor: Actor,
    pub reason: Option<&'a str>,
    pub job_id: Option<Uuid>,
    pub bulk_id: Option<Uuid>,
}

impl NewEvent {
    /// The event announcing `order` as it is after `change` (creation when `from` is None).
    pub fn order(order: &Order, change: &Change<'_>) -> Self {
        let (event_type, routing_key) = match change.from {
            None => (ORDER_CREATED, ORDER_CREATED.to_owned()),
            Some(_) => (
                ORDER_STATUS_CHANGED,
                format!("order.status.{}", order.status),
            ),
        };
        NewEvent {
            order_id: Some(order.id),
            customer_id: Some(order.customer_id),
            event_type,
            routing_key,
            payload: json!({
                "type": event_type,
                "order_id": order.id,
                "customer_id": order.customer_id,
                "from": change.from,
                "to": order.status,
                "action": change.action,
                "payment_status": order.payment_status,
                "version": order.version,
                "actor": { "id": change.actor.id, "role": change.actor.role },
                "reason": change.reason,
                "job_id": change.job_id,
                "bulk_id": change.bulk_id,
                "at": order.updated_at,
            }),
        }
    }
}

impl NewEvent {
    /// A bulk operation's progress (for admins and support on SSE, and downstream).
    pub fn bulk_progress(bulk: &crate::store::bulk::BulkOp) -> Self {
        let mut payload = bulk.view();
        payload["type"] = Value::from(BULK_PROGRESS);
        payload["bulk_id"] = serde_json::json!(bulk.id);
        payload["at"] = serde_json::json!(Utc::now());
        NewEvent {
            order_id: None,
            customer_id: None,
            event_type: BULK_PROGRESS,
            routing_key: BULK_PROGRESS.to_owned(),
            payload,
        }
    }
}

/// A sequenced event: what is published and streamed. `data` is the JSON text, with `seq`.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub event_type: String,
    pub routing_key: String,
    pub order_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    /// The order's status after the change, for stream filters.
    pub to: Option<String>,
    pub data: String,
}

impl Event {
    /// Build the wire event from a stored payload and its seq.
    pub fn sequenced(seq: i64, routing_key: String, mut payload: Value) -> Self {
        if let Value::Object(map) = &mut payload {
            map.insert("seq".into(), Value::from(seq));
        }
        Self::from_value(seq, routing_key, &payload)
    }

    /// Parse a published message body (the bridge's side). None if it is not an event.
    pub fn parse(routing_key: &str, body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let seq = value.get("seq")?.as_i64()?;
        Some(Self::from_value(seq, routing_key.to_owned(), &value))
    }

    fn from_value(seq: i64, routing_key: String, value: &Value) -> Self {
        let uuid = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        };
        Event {
            seq,
            event_type: value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            routing_key,
            order_id: uuid("order_id"),
            customer_id: uuid("customer_id"),
            to: value.get("to").and_then(Value::as_str).map(str::to_owned),
            data: value.to_string(),
        }
    }
}
