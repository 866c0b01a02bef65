//! Orders over HTTP: create, read, list, history, valid actions, and `change-status`, which
//! queues a job and answers 202 only after the broker confirmed it. Each handler extracts,
//! calls its use case in [`crate::orders`] and renders.

use super::IngressState;
use crate::domain::{Actor, OrderStatus};
use crate::http::ApiError;
use crate::http::extract::{Json, Path, Query};
use crate::http::headers::{IdempotencyKey, IfMatch, PreferWait, TraceParent};
use crate::orders::ChangeCommand;
use crate::orders::apply::Batch;
use crate::orders::command::ChangeBody;
use crate::orders::create::{CreateOrder, create_order};
use crate::orders::read::{OrderView, visible_order};
use crate::orders::submit::{ChangeSubmission, Submitted, submit_change};
use crate::store::jobs::{Job, JobView};
use crate::store::{history, orders};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

pub fn router() -> Router<IngressState> {
    Router::new()
        .route("/orders", post(create).get(list))
        .route("/orders/{id}", get(read))
        .route("/orders/{id}/history", get(read_history))
        .route("/orders/{id}/valid-actions", get(valid_actions))
        .route("/orders/{id}/change-status", post(change_status))
}

pub const MAX_PAGE: i64 = 200;

/// An order with its `ETag` (the version); a created one also with its `Location`.
fn render_order(status: StatusCode, view: OrderView) -> Response {
    let etag = etag(view.order.version);
    let location = HeaderValue::from_str(&format!("/orders/{}", view.order.id))
        .expect("uuid is a valid header");
    let mut response = (status, axum::Json(view)).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    if status == StatusCode::CREATED {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

async fn create(
    State(state): State<IngressState>,
    actor: Actor,
    TraceParent(traceparent): TraceParent,
    Json(body): Json<CreateOrder>,
) -> Result<Response, ApiError> {
    let view = create_order(&state.pool, actor, body, traceparent).await?;
    Ok(render_order(StatusCode::CREATED, view))
}

async fn read(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await?;
    visible_order(&mut conn, &actor, id).await?;
    let view = OrderView::load(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    Ok(render_order(StatusCode::OK, view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<OrderStatus>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

async fn list(
    State(state): State<IngressState>,
    actor: Actor,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let customer = (!actor.role.sees_all_orders()).then_some(actor.id);
    let mut conn = state.pool.acquire().await?;
    let mut page = orders::list(&mut conn, customer, p.status, p.cursor, limit + 1).await?;
    let next_cursor = (page.len() as i64 > limit).then(|| page[limit as usize - 1].id);
    page.truncate(limit as usize);
    let views = OrderView::of_page(&mut conn, page).await?;
    Ok(axum::Json(json!({ "orders": views, "next_cursor": next_cursor })).into_response())
}

async fn read_history(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await?;
    visible_order(&mut conn, &actor, id).await?;
    let rows = history::for_order(&mut conn, id).await?;
    let rows: Vec<history::EntryView> = rows.into_iter().map(Into::into).collect();
    Ok(axum::Json(json!({ "history": rows })).into_response())
}

async fn valid_actions(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let order = visible_order(&mut conn, &actor, id).await?;
    // Read, not locked: this is advice; the worker decides under locks.
    let batch = Batch::load(&mut conn, &[id], false).await?;
    let actions = batch
        .valid_actions(id, &actor)
        .ok_or(ApiError::NotFound("order"))?;
    Ok(axum::Json(json!({ "order_id": id, "status": order.status, "version": order.version, "actions": actions })).into_response())
}

fn accepted(status: StatusCode, job: &Job) -> Response {
    let body = json!({ "job_id": job.id, "order_id": job.order_id, "status": job.status });
    let mut response = (status, axum::Json(body)).into_response();
    let location =
        HeaderValue::from_str(&format!("/jobs/{}", job.id)).expect("uuid is a valid header");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

#[allow(clippy::too_many_arguments)] // one extractor per header of the contract
async fn change_status(
    State(state): State<IngressState>,
    actor: Actor,
    Path(order_id): Path<Uuid>,
    IfMatch(if_match): IfMatch,
    PreferWait(wait): PreferWait,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    TraceParent(traceparent): TraceParent,
    Json(body): Json<ChangeBody>,
) -> Result<Response, ApiError> {
    let command = ChangeCommand::parse(body)
        .and_then(|c| c.expecting(if_match))
        .map_err(|e| ApiError::BadRequest(e.0))?;
    let max_wait = Duration::from_secs(state.cfg.max_wait_secs);
    let submission = ChangeSubmission {
        order_id,
        command,
        idempotency_key,
        traceparent,
        wait: wait.map(|w| w.min(max_wait)),
    };
    Ok(
        match submit_change(&state.pool, &state.publisher, actor, submission).await? {
            Submitted::Queued(job) => accepted(StatusCode::ACCEPTED, &job),
            Submitted::Repeat(job) if job.status.is_terminal() => accepted(StatusCode::OK, &job),
            Submitted::Repeat(job) => accepted(StatusCode::ACCEPTED, &job),
            Submitted::Applied(job, order) => {
                let etag = etag(order.order.version);
                let body = json!({ "job": JobView::from(job), "order": order });
                let mut response = axum::Json(body).into_response();
                response.headers_mut().insert(header::ETAG, etag);
                response
            }
        },
    )
}
