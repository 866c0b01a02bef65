//! The operations overview (admin, support): one small JSON snapshot of the pipeline —
//! jobs by state, job queue depths, outbox lag, bulks in flight, audit log age and the
//! change rate of the last 15 minutes — for dashboards such as the console to poll.

use super::IngressState;
use super::error::ApiError;
use crate::domain::{Actor, RejectCode, Role};
use crate::store::overview;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde_json::{Map, Value, json};

/// The chart window and its resolution.
const WINDOW_SECS: i64 = 15 * 60;
const BUCKET_SECS: i64 = 10;
/// Newest audit rows read for the chart (bounds the query under a large bulk).
const RATE_MAX_ROWS: i64 = 200_000;
const BULKS_SHOWN: i64 = 20;

pub fn router() -> Router<IngressState> {
    Router::new().route("/admin/overview", get(read))
}

const JOB_STATUSES: [&str; 7] = [
    "queued",
    "running",
    "succeeded",
    "rejected",
    "retrying",
    "dead",
    "cancelled",
];

async fn read(State(state): State<IngressState>, actor: Actor) -> Result<Response, ApiError> {
    if !matches!(actor.role, Role::Admin | Role::Support) {
        return Err(ApiError::forbidden(
            RejectCode::ForbiddenRole,
            "the overview is for admin and support",
        ));
    }
    let mut conn = state.pool.acquire().await?;
    let counted = overview::jobs_by_status(&mut conn).await?;
    let jobs: Map<String, Value> = JOB_STATUSES
        .iter()
        .map(|s| {
            let n = counted.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
            ((*s).to_owned(), json!(n))
        })
        .collect();
    let outbox = overview::outbox_lag(&mut conn).await?;
    let lag_secs = outbox.oldest_unpublished_at.map_or(0.0, |t| {
        (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
    });
    let (in_flight, bulks) = overview::bulks_in_flight(&mut conn, BULKS_SHOWN).await?;
    let oldest_history = overview::oldest_history(&mut conn).await?;
    let rate = overview::change_rate(&mut conn, WINDOW_SECS, BUCKET_SECS, RATE_MAX_ROWS).await?;
    drop(conn);

    // The broker may be down while the database is not: the rest is still worth showing.
    let queues = match state.publisher.queue_depths().await {
        Ok(depths) => Value::Object(
            depths
                .into_iter()
                .map(|(queue, n)| (queue, json!(n)))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "overview: queue depths unavailable");
            Value::Null
        }
    };
    Ok(axum::Json(json!({
        "at": Utc::now(),
        "jobs": jobs,
        "queues": queues,
        "outbox": {
            "unsequenced": outbox.unsequenced,
            "unconfirmed": outbox.unconfirmed,
            "published_seq": outbox.published_seq,
            "oldest_unpublished_at": outbox.oldest_unpublished_at,
            "lag_secs": lag_secs,
        },
        "bulk": { "in_flight": in_flight, "operations": bulks },
        "history": {
            // null: kept forever.
            "retention_days": (state.cfg.history_retention_days > 0)
                .then_some(state.cfg.history_retention_days),
            "oldest_at": oldest_history,
        },
        "changes": {
            "bucket_secs": BUCKET_SECS,
            "window_secs": WINDOW_SECS,
            "series": rate.iter().map(|(at, n)| json!([at, n])).collect::<Vec<_>>(),
        },
    }))
    .into_response())
}
