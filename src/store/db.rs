//! Connecting, creating the database on first start, and migrations (embedded).

use crate::config::{CommonConfig, redact};
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool on `DATABASE_URL`. Does not create anything.
///
/// Its sessions plan every statement for its own parameters and the tables as they are
/// now (`plan_cache_mode = force_custom_plan`). Otherwise a connection switches a prepared
/// statement to one generic plan after five runs and keeps it while the connection lives,
/// priced for the tables as they were then. A pool opened on a young database — a new
/// deployment, every test and benchmark — planned the worker's `jobs` statements as
/// sequential scans of a few hundred rows and went on scanning as the table grew: 2.6 ms
/// per batch for ~15 jobs after 30,000 changes on the 2-core development box, against
/// 0.6 ms planned per run. Planning costs a fraction of a millisecond per statement; set
/// on the session, it costs no round trip of its own.
pub async fn connect(cfg: &CommonConfig) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&cfg.database_url)
        .context("parsing DATABASE_URL")?
        .options([("plan_cache_mode", "force_custom_plan")])
        .log_statements(tracing::log::LevelFilter::Trace);
    PgPoolOptions::new()
        .max_connections(cfg.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact(&cfg.database_url)))
}

/// Create the database named in `DATABASE_URL` when it does not exist yet (first run).
pub async fn create_if_missing(cfg: &CommonConfig) -> anyhow::Result<()> {
    let target = PgConnectOptions::from_str(&cfg.database_url).context("parsing DATABASE_URL")?;
    let Some(name) = target.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = target
        .clone()
        .database("postgres")
        .connect()
        .await
        .with_context(|| {
            format!(
                "connecting to Postgres at {} to create the database",
                redact(&cfg.database_url)
            )
        })?;
    let exists = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#,
        name,
    )
    .fetch_one(&mut admin)
    .await?;
    if !exists {
        // An identifier cannot be a bind parameter: the one statement built at run time.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("create database {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it at the same moment.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("creating the database"),
        }
    }
    admin.close().await.ok();
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}
