//! `orderflow-bench`: the command line of the benchmarks.

use clap::{Parser, Subcommand};
use orderflow_bench::{bulk, changes, sse};

/// Benchmarks for orderflow. Each command starts the system itself (`orderflow all`, as a
/// child process) on a fresh database and broker namespace, drives it, prints its
/// figures and removes everything it created.
///
/// The `orderflow` binary is found with --system-bin (or ORDERFLOW_BIN), else next to
/// this executable, else on PATH; build both together so the one measured is current:
/// `cargo build --release -p orderflow -p orderflow-bench`, then
/// `target/release/orderflow-bench <command>`.
#[derive(Parser)]
#[command(name = "orderflow-bench", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One bulk `confirm` over N orders, with single changes submitted during it:
    /// throughput to committed and to published, single-change latency meanwhile, and
    /// where the CPU went (per process, and per order).
    Bulk(bulk::BulkArgs),
    /// Single changes at constant offered rates (open loop), step by step, seen by a
    /// downstream consumer of the events exchange: accepted/s, events/s, accept and
    /// submit->event latency, lost and duplicated, where the CPU went (per process, and
    /// per accepted change), the highest sustainable rate; `--overload` adds a burst at
    /// four times that rate.
    Changes(changes::ChangesArgs),
    /// Many idle live-event subscribers: the system's memory per connection, fan-out of
    /// one event to all of them, and slow subscribers cut off without slowing the rest.
    Sse(sse::SseArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bulk(args) => bulk::run(args).await,
        Command::Changes(args) => changes::run(args).await,
        Command::Sse(args) => sse::run(args).await,
    }
}
