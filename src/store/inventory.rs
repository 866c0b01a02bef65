//! Stock per sku. Reservations move with the order state machine's stock effects.

use serde::Serialize;
use sqlx::PgConnection;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stock {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// Set the on-hand count. Fails with a check violation when it would go below what is reserved.
pub async fn set_on_hand(conn: &mut PgConnection, sku: &str, on_hand: i64) -> sqlx::Result<Stock> {
    sqlx::query_as!(
        Stock,
        r#"insert into inventory (sku, on_hand) values ($1, $2)
           on conflict (sku) do update set on_hand = excluded.on_hand, updated_at = now()
           returning sku, on_hand, reserved, on_hand - reserved as "available!""#,
        sku,
        on_hand,
    )
    .fetch_one(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, sku: &str) -> sqlx::Result<Option<Stock>> {
    sqlx::query_as!(
        Stock,
        r#"select sku, on_hand, reserved, on_hand - reserved as "available!" from inventory where sku = $1"#,
        sku,
    )
    .fetch_optional(conn)
    .await
}

/// The tracked skus among `skus`; with `lock`, locked for update in sku order (so that
/// concurrent batches cannot deadlock).
pub async fn load_many(
    conn: &mut PgConnection,
    skus: &[String],
    lock: bool,
) -> sqlx::Result<Vec<Stock>> {
    if lock {
        sqlx::query_as!(
            Stock,
            r#"select sku, on_hand, reserved, on_hand - reserved as "available!" from inventory
               where sku = any($1) order by sku for update"#,
            skus,
        )
        .fetch_all(conn)
        .await
    } else {
        sqlx::query_as!(
            Stock,
            r#"select sku, on_hand, reserved, on_hand - reserved as "available!" from inventory
               where sku = any($1) order by sku"#,
            skus,
        )
        .fetch_all(conn)
        .await
    }
}

/// Add `deltas` (sku, reserved delta, on_hand delta) to tracked skus; untracked skus are ignored.
pub async fn adjust(conn: &mut PgConnection, deltas: &[(String, i64, i64)]) -> sqlx::Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let skus: Vec<&str> = deltas.iter().map(|d| d.0.as_str()).collect();
    let reserved: Vec<i64> = deltas.iter().map(|d| d.1).collect();
    let on_hand: Vec<i64> = deltas.iter().map(|d| d.2).collect();
    sqlx::query!(
        "update inventory i set reserved = i.reserved + d.reserved, on_hand = i.on_hand + d.on_hand, updated_at = now()
         from (select sku, sum(r) as reserved, sum(o) as on_hand
               from unnest($1::text[], $2::bigint[], $3::bigint[]) as t(sku, r, o) group by sku) d
         where i.sku = d.sku",
        &skus as &[&str],
        &reserved,
        &on_hand,
    )
    .execute(conn)
    .await?;
    Ok(())
}
