//! `orderflow-bench bulk`: starts the system on a fresh database and broker namespace,
//! seeds N paid orders, then previews and applies one bulk `confirm` over them while a
//! driver submits single changes, and reports bulk throughput to committed and to
//! published, the latency of the single changes during the bulk, and where the machine's
//! CPU went from submit to published ([`crate::cpu`]).

use crate::system::{self, System, SystemArgs};
use crate::{cpu, stats, token, yardstick};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Args, Debug, Clone)]
pub struct BulkArgs {
    #[command(flatten)]
    pub system: SystemArgs,
    /// Orders in the bulk.
    #[arg(long, default_value_t = 100_000)]
    pub orders: i64,
    /// Milliseconds between single changes submitted during the bulk.
    #[arg(long, default_value_t = 20)]
    pub single_every_ms: u64,
    #[command(flatten)]
    pub yardstick: yardstick::YardstickArgs,
}

/// Orders of other customers, for the single changes submitted during the bulk.
const SINGLE_POOL: i64 = 2_000;

/// Run the benchmark and print its report.
pub async fn run(args: BulkArgs) -> anyhow::Result<()> {
    let before = args.yardstick.before().await?;
    // Capacity, not policy: the bulk's own rate limit (`WORKER_RATE_BULK`, 20,000/s by
    // default) is off, as every rate limit is in `changes`; `--env` sets it back.
    let system = System::start(
        &args.system,
        &[
            ("RATE_PER_ACTOR", "0"),
            ("WORKER_RATE_BULK", "0"),
            ("DATABASE_MAX_CONNECTIONS", "20"),
        ],
    )
    .await?;
    let outcome = bench(&system, &args).await;
    system.stop().await;
    let orders_per_sec = outcome?;
    let after = args.yardstick.after().await?;
    yardstick::report(
        "bulk orders/s to committed",
        orders_per_sec,
        yardstick::Ceiling::Tx50Changes,
        before.as_ref(),
        after.as_ref(),
    );
    Ok(())
}

/// Poll `check` every 20 ms until it holds; how long that took.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<Duration>
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

/// Whether the relay has published every outbox row up to `up_to_id`: the published
/// cursor has passed each one's seq.
pub async fn is_published(conn: &mut PgConnection, up_to_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select not exists (select 1 from outbox
                            where seq > (select published_seq from outbox_cursor) and id <= $1)",
    )
    .bind(up_to_id)
    .fetch_one(conn)
    .await
}

/// The bulk and its single changes; orders/s to committed.
async fn bench(system: &System, args: &BulkArgs) -> anyhow::Result<f64> {
    let admin = token::admin(system::SECRET);
    let http = reqwest::Client::new();
    let mut db = PgConnection::connect(&system.db_url).await?;

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

    let meter = cpu::Meter::new(system.pid());
    let before = meter.sample();
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
    let check = sqlx::PgPool::connect(&system.db_url).await?;
    // Every bulk event has an outbox id up to the newest one now: the bulk has committed.
    let last_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from outbox")
        .fetch_one(&check)
        .await?;
    let published = committed
        + wait_for("every event published", limit, || async {
            let mut conn = check.acquire().await?;
            Ok(is_published(&mut conn, last_id).await?)
        })
        .await?;
    let wall = started.elapsed();
    let used = cpu::Usage::between(&before, &meter.sample());
    driver.0.cancel();
    let (latencies, errors) = driver.1.await?;
    let singles = stats::Latency::of(latencies);

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
        singles.count, singles.p50, singles.p99, singles.max
    );
    println!("wall time from submit: {wall:.2?}");
    used.print(applied as usize, "order applied, to published");
    check.close().await;
    Ok(per_sec(committed))
}
