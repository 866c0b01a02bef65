//! orderflow: order processing as a message-queue driven worker system.
//!
//! A job's path, and the module that owns each step:
//!
//! - [`ingress`] — axum HTTP API: validates, writes the `jobs` row, publishes the job with
//!   a publisher confirm ([`broker::publisher`]) and answers 202 (or waits, `Prefer: wait`).
//! - [`worker`] — consumes jobs in micro-batches and applies each batch in one Postgres
//!   transaction: orders, stock, audit history, outbox rows and job outcomes ([`store`]).
//! - [`domain`] — the state machine as data: every decision is `domain::machine::decide`.
//! - [`relay`] — publishes committed outbox rows to the `orderflow.events` topic exchange,
//!   each with a gap-free `seq`; one active relay, standbys behind an advisory lock.
//! - [`sse`] — the bridge: its own queue on the events exchange, fan-out to browsers,
//!   resume by `Last-Event-ID` from memory or from the outbox.
//!
//! Around them: [`config`] (clap + env), [`auth`] (JWT → [`domain::Actor`]), [`event`] (the
//! event JSON shared by outbox, exchange and SSE), [`job`] (what a job asks for), [`app`]
//! (composing roles into processes), [`telemetry`], [`trace`] (W3C `traceparent` carried
//! from request to event) and [`shutdown`]. The benchmarks are a client of all this and
//! live in their own package, `orderflow-bench` (`bench/`).

// Every orderflow binary allocates through mimalloc: the hot paths (events, bind arrays,
// AMQP frames) make many short-lived allocations, where glibc's malloc showed up as a
// fifth of the relay's and worker's CPU profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod domain;
pub mod event;
pub mod ingress;
pub mod job;
pub mod relay;
pub mod shutdown;
pub mod sse;
pub mod store;
pub mod telemetry;
pub mod trace;
pub mod worker;
