//! Orders: create, read, list, history, valid actions, and `change-status`, which queues a
//! job and answers 202 only after the broker confirmed it.

use super::IngressState;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use crate::domain::machine;
use crate::domain::{Action, Actor, OrderStatus, RejectCode, Rejection, Role};
use crate::event::{Change, NewEvent};
use crate::job::{ChangeStatus, JobMessage};
use crate::store::jobs::{Job, JobView, KIND_CHANGE_STATUS, NewJob};
use crate::store::orders::{NewItem, NewOrder, Order, OrderItem};
use crate::store::{history, jobs, orders, outbox};
use crate::worker::apply::Batch;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
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

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i32 = 1_000_000;
const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000_000;
const MAX_REASON_CHARS: usize = 500;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// An order as the API shows it: the row plus its items.
#[derive(Serialize)]
pub struct OrderView {
    #[serde(flatten)]
    pub order: Order,
    pub items: Vec<OrderItem>,
}

fn with_etag(status: StatusCode, view: OrderView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.order.version))
        .expect("digits are a valid header");
    let location = HeaderValue::from_str(&format!("/orders/{}", view.order.id))
        .expect("uuid is a valid header");
    let mut response = (status, axum::Json(view)).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    if status == StatusCode::CREATED {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The order if `actor` may see it. Someone else's order is "not found": its existence is
/// not the caller's business.
async fn visible_order(state: &IngressState, actor: &Actor, id: Uuid) -> Result<Order, ApiError> {
    let mut conn = state.pool.acquire().await?;
    match orders::get(&mut conn, id).await? {
        Some(o) if actor.may_see(o.customer_id) => Ok(o),
        _ => Err(ApiError::NotFound("order")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    items: Vec<ItemIn>,
    currency: Option<String>,
    customer_id: Option<Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemIn {
    sku: String,
    quantity: i32,
    unit_price_cents: i64,
}

fn valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

async fn create(
    State(state): State<IngressState>,
    actor: Actor,
    headers: HeaderMap,
    Json(body): Json<CreateOrder>,
) -> Result<Response, ApiError> {
    let customer_id = match (actor.role, body.customer_id) {
        (_, None) => actor.id,
        (Role::Admin | Role::System, Some(id)) => id,
        (Role::Customer, Some(_)) => {
            return Err(ApiError::BadRequest(
                "customers create orders for themselves: omit `customer_id`".into(),
            ));
        }
        (Role::Support, Some(_)) => {
            return Err(ApiError::forbidden(
                RejectCode::ForbiddenRole,
                "only admin and system may create orders for a customer",
            ));
        }
    };
    let currency = body.currency.unwrap_or_else(|| "USD".to_owned());
    if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(ApiError::BadRequest(format!(
            "`currency` must be an ISO 4217 code like EUR, got `{currency}`"
        )));
    }
    if body.items.is_empty() || body.items.len() > MAX_ITEMS {
        return Err(ApiError::BadRequest(format!(
            "an order has 1 to {MAX_ITEMS} items"
        )));
    }
    let mut total: i64 = 0;
    let mut items = Vec::with_capacity(body.items.len());
    for (n, item) in body.items.into_iter().enumerate() {
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
        items.push(NewItem {
            sku: item.sku,
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
        });
    }

    let id = Uuid::now_v7();
    let mut tx = state.pool.begin().await?;
    let order = orders::insert(
        &mut tx,
        &NewOrder {
            id,
            customer_id,
            currency: &currency,
            total_cents: total,
            items: &items,
        },
    )
    .await?;
    let traceparent = crate::trace::for_request(&headers);
    let change = Change {
        action: "create",
        from: None,
        actor,
        reason: None,
        job_id: None,
        bulk_id: None,
        traceparent: Some(&traceparent),
    };
    let created = history::NewRow {
        order_id: id,
        from: None,
        to: order.status.as_str().to_owned(),
        action: change.action.to_owned(),
        actor_id: actor.id,
        actor_role: actor.role,
        reason: None,
        job_id: None,
        bulk_id: None,
        version: order.version,
    };
    history::insert_many(&mut tx, &[created], order.created_at).await?;
    outbox::insert_many(&mut tx, &[NewEvent::order(&order, &change)]).await?;
    tx.commit().await?;
    tracing::info!(order_id = %id, %customer_id, "order created");
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
    Ok(with_etag(StatusCode::CREATED, OrderView { order, items }))
}

async fn read(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let order = visible_order(&state, &actor, id).await?;
    let items = orders::items(&mut *state.pool.acquire().await?, &[id]).await?;
    Ok(with_etag(StatusCode::OK, OrderView { order, items }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<OrderStatus>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

const MAX_PAGE: i64 = 200;

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
    let page = orders::list(&mut conn, customer, p.status, p.cursor, limit + 1).await?;
    let more = page.len() as i64 > limit;
    let page: Vec<Order> = page.into_iter().take(limit as usize).collect();
    let ids: Vec<Uuid> = page.iter().map(|o| o.id).collect();
    let items = orders::items(&mut conn, &ids).await?;
    let next_cursor = if more {
        page.last().map(|o| o.id)
    } else {
        None
    };
    let views: Vec<OrderView> = page
        .into_iter()
        .map(|order| {
            let mine = items
                .iter()
                .filter(|i| i.order_id == order.id)
                .cloned()
                .collect();
            OrderView { order, items: mine }
        })
        .collect();
    Ok(axum::Json(json!({ "orders": views, "next_cursor": next_cursor })).into_response())
}

async fn read_history(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    visible_order(&state, &actor, id).await?;
    let rows = history::for_order(&mut *state.pool.acquire().await?, id).await?;
    let rows: Vec<history::EntryView> = rows.into_iter().map(Into::into).collect();
    Ok(axum::Json(json!({ "history": rows })).into_response())
}

async fn valid_actions(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let order = visible_order(&state, &actor, id).await?;
    // Read, not locked: this is advice; the worker decides under locks.
    let batch = Batch::load(&mut *state.pool.acquire().await?, &[id], false).await?;
    let actions = batch
        .valid_actions(id, &actor)
        .ok_or(ApiError::NotFound("order"))?;
    Ok(axum::Json(json!({ "order_id": id, "status": order.status, "version": order.version, "actions": actions })).into_response())
}

/// The `change-status` body. Unknown fields are refused: a client that tries to set
/// `status` or `version` directly learns at once that it cannot.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeStatusBody {
    action: Option<Action>,
    to: Option<OrderStatus>,
    reason: Option<String>,
    expected_version: Option<i64>,
    tracking_number: Option<String>,
}

/// `If-Match: "3"` (or `W/"3"`, or `3`) as an expected version.
fn if_match_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<i64>().map(Some).map_err(|_| {
        ApiError::BadRequest("If-Match must be an order version (the ETag), like \"3\"".into())
    })
}

/// `Prefer: wait=N` (RFC 7240), capped by configuration.
fn preferred_wait(headers: &HeaderMap, max: u64) -> Result<Option<Duration>, ApiError> {
    for value in headers.get_all("prefer") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::BadRequest("unreadable Prefer header".into()))?;
        for pref in text.split([',', ';']) {
            if let Some(n) = pref.trim().strip_prefix("wait=") {
                let secs: u64 = n.trim().parse().map_err(|_| {
                    ApiError::BadRequest("Prefer: wait=N takes whole seconds".into())
                })?;
                return Ok(Some(Duration::from_secs(secs.min(max))));
            }
        }
    }
    Ok(None)
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

fn accepted(job: &Job) -> Response {
    let body = json!({ "job_id": job.id, "order_id": job.order_id, "status": job.status });
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    let location =
        HeaderValue::from_str(&format!("/jobs/{}", job.id)).expect("uuid is a valid header");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

#[tracing::instrument(skip_all, fields(order_id = %id, actor = %actor.id, job_id))]
async fn change_status(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<ChangeStatusBody>,
) -> Result<Response, ApiError> {
    // Shape first: everything here is a 400 and changes nothing.
    if body.action.is_some() == body.to.is_some() {
        return Err(ApiError::BadRequest(
            "give exactly one of `action` and `to`".into(),
        ));
    }
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::BadRequest(format!(
            "`reason` is at most {MAX_REASON_CHARS} characters"
        )));
    }
    if body.tracking_number.as_ref().is_some_and(|t| t.len() > 100) {
        return Err(ApiError::BadRequest(
            "`tracking_number` is at most 100 characters".into(),
        ));
    }
    let expected_version = match (body.expected_version, if_match_version(&headers)?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::BadRequest(
                "`expected_version` and If-Match disagree".into(),
            ));
        }
        (a, b) => a.or(b),
    };
    let wait = preferred_wait(&headers, state.cfg.max_wait_secs)?;
    let key = idempotency_key(&headers)?;
    if let Some(action) = body.action {
        if !machine::role_may(actor.role, action) {
            return Err(ApiError::forbidden(
                RejectCode::ForbiddenRole,
                format!("role `{}` may not {action}", actor.role),
            ));
        }
    }
    let order = visible_order(&state, &actor, id).await?;

    let payload = serde_json::to_value(ChangeStatus {
        action: body.action,
        to: body.to,
        reason: body.reason,
        expected_version,
        tracking_number: body.tracking_number,
    })
    .expect("payload serializes");
    let job_id = Uuid::now_v7();
    tracing::Span::current().record("job_id", tracing::field::display(job_id));
    let traceparent = crate::trace::for_request(&headers);
    let new = NewJob {
        id: job_id,
        kind: KIND_CHANGE_STATUS,
        order_id: Some(id),
        bulk_id: None,
        actor_id: actor.id,
        actor_role: actor.role,
        payload: &payload,
        idempotency_key: key.as_deref(),
        traceparent: Some(&traceparent),
    };
    let mut conn = state.pool.acquire().await?;
    let Some(job) = jobs::insert(&mut conn, &new).await? else {
        // A repeat: answer with the first job, queue nothing.
        let key = key.expect("only keyed inserts can conflict");
        let first = jobs::by_idempotency_key(&mut conn, actor.id, &key)
            .await?
            .ok_or(ApiError::NotFound("job"))?;
        if first.order_id != Some(id) {
            return Err(ApiError::Unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for another order".into(),
            ));
        }
        let status = if first.is_terminal() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        let mut response = accepted(&first);
        *response.status_mut() = status;
        return Ok(response);
    };
    drop(conn);

    let waiter = wait.map(|_| state.publisher.expect_reply(job_id));
    if let Err(e) = state
        .publisher
        .publish(
            &JobMessage { job_id },
            &actor,
            Some(order.customer_id),
            Some(&traceparent),
            waiter.is_some(),
        )
        .await
    {
        // Not confirmed: cancel the job so nothing applies it later, then say 503 — unless a
        // worker already took it, in which case it was queued after all.
        let error = json!({ "code": "not_queued", "message": e.to_string() });
        match jobs::abandon_unqueued(&mut *state.pool.acquire().await?, job_id, &error).await {
            Ok(true) => return Err(e.into()),
            Ok(false) => {
                tracing::warn!(error = %e, "publish unconfirmed but the job was already taken by a worker")
            }
            Err(db) => {
                tracing::error!(error = %db, "could not cancel an unconfirmed job; the sweeper will requeue it");
                return Err(e.into());
            }
        }
    } else {
        tracing::info!("job queued");
    }

    let (Some(waiter), Some(limit)) = (waiter, wait) else {
        return Ok(accepted(&job));
    };
    waiter.wait(limit).await;
    // The reply only wakes us; the database says what happened.
    let mut conn = state.pool.acquire().await?;
    let job = jobs::get(&mut conn, job_id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    match job.status.as_str() {
        "succeeded" => {
            let order = orders::get(&mut conn, id)
                .await?
                .ok_or(ApiError::NotFound("order"))?;
            let items = orders::items(&mut conn, &[id]).await?;
            let etag = HeaderValue::from_str(&format!("\"{}\"", order.version)).expect("digits");
            let mut response = axum::Json(
                json!({ "job": JobView::from(job), "order": OrderView { order, items } }),
            )
            .into_response();
            response.headers_mut().insert(header::ETAG, etag);
            Ok(response)
        }
        "rejected" => {
            let error = job.error.clone().unwrap_or_default();
            let code: RejectCode = serde_json::from_value(error["code"].clone())
                .map_err(|e| anyhow::anyhow!("job {job_id} has an unknown rejection code: {e}"))?;
            let message = error["message"].as_str().unwrap_or_default().to_owned();
            Err(ApiError::Rejected(
                Rejection::new(code, message),
                Some(job_id),
            ))
        }
        _ => Ok(accepted(&job)),
    }
}
