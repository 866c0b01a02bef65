//! Admission control: the ingress takes on only the work it can finish promptly and refuses
//! the rest at once — `503 overloaded` with `Retry-After`, nothing recorded — so that past
//! its capacity accepted requests stay fast, nobody waits for a pool timeout, and the
//! system is back to normal moments after a burst instead of working off a long queue.
//!
//! Two gates:
//! - **in flight** ([`middleware`], every API request): at most `INGRESS_MAX_IN_FLIGHT`
//!   requests are worked on at once; one more waits for a slot at most
//!   `INGRESS_QUEUE_MS`, then is refused — or is refused without waiting while the gate
//!   has refused within the last second (the ingress is overloaded: waiting would end the
//!   same way, only later, and would hold a timer and a connection meanwhile). While it
//!   refuses many (sixteen per slot within a second), it also works on a quarter as many
//!   requests at once ([`Admission::shrink`]):
//!   accepted work then leaves the cores to answering the refused requests quickly,
//!   instead of taking all of them while refusals wait their turn. A
//!   `Prefer: wait` request gives its slot back once its job is queued ([`Slot::release`]):
//!   waiting for a worker costs no capacity.
//! - **backlog** ([`QueueRoom`], requests that queue jobs): refused while the job queue
//!   holds more than `INGRESS_MAX_BACKLOG` jobs ready, sampled every 100 ms (messages
//!   ready × jobs per message, see [`JobPublisher::ready_jobs`]). Beyond
//!   that, accepting more would only make every job later.
//!
//! `/readyz` reports `overloaded` while either gate refuses (see [`Admission::overload`]).

use super::IngressState;
use crate::broker::publisher::JobPublisher;
use crate::http::ApiError;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How often the job queue's depth is sampled for the backlog gate.
const BACKLOG_SAMPLE: Duration = Duration::from_millis(100);

/// How long after a refusal for want of a slot the ingress still reports itself overloaded
/// (and refuses, without waiting, a request that finds no slot free).
const OVERLOAD_MEMORY: Duration = Duration::from_secs(1);

/// Refusals within one [`OVERLOAD_MEMORY`], per slot, past which the ingress holds back
/// three quarters of its slots ([`Admission::shrink`]): a sustained overload (thousands a
/// second), not a passing burst at the edge of capacity (a few hundred there on the
/// development box).
const SHRINK_AFTER_REFUSALS_PER_SLOT: usize = 16;

/// The longest the slots stay held back at a time. Past it they are all given back, and
/// held back again only if refusals pile up again with every slot working: a passing
/// burst at the edge of capacity costs at most this long at a quarter of it.
const MAX_HELD_BACK: Duration = Duration::from_secs(3);

/// The two gates' settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Requests worked on at once (0: no limit).
    pub max_in_flight: usize,
    /// How long a request may wait for a slot before it is refused.
    pub queue_wait: Duration,
    /// Ready job messages above which requests that queue jobs are refused (0: no limit).
    pub max_backlog: u32,
}

#[derive(Clone)]
pub struct Admission(Arc<Inner>);

struct Inner {
    settings: Settings,
    slots: Arc<Semaphore>,
    /// Ready job messages at the last sample (`u32::MAX`: not known yet or not reachable).
    backlog: AtomicU32,
    /// When a request was last refused for want of a slot, in ms since `epoch` (-1: never).
    last_refused_ms: AtomicI64,
    epoch: Instant,
    /// Slots are held back while refusing many (see [`Admission::shrink`]).
    shrunk: AtomicBool,
    /// Refusals for want of a slot since `window_ms` (ms since `epoch`), a one-second
    /// window: many of them, not one, make the ingress shrink.
    refusals_in_window: AtomicU32,
    window_ms: AtomicI64,
}

/// Why a request was refused: the gate's name (a metric label) and the reason in words.
struct Refusal {
    gate: &'static str,
    why: String,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ::metrics::counter!(crate::metrics::OVERLOAD_REFUSED, "gate" => r.gate).increment(1);
        ApiError::Overloaded(r.why)
    }
}

impl Admission {
    pub fn new(settings: Settings) -> Self {
        let slots = match settings.max_in_flight {
            0 => Semaphore::MAX_PERMITS,
            n => n,
        };
        ::metrics::gauge!(crate::metrics::INGRESS_SLOTS_HELD_BACK).set(0.0);
        Admission(Arc::new(Inner {
            settings,
            slots: Arc::new(Semaphore::new(slots)),
            backlog: AtomicU32::new(u32::MAX),
            last_refused_ms: AtomicI64::new(-1),
            epoch: Instant::now(),
            shrunk: AtomicBool::new(false),
            refusals_in_window: AtomicU32::new(0),
            window_ms: AtomicI64::new(0),
        }))
    }

    /// A slot for one request, waiting for it at most the queue deadline — not at all
    /// while the gate is refusing.
    async fn enter(&self) -> Result<Slot, Refusal> {
        let inner = &self.0;
        let permit = match inner.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if self.refused_lately() => return Err(self.refuse()),
            Err(_) => tokio::time::timeout(
                inner.settings.queue_wait,
                inner.slots.clone().acquire_owned(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| self.refuse())?,
        };
        Ok(Slot(Arc::new(Mutex::new(Some(Held::new(permit))))))
    }

    /// Refuse a request for want of a slot, and remember when.
    fn refuse(&self) -> Refusal {
        let inner = &self.0;
        let now = inner.epoch.elapsed().as_millis() as i64;
        inner.last_refused_ms.store(now, Ordering::Relaxed);
        // Races between refusals only blur the count a little.
        if now - inner.window_ms.load(Ordering::Relaxed) >= OVERLOAD_MEMORY.as_millis() as i64 {
            inner.window_ms.store(now, Ordering::Relaxed);
            inner.refusals_in_window.store(0, Ordering::Relaxed);
        }
        let refusals = inner.refusals_in_window.fetch_add(1, Ordering::Relaxed) + 1;
        if refusals as usize > SHRINK_AFTER_REFUSALS_PER_SLOT * inner.settings.max_in_flight {
            self.shrink();
        }
        Refusal {
            gate: "in_flight",
            why: format!(
                "{} requests in flight and no slot free within {:?}",
                inner.settings.max_in_flight, inner.settings.queue_wait
            ),
        }
    }

    /// Hold back three quarters of the slots until the ingress has refused nobody for
    /// [`OVERLOAD_MEMORY`], at most [`MAX_HELD_BACK`] (called once refusals within a second
    /// pass [`SHRINK_AFTER_REFUSALS_PER_SLOT`] per slot). Past its capacity the ingress still
    /// has to answer every request it refuses, on the cores the accepted work uses. On the
    /// 2-core development box, offered 18,000 requests/s against a capacity of 4,500
    /// (`orderflow-bench changes --overload`, the load generator on the same cores), it
    /// answered refusals in p99 over a second with every slot kept (and clients' waiting
    /// connections piled up to the open-files limit), 83 ms with half of them held back,
    /// 32 ms with three quarters — accepting 2,100 changes/s meanwhile, in p99 42 ms. The
    /// slots held back are taken as requests in flight finish, so none is cut short.
    fn shrink(&self) {
        let inner = &self.0;
        let held_back = inner.settings.max_in_flight * 3 / 4;
        if held_back == 0 || inner.shrunk.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let slots = this.0.slots.clone();
            let Ok(ballast) = slots.acquire_many_owned(held_back as u32).await else {
                return;
            };
            ::metrics::gauge!(crate::metrics::INGRESS_SLOTS_HELD_BACK).set(held_back as f64);
            // At least OVERLOAD_MEMORY once taken, and until none was refused for as long
            // — at most MAX_HELD_BACK.
            let taken = Instant::now();
            while taken.elapsed() < OVERLOAD_MEMORY
                || (this.refused_lately() && taken.elapsed() < MAX_HELD_BACK)
            {
                tokio::time::sleep(OVERLOAD_MEMORY / 10).await;
            }
            drop(ballast);
            ::metrics::gauge!(crate::metrics::INGRESS_SLOTS_HELD_BACK).set(0.0);
            this.0.shrunk.store(false, Ordering::Release);
        });
    }

    /// Whether a request was refused for want of a slot within [`OVERLOAD_MEMORY`].
    fn refused_lately(&self) -> bool {
        let last = self.0.last_refused_ms.load(Ordering::Relaxed);
        let now = self.0.epoch.elapsed().as_millis() as i64;
        last >= 0 && now - last < OVERLOAD_MEMORY.as_millis() as i64
    }

    /// The reason new jobs are refused right now, if they are.
    fn backlog_full(&self) -> Option<Refusal> {
        let max = self.0.settings.max_backlog;
        let ready = self.0.backlog.load(Ordering::Relaxed);
        (max > 0 && ready != u32::MAX && ready > max).then(|| Refusal {
            gate: "backlog",
            why: format!("{ready} jobs waiting in the queue (more than {max})"),
        })
    }

    /// Why the ingress is refusing work right now (for `/readyz`), or None.
    pub fn overload(&self) -> Option<String> {
        if let Some(r) = self.backlog_full() {
            return Some(r.why);
        }
        self.refused_lately().then(|| {
            format!(
                "requests refused in the last second: all {} slots busy",
                self.0.settings.max_in_flight
            )
        })
    }

    /// Sample the job queue's depth until `shutdown` (only when the backlog gate is on).
    pub async fn watch_backlog(self, publisher: Arc<JobPublisher>, shutdown: CancellationToken) {
        if self.0.settings.max_backlog == 0 {
            return;
        }
        let mut every = tokio::time::interval(BACKLOG_SAMPLE);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            // Unknown (broker unreachable) opens the gate: publishing then fails on its own.
            let ready = publisher.ready_jobs().await.unwrap_or(u32::MAX);
            self.0.backlog.store(ready, Ordering::Relaxed);
        }
    }
}

/// A request's slot; given back when the last clone is dropped or on [`Slot::release`].
/// Requests outside admission control get an empty one.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Held>>>);

/// A taken slot, counted in the in-flight gauge while held.
struct Held(#[allow(dead_code, reason = "held for its Drop")] OwnedSemaphorePermit);

impl Held {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        ::metrics::gauge!(crate::metrics::INGRESS_IN_FLIGHT).increment(1.0);
        Held(permit)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        ::metrics::gauge!(crate::metrics::INGRESS_IN_FLIGHT).decrement(1.0);
    }
}

impl Slot {
    /// Give the slot back before the request ends (it is about to wait, not work).
    pub fn release(&self) {
        self.0.lock().expect("slot lock").take();
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Slot {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Slot>().cloned().unwrap_or_default())
    }
}

/// Extractor for handlers that queue jobs: refuses the request (503 `overloaded`) while
/// the job queue's backlog is over `INGRESS_MAX_BACKLOG`.
pub struct QueueRoom;

impl FromRequestParts<IngressState> for QueueRoom {
    type Rejection = ApiError;

    async fn from_request_parts(
        _: &mut Parts,
        state: &IngressState,
    ) -> Result<Self, Self::Rejection> {
        match state.admission.backlog_full() {
            Some(refusal) => Err(refusal.into()),
            None => Ok(QueueRoom),
        }
    }
}

/// axum middleware: hold a slot while the request is worked on, or refuse it.
pub async fn middleware(
    State(state): State<IngressState>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.admission.enter().await {
        Ok(slot) => {
            request.extensions_mut().insert(slot);
            next.run(request).await
        }
        Err(refusal) => ApiError::from(refusal).into_response(),
    }
}
