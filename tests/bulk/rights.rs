//! Who may do what with bulks — support may filter, preview and read but not apply or
//! cancel; customers nothing, not even about their own orders — and bad requests are
//! refused in the error format without creating anything.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Staffed, order_with, post_bulk, read_bulk, staffed, submit_bulk, untracked, wait_bulk,
};
use crate::harness::JOB_DEADLINE;

/// A finished bulk over one order: (order, the status-update body, bulk id).
async fn finished_bulk(staff: &Staffed) -> (Uuid, Value, Uuid) {
    let (sys, atok) = (&staff.sys, &staff.atok);
    let order = order_with(sys, &staff.ctok, untracked()).await;
    let selection = json!({"order_ids": [order.to_string()]});
    let change = json!({"selection": selection, "action": "mark_paid", "reason": "settled", "mode": "best_effort"});
    let (bulk_id, _) = submit_bulk(sys, atok, &change).await;
    wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    (order, change, bulk_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_may_filter_preview_and_read_but_not_apply_and_customers_nothing() {
    let staff = staffed().await;
    let (sys, ctok, stok) = (&staff.sys, &staff.ctok, &staff.stok);
    let (_, change, bulk_id) = finished_bulk(&staff).await;
    let filter = json!({"selection": change["selection"]});
    let preview = json!({"selection": change["selection"], "action": "mark_paid"});
    let bulk_path = format!("/orders/bulk/{bulk_id}");
    let results_path = format!("/orders/bulk/{bulk_id}/results");
    let cancel_path = format!("/orders/bulk/{bulk_id}/cancel");

    // Support: filter, preview, read, results; not apply, not cancel.
    sys.post("/orders/bulk/filter", Some(stok), &filter)
        .await
        .expect_status(200, "support filters");
    sys.post("/orders/bulk/preview", Some(stok), &preview)
        .await
        .expect_status(200, "support previews");
    sys.get(&bulk_path, Some(stok))
        .await
        .expect_status(200, "support reads a bulk");
    sys.get(&results_path, Some(stok))
        .await
        .expect_status(200, "support exports results");
    let bulks_before = sys.table_count("bulk_operations").await;
    let refused = [(stok, "support applies"), (ctok, "customer applies")];
    for (token, what) in refused {
        post_bulk(sys, token, &change, None)
            .await
            .expect_error(403, Some("forbidden_role"), what);
    }
    for (token, who) in [(stok, "support"), (ctok, "customer")] {
        sys.post(&cancel_path, Some(token), &json!({}))
            .await
            .expect_error(403, Some("forbidden_role"), &format!("{who} cancels"));
    }

    // Customers: nothing, not even about their own orders.
    for (path, body, what) in [
        ("/orders/bulk/filter", &filter, "customer filters"),
        ("/orders/bulk/preview", &preview, "customer previews"),
    ] {
        sys.post(path, Some(ctok), body)
            .await
            .expect_error(403, Some("forbidden_role"), what);
    }
    for (path, what) in [
        (&bulk_path, "customer reads a bulk"),
        (&results_path, "customer exports results"),
    ] {
        sys.get(path, Some(ctok))
            .await
            .expect_error(403, Some("forbidden_role"), what);
    }
    // No token at all.
    post_bulk(sys, "not-a-token", &change, None)
        .await
        .expect_error(401, None, "garbage token applies");
    sys.get(&bulk_path, None)
        .await
        .expect_error(401, None, "anonymous read");

    assert_eq!(
        sys.table_count("bulk_operations").await,
        bulks_before,
        "a refused request created a bulk"
    );
    let bulk = read_bulk(sys, &staff.atok, bulk_id).await;
    assert_eq!(
        bulk["cancel_requested"], false,
        "a refused cancel changed the bulk: {bulk}"
    );
    staff.sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bulk_requests_are_refused_and_create_nothing() {
    let staff = staffed().await;
    let (sys, atok, stok) = (&staff.sys, &staff.atok, &staff.stok);
    let (order, change, bulk_id) = finished_bulk(&staff).await;
    let (bulks, jobs) = (
        sys.table_count("bulk_operations").await,
        sys.table_count("jobs").await,
    );

    // Unknown and malformed ids.
    sys.get(&format!("/orders/bulk/{}", Uuid::now_v7()), Some(atok))
        .await
        .expect_error(404, None, "unknown bulk");
    sys.get("/orders/bulk/not-a-uuid", Some(atok))
        .await
        .expect_error(400, None, "malformed bulk id");
    let unknown_cancel = format!("/orders/bulk/{}/cancel", Uuid::now_v7());
    sys.post(&unknown_cancel, Some(atok), &json!({}))
        .await
        .expect_error(404, None, "cancel an unknown bulk");

    // Bad input: 400 in the error format.
    for (what, body) in &bad_status_updates(&change, order) {
        post_bulk(sys, atok, body, None).await.expect_error(
            400,
            None,
            &format!("status-update with {what}: {body}"),
        );
    }
    let malformed = sys
        .request(Method::POST, "/orders/bulk/status-update", Some(atok))
        .header("content-type", "application/json")
        .body("{\"selection\": ");
    sys.send(malformed, "POST malformed JSON")
        .await
        .expect_error(400, None, "malformed JSON");
    for (what, body) in &bad_previews(&change["selection"]) {
        sys.post("/orders/bulk/preview", Some(stok), body)
            .await
            .expect_error(400, None, &format!("preview with {what}"));
    }
    for (what, body) in &bad_filters(&change["selection"], order) {
        sys.post("/orders/bulk/filter", Some(stok), body)
            .await
            .expect_error(400, None, &format!("filter with {what}"));
    }
    let xml = format!("/orders/bulk/{bulk_id}/results?format=xml");
    sys.get(&xml, Some(stok))
        .await
        .expect_error(400, None, "results format xml");

    assert_eq!(
        sys.table_count("bulk_operations").await,
        bulks,
        "refused requests created bulks"
    );
    assert_eq!(
        sys.table_count("jobs").await,
        jobs,
        "refused requests created jobs"
    );
    staff.sys.stop().await;
}

/// Status-update bodies that differ from the valid `change` in one way each.
fn bad_status_updates(change: &Value, order: Uuid) -> Vec<(&'static str, Value)> {
    let id = order.to_string();
    let with = |patch: Value| {
        let mut body = change.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    vec![
        (
            "both order_ids and filter",
            with(json!({"selection": {"order_ids": [id], "filter": {}}})),
        ),
        (
            "neither order_ids nor filter",
            with(json!({"selection": {}})),
        ),
        ("no selection", with(json!({"selection": null}))),
        (
            "empty order_ids",
            with(json!({"selection": {"order_ids": []}})),
        ),
        (
            "an order id that is not a uuid",
            with(json!({"selection": {"order_ids": ["42"]}})),
        ),
        (
            "empty status list",
            with(json!({"selection": {"filter": {"status": []}}})),
        ),
        (
            "unknown status",
            with(json!({"selection": {"filter": {"status": ["lost"]}}})),
        ),
        (
            "unknown filter field",
            with(json!({"selection": {"filter": {"colour": "red"}}})),
        ),
        (
            "unknown selection field",
            with(json!({"selection": {"order_ids": [id], "all": true}})),
        ),
        ("unknown top-level field", with(json!({"dry_run": true}))),
        (
            "min above max",
            with(json!({"selection": {"filter": {"min_total_cents": 10, "max_total_cents": 5}}})),
        ),
        ("missing reason", with(json!({"reason": null}))),
        ("blank reason", with(json!({"reason": "   "}))),
        ("unknown mode", with(json!({"mode": "all_or_nothing"}))),
        ("missing mode", with(json!({"mode": null}))),
        ("both action and to", with(json!({"to": "confirmed"}))),
        ("neither action nor to", with(json!({"action": null}))),
        ("unknown action", with(json!({"action": "teleport"}))),
        ("not an object", json!(["mark_paid"])),
    ]
}

fn bad_previews(selection: &Value) -> [(&'static str, Value); 4] {
    [
        (
            "mode on a preview",
            json!({"selection": selection, "action": "mark_paid", "mode": "atomic"}),
        ),
        ("no action", json!({"selection": selection})),
        (
            "neither order_ids nor filter",
            json!({"selection": {}, "action": "mark_paid"}),
        ),
        (
            "empty status list",
            json!({"selection": {"filter": {"status": []}}, "action": "mark_paid"}),
        ),
    ]
}

fn bad_filters(selection: &Value, order: Uuid) -> [(&'static str, Value); 4] {
    [
        ("limit 0", json!({"selection": selection, "limit": 0})),
        (
            "limit too large",
            json!({"selection": selection, "limit": 100_000}),
        ),
        (
            "a cursor that is not a uuid",
            json!({"selection": selection, "cursor": "x"}),
        ),
        (
            "both order_ids and filter",
            json!({"selection": {"order_ids": [order.to_string()], "filter": {}}}),
        ),
    ]
}
