//! `orderflow`: the command line. Parses configuration, starts telemetry, runs a role.

use clap::{Parser, Subcommand};
use orderflow::app::{self, AllConfig};
use orderflow::auth::Keys;
use orderflow::config::{
    BridgeConfig, CommonConfig, DEV_JWT_SECRET, HttpConfig, IngressConfig, RelayConfig,
    WorkerConfig,
};
use orderflow::domain::{Actor, Role};
use std::time::Duration;
use uuid::Uuid;

/// Order processing over RabbitMQ and Postgres: one state machine, audited, live.
#[derive(Parser)]
#[command(name = "orderflow", version = orderflow::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process on one HTTP port (creates the database and applies
    /// migrations first). The way to run the whole system on one machine.
    All {
        #[command(flatten)]
        common: CommonConfig,
        #[command(flatten)]
        http: HttpConfig,
        #[command(flatten)]
        ingress: IngressConfig,
        #[command(flatten)]
        worker: WorkerConfig,
        #[command(flatten)]
        relay: RelayConfig,
        #[command(flatten)]
        bridge: BridgeConfig,
    },
    /// Run the HTTP ingress only (orders, jobs, inventory, docs, health).
    Serve {
        #[command(flatten)]
        common: CommonConfig,
        #[command(flatten)]
        http: HttpConfig,
        #[command(flatten)]
        ingress: IngressConfig,
    },
    /// Create the database if missing, apply migrations, and exit.
    Migrate {
        #[command(flatten)]
        common: CommonConfig,
    },
    /// Print a signed bearer token, for trying the API by hand.
    Token {
        /// customer, support, admin or system.
        #[arg(long)]
        role: Role,
        /// The actor id (a random one when omitted).
        #[arg(long)]
        sub: Option<Uuid>,
        /// Lifetime: seconds, or with a unit: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The secret the API verifies tokens with.
        #[arg(long, env = "JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
        jwt_secret: String,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}`: expected a number with an optional unit s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => return Err(format!("unknown unit `{other}`: use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Token {
        role,
        sub,
        ttl,
        jwt_secret,
    } = cli.command
    {
        let actor = Actor {
            id: sub.unwrap_or_else(Uuid::new_v4),
            role,
        };
        println!("{}", Keys::new(&jwt_secret).mint(actor, ttl));
        return Ok(());
    }
    let telemetry = orderflow::telemetry::init(match cli.command {
        Command::Serve { .. } => "orderflow-ingress",
        _ => "orderflow",
    });
    let shutdown = orderflow::shutdown::on_signal();
    let result = match cli.command {
        Command::All {
            common,
            http,
            ingress,
            worker,
            relay,
            bridge,
        } => {
            app::run_all(
                AllConfig {
                    common,
                    http,
                    ingress,
                    worker,
                    relay,
                    bridge,
                },
                shutdown,
            )
            .await
        }
        Command::Serve {
            common,
            http,
            ingress,
        } => app::run_ingress(common, http, ingress, shutdown).await,
        Command::Migrate { common } => {
            orderflow::store::db::create_if_missing(&common).await?;
            let pool = orderflow::store::db::connect(&common).await?;
            orderflow::store::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token { .. } => unreachable!("handled above"),
    };
    telemetry.shutdown().await;
    result
}
