//! Creating an order: the body checked, then the order, its items, its first history row
//! (`create`, to `pending`) and its `order.created` event in one transaction.

use super::read::OrderView;
use crate::domain::{Actor, OrderChange, RejectCode, Role, change::CREATE};
use crate::event::NewEvent;
use crate::http::ApiError;
use crate::store::changes::{self, Changes};
use crate::store::orders::{self, NewItem, NewOrder, OrderItem};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: i32 = 1_000_000;
pub const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000_000;

/// The `POST /orders` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ItemIn>,
    /// ISO 4217 code; `USD` when omitted.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Admin and system may create an order for a customer; a customer's own id otherwise.
    pub customer_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemIn {
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub quantity: i32,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub unit_price_cents: i64,
}

/// 1-64 characters of A-Z a-z 0-9 - _ . : (an inventory key, in paths too).
pub fn valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Whose order it is: the caller's own, or (admin, system) the named customer's.
fn owner(actor: &Actor, customer_id: Option<Uuid>) -> Result<Uuid, ApiError> {
    match (actor.role, customer_id) {
        (_, None) => Ok(actor.id),
        (Role::Admin | Role::System, Some(id)) => Ok(id),
        (Role::Customer, Some(_)) => Err(ApiError::BadRequest(
            "customers create orders for themselves: omit `customer_id`".into(),
        )),
        (Role::Support, Some(_)) => Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "only admin and system may create orders for a customer",
        )),
    }
}

/// The items as they will be stored, and the order's total.
fn checked_items(items: Vec<ItemIn>) -> Result<(Vec<NewItem>, i64), ApiError> {
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(ApiError::BadRequest(format!(
            "an order has 1 to {MAX_ITEMS} items"
        )));
    }
    let mut total: i64 = 0;
    let mut checked = Vec::with_capacity(items.len());
    for (n, item) in items.into_iter().enumerate() {
        if !valid_sku(&item.sku) {
            return Err(ApiError::BadRequest(format!(
                "items[{n}].sku: 1-64 characters of A-Z a-z 0-9 - _ . :"
            )));
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(ApiError::BadRequest(format!(
                "items[{n}].quantity must be 1 to {MAX_QUANTITY}"
            )));
        }
        if !(0..=MAX_UNIT_PRICE_CENTS).contains(&item.unit_price_cents) {
            return Err(ApiError::BadRequest(format!(
                "items[{n}].unit_price_cents must be 0 to {MAX_UNIT_PRICE_CENTS}"
            )));
        }
        total = item
            .unit_price_cents
            .checked_mul(item.quantity.into())
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| ApiError::BadRequest("order total is too large".into()))?;
        checked.push(NewItem {
            sku: item.sku,
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
        });
    }
    Ok((checked, total))
}

/// Create an order for `actor` (or, for admin and system, for the named customer).
#[tracing::instrument(skip_all, fields(actor = %actor.id, order_id), err)]
pub async fn create_order(
    pool: &PgPool,
    actor: Actor,
    body: CreateOrder,
    traceparent: String,
) -> Result<OrderView, ApiError> {
    let customer_id = owner(&actor, body.customer_id)?;
    let currency = body.currency.unwrap_or_else(|| "USD".to_owned());
    if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(ApiError::BadRequest(format!(
            "`currency` must be an ISO 4217 code like EUR, got `{currency}`"
        )));
    }
    let (items, total_cents) = checked_items(body.items)?;

    let id = Uuid::now_v7();
    tracing::Span::current().record("order_id", tracing::field::display(id));
    let mut tx = pool.begin().await?;
    let new = NewOrder {
        id,
        customer_id,
        currency: &currency,
        total_cents,
        items: &items,
    };
    let order = orders::insert(&mut tx, &new).await?;
    let created = OrderChange {
        order_id: id,
        customer_id,
        action: CREATE,
        from: None,
        to: order.status,
        payment_status: order.payment_status,
        version: order.version,
        at: order.created_at,
        actor,
        reason: None,
        job_id: None,
        bulk_id: None,
        traceparent: Some(traceparent),
    };
    let changes = Changes {
        at: order.created_at,
        history: std::slice::from_ref(&created),
        events: &[NewEvent::order(&created)],
        ..Changes::default()
    };
    changes::write(&mut tx, &changes).await?;
    tx.commit().await?;
    tracing::info!(%customer_id, "order created");
    let items = items
        .into_iter()
        .zip(1..)
        .map(|(i, line)| OrderItem {
            order_id: id,
            line,
            sku: i.sku,
            quantity: i.quantity,
            unit_price_cents: i.unit_price_cents,
            reserved: 0,
        })
        .collect();
    Ok(OrderView { order, items })
}
