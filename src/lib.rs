//! orderflow: order processing as a message-queue driven worker system.
//!
//! A job's path, and the module that owns each step (the layers and what each may import:
//! `docs/architecture.md`):
//!
//! - [`ingress`] — axum HTTP API, thin handlers: extract ([`http`]), call a use case in
//!   [`orders`], render.
//! - [`orders`] — the use cases: a change parsed once ([`orders::ChangeCommand`]), the one
//!   apply path ([`orders::apply::Batch`]), job and bulk submission (idempotent, published
//!   with a confirm or undone), order creation, bulk preview and steps.
//! - [`worker`] — consumes jobs in micro-batches and applies each batch in one Postgres
//!   transaction through [`orders::apply`]; bulk jobs chunk by chunk through
//!   [`orders::bulk`].
//! - [`domain`] — pure: the state machine as data (every decision is
//!   `domain::machine::decide`), the job and bulk lifecycles, the change record.
//! - [`relay`] — publishes committed outbox rows to the `orderflow.events` topic exchange,
//!   each with a gap-free `seq`; one active relay, standbys behind an advisory lock.
//! - [`sse`] — the bridge: its own queue on the events exchange, fan-out to browsers,
//!   resume by `Last-Event-ID` from memory or from the outbox.
//!
//! Around them: [`store`] (SQL, the caller owns the transaction), [`broker`] (RabbitMQ
//! topology and confirmed publishers), [`http`] (the one `ApiError`, extractors), [`event`]
//! (the event JSON shared by outbox, exchange and SSE), [`auth`] (JWT → [`domain::Actor`]),
//! [`config`] (clap + env), [`app`] (composing roles into processes; with
//! [`app::openapi`], the OpenAPI document and the `/docs` page), [`metrics`]
//! (Prometheus: every name, `/metrics`, the sampler), [`telemetry`] (logs, and spans over
//! OTLP when configured), [`trace`] (W3C `traceparent` carried from request to event, and
//! each hop's span joined to it) and [`shutdown`]. The
//! benchmarks are a client of all this and live in their own package, `orderflow-bench`
//! (`bench/`).

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
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod orders;
pub mod relay;
pub mod shutdown;
pub mod sse;
pub mod store;
pub mod telemetry;
pub mod trace;
pub mod worker;

/// `--version` of every binary: the package version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ORDERFLOW_GIT_SHA"),
    ")"
);
