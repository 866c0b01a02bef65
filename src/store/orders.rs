//! Orders and their items.

use crate::domain::{OrderStatus, PaymentStatus};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub total_cents: i64,
    pub currency: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderItem {
    #[serde(skip)]
    pub order_id: Uuid,
    #[serde(skip)]
    pub line: i32,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    /// Units of this line currently reserved in `inventory` (set by `confirm`).
    #[serde(skip)]
    pub reserved: i32,
}

pub struct NewOrder<'a> {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub currency: &'a str,
    pub total_cents: i64,
    pub items: &'a [NewItem],
}

#[derive(Debug, Clone)]
pub struct NewItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

pub async fn insert(conn: &mut PgConnection, new: &NewOrder<'_>) -> sqlx::Result<Order> {
    let order = sqlx::query_as!(
        Order,
        r#"insert into orders (id, customer_id, total_cents, currency) values ($1, $2, $3, $4)
           returning id, customer_id, status as "status: OrderStatus",
                  payment_status as "payment_status: PaymentStatus", total_cents, currency, version,
                  created_at, updated_at"#,
        new.id,
        new.customer_id,
        new.total_cents,
        new.currency,
    )
    .fetch_one(&mut *conn)
    .await?;
    let lines: Vec<i32> = (1..=new.items.len() as i32).collect();
    let skus: Vec<&str> = new.items.iter().map(|i| i.sku.as_str()).collect();
    let quantities: Vec<i32> = new.items.iter().map(|i| i.quantity).collect();
    let prices: Vec<i64> = new.items.iter().map(|i| i.unit_price_cents).collect();
    sqlx::query!(
        "insert into order_items (order_id, line, sku, quantity, unit_price_cents)
         select $1, * from unnest($2::int[], $3::text[], $4::int[], $5::bigint[])",
        new.id,
        &lines,
        &skus as &[&str],
        &quantities,
        &prices,
    )
    .execute(&mut *conn)
    .await?;
    Ok(order)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Order>> {
    sqlx::query_as!(
        Order,
        r#"select id, customer_id, status as "status: OrderStatus",
                  payment_status as "payment_status: PaymentStatus", total_cents, currency, version,
                  created_at, updated_at
           from orders where id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Load orders by id; with `lock`, lock them for update in id order (so that concurrent
/// batches never deadlock).
pub async fn load_many(
    conn: &mut PgConnection,
    ids: &[Uuid],
    lock: bool,
) -> sqlx::Result<Vec<Order>> {
    let Some((low, high)) = bounds(ids) else {
        return Ok(Vec::new());
    };
    // The id range lets the planner walk the primary key instead of scanning the table
    // for a long id list (bulk chunks are consecutive in id order).
    if lock {
        sqlx::query_as!(
            Order,
            r#"select id, customer_id, status as "status: OrderStatus",
                  payment_status as "payment_status: PaymentStatus", total_cents, currency, version,
                  created_at, updated_at
               from orders where id between $2 and $3 and id = any($1) order by id for update"#,
            ids,
            low,
            high,
        )
        .fetch_all(conn)
        .await
    } else {
        sqlx::query_as!(
            Order,
            r#"select id, customer_id, status as "status: OrderStatus",
                  payment_status as "payment_status: PaymentStatus", total_cents, currency, version,
                  created_at, updated_at
               from orders where id between $2 and $3 and id = any($1) order by id"#,
            ids,
            low,
            high,
        )
        .fetch_all(conn)
        .await
    }
}

/// The lowest and highest of `ids` (None when empty): a range the planner can walk the
/// primary key by.
pub(crate) fn bounds(ids: &[Uuid]) -> Option<(Uuid, Uuid)> {
    Some((*ids.iter().min()?, *ids.iter().max()?))
}

pub async fn items(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<Vec<OrderItem>> {
    sqlx::query_as!(
        OrderItem,
        "select order_id, line, sku, quantity, unit_price_cents, reserved from order_items
         where order_id = any($1) order by order_id, line",
        order_ids,
    )
    .fetch_all(conn)
    .await
}

/// Store how much of each line is reserved: (order, line, reserved units).
pub async fn store_reservations(
    conn: &mut PgConnection,
    lines: &[(Uuid, i32, i32)],
) -> sqlx::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let order_ids: Vec<Uuid> = lines.iter().map(|l| l.0).collect();
    let line_numbers: Vec<i32> = lines.iter().map(|l| l.1).collect();
    let reserved: Vec<i32> = lines.iter().map(|l| l.2).collect();
    sqlx::query!(
        "update order_items i set reserved = v.reserved
         from unnest($1::uuid[], $2::int[], $3::int[]) as v(order_id, line, reserved)
         where i.order_id = v.order_id and i.line = v.line",
        &order_ids,
        &line_numbers,
        &reserved,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One page of orders, newest first (ids are UUIDv7, so id order is creation order).
pub async fn list(
    conn: &mut PgConnection,
    customer_id: Option<Uuid>,
    status: Option<OrderStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Order>> {
    sqlx::query_as!(
        Order,
        r#"select id, customer_id, status as "status: OrderStatus",
                  payment_status as "payment_status: PaymentStatus", total_cents, currency, version,
                  created_at, updated_at
           from orders
           where ($1::uuid is null or customer_id = $1)
             and ($2::text is null or status = $2)
             and ($3::uuid is null or id < $3)
           order by id desc limit $4"#,
        customer_id,
        status.map(OrderStatus::as_str),
        before,
        limit,
    )
    .fetch_all(conn)
    .await
}
