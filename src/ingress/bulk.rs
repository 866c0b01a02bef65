//! Bulk operations over HTTP: filter and preview (admin, support), then apply in the
//! background (admin) with progress, results export and cancel. The preview runs the very
//! [`Batch`] the bulk worker runs, on the current state, and writes nothing.

use super::IngressState;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use crate::domain::{Action, Actor, OrderStatus, RejectCode, Role};
use crate::job::{ChangeStatus, JobMessage};
use crate::store::bulk::{self, NOT_FOUND, NewBulk, Selection};
use crate::store::jobs::{self, KIND_BULK, NewJob};
use crate::worker::apply::{Batch, Origin};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
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

/// The change a bulk asks for (shared by preview and status-update).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkChange {
    selection: Selection,
    action: Option<Action>,
    to: Option<OrderStatus>,
    reason: Option<String>,
    tracking_number: Option<String>,
    mode: Option<String>,
}

impl BulkChange {
    fn request(&self) -> Result<ChangeStatus, ApiError> {
        valid_selection(&self.selection)?;
        if self.action.is_some() == self.to.is_some() {
            return Err(ApiError::BadRequest(
                "give exactly one of `action` and `to`".into(),
            ));
        }
        if self
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > 500)
        {
            return Err(ApiError::BadRequest(
                "`reason` is at most 500 characters".into(),
            ));
        }
        Ok(ChangeStatus {
            action: self.action,
            to: self.to,
            reason: self.reason.clone(),
            expected_version: None,
            tracking_number: self.tracking_number.clone(),
        })
    }
}

const SAMPLE: usize = 20;

/// What the bulk would do now, decided by the apply path itself, as the admin who would
/// run it (support may preview what only an admin may apply).
async fn preview(
    State(state): State<IngressState>,
    actor: Actor,
    Json(body): Json<BulkChange>,
) -> Result<Response, ApiError> {
    staff(&actor)?;
    let request = body.request()?;
    if body.mode.is_some() {
        return Err(ApiError::BadRequest(
            "`mode` belongs to status-update, not preview".into(),
        ));
    }
    // A read-only transaction: one consistent snapshot, and nothing can be written.
    let mut tx = state.pool.begin().await?;
    sqlx::query("set transaction read only")
        .execute(&mut *tx)
        .await?;
    let ids = bulk::selected(&mut tx, &body.selection).await?;
    let mut batch = Batch::load(&mut tx, &ids, false).await?;
    tx.rollback().await?;

    let judge_as = Actor {
        id: actor.id,
        role: Role::Admin,
    };
    let mut would_apply = 0;
    let mut not_found = 0;
    let mut would_reject: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut sample = Vec::new();
    for id in &ids {
        let Some(status) = batch.order(*id).map(|o| o.status) else {
            // An explicit id without an order: the real run reports it the same way.
            not_found += 1;
            *would_reject.entry(NOT_FOUND).or_default() += 1;
            if sample.len() < SAMPLE {
                sample.push(json!({ "order_id": id, "outcome": "rejected", "code": NOT_FOUND }));
            }
            continue;
        };
        *by_status.entry(status.as_str()).or_default() += 1;
        let outcome = batch.apply(*id, judge_as, &request, Origin::default());
        if sample.len() < SAMPLE {
            sample.push(match &outcome {
                Ok(a) => {
                    json!({ "order_id": id, "outcome": "applied", "from": a.from, "to": a.to })
                }
                Err(r) => json!({ "order_id": id, "outcome": "rejected", "code": r.code }),
            });
        }
        match outcome {
            Ok(_) => would_apply += 1,
            Err(r) => *would_reject.entry(r.code.as_str()).or_default() += 1,
        }
    }
    Ok(axum::Json(json!({
        "matched": ids.len() - not_found,
        "not_found": not_found,
        "would_apply": would_apply,
        "would_reject": would_reject,
        "by_status": by_status,
        "sample": sample,
    }))
    .into_response())
}

fn location(response: &mut Response, bulk_id: Uuid) {
    let value = HeaderValue::from_str(&format!("/orders/bulk/{bulk_id}")).expect("uuid header");
    response.headers_mut().insert(header::LOCATION, value);
}

async fn status_update(
    State(state): State<IngressState>,
    actor: Actor,
    headers: HeaderMap,
    Json(body): Json<BulkChange>,
) -> Result<Response, ApiError> {
    admin(&actor)?;
    let request = body.request()?;
    if request
        .reason
        .as_deref()
        .is_none_or(|r| r.trim().is_empty())
    {
        return Err(ApiError::BadRequest(
            "a bulk change needs a `reason` (it is written to every order's history)".into(),
        ));
    }
    let mode = match body.mode.as_deref() {
        Some(m @ ("best_effort" | "atomic")) => m,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown mode `{other}`: best_effort or atomic"
            )));
        }
        None => {
            return Err(ApiError::BadRequest(
                "`mode` is required: best_effort or atomic".into(),
            ));
        }
    };
    let key = super::orders::idempotency_key(&headers)?;
    let selection = serde_json::to_value(&body.selection).expect("selection serializes");
    let request = serde_json::to_value(&request).expect("request serializes");
    let bulk_id = Uuid::now_v7();
    let job_id = Uuid::now_v7();

    let mut tx = state.pool.begin().await?;
    let new = NewBulk {
        id: bulk_id,
        actor_id: actor.id,
        actor_role: actor.role,
        selection: &selection,
        request: &request,
        mode,
        idempotency_key: key.as_deref(),
    };
    let Some(_) = bulk::insert(&mut tx, &new).await? else {
        let first = bulk::by_idempotency_key(&mut tx, actor.id, key.as_deref().expect("keyed"))
            .await?
            .ok_or(ApiError::NotFound("bulk"))?;
        let job = jobs::job_of_bulk(&mut tx, first.id).await?;
        let mut response = (
            StatusCode::OK,
            axum::Json(json!({ "bulk_id": first.id, "job_id": job, "status": first.status })),
        )
            .into_response();
        location(&mut response, first.id);
        return Ok(response);
    };
    let payload = json!({ "bulk_id": bulk_id });
    let traceparent = crate::trace::for_request(&headers);
    let job = NewJob {
        id: job_id,
        kind: KIND_BULK,
        order_id: None,
        bulk_id: Some(bulk_id),
        actor_id: actor.id,
        actor_role: actor.role,
        payload: &payload,
        idempotency_key: None,
        traceparent: Some(&traceparent),
    };
    jobs::insert(&mut tx, &job).await?;
    tx.commit().await?;

    if let Err(e) = state
        .publisher
        .publish_bulk(&JobMessage { job_id }, &actor, Some(&traceparent))
        .await
    {
        let error = json!({ "code": "not_queued", "message": e.to_string() });
        if bulk::abandon_unqueued(&mut *state.pool.acquire().await?, bulk_id, &error).await? {
            return Err(e.into());
        }
        tracing::warn!(error = %e, "bulk publish unconfirmed but a worker already took it");
    }
    tracing::info!(%bulk_id, %job_id, mode, "bulk queued");
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "bulk_id": bulk_id, "job_id": job_id, "status": "queued" })),
    )
        .into_response();
    location(&mut response, bulk_id);
    Ok(response)
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
                    let field = |v: &Option<String>| v.clone().unwrap_or_default();
                    format!(
                        "{},{},{},{},{}\n",
                        r.order_id,
                        field(&r.outcome).replace(',', ""),
                        field(&r.code),
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
    if op.is_terminal() && op.status != "cancelled" {
        return Err(ApiError::Conflict(
            "not_running",
            format!("the bulk already ended: `{}`", op.status),
        ));
    }
    let status = if op.status == "running" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(op.view())).into_response())
}
