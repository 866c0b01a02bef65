//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer, and it is
//! not refusing work for want of capacity).

use super::admission::Admission;
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

/// What an ingress adds to readiness: its broker session and its admission control.
#[derive(Clone)]
pub struct IngressHealth {
    pub publisher: Arc<JobPublisher>,
    pub admission: Admission,
}

#[derive(Clone)]
struct Deps {
    pool: PgPool,
    ingress: Option<IngressHealth>,
}

/// Health routes; `ingress` is checked when this process accepts jobs.
pub fn router(pool: PgPool, ingress: Option<IngressHealth>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .with_state(Deps { pool, ingress })
}

/// Readiness, with the reason when a dependency does not answer.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    ready: bool,
    /// `ok`, or `unavailable: <why>`.
    database: String,
    /// `ok`, `not used` (a role that publishes no jobs), or `unavailable: <why>`.
    broker: String,
    /// `ok`, `not used` (a role that accepts no requests), or `overloaded: <why>` while
    /// admission control refuses work (not ready: a balancer sends new work elsewhere).
    load: String,
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "The database and the broker answer",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (a dependency is unavailable, or overloaded), with the reason", body = Readiness),
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
    let (broker, load) = match &deps.ingress {
        None => ("not used".to_owned(), "not used".to_owned()),
        Some(ingress) => (
            match ingress.publisher.check_ready().await {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("unavailable: {e}"),
            },
            match ingress.admission.overload() {
                None => "ok".to_owned(),
                Some(why) => format!("overloaded: {why}"),
            },
        ),
    };
    let ready =
        database == "ok" && !broker.starts_with("unavailable") && !load.starts_with("overloaded");
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
            load,
        }),
    )
}
