//! A best-effort bulk moves every order it can and reports each one: the export (JSON and
//! CSV alike) has one row per selected order with its outcome, code and move; an order
//! that cannot be written fails alone.

use std::collections::HashMap;

use serde_json::json;
use uuid::Uuid;

use super::{
    Row, apply_all, assert_counters_consistent, ids_json, json_row, n, one_of, order_states,
    order_with, orders, results_csv, results_json, sku, staffed, stock, submit_bulk, untracked,
    wait_bulk,
};
use crate::harness::{JOB_DEADLINE, TestSystem, uuid_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_export_lists_every_order_with_outcome_and_code() {
    let staff = staffed().await;
    let (sys, ctok, atok) = (&staff.sys, &staff.ctok, &staff.atok);
    let paid = orders(sys, ctok, 3).await;
    let unpaid = orders(sys, ctok, 2).await;
    let cancelled = order_with(sys, ctok, untracked()).await;
    let confirmed = order_with(sys, ctok, untracked()).await;
    let mut to_pay = paid.clone();
    to_pay.push(confirmed);
    apply_all(sys, atok, &to_pay, json!({"action": "mark_paid"})).await;
    sys.apply(atok, confirmed, &json!({"action": "confirm"}))
        .await;
    sys.apply(ctok, cancelled, &json!({"action": "cancel"}))
        .await;

    let mut selected: Vec<Uuid> = paid.iter().chain(&unpaid).copied().collect();
    selected.extend([cancelled, confirmed]);
    // The `to` form: each order's own action to reach `confirmed`, if there is one.
    let (bulk_id, _) = submit_bulk(
        sys,
        atok,
        &json!({"selection": {"order_ids": ids_json(&selected)}, "to": "confirmed", "reason": "confirm the batch", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "total"), n(&bulk, "applied"), n(&bulk, "rejected")),
        (7, 3, 4),
        "{bulk}"
    );

    let json_rows = results_json(sys, &staff.stok, bulk_id).await;
    let csv_rows = results_csv(sys, &staff.stok, bulk_id).await;
    let from_json: Vec<Row> = json_rows.iter().map(json_row).collect();
    assert_eq!(
        from_json, csv_rows,
        "the JSON and CSV exports hold the same rows in the same order"
    );

    // One row per selected order, no more, no less.
    let mut exported: Vec<Uuid> = from_json.iter().map(|r| r.0.parse().unwrap()).collect();
    exported.sort();
    selected.sort();
    assert_eq!(exported, selected, "one row per selected order");

    let expect: HashMap<Uuid, (&str, &str, &str, &str)> = paid
        .iter()
        .map(|id| (*id, ("applied", "", "pending", "confirmed")))
        .chain(
            unpaid
                .iter()
                .map(|id| (*id, ("rejected", "payment_required", "pending", "pending"))),
        )
        .chain([
            (
                cancelled,
                ("rejected", "invalid_transition", "cancelled", "cancelled"),
            ),
            (
                confirmed,
                ("rejected", "invalid_transition", "confirmed", "confirmed"),
            ),
        ])
        .collect();
    for (id, outcome, code, from, to) in &from_json {
        let id: Uuid = id.parse().unwrap();
        assert_eq!(
            (outcome.as_str(), code.as_str(), from.as_str(), to.as_str()),
            expect[&id],
            "export row of order {id}"
        );
    }
    assert_export_refusals(sys, atok, bulk_id).await;
    staff.sys.stop().await;
}

/// The export of an unknown bulk, an unknown format; a finished bulk cannot be cancelled.
async fn assert_export_refusals(sys: &TestSystem, atok: &str, bulk_id: Uuid) {
    let unknown = format!("/orders/bulk/{}/results", Uuid::now_v7());
    sys.get(&unknown, Some(atok))
        .await
        .expect_error(404, None, "results of an unknown bulk");
    let xml = format!("/orders/bulk/{bulk_id}/results?format=xml");
    sys.get(&xml, Some(atok))
        .await
        .expect_error(400, None, "results in an unknown format");
    let cancel = format!("/orders/bulk/{bulk_id}/cancel");
    sys.post(&cancel, Some(atok), &json!({}))
        .await
        .expect_error(409, Some("not_running"), "cancel a completed bulk");
}

/// An order confirmed while its sku was not stock-tracked holds no reservation; once the
/// sku is tracked, cancelling it must release nothing (and so not fail the bulk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_confirmed_before_its_sku_was_tracked_cancels_without_touching_stock() {
    let staff = staffed().await;
    let (sys, ctok, atok) = (&staff.sys, &staff.ctok, &staff.atok);
    let mut selected = orders(sys, ctok, 4).await;
    let sku = sku("LATE");
    let late = order_with(sys, ctok, one_of(&sku)).await;
    sys.apply(atok, late, &json!({"action": "mark_paid"})).await;
    sys.apply(atok, late, &json!({"action": "confirm"})).await;
    sys.set_inventory(atok, &sku, 5).await;
    selected.push(late);

    let (bulk_id, _) = submit_bulk(
        sys,
        atok,
        &json!({"selection": {"order_ids": ids_json(&selected)}, "action": "cancel", "reason": "close out", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "applied"), bulk["status"].as_str()),
        (5, Some("completed")),
        "{bulk}"
    );
    let states = order_states(sys, &selected).await;
    assert!(
        states.values().all(|(s, _, _)| s == "cancelled"),
        "{states:?}"
    );
    assert_eq!(
        stock(sys, &sku).await,
        (5, 0),
        "nothing was reserved for the late order, so nothing is released"
    );
    staff.sys.stop().await;
}

/// An order the database refuses to write (a trigger here stands in for any defect) fails
/// alone: the other orders of its chunk move, and its item is reported `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unwritable_order_does_not_stop_a_best_effort_bulk() {
    let staff = staffed().await;
    let (sys, atok) = (&staff.sys, &staff.atok);
    let selected = orders(sys, &staff.ctok, 5).await;
    let poisoned = selected[2];
    let refuse = format!(
        "create function refuse_one() returns trigger language plpgsql as $$
         begin raise exception 'test: order % cannot be written', new.id; end $$;
         create trigger refuse_one before update on orders for each row
           when (new.id = '{poisoned}') execute function refuse_one();"
    );
    sqlx::raw_sql(&refuse).execute(sys.db()).await.unwrap();

    let (bulk_id, _) = submit_bulk(
        sys,
        atok,
        &json!({"selection": {"order_ids": ids_json(&selected)}, "action": "mark_paid", "reason": "settlement", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_counters_consistent(&bulk);
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_eq!((n(&bulk, "applied"), n(&bulk, "failed")), (4, 1), "{bulk}");
    for row in &results_json(sys, atok, bulk_id).await {
        let want = if uuid_of(row, "order_id") == poisoned {
            ("failed", Some("apply_failed"))
        } else {
            ("applied", None)
        };
        assert_eq!(
            (row["outcome"].as_str().unwrap(), row["code"].as_str()),
            want,
            "{row}"
        );
    }
    let states = order_states(sys, &selected).await;
    for (id, (_, payment, version)) in &states {
        let want = if *id == poisoned {
            ("unpaid", 1)
        } else {
            ("paid", 2)
        };
        assert_eq!((payment.as_str(), *version), want, "order {id}");
    }
    staff.sys.stop().await;
}
