//! `orderflow-bench`: the command line of the benchmarks.

use clap::{Parser, Subcommand};
use orderflow_bench::bulk;

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
    /// throughput to committed and to published, single-change latency meanwhile.
    Bulk(bulk::BulkArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bulk(args) => bulk::run(args).await,
    }
}
