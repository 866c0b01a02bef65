//! orderflow-bench: benchmarks that start the real system (`orderflow all`) on a fresh
//! database and broker namespace and drive it as its clients do: HTTP in, events out of
//! the exchange and the SSE bridge, SQL only to seed and to check.
//!
//! - [`bulk`] — one bulk over N orders, with single changes submitted during it.
//! - [`changes`] — single changes at constant offered rates, step by step, seen by a
//!   downstream consumer ([`events`]); the sustainable rate and an overload burst. Its
//!   requests go through [`http1`], a lean keep-alive client.
//! - [`sse`] — many idle live-event subscribers: memory per connection, fan-out, slow
//!   subscribers cut off without slowing the rest.
//! - [`system`] — finding, starting and cleaning up the system under test; [`seed`] —
//!   orders to act on; [`token`] — bearer tokens for the run's secret.
//! - [`cpu`] — where the cores went during a phase, per part of the system;
//!   [`stats`] — percentiles; [`progress`] — the progress line; [`limits`] — open files;
//!   [`yardstick`] — the machine's SQL ceilings, to read a figure as a ratio.

pub mod bulk;
pub mod changes;
pub mod cpu;
pub mod events;
pub mod http1;
pub mod limits;
pub mod progress;
pub mod seed;
pub mod sse;
pub mod stats;
pub mod system;
pub mod token;
pub mod yardstick;
