//! Bulk operations over HTTP: filter and preview (admin, support), then apply in the
//! background (admin) with progress, results export and cancel. The use cases are in
//! [`crate::orders::bulk`].

use super::IngressState;
use crate::domain::{Actor, BulkStatus, RejectCode, Role};
use crate::http::ApiError;
use crate::http::extract::{Json, Path, Query};
use crate::http::headers::{IdempotencyKey, TraceParent};
use crate::orders::bulk::{BulkChange, Preview};
use crate::store::bulk::{self, Selection};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    selection: Selection,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

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
    Ok(
        axum::Json(json!({ "orders": page, "total": total, "next_cursor": next_cursor }))
            .into_response(),
    )
}

/// What the bulk would do now, decided by the apply path itself; writes nothing.
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
    let body = json!({ "bulk_id": submitted.bulk_id, "job_id": submitted.job_id, "status": submitted.status });
    let location =
        HeaderValue::from_str(&format!("/orders/bulk/{}", submitted.bulk_id)).expect("uuid header");
    Ok((status, [(header::LOCATION, location)], axum::Json(body)).into_response())
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultsParams {
    format: Option<String>,
}

/// One row per order, streamed from the database as it is read (a bulk may be large).
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
