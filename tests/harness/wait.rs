//! Waiting for a condition, with a deadline: the only way the tests wait. Nothing sleeps to
//! "let things settle".

use std::{future::Future, time::Duration};

use tokio::time::Instant;

/// How long a job may take to reach a terminal state.
pub const JOB_DEADLINE: Duration = Duration::from_secs(20);
/// How long an event may take from commit to a consumer (AMQP queue or SSE stream).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Runs `probe` until it answers `Ok`, or `within` passes: then the last `Err` (what the
/// probe saw instead). The probe runs at least once.
pub async fn poll<T, F>(within: Duration, mut probe: impl FnMut() -> F) -> Result<T, String>
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe().await {
            Ok(found) => return Ok(found),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`poll`], panicking with `what` and the probe's last word when the deadline passes.
pub async fn expect_within<T, F>(within: Duration, what: &str, probe: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, String>>,
{
    poll(within, probe)
        .await
        .unwrap_or_else(|seen| panic!("{what} did not happen within {within:?}; last seen: {seen}"))
}

/// [`poll`] for a probe that only reads memory: None when `within` passed first.
pub async fn poll_until<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll(within, || {
        std::future::ready(probe().ok_or_else(String::new))
    })
    .await
    .ok()
}
