//! Bulk operations over HTTP: filter and preview (admin, support), then apply in the
//! background (admin) with progress, results export and cancel. The use cases are in
//! [`crate::orders::bulk`].

use super::IngressState;
use crate::domain::{Actor, BulkStatus, RejectCode, Role};
use crate::http::ApiError;
use crate::http::extract::{Json, Path, Query};
use crate::http::headers::{IdempotencyKey, TraceParent};
use crate::http::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable,
};
use crate::ingress::orders::TraceParentHeader;
use crate::orders::bulk::{BulkChange, Preview};
use crate::store::bulk::{self, BulkView, ResultRow, Selection};
use crate::store::orders::Order;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn router() -> Router<IngressState> {
    Router::new()
        .route("/orders/bulk/filter", post(filter))
        .route("/orders/bulk/preview", post(preview))
        .route("/orders/bulk/status-update", post(status_update))
        .route("/orders/bulk/{id}", get(read))
        .route("/orders/bulk/{id}/results", get(results))
        .route("/orders/bulk/{id}/cancel", post(cancel))
}

fn staff(actor: &Actor) -> Result<(), ApiError> {
    match actor.role {
        Role::Admin | Role::Support => Ok(()),
        _ => Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "bulk operations are for admin and support",
        )),
    }
}

fn admin(actor: &Actor) -> Result<(), ApiError> {
    match actor.role {
        Role::Admin => Ok(()),
        _ => Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "only admins apply or cancel bulk operations",
        )),
    }
}

fn valid_selection(sel: &Selection) -> Result<(), ApiError> {
    sel.validate().map_err(ApiError::BadRequest)
}

const MAX_FILTER_PAGE: i64 = 1_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    selection: Selection,
    /// Page size (default 100).
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

/// A page of the selected orders (without items), in id order.
#[derive(Serialize, ToSchema)]
pub struct FilterPage {
    orders: Vec<Order>,
    /// How many orders the selection matches now.
    total: i64,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<Uuid>,
}

#[utoipa::path(
    post,
    path = "/orders/bulk/filter",
    operation_id = "filter_bulk",
    tag = "bulk",
    summary = "The orders a selection matches (admin, support)",
    request_body = FilterBody,
    responses(
        (status = 200, description = "A page of matching orders", body = FilterPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]

async fn filter(
    State(state): State<IngressState>,
    actor: Actor,
    Json(body): Json<FilterBody>,
) -> Result<Response, ApiError> {
    staff(&actor)?;
    valid_selection(&body.selection)?;
    let limit = body.limit.unwrap_or(100);
    if !(1..=MAX_FILTER_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be 1 to {MAX_FILTER_PAGE}"
        )));
    }
    let mut conn = state.pool.acquire().await?;
    let total = bulk::count(&mut conn, &body.selection).await?;
    let mut page = bulk::select_page(&mut conn, &body.selection, body.cursor, limit + 1).await?;
    let next_cursor = (page.len() as i64 > limit).then(|| page[limit as usize - 1].id);
    page.truncate(limit as usize);
    Ok(axum::Json(FilterPage {
        orders: page,
        total,
        next_cursor,
    })
    .into_response())
}

/// What the bulk would do now, decided by the apply path itself; writes nothing.
#[utoipa::path(
    post,
    path = "/orders/bulk/preview",
    operation_id = "preview_bulk",
    tag = "bulk",
    summary = "What a bulk change would do now; writes nothing (admin, support)",
    description = "Give exactly one of `action` and `to`; no `mode`.",
    request_body = BulkChange,
    responses(
        (status = 200, description = "Counts by outcome and status, and a sample", body = Preview),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn preview(
    State(state): State<IngressState>,
    actor: Actor,
    Json(body): Json<BulkChange>,
) -> Result<axum::Json<Preview>, ApiError> {
    staff(&actor)?;
    Ok(axum::Json(
        crate::orders::bulk::preview(&state.pool, actor, body).await?,
    ))
}

/// A recorded bulk operation; `Location: /orders/bulk/{bulk_id}`.
#[derive(Serialize, ToSchema)]
pub struct BulkAccepted {
    bulk_id: Uuid,
    /// The job that runs it (null for a bulk that selected nothing).
    job_id: Option<Uuid>,
    status: crate::domain::BulkStatus,
}

#[utoipa::path(
    post,
    path = "/orders/bulk/status-update",
    operation_id = "submit_bulk",
    tag = "bulk",
    summary = "Apply a change to every selected order, in the background (admin)",
    description = "Give exactly one of `action` and `to`, a `reason` and a `mode`. `atomic`: all or nothing; `best_effort`: every order that may move moves.",
    request_body = BulkChange,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "A repeat by the same actor with the same key returns the first bulk"),
        TraceParentHeader,
    ),
    responses(
        (status = 200, description = "A repeated `Idempotency-Key`: the first bulk", body = BulkAccepted,
            headers(("Location" = String, description = "/orders/bulk/{bulk_id}"))),
        (status = 202, description = "Recorded and queued", body = BulkAccepted,
            headers(("Location" = String, description = "/orders/bulk/{bulk_id}")),
            links(
                ("get_bulk" = (operation_id = "get_bulk", parameters(("id" = "$response.body#/bulk_id")))),
                ("get_bulk_results" = (operation_id = "get_bulk_results", parameters(("id" = "$response.body#/bulk_id")))),
                ("cancel_bulk" = (operation_id = "cancel_bulk", parameters(("id" = "$response.body#/bulk_id"))))
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
async fn status_update(
    State(state): State<IngressState>,
    actor: Actor,
    IdempotencyKey(key): IdempotencyKey,
    TraceParent(traceparent): TraceParent,
    Json(body): Json<BulkChange>,
) -> Result<Response, ApiError> {
    admin(&actor)?;
    let submitted =
        crate::orders::bulk::submit(&state.pool, &state.publisher, actor, body, key, traceparent)
            .await?;
    let status = if submitted.repeat {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = BulkAccepted {
        bulk_id: submitted.bulk_id,
        job_id: submitted.job_id,
        status: submitted.status,
    };
    let location =
        HeaderValue::from_str(&format!("/orders/bulk/{}", submitted.bulk_id)).expect("uuid header");
    Ok((status, [(header::LOCATION, location)], axum::Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/orders/bulk/{id}",
    operation_id = "get_bulk",
    tag = "bulk",
    summary = "A bulk operation's progress (admin, support)",
    params(("id" = Uuid, Path, description = "Bulk id")),
    responses(
        (status = 200, description = "The bulk", body = BulkView),
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
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    staff(&actor)?;
    let op = bulk::get(&mut *state.pool.acquire().await?, id)
        .await?
        .ok_or(ApiError::NotFound("bulk"))?;
    Ok(axum::Json(op.view()).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ResultsParams {
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// One row per order, streamed from the database as it is read (a bulk may be large).
#[utoipa::path(
    get,
    path = "/orders/bulk/{id}/results",
    operation_id = "get_bulk_results",
    tag = "bulk",
    summary = "One row per order with its outcome (admin, support)",
    params(("id" = Uuid, Path, description = "Bulk id"), ResultsParams),
    responses(
        (status = 200, description = "A JSON array, or CSV with `format=csv` (header `order_id,outcome,code,from,to`)",
            content((Vec<ResultRow> = "application/json"), (String = "text/csv"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn results(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
    Query(p): Query<ResultsParams>,
) -> Result<Response, ApiError> {
    staff(&actor)?;
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown format `{other}`: json or csv"
            )));
        }
    };
    let mut conn = state.pool.acquire().await?;
    bulk::get(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("bulk"))?;
    let stream = export_rows(conn, id, csv);
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if csv {
        let disposition = format!("attachment; filename=\"bulk-{id}.csv\"");
        response.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&disposition).expect("ascii"),
        );
    }
    Ok(response)
}

/// The export as chunks of text: a CSV header then rows, or a JSON array.
fn export_rows(
    mut conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    id: Uuid,
    csv: bool,
) -> impl futures::Stream<Item = Result<String, sqlx::Error>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, sqlx::Error>>(64);
    tokio::spawn(async move {
        let head = if csv {
            "order_id,outcome,code,from,to\n".to_owned()
        } else {
            "[".to_owned()
        };
        if tx.send(Ok(head)).await.is_err() {
            return;
        }
        let mut rows = bulk::results(&mut conn, id);
        let mut first = true;
        while let Some(row) = rows.next().await {
            let chunk = row.map(|r| {
                if csv {
                    fn field<T: ToString>(v: &Option<T>) -> String {
                        v.as_ref().map(T::to_string).unwrap_or_default()
                    }
                    format!(
                        "{},{},{},{},{}\n",
                        r.order_id,
                        field(&r.outcome),
                        field(&r.code).replace(',', ""),
                        field(&r.from),
                        field(&r.to)
                    )
                } else {
                    let sep = if first { "" } else { "," };
                    format!(
                        "{sep}{}",
                        serde_json::to_string(&r).expect("row serializes")
                    )
                }
            });
            first = false;
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
        if !csv {
            let _ = tx.send(Ok("]".to_owned())).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[utoipa::path(
    post,
    path = "/orders/bulk/{id}/cancel",
    operation_id = "cancel_bulk",
    tag = "bulk",
    summary = "Stop a bulk between chunks (admin)",
    params(("id" = Uuid, Path, description = "Bulk id")),
    responses(
        (status = 200, description = "Already cancelled, or cancelled before it started", body = BulkView),
        (status = 202, description = "Running: it stops after the chunk in hand", body = BulkView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
async fn cancel(
    State(state): State<IngressState>,
    actor: Actor,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    admin(&actor)?;
    let mut conn = state.pool.acquire().await?;
    let op = bulk::request_cancel(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("bulk"))?;
    if op.status.is_terminal() && op.status != BulkStatus::Cancelled {
        return Err(ApiError::Conflict(
            "not_running",
            format!("the bulk already ended: `{}`", op.status),
        ));
    }
    let status = if op.status == BulkStatus::Running {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(op.view())).into_response())
}
