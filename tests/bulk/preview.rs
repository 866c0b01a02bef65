//! A preview tells the truth: its counts (per outcome, per rejection code, per prior
//! status) and its sample equal what the real run then does, and it writes nothing.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Staffed, States, apply_all, assert_counters_consistent, history_rows_of_bulk, max_outbox_id, n,
    one_of, order_states, order_with, results_json, sku, staffed, stock, submit_bulk, untracked,
    wait_bulk,
};
use crate::harness::{JOB_DEADLINE, TestSystem, uuid_of};

/// A customer's orders in every state a confirm can meet. Two tracked skus: A has 2 units
/// for 4 paid candidates (they compete, in id order), B has none.
struct Mixed {
    /// The customer's orders, in id order.
    selected: Vec<Uuid>,
    /// Another customer's paid order, which would confirm but is not selected.
    outsider: Uuid,
    sku_a: String,
    sku_b: String,
}

async fn mixed_selection(s: &Staffed) -> Mixed {
    let (sys, ctok, atok) = (&s.sys, &s.ctok, &s.atok);
    let (sku_a, sku_b) = (sku("A"), sku("B"));
    sys.set_inventory(atok, &sku_a, 2).await;
    sys.set_inventory(atok, &sku_b, 0).await;

    let mut paid_a = Vec::new();
    for _ in 0..3 {
        paid_a.push(order_with(sys, ctok, one_of(&sku_a)).await);
    }
    // Two lines, one tracked: competes for A too.
    let multi = order_with(
        sys,
        ctok,
        json!([{"sku": sku_a, "quantity": 1, "unit_price_cents": 700}, {"sku": "U-MULTI", "quantity": 3, "unit_price_cents": 100}]),
    )
    .await;
    paid_a.push(multi);
    let paid_b = order_with(sys, ctok, one_of(&sku_b)).await;
    let paid_untracked = [
        order_with(sys, ctok, untracked()).await,
        order_with(sys, ctok, untracked()).await,
    ];
    let unpaid = [
        order_with(sys, ctok, one_of(&sku_a)).await,
        order_with(sys, ctok, untracked()).await,
    ];
    let cancelled = order_with(sys, ctok, untracked()).await;
    let confirmed = order_with(sys, ctok, untracked()).await;
    let otok = sys.token("customer", Uuid::new_v4());
    let outsider = order_with(sys, &otok, untracked()).await;

    let mut to_pay = paid_a.clone();
    to_pay.extend([paid_b, confirmed, outsider]);
    to_pay.extend(paid_untracked);
    let paid = json!({"action": "mark_paid", "reason": "paid"});
    apply_all(sys, atok, &to_pay, paid).await;
    sys.apply(atok, confirmed, &json!({"action": "confirm"}))
        .await;
    let cancel = json!({"action": "cancel", "reason": "changed my mind"});
    sys.apply(ctok, cancelled, &cancel).await;

    let mut selected: Vec<Uuid> = paid_a;
    selected.extend([paid_b, cancelled, confirmed]);
    selected.extend(paid_untracked);
    selected.extend(unpaid);
    selected.sort();
    Mixed {
        selected,
        outsider,
        sku_a,
        sku_b,
    }
}

/// What a preview must not touch.
#[derive(Debug, PartialEq)]
struct Footprint {
    states: States,
    history_rows: i64,
    max_outbox_id: i64,
    bulks: i64,
}

impl Footprint {
    async fn of(sys: &TestSystem, ids: &[Uuid]) -> Self {
        Self {
            states: order_states(sys, ids).await,
            history_rows: sys.table_count("order_status_history").await,
            max_outbox_id: max_outbox_id(sys).await,
            bulks: sys.table_count("bulk_operations").await,
        }
    }

    fn assert_unchanged(&self, after: &Self) {
        assert_eq!(after.states, self.states, "preview changed orders");
        assert_eq!(
            after.history_rows, self.history_rows,
            "preview wrote history"
        );
        assert_eq!(
            after.max_outbox_id, self.max_outbox_id,
            "preview wrote events"
        );
        assert_eq!(after.bulks, self.bulks, "preview created a bulk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_counts_equal_the_real_outcome_on_a_mixed_selection() {
    let staff = staffed().await;
    let (sys, atok) = (&staff.sys, &staff.atok);
    let mixed = mixed_selection(&staff).await;
    let selection = json!({"filter": {"customer_id": staff.customer}});
    assert_filter_lists_exactly(&staff, &selection, &mixed.selected).await;

    // Preview, by admin and by support (judged as the admin who would apply it).
    let before = Footprint::of(sys, &mixed.selected).await;
    let body = json!({"selection": selection, "action": "confirm", "reason": "daily confirmation"});
    let preview = sys
        .post("/orders/bulk/preview", Some(atok), &body)
        .await
        .expect_status(200, "preview by admin")
        .body;
    let support_preview = sys
        .post("/orders/bulk/preview", Some(&staff.stok), &body)
        .await
        .expect_status(200, "preview by support")
        .body;
    assert_eq!(
        preview, support_preview,
        "support previews what an admin would apply"
    );
    assert_preview_counts(&preview);
    before.assert_unchanged(&Footprint::of(sys, &mixed.selected).await);
    assert_eq!(
        stock(sys, &mixed.sku_a).await,
        (2, 0),
        "preview reserved stock"
    );

    // The real run.
    let (bulk_id, job_id) = submit_bulk(
        sys,
        atok,
        &json!({"selection": selection, "action": "confirm", "reason": "daily confirmation", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_run_matches_preview(&bulk, &preview);
    let job = sys.wait_job(atok, job_id).await;
    assert_eq!(job["status"], "succeeded", "the bulk's job: {job}");

    let rows = results_json(sys, atok, bulk_id).await;
    assert_eq!(
        rows.len(),
        mixed.selected.len(),
        "one row per order: {rows:#?}"
    );
    assert_export_matches_preview(&rows, &preview);
    let after = order_states(sys, &mixed.selected).await;
    assert_only_applied_orders_moved(&rows, &before.states, &after);
    assert_eq!(
        stock(sys, &mixed.sku_a).await,
        (2, 2),
        "two A-orders reserved A"
    );
    assert_eq!(stock(sys, &mixed.sku_b).await, (0, 0), "nothing reserved B");
    let outsider = mixed.outsider;
    assert_eq!(
        order_states(sys, &[outsider]).await[&outsider].0,
        "pending",
        "an unselected order did not move"
    );
    assert_eq!(
        history_rows_of_bulk(sys, bulk_id).await,
        4,
        "one history row per applied order"
    );
    staff.sys.stop().await;
}

/// The filter sees exactly the customer's orders, in id order, on one page.
async fn assert_filter_lists_exactly(staff: &Staffed, selection: &Value, selected: &[Uuid]) {
    let filtered = staff
        .sys
        .post(
            "/orders/bulk/filter",
            Some(&staff.stok),
            &json!({"selection": selection, "limit": 100}),
        )
        .await
        .expect_status(200, "filter by support")
        .body;
    assert_eq!(n(&filtered, "total"), selected.len() as i64, "{filtered}");
    let listed: Vec<Uuid> = filtered["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| uuid_of(o, "id"))
        .collect();
    assert_eq!(
        listed, selected,
        "the filter lists the selection in id order"
    );
    assert!(filtered["next_cursor"].is_null(), "one page: {filtered}");
}

/// What the rules say, independent of which A-order comes first.
fn assert_preview_counts(preview: &Value) {
    assert_eq!(n(preview, "matched"), 11, "{preview}");
    assert_eq!(
        n(preview, "would_apply"),
        4,
        "2 of the 4 A-orders + 2 untracked: {preview}"
    );
    assert_eq!(
        preview["would_reject"],
        json!({"out_of_stock": 3, "payment_required": 2, "invalid_transition": 2}),
        "{preview}"
    );
    assert_eq!(
        preview["by_status"],
        json!({"pending": 9, "cancelled": 1, "confirmed": 1}),
        "{preview}"
    );
    let sample = preview["sample"].as_array().expect("sample array");
    assert!(
        !sample.is_empty() && sample.len() <= 11,
        "a sample of the selection: {preview}"
    );
}

fn assert_run_matches_preview(bulk: &Value, preview: &Value) {
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_eq!(bulk["mode"], "best_effort", "{bulk}");
    assert_eq!(bulk["action"], "confirm", "{bulk}");
    assert_counters_consistent(bulk);
    assert_eq!(
        n(bulk, "total"),
        n(preview, "matched"),
        "{bulk} vs {preview}"
    );
    assert_eq!(
        n(bulk, "applied"),
        n(preview, "would_apply"),
        "{bulk} vs {preview}"
    );
    let would_reject: i64 = preview["would_reject"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(n(bulk, "rejected"), would_reject, "{bulk} vs {preview}");
    assert_eq!((n(bulk, "failed"), n(bulk, "skipped")), (0, 0), "{bulk}");
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(
            bulk[field].is_string(),
            "`{field}` is set on a finished bulk: {bulk}"
        );
    }
}

/// The export, per code and per prior status, says what the preview said; so does each
/// sampled order.
fn assert_export_matches_preview(rows: &[Value], preview: &Value) {
    let mut codes: BTreeMap<String, i64> = BTreeMap::new();
    let mut from: BTreeMap<String, i64> = BTreeMap::new();
    let by_order: HashMap<String, &Value> = rows
        .iter()
        .map(|r| (r["order_id"].as_str().unwrap().to_owned(), r))
        .collect();
    for row in rows {
        *from
            .entry(row["from"].as_str().unwrap().to_owned())
            .or_default() += 1;
        if row["outcome"] == "rejected" {
            *codes
                .entry(row["code"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(
        json!(codes),
        preview["would_reject"],
        "export codes vs preview: {rows:#?}"
    );
    assert_eq!(
        json!(from),
        preview["by_status"],
        "export `from` vs preview by_status: {rows:#?}"
    );
    for s in preview["sample"].as_array().expect("sample array") {
        let row = by_order[s["order_id"].as_str().unwrap()];
        assert_eq!(row["outcome"], s["outcome"], "sample {s} vs real {row}");
        if s["outcome"] == "rejected" {
            assert_eq!(row["code"], s["code"], "sample {s} vs real {row}");
        }
    }
}

/// Exactly the applied orders moved (to confirmed, one version up); the others did not.
fn assert_only_applied_orders_moved(rows: &[Value], before: &States, after: &States) {
    for row in rows {
        let id = uuid_of(row, "order_id");
        let (status, _, version) = &after[&id];
        let (_, _, version_before) = &before[&id];
        if row["outcome"] == "applied" {
            assert_eq!(
                (status.as_str(), *version),
                ("confirmed", version_before + 1),
                "{row}"
            );
        } else {
            assert_eq!(
                *version, *version_before,
                "a rejected order is unchanged: {row}"
            );
        }
    }
}
