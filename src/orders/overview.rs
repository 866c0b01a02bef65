//! The operations overview: one small snapshot of the pipeline — jobs by state, job queue
//! depths, outbox lag, bulks in flight, audit log age and the change rate of the last 15
//! minutes — for dashboards such as the console to poll.

use crate::broker::publisher::JobPublisher;
use crate::domain::JobStatus;
use crate::store::overview::{self, BulkInFlight};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;

/// The chart window and its resolution.
const WINDOW_SECS: i64 = 15 * 60;
const BUCKET_SECS: i64 = 10;
/// Newest audit rows read for the chart (bounds the query under a large bulk).
const RATE_MAX_ROWS: i64 = 200_000;
const BULKS_SHOWN: i64 = 20;

/// The snapshot (README, "Beyond API.md": `GET /admin/overview`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub at: DateTime<Utc>,
    /// Every job status, counted (0 included).
    #[schema(value_type = BTreeMap<String, i64>)]
    pub jobs: BTreeMap<&'static str, i64>,
    /// Messages ready per durable job queue; `None` while the broker is unreachable.
    pub queues: Option<BTreeMap<String, u32>>,
    pub outbox: Outbox,
    pub bulk: Bulks,
    pub history: History,
    pub changes: Changes,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Outbox {
    #[serde(flatten)]
    pub lag: overview::OutboxLag,
    pub lag_secs: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Bulks {
    pub in_flight: i64,
    pub operations: Vec<BulkInFlight>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    /// `None`: kept forever.
    pub retention_days: Option<u32>,
    pub oldest_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Changes {
    pub bucket_secs: i64,
    pub window_secs: i64,
    /// `[bucket start, history rows]`, oldest first.
    #[schema(value_type = Vec<Vec<serde_json::Value>>)]
    pub series: Vec<(DateTime<Utc>, i64)>,
}

/// Read the snapshot. The broker may be down while the database is not: the rest is
/// still worth showing, so queue depths are then `None`.
#[tracing::instrument(skip_all, err)]
pub async fn read(
    pool: &PgPool,
    publisher: &JobPublisher,
    history_retention_days: u32,
) -> sqlx::Result<Overview> {
    let mut conn = pool.acquire().await?;
    let counted = overview::jobs_by_status(&mut conn).await?;
    let jobs = JobStatus::ALL
        .iter()
        .map(|&s| {
            let n = counted
                .iter()
                .find(|c| c.status == s)
                .map_or(0, |c| c.count);
            (s.as_str(), n)
        })
        .collect();
    let lag = overview::outbox_lag(&mut conn).await?;
    let lag_secs = lag.oldest_unpublished_at.map_or(0.0, |t| {
        (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
    });
    let (in_flight, operations) = overview::bulks_in_flight(&mut conn, BULKS_SHOWN).await?;
    let oldest_at = overview::oldest_history(&mut conn).await?;
    let series = overview::change_rate(&mut conn, WINDOW_SECS, BUCKET_SECS, RATE_MAX_ROWS).await?;
    drop(conn);

    let queues = match publisher.queue_depths().await {
        Ok(depths) => Some(depths.into_iter().collect()),
        Err(e) => {
            tracing::warn!(error = %e, "overview: queue depths unavailable");
            None
        }
    };
    Ok(Overview {
        at: Utc::now(),
        jobs,
        queues,
        outbox: Outbox { lag, lag_secs },
        bulk: Bulks {
            in_flight,
            operations,
        },
        history: History {
            retention_days: (history_retention_days > 0).then_some(history_retention_days),
            oldest_at,
        },
        changes: Changes {
            bucket_secs: BUCKET_SECS,
            window_secs: WINDOW_SECS,
            series,
        },
    })
}
