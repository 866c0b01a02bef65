//! A bulk's progress reaches staff SSE streams (live and replayed), never a customer's —
//! even when the bulk is about the customer's own orders, whose changes it does see.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{ids_json, n, order_with, orders, read_bulk, staffed, submit_bulk, untracked};
use crate::harness::{EVENT_DEADLINE, SseEvent, SseStream, sse::SUBSCRIBE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_reach_admin_sse_and_not_customers() {
    let staff = staffed().await;
    let (sys, ctok, atok) = (&staff.sys, &staff.ctok, &staff.atok);
    // The bulk is about the customer's own orders: it may see their changes, not the bulk.
    let own = orders(sys, ctok, 3).await;
    let marker = order_with(sys, ctok, untracked()).await;
    let mut admin_stream = sys.sse_connect(SUBSCRIBE, Some(atok), None).await;
    let mut support_stream = sys.sse_connect(SUBSCRIBE, Some(&staff.stok), None).await;
    let mut customer_stream = sys.sse_connect(SUBSCRIBE, Some(ctok), None).await;

    let (bulk_id, _) = submit_bulk(
        sys,
        atok,
        &json!({"selection": {"order_ids": ids_json(&own)}, "action": "mark_paid", "reason": "settled", "mode": "best_effort"}),
    )
    .await;
    let done = |e: &SseEvent| {
        e.kind() == "bulk.progress"
            && e.json()["bulk_id"] == bulk_id.to_string()
            && e.json()["status"] == "completed"
    };
    assert_staff_stream_shows_progress("admin", &mut admin_stream, bulk_id, done).await;
    assert_staff_stream_shows_progress("support", &mut support_stream, bulk_id, done).await;
    let bulk = read_bulk(sys, atok, bulk_id).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");

    // The customer: its own orders' changes, then the marker — and no bulk.progress.
    let cancel = json!({"action": "cancel", "reason": "marker"});
    sys.apply(ctok, marker, &cancel).await;
    let is_marker = |e: &SseEvent| {
        e.kind() == "order.status_changed" && e.order_id() == Some(marker.to_string())
    };
    let seen = customer_stream
        .collect_until(is_marker, EVENT_DEADLINE)
        .await;
    assert!(
        seen.iter().all(|e| e.kind() != "bulk.progress"),
        "a customer got bulk.progress: {seen:#?}"
    );
    assert_eq!(
        changes_of(&seen, bulk_id),
        3,
        "the customer sees its own orders' bulk changes: {seen:#?}"
    );
    // Nor in a replay from the start.
    let mut replayed = sys.sse_connect(SUBSCRIBE, Some(ctok), Some(0)).await;
    let seen = replayed.collect_until(is_marker, EVENT_DEADLINE).await;
    assert!(
        seen.iter().all(|e| e.kind() != "bulk.progress"),
        "a customer's replay carried bulk.progress: {seen:#?}"
    );
    let mut replayed = sys.sse_connect(SUBSCRIBE, Some(atok), Some(0)).await;
    let seen = replayed.collect_until(is_marker, EVENT_DEADLINE).await;
    assert!(
        seen.iter().any(done),
        "the admin's replay carries the bulk's progress: {seen:#?}"
    );
    staff.sys.stop().await;
}

/// `order.status_changed` events of the bulk among `seen`.
fn changes_of(seen: &[SseEvent], bulk_id: Uuid) -> usize {
    seen.iter()
        .filter(|e| {
            e.kind() == "order.status_changed" && e.json()["bulk_id"] == bulk_id.to_string()
        })
        .count()
}

/// Staff see the bulk's progress up to its completed event, and its three changes.
async fn assert_staff_stream_shows_progress(
    who: &str,
    stream: &mut SseStream,
    bulk_id: Uuid,
    done: impl Fn(&SseEvent) -> bool,
) {
    let seen = stream.collect_until(done, EVENT_DEADLINE).await;
    let progress: Vec<Value> = seen
        .iter()
        .filter(|e| e.kind() == "bulk.progress")
        .map(SseEvent::json)
        .collect();
    let last = progress.last().unwrap();
    assert_eq!(
        (n(last, "total"), n(last, "applied"), n(last, "pending")),
        (3, 3, 0),
        "{who}: {last}"
    );
    assert_eq!(last["type"], "bulk.progress", "{who}: {last}");
    assert!(
        last["seq"].is_u64(),
        "{who}: event data carries its seq: {last}"
    );
    assert_eq!(
        changes_of(&seen, bulk_id),
        3,
        "{who} sees the bulk's changes too: {seen:#?}"
    );
}
