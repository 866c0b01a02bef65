//! `outbox-relay`: publishes committed outbox rows to `orderflow.events` (one active,
//! others stand by).

use clap::Parser;
use orderflow::config::{CommonConfig, MetricsConfig, RelayConfig};

/// Publish committed order events to the events exchange, in commit order per order.
#[derive(Parser)]
#[command(name = "outbox-relay", version = orderflow::VERSION, about)]
struct Args {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    relay: RelayConfig,
    #[command(flatten)]
    metrics: MetricsConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = orderflow::telemetry::init("orderflow-relay");
    let result = orderflow::app::run_relay(
        args.common,
        args.relay,
        args.metrics,
        orderflow::shutdown::on_signal(),
    )
    .await;
    telemetry.shutdown().await;
    result
}
