//! Stock levels per sku (admin and system write; support may read).

use super::IngressState;
use crate::domain::{Actor, RejectCode, Role};
use crate::http::ApiError;
use crate::http::extract::{Json, Path};
use crate::http::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable,
};
use crate::orders::create::valid_sku;
use crate::store::inventory;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;

pub fn router() -> Router<IngressState> {
    Router::new().route("/inventory/{sku}", get(read).put(write))
}

/// A sku as order items may carry it; anything else (a NUL, a space) is a 400 here rather
/// than a database error later.
fn checked_sku(sku: &str) -> Result<(), ApiError> {
    if valid_sku(sku) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "sku: 1-64 characters of A-Z a-z 0-9 - _ . :".into(),
        ))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    #[schema(minimum = 0)]
    on_hand: i64,
}

#[utoipa::path(
    put,
    path = "/inventory/{sku}",
    operation_id = "set_stock",
    tag = "inventory",
    summary = "Set a sku's stock on hand (admin, system)",
    description = "Creates the inventory row when missing: the sku becomes stock-tracked.",
    request_body = SetStock,
    params(("sku" = String, Path, description = "1-64 characters of A-Z a-z 0-9 - _ . :", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 200, description = "The stock level", body = inventory::Stock,
            links(("get_stock" = (operation_id = "get_stock", parameters(("sku" = "$response.body#/sku")))))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]

async fn write(
    State(state): State<IngressState>,
    actor: Actor,
    Path(sku): Path<String>,
    Json(body): Json<SetStock>,
) -> Result<axum::Json<inventory::Stock>, ApiError> {
    if !matches!(actor.role, Role::Admin | Role::System) {
        return Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "only admin and system may set stock",
        ));
    }
    checked_sku(&sku)?;
    if body.on_hand < 0 {
        return Err(ApiError::BadRequest(
            "`on_hand` must not be negative".into(),
        ));
    }
    let mut conn = state.pool.acquire().await?;
    match inventory::set_on_hand(&mut conn, &sku, body.on_hand).await {
        Ok(stock) => Ok(axum::Json(stock)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514") => {
            Err(ApiError::Conflict(
                "below_reserved",
                "`on_hand` cannot go below what confirmed orders have reserved".into(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(
    get,
    path = "/inventory/{sku}",
    operation_id = "get_stock",
    tag = "inventory",
    summary = "Read a sku's stock (admin, system, support)",
    params(("sku" = String, Path, description = "1-64 characters of A-Z a-z 0-9 - _ . :", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 200, description = "The stock level", body = inventory::Stock),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn read(
    State(state): State<IngressState>,
    actor: Actor,
    Path(sku): Path<String>,
) -> Result<axum::Json<inventory::Stock>, ApiError> {
    if actor.role == Role::Customer {
        return Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "customers may not read stock levels",
        ));
    }
    checked_sku(&sku)?;
    let mut conn = state.pool.acquire().await?;
    inventory::get(&mut conn, &sku)
        .await?
        .map(axum::Json)
        .ok_or(ApiError::NotFound("stock-tracked sku"))
}
