//! A downstream consumer of the system's events, as API.md describes one: its own
//! exclusive queue bound to the events exchange, every event taken in with the time it
//! arrived, keyed by the job that caused it, so a benchmark can tell which accepted change
//! was seen, when, and whether more than once.

use crate::system::System;
use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// The fields of an event body this consumer matches on.
#[derive(Deserialize)]
struct Body {
    seq: i64,
    order_id: Option<Uuid>,
    job_id: Option<Uuid>,
}

/// Every arrival of one job's events: `(seq, when)`, in arrival order.
pub type Arrivals = Vec<(i64, Instant)>;

/// What a job's events tell, once the run is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// No event (yet).
    Never,
    /// One event, first arriving at this time (repeats of the same seq are deliveries
    /// of one event, which at-least-once allows and consumers dedupe).
    Once(Instant),
    /// Events with different seqs: the change was applied more than once.
    Twice(Instant),
}

/// The listener: the consuming task runs until the value is dropped.
pub struct Listener {
    arrivals: Arc<Mutex<HashMap<Uuid, Arrivals>>>,
    count: Arc<AtomicU64>,
    _conn: Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Bind an exclusive queue (`<namespace>orderflow.bench.<id>`) to every routing key of
    /// the run's events exchange and start taking events in.
    pub async fn start(system: &System) -> anyhow::Result<Listener> {
        let conn = Connection::connect(&system.amqp_url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = conn.create_channel().await?;
        let exchange = system.name("orderflow.events");
        // The same declaration the system makes (topic, durable): whoever comes first
        // creates it, and binding never races the system's start.
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = system.name(&format!("orderflow.bench.{}", Uuid::new_v4().simple()));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "orderflow-bench".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let arrivals: Arc<Mutex<HashMap<Uuid, Arrivals>>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (arrivals, count) = (arrivals.clone(), count.clone());
            async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let at = Instant::now();
                    let Ok(body) = serde_json::from_slice::<Body>(&delivery.data) else {
                        continue;
                    };
                    let Some(key) = body.job_id.or(body.order_id) else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    arrivals
                        .lock()
                        .expect("arrivals lock")
                        .entry(key)
                        .or_default()
                        .push((body.seq, at));
                }
            }
        });
        Ok(Listener {
            arrivals,
            count,
            _conn: conn,
            task,
        })
    }

    /// Deliveries taken in so far (repeats included).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// What the events of job `job` tell so far.
    pub fn seen(&self, job: &Uuid) -> Seen {
        let arrivals = self.arrivals.lock().expect("arrivals lock");
        classify(arrivals.get(job).map(Vec::as_slice).unwrap_or_default())
    }

    /// How many of `jobs` have no event yet.
    pub fn missing<'a>(&self, jobs: impl IntoIterator<Item = &'a Uuid>) -> usize {
        let arrivals = self.arrivals.lock().expect("arrivals lock");
        jobs.into_iter()
            .filter(|j| !arrivals.contains_key(j))
            .count()
    }
}

fn classify(arrivals: &[(i64, Instant)]) -> Seen {
    match arrivals.first() {
        None => Seen::Never,
        Some(&(seq, at)) if arrivals.iter().all(|(s, _)| *s == seq) => Seen::Once(at),
        Some(&(_, at)) => Seen::Twice(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_repeated_seq_is_one_event_and_a_second_seq_a_second_change() {
        let t = Instant::now();
        let later = t + Duration::from_millis(5);
        assert_eq!(classify(&[]), Seen::Never);
        assert_eq!(classify(&[(7, t), (7, later)]), Seen::Once(t));
        assert_eq!(classify(&[(7, t), (9, later)]), Seen::Twice(t));
    }
}
