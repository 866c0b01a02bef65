//! A bulk whose worker is killed mid-run resumes where it was — it is not restarted — and
//! every order is changed exactly once.

use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

use super::{
    assert_counters_consistent, change_events_of_bulk, history_rows_of_bulk, n, order_states,
    read_bulk, seed_orders, submit_bulk, wait_bulk, wait_bulk_until,
};
use crate::harness::{JOB_DEADLINE, TestSystem};

const TOTAL: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_bulk_resumes_with_every_order_applied_once() {
    let mut sys =
        TestSystem::start_with_env(&[("BULK_CHUNK_SIZE", "100"), ("WORKER_RATE_BULK", "500")])
            .await;
    let (customer, admin) = (Uuid::new_v4(), Uuid::new_v4());
    let atok = sys.token("admin", admin);
    let ids = seed_orders(&sys, customer, TOTAL).await;

    let (bulk_id, job_id) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": {"filter": {"customer_id": customer}}, "action": "mark_paid", "reason": "settlement file", "mode": "best_effort"}),
    )
    .await;
    let running = wait_bulk_until(
        &sys,
        &atok,
        bulk_id,
        JOB_DEADLINE,
        "a first applied chunk",
        |b| n(b, "applied") > 0,
    )
    .await;
    assert_eq!(running["status"], "running", "{running}");

    // kill -9 mid-bulk, then a fresh process (default chunk size and rate) takes it over.
    sys.restart().await;
    let at_restart = read_bulk(&sys, &atok, bulk_id).await;
    eprintln!(
        "bulk before the kill: applied {}; right after the restart: {at_restart}",
        running["applied"]
    );
    let bulk = wait_bulk(&sys, &atok, bulk_id, Duration::from_secs(40)).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "total"), n(&bulk, "applied")),
        (TOTAL as i64, TOTAL as i64),
        "{bulk}"
    );
    assert_every_order_applied_once(&sys, bulk_id, &ids).await;
    assert_resumed_not_restarted(&sys, bulk_id, job_id).await;
    sys.stop().await;
}

async fn assert_every_order_applied_once(sys: &TestSystem, bulk_id: Uuid, ids: &[Uuid]) {
    assert_eq!(
        history_rows_of_bulk(sys, bulk_id).await,
        TOTAL as i64,
        "history rows with this bulk_id = applied"
    );
    let twice = sys
        .count(
            "select count(*) from (select order_id from order_status_history where bulk_id = $1 group by order_id having count(*) > 1) t",
            bulk_id,
        )
        .await;
    assert_eq!(twice, 0, "orders with two history rows for this bulk");
    let states = order_states(sys, ids).await;
    let wrong: Vec<_> = states
        .iter()
        .filter(|(_, (s, p, v))| (s.as_str(), p.as_str(), *v) != ("pending", "paid", 2))
        .collect();
    assert!(
        wrong.is_empty(),
        "every order paid once (version 2): {} wrong, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    assert_eq!(
        change_events_of_bulk(sys, bulk_id).await,
        TOTAL as i64,
        "one change event per order"
    );
}

/// The job was claimed by both lives, and the progress events' applied counts never go back.
async fn assert_resumed_not_restarted(sys: &TestSystem, bulk_id: Uuid, job_id: Uuid) {
    let attempts = sys
        .count("select attempts::bigint from jobs where id = $1", job_id)
        .await;
    assert!(
        attempts >= 2,
        "the bulk job was taken up again after the kill: attempts {attempts}"
    );
    let progress: Vec<i64> = sqlx::query_scalar(
        "select (payload->>'applied')::bigint from outbox where event_type = 'bulk.progress' and payload->>'bulk_id' = $1::text order by id",
    )
    .bind(bulk_id)
    .fetch_all(sys.db())
    .await
    .unwrap();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {progress:?}"
    );
    assert_eq!(progress.last().copied(), Some(TOTAL as i64), "{progress:?}");
}
