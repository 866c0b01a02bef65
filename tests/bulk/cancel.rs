//! Cancel stops a running bulk between chunks — never inside one — with counters, history
//! and export that agree; a queued bulk cancelled before it started never starts.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    assert_counters_consistent, history_rows_of_bulk, ids_json, n, read_bulk, results_json,
    seed_orders, staffed_with_env, submit_bulk, wait_bulk, wait_bulk_until,
};
use crate::harness::{JOB_DEADLINE, TestSystem};

const CHUNK: i64 = 100;
const TOTAL: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_between_chunks_with_consistent_counters() {
    // 100 per chunk at 500 changes/s: after the first burst, five chunks a second, so the
    // whole bulk would take about five seconds.
    let staff = staffed_with_env(&[("BULK_CHUNK_SIZE", "100"), ("WORKER_RATE_BULK", "500")]).await;
    let (sys, atok) = (&staff.sys, staff.atok.as_str());
    let ids = seed_orders(sys, staff.customer, TOTAL).await;

    let (bulk_id, job_id) = submit_bulk(
        sys,
        atok,
        &json!({"selection": {"filter": {"status": ["pending"], "payment_status": "unpaid"}}, "action": "mark_paid", "reason": "settlement file", "mode": "best_effort"}),
    )
    .await;
    // A second bulk waits in the queue behind it (one bulk at a time per worker).
    let (queued_id, queued_job) = submit_bulk(
        sys,
        atok,
        &json!({"selection": {"order_ids": ids_json(&ids[..10])}, "action": "mark_paid", "reason": "second file", "mode": "best_effort"}),
    )
    .await;
    let running = wait_bulk_until(
        sys,
        atok,
        bulk_id,
        JOB_DEADLINE,
        "a first applied chunk",
        |b| n(b, "applied") > 0,
    )
    .await;
    assert_eq!(
        running["status"], "running",
        "cancel must find it running: {running}"
    );

    // Cancelling a queued bulk ends it at once.
    let queued = cancel(sys, atok, queued_id, 200, "cancel a queued bulk").await;
    assert_eq!(queued["status"], "cancelled", "{queued}");
    assert!(queued["finished_at"].is_string(), "{queued}");

    let at_cancel = cancel(sys, atok, bulk_id, 202, "cancel a running bulk").await;
    assert_eq!(at_cancel["status"], "running", "{at_cancel}");

    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    let applied = assert_stopped_between_chunks(&bulk, &at_cancel);
    assert_eq!(
        history_rows_of_bulk(sys, bulk_id).await,
        applied,
        "history rows with this bulk_id = applied"
    );
    let paid: i64 = sqlx::query_scalar(
        "select count(*) from orders where id = any($1) and payment_status = 'paid'",
    )
    .bind(&ids)
    .fetch_one(sys.db())
    .await
    .unwrap();
    assert_eq!(paid, applied, "orders paid = applied");
    assert_export_of_cancelled(sys, atok, bulk_id, &bulk).await;
    let job = sys.wait_job(atok, job_id).await;
    assert_eq!(job["status"], "cancelled", "the bulk's job: {job}");

    // The queued bulk, reached by the worker afterwards, never started.
    let job = sys.wait_job(atok, queued_job).await;
    assert_eq!(job["status"], "cancelled", "the queued bulk's job: {job}");
    let queued = read_bulk(sys, atok, queued_id).await;
    assert_eq!(
        (
            queued["status"].as_str(),
            n(&queued, "total"),
            n(&queued, "applied")
        ),
        (Some("cancelled"), 0, 0),
        "{queued}"
    );
    assert!(queued["started_at"].is_null(), "{queued}");
    assert_eq!(history_rows_of_bulk(sys, queued_id).await, 0);
    staff.sys.stop().await;
}

/// `POST /orders/bulk/{id}/cancel`; asserts `status`, returns the body.
async fn cancel(sys: &TestSystem, atok: &str, bulk_id: Uuid, status: u16, what: &str) -> Value {
    sys.post(
        &format!("/orders/bulk/{bulk_id}/cancel"),
        Some(atok),
        &json!({}),
    )
    .await
    .expect_status(status, what)
    .body
}

/// Cancelled part-way, in whole chunks, none after the cancel was answered; returns applied.
fn assert_stopped_between_chunks(bulk: &Value, at_cancel: &Value) -> i64 {
    assert_eq!(bulk["status"], "cancelled", "{bulk}");
    assert_counters_consistent(bulk);
    let (total, applied) = (n(bulk, "total"), n(bulk, "applied"));
    assert_eq!(total, TOTAL as i64, "{bulk}");
    assert_eq!((n(bulk, "rejected"), n(bulk, "failed")), (0, 0), "{bulk}");
    assert!(
        applied > 0 && applied < total,
        "it stopped part-way: {bulk}"
    );
    assert_eq!(applied % CHUNK, 0, "whole chunks only: {bulk}");
    // The cancel waited for the chunk in hand; no chunk started after it.
    assert_eq!(
        applied,
        n(at_cancel, "applied"),
        "chunks applied after the cancel was answered: {at_cancel} then {bulk}"
    );
    applied
}

/// One export row per order, in position order: whole chunks applied, whole chunks skipped
/// with code `cancelled`, as many as the counters say. (Chunks applied at once commit in
/// any order, so the applied chunks need not be the first ones.)
async fn assert_export_of_cancelled(sys: &TestSystem, atok: &str, bulk_id: Uuid, bulk: &Value) {
    let rows = results_json(sys, atok, bulk_id).await;
    assert_eq!(rows.len(), TOTAL, "one export row per order");
    let skipped_rows: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "skipped").collect();
    assert_eq!(
        skipped_rows.len() as i64,
        n(bulk, "skipped"),
        "skipped rows = skipped counter"
    );
    assert!(
        skipped_rows.iter().all(|r| r["code"] == "cancelled"),
        "skipped items carry code `cancelled`"
    );
    let applied_rows = rows.iter().filter(|r| r["outcome"] == "applied").count() as i64;
    assert_eq!(
        applied_rows,
        n(bulk, "applied"),
        "applied rows = applied counter"
    );
    for (i, chunk) in rows.chunks(CHUNK as usize).enumerate() {
        assert!(
            chunk.iter().all(|r| r["outcome"] == chunk[0]["outcome"]),
            "chunk {i} is not all applied or all skipped: {chunk:?}"
        );
    }
}
