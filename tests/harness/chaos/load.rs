//! The clients of the fault suite: lanes that walk orders through the state machine, one
//! step at a time, with some requests that must be rejected and some that race each other,
//! retrying through every fault. The ledger records what the clients were told, and when.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RECOVERY_DEADLINE;
use crate::harness::{TERMINAL_JOB_STATUSES, uuid_of};

/// Orders walked at the same time.
pub const LANES: usize = 40;
/// Each lane submits at most one step per PACE (load shaping).
const PACE: Duration = Duration::from_millis(200);
/// How long a client waits before it retries a refused or failed request.
const RETRY_AFTER: Duration = Duration::from_millis(100);

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
pub enum Expect {
    /// A valid step of the walk.
    Success,
    /// A request the state machine must reject.
    Rejection,
    /// One of two racing submissions of the same step: at most one may succeed.
    Race,
}

/// What the clients were told, and when.
#[derive(Default)]
pub struct Ledger {
    pub accepted: Mutex<HashMap<Uuid, Expect>>,
    pub races: Mutex<Vec<(Uuid, Uuid)>>,
    pub orders: Mutex<Vec<Uuid>>,
    pub accepted_202: AtomicU64,
    pub repeats_200: AtomicU64,
    pub unavailable_503: AtomicU64,
    pub server_errors: AtomicU64,
    pub limited_429: AtomicU64,
    pub transport_errors: AtomicU64,
    pub orders_retried: AtomicU64,
    at_202: Mutex<Vec<Instant>>,
    at_503: Mutex<Vec<Instant>>,
}

impl Ledger {
    /// The first 202 the ingress answered after `after`.
    pub fn first_202_after(&self, after: Instant) -> Option<Instant> {
        first_after(&self.at_202, after)
    }

    /// The first 503 the ingress answered after `after`.
    pub fn first_503_after(&self, after: Instant) -> Option<Instant> {
        first_after(&self.at_503, after)
    }

    /// The ids of every job a client saw accepted.
    pub fn accepted_jobs(&self) -> Vec<Uuid> {
        self.accepted.lock().unwrap().keys().copied().collect()
    }
}

fn first_after(times: &Mutex<Vec<Instant>>, after: Instant) -> Option<Instant> {
    times.lock().unwrap().iter().copied().find(|t| *t > after)
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

/// What every lane shares.
struct Clients {
    http: reqwest::Client,
    ingress: String,
    admin: String,
    ledger: Arc<Ledger>,
    tracker: Tracker,
    /// The end of the load: lanes start nothing new.
    stop: CancellationToken,
}

/// The running load: LANES lanes and the tracker that wakes them.
pub struct Load {
    clients: Arc<Clients>,
    lanes: Vec<JoinHandle<()>>,
    tracker_stop: CancellationToken,
    tracker: JoinHandle<()>,
}

impl Load {
    /// Starts the lanes against the ingress at `ingress`, as `admin`.
    pub fn start(ingress: String, admin: String, pool: PgPool) -> Self {
        let clients = Arc::new(Clients {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            ingress,
            admin,
            ledger: Arc::default(),
            tracker: Tracker::default(),
            stop: CancellationToken::new(),
        });
        let tracker_stop = CancellationToken::new();
        let tracker = {
            let (clients, stop) = (clients.clone(), tracker_stop.clone());
            tokio::spawn(async move { clients.tracker.run(pool, stop).await })
        };
        let lanes = (0..LANES)
            .map(|n| tokio::spawn(lane(clients.clone(), n)))
            .collect();
        Self {
            clients,
            lanes,
            tracker_stop,
            tracker,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.clients.ledger
    }

    /// Lanes start nothing new and end; returns the ledger once every lane ended.
    pub async fn stop(self) -> Arc<Ledger> {
        self.clients.stop.cancel();
        for lane in self.lanes {
            lane.await.expect("a lane panicked");
        }
        self.tracker_stop.cancel();
        let _ = self.tracker.await;
        self.clients.ledger.clone()
    }
}

impl Clients {
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
                    let id = uuid_of(&order, "id");
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
            tokio::time::sleep(RETRY_AFTER).await;
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
                    tokio::time::sleep(RETRY_AFTER).await;
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
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }

    /// One step of an order's walk, sometimes preceded by a request that must be rejected,
    /// sometimes submitted twice at once. Whether the step took effect; None once the load
    /// ended.
    async fn step(&self, rng: &mut fastrand::Rng, order: Uuid, step: &str) -> Option<bool> {
        if rng.u8(..10) == 0 {
            let key = format!("{order}-{step}-invalid");
            let job = self
                .submit(order, &invalid_body(step), &key, Expect::Rejection)
                .await;
            self.terminal(job).await?;
        }
        let body = step_body(step, order);
        if rng.u8(..10) == 0 {
            // Two submissions of the same step race: the state machine lets one through.
            let (key_a, key_b) = (format!("{order}-{step}-a"), format!("{order}-{step}-b"));
            let (a, b) = tokio::join!(
                self.submit(order, &body, &key_a, Expect::Race),
                self.submit(order, &body, &key_b, Expect::Race)
            );
            self.ledger.races.lock().unwrap().push((a, b));
            let (Some(sa), Some(sb)) = tokio::join!(self.terminal(a), self.terminal(b)) else {
                return None;
            };
            Some(sa == "succeeded" || sb == "succeeded")
        } else {
            let key = format!("{order}-{step}");
            let job = self.submit(order, &body, &key, Expect::Success).await;
            Some(self.terminal(job).await? == "succeeded")
        }
    }
}

/// One client walking orders through the state machine, one step at a time.
async fn lane(clients: Arc<Clients>, n: usize) {
    let mut rng = fastrand::Rng::with_seed(0x0f1a_u64 + n as u64);
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'orders: loop {
        let Some(order) = clients.create_order().await else {
            return;
        };
        for step in STEPS {
            pace.tick().await;
            if clients.stop.is_cancelled() {
                return;
            }
            match clients.step(&mut rng, order, step).await {
                None => return,
                Some(true) => {}
                // The walk cannot go on (e.g. a job parked as dead): start a new order.
                Some(false) => continue 'orders,
            }
        }
    }
}
