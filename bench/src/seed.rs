//! Orders to act on, written straight into the run's database: seeding is not what a
//! benchmark measures, and SQL makes a hundred thousand orders in seconds.

use sqlx::PgConnection;
use uuid::Uuid;

/// `n` new pending, unpaid orders with one item each; all of `customer`, or each of its
/// own customer (so no per-customer limit or lock is shared between them). Written to
/// disk before it returns (a checkpoint; the benchmark connects as a superuser).
pub async fn orders(
    db: &mut PgConnection,
    n: usize,
    customer: Option<Uuid>,
) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "insert into orders (id, customer_id, total_cents, currency)
         select gen_random_uuid(), coalesce($2, gen_random_uuid()), 1250, 'EUR'
         from generate_series(1, $1)
         returning id",
    )
    .bind(n as i64)
    .bind(customer)
    .fetch_all(&mut *db)
    .await?;
    sqlx::query(
        "insert into order_items (order_id, line, sku, quantity, unit_price_cents)
         select id, 1, 'bench-tea', 1, 1250 from unnest($1::uuid[]) id",
    )
    .bind(&ids)
    .execute(&mut *db)
    .await?;
    sqlx::query("analyze").execute(&mut *db).await?;
    // The seeding's WAL would otherwise start a checkpoint during what is measured, and
    // every page first written after a checkpoint goes into the WAL whole: a spell of slow
    // commits the system did not cause (seen as a submit->event spell seconds after
    // `changes --overload`'s burst, which seeds ~450,000 orders right before it).
    sqlx::query("checkpoint").execute(&mut *db).await?;
    Ok(ids)
}
