//! `order-worker`: applies change-status jobs from `orderflow.jobs` (N competing consumers).

use clap::Parser;
use orderflow::config::{CommonConfig, MetricsConfig, WorkerConfig};

/// Consume change-status jobs and apply them in batched transactions.
#[derive(Parser)]
#[command(name = "order-worker", version = orderflow::VERSION, about)]
struct Args {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    worker: WorkerConfig,
    #[command(flatten)]
    metrics: MetricsConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = orderflow::telemetry::init("orderflow-worker");
    let result = orderflow::app::run_worker(
        args.common,
        args.worker,
        args.metrics,
        orderflow::shutdown::on_signal(),
    )
    .await;
    telemetry.shutdown().await;
    result
}
