//! `/metrics` moves with the work: jobs accepted, applied, rejected and dead, HTTP requests
//! by route template, SSE connections in and out — and never names an order.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::harness::metrics::{Scrape, wait_for};
use crate::harness::{JOB_DEADLINE, TestSystem};

/// The sampler (queue depths, outbox lag) runs every 5 s.
const SAMPLED: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_and_rejected_jobs_move_their_counters() {
    let sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    let before = Scrape::of(&sys).await;
    assert!(
        before.value("orderflow_build_info", &[]) == 1.0 && before.text.contains("git_sha="),
        "build info with version and git sha:\n{}",
        before.text
    );
    assert_eq!(before.value("orderflow_jobs_applied_total", &[]), 0.0);

    let order = sys.create_simple_order(&admin).await;
    sys.apply(&admin, order, &json!({"action": "mark_paid"}))
        .await;
    // `deliver` from `pending` is not a transition: the worker rejects it.
    let rejected = sys
        .submit(&admin, order, &json!({"action": "deliver"}))
        .await;
    let job = sys.wait_job(&admin, rejected).await;
    assert_eq!(job["status"], "rejected", "{job}");

    let code = [("code", "invalid_transition")];
    let after = wait_for(
        &sys,
        "orderflow_jobs_rejected_total",
        &code,
        ">= 1",
        |v| v >= 1.0,
        JOB_DEADLINE,
    )
    .await;
    assert_eq!(after.value("orderflow_jobs_applied_total", &[]), 1.0);
    assert_eq!(
        after.value(
            "orderflow_jobs_accepted_total",
            &[("kind", "change_status")]
        ),
        2.0
    );
    assert!(after.value("orderflow_job_wait_seconds_count", &[]) >= 2.0);
    assert!(after.value("orderflow_worker_batch_duration_seconds_count", &[]) >= 1.0);
    let route = [
        ("route", "/orders/{id}/change-status"),
        ("method", "POST"),
        ("status", "202"),
    ];
    assert!(
        after.value("orderflow_http_requests_total", &route) >= 1.0
            && after.value("orderflow_http_request_duration_seconds_count", &route) >= 1.0,
        "change-status requests counted by route template:\n{}",
        after.text
    );
    assert!(
        !after.text.contains(&order.to_string()),
        "an order id leaked into a label:\n{}",
        after.text
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_counts_as_dead_and_shows_in_the_dead_queue_depth() {
    let sys = TestSystem::start().await;
    sys.broker().publish_raw_job_message(b"not a job").await;
    wait_for(
        &sys,
        "orderflow_jobs_dead_total",
        &[],
        ">= 1",
        |v| v >= 1.0,
        JOB_DEADLINE,
    )
    .await;
    let dead = [("queue", "dead")];
    wait_for(
        &sys,
        "orderflow_queue_messages",
        &dead,
        ">= 1",
        |v| v >= 1.0,
        SAMPLED,
    )
    .await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_shows_in_the_connections_gauge_and_leaves_it() {
    let sys = TestSystem::start().await;
    let support = sys.token("support", Uuid::new_v4());
    let role = [("role", "support")];
    let stream = sys
        .sse_connect("/orders/events/subscribe", Some(&support), None)
        .await;
    wait_for(
        &sys,
        "orderflow_sse_connections",
        &role,
        "== 1",
        |v| v == 1.0,
        SAMPLED,
    )
    .await;
    drop(stream);
    wait_for(
        &sys,
        "orderflow_sse_connections",
        &role,
        "== 0",
        |v| v == 0.0,
        SAMPLED,
    )
    .await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_lag_is_sampled_and_drains_to_zero() {
    let sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    sys.create_simple_order(&admin).await;
    let scrape = wait_for(
        &sys,
        "orderflow_relay_events_published_total",
        &[],
        ">= 1",
        |v| v >= 1.0,
        JOB_DEADLINE,
    )
    .await;
    assert!(scrape.value("orderflow_relay_confirm_duration_seconds_count", &[]) >= 1.0);
    let sampled = wait_for(
        &sys,
        "orderflow_outbox_unpublished_events",
        &[],
        "sampled at 0",
        |v| v == 0.0,
        SAMPLED,
    )
    .await;
    assert!(
        sampled.has("orderflow_outbox_unpublished_events")
            && sampled.has("orderflow_outbox_oldest_unpublished_age_seconds")
            && sampled.value("orderflow_db_pool_connections", &[("state", "max")]) > 0.0,
        "sampled gauges:\n{}",
        sampled.text
    );
    sys.stop().await;
}
