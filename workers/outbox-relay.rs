//! `outbox-relay`: publishes committed outbox rows to `orderflow.events` (one active,
//! others stand by).

use clap::Parser;
use orderflow::config::{CommonConfig, RelayConfig};

/// Publish committed order events to the events exchange, in commit order per order.
#[derive(Parser)]
#[command(name = "outbox-relay", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    relay: RelayConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    orderflow::telemetry::init();
    orderflow::app::run_relay(args.common, args.relay, orderflow::shutdown::on_signal()).await
}
