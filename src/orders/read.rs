//! Reading orders as the API shows them, and the one visibility rule: someone else's
//! order is "not found" — its existence is not the caller's business.

use crate::domain::Actor;
use crate::http::ApiError;
use crate::store::orders::{self, Order, OrderItem};
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// An order as the API shows it: the row plus its items.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    #[serde(flatten)]
    pub order: Order,
    pub items: Vec<OrderItem>,
}

impl OrderView {
    pub async fn load(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Self>> {
        let Some(order) = orders::get(conn, id).await? else {
            return Ok(None);
        };
        let items = orders::items(conn, &[id]).await?;
        Ok(Some(OrderView { order, items }))
    }

    /// Views of a page of orders, each with its items (one query for all items).
    pub async fn of_page(conn: &mut PgConnection, page: Vec<Order>) -> sqlx::Result<Vec<Self>> {
        let ids: Vec<Uuid> = page.iter().map(|o| o.id).collect();
        let mut by_order: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
        for item in orders::items(conn, &ids).await? {
            by_order.entry(item.order_id).or_default().push(item);
        }
        Ok(page
            .into_iter()
            .map(|order| {
                let items = by_order.remove(&order.id).unwrap_or_default();
                OrderView { order, items }
            })
            .collect())
    }
}

/// The order if `actor` may see it.
pub async fn visible_order(
    conn: &mut PgConnection,
    actor: &Actor,
    id: Uuid,
) -> Result<Order, ApiError> {
    match orders::get(conn, id).await? {
        Some(o) if actor.may_see(o.customer_id) => Ok(o),
        _ => Err(ApiError::NotFound("order")),
    }
}
