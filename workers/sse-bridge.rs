//! `sse-bridge`: streams live order events to browsers over SSE (N instances, each with
//! its own queue).

use clap::Parser;
use orderflow::config::{BridgeConfig, CommonConfig, HttpConfig};

/// Serve `/orders/events/subscribe`: live order events with resume by Last-Event-ID.
#[derive(Parser)]
#[command(name = "sse-bridge", version = orderflow::VERSION, about)]
struct Args {
    #[command(flatten)]
    common: CommonConfig,
    #[command(flatten)]
    http: HttpConfig,
    #[command(flatten)]
    bridge: BridgeConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = orderflow::telemetry::init("orderflow-sse-bridge");
    let result = orderflow::app::run_bridge(
        args.common,
        args.http,
        args.bridge,
        orderflow::shutdown::on_signal(),
    )
    .await;
    telemetry.shutdown().await;
    result
}
