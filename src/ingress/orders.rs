//! Orders over HTTP: create, read, list, history, valid actions, and `change-status`, which
//! queues a job and answers 202 only after the broker confirmed it. Each handler extracts,
//! calls its use case in [`crate::orders`] and renders.

use super::IngressState;
use super::admission::{QueueRoom, Slot};
use crate::domain::{ActionAvailability, Actor, JobStatus, OrderStatus};
use crate::http::ApiError;
use crate::http::extract::{Json, Path, Query};
use crate::http::headers::{IdempotencyKey, IfMatch, PreferWait, TraceParent};
use crate::http::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable, Unprocessable,
};
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
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
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

#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "create_order",
    tag = "orders",
    summary = "Create an order",
    description = "A customer creates orders for itself; admin and system may name `customer_id`. The order starts `pending` and `unpaid`.",
    request_body = CreateOrder,
    params(TraceParentHeader),
    responses(
        (status = 201, description = "Created", body = OrderView,
            headers(("Location" = String, description = "/orders/{id}"), ("ETag" = String, description = "The order version, quoted")),
            links(
                ("get_order" = (operation_id = "get_order", parameters(("id" = "$response.body#/id")))),
                ("get_order_history" = (operation_id = "get_order_history", parameters(("id" = "$response.body#/id")))),
                ("get_valid_actions" = (operation_id = "get_valid_actions", parameters(("id" = "$response.body#/id")))),
                ("change_status" = (operation_id = "change_status", parameters(("id" = "$response.body#/id"))))
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn create(
    State(state): State<IngressState>,
    actor: Actor,
    TraceParent(traceparent): TraceParent,
    Json(body): Json<CreateOrder>,
) -> Result<Response, ApiError> {
    let view = create_order(&state.pool, actor, body, traceparent).await?;
    Ok(render_order(StatusCode::CREATED, view))
}

#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "get_order",
    tag = "orders",
    summary = "Read an order",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = OrderView,
            headers(("ETag" = String, description = "The order version, quoted"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only orders in this status.
    status: Option<OrderStatus>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

/// A page of orders in id order; customers see their own only.
#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<Uuid>,
}

#[utoipa::path(
    get,
    path = "/orders",
    operation_id = "list_orders",
    tag = "orders",
    summary = "List orders",
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]

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
    Ok(axum::Json(OrderPage {
        orders: views,
        next_cursor,
    })
    .into_response())
}

/// An order's audit log, oldest first.
#[derive(Serialize, ToSchema)]
pub struct History {
    history: Vec<history::EntryView>,
}

#[utoipa::path(
    get,
    path = "/orders/{id}/history",
    operation_id = "get_order_history",
    tag = "orders",
    summary = "An order's status history, oldest first",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The history", body = History),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn read_history(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await?;
    visible_order(&mut conn, &actor, id).await?;
    let rows = history::for_order(&mut conn, id).await?;
    let rows: Vec<history::EntryView> = rows.into_iter().map(Into::into).collect();
    Ok(axum::Json(History { history: rows }).into_response())
}

/// What this caller may do next with this order, every action judged now.
#[derive(Serialize, ToSchema)]
pub struct ValidActions {
    order_id: Uuid,
    status: OrderStatus,
    version: i64,
    actions: Vec<ActionAvailability>,
}

#[utoipa::path(
    get,
    path = "/orders/{id}/valid-actions",
    operation_id = "get_valid_actions",
    tag = "orders",
    summary = "The actions this caller may take on this order now",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "Every action, allowed or with its blocker", body = ValidActions),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
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
    Ok(axum::Json(ValidActions {
        order_id: id,
        status: order.status,
        version: order.version,
        actions,
    })
    .into_response())
}

/// A queued (or repeated) job; `Location: /jobs/{job_id}`.
#[derive(Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: Uuid,
    pub order_id: Option<Uuid>,
    pub status: JobStatus,
}

/// The outcome of a change waited for with `Prefer: wait`.
#[derive(Serialize, ToSchema)]
pub struct ChangeApplied {
    job: JobView,
    order: OrderView,
}

/// A 200 of `change-status`: the applied change, or the finished job of a repeat.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // the schema of two bodies the handler renders
enum ChangeOutcome {
    Applied(Box<ChangeApplied>),
    Repeat(JobAccepted),
}

#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documents headers the extractors read
struct ChangeHeaders {
    /// The order version (ETag) the change expects, e.g. `"3"`; same as `expected_version`.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
    /// `wait=<seconds>`: answer with the outcome (200, 409, 422) instead of 202 when it
    /// comes within that time.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
    /// A repeat by the same actor with the same key returns the first job.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 200)]
    idempotency_key: Option<String>,
    /// W3C trace context to continue; a new trace is started otherwise.
    #[param(rename = "traceparent")]
    traceparent: Option<String>,
}

/// W3C trace context to continue; a new trace is started otherwise.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documents a header the extractor reads
pub(crate) struct TraceParentHeader {
    #[param(rename = "traceparent")]
    traceparent: Option<String>,
}

fn accepted(status: StatusCode, job: &Job) -> Response {
    let body = JobAccepted {
        job_id: job.id,
        order_id: job.order_id,
        status: job.status,
    };
    let mut response = (status, axum::Json(body)).into_response();
    let location =
        HeaderValue::from_str(&format!("/jobs/{}", job.id)).expect("uuid is a valid header");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

#[utoipa::path(
    post,
    path = "/orders/{id}/change-status",
    operation_id = "change_status",
    tag = "orders",
    summary = "Queue a status change",
    description = "Give exactly one of `action` and `to`. Answers 202 once the job is durably queued; with `Prefer: wait=N`, the outcome (200, or the rejection's 409/422) if it comes in time.",
    request_body = ChangeBody,
    params(("id" = Uuid, Path, description = "Order id"), ChangeHeaders),
    responses(
        (status = 200, description = "Applied within `Prefer: wait` (`{job, order}`), or a repeated `Idempotency-Key` whose job has finished (`{job_id, order_id, status}`)",
            body = ChangeOutcome,
            headers(("Location" = String, description = "/jobs/{job_id}, for a repeat"), ("ETag" = String, description = "The new order version, when applied"))),
        (status = 202, description = "Queued", body = JobAccepted,
            headers(("Location" = String, description = "/jobs/{job_id}")),
            links(("get_job" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")))))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
#[allow(clippy::too_many_arguments)] // one extractor per header of the contract
async fn change_status(
    State(state): State<IngressState>,
    actor: Actor,
    Path(order_id): Path<Uuid>,
    IfMatch(if_match): IfMatch,
    PreferWait(wait): PreferWait,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    TraceParent(traceparent): TraceParent,
    _room: QueueRoom,
    slot: Slot,
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
    let submitted = submit_change(
        &state.pool,
        &state.intake,
        &state.publisher,
        actor,
        submission,
    )
    .await?;
    let submitted = match submitted {
        Submitted::Pending(pending) => {
            // Queued: waiting for the worker takes no admission slot.
            slot.release();
            pending.outcome(&state.pool).await?
        }
        other => other,
    };
    Ok(match submitted {
        Submitted::Queued(job) => accepted(StatusCode::ACCEPTED, &job),
        Submitted::Pending(pending) => accepted(StatusCode::ACCEPTED, pending.job()),
        Submitted::Repeat(job) if job.status.is_terminal() => accepted(StatusCode::OK, &job),
        Submitted::Repeat(job) => accepted(StatusCode::ACCEPTED, &job),
        Submitted::Applied(job, order) => {
            let etag = etag(order.order.version);
            let body = ChangeApplied {
                job: JobView::from(job),
                order,
            };
            let mut response = axum::Json(body).into_response();
            response.headers_mut().insert(header::ETAG, etag);
            response
        }
    })
}
