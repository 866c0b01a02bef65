//! `orderflow bench bulk`: the bulk benchmark. Starts the whole system (`orderflow all`)
//! as a child process on a fresh database and broker namespace, seeds N paid orders, then
//! previews and applies one bulk `confirm` over them while a driver submits single
//! changes, and reports bulk throughput to committed and to published, and the latency of
//! the single changes during the bulk. Everything it creates is removed at the end.

use crate::auth::Keys;
use crate::broker::Names;
use crate::config::CommonConfig;
use crate::domain::{Actor, Role};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Orders in the bulk.
    #[arg(long, default_value_t = 100_000)]
    pub orders: i64,
    /// Milliseconds between single changes submitted during the bulk.
    #[arg(long, default_value_t = 20)]
    pub single_every_ms: u64,
    /// Extra environment for the system under test, as KEY=VALUE (repeatable), e.g.
    /// `--env BULK_CHUNK_SIZE=2000`.
    #[arg(long = "env", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

const BENCH_SECRET: &str = "orderflow-bench-secret";
const SINGLE_POOL: i64 = 2_000;

struct System {
    child: tokio::process::Child,
    base: String,
}

async fn start_system(
    common: &CommonConfig,
    db_url: &str,
    namespace: &str,
    extra: &[(String, String)],
) -> anyhow::Result<System> {
    let exe = std::env::current_exe().context("locating the orderflow binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["all", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", db_url)
        .env("AMQP_URL", &common.amqp_url)
        .env("ORDERFLOW_NAMESPACE", namespace)
        .env("JWT_SECRET", BENCH_SECRET)
        .env("RATE_PER_ACTOR", "0")
        .env("DATABASE_MAX_CONNECTIONS", "20")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("starting `orderflow all`")?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("the system did not start within 60 s")??
        .context("the system exited before listening")?;
    let base = line
        .strip_prefix("listening on ")
        .context("unexpected first line")?
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(System { child, base })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Run the benchmark and print its report.
pub async fn run(common: CommonConfig, args: BenchArgs) -> anyhow::Result<()> {
    let suffix = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let db_name = format!("orderflow_bench_{suffix}");
    let namespace = format!("bench-{suffix}.");
    let server = PgConnectOptions::from_str(&common.database_url)?;
    let db_url = {
        let mut url = url::Url::parse(&common.database_url)?;
        url.set_path(&db_name);
        url.to_string()
    };
    let mut admin = server
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("connecting to Postgres")?;
    sqlx::query(&format!("create database {db_name}"))
        .execute(&mut admin)
        .await?;
    let outcome = bench(&common, &args, &db_url, &namespace).await;
    sqlx::query(&format!("drop database if exists {db_name} with (force)"))
        .execute(&mut admin)
        .await?;
    remove_namespace(&common, &namespace).await;
    outcome
}

async fn remove_namespace(common: &CommonConfig, namespace: &str) {
    let names = Names::new(namespace, Names::from_config(common).retry);
    if let Ok(conn) = crate::broker::connect(&common.amqp_url, "bench-cleanup").await {
        if let Ok(channel) = conn.create_channel().await {
            for q in names.durable_queues() {
                let _ = channel
                    .queue_delete(q.as_str().into(), Default::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(names.events.as_str().into(), Default::default())
                .await;
        }
        let _ = conn.close(200, "bench done".into()).await;
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while !check().await? {
        if start.elapsed() > limit {
            bail!("{what}: not reached within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

async fn bench(
    common: &CommonConfig,
    args: &BenchArgs,
    db_url: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    let mut system = start_system(common, db_url, namespace, &args.env).await?;
    let keys = Keys::new(BENCH_SECRET);
    let admin = keys.mint(
        Actor {
            id: Uuid::new_v4(),
            role: Role::Admin,
        },
        Duration::from_secs(3600),
    );
    let http = reqwest::Client::new();
    let mut db = PgConnection::connect(db_url).await?;

    // Seed: N paid orders of one customer (the bulk), and a pool of other customers'
    // orders for the single changes. Seeding is SQL, not HTTP: it is not what is measured.
    let bulk_customer = Uuid::new_v4();
    let seeded = Instant::now();
    sqlx::query(
        "insert into orders (id, customer_id, payment_status, total_cents, currency)
         select gen_random_uuid(), case when g <= $1 then $2 else gen_random_uuid() end, 'paid', 1250, 'EUR'
         from generate_series(1, $1 + $3) g",
    )
    .bind(args.orders)
    .bind(bulk_customer)
    .bind(SINGLE_POOL)
    .execute(&mut db)
    .await?;
    sqlx::query("insert into order_items (order_id, line, sku, quantity, unit_price_cents) select id, 1, 'bench-tea', 1, 1250 from orders")
        .execute(&mut db)
        .await?;
    sqlx::query("analyze").execute(&mut db).await?;
    let singles: Vec<Uuid> = sqlx::query_scalar("select id from orders where customer_id <> $1")
        .bind(bulk_customer)
        .fetch_all(&mut db)
        .await?;
    println!(
        "seeded {} + {} orders in {:.1?}",
        args.orders,
        singles.len(),
        seeded.elapsed()
    );

    let selection = json!({ "filter": { "customer_id": bulk_customer, "status": ["pending"] } });
    let t = Instant::now();
    let preview: Value = http
        .post(format!("{}/orders/bulk/preview", system.base))
        .bearer_auth(&admin)
        .json(&json!({ "selection": selection, "action": "confirm" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!(
        "preview: matched {} would_apply {} in {:.2?}",
        preview["matched"],
        preview["would_apply"],
        t.elapsed()
    );

    // Single changes during the bulk, measured end to end (Prefer: wait).
    let driver = {
        let (http, base, admin, every) = (
            http.clone(),
            system.base.clone(),
            admin.clone(),
            args.single_every_ms,
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            for id in singles {
                if token.is_cancelled() {
                    break;
                }
                let t = Instant::now();
                let answer = http
                    .post(format!("{base}/orders/{id}/change-status"))
                    .bearer_auth(&admin)
                    .header("prefer", "wait=10")
                    .json(&json!({ "action": "confirm" }))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => latencies.push(t.elapsed()),
                    _ => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
            (latencies, errors)
        });
        (stop, handle)
    };

    let started = Instant::now();
    let submitted: Value = http
        .post(format!("{}/orders/bulk/status-update", system.base))
        .bearer_auth(&admin)
        .json(&json!({ "selection": selection, "action": "confirm", "reason": "benchmark", "mode": "best_effort" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let bulk_id = submitted["bulk_id"]
        .as_str()
        .context("no bulk_id")?
        .to_owned();
    let limit = Duration::from_secs(600);
    let status_url = format!("{}/orders/bulk/{bulk_id}", system.base);
    let committed = wait_for("bulk completed", limit, || async {
        let op: Value = http
            .get(&status_url)
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        match op["status"].as_str() {
            Some("completed") => Ok(true),
            Some("failed" | "rejected" | "cancelled") => bail!("bulk ended {}", op),
            _ => Ok(false),
        }
    })
    .await?;
    let check = sqlx::PgPool::connect(db_url).await?;
    // Every bulk event has an outbox id up to the newest one now: the bulk has committed.
    let last_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from outbox")
        .fetch_one(&check)
        .await?;
    let published = committed
        + wait_for("every event published", limit, || async {
            let mut conn = check.acquire().await?;
            Ok(crate::store::outbox::is_published(&mut conn, Some(last_id)).await?)
        })
        .await?;
    let wall = started.elapsed();
    driver.0.cancel();
    let (mut latencies, errors) = driver.1.await?;
    latencies.sort();

    let applied: i64 =
        sqlx::query_scalar("select applied::bigint from bulk_operations where id = $1::uuid")
            .bind(&bulk_id)
            .fetch_one(&check)
            .await?;
    let history: i64 =
        sqlx::query_scalar("select count(*) from order_status_history where bulk_id = $1::uuid")
            .bind(&bulk_id)
            .fetch_one(&check)
            .await?;
    let per_sec = |d: Duration| applied as f64 / d.as_secs_f64();
    println!(
        "bulk of {} orders: applied {applied}, history rows {history}",
        args.orders
    );
    println!(
        "  committed in {:.2?} ({:.0} orders/s)",
        committed,
        per_sec(committed)
    );
    println!(
        "  published in {:.2?} ({:.0} orders/s)",
        published,
        per_sec(published)
    );
    println!(
        "single changes during the bulk: {} ok, {errors} failed; p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!("wall time from submit: {wall:.2?}");
    let _ = system.child.kill().await;
    Ok(())
}
