//! Nothing lost, nothing twice, under crashes and restarts (DESIGN.md, "Guarantees").
//!
//! Every role runs as its own process — one ingress, two order workers, two outbox relays,
//! one SSE bridge — while lanes of clients walk orders through the state machine (with
//! some requests that must be rejected and some that race each other), a downstream queue
//! collects every event and an admin SSE client follows the stream. Meanwhile: workers are
//! `kill -9`ed at random moments and one of them also aborts between commit and ack on its
//! own; RabbitMQ is restarted; Postgres backends are terminated; the active relay and the
//! bridge are `kill -9`ed; the SSE client drops its connection and resumes.
//!
//! Afterwards the database, the downstream queue and the SSE client must show that every
//! accepted job reached exactly one terminal state, no job took effect twice, every change
//! was published (seqs gap-free), per order every consumer saw the history's order, and the
//! resumed SSE client missed nothing. The figures are printed one per line (`faults: …`).
//!
//! ~60 s of load by default; `FAULT_SUITE_SECS=300` runs longer (faults repeat each minute).
//! One test only: the broker restart must not overlap another test of this binary.

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use common::{
    SseEvent, TERMINAL_JOB_STATUSES,
    processes::{BrokerOutage, Cluster, Ending, Supervised, applied, poll_until},
};
use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Orders walked at the same time.
const LANES: usize = 40;
/// Each lane submits at most one step per PACE (load shaping).
const PACE: Duration = Duration::from_millis(200);
/// The crash-hook worker aborts after every Nth committed batch, before its ack.
const CRASH_AFTER_COMMIT_EVERY: &str = "50";
/// After the load stops: how long everything may take to become terminal and published.
const DRAIN_DEADLINE: Duration = Duration::from_secs(90);
/// How long a fault may take to show its recovery before the test calls it a failure.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
const SUBSCRIBE: &str = "/orders/events/subscribe";

/// Knobs every process must agree on (the delay queues are declared from the retry policy).
const SHARED_ENV: &[(&str, &str)] = &[
    // Short backoff steps, so the sweeper's threshold (twice the longest step) is short too.
    ("JOB_RETRY_BASE_MS", "100"),
    ("SHUTDOWN_TIMEOUT_SECS", "5"),
];
const WORKER_ENV: &[(&str, &str)] = &[
    ("WORKER_RATE_PER_CUSTOMER", "100000"),
    ("WORKER_RATE_GLOBAL", "100000"),
    ("SWEEP_AFTER_SECS", "10"),
    ("SWEEP_INTERVAL_SECS", "2"),
];
const INGRESS_ENV: &[(&str, &str)] = &[("RATE_PER_ACTOR", "100000")];
const RELAY_ENV: &[(&str, &str)] = &[("RELAY_POLL_MS", "500")];

/// The walk every order takes; each step is one change-status job.
const STEPS: [&str; 5] = [
    "mark_paid",
    "confirm",
    "start_processing",
    "ship",
    "deliver",
];

fn step_body(step: &str, order: Uuid) -> Value {
    match step {
        "ship" => {
            json!({"action": "ship", "tracking_number": format!("1Z{}", &order.simple().to_string()[..10])})
        }
        _ => json!({"action": step, "reason": "fault suite"}),
    }
}

/// A request the state machine must reject at this point of the walk.
fn invalid_body(step: &str) -> Value {
    match step {
        // No tracking number: missing_field.
        "ship" => json!({"action": "ship"}),
        // Already shipped: invalid_transition.
        "deliver" => json!({"action": "confirm"}),
        // Not shipped yet: invalid_transition.
        _ => json!({"action": "deliver"}),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// A valid step of the walk.
    Success,
    /// A request the state machine must reject.
    Rejection,
    /// One of two racing submissions of the same step: at most one may succeed.
    Race,
}

/// What the clients were told, and when.
#[derive(Default)]
struct Ledger {
    accepted: Mutex<HashMap<Uuid, Expect>>,
    races: Mutex<Vec<(Uuid, Uuid)>>,
    orders: Mutex<Vec<Uuid>>,
    accepted_202: AtomicU64,
    repeats_200: AtomicU64,
    unavailable_503: AtomicU64,
    server_errors: AtomicU64,
    limited_429: AtomicU64,
    transport_errors: AtomicU64,
    orders_retried: AtomicU64,
    at_202: Mutex<Vec<Instant>>,
    at_503: Mutex<Vec<Instant>>,
}

impl Ledger {
    fn first_after(times: &Mutex<Vec<Instant>>, after: Instant) -> Option<Instant> {
        times.lock().unwrap().iter().copied().find(|t| *t > after)
    }
}

/// Wakes lanes when their jobs become terminal (one query for all waiting jobs).
#[derive(Default)]
struct Tracker {
    waiting: Mutex<HashMap<Uuid, Vec<oneshot::Sender<String>>>>,
}

impl Tracker {
    async fn run(&self, pool: PgPool, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !stop.is_cancelled() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ids: Vec<Uuid> = self.waiting.lock().unwrap().keys().copied().collect();
            if ids.is_empty() {
                continue;
            }
            let done: Vec<(Uuid, String)> = match sqlx::query_as(
                "select id, status from jobs where id = any($1) and status = any($2)",
            )
            .bind(&ids)
            .bind(&TERMINAL_JOB_STATUSES[..])
            .fetch_all(&pool)
            .await
            {
                Ok(rows) => rows,
                Err(_) => continue, // the database is what is being faulted; ask again
            };
            let mut waiting = self.waiting.lock().unwrap();
            for (id, status) in done {
                for tx in waiting.remove(&id).unwrap_or_default() {
                    let _ = tx.send(status.clone());
                }
            }
        }
    }

    fn watch(&self, job: Uuid) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap()
            .entry(job)
            .or_default()
            .push(tx);
        rx
    }
}

struct Ctx {
    http: reqwest::Client,
    ingress: String,
    admin: String,
    ledger: Ledger,
    tracker: Tracker,
    /// The end of the load: lanes start nothing new.
    stop: CancellationToken,
}

impl Ctx {
    /// The job's terminal status; None if the load ended first.
    async fn terminal(&self, job: Uuid) -> Option<String> {
        let rx = self.tracker.watch(job);
        tokio::select! {
            status = rx => status.ok(),
            _ = self.stop.cancelled() => None,
        }
    }

    /// POST /orders for a new customer; retried through faults. None once the load ended.
    async fn create_order(&self) -> Option<Uuid> {
        let body = json!({
            "customer_id": Uuid::new_v4(),
            "items": [{"sku": "FAULT-UNTRACKED", "quantity": 1, "unit_price_cents": 1250}],
        });
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            let sent = self
                .http
                .post(format!("{}/orders", self.ingress))
                .bearer_auth(&self.admin)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().as_u16() == 201 => {
                    let order: Value = resp.json().await.expect("order JSON");
                    let id: Uuid = order["id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .expect("order id");
                    self.ledger.orders.lock().unwrap().push(id);
                    return Some(id);
                }
                Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                    self.ledger.orders_retried.fetch_add(1, Relaxed);
                }
                Ok(resp) => {
                    let status = resp.status();
                    panic!(
                        "POST /orders: unexpected {status}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                }
                Err(_) => {
                    self.ledger.orders_retried.fetch_add(1, Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submit a change until the ingress accepts it (same Idempotency-Key on every retry).
    async fn submit(&self, order: Uuid, body: &Value, key: &str, expect: Expect) -> Uuid {
        let started = Instant::now();
        let url = format!("{}/orders/{order}/change-status", self.ingress);
        loop {
            assert!(
                started.elapsed() < RECOVERY_DEADLINE * 2,
                "change-status {body} on order {order} (key {key}) not accepted within {:?}",
                RECOVERY_DEADLINE * 2
            );
            let sent = self
                .http
                .post(&url)
                .bearer_auth(&self.admin)
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(_) => {
                    self.ledger.transport_errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            match status {
                200 | 202 => {
                    let answer: Value = resp.json().await.expect("202 body is JSON");
                    let job: Uuid = answer["job_id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("{status} without job_id: {answer}"));
                    if status == 202 {
                        self.ledger.accepted_202.fetch_add(1, Relaxed);
                        self.ledger.at_202.lock().unwrap().push(Instant::now());
                    } else {
                        self.ledger.repeats_200.fetch_add(1, Relaxed);
                    }
                    self.ledger.accepted.lock().unwrap().insert(job, expect);
                    return job;
                }
                503 => {
                    self.ledger.unavailable_503.fetch_add(1, Relaxed);
                    self.ledger.at_503.lock().unwrap().push(Instant::now());
                }
                429 => {
                    self.ledger.limited_429.fetch_add(1, Relaxed);
                }
                s if s >= 500 => {
                    self.ledger.server_errors.fetch_add(1, Relaxed);
                }
                _ => panic!(
                    "change-status {body} on order {order}: unexpected {status}: {}",
                    resp.text().await.unwrap_or_default()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One client walking orders through the state machine, one step at a time.
async fn lane(ctx: Arc<Ctx>, n: usize) {
    let mut rng = fastrand::Rng::with_seed(0x0f1a_u64 + n as u64);
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'orders: loop {
        let Some(order) = ctx.create_order().await else {
            return;
        };
        for step in STEPS {
            pace.tick().await;
            if ctx.stop.is_cancelled() {
                return;
            }
            if rng.u8(..10) == 0 {
                let key = format!("{order}-{step}-invalid");
                let job = ctx
                    .submit(order, &invalid_body(step), &key, Expect::Rejection)
                    .await;
                if ctx.terminal(job).await.is_none() {
                    return;
                }
            }
            let succeeded = if rng.u8(..10) == 0 {
                // Two submissions of the same step race: the state machine lets one through.
                let body = step_body(step, order);
                let (key_a, key_b) = (format!("{order}-{step}-a"), format!("{order}-{step}-b"));
                let (a, b) = tokio::join!(
                    ctx.submit(order, &body, &key_a, Expect::Race),
                    ctx.submit(order, &body, &key_b, Expect::Race)
                );
                ctx.ledger.races.lock().unwrap().push((a, b));
                let (Some(sa), Some(sb)) = tokio::join!(ctx.terminal(a), ctx.terminal(b)) else {
                    return;
                };
                sa == "succeeded" || sb == "succeeded"
            } else {
                let key = format!("{order}-{step}");
                let job = ctx
                    .submit(order, &step_body(step, order), &key, Expect::Success)
                    .await;
                match ctx.terminal(job).await {
                    None => return,
                    Some(status) => status == "succeeded",
                }
            };
            if !succeeded {
                // The walk cannot go on (e.g. a job parked as dead): start a new order.
                continue 'orders;
            }
        }
    }
}

// ---- observers -------------------------------------------------------------------------

/// One delivery on the downstream queue.
struct Got {
    message_id: Option<String>,
    order_header: Option<String>,
    body: Value,
    redelivered: bool,
}

#[derive(Default)]
struct DownstreamLog {
    got: Vec<Got>,
    sessions: u64,
}

fn header_text(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// Consume the durable downstream queue (it outlives the broker restart), reconnecting.
async fn downstream(
    amqp_url: String,
    queue: String,
    log: Arc<Mutex<DownstreamLog>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let session = async {
            let conn = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            channel.basic_qos(500, BasicQosOptions::default()).await?;
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "faults-downstream".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            log.lock().unwrap().sessions += 1;
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return Ok::<(), lapin::Error>(()),
                    next = consumer.next() => next,
                };
                let Some(delivery) = next else { return Ok(()) };
                let delivery = delivery?;
                let got = Got {
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.as_str().to_owned()),
                    order_header: header_text(&delivery, "order_id"),
                    body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                    redelivered: delivery.redelivered,
                };
                log.lock().unwrap().got.push(got);
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
        };
        let _ = session.await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// One SSE connection of the resuming client.
struct Segment {
    resumed_after: u64,
    connected_at: Instant,
    events: Vec<(Instant, SseEvent)>,
    end: Option<String>,
}

#[derive(Default)]
struct SseLog {
    segments: Vec<Segment>,
    failed_connects: u64,
}

impl SseLog {
    fn last_seq(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .find_map(|s| {
                s.events
                    .last()
                    .and_then(|(_, e)| e.id.as_deref()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The first event of a connection made after `after`.
    fn first_event_after(&self, after: Instant) -> Option<Instant> {
        self.segments
            .iter()
            .filter(|s| s.connected_at > after)
            .find_map(|s| s.events.first().map(|(at, _)| *at))
    }
}

/// `text/event-stream` framing: fields until a blank line; comments skipped. (The harness's
/// `SseStream` panics when its stream fails; this client must live through a bridge `kill -9`.)
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

impl Frames {
    fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).expect("SSE stream is UTF-8");
            if line.is_empty() {
                let (id, event, data) = (
                    self.id.take(),
                    self.event.take(),
                    std::mem::take(&mut self.data),
                );
                if !data.is_empty() || event.is_some() {
                    out.push(SseEvent {
                        id,
                        event,
                        data: data.join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "id" => self.id = Some(value.to_owned()),
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

/// An admin following every event from seq 1, resuming with Last-Event-ID whenever its
/// connection ends (the bridge died, or `disconnect` told it to drop the connection).
async fn sse_client(
    bridge: watch::Receiver<Option<String>>,
    token: String,
    log: Arc<Mutex<SseLog>>,
    disconnect: Arc<Notify>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("building the SSE client");
    let mut last: u64 = 0;
    while !stop.is_cancelled() {
        let Some(base) = bridge.borrow().clone() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let resp = http
            .get(format!("{base}{SUBSCRIBE}"))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("last-event-id", last.to_string())
            .send()
            .await;
        let resp = match resp {
            Ok(resp) if resp.status().as_u16() == 200 => resp,
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status();
                panic!(
                    "SSE subscribe refused: {status} {}",
                    resp.text().await.unwrap_or_default()
                );
            }
            _ => {
                log.lock().unwrap().failed_connects += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let index = {
            let mut log = log.lock().unwrap();
            log.segments.push(Segment {
                resumed_after: last,
                connected_at: Instant::now(),
                events: Vec::new(),
                end: None,
            });
            log.segments.len() - 1
        };
        let mut body = resp.bytes_stream();
        let mut frames = Frames::default();
        let end = loop {
            tokio::select! {
                _ = stop.cancelled() => break "stopped".to_owned(),
                _ = disconnect.notified() => break "dropped by the client".to_owned(),
                chunk = body.next() => match chunk {
                    None => break "ended by the server".to_owned(),
                    Some(Err(e)) => break format!("failed: {e}"),
                    Some(Ok(bytes)) => {
                        let events = frames.feed(&bytes);
                        let at = Instant::now();
                        let mut log = log.lock().unwrap();
                        for event in events {
                            if let Some(seq) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                                last = seq;
                            }
                            log.segments[index].events.push((at, event));
                        }
                    }
                },
            }
        };
        log.lock().unwrap().segments[index].end = Some(end);
    }
}

// ---- faults ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Fault {
    TerminateBackends,
    SseClientDisconnect,
    BrokerRestart,
    RelayKill,
    BridgeKill,
}

/// Faults at fixed fractions of each minute of the run (a shorter run is one scaled cycle).
fn plan(total: Duration) -> Vec<(Duration, Fault)> {
    use Fault::*;
    let cycle = total.min(Duration::from_secs(60));
    let slots = [
        (0.12, TerminateBackends),
        (0.22, SseClientDisconnect),
        (0.30, BrokerRestart),
        (0.50, RelayKill),
        (0.60, TerminateBackends),
        (0.70, BridgeKill),
    ];
    let mut plan = Vec::new();
    let mut base = Duration::ZERO;
    while base < total {
        for (fraction, fault) in slots {
            let at = base + cycle.mul_f64(fraction);
            if at + Duration::from_secs(3) < total {
                plan.push((at, fault));
            }
        }
        base += cycle;
    }
    plan
}

/// Counts and recovery times of the faults.
#[derive(Default, Debug)]
struct Tally {
    worker_kills: u32,
    relay_kills: u32,
    bridge_kills: u32,
    broker_restarts: u32,
    backend_terminations: u32,
    backends_terminated: i64,
    sse_client_drops: u32,
    relay_takeover: Vec<Duration>,
    broker_to_202: Vec<Duration>,
    broker_to_applied: Vec<Duration>,
    broker_outage: Vec<Duration>,
    bridge_to_event: Vec<Duration>,
    bridge_kill_to_event: Vec<Duration>,
    /// (when the connection was dropped, how long until the next event came).
    sse_resume_to_event: Vec<(Instant, Duration)>,
    backends_to_applied: Vec<Duration>,
    /// Broker outages (stop_app .. first 202 again): a worker restarted inside one cannot recover.
    outages: Vec<(Instant, Instant)>,
}

struct Roles {
    workers: Vec<Supervised>,
    relays: Vec<Supervised>,
    bridge: Supervised,
}

impl Roles {
    fn first_applied_after(&self, after: Instant) -> Option<Instant> {
        self.workers
            .iter()
            .filter_map(|w| {
                w.lives(|lives| {
                    lives
                        .iter()
                        .filter_map(|l| l.first_applied_after(after))
                        .min()
                })
            })
            .min()
    }
}

fn must<T>(found: Option<T>, what: &str) -> T {
    found.unwrap_or_else(|| panic!("no recovery within {RECOVERY_DEADLINE:?}: {what}"))
}

async fn inject(
    fault: Fault,
    cluster: &Cluster,
    roles: &Roles,
    ctx: &Ctx,
    sse: &Arc<Mutex<SseLog>>,
    disconnect: &Notify,
    tally: &Mutex<Tally>,
) {
    match fault {
        Fault::TerminateBackends => {
            let at = Instant::now();
            let n = cluster.terminate_backends().await;
            eprintln!("faults: terminated {n} Postgres backends");
            let applied = poll_until(RECOVERY_DEADLINE, || roles.first_applied_after(at)).await;
            let applied = must(applied, "a job applied after pg_terminate_backend");
            let mut t = tally.lock().unwrap();
            t.backend_terminations += 1;
            t.backends_terminated += n;
            t.backends_to_applied.push(applied - at);
        }
        Fault::SseClientDisconnect => {
            let at = Instant::now();
            disconnect.notify_one();
            let first = poll_until(RECOVERY_DEADLINE, || {
                sse.lock().unwrap().first_event_after(at)
            })
            .await;
            let first = must(first, "an SSE event after the client resumed");
            let mut t = tally.lock().unwrap();
            t.sse_client_drops += 1;
            t.sse_resume_to_event.push((at, first - at));
        }
        Fault::BrokerRestart => {
            let began = Instant::now();
            eprintln!("faults: rabbitmqctl stop_app");
            let outage = BrokerOutage::begin().await;
            // The outage lasts until a client has met it: the ingress refusing a job.
            let refused = poll_until(RECOVERY_DEADLINE, || {
                Ledger::first_after(&ctx.ledger.at_503, began)
            })
            .await;
            must(refused, "a 503 from the ingress while RabbitMQ is stopped");
            outage.end().await;
            let up = Instant::now();
            eprintln!("faults: rabbitmqctl start_app done");
            let accepted = poll_until(RECOVERY_DEADLINE, || {
                Ledger::first_after(&ctx.ledger.at_202, up)
            })
            .await;
            let accepted = must(accepted, "a 202 after RabbitMQ started again");
            let applied = poll_until(RECOVERY_DEADLINE, || roles.first_applied_after(up)).await;
            let applied = must(applied, "a job applied after RabbitMQ started again");
            let mut t = tally.lock().unwrap();
            t.broker_restarts += 1;
            t.broker_outage.push(up - began);
            t.broker_to_202.push(accepted - up);
            t.broker_to_applied.push(applied - up);
            t.outages.push((began, accepted.max(applied)));
        }
        Fault::RelayKill => {
            let active = poll_until(RECOVERY_DEADLINE, || {
                let active: Vec<usize> = (0..roles.relays.len())
                    .filter(|&i| {
                        roles.relays[i].lives(|l| l.last().is_some_and(|l| l.relay_active()))
                    })
                    .collect();
                (active.len() == 1).then(|| active[0])
            })
            .await;
            let victim = must(active, "exactly one relay logging `outbox relay active`");
            let at = roles.relays[victim].kill_and_hold().await;
            let standby = 1 - victim;
            let published = poll_until(RECOVERY_DEADLINE, || {
                roles.relays[standby].lives(|lives| {
                    lives
                        .iter()
                        .find_map(|l| l.first_after("published", at).map(|l| l.at))
                })
            })
            .await;
            let published = must(
                published,
                "the standby relay publishing after the active one was killed",
            );
            eprintln!(
                "faults: killed the active relay ({}); standby published after {:?}",
                roles.relays[victim].name,
                published - at
            );
            // Two relays again: the restarted one stands by.
            roles.relays[victim].start_again();
            let standing = poll_until(RECOVERY_DEADLINE, || {
                roles.relays[victim].lives(|lives| {
                    let life = lives.last()?;
                    (life.spawned_at > at
                        && life
                            .first_after("another relay is active; standing by", at)
                            .is_some())
                    .then_some(())
                })
            })
            .await;
            must(standing, "the restarted relay standing by");
            let mut t = tally.lock().unwrap();
            t.relay_kills += 1;
            t.relay_takeover.push(published - at);
        }
        Fault::BridgeKill => {
            let at = roles.bridge.kill().await;
            let spawned = poll_until(RECOVERY_DEADLINE, || {
                roles
                    .bridge
                    .lives(|lives| lives.last().map(|l| l.spawned_at).filter(|t| *t > at))
            })
            .await;
            let spawned = must(spawned, "the bridge respawned");
            let first = poll_until(RECOVERY_DEADLINE, || {
                sse.lock().unwrap().first_event_after(spawned)
            })
            .await;
            let first = must(first, "an SSE event from the restarted bridge");
            let mut t = tally.lock().unwrap();
            t.bridge_kills += 1;
            t.bridge_to_event.push(first - spawned);
            t.bridge_kill_to_event.push(first - at);
        }
    }
}

/// Drop the SSE client's connection every few seconds until `until`: each time it resumes
/// with Last-Event-ID, at whatever point the relay and the bridge happen to be.
async fn sse_dropper(
    sse: &Mutex<SseLog>,
    disconnect: &Notify,
    until: Instant,
    tally: &Mutex<Tally>,
) {
    let mut rng = fastrand::Rng::with_seed(0x55e);
    loop {
        let wait = Duration::from_millis(rng.u64(1_500..4_000));
        if Instant::now() + wait + Duration::from_secs(3) > until {
            return;
        }
        tokio::time::sleep(wait).await;
        let at = Instant::now();
        disconnect.notify_one();
        let first = poll_until(RECOVERY_DEADLINE, || {
            sse.lock().unwrap().first_event_after(at)
        })
        .await;
        let first = must(first, "an SSE event after the client resumed");
        let mut t = tally.lock().unwrap();
        t.sse_client_drops += 1;
        t.sse_resume_to_event.push((at, first - at));
    }
}

/// `kill -9` a random worker every few seconds until `until`.
async fn worker_killer(roles: &Roles, until: Instant, tally: &Mutex<Tally>) {
    let mut rng = fastrand::Rng::with_seed(0xdead);
    loop {
        let wait = Duration::from_millis(rng.u64(3_000..8_000));
        if Instant::now() + wait + Duration::from_secs(3) > until {
            return;
        }
        tokio::time::sleep(wait).await;
        let victim = &roles.workers[rng.usize(..roles.workers.len())];
        victim.kill().await;
        tally.lock().unwrap().worker_kills += 1;
    }
}

// ---- the evidence, afterwards -----------------------------------------------------------

#[derive(sqlx::FromRow)]
struct EffectCounts {
    history_job_rows: i64,
    twice_applied: i64,
    succeeded_without_row: i64,
    unsucceeded_with_row: i64,
}

#[derive(sqlx::FromRow)]
struct OutboxCounts {
    rows: i64,
    status_changes: i64,
    created: i64,
    sequenced: i64,
    distinct_seqs: i64,
    min_seq: Option<i64>,
    max_seq: Option<i64>,
    published: i64,
    changes_not_one_per_job: i64,
}

/// What the database says about the accepted jobs, the history and the outbox.
struct Database {
    by_status: Vec<(String, i64)>,
    found: i64,
    terminal: i64,
    non_terminal: Vec<(Uuid, String, i32, Option<Value>)>,
    missing: Vec<Uuid>,
    /// Jobs in the database whose 202 no client saw (up to 10).
    unanswered: Vec<(Uuid, String)>,
    dead: Vec<(Uuid, Option<Value>)>,
    outcome: HashMap<Uuid, String>,
    effects: EffectCounts,
    outbox: OutboxCounts,
    orders: i64,
    version_mismatch: i64,
    /// Per order, the versions in history order and in seq order.
    history: Versions,
    outbox_order: Versions,
}

async fn versions(pool: &PgPool, sql: &str) -> Versions {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut versions = Versions::new();
    for (order, version) in rows {
        versions.entry(order).or_default().push(version);
    }
    versions
}

impl Database {
    async fn read(pool: &PgPool, accepted: &[Uuid]) -> Self {
        let outcomes: Vec<(Uuid, String)> =
            sqlx::query_as("select id, status from jobs where id = any($1)")
                .bind(accepted)
                .fetch_all(pool)
                .await
                .expect("job outcomes");
        let outcome: HashMap<Uuid, String> = outcomes.into_iter().collect();
        let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
        for status in outcome.values() {
            *by_status.entry(status.clone()).or_default() += 1;
        }
        let found = outcome.len() as i64;
        let terminal = outcome
            .values()
            .filter(|s| TERMINAL_JOB_STATUSES.contains(&s.as_str()))
            .count() as i64;
        let missing = accepted
            .iter()
            .filter(|id| !outcome.contains_key(id))
            .copied()
            .collect();
        let non_terminal = sqlx::query_as(
            "select id, status, attempts, error from jobs
             where id = any($1) and not (status = any($2)) order by id limit 10",
        )
        .bind(accepted)
        .bind(&TERMINAL_JOB_STATUSES[..])
        .fetch_all(pool)
        .await
        .expect("non-terminal jobs");
        let unanswered = sqlx::query_as(
            "select j.id, j.status from jobs j
             where not exists (select 1 from unnest($1::uuid[]) a(id) where a.id = j.id) limit 10",
        )
        .bind(accepted)
        .fetch_all(pool)
        .await
        .expect("jobs never accepted");
        let dead = sqlx::query_as(
            "select id, error from jobs where id = any($1) and status = 'dead' order by id limit 5",
        )
        .bind(accepted)
        .fetch_all(pool)
        .await
        .expect("dead jobs");
        let effects = sqlx::query_as(
            "select (select count(*) from order_status_history where job_id is not null) as history_job_rows,
                    (select count(*) from (select job_id from order_status_history where job_id is not null
                                           group by job_id having count(*) > 1) t) as twice_applied,
                    (select count(*) from jobs j where j.status = 'succeeded'
                        and not exists (select 1 from order_status_history h where h.job_id = j.id))
                        as succeeded_without_row,
                    (select count(*) from jobs j where j.status <> 'succeeded'
                        and exists (select 1 from order_status_history h where h.job_id = j.id))
                        as unsucceeded_with_row",
        )
        .fetch_one(pool)
        .await
        .expect("history figures");
        let outbox = sqlx::query_as(
            "select count(*) as rows,
                    count(*) filter (where event_type = 'order.status_changed') as status_changes,
                    count(*) filter (where event_type = 'order.created') as created,
                    count(seq) as sequenced, count(distinct seq) as distinct_seqs,
                    min(seq) as min_seq, max(seq) as max_seq, count(*) filter (where seq <= (select published_seq from outbox_cursor)) as published,
                    (select count(*) from jobs j
                        left join (select payload->>'job_id' as job_id, count(*) as n from outbox
                                   where event_type = 'order.status_changed' group by 1) o
                            on o.job_id = j.id::text
                        where j.status = 'succeeded' and coalesce(o.n, 0) <> 1) as changes_not_one_per_job
             from outbox",
        )
        .fetch_one(pool)
        .await
        .expect("outbox figures");
        let (orders, version_mismatch): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where o.version <>
                 (select count(*) from order_status_history h where h.order_id = o.id))
             from orders o",
        )
        .fetch_one(pool)
        .await
        .expect("order versions");
        Database {
            by_status: by_status.into_iter().collect(),
            found,
            terminal,
            non_terminal,
            missing,
            unanswered,
            dead,
            outcome,
            effects,
            outbox,
            orders,
            version_mismatch,
            history: versions(
                pool,
                "select order_id, version from order_status_history order by order_id, id",
            )
            .await,
            outbox_order: versions(
                pool,
                "select order_id, (payload->>'version')::bigint from outbox
                 where seq is not null order by seq",
            )
            .await,
        }
    }

    fn count_of(&self, status: &str) -> i64 {
        self.by_status
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// The clients' expectations against the outcomes.
struct Clients {
    valid_not_succeeded: Vec<(Uuid, String)>,
    invalid_succeeded: Vec<Uuid>,
    races: usize,
    races_both: Vec<(Uuid, Uuid)>,
}

impl Clients {
    fn judge(ledger: &Ledger, outcome: &HashMap<Uuid, String>) -> Self {
        let succeeded = |id: &Uuid| outcome.get(id).is_some_and(|s| s == "succeeded");
        let expectations = ledger.accepted.lock().unwrap();
        let races = ledger.races.lock().unwrap();
        Clients {
            valid_not_succeeded: expectations
                .iter()
                .filter(|(id, e)| **e == Expect::Success && !succeeded(id))
                .map(|(id, _)| (*id, outcome.get(id).cloned().unwrap_or_default()))
                .collect(),
            invalid_succeeded: expectations
                .iter()
                .filter(|(id, e)| **e == Expect::Rejection && succeeded(id))
                .map(|(id, _)| *id)
                .collect(),
            races: races.len(),
            races_both: races
                .iter()
                .filter(|(a, b)| succeeded(a) && succeeded(b))
                .copied()
                .collect(),
        }
    }
}

/// What the downstream queue got: per order, the versions of the first delivery of each
/// message id, in arrival order.
struct DownstreamSeen {
    deliveries: usize,
    versions: Versions,
    duplicates: u64,
    /// Duplicates our own consumer caused (redelivered after its connection was lost).
    redelivered: u64,
    mismatches: u64,
    sessions: u64,
}

impl DownstreamSeen {
    fn of(log: &DownstreamLog) -> Self {
        let mut seen = HashSet::new();
        let mut versions = Versions::new();
        let (mut duplicates, mut redelivered, mut mismatches) = (0, 0, 0);
        for got in &log.got {
            let body_seq = got.body["seq"].as_i64().map(|s| s.to_string());
            let body_order = uuid_field(&got.body, "order_id");
            let header_order = got.order_header.as_deref().and_then(|s| s.parse().ok());
            if got.message_id.is_none() || got.message_id != body_seq || header_order != body_order
            {
                mismatches += 1;
            }
            let Some(id) = got.message_id.clone() else {
                continue;
            };
            if !seen.insert(id) {
                duplicates += 1;
                redelivered += u64::from(got.redelivered);
                continue;
            }
            if let (Some(order), Some(version)) = (body_order, got.body["version"].as_i64()) {
                versions.entry(order).or_default().push(version);
            }
        }
        DownstreamSeen {
            deliveries: log.got.len(),
            versions,
            duplicates,
            redelivered,
            mismatches,
            sessions: log.sessions,
        }
    }

    fn distinct(&self) -> usize {
        self.versions.values().map(Vec::len).sum()
    }
}

/// What the resuming SSE client got. Every connection must continue gap-free from its
/// Last-Event-ID (the admin is entitled to every event).
struct StreamSeen {
    events: usize,
    distinct: usize,
    versions: Versions,
    resets: usize,
    duplicates: usize,
    /// Events whose seq was not the one after the previous (or after Last-Event-ID).
    breaks: usize,
    examples: Vec<String>,
    connections: usize,
    failed_connects: u64,
    ends: Vec<String>,
}

impl StreamSeen {
    fn of(log: &SseLog) -> Self {
        let mut versions = Versions::new();
        let mut seen = HashSet::new();
        let (mut events, mut resets, mut duplicates, mut breaks) = (0, 0, 0, 0);
        let mut examples = Vec::new();
        for (n, segment) in log.segments.iter().enumerate() {
            let mut expected = segment.resumed_after + 1;
            for (_, event) in &segment.events {
                events += 1;
                if event.kind() == "reset" {
                    resets += 1;
                }
                let seq = event.id.as_deref().and_then(|id| id.parse::<u64>().ok());
                if seq != Some(expected) {
                    breaks += 1;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "connection #{n} (Last-Event-ID {}): expected seq {expected}, got {:?} ({})",
                            segment.resumed_after,
                            event.id,
                            event.kind()
                        ));
                    }
                    expected = seq.unwrap_or(expected);
                }
                expected += 1;
                let Some(seq) = seq else { continue };
                if !seen.insert(seq) {
                    duplicates += 1;
                    continue;
                }
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if let (Some(order), Some(version)) =
                    (uuid_field(&data, "order_id"), data["version"].as_i64())
                {
                    versions.entry(order).or_default().push(version);
                }
            }
        }
        StreamSeen {
            events,
            distinct: seen.len(),
            versions,
            resets,
            duplicates,
            breaks,
            examples,
            connections: log.segments.len(),
            failed_connects: log.failed_connects,
            ends: log.segments.iter().filter_map(|s| s.end.clone()).collect(),
        }
    }
}

/// What the processes' lives say: restarts, recovery, deaths nobody asked for.
struct ProcessRecord {
    worker_recovery: Vec<Duration>,
    worker_restarts: usize,
    crash_hook_aborts: usize,
    died_before_applying: usize,
    restarted_in_outage: usize,
    unexpected_exits: Vec<String>,
    swept: u64,
    parked_crashers: u64,
    applied_lines: usize,
    warnings: usize,
    errors: usize,
    /// SSE drop -> next event, outside broker outages (no event flows while it is down).
    sse_resumes: Vec<Duration>,
    sse_resumes_in_outage: usize,
}

impl ProcessRecord {
    fn of(all: &[Supervised], tally: &Tally) -> Self {
        let in_outage = |at: Instant| {
            tally
                .outages
                .iter()
                .any(|(from, to)| at >= *from && at <= *to)
        };
        let mut record = ProcessRecord {
            worker_recovery: Vec::new(),
            worker_restarts: 0,
            crash_hook_aborts: 0,
            died_before_applying: 0,
            restarted_in_outage: 0,
            unexpected_exits: Vec::new(),
            swept: 0,
            parked_crashers: 0,
            applied_lines: 0,
            warnings: 0,
            errors: 0,
            sse_resumes: tally
                .sse_resume_to_event
                .iter()
                .filter(|(at, _)| !in_outage(*at))
                .map(|(_, d)| *d)
                .collect(),
            sse_resumes_in_outage: 0,
        };
        record.sse_resumes_in_outage = tally.sse_resume_to_event.len() - record.sse_resumes.len();
        for process in all {
            let worker = process.name.starts_with("worker");
            process.lives(|lives| {
                for life in lives {
                    record.warnings += life.warnings;
                    record.errors += life.errors;
                    for line in &life.lines {
                        match line.message.as_str() {
                            "republished jobs that were accepted but not in any queue" => {
                                record.swept += line.fields["jobs"].as_u64().unwrap_or(0)
                            }
                            "parking a job that crashes its workers" => record.parked_crashers += 1,
                            "job settled" if applied(&line.fields) => record.applied_lines += 1,
                            _ => {}
                        }
                    }
                    match &life.ended {
                        Some((_, Ending::CrashHook)) => record.crash_hook_aborts += 1,
                        Some((at, Ending::Exited(status))) => {
                            record.unexpected_exits.push(format!(
                                "{} generation {} exited on its own: {status} ({:?} after spawn)",
                                process.name,
                                life.generation,
                                *at - life.spawned_at
                            ))
                        }
                        _ => {}
                    }
                    if !worker || life.generation == 1 {
                        continue;
                    }
                    record.worker_restarts += 1;
                    if in_outage(life.spawned_at) {
                        // Restarted while the broker was down: it could not recover then.
                        record.restarted_in_outage += 1;
                        continue;
                    }
                    match life.first_applied_after(life.spawned_at) {
                        Some(at) => record.worker_recovery.push(at - life.spawned_at),
                        None => record.died_before_applying += 1,
                    }
                }
            });
        }
        record
    }
}

// ---- the test ----------------------------------------------------------------------------

fn max_ms(ds: &[Duration]) -> String {
    ds.iter()
        .max()
        .map_or("n/a".to_owned(), |d| format!("{} ms", d.as_millis()))
}

fn list_ms(ds: &[Duration]) -> String {
    let ms: Vec<String> = ds.iter().map(|d| d.as_millis().to_string()).collect();
    format!("[{}]", ms.join(", "))
}

/// Per order, the versions an observer saw (first occurrence of each seq, in arrival order).
type Versions = BTreeMap<Uuid, Vec<i64>>;

fn uuid_field(v: &Value, field: &str) -> Option<Uuid> {
    v[field].as_str().and_then(|s| s.parse().ok())
}

/// Orders whose observed versions differ from the history's; with up to 3 examples.
fn order_mismatches(history: &Versions, seen: &Versions) -> (usize, Vec<String>) {
    let mut bad = 0;
    let mut examples = Vec::new();
    for (order, expected) in history {
        let got = seen.get(order).cloned().unwrap_or_default();
        if &got != expected {
            bad += 1;
            if examples.len() < 3 {
                examples.push(format!("order {order}: history {expected:?}, seen {got:?}"));
            }
        }
    }
    for order in seen.keys().filter(|o| !history.contains_key(o)) {
        bad += 1;
        if examples.len() < 3 {
            examples.push(format!("order {order}: seen but has no history"));
        }
    }
    (bad, examples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_job_lost_or_applied_twice_under_crashes_and_restarts() {
    let run_for = Duration::from_secs(
        std::env::var("FAULT_SUITE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let test_started = Instant::now();
    let mut cluster = Cluster::create(SHARED_ENV).await;
    eprintln!(
        "faults: database {}, namespace {}, logs in {}",
        cluster.db_name,
        cluster.ns,
        cluster.log_dir.display()
    );

    // ---- the system, one process per role instance
    let bind = ["--bind", "127.0.0.1:0"];
    let ingress = cluster.start(
        "ingress",
        env!("CARGO_BIN_EXE_orderflow"),
        &["serve", bind[0], bind[1]],
        INGRESS_ENV,
    );
    let ingress_url = ingress.wait_listening(Duration::from_secs(60)).await;
    let crash_env: Vec<(&str, &str)> = WORKER_ENV
        .iter()
        .copied()
        .chain([(
            "ORDERFLOW_CRASH_AFTER_COMMIT_EVERY",
            CRASH_AFTER_COMMIT_EVERY,
        )])
        .collect();
    let roles = Roles {
        workers: vec![
            cluster.start(
                "worker-a",
                env!("CARGO_BIN_EXE_order-worker"),
                &[],
                WORKER_ENV,
            ),
            cluster.start(
                "worker-b-crash-hook",
                env!("CARGO_BIN_EXE_order-worker"),
                &[],
                &crash_env,
            ),
        ],
        relays: vec![
            cluster.start(
                "relay-1",
                env!("CARGO_BIN_EXE_outbox-relay"),
                &[],
                RELAY_ENV,
            ),
            cluster.start(
                "relay-2",
                env!("CARGO_BIN_EXE_outbox-relay"),
                &[],
                RELAY_ENV,
            ),
        ],
        bridge: cluster.start("bridge", env!("CARGO_BIN_EXE_sse-bridge"), &bind, &[]),
    };
    roles.bridge.wait_listening(Duration::from_secs(60)).await;
    for worker in &roles.workers {
        let consuming = poll_until(Duration::from_secs(60), || {
            worker.lives(|l| {
                l.last()?
                    .first_after("order worker consuming", l.last()?.spawned_at)
                    .map(|_| ())
            })
        })
        .await;
        must(consuming, &format!("{} consuming", worker.name));
    }
    let relays_up = poll_until(Duration::from_secs(60), || {
        let active = roles
            .relays
            .iter()
            .filter(|r| r.lives(|l| l.last().is_some_and(|l| l.relay_active())))
            .count();
        let standing = roles.relays.iter().filter(|r| {
            r.lives(|l| {
                l.last().is_some_and(|l| {
                    l.lines
                        .iter()
                        .any(|x| x.message == "another relay is active; standing by")
                })
            })
        });
        (active == 1 && standing.count() == 1).then_some(())
    })
    .await;
    must(relays_up, "one relay active and one standing by");

    // ---- observers: a durable downstream queue on order.# (it must outlive the broker
    // restart with its messages), and the resuming admin SSE client
    let queue = format!("{}faults.downstream", cluster.ns);
    {
        let conn = Connection::connect(&cluster.amqp_url, ConnectionProperties::default())
            .await
            .expect("AMQP");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declaring the downstream queue");
        cluster.own_queue(&queue);
        channel
            .queue_bind(
                queue.as_str().into(),
                cluster.events_exchange().as_str().into(),
                "order.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("binding the downstream queue (the workers declared the exchange)");
        let _ = conn.close(200, "OK".into()).await;
    }
    let observers_stop = CancellationToken::new();
    let down_log = Arc::new(Mutex::new(DownstreamLog::default()));
    let down_task = tokio::spawn(downstream(
        cluster.amqp_url.clone(),
        queue.clone(),
        down_log.clone(),
        observers_stop.clone(),
    ));
    let admin = cluster.token("admin", Uuid::new_v4());
    let sse_log = Arc::new(Mutex::new(SseLog::default()));
    let disconnect = Arc::new(Notify::new());
    let sse_task = tokio::spawn(sse_client(
        roles.bridge.url_watch(),
        admin.clone(),
        sse_log.clone(),
        disconnect.clone(),
        observers_stop.clone(),
    ));

    // ---- load and faults
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client"),
        ingress: ingress_url,
        admin,
        ledger: Ledger::default(),
        tracker: Tracker::default(),
        stop: CancellationToken::new(),
    });
    let tracker_stop = CancellationToken::new();
    let tracker_task = {
        let (ctx, pool, stop) = (ctx.clone(), cluster.db().clone(), tracker_stop.clone());
        tokio::spawn(async move { ctx.tracker.run(pool, stop).await })
    };
    let started = Instant::now();
    let until = started + run_for;
    let lanes: Vec<_> = (0..LANES)
        .map(|n| tokio::spawn(lane(ctx.clone(), n)))
        .collect();
    let tally = Mutex::new(Tally::default());
    let chaos = async {
        for (at, fault) in plan(run_for) {
            tokio::time::sleep_until((started + at).into()).await;
            eprintln!(
                "faults: t={:.1}s {fault:?}",
                started.elapsed().as_secs_f64()
            );
            inject(fault, &cluster, &roles, &ctx, &sse_log, &disconnect, &tally).await;
        }
    };
    tokio::join!(
        chaos,
        worker_killer(&roles, until, &tally),
        sse_dropper(&sse_log, &disconnect, until, &tally),
        async {
            tokio::time::sleep_until(until.into()).await;
        }
    );
    ctx.stop.cancel();
    let load_secs = started.elapsed().as_secs_f64();
    let setup_secs = (started - test_started).as_secs_f64();
    for lane in lanes {
        lane.await.expect("a lane panicked");
    }

    // ---- drain: every accepted job terminal, every row published, every event observed
    let accepted: Vec<Uuid> = ctx
        .ledger
        .accepted
        .lock()
        .unwrap()
        .keys()
        .copied()
        .collect();
    let drain_started = Instant::now();
    let pool = cluster.db().clone();
    let mut drained = None;
    while drain_started.elapsed() < DRAIN_DEADLINE {
        let state: Result<(i64, i64, Option<i64>), _> = sqlx::query_as(
            "select (select count(*) from jobs where id = any($1) and status = any($2)),
                    (select count(*) from outbox where seq is null or seq > (select published_seq from outbox_cursor)),
                    (select max(seq) from outbox)",
        )
        .bind(&accepted)
        .bind(&TERMINAL_JOB_STATUSES[..])
        .fetch_one(&pool)
        .await;
        if let Ok((terminal, unpublished, max_seq)) = state {
            let max_seq = max_seq.unwrap_or(0) as u64;
            let seen_downstream = {
                let log = down_log.lock().unwrap();
                log.got
                    .iter()
                    .filter_map(|g| g.message_id.as_deref())
                    .collect::<HashSet<_>>()
                    .len() as u64
            };
            let sse_last = sse_log.lock().unwrap().last_seq();
            if terminal as usize == accepted.len()
                && unpublished == 0
                && seen_downstream >= max_seq
                && sse_last >= max_seq
            {
                drained = Some(drain_started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    observers_stop.cancel();
    tracker_stop.cancel();
    let _ = tokio::join!(down_task, sse_task, tracker_task);
    let mut all: Vec<Supervised> = roles.workers.into_iter().chain(roles.relays).collect();
    all.push(roles.bridge);
    all.push(ingress);
    for process in &mut all {
        process.stop().await;
    }

    let checks_started = Instant::now();

    // ---- the evidence
    let db = Database::read(&pool, &accepted).await;
    let clients = Clients::judge(&ctx.ledger, &db.outcome);
    let down = DownstreamSeen::of(&down_log.lock().unwrap());
    let stream = StreamSeen::of(&sse_log.lock().unwrap());
    let tally = tally.into_inner().unwrap();
    let procs = ProcessRecord::of(&all, &tally);
    let (outbox_order_bad, outbox_order_examples) = order_mismatches(&db.history, &db.outbox_order);
    let (down_bad, down_examples) = order_mismatches(&db.history, &down.versions);
    let (sse_bad, sse_examples) = order_mismatches(&db.history, &stream.versions);
    let succeeded = db.count_of("succeeded");
    let outbox = &db.outbox;

    // ---- figures (printed before any assertion, so a failing run still reports them)
    let ledger = &ctx.ledger;
    eprintln!(
        "faults: phases: setup {setup_secs:.1}s, load {load_secs:.1}s, drain+stop {:.1}s, checks {:.1}s",
        (checks_started - started).as_secs_f64() - load_secs,
        checks_started.elapsed().as_secs_f64()
    );
    eprintln!(
        "faults: load {load_secs:.0}s, {LANES} lanes, {} orders walked ({} orders in the database), drained in {drained:?} (deadline {DRAIN_DEADLINE:?})",
        ledger.orders.lock().unwrap().len(),
        db.orders
    );
    eprintln!(
        "faults: accepted jobs {} ({} answered 202, {} repeats answered 200); found {}, missing {}, non-terminal {}",
        accepted.len(),
        ledger.accepted_202.load(Relaxed),
        ledger.repeats_200.load(Relaxed),
        db.found,
        db.missing.len(),
        db.found - db.terminal
    );
    eprintln!(
        "faults: terminal by status: succeeded {succeeded}, rejected {}, dead {}, cancelled {}",
        db.count_of("rejected"),
        db.count_of("dead"),
        db.count_of("cancelled")
    );
    eprintln!(
        "faults: ingress answers retried: 503 {}, other 5xx {}, 429 {}, transport errors {}, order creations retried {}",
        ledger.unavailable_503.load(Relaxed),
        ledger.server_errors.load(Relaxed),
        ledger.limited_429.load(Relaxed),
        ledger.transport_errors.load(Relaxed),
        ledger.orders_retried.load(Relaxed)
    );
    eprintln!(
        "faults: jobs in the database that no client saw accepted: {}",
        db.unanswered.len()
    );
    eprintln!(
        "faults: succeeded {succeeded} = history rows with job_id {} = status-change outbox rows {}; job ids with 2+ history rows {}; succeeded without history {}; not succeeded with history {}; succeeded jobs without exactly one outbox row {}",
        db.effects.history_job_rows,
        outbox.status_changes,
        db.effects.twice_applied,
        db.effects.succeeded_without_row,
        db.effects.unsucceeded_with_row,
        outbox.changes_not_one_per_job
    );
    eprintln!(
        "faults: orders whose version differs from their history row count: {}",
        db.version_mismatch
    );
    eprintln!(
        "faults: outbox rows {} ({} order.created, {} order.status_changed), sequenced {}, published {}, distinct seqs {}, seq range {:?}..{:?}; orders whose seq order differs from history {outbox_order_bad}",
        outbox.rows,
        outbox.created,
        outbox.status_changes,
        outbox.sequenced,
        outbox.published,
        outbox.distinct_seqs,
        outbox.min_seq,
        outbox.max_seq
    );
    eprintln!(
        "faults: expectations: valid steps not succeeded {}, must-reject jobs that succeeded {}, races {} with both succeeded {}",
        clients.valid_not_succeeded.len(),
        clients.invalid_succeeded.len(),
        clients.races,
        clients.races_both.len()
    );
    eprintln!(
        "faults: downstream deliveries {}, distinct message ids {}, duplicates {} (redelivered to our own consumer {}), id/header mismatches {}, consumer sessions {}, orders out of history order {down_bad}",
        down.deliveries,
        down.distinct(),
        down.duplicates,
        down.redelivered,
        down.mismatches,
        down.sessions
    );
    eprintln!(
        "faults: sse events {}, distinct seqs {}, connections {} (failed connects {}), resets {}, seq breaks within a connection {}, duplicates {}, orders out of history order {sse_bad}",
        stream.events,
        stream.distinct,
        stream.connections,
        stream.failed_connects,
        stream.resets,
        stream.breaks,
        stream.duplicates
    );
    eprintln!("faults: sse connection ends: {:?}", stream.ends);
    eprintln!(
        "faults: kills/restarts: worker kill -9 {}, worker crash-after-commit aborts {}, worker restarts {}, relay kill -9 {}, bridge kill -9 {}, broker restarts {}, pg terminations {} ({} backends), sse client drops {}",
        tally.worker_kills,
        procs.crash_hook_aborts,
        procs.worker_restarts,
        tally.relay_kills,
        tally.bridge_kills,
        tally.broker_restarts,
        tally.backend_terminations,
        tally.backends_terminated,
        tally.sse_client_drops
    );
    eprintln!(
        "faults: recovery max: worker restart->first job applied {} (of {} restarts measured; {} died before applying one, {} restarted during the broker outage); relay kill->standby published {}; broker start_app->first 202 {} (->first job applied {}, stop_app..start_app done {}); bridge restart->first event {} (kill->first event {}); sse client drop->first event {} ({} drops during the broker outage not counted); pg terminate->next job applied {}",
        max_ms(&procs.worker_recovery),
        procs.worker_recovery.len(),
        procs.died_before_applying,
        procs.restarted_in_outage,
        max_ms(&tally.relay_takeover),
        max_ms(&tally.broker_to_202),
        max_ms(&tally.broker_to_applied),
        list_ms(&tally.broker_outage),
        max_ms(&tally.bridge_to_event),
        max_ms(&tally.bridge_kill_to_event),
        max_ms(&procs.sse_resumes),
        procs.sse_resumes_in_outage,
        max_ms(&tally.backends_to_applied)
    );
    eprintln!(
        "faults: jobs republished by the sweeper {}, jobs parked for crashing workers {}, job settled lines {}, process log warnings {}, errors {}",
        procs.swept, procs.parked_crashers, procs.applied_lines, procs.warnings, procs.errors
    );
    for line in procs
        .unexpected_exits
        .iter()
        .chain(&stream.examples)
        .chain(&down_examples)
        .chain(&sse_examples)
        .chain(&outbox_order_examples)
    {
        eprintln!("faults: detail: {line}");
    }
    for (id, status, attempts, error) in &db.non_terminal {
        eprintln!(
            "faults: detail: non-terminal job {id}: {status}, attempts {attempts}, error {error:?}"
        );
    }
    for (id, error) in &db.dead {
        eprintln!("faults: detail: dead job {id}: {error:?}");
    }
    for (id, status) in clients.valid_not_succeeded.iter().take(5) {
        eprintln!("faults: detail: valid step {id} ended {status}");
    }

    // ---- the guarantees
    // 1. A 202 means the job reaches exactly one terminal state.
    assert!(
        drained.is_some(),
        "not drained within {DRAIN_DEADLINE:?} after the load stopped (figures above)"
    );
    assert!(
        db.missing.is_empty(),
        "accepted jobs missing from the database: {:?}",
        db.missing
    );
    assert_eq!(
        (db.found, db.terminal),
        (accepted.len() as i64, accepted.len() as i64),
        "every accepted job is in exactly one terminal state; not yet: {:?}",
        db.non_terminal
    );
    // 2. A job's effect is applied at most once.
    assert_eq!(
        db.effects.twice_applied, 0,
        "a job id has more than one history row"
    );
    assert_eq!(
        db.version_mismatch, 0,
        "every order's version counts its history rows (no change applied twice)"
    );
    assert!(
        clients.races_both.is_empty(),
        "both of two racing submissions of one step took effect: {:?}",
        clients.races_both
    );
    assert!(
        clients.invalid_succeeded.is_empty(),
        "requests the state machine must reject succeeded: {:?}",
        clients.invalid_succeeded
    );
    // 3. Every committed change has exactly one history row and one outbox row.
    assert_eq!(
        (succeeded, succeeded),
        (db.effects.history_job_rows, outbox.status_changes),
        "succeeded jobs = history rows with a job id = status-change outbox rows"
    );
    assert_eq!(
        (
            db.effects.succeeded_without_row,
            db.effects.unsucceeded_with_row,
            outbox.changes_not_one_per_job
        ),
        (0, 0, 0),
        "a job's effect is recorded iff it succeeded, once"
    );
    // 4. Every outbox row is published, gap-free seqs, per order in commit order.
    assert_eq!(
        outbox.published, outbox.rows,
        "every outbox row is published"
    );
    assert_eq!(
        (
            outbox.sequenced,
            outbox.distinct_seqs,
            outbox.min_seq,
            outbox.max_seq
        ),
        (outbox.rows, outbox.rows, Some(1), Some(outbox.rows)),
        "every outbox row has its own seq, gap-free 1..N"
    );
    assert_eq!(
        outbox_order_bad, 0,
        "per order, seq order is history order: {outbox_order_examples:?}"
    );
    assert_eq!(
        down.mismatches, 0,
        "downstream message_id = body seq and order_id header = body order_id"
    );
    assert_eq!(
        down.distinct() as i64,
        outbox.rows,
        "downstream saw every event"
    );
    assert_eq!(
        down_bad, 0,
        "per order, downstream events follow the history: {down_examples:?}"
    );
    // 5. A client resuming with Last-Event-ID sees every event, in order, once.
    assert!(
        stream.breaks == 0 && stream.resets == 0,
        "a resumed SSE connection skipped or repeated events ({} breaks): {:?}",
        stream.breaks,
        stream.examples
    );
    assert_eq!(
        stream.distinct as i64, outbox.rows,
        "the SSE client saw every event"
    );
    assert_eq!(
        sse_bad, 0,
        "per order, SSE events follow the history: {sse_examples:?}"
    );
    // Recovery: every role survives the faults; a standby relay takes over within 5 s.
    assert!(
        procs.unexpected_exits.is_empty(),
        "processes died on their own: {:?}",
        procs.unexpected_exits
    );
    assert!(
        tally
            .relay_takeover
            .iter()
            .all(|d| *d <= Duration::from_secs(5)),
        "a standby relay takes over within 5 s: {}",
        list_ms(&tally.relay_takeover)
    );

    if std::env::var_os("FAULT_SUITE_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&cluster.log_dir);
    }
    cluster.cleanup().await;
}
