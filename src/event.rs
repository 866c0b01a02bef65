//! An event on its way out: written as an outbox row in the change's transaction and
//! numbered (`seq`) as it commits, published by the relay to `orderflow.events`, streamed by the SSE bridge. The
//! JSON is the same everywhere (API.md, "Live events").

use crate::domain::{OrderChange, OrderStatus, PaymentStatus, Role};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use uuid::Uuid;

pub const ORDER_CREATED: &str = "order.created";
pub const ORDER_STATUS_CHANGED: &str = "order.status_changed";
pub const BULK_PROGRESS: &str = "bulk.progress";

/// An event to be written to the outbox (it has no `seq` yet). The payload is JSON text,
/// serialized once here and never parsed again on its way out.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub order_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub event_type: &'static str,
    pub routing_key: String,
    /// The order's status after the change (order events).
    pub to_status: Option<&'static str>,
    /// The W3C trace context of the request that caused the event.
    pub traceparent: Option<String>,
    pub payload: String,
}

/// The payload of `order.created` and `order.status_changed` (API.md, "Live events").
#[derive(Serialize)]
struct OrderPayload<'a> {
    #[serde(rename = "type")]
    event_type: &'static str,
    order_id: Uuid,
    customer_id: Uuid,
    from: Option<OrderStatus>,
    to: OrderStatus,
    action: &'a str,
    payment_status: PaymentStatus,
    version: i64,
    actor: ActorPayload,
    reason: Option<&'a str>,
    job_id: Option<Uuid>,
    bulk_id: Option<Uuid>,
    at: DateTime<Utc>,
}

#[derive(Serialize)]
struct ActorPayload {
    id: Uuid,
    role: Role,
}

impl NewEvent {
    /// The event announcing `change` (`order.created` when it has no `from`).
    pub fn order(change: &OrderChange) -> Self {
        let (event_type, routing_key) = match change.from {
            None => (ORDER_CREATED, ORDER_CREATED.to_owned()),
            Some(_) => (ORDER_STATUS_CHANGED, format!("order.status.{}", change.to)),
        };
        let payload = OrderPayload {
            event_type,
            order_id: change.order_id,
            customer_id: change.customer_id,
            from: change.from,
            to: change.to,
            action: change.action,
            payment_status: change.payment_status,
            version: change.version,
            actor: ActorPayload {
                id: change.actor.id,
                role: change.actor.role,
            },
            reason: change.reason.as_deref(),
            job_id: change.job_id,
            bulk_id: change.bulk_id,
            at: change.at,
        };
        NewEvent {
            order_id: Some(change.order_id),
            customer_id: Some(change.customer_id),
            event_type,
            routing_key,
            to_status: Some(change.to.as_str()),
            traceparent: change.traceparent.clone(),
            payload: serde_json::to_string(&payload).expect("an event payload serializes"),
        }
    }

    /// A bulk operation's progress (for admins and support on SSE, and downstream):
    /// `view` is the bulk as `GET /orders/bulk/{id}` shows it.
    pub fn bulk_progress(bulk_id: Uuid, view: Value) -> Self {
        let mut payload = view;
        payload["type"] = Value::from(BULK_PROGRESS);
        payload["bulk_id"] = serde_json::json!(bulk_id);
        payload["at"] = serde_json::json!(Utc::now());
        NewEvent {
            order_id: None,
            customer_id: None,
            event_type: BULK_PROGRESS,
            routing_key: BULK_PROGRESS.to_owned(),
            to_status: None,
            traceparent: None,
            payload: payload.to_string(),
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
    /// The W3C trace context of the request that caused the event (AMQP header only).
    pub traceparent: Option<String>,
    pub data: String,
    /// Which outbox row this is, when read from the outbox (the relay's side); None when
    /// parsed off the broker.
    pub stored: Option<EventIdentity>,
}

/// Which event a seq named when it was sent: the outbox row's id and commit time. After a
/// failover that lost commits, the same seq (and even the same id: sequences are not
/// transactional) can name another event; both together cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventIdentity {
    pub id: i64,
    pub created_at: DateTime<Utc>,
}

/// The fields of a published event the bridge routes by; the rest stays text.
#[derive(Deserialize)]
struct Head<'a> {
    seq: i64,
    #[serde(rename = "type", borrow)]
    event_type: Option<Cow<'a, str>>,
    order_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
}

/// The wire JSON of a stored payload (a JSON object's text): `seq` spliced in as its
/// first member, the rest as stored.
pub fn data_with_seq(seq: i64, payload: &str) -> String {
    let rest = payload.trim_start().strip_prefix('{').unwrap_or("}");
    let separator = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{{\"seq\":{seq}{separator}{rest}")
}

impl Event {
    /// Parse a published message body (the bridge's side). None if it is not an event.
    pub fn parse(routing_key: &str, body: &[u8]) -> Option<Self> {
        let data = std::str::from_utf8(body).ok()?;
        let head: Head<'_> = serde_json::from_str(data).ok()?;
        Some(Event {
            seq: head.seq,
            event_type: head.event_type.as_deref().unwrap_or("unknown").to_owned(),
            routing_key: routing_key.to_owned(),
            order_id: head.order_id,
            customer_id: head.customer_id,
            to: head.to.map(Cow::into_owned),
            traceparent: None,
            data: data.to_owned(),
            stored: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_spliced_into_the_stored_payload_and_parsed_back() {
        let order_id = Uuid::now_v7();
        let data = data_with_seq(
            42,
            &format!(
                r#"{{"to": "confirmed", "type": "order.status_changed", "order_id": "{order_id}"}}"#
            ),
        );
        let value: Value = serde_json::from_str(&data).expect("valid JSON");
        assert_eq!(value["seq"], 42);
        assert_eq!(value["to"], "confirmed");
        let parsed = Event::parse("order.status.confirmed", data.as_bytes()).expect("an event");
        assert_eq!(
            (
                parsed.seq,
                parsed.event_type.as_str(),
                parsed.order_id,
                parsed.to.as_deref()
            ),
            (42, ORDER_STATUS_CHANGED, Some(order_id), Some("confirmed"))
        );
        assert_eq!(data_with_seq(7, "{}"), r#"{"seq":7}"#);
    }

    #[test]
    fn a_body_without_seq_is_not_an_event() {
        assert!(Event::parse("order.created", br#"{"type":"order.created"}"#).is_none());
        assert!(Event::parse("order.created", b"not json").is_none());
    }
}
