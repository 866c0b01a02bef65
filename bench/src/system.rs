//! The system under test: `orderflow all` started as a child process on a fresh database
//! and a fresh broker namespace, both removed again when the benchmark ends, so a run
//! leaves nothing behind and never touches another deployment's data.

use anyhow::{Context, bail};
use clap::Args;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection as _, PgConnection};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

/// The secret the system under test verifies tokens with (it only lives for the run).
pub const SECRET: &str = "orderflow-bench-secret";

/// Where the shared services are, and which `orderflow` binary to start.
#[derive(Args, Debug, Clone)]
pub struct SystemArgs {
    /// Postgres server URL. The benchmark creates its own database beside the one named
    /// here (`orderflow_bench_<id>`) and drops it at the end.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost/orderflow"
    )]
    pub database_url: String,

    /// RabbitMQ URL. Every name the run uses is prefixed `bench-<id>.` and removed at the end.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@localhost:5672/%2f"
    )]
    pub amqp_url: String,

    /// The `orderflow` binary to benchmark. Default: the `orderflow` next to this
    /// executable (`target/release/` after `cargo build --release -p orderflow -p
    /// orderflow-bench`), else the first `orderflow` on PATH. The path used is printed:
    /// build both together, or a stale server gets measured.
    #[arg(long, env = "ORDERFLOW_BIN")]
    pub system_bin: Option<PathBuf>,

    /// Extra environment for the system under test, as KEY=VALUE (repeatable; wins over
    /// the benchmark's own settings), e.g. `--env BULK_CHUNK_SIZE=2000`.
    #[arg(long = "env", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// The binary to start: the flag (or `ORDERFLOW_BIN`), else next to this executable,
/// else on PATH.
pub fn find_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let name = format!("orderflow{}", std::env::consts::EXE_SUFFIX);
    if let Some(path) = flag {
        if !path.is_file() {
            bail!(
                "--system-bin / ORDERFLOW_BIN: {} is not a file",
                path.display()
            );
        }
        return Ok(path.to_owned());
    }
    let sibling = std::env::current_exe()
        .context("locating this executable")?
        .with_file_name(&name);
    if sibling.is_file() {
        return Ok(sibling);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(&name))
                .find(|p| p.is_file())
        })
        .with_context(|| {
            format!(
                "no `orderflow` binary at {} nor on PATH: build it (`cargo build --release -p orderflow -p orderflow-bench`) or name it with --system-bin / ORDERFLOW_BIN",
                sibling.display()
            )
        })
}

/// A running system under test and what it was given.
pub struct System {
    child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`: REST API and SSE.
    pub base: String,
    /// URL of this run's own database.
    pub db_url: String,
    pub amqp_url: String,
    /// Prefix of every broker name of this run (`ORDERFLOW_NAMESPACE`).
    pub namespace: String,
    server_url: String,
    db_name: String,
}

impl System {
    /// Create a fresh database, start `orderflow all` on it with `settings` (then the
    /// user's `--env`, which win) and wait until it listens.
    pub async fn start(args: &SystemArgs, settings: &[(&str, &str)]) -> anyhow::Result<System> {
        let binary = find_binary(args.system_bin.as_deref())?;
        println!("system under test: {}", describe(&binary));
        let suffix = Uuid::new_v4().simple().to_string()[..8].to_owned();
        let db_name = format!("orderflow_bench_{suffix}");
        let namespace = format!("bench-{suffix}.");
        let db_url = {
            let mut url = url::Url::parse(&args.database_url)?;
            url.set_path(&db_name);
            url.to_string()
        };
        let mut server = admin_connection(&args.database_url).await?;
        sqlx::query(&format!("create database {db_name}"))
            .execute(&mut server)
            .await?;
        server.close().await?;

        let mut cmd = tokio::process::Command::new(&binary);
        cmd.args(["all", "--bind", "127.0.0.1:0"])
            .env("DATABASE_URL", &db_url)
            .env("AMQP_URL", &args.amqp_url)
            .env("ORDERFLOW_NAMESPACE", &namespace)
            .env("JWT_SECRET", SECRET)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in settings {
            cmd.env(k, v);
        }
        for (k, v) in &args.env {
            cmd.env(k, v);
        }
        let mut system = System {
            child: cmd
                .spawn()
                .with_context(|| format!("starting `{} all`", binary.display()))?,
            base: String::new(),
            db_url,
            amqp_url: args.amqp_url.clone(),
            namespace,
            server_url: args.database_url.clone(),
            db_name,
        };
        match system.wait_listening().await {
            Ok(base) => {
                system.base = base;
                Ok(system)
            }
            Err(e) => {
                system.stop().await;
                Err(e)
            }
        }
    }

    async fn wait_listening(&mut self) -> anyhow::Result<String> {
        let stdout = self.child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the system did not start within 60 s")??
            .context("the system exited before listening")?;
        let base = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line `{line}`"))?
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(base)
    }

    /// The system's process id (for reading its memory from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The name of an events exchange, job queue, ... of this run.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// Stop the system and remove its database and broker names.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        if let Err(e) = self.drop_database().await {
            eprintln!("could not drop database {}: {e:#}", self.db_name);
        }
        if let Err(e) = self.remove_namespace().await {
            eprintln!("could not remove broker names {}*: {e:#}", self.namespace);
        }
    }

    async fn drop_database(&self) -> anyhow::Result<()> {
        let mut server = admin_connection(&self.server_url).await?;
        sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.db_name
        ))
        .execute(&mut server)
        .await?;
        Ok(())
    }

    /// Delete the durable queues and the events exchange the system declared under this
    /// run's namespace (names from API.md: `orderflow.jobs`, `.dead`, `.bulk`, the delay
    /// queues `orderflow.jobs.retry.<n>`, `orderflow.events`). Exclusive queues went
    /// with their connections.
    async fn remove_namespace(&self) -> anyhow::Result<()> {
        let conn = Connection::connect(&self.amqp_url, ConnectionProperties::default()).await?;
        let mut channel = conn.create_channel().await?;
        for q in [
            "orderflow.jobs",
            "orderflow.jobs.dead",
            "orderflow.bulk",
            "orderflow.relay.published",
        ] {
            channel
                .queue_delete(self.name(q).as_str().into(), Default::default())
                .await?;
        }
        // The delay queues are one per retry step, as many as the system was configured
        // with: delete them until the first that does not exist (a passive declare of a
        // missing queue closes the channel, so the search ends there).
        for step in 1.. {
            let queue = self.name(&format!("orderflow.jobs.retry.{step}"));
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .is_err()
            {
                channel = conn.create_channel().await?;
                break;
            }
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await?;
        }
        channel
            .exchange_delete(
                self.name("orderflow.events").as_str().into(),
                Default::default(),
            )
            .await?;
        let _ = conn.close(200, "bench done".into()).await;
        Ok(())
    }
}

/// A connection to the server's `postgres` database (to create and drop databases).
async fn admin_connection(server_url: &str) -> anyhow::Result<PgConnection> {
    PgConnectOptions::from_str(server_url)?
        .database("postgres")
        .connect()
        .await
        .context("connecting to Postgres")
}

fn describe(binary: &Path) -> String {
    let age = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    match age {
        Some(age) => format!(
            "{} (built {} min ago)",
            binary.display(),
            age.as_secs() / 60
        ),
        None => binary.display().to_string(),
    }
}
