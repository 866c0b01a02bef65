//! Ingress rate limits (governor): per authenticated actor, else per client IP. A caller
//! over its limit gets 429 with `Retry-After`, and nothing of its request is done.

use super::IngressState;
use crate::http::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone)]
pub struct Limits(Arc<Inner>);

struct Inner {
    per_actor: Option<DefaultKeyedRateLimiter<Uuid>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Made once: making a clock calibrates it (CPU feature probes), too dear per request.
    clock: DefaultClock,
}

/// A keyed limiter allowing `per_sec` on average and bursts of twice that; None when 0.
fn keyed<K: std::hash::Hash + Eq + Clone>(per_sec: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(per_sec.saturating_mul(2)).expect("non-zero");
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl Limits {
    pub fn new(per_actor: u32, per_ip: u32) -> Self {
        Limits(Arc::new(Inner {
            per_actor: keyed(per_actor),
            per_ip: keyed(per_ip),
            clock: DefaultClock::default(),
        }))
    }

    /// Whether any limit is set (else the middleware does nothing, not even verify a token).
    fn enabled(&self) -> bool {
        self.0.per_actor.is_some() || self.0.per_ip.is_some()
    }

    /// Ok, or how long to wait and which limiter (`actor`, `ip`) said so.
    fn check(
        &self,
        actor: Option<Uuid>,
        ip: Option<IpAddr>,
    ) -> Result<(), (Duration, &'static str)> {
        let (outcome, limiter) = match (actor, ip) {
            (Some(actor), _) => (
                self.0.per_actor.as_ref().map(|l| l.check_key(&actor)),
                "actor",
            ),
            (None, Some(ip)) => (self.0.per_ip.as_ref().map(|l| l.check_key(&ip)), "ip"),
            (None, None) => (None, "none"),
        };
        match outcome {
            Some(Err(not_until)) => Err((not_until.wait_time_from(self.0.clock.now()), limiter)),
            _ => Ok(()),
        }
    }

    /// Forget idle keys once a minute until `shutdown`, so memory follows active callers only.
    pub async fn forget_idle_keys(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Some(l) = &self.0.per_actor {
                l.retain_recent();
            }
            if let Some(l) = &self.0.per_ip {
                l.retain_recent();
            }
        }
    }
}

/// axum middleware: rate limit by the bearer token's actor when it verifies, else by IP.
pub async fn middleware(
    State(state): State<IngressState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.limits.enabled() {
        return next.run(request).await;
    }
    let token = crate::auth::bearer(request.headers());
    let actor = token.and_then(|t| state.keys.verify(&t).ok()).map(|a| a.id);
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match state.limits.check(actor, ip) {
        Ok(()) => next.run(request).await,
        Err((wait, limiter)) => {
            ::metrics::counter!(crate::metrics::RATE_LIMITED, "limiter" => limiter).increment(1);
            ApiError::RateLimited(wait).into_response()
        }
    }
}
