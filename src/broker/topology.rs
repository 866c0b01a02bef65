//! Every exchange and queue orderflow uses, with the namespace prefix, declared
//! idempotently by every role at start (and again after every reconnect).
//!
//! Jobs: `orderflow.jobs` is a quorum queue with a delivery limit, so a message that keeps
//! crashing its consumers cannot loop forever: past the limit the broker dead-letters it
//! to `orderflow.jobs.dead`. Failed jobs wait out their backoff in one delay queue per
//! attempt (`orderflow.jobs.retry.<n>`): TTL, then dead-lettered back to the work queue.
//! One queue per step means a long delay never holds up a short one.

use crate::config::CommonConfig;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

/// How failed jobs are retried (part of the topology: delay queues are declared from it).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Deliveries a job gets before it is parked as dead (1 = no retry).
    pub max_attempts: u32,
    /// The first backoff step; each next one is four times longer.
    pub base_delay: Duration,
    /// The broker's own ceiling on redeliveries of one message (crash loops).
    pub delivery_limit: u32,
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (attempt counts from 1).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        self.base_delay * 4u32.saturating_pow(attempt.saturating_sub(1)).min(1 << 20)
    }

    /// The delay steps that have a queue: after attempts 1 .. max_attempts - 1.
    pub fn steps(&self) -> impl Iterator<Item = u32> {
        1..self.max_attempts.max(1)
    }
}

/// Broker names under one namespace (`ORDERFLOW_NAMESPACE`; empty gives API.md's names),
/// with the retry policy the job queues are declared with.
#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
    /// Topic exchange of published order events.
    pub events: String,
    /// Work queue of change-status jobs.
    pub jobs: String,
    /// Where jobs that cannot succeed are parked, with the reason in headers.
    pub jobs_dead: String,
    /// Work queue of bulk operations (one message per bulk; its own consumers and limits,
    /// so a large bulk never delays single changes).
    pub bulk: String,
    /// One message, the highest `seq` the active relay has sent (max-length 1): the
    /// broker's memory of which event ids are used, checked at every relay takeover.
    pub relay_marker: String,
    pub retry: RetryPolicy,
}

impl Names {
    pub fn new(namespace: &str, retry: RetryPolicy) -> Self {
        Names {
            namespace: namespace.to_owned(),
            events: format!("{namespace}orderflow.events"),
            jobs: format!("{namespace}orderflow.jobs"),
            jobs_dead: format!("{namespace}orderflow.jobs.dead"),
            bulk: format!("{namespace}orderflow.bulk"),
            relay_marker: format!("{namespace}orderflow.relay.published"),
            retry,
        }
    }

    pub fn from_config(common: &CommonConfig) -> Self {
        Names::new(
            &common.namespace,
            RetryPolicy {
                max_attempts: common.job_max_attempts.max(1),
                base_delay: Duration::from_millis(common.job_retry_base_ms.max(1)),
                delivery_limit: common.job_delivery_limit.max(1),
            },
        )
    }

    /// The delay queue holding jobs between attempt `attempt` and the next.
    pub fn jobs_retry(&self, attempt: u32) -> String {
        format!("{}orderflow.jobs.retry.{attempt}", self.namespace)
    }

    /// The exclusive queue of one SSE bridge instance.
    pub fn sse_queue(&self, instance: &str) -> String {
        format!("{}orderflow.sse.{instance}", self.namespace)
    }

    /// Every durable queue of this namespace (for operators and test cleanup).
    pub fn durable_queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.jobs.clone(),
            self.jobs_dead.clone(),
            self.bulk.clone(),
            self.relay_marker.clone(),
        ];
        queues.extend(self.retry.steps().map(|n| self.jobs_retry(n)));
        queues
    }
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert((*k).into(), v.clone());
    }
    table
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_owned()))
}

/// Declare the shared topology: the events exchange and the job queues. Safe to call
/// from every process at every start.
pub async fn declare(channel: &Channel, names: &Names) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            names.events.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.jobs_dead.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.relay_marker.as_str().into(),
            durable,
            args(&[("x-max-length", AMQPValue::LongInt(1))]),
        )
        .await?;
    for work_queue in [&names.jobs, &names.bulk] {
        channel
            .queue_declare(
                work_queue.as_str().into(),
                durable,
                args(&[
                    ("x-queue-type", text("quorum")),
                    (
                        "x-delivery-limit",
                        AMQPValue::LongInt(names.retry.delivery_limit as i32),
                    ),
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text(&names.jobs_dead)),
                ]),
            )
            .await?;
    }
    for attempt in names.retry.steps() {
        let ttl = names
            .retry
            .delay_after(attempt)
            .as_millis()
            .min(i32::MAX as u128) as i32;
        channel
            .queue_declare(
                names.jobs_retry(attempt).as_str().into(),
                durable,
                args(&[
                    ("x-message-ttl", AMQPValue::LongInt(ttl)),
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text(&names.jobs)),
                ]),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_fourfold_and_has_one_queue_per_step() {
        let names = Names::new(
            "ns.",
            RetryPolicy {
                max_attempts: 4,
                base_delay: Duration::from_millis(500),
                delivery_limit: 20,
            },
        );
        let delays: Vec<u128> = names
            .retry
            .steps()
            .map(|a| names.retry.delay_after(a).as_millis())
            .collect();
        assert_eq!(delays, vec![500, 2000, 8000]);
        assert_eq!(
            names.durable_queues(),
            vec![
                "ns.orderflow.jobs",
                "ns.orderflow.jobs.dead",
                "ns.orderflow.bulk",
                "ns.orderflow.relay.published",
                "ns.orderflow.jobs.retry.1",
                "ns.orderflow.jobs.retry.2",
                "ns.orderflow.jobs.retry.3"
            ]
        );
    }
}
