//! RabbitMQ: names and topology, the confirmed publishers, and reconnecting.
//!
//! Every role opens its own connection, declares the topology it relies on (idempotently)
//! and, when the connection is lost, starts over from a fresh one: a supervisor loop per
//! role, so no delivery tag of a dead channel is ever acked.

pub mod publisher;
pub mod topology;

pub use topology::Names;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The body of a job message on `orderflow.jobs` and `orderflow.bulk`: only the job's id.
/// What the job asks for is its row in `jobs`, read by the worker.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: Uuid,
}

/// Open a connection named after the role (it shows in the management UI).
pub async fn connect(url: &str, role: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("orderflow-{role}-{}", std::process::id()).into());
    Connection::connect(url, props)
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", crate::config::redact(url)))
}

/// Run `session` until it returns Ok (it saw `shutdown`) or `shutdown` fires, starting it
/// again after every failure: exponential backoff with jitter, capped at `max_delay`, and
/// reset once a session has lived long enough to count as recovered.
pub async fn supervise<F, Fut>(
    role: &str,
    shutdown: &CancellationToken,
    max_delay: Duration,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut delays = reconnect_delays();
    loop {
        let started = Instant::now();
        match session().await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "{role} session ended; starting over"
            ),
        }
        if started.elapsed() > Duration::from_secs(30) {
            delays = reconnect_delays();
        }
        let delay = delays.next().unwrap_or(max_delay).min(max_delay);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Delays between reconnect attempts: exponential with jitter, capped, never giving up
/// (a role without its broker has nothing else to do than wait for it).
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
