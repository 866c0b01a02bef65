//! The state machine, documented by the table itself: JSON or a Mermaid diagram.

use super::IngressState;
use crate::domain::machine::{Effect, Guard};
use crate::domain::{Action, OrderStatus, PaymentStatus, RejectCode, Role, TRANSITIONS};
use crate::http::ApiError;
use crate::http::extract::Query;
use crate::http::openapi::{BadRequest, TooManyRequests};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<IngressState> {
    Router::new().route("/orders/state-machine/documentation", get(documentation))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DocParams {
    /// `json` (default) or `mermaid` (a `stateDiagram-v2`, as text).
    #[param(pattern = "^(json|mermaid)$")]
    format: Option<String>,
}

/// The state machine table.
#[derive(Serialize, ToSchema)]
pub struct MachineDoc {
    statuses: Vec<OrderStatus>,
    payment_statuses: Vec<PaymentStatus>,
    roles: Vec<Role>,
    rejection_codes: Vec<RejectCode>,
    actions: Vec<TransitionDoc>,
}

/// One row of the table.
#[derive(Serialize, ToSchema)]
pub struct TransitionDoc {
    action: Action,
    from: Vec<OrderStatus>,
    /// null: the status is unchanged (the action changes context only).
    #[schema(required)]
    to: Option<OrderStatus>,
    roles: Vec<Role>,
    /// The statuses in which a customer may act on its own order; null when customers
    /// may not.
    #[schema(required)]
    customer_only_from: Option<Vec<OrderStatus>>,
    guards: Vec<Guard>,
    effects: Vec<Effect>,
}

#[utoipa::path(
    get,
    path = "/orders/state-machine/documentation",
    operation_id = "get_state_machine",
    tag = "orders",
    summary = "The state machine: statuses, roles, and every action with its guards and effects",
    description = "Needs no token.",
    params(DocParams),
    responses(
        (status = 200, description = "The table as JSON, or a Mermaid diagram with `format=mermaid`",
            content((MachineDoc = "application/json"), (String = "text/plain"))),
        (status = 400, response = BadRequest),
        (status = 429, response = TooManyRequests),
    )
)]
async fn documentation(Query(p): Query<DocParams>) -> Result<Response, ApiError> {
    match p.format.as_deref() {
        None | Some("json") => Ok(Json(MachineDoc {
            statuses: OrderStatus::ALL.to_vec(),
            payment_statuses: PaymentStatus::ALL.to_vec(),
            roles: Role::ALL.to_vec(),
            rejection_codes: RejectCode::ALL.to_vec(),
            actions: TRANSITIONS
                .iter()
                .map(|t| TransitionDoc {
                    action: t.action,
                    from: t.from.to_vec(),
                    to: t.to,
                    roles: t.roles.to_vec(),
                    customer_only_from: (!t.customer_from.is_empty())
                        .then(|| t.customer_from.to_vec()),
                    guards: t.guards.to_vec(),
                    effects: t.effects.to_vec(),
                })
                .collect(),
        })
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
