//! The SSE bridge: its own queue bound to `orderflow.events` feeds a [`hub::Hub`]; each
//! browser connection gets the events it may see, with `id:` = seq. The queue is bound only
//! while someone listens (and `SSE_IDLE_UNBIND_SECS` after the last one leaves), so a
//! bridge nobody watches takes no events from the broker. A reconnect with
//! `Last-Event-ID` resumes from memory when the ring covers the gap, else from the outbox
//! table — so nothing is lost across bridge restarts within retention.

pub mod hub;
mod stream;

use crate::auth::{HasKeys, Keys};
use crate::broker::{self, Names};
use crate::config::BridgeConfig;
use crate::domain::{Actor, Role};
use crate::event::Event;
use crate::http::ApiError;
use crate::http::openapi::{BadRequest, Forbidden, Unauthorized, Unavailable};
use crate::metrics;
use ::metrics::{counter, gauge};
use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use hub::Hub;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Counters for `/orders/events/stats`.
#[derive(Default)]
pub struct Stats {
    by_role: [AtomicU64; 4],
    events_received: AtomicU64,
    events_delivered: AtomicU64,
    slow_disconnects: AtomicU64,
    replayed_from_memory: AtomicU64,
    replayed_from_db: AtomicU64,
}

fn role_index(role: Role) -> usize {
    Role::ALL
        .iter()
        .position(|r| *r == role)
        .expect("role in ALL")
}

/// Each counter moves here, and with it its Prometheus metric: `/orders/events/stats`
/// and `/metrics` cannot disagree.
impl Stats {
    pub(crate) fn connected(&self, role: Role) {
        self.by_role[role_index(role)].fetch_add(1, Ordering::Relaxed);
        gauge!(metrics::SSE_CONNECTIONS, "role" => role.as_str()).increment(1.0);
    }

    pub(crate) fn disconnected(&self, role: Role) {
        self.by_role[role_index(role)].fetch_sub(1, Ordering::Relaxed);
        gauge!(metrics::SSE_CONNECTIONS, "role" => role.as_str()).decrement(1.0);
    }

    pub(crate) fn received(&self) {
        self.events_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delivered(&self) {
        self.events_delivered.fetch_add(1, Ordering::Relaxed);
        counter!(metrics::SSE_EVENTS_SENT).increment(1);
    }

    pub(crate) fn slow_disconnect(&self) {
        self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
        counter!(metrics::SSE_SLOW_DISCONNECTS).increment(1);
    }

    pub(crate) fn replayed(&self, from_memory: bool, n: usize) {
        let (counter, source) = if from_memory {
            (&self.replayed_from_memory, "memory")
        } else {
            (&self.replayed_from_db, "database")
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        counter!(metrics::SSE_REPLAYED, "source" => source).increment(n as u64);
    }
}

#[derive(Clone)]
pub struct BridgeState {
    pub keys: Keys,
    pub pool: PgPool,
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    pub cfg: BridgeConfig,
    pub instance: String,
    pub shutdown: CancellationToken,
}

impl HasKeys for BridgeState {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl BridgeState {
    pub fn new(keys: Keys, pool: PgPool, cfg: BridgeConfig, shutdown: CancellationToken) -> Self {
        let stats = Arc::new(Stats::default());
        BridgeState {
            keys,
            pool,
            hub: Arc::new(Hub::new(
                cfg.sse_ring_capacity,
                cfg.sse_client_buffer,
                stats.clone(),
            )),
            stats,
            cfg,
            instance: Uuid::new_v4().simple().to_string()[..12].to_owned(),
            shutdown,
        }
    }
}

/// The routes whose responses are endless streams, for the listener to serve as such.
pub const STREAM_PATHS: &[&str] = &[SUBSCRIBE];
const SUBSCRIBE: &str = "/orders/events/subscribe";

pub fn router(state: BridgeState) -> Router {
    Router::new()
        .route(SUBSCRIBE, get(subscribe))
        .route("/orders/events/stats", get(stats))
        .with_state(state)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SubscribeParams {
    /// Only this order's events.
    order_id: Option<Uuid>,
    /// Only changes into this status.
    status: Option<crate::domain::OrderStatus>,
    /// Resume after this event id (`Last-Event-ID` wins when both are given).
    #[param(minimum = 0)]
    last_event_id: Option<i64>,
    /// The token, for EventSource, which cannot set headers: the `access_token`
    /// security scheme. Read by the auth extractor; accepted here so it is not an unknown
    /// parameter.
    #[allow(dead_code)]
    #[param(ignore)]
    access_token: Option<String>,
}

/// One event on the stream, as an EventSource sees it (`id:`, `event:`, `data:` lines).
#[derive(ToSchema)]
#[allow(dead_code)] // the schema of what `stream` writes
struct StreamEvent {
    /// The event's `seq`: resume with it as `Last-Event-ID`.
    id: Option<String>,
    /// `order.created`, `order.status_changed`, `bulk.progress` (admin, support) or
    /// `reset` (the resume point is older than retention).
    event: Option<String>,
    /// The event JSON: for order events `{seq, type, order_id, customer_id, from, to,
    /// action, payment_status, version, actor: {id, role}, reason, job_id, bulk_id, at}`.
    #[schema(content_media_type = "application/json")]
    data: String,
    /// Reconnect delay hint in milliseconds.
    retry: Option<u64>,
}

/// What one connection may and wants to see.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    actor: Actor,
    order_id: Option<Uuid>,
    status: Option<String>,
}

impl Filter {
    pub(crate) fn allows(&self, e: &Event) -> bool {
        if e.event_type == crate::event::BULK_PROGRESS {
            return self.actor.role.sees_all_orders()
                && self.order_id.is_none()
                && self.status.is_none();
        }
        let entitled = self.actor.role.sees_all_orders() || e.customer_id == Some(self.actor.id);
        entitled
            && self.order_id.is_none_or(|id| e.order_id == Some(id))
            && self
                .status
                .as_ref()
                .is_none_or(|s| e.to.as_deref() == Some(s.as_str()))
    }
}

#[utoipa::path(
    get,
    path = "/orders/events/subscribe",
    operation_id = "subscribe_events",
    tag = "events",
    summary = "Live events (Server-Sent Events)",
    description = "Customers receive only their own orders' events. `Last-Event-ID` (header or `last_event_id`) resumes after that id with nothing lost and nothing repeated. Served by `orderflow all` and by `sse-bridge`.",
    params(
        SubscribeParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a non-negative integer)"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []), ("access_token" = []))
)]
async fn subscribe(
    State(state): State<BridgeState>,
    actor: Actor,
    headers: HeaderMap,
    params: Result<Query<SubscribeParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(params) = params?;
    let header_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be a non-negative integer".into())
                })?,
        ),
        None => None,
    };
    // The header wins: EventSource sends it on reconnect while the URL keeps the original query.
    let resume = header_id.or(params.last_event_id);
    if resume.is_some_and(|n| n < 0) {
        return Err(ApiError::BadRequest(
            "last_event_id must be a non-negative integer".into(),
        ));
    }
    let filter = Filter {
        actor,
        order_id: params.order_id,
        status: params.status.map(|s| s.to_string()),
    };
    let body = stream::open(&state, filter, resume).await?;
    let sse = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(state.cfg.sse_keepalive_secs)));
    // Reverse proxies (nginx and those that follow it) must not buffer a live stream.
    Ok(([("x-accel-buffering", "no")], sse))
}

/// This bridge instance's connections and counters.
#[derive(Serialize, ToSchema)]
pub struct BridgeStats {
    instance: String,
    connections: Connections,
    /// Whether the bridge follows the events exchange (its queue bound, or being bound
    /// again after the broker was lost): while anyone listens, and `SSE_IDLE_UNBIND_SECS`
    /// after the last connection closed.
    bound: bool,
    /// Events the bridge took from the broker (none while unbound).
    events_received: u64,
    events_delivered: u64,
    slow_disconnects: u64,
    replayed_from_memory: u64,
    replayed_from_db: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Connections {
    total: u64,
    /// Open connections per role.
    by_role: std::collections::BTreeMap<String, u64>,
}

#[utoipa::path(
    get,
    path = "/orders/events/stats",
    operation_id = "get_event_stats",
    tag = "events",
    summary = "This bridge instance's connections and counters (admin)",
    responses(
        (status = 200, description = "Counters since the bridge started", body = BridgeStats),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("bearer" = []))
)]
async fn stats(
    State(state): State<BridgeState>,
    actor: Actor,
) -> Result<impl IntoResponse, ApiError> {
    if actor.role != Role::Admin {
        return Err(ApiError::forbidden(
            crate::domain::RejectCode::ForbiddenRole,
            "only admins may read bridge stats",
        ));
    }
    let s = &state.stats;
    let by_role = Role::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_owned(),
                s.by_role[role_index(*r)].load(Ordering::Relaxed),
            )
        })
        .collect();
    let total: u64 = s.by_role.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    Ok(Json(BridgeStats {
        instance: state.instance.clone(),
        connections: Connections { total, by_role },
        bound: state.hub.is_live(),
        events_received: s.events_received.load(Ordering::Relaxed),
        events_delivered: s.events_delivered.load(Ordering::Relaxed),
        slow_disconnects: s.slow_disconnects.load(Ordering::Relaxed),
        replayed_from_memory: s.replayed_from_memory.load(Ordering::Relaxed),
        replayed_from_db: s.replayed_from_db.load(Ordering::Relaxed),
    }))
}

/// Feed the hub from the broker until `shutdown`, reconnecting whenever the broker is lost.
pub async fn run_feed(state: BridgeState, amqp_url: String, names: Names) -> anyhow::Result<()> {
    broker::supervise(
        "SSE bridge",
        &state.shutdown,
        Duration::from_secs(5),
        || feed_session(&state, &amqp_url, &names),
    )
    .await;
    // Every open stream ends once it has sent what it has, so connections can close.
    state.hub.close();
    Ok(())
}

async fn feed_session(state: &BridgeState, url: &str, names: &Names) -> anyhow::Result<()> {
    let conn = broker::connect(url, "sse-bridge").await?;
    let channel = conn.create_channel().await?;
    broker::topology::declare(&channel, names)
        .await
        .context("declaring topology")?;
    let queue = names.sse_queue(&state.instance);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let binding = Binding {
        channel: &channel,
        queue: &queue,
        exchange: &names.events,
    };
    // The queue is bound while anyone listens, and unbound once nobody has for
    // `SSE_IDLE_UNBIND_SECS`: unbound, events are routed past this bridge.
    let linger = Duration::from_secs(state.cfg.sse_idle_unbind_secs);
    let mut feed = state.hub.feed();
    let mut bound = false;
    let mut unbind_at: Option<tokio::time::Instant> = None;
    // A new session binds again only if someone listens; a hub left live by the last
    // session with nobody listening would let a connection follow an unbound queue.
    state.hub.go_idle();
    loop {
        if feed.borrow_and_update().listeners > 0 {
            unbind_at = None;
            if !bound {
                binding.bind().await?;
                bound = true;
                if !state.hub.is_live() {
                    // Nobody followed the hub while unbound: start it at "now" rather than
                    // fill in every event since it was last bound.
                    prime(state).await?;
                }
                // Events published while this bridge was not bound are in the outbox:
                // catch up, so connections need not wait for the next event to notice the
                // gap.
                catch_up(state).await?;
                state.hub.set_live();
                tracing::info!(%queue, head = state.hub.head(), "SSE bridge consuming");
            }
        } else if bound && unbind_at.is_none() {
            unbind_at = Some(tokio::time::Instant::now() + linger);
        }
        let idle = async {
            match unbind_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            // The hub holds the sender as long as this task runs.
            _ = feed.changed() => continue,
            _ = idle => {
                unbind_at = None;
                if state.hub.go_idle() {
                    binding.unbind().await?;
                    bound = false;
                    tracing::info!(%queue, "SSE bridge unbound: nobody listening");
                }
                continue;
            }
            next = consumer.next() => next,
        };
        let Some(delivery) = next else {
            anyhow::bail!("consumer stream ended (channel closed)")
        };
        let delivery = delivery.context("receiving an event")?;
        state.stats.received();
        match Event::parse(delivery.routing_key.as_str(), &delivery.data) {
            Some(mut event) => {
                if crate::telemetry::exporting() {
                    // For the SSE send spans: the event's trace rides in its header.
                    event.traceparent = traceparent(&delivery);
                }
                let seq = event.seq;
                if seq > state.hub.head() + 1 && state.hub.head() > 0 {
                    // A hole (events the bridge missed): fill it from the outbox, in order.
                    fill_hub(state, seq).await?;
                }
                state.hub.publish(event);
            }
            None => {
                tracing::warn!(routing_key = %delivery.routing_key, "ignoring a message that is not an event")
            }
        }
    }
    let _ = conn.close(200, "shutdown".into()).await;
    Ok(())
}

/// The bridge's queue and the binding that routes every event to it.
struct Binding<'a> {
    channel: &'a lapin::Channel,
    queue: &'a str,
    exchange: &'a str,
}

impl Binding<'_> {
    async fn bind(&self) -> lapin::Result<()> {
        self.channel
            .queue_bind(
                self.queue.into(),
                self.exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    async fn unbind(&self) -> lapin::Result<()> {
        self.channel
            .queue_unbind(
                self.queue.into(),
                self.exchange.into(),
                "#".into(),
                FieldTable::default(),
            )
            .await
    }
}

/// Start the hub at the newest event the broker has confirmed, so a client connecting
/// without Last-Event-ID follows from "now". Called when the feed binds after nobody
/// listened (and at start, when nobody has yet), right after the bind: `catch_up` then
/// fills in from the outbox what was sequenced after it, and every later event reaches the
/// hub through the queue (or fills a hole from the outbox). Not the newest seq: an event
/// sequenced but not yet published would arrive after the head and be dropped as a repeat.
pub async fn prime(state: &BridgeState) -> anyhow::Result<()> {
    let published = crate::store::outbox::published_seq(&mut *state.pool.acquire().await?).await?;
    state.hub.advance_head(published);
    Ok(())
}

/// At each bind: fill in what was sequenced while the bridge was not bound — after the
/// published cursor when it was idle (`prime`), after the head when connections were open
/// across a broker reconnect. Also on a bind whose `prime` found nothing published (head 0):
/// everything sequenced then is unpublished, so what there is to fill is bounded.
async fn catch_up(state: &BridgeState) -> anyhow::Result<()> {
    fill_hub(state, i64::MAX).await
}

/// Publish into the hub the outbox events after its head and before `before`.
async fn fill_hub(state: &BridgeState, before: i64) -> anyhow::Result<()> {
    let mut conn = state.pool.acquire().await?;
    loop {
        let events =
            crate::store::outbox::between(&mut conn, state.hub.head(), Some(before), 1000).await?;
        if events.is_empty() {
            return Ok(());
        }
        for e in events {
            state.hub.publish(e);
        }
    }
}

/// The `traceparent` header the relay put on an event.
fn traceparent(delivery: &lapin::message::Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("traceparent")? {
        lapin::types::AMQPValue::LongString(s) => {
            std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned)
        }
        _ => None,
    }
}
