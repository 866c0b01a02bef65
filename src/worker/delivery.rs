//! A job delivery as the worker sees it: each job of the message (a message may carry the
//! jobs of several submissions, see [`JobMessage`]) with what the headers say about its
//! history (attempt number, broker redeliveries) and the delivery it came in.

use crate::broker::{JobMessage, JobRef};
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use std::sync::Arc;
use uuid::Uuid;

/// Our attempt counter, carried from one delay queue to the next.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Why a message was parked in the dead queue.
pub const REASON_HEADER: &str = "x-reason";
/// The order's customer, set by the ingress, for per-customer rate limits.
pub const CUSTOMER_HEADER: &str = "customer_id";
/// Set by quorum queues on every redelivery.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// One job of a delivery.
pub struct JobDelivery {
    pub job_id: Uuid,
    /// 1 for the first attempt; bumped each time the job goes through a delay queue.
    pub attempt: u32,
    /// How often the broker delivered this very message before (consumer crashes).
    pub redeliveries: u32,
    pub customer_id: Option<Uuid>,
    /// The submitter waits for a reply (on the delivery's `reply_to`).
    pub reply: bool,
    /// The delivery this job came in, shared with the other jobs of its message: it is
    /// settled once all of them are.
    pub delivery: Arc<Delivery>,
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

/// A delivery read into its jobs, or given back with why it cannot be read.
pub type Parsed = Result<Vec<JobDelivery>, Box<(Delivery, String)>>;

impl JobDelivery {
    /// Read a delivery into its jobs; `Err` carries the delivery back with why it is
    /// unreadable.
    pub fn parse(delivery: Delivery) -> Parsed {
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
        // A message of the first form carries its customer in a header, and wants a reply
        // when it has a `reply_to`.
        let customer_header = match header(&delivery, CUSTOMER_HEADER) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok()),
            _ => None,
        };
        let replies = delivery.properties.reply_to().is_some();
        let first_form = msg.first_form;
        let delivery = Arc::new(delivery);
        Ok(msg
            .jobs
            .into_iter()
            .map(|job| JobDelivery {
                job_id: job.id,
                attempt,
                redeliveries,
                customer_id: job.customer_id.or(customer_header),
                reply: replies && (job.reply || first_form),
                delivery: delivery.clone(),
            })
            .collect())
    }

    /// The message carrying this job alone (for its delay queue or the dead queue).
    pub fn alone(&self) -> Vec<u8> {
        let msg = JobMessage::one(JobRef {
            id: self.job_id,
            customer_id: self.customer_id,
            reply: self.reply,
        });
        serde_json::to_vec(&msg).expect("job message serializes")
    }
}
