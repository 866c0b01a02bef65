//! Prometheus metrics: every name orderflow exports, with its help text and unit, in one
//! place; the process-wide recorder; `/metrics` as a route (HTTP roles) or on a listener
//! of its own (`METRICS_BIND`, for the worker and the relay); and the sampler that reads
//! what no code path counts — queue depths, outbox lag, the database pool.
//!
//! Naming follows Prometheus: `orderflow_` prefix, base units (seconds), `_total` counters,
//! and no per-order or per-customer labels (their cardinality is unbounded).

use crate::broker::Names;
use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const BUILD_INFO: &str = "orderflow_build_info";
pub const HTTP_REQUESTS: &str = "orderflow_http_requests_total";
pub const HTTP_DURATION: &str = "orderflow_http_request_duration_seconds";
pub const RATE_LIMITED: &str = "orderflow_rate_limited_total";
pub const OVERLOAD_REFUSED: &str = "orderflow_overload_refused_total";
pub const INGRESS_IN_FLIGHT: &str = "orderflow_ingress_requests_in_flight";
pub const INGRESS_SLOTS_HELD_BACK: &str = "orderflow_ingress_slots_held_back";
pub const INTAKE_BATCH: &str = "orderflow_ingress_job_insert_batch_size";
pub const JOBS_ACCEPTED: &str = "orderflow_jobs_accepted_total";
pub const JOBS_APPLIED: &str = "orderflow_jobs_applied_total";
pub const JOBS_REJECTED: &str = "orderflow_jobs_rejected_total";
pub const JOBS_RETRIED: &str = "orderflow_jobs_retried_total";
pub const JOBS_DEAD: &str = "orderflow_jobs_dead_total";
pub const JOB_WAIT: &str = "orderflow_job_wait_seconds";
pub const BATCH_DURATION: &str = "orderflow_worker_batch_duration_seconds";
pub const BATCH_SIZE: &str = "orderflow_worker_batch_size";
pub const BULK_ORDERS: &str = "orderflow_bulk_orders_total";
pub const QUEUE_DEPTH: &str = "orderflow_queue_messages";
pub const OUTBOX_UNPUBLISHED: &str = "orderflow_outbox_unpublished_events";
pub const OUTBOX_OLDEST_AGE: &str = "orderflow_outbox_oldest_unpublished_age_seconds";
pub const RELAY_PUBLISHED: &str = "orderflow_relay_events_published_total";
pub const RELAY_CONFIRM: &str = "orderflow_relay_confirm_duration_seconds";
pub const RELAY_SEQ_CONFLICTS: &str = "orderflow_relay_seq_conflicts_total";
pub const SSE_CONNECTIONS: &str = "orderflow_sse_connections";
pub const SSE_EVENTS_SENT: &str = "orderflow_sse_events_sent_total";
pub const SSE_SLOW_DISCONNECTS: &str = "orderflow_sse_slow_disconnects_total";
pub const SSE_REPLAYED: &str = "orderflow_sse_replayed_events_total";
pub const DB_POOL: &str = "orderflow_db_pool_connections";

/// Every metric with its kind, unit and help text (the README's table says the same).
fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels `version` and `git_sha` name the build"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by `method`, `route` (template) and `status`"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration, by `method`, `route` and `status`"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests answered 429, by `limiter` (`actor`, `ip`)"
    );
    describe_counter!(
        OVERLOAD_REFUSED,
        "Requests answered 503 `overloaded` by admission control, by `gate` (`in_flight`, `backlog`)"
    );
    describe_gauge!(
        INGRESS_IN_FLIGHT,
        Unit::Count,
        "API requests holding an admission slot"
    );
    describe_gauge!(
        INGRESS_SLOTS_HELD_BACK,
        Unit::Count,
        "admission slots held back while the ingress is refusing requests"
    );
    describe_histogram!(
        INTAKE_BATCH,
        Unit::Count,
        "Change-status jobs recorded by one group insert (one transaction)"
    );
    describe_counter!(
        JOBS_ACCEPTED,
        "Jobs durably queued (answered 202), by `kind`"
    );
    describe_counter!(JOBS_APPLIED, "Change-status jobs applied (succeeded)");
    describe_counter!(
        JOBS_REJECTED,
        "Change-status jobs rejected by the state machine, by `code`"
    );
    describe_counter!(
        JOBS_RETRIED,
        "Jobs sent to a delay queue for another attempt"
    );
    describe_counter!(JOBS_DEAD, "Jobs parked in the dead queue");
    describe_histogram!(
        JOB_WAIT,
        Unit::Seconds,
        "Time from a job's acceptance to its committed outcome"
    );
    describe_histogram!(
        BATCH_DURATION,
        Unit::Seconds,
        "Duration of one worker batch transaction (claim to commit)"
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Jobs per worker batch");
    describe_counter!(
        BULK_ORDERS,
        "Orders processed by bulk operations, by `outcome`"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Messages ready in a queue, by `queue` (`jobs`, `bulk`, `retry`, `dead`)"
    );
    describe_gauge!(
        OUTBOX_UNPUBLISHED,
        Unit::Count,
        "Committed events not yet confirmed by the broker"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest unpublished event (0 when none)"
    );
    describe_counter!(
        RELAY_PUBLISHED,
        "Events the relay published and the broker confirmed"
    );
    describe_histogram!(
        RELAY_CONFIRM,
        Unit::Seconds,
        "Time from queueing a relay batch to the broker's last confirm"
    );
    describe_gauge!(
        SSE_CONNECTIONS,
        Unit::Count,
        "Open SSE connections, by `role`"
    );
    describe_counter!(SSE_EVENTS_SENT, "Events written to SSE connections");
    describe_counter!(
        SSE_SLOW_DISCONNECTS,
        "SSE clients disconnected because they could not keep up"
    );
    describe_counter!(
        SSE_REPLAYED,
        "Events replayed to resuming SSE clients, by `source` (`memory`, `database`)"
    );
    describe_gauge!(
        DB_POOL,
        Unit::Count,
        "Database pool connections, by `state` (`in_use`, `idle`, `max`)"
    );
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use — every role calls this as it starts,
/// so nothing counted is lost: one registry however many roles the process runs
/// (`orderflow all` serves them all on one port).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let seconds = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let sizes = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(INTAKE_BATCH.into()), &sizes))
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("the metrics recorder is installed once per process");
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_sha" => env!("ORDERFLOW_GIT_SHA")).set(1.0);
        handle
    })
}

/// `GET /metrics` in the Prometheus text format.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/metrics", get(|| async { handle().render() }))
}

/// Serve `/metrics` alone on `bind` (roles without an HTTP API) until `shutdown`.
pub async fn serve(bind: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding METRICS_BIND {bind}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, router::<()>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving metrics")
}

/// axum middleware: count and time every request by its route template (never its path:
/// ids would make a series per order).
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(start.elapsed().as_secs_f64());
    response
}

/// What a role can sample: its pool, and (with a broker URL) the queues.
pub struct Sampler {
    pub pool: PgPool,
    pub broker: Option<(String, Names)>,
}

impl Sampler {
    /// Every `period` until `shutdown`: pool gauges, queue depths, outbox lag. A failed
    /// sample is logged and skipped — metrics must never take a role down.
    pub async fn run(self, period: Duration, shutdown: CancellationToken) {
        let mut broker = None;
        // The first sample after one period: by then the role has declared its queues.
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            handle().run_upkeep();
            let size = self.pool.size();
            let idle = self.pool.num_idle() as u32;
            gauge!(DB_POOL, "state" => "in_use").set(f64::from(size.saturating_sub(idle)));
            gauge!(DB_POOL, "state" => "idle").set(f64::from(idle));
            gauge!(DB_POOL, "state" => "max")
                .set(f64::from(self.pool.options().get_max_connections()));
            if let Err(e) = self.outbox_lag().await {
                tracing::debug!(error = %e, "outbox lag not sampled");
            }
            if let Some((url, names)) = &self.broker {
                if let Err(e) = queue_depths(&mut broker, url, names).await {
                    tracing::debug!(error = %e, "queue depths not sampled");
                    broker = None;
                }
            }
        }
    }

    async fn outbox_lag(&self) -> sqlx::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let (count, age) = crate::store::outbox::lag(&mut conn).await?;
        gauge!(OUTBOX_UNPUBLISHED).set(count as f64);
        gauge!(OUTBOX_OLDEST_AGE).set(age);
        Ok(())
    }
}

/// Passive declares (they create nothing) of the job, bulk, retry and dead queues.
async fn queue_depths(
    session: &mut Option<(lapin::Connection, lapin::Channel)>,
    url: &str,
    names: &Names,
) -> anyhow::Result<()> {
    if session.is_none() {
        let conn = crate::broker::connect(url, "metrics").await?;
        let channel = conn.create_channel().await?;
        *session = Some((conn, channel));
    }
    let (_, channel) = session.as_ref().expect("connected above");
    let mut retry = 0;
    for attempt in names.retry.steps() {
        retry += depth(channel, &names.jobs_retry(attempt)).await?;
    }
    let queues = [
        ("jobs", depth(channel, &names.jobs).await?),
        ("bulk", depth(channel, &names.bulk).await?),
        ("retry", retry),
        ("dead", depth(channel, &names.jobs_dead).await?),
    ];
    for (queue, n) in queues {
        gauge!(QUEUE_DEPTH, "queue" => queue).set(n as f64);
    }
    Ok(())
}

async fn depth(channel: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = channel
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .with_context(|| format!("passive declare of `{queue}`"))?;
    Ok(q.message_count())
}
