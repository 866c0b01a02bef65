//! Chunks of one bulk applied at once (`BULK_CHUNKS_IN_FLIGHT`) claim disjoint chunks,
//! draw on shared stock without overdrawing it, and report progress that only counts up.

use serde_json::{Value, json};
use std::time::Duration;

use super::{
    assert_counters_consistent, history_rows_of_bulk, n, seed_orders, sku, staffed_with_env, stock,
    submit_bulk, wait_bulk,
};
use crate::harness::TestSystem;

const TOTAL: usize = 1200;
const ON_HAND: i64 = 700;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_applied_at_once_confirm_each_order_once_within_the_stock() {
    // 24 chunks of 50, four at a time: each lane claims several chunks, and every chunk
    // reserves from the same sku.
    let staff = staffed_with_env(&[
        ("BULK_CHUNK_SIZE", "50"),
        ("BULK_CHUNKS_IN_FLIGHT", "4"),
        ("WORKER_RATE_BULK", "0"),
    ])
    .await;
    let (sys, atok) = (&staff.sys, &staff.atok);
    let sku = sku("INFLIGHT");
    sys.set_inventory(atok, &sku, ON_HAND).await;
    let ids = seed_orders(sys, staff.customer, TOTAL).await;
    sqlx::query("update order_items set sku = $2 where order_id = any($1)")
        .bind(&ids)
        .bind(&sku)
        .execute(sys.db())
        .await
        .expect("seeding: the tracked sku");
    sqlx::query("update orders set payment_status = 'paid' where id = any($1)")
        .bind(&ids)
        .execute(sys.db())
        .await
        .expect("seeding: paid");

    let (bulk_id, _) = submit_bulk(
        sys,
        atok,
        &json!({"selection": {"filter": {"customer_id": staff.customer}}, "action": "confirm", "reason": "wave", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(sys, atok, bulk_id, Duration::from_secs(60)).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (
            n(&bulk, "total"),
            n(&bulk, "applied"),
            n(&bulk, "rejected"),
            n(&bulk, "failed")
        ),
        (TOTAL as i64, ON_HAND, TOTAL as i64 - ON_HAND, 0),
        "exactly the stock on hand is confirmed, the rest rejected, none failed: {bulk}"
    );
    assert_eq!(
        stock(sys, &sku).await,
        (ON_HAND, ON_HAND),
        "(on_hand, reserved)"
    );
    assert_eq!(
        history_rows_of_bulk(sys, bulk_id).await,
        ON_HAND,
        "one history row per confirmed order"
    );
    let outcomes = sys
        .count(
            "select count(*) from (select position from bulk_items where bulk_id = $1
                                   union all
                                   select 0 from order_status_history where bulk_id = $1) o",
            bulk_id,
        )
        .await;
    assert_eq!(outcomes, TOTAL as i64, "one outcome per order, none twice");

    sys.wait_outbox_drained(Duration::from_secs(30)).await;
    assert_progress_counts_up(sys, bulk_id).await;
    staff.sys.stop().await;
}

/// The bulk's progress events, in publication order, never count fewer orders done than
/// the one before, and the last one is the completed bulk.
async fn assert_progress_counts_up(sys: &TestSystem, bulk_id: uuid::Uuid) {
    let progress: Vec<Value> = sqlx::query_scalar(
        "select payload from outbox
         where event_type = 'bulk.progress' and payload->>'bulk_id' = $1::text order by seq",
    )
    .bind(bulk_id)
    .fetch_all(sys.db())
    .await
    .expect("progress events");
    let done = |p: &Value| n(p, "applied") + n(p, "rejected") + n(p, "failed") + n(p, "skipped");
    let counts: Vec<i64> = progress.iter().map(done).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "progress counted down: {counts:?}"
    );
    let last = progress.last().expect("progress events");
    assert_eq!(
        (last["status"].as_str(), done(last)),
        (Some("completed"), TOTAL as i64),
        "{last}"
    );
}
