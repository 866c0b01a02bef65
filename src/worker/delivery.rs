//! A job delivery as the worker sees it: the job id plus what the headers say about its
//! history (attempt number, broker redeliveries, the customer for rate limiting).

use crate::broker::JobMessage;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use uuid::Uuid;

/// Our attempt counter, carried from one delay queue to the next.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Why a message was parked in the dead queue.
pub const REASON_HEADER: &str = "x-reason";
/// The order's customer, set by the ingress, for per-customer rate limits.
pub const CUSTOMER_HEADER: &str = "customer_id";
/// Set by quorum queues on every redelivery.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

pub struct JobDelivery {
    pub job_id: Uuid,
    /// 1 for the first attempt; bumped each time the job goes through a delay queue.
    pub attempt: u32,
    /// How often the broker delivered this very message before (consumer crashes).
    pub redeliveries: u32,
    pub customer_id: Option<Uuid>,
    pub delivery: Delivery,
}

fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(name)
}

fn as_u32(v: &AMQPValue) -> Option<u32> {
    match v {
        AMQPValue::ShortShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        _ => None,
    }
}

impl JobDelivery {
    /// Read a delivery; `Err` carries the delivery back with why it is unreadable.
    pub fn parse(delivery: Delivery) -> Result<Self, Box<(Delivery, String)>> {
        let msg: JobMessage = match serde_json::from_slice(&delivery.data) {
            Ok(m) => m,
            Err(e) => {
                return Err(Box::new((
                    delivery,
                    format!("unparseable job message: {e}"),
                )));
            }
        };
        let attempt = header(&delivery, ATTEMPT_HEADER)
            .and_then(as_u32)
            .unwrap_or(1)
            .max(1);
        let redeliveries = header(&delivery, DELIVERY_COUNT_HEADER)
            .and_then(as_u32)
            .unwrap_or(0);
        let customer_id = match header(&delivery, CUSTOMER_HEADER) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok()),
            _ => None,
        };
        Ok(JobDelivery {
            job_id: msg.job_id,
            attempt,
            redeliveries,
            customer_id,
            delivery,
        })
    }
}
