//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer).

use crate::broker::publisher::JobPublisher;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Clone)]
struct Deps {
    pool: PgPool,
    publisher: Option<Arc<JobPublisher>>,
}

/// Health routes; `publisher` is checked when this process publishes jobs.
pub fn router(pool: PgPool, publisher: Option<Arc<JobPublisher>>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .with_state(Deps { pool, publisher })
}

/// Readiness, with the reason when a dependency does not answer.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    ready: bool,
    /// `ok`, or `unavailable: <why>`.
    database: String,
    /// `ok`, `not used` (a role that publishes no jobs), or `unavailable: <why>`.
    broker: String,
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "The database and the broker answer",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, with the reason", body = Readiness),
    )
)]
async fn ready(State(deps): State<Deps>) -> impl IntoResponse {
    let database = match tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("select 1").execute(&deps.pool),
    )
    .await
    {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(e)) => format!("unavailable: {e}"),
        Err(_) => "unavailable: no answer within 2s".to_owned(),
    };
    let broker = match &deps.publisher {
        None => "not used".to_owned(),
        Some(p) => match p.check_ready().await {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("unavailable: {e}"),
        },
    };
    let ready = database == "ok" && !broker.starts_with("unavailable");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            database,
            broker,
        }),
    )
}
