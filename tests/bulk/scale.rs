//! No cap on the number of orders: the filter pages through thousands (keyset, id order)
//! and a bulk of thousands completes, each order once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    assert_counters_consistent, change_events_of_bulk, history_rows_of_bulk, n, preview,
    results_json, seed_orders, staffed, submit_bulk, wait_bulk,
};
use crate::harness::{TestSystem, uuid_of};

const TOTAL: usize = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_of_many_orders_completes() {
    let staff = staffed().await;
    let (sys, atok, stok) = (&staff.sys, &staff.atok, &staff.stok);
    let ids = seed_orders(sys, staff.customer, TOTAL).await;
    let selection = json!({"filter": {"status": ["pending"], "payment_status": "unpaid"}});
    assert_eq!(
        filter_all_pages(sys, stok, &selection).await,
        ids,
        "every order once, in id order"
    );

    let preview = preview(sys, stok, &selection, "mark_paid").await;
    assert_eq!(
        (n(&preview, "matched"), n(&preview, "would_apply")),
        (TOTAL as i64, TOTAL as i64),
        "{preview}"
    );

    let started = Instant::now();
    let (bulk_id, _) = submit_bulk(sys, atok, &json!({"selection": selection, "action": "mark_paid", "reason": "settlement", "mode": "best_effort"})).await;
    let bulk = wait_bulk(sys, atok, bulk_id, Duration::from_secs(40)).await;
    let committed = started.elapsed();
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "total"), n(&bulk, "applied")),
        (TOTAL as i64, TOTAL as i64),
        "{bulk}"
    );
    assert_eq!(
        history_rows_of_bulk(sys, bulk_id).await,
        TOTAL as i64,
        "one history row per order"
    );
    assert_eq!(
        change_events_of_bulk(sys, bulk_id).await,
        TOTAL as i64,
        "one change event per order"
    );
    sys.wait_outbox_drained(Duration::from_secs(30)).await;
    let published = started.elapsed();
    eprintln!("bulk of {TOTAL}: committed in {committed:?}, published in {published:?}");
    let rows = results_json(sys, atok, bulk_id).await;
    assert_eq!(rows.len(), TOTAL);
    assert!(
        rows.iter().all(|r| r["outcome"] == "applied"),
        "every row applied"
    );
    staff.sys.stop().await;
}

/// Every order the filter lists, page by page, with the total on every page.
async fn filter_all_pages(sys: &TestSystem, stok: &str, selection: &Value) -> Vec<Uuid> {
    let mut listed = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = sys
            .post(
                "/orders/bulk/filter",
                Some(stok),
                &json!({"selection": selection, "limit": 1000, "cursor": cursor}),
            )
            .await
            .expect_status(200, "filter page")
            .body;
        assert_eq!(n(&page, "total"), TOTAL as i64, "total on every page");
        listed.extend(
            page["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| uuid_of(o, "id")),
        );
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            return listed;
        }
        assert!(
            listed.len() < TOTAL + 1000,
            "the pages never end: {} listed",
            listed.len()
        );
    }
}
