//! `order-worker`: applies change-status jobs from `orderflow.jobs` (N competing consumers).

use clap::Parser;
use orderflow::config::{CommonConfig, WorkerConfig};

/// Consume change-status jobs and apply them in batched transactions.
#[derive(Parser)]
#[command(name = "order-worker", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    worker: WorkerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    orderflow::telemetry::init();
    orderflow::app::run_worker(args.common, args.worker, orderflow::shutdown::on_signal()).await
}
