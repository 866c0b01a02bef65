//! The fault suite's driver: the [`roles`] of the system as separate processes, the
//! [`load`] of clients walking orders, the [`observers`] that must see every event, the
//! [`faults`] injected on a plan, and the [`evidence`] read afterwards. The suite itself
//! (tests/faults.rs) is a list of steps over these.

pub mod evidence;
pub mod faults;
pub mod load;
pub mod observers;
pub mod roles;

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{TERMINAL_JOB_STATUSES, wait};
use observers::Observers;

/// How long a fault may take to show its recovery before the suite calls it a failure.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
/// After the load stops: how long everything may take to become terminal and published.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(90);

/// How long the load runs: `FAULT_SUITE_SECS`, 60 s by default (faults repeat each minute).
pub fn run_length() -> Duration {
    Duration::from_secs(
        std::env::var("FAULT_SUITE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    )
}

fn must<T>(found: Option<T>, what: &str) -> T {
    found.unwrap_or_else(|| panic!("no recovery within {RECOVERY_DEADLINE:?}: {what}"))
}

/// Waits until every accepted job is terminal, every outbox row published, and both
/// observers saw every seq. How long that took; None if not within DRAIN_DEADLINE.
pub async fn drain(pool: &PgPool, accepted: &[Uuid], observers: &Observers) -> Option<Duration> {
    let started = Instant::now();
    wait::poll(DRAIN_DEADLINE, || async {
        let (terminal, unpublished, max_seq): (i64, i64, Option<i64>) = sqlx::query_as(
            "select (select count(*) from jobs where id = any($1) and status = any($2)),
                    (select count(*) from outbox where seq > (select published_seq from outbox_cursor)),
                    (select max(seq) from outbox)",
        )
        .bind(accepted)
        .bind(&TERMINAL_JOB_STATUSES[..])
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
        let max_seq = max_seq.unwrap_or(0) as u64;
        let downstream = observers.distinct_downstream();
        let sse_last = observers.sse.lock().unwrap().last_seq();
        if terminal as usize == accepted.len()
            && unpublished == 0
            && downstream >= max_seq
            && sse_last >= max_seq
        {
            Ok(started.elapsed())
        } else {
            Err(String::new())
        }
    })
    .await
    .ok()
}
