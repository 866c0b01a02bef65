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
use std::time::Duration;

/// Open a connection named after the role (it shows in the management UI).
pub async fn connect(url: &str, role: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("orderflow-{role}-{}", std::process::id()).into());
    Connection::connect(url, props)
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", crate::store::db::redact(url)))
}

/// Delays between reconnect attempts: exponential with jitter, capped, never giving up
/// (a role without its broker has nothing else to do than wait for it).
pub fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
