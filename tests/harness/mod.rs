//! Harness for the end-to-end tests. Each test starts the real binaries against its own
//! fresh database and broker namespace (a [`Sandbox`]) and observes them from outside, the
//! way clients see them: HTTP, AMQP, SSE, and the database rows the guarantees are about.
//!
//! - [`sandbox`]: a fresh database and broker namespace, removed afterwards;
//! - [`system`]: one `orderflow all` process and a client of its API;
//! - [`cluster`] and [`supervisor`]: every role as its own supervised process, for fault
//!   injection;
//! - [`chaos`]: the load, the observers, the faults and the evidence of the fault suite;
//! - [`tokens`], [`sse`], [`broker`], [`answer`], [`metrics`]: the clients' tools, each
//!   written once; [`otlp`]: a trace collector the processes export to;
//! - [`browser`]: real headless Chromium over WebDriver, for pages served by the system
//!   or by a test;
//! - [`wait`]: every wait is for a condition, with a deadline, and fails loudly with what
//!   it saw last;
//! - [`library`]: the only calls into the orderflow library itself.

pub mod answer;
pub mod broker;
pub mod browser;
pub mod chaos;
pub mod cluster;
pub mod library;
pub mod metrics;
pub mod otlp;
pub mod sandbox;
pub mod sse;
pub mod supervisor;
pub mod system;
pub mod tokens;
pub mod wait;

pub use answer::Answer;
pub use broker::{Broker, message_header, message_id, message_json};
pub use sandbox::{BrokerUse, Sandbox};
pub use sse::{SseEvent, SseStream};
pub use system::{TERMINAL_JOB_STATUSES, TestSystem, uuid_of};
pub use wait::{EVENT_DEADLINE, JOB_DEADLINE};

/// The base URL a process announces on stdout (`listening on http://ip:port`).
fn listening_url(line: &str) -> Option<String> {
    line.split_once("listening on http://")
        .map(|(_, addr)| format!("http://{}", addr.trim()))
}
