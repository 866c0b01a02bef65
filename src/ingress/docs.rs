//! The state machine, documented by the table itself: JSON or a Mermaid diagram.

use super::IngressState;
use crate::domain::{OrderStatus, PaymentStatus, RejectCode, Role, TRANSITIONS};
use crate::http::ApiError;
use crate::http::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub fn router() -> Router<IngressState> {
    Router::new().route("/orders/state-machine/documentation", get(documentation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocParams {
    format: Option<String>,
}

async fn documentation(Query(p): Query<DocParams>) -> Result<Response, ApiError> {
    match p.format.as_deref() {
        None | Some("json") => Ok(Json(json!({
            "statuses": OrderStatus::ALL,
            "payment_statuses": PaymentStatus::ALL,
            "roles": Role::ALL,
            "rejection_codes": RejectCode::ALL,
            "actions": TRANSITIONS.iter().map(|t| json!({
                "action": t.action,
                "from": t.from,
                // null: the status is unchanged (the action changes context only).
                "to": t.to,
                "roles": t.roles,
                "customer_only_from": (!t.customer_from.is_empty()).then_some(t.customer_from),
                "guards": t.guards,
                "effects": t.effects,
            })).collect::<Vec<_>>(),
        }))
        .into_response()),
        Some("mermaid") => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::domain::machine::mermaid(),
        )
            .into_response()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format `{other}`; use json or mermaid"
        ))),
    }
}
