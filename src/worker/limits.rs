//! Worker rate limits (governor): a global ceiling on applied changes per second and a
//! per-customer one, so one customer's burst cannot monopolise the workers.

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use uuid::Uuid;

pub struct Limits {
    global: Option<DefaultDirectRateLimiter>,
    per_customer: Option<DefaultKeyedRateLimiter<Uuid>>,
    bulk: Option<DefaultDirectRateLimiter>,
}

impl Limits {
    /// `0` disables a limit. The global burst covers a whole batch.
    pub fn new(
        global_per_sec: u32,
        per_customer_per_sec: u32,
        batch: usize,
        bulk_per_sec: u32,
        chunk: usize,
    ) -> Self {
        let direct = |per_sec: u32, at_once: usize| {
            NonZeroU32::new(per_sec).map(|rate| {
                let burst = NonZeroU32::new(per_sec.max(at_once as u32)).expect("non-zero");
                RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
            })
        };
        let per_customer = NonZeroU32::new(per_customer_per_sec)
            .map(|rate| RateLimiter::keyed(Quota::per_second(rate)));
        Limits {
            global: direct(global_per_sec, batch),
            per_customer,
            bulk: direct(bulk_per_sec, chunk),
        }
    }

    /// Wait until a bulk chunk of `n` orders may be applied.
    pub async fn admit_bulk(&self, n: usize) {
        if let (Some(limiter), Some(n)) = (&self.bulk, NonZeroU32::new(n as u32)) {
            // Cannot fail: the burst is at least a chunk.
            let _ = limiter.until_n_ready(n).await;
        }
    }

    /// Wait until `customers` (one entry per job; None when unknown) may be applied.
    pub async fn admit(&self, customers: &[Option<Uuid>]) {
        if let Some(limiter) = &self.per_customer {
            for customer in customers.iter().flatten() {
                limiter.until_key_ready(customer).await;
            }
            limiter.retain_recent();
        }
        if let (Some(limiter), Some(n)) = (&self.global, NonZeroU32::new(customers.len() as u32)) {
            // Cannot fail: the burst is at least a batch.
            let _ = limiter.until_n_ready(n).await;
        }
    }
}
