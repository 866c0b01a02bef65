//! An atomic bulk is all or nothing: one order that cannot move keeps every other order
//! where it was — no history row, no event, no stock reserved — and the report says which
//! order and why. Ids without an order count as such an order.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Row, apply_all, assert_counters_consistent, history_rows_of_bulk, ids_json, json_row,
    max_outbox_id, n, one_of, order_states, order_with, orders, preview, results_json, sku,
    staffed, stock, submit_bulk, untracked, wait_bulk,
};
use crate::harness::{
    EVENT_DEADLINE, JOB_DEADLINE, TestSystem, broker::Downstream, message_json, uuid_of,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_bulk_with_one_out_of_stock_order_changes_nothing() {
    let staff = staffed().await;
    let (sys, ctok, atok) = (&staff.sys, &staff.ctok, &staff.atok);
    // One unit of D for two orders: the second (in id order) would be out of stock, but
    // only after the first reserved it — the atomic run must undo that in memory.
    let sku_d = sku("D");
    sys.set_inventory(atok, &sku_d, 1).await;
    let mut selected = vec![
        order_with(sys, ctok, one_of(&sku_d)).await,
        order_with(sys, ctok, one_of(&sku_d)).await,
    ];
    selected.extend(orders(sys, ctok, 2).await);
    selected.sort();
    let control = order_with(sys, ctok, untracked()).await;
    apply_all(sys, atok, &selected, json!({"action": "mark_paid"})).await;
    // Every event so far is out: a queue bound now receives only what comes next.
    sys.wait_outbox_drained(EVENT_DEADLINE).await;
    let mut downstream = sys.broker().downstream_queue("order.status.#").await;

    let before = order_states(sys, &selected).await;
    let outbox_before = max_outbox_id(sys).await;
    let body = json!({"selection": {"order_ids": ids_json(&selected)}, "action": "confirm", "reason": "all or nothing", "mode": "atomic"});
    let preview = preview(sys, atok, &body["selection"], "confirm").await;
    assert_eq!(
        (n(&preview, "would_apply"), preview["would_reject"].clone()),
        (3, json!({"out_of_stock": 1})),
        "{preview}"
    );

    let (bulk_id, job_id) = submit_bulk(sys, atok, &body).await;
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_atomic_rejection(&bulk, (4, 1, 3));
    let job = sys.wait_job(atok, job_id).await;
    assert_eq!(job["status"], "rejected", "the bulk's job: {job}");
    assert_report_names_the_one_order(&results_json(sys, atok, bulk_id).await);

    // Nothing changed: no audit row, no change event, versions and stock as they were.
    assert_eq!(
        history_rows_of_bulk(sys, bulk_id).await,
        0,
        "history rows carry this bulk_id"
    );
    let changes_since: i64 = sqlx::query_scalar(
        "select count(*) from outbox where id > $1 and event_type = 'order.status_changed'",
    )
    .bind(outbox_before)
    .fetch_one(sys.db())
    .await
    .unwrap();
    assert_eq!(
        changes_since, 0,
        "order.status_changed rows written after the atomic bulk began"
    );
    assert_eq!(order_states(sys, &selected).await, before, "orders changed");
    assert_eq!(stock(sys, &sku_d).await, (1, 0), "stock changed");

    // Nothing published: the next status event downstream is a later, unrelated change.
    let body = json!({"action": "mark_paid", "reason": "control"});
    sys.apply(atok, control, &body).await;
    let first = message_json(
        &downstream
            .expect_next("the control order's mark_paid")
            .await,
    );
    assert_eq!(
        first["order_id"],
        control.to_string(),
        "the first status event after the atomic bulk: {first}"
    );
    assert!(first["bulk_id"].is_null(), "{first}");

    // With the stock there, the same atomic bulk applies every order.
    sys.set_inventory(atok, &sku_d, 2).await;
    assert_atomic_bulk_applies_all(sys, atok, &selected, &mut downstream).await;
    assert_eq!(stock(sys, &sku_d).await, (2, 2));
    staff.sys.stop().await;
}

/// The atomic bulk over `selected`, once nothing blocks it: every order confirmed, one
/// history row and one published change each.
async fn assert_atomic_bulk_applies_all(
    sys: &TestSystem,
    atok: &str,
    selected: &[Uuid],
    downstream: &mut Downstream,
) {
    let body = json!({"selection": {"order_ids": ids_json(selected)}, "action": "confirm", "reason": "retry", "mode": "atomic"});
    let (bulk_id, _) = submit_bulk(sys, atok, &body).await;
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_eq!(
        (
            n(&bulk, "applied"),
            n(&bulk, "rejected"),
            n(&bulk, "skipped")
        ),
        (4, 0, 0),
        "{bulk}"
    );
    assert_eq!(history_rows_of_bulk(sys, bulk_id).await, 4);
    let mut seen = BTreeSet::new();
    while seen.len() < 4 {
        let msg = downstream
            .expect_next("the successful atomic bulk's changes")
            .await;
        let msg = message_json(&msg);
        assert_eq!(msg["bulk_id"], bulk_id.to_string(), "{msg}");
        assert_eq!(msg["to"], "confirmed", "{msg}");
        seen.insert(msg["order_id"].as_str().unwrap().to_owned());
    }
}

/// A rejected atomic bulk, with its (total, rejected, skipped) counters.
fn assert_atomic_rejection(bulk: &Value, (total, rejected, skipped): (i64, i64, i64)) {
    assert_eq!(bulk["status"], "rejected", "{bulk}");
    assert_eq!(bulk["mode"], "atomic", "{bulk}");
    assert_eq!(bulk["error"]["code"], "atomic_rejected", "{bulk}");
    assert!(
        bulk["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{bulk}"
    );
    assert_counters_consistent(bulk);
    assert_eq!(
        (
            n(bulk, "total"),
            n(bulk, "applied"),
            n(bulk, "rejected"),
            n(bulk, "skipped")
        ),
        (total, 0, rejected, skipped),
        "{bulk}"
    );
}

/// The report says which order and why; the others were not applied, nothing moved.
fn assert_report_names_the_one_order(rows: &[Value]) {
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let rejected: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "rejected").collect();
    assert_eq!(rejected.len(), 1, "{rows:#?}");
    assert_eq!(rejected[0]["code"], "out_of_stock", "{rows:#?}");
    for row in rows.iter().filter(|r| r["outcome"] != "rejected") {
        assert_eq!(
            (&row["outcome"], &row["code"]),
            (&json!("skipped"), &json!("atomic_aborted")),
            "{row}"
        );
        assert_eq!(
            (&row["from"], &row["to"]),
            (&json!("pending"), &json!("pending")),
            "nothing moved: {row}"
        );
    }
}

/// Ids of an explicit selection that have no order are reported, not dropped: the preview
/// counts them, a best-effort bulk rejects them with `not_found` (and the rest moves), an
/// atomic bulk changes nothing because of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_ids_without_an_order_are_reported_not_found() {
    let staff = staffed().await;
    let (sys, atok) = (&staff.sys, &staff.atok);
    let real = order_with(sys, &staff.ctok, untracked()).await;
    let ghost = Uuid::now_v7();
    // The ghost is listed twice: an id is one item, however often it is given.
    let selection = json!({"order_ids": ids_json(&[real, ghost, ghost])});

    let preview = preview(sys, atok, &selection, "cancel").await;
    assert_eq!(
        (
            n(&preview, "matched"),
            n(&preview, "not_found"),
            n(&preview, "would_apply"),
            preview["would_reject"]["not_found"].as_i64(),
        ),
        (1, 1, 1, Some(1)),
        "{preview}"
    );

    // Atomic: the missing order alone keeps the real one from moving.
    let (atomic, _) = submit_bulk(
        sys,
        atok,
        &json!({"selection": selection, "action": "cancel", "reason": "typo test", "mode": "atomic"}),
    )
    .await;
    let bulk = wait_bulk(sys, atok, atomic, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "rejected", "{bulk}");
    assert_eq!(sys.order(atok, real).await["status"], "pending");

    // Best effort: the real order moves; the ghost is rejected with `not_found`.
    let (bulk_id, _) = submit_bulk(
        sys,
        atok,
        &json!({"selection": selection, "action": "cancel", "reason": "typo test", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "total"), n(&bulk, "applied"), n(&bulk, "rejected")),
        (2, 1, 1),
        "{bulk}"
    );
    let rows: BTreeMap<Uuid, Row> = results_json(sys, atok, bulk_id)
        .await
        .iter()
        .map(|r| (uuid_of(r, "order_id"), json_row(r)))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[&real].1.as_str(), rows[&real].4.as_str()),
        ("applied", "cancelled")
    );
    assert_eq!(
        (rows[&ghost].1.as_str(), rows[&ghost].2.as_str()),
        ("rejected", "not_found")
    );
    assert_eq!(sys.order(atok, real).await["status"], "cancelled");
    staff.sys.stop().await;
}
