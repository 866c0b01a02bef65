//! orderflow-bench: benchmarks that start the real system (`orderflow all`) on a fresh
//! database and broker namespace and drive it as its clients do.
//!
//! - [`bulk`] — one bulk over N orders, with single changes submitted during it.
//! - [`system`] — finding, starting and cleaning up the system under test.
//! - [`token`] — bearer tokens for the run's secret; [`stats`] — percentiles;
//!   [`yardstick`] — the machine's SQL ceilings, to read a figure as a ratio.

pub mod bulk;
pub mod stats;
pub mod system;
pub mod token;
pub mod yardstick;
