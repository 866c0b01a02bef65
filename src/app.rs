//! Composing roles into processes. Each `run_*` is what one entry point does after parsing
//! its configuration: connect, start its loops, serve until the shutdown token fires, and
//! return once every loop has finished its work in hand.

use crate::auth::Keys;
use crate::broker::Names;
use crate::broker::publisher::JobPublisher;
use crate::config::{
    BridgeConfig, CommonConfig, DEV_JWT_SECRET, HttpConfig, IngressConfig, MetricsConfig, Origins,
    RelayConfig, WorkerConfig,
};
use crate::http::ApiError;
use crate::ingress::{self, IngressState, health};
use crate::sse::{self, BridgeState};
use crate::store::db;
use crate::{relay, worker};
use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use sqlx::PgPool;
use std::io::Write;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub mod openapi;

/// Bind, announce the address on stdout (tests and scripts read it), serve until shutdown.
/// Requests for `stream_paths` that open a connection are served as streams
/// ([`crate::http::serve`]).
pub async fn serve_http(
    http: &HttpConfig,
    router: Router,
    stream_paths: &'static [&'static str],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(http.bind)
        .await
        .with_context(|| format!("binding {}", http.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP listening");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    let app = router
        .merge(crate::metrics::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .layer(cors(&http.cors_origins));
    // Exported, a request's span continues the caller's trace; otherwise it stays
    // tower-http's default (debug level: no span at all in an info log). A 5xx is logged
    // where it is decided (`ApiError`: internal at error, unavailable at warn), not again
    // here; overload refusals are counted (`orderflow_overload_refused_total`), not logged
    // one by one — under overload a line per refusal would cost the CPU being shed.
    let on_failure = DefaultOnFailure::new().level(tracing::Level::DEBUG);
    let app = if crate::telemetry::exporting() {
        app.layer(
            TraceLayer::new_for_http()
                .make_span_with(crate::trace::request_span::<axum::body::Body>)
                .on_response(crate::trace::record_status::<axum::body::Body>)
                .on_failure(on_failure),
        )
    } else {
        app.layer(TraceLayer::new_for_http().on_failure(on_failure))
    };
    crate::http::serve::serve(listener, app, stream_paths, shutdown).await;
    Ok(())
}

/// Cross-origin access for the listed origins only (outermost, so a preflight is answered
/// before routing, rate limits or auth). No origins: no CORS headers at all, and browsers
/// refuse cross-origin reads as they would without this layer.
fn cors(origins: &Origins) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins
        .0
        .iter()
        .map(|o| HeaderValue::from_str(o).expect("origins are checked when parsed"))
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::LOCATION, header::ETAG, header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}

fn keys(http: &HttpConfig) -> Keys {
    if http.jwt_secret == DEV_JWT_SECRET {
        tracing::warn!(
            "JWT_SECRET is the development default: anyone can mint tokens. Set JWT_SECRET in production."
        );
    }
    Keys::new(&http.jwt_secret)
}

fn ingress_parts(
    common: &CommonConfig,
    keys: Keys,
    cfg: &IngressConfig,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> (Router, health::IngressHealth) {
    let publisher = Arc::new(JobPublisher::new(
        &common.amqp_url,
        Names::from_config(common),
        cfg.publish_timeout(),
    ));
    let limits = ingress::limits::Limits::new(cfg.rate_per_actor, cfg.rate_per_ip);
    tokio::spawn(limits.clone().forget_idle_keys(shutdown.clone()));
    let admission = ingress::admission::Admission::new(cfg.admission());
    tokio::spawn(
        admission
            .clone()
            .watch_backlog(publisher.clone(), shutdown.clone()),
    );
    let state = IngressState {
        pool: pool.clone(),
        keys,
        publisher: publisher.clone(),
        cfg: IngressConfig {
            history_retention_days: common.history_retention_days,
            ..cfg.clone()
        },
        limits,
        admission: admission.clone(),
        intake: crate::orders::intake::Intake::start(pool.clone(), publisher.clone()),
    };
    let health = health::IngressHealth {
        publisher,
        admission,
    };
    (ingress::router(state), health)
}

/// Wait for every task; the first failure cancels the others and is returned.
async fn join_all(
    mut tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.context("a task panicked").and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = format!("{e:#}"), "a role failed; shutting down");
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `orderflow serve`: the HTTP ingress alone.
pub async fn run_ingress(
    common: CommonConfig,
    http: HttpConfig,
    cfg: IngressConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::metrics::handle();
    crate::shutdown::watchdog(
        &shutdown,
        std::time::Duration::from_secs(common.shutdown_timeout_secs),
    );
    let pool = db::connect(&common).await?;
    sample_metrics(&pool, Some(&common), &shutdown);
    let (router, ingress) = ingress_parts(&common, keys(&http), &cfg, &pool, &shutdown);
    if let Err(e) = ingress.publisher.check_ready().await {
        tracing::warn!(error = %e, "broker not reachable yet; change-status answers 503 until it is");
    }
    serve_http(
        &http,
        router
            .merge(health::router(pool, Some(ingress)))
            .merge(openapi::router()),
        &[],
        shutdown,
    )
    .await
}

/// `order-worker`.
pub async fn run_worker(
    common: CommonConfig,
    cfg: WorkerConfig,
    metrics: MetricsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::metrics::handle();
    crate::shutdown::watchdog(
        &shutdown,
        std::time::Duration::from_secs(common.shutdown_timeout_secs),
    );
    let pool = db::connect(&common).await?;
    sample_metrics(&pool, Some(&common), &shutdown);
    let mut tasks = JoinSet::new();
    serve_metrics(&mut tasks, &metrics, &shutdown);
    let token = shutdown.clone();
    tasks.spawn(async move { worker::run(pool, &common, cfg, token).await });
    join_all(tasks, shutdown).await
}

/// Sample what no code path counts (pool, queue depths, outbox lag) until shutdown.
fn sample_metrics(pool: &PgPool, broker: Option<&CommonConfig>, shutdown: &CancellationToken) {
    let sampler = crate::metrics::Sampler {
        pool: pool.clone(),
        broker: broker.map(|c| (c.amqp_url.clone(), Names::from_config(c))),
    };
    tokio::spawn(sampler.run(std::time::Duration::from_secs(5), shutdown.clone()));
}

/// `/metrics` on `METRICS_BIND`, when set (roles without an HTTP API).
fn serve_metrics(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    cfg: &MetricsConfig,
    shutdown: &CancellationToken,
) {
    if let Some(bind) = cfg.metrics_bind {
        tasks.spawn(crate::metrics::serve(bind, shutdown.clone()));
    }
}

/// `outbox-relay`.
pub async fn run_relay(
    common: CommonConfig,
    cfg: RelayConfig,
    metrics: MetricsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::metrics::handle();
    crate::shutdown::watchdog(
        &shutdown,
        std::time::Duration::from_secs(common.shutdown_timeout_secs),
    );
    let pool = db::connect(&common).await?;
    sample_metrics(&pool, Some(&common), &shutdown);
    let mut tasks = JoinSet::new();
    serve_metrics(&mut tasks, &metrics, &shutdown);
    tasks.spawn(relay::run(
        pool,
        common.amqp_url.clone(),
        Names::from_config(&common),
        RelayConfig {
            history_retention_days: common.history_retention_days,
            ..cfg
        },
        shutdown.clone(),
    ));
    join_all(tasks, shutdown).await
}

/// No transparent huge pages for this process. mimalloc asks for them on its arena, and
/// the kernel then backs memory in 2 MiB pages as soon as any byte of one is touched: with
/// thousands of idle SSE connections, each holding buffers it mostly never touches (an
/// HTTP connection's 8 KiB read and write buffers), most of what they hold became resident
/// anyway. Without huge pages only the touched 4 KiB pages are (about a quarter less
/// memory per idle connection, measured with `orderflow-bench sse`). Best effort: a
/// kernel without the setting keeps its default.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
        }
    }
}

/// `sse-bridge`: the live event streams, on their own HTTP port.
pub async fn run_bridge(
    common: CommonConfig,
    http: HttpConfig,
    cfg: BridgeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    no_transparent_huge_pages();
    crate::metrics::handle();
    crate::shutdown::watchdog(
        &shutdown,
        std::time::Duration::from_secs(common.shutdown_timeout_secs),
    );
    let pool = db::connect(&common).await?;
    sample_metrics(&pool, None, &shutdown);
    let state = BridgeState::new(keys(&http), pool.clone(), cfg, shutdown.clone());
    let mut tasks = JoinSet::new();
    tasks.spawn(sse::run_feed(
        state.clone(),
        common.amqp_url.clone(),
        Names::from_config(&common),
    ));
    let router = sse::router(state).merge(health::router(pool, None));
    let token = shutdown.clone();
    tasks.spawn(async move { serve_http(&http, router, sse::STREAM_PATHS, token).await });
    join_all(tasks, shutdown).await
}

/// Everything `orderflow all` runs.
pub struct AllConfig {
    pub common: CommonConfig,
    pub http: HttpConfig,
    pub ingress: IngressConfig,
    pub worker: WorkerConfig,
    pub relay: RelayConfig,
    pub bridge: BridgeConfig,
}

/// `orderflow all`: create the database if needed, migrate, and run every role in this
/// process, with the ingress and the SSE streams on one HTTP port.
pub async fn run_all(cfg: AllConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    no_transparent_huge_pages();
    crate::metrics::handle();
    crate::shutdown::watchdog(
        &shutdown,
        std::time::Duration::from_secs(cfg.common.shutdown_timeout_secs),
    );
    db::create_if_missing(&cfg.common).await?;
    let pool = db::connect(&cfg.common).await?;
    db::migrate(&pool).await?;
    sample_metrics(&pool, Some(&cfg.common), &shutdown);
    let names = Names::from_config(&cfg.common);
    let keys = keys(&cfg.http);
    let (ingress_router, ingress) =
        ingress_parts(&cfg.common, keys.clone(), &cfg.ingress, &pool, &shutdown);
    // Declares the topology before anything is accepted; without a broker the roles wait
    // for it (and change-status answers 503) rather than the process giving up.
    if let Err(e) = ingress.publisher.check_ready().await {
        tracing::warn!(error = %e, "broker not reachable yet; roles will keep trying");
    }
    let bridge = BridgeState::new(keys, pool.clone(), cfg.bridge, shutdown.clone());

    let mut tasks = JoinSet::new();
    let (wpool, wcommon, wcfg, wstop) = (
        pool.clone(),
        cfg.common.clone(),
        cfg.worker,
        shutdown.clone(),
    );
    tasks.spawn(async move { worker::run(wpool, &wcommon, wcfg, wstop).await });
    tasks.spawn(relay::run(
        pool.clone(),
        cfg.common.amqp_url.clone(),
        names.clone(),
        RelayConfig {
            history_retention_days: cfg.common.history_retention_days,
            ..cfg.relay
        },
        shutdown.clone(),
    ));
    tasks.spawn(sse::run_feed(
        bridge.clone(),
        cfg.common.amqp_url.clone(),
        names,
    ));
    let router = ingress_router
        .merge(sse::router(bridge))
        .merge(health::router(pool, Some(ingress)))
        .merge(openapi::router());
    let token = shutdown.clone();
    let http = cfg.http;
    tasks.spawn(async move { serve_http(&http, router, sse::STREAM_PATHS, token).await });
    join_all(tasks, shutdown).await
}
