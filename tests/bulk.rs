//! Bulk operations (issue 4): a preview that tells the truth, background runs over the
//! same state machine in chunks, atomic all-or-nothing, results export, cancel between
//! chunks, resumption after a crash with no order changed twice, progress on staff SSE
//! streams only, rights, idempotency, and no cap on the number of orders.
//!
//! Large selections are seeded straight into the database (creating thousands of orders
//! over HTTP would measure the ingress, not the bulk); everything else goes through the API.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use common::*;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const BULK_STATUSES_TERMINAL: [&str; 4] = ["completed", "rejected", "cancelled", "failed"];
const POLL: Duration = Duration::from_millis(50);

// ---- helpers ------------------------------------------------------------------------------

/// `POST /orders/bulk/status-update`, optionally with an Idempotency-Key.
async fn post_bulk(sys: &TestSystem, token: &str, body: &Value, key: Option<&str>) -> Answer {
    let mut req = sys
        .request(Method::POST, "/orders/bulk/status-update", Some(token))
        .json(body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    Answer::read(req.send().await.expect("POST /orders/bulk/status-update")).await
}

/// Submits a bulk; asserts the 202 contract and returns (bulk_id, job_id).
async fn submit_bulk(sys: &TestSystem, token: &str, body: &Value) -> (Uuid, Uuid) {
    let answer = post_bulk(sys, token, body, None)
        .await
        .expect_status(202, &format!("bulk status-update {body}"));
    let bulk_id = uuid_of(&answer.body, "bulk_id");
    let job_id = uuid_of(&answer.body, "job_id");
    assert_eq!(answer.body["status"], "queued", "202 body: {}", answer.body);
    let location = answer.header("location").unwrap_or_default();
    assert!(
        location.ends_with(&format!("/orders/bulk/{bulk_id}")),
        "202 must carry Location: /orders/bulk/{bulk_id}, got {location:?}"
    );
    (bulk_id, job_id)
}

/// `POST /orders/bulk/preview` of `action` over `selection`; asserts 200, returns the body.
async fn preview(sys: &TestSystem, token: &str, selection: &Value, action: &str) -> Value {
    sys.post(
        "/orders/bulk/preview",
        Some(token),
        &json!({"selection": selection, "action": action}),
    )
    .await
    .expect_status(200, &format!("preview of {action} over {selection}"))
    .body
}

async fn read_bulk(sys: &TestSystem, token: &str, bulk_id: Uuid) -> Value {
    sys.get(&format!("/orders/bulk/{bulk_id}"), Some(token))
        .await
        .expect_status(200, "GET /orders/bulk/{id}")
        .body
}

/// Polls the bulk until `pred` holds; panics with the last state after `within`.
async fn wait_bulk_until(
    sys: &TestSystem,
    token: &str,
    bulk_id: Uuid,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let bulk = read_bulk(sys, token, bulk_id).await;
        if pred(&bulk) {
            return bulk;
        }
        assert!(
            started.elapsed() < within,
            "bulk {bulk_id}: {what} did not happen within {within:?}; last seen {bulk}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn is_terminal(bulk: &Value) -> bool {
    BULK_STATUSES_TERMINAL.contains(&bulk["status"].as_str().unwrap_or_default())
}

/// Polls the bulk until it is terminal.
async fn wait_bulk(sys: &TestSystem, token: &str, bulk_id: Uuid, within: Duration) -> Value {
    wait_bulk_until(
        sys,
        token,
        bulk_id,
        within,
        "reaching a terminal status",
        is_terminal,
    )
    .await
}

fn n(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer `{field}` in {v}"))
}

/// The counters add up: every item has exactly one outcome once the bulk ended.
fn assert_counters_consistent(bulk: &Value) {
    let sum = n(bulk, "applied") + n(bulk, "rejected") + n(bulk, "failed") + n(bulk, "skipped");
    assert_eq!(
        sum,
        n(bulk, "total"),
        "applied + rejected + failed + skipped = total: {bulk}"
    );
    assert_eq!(
        n(bulk, "pending"),
        0,
        "an ended bulk has nothing pending: {bulk}"
    );
}

/// `GET /orders/bulk/{id}/results?format=json`.
async fn results_json(sys: &TestSystem, token: &str, bulk_id: Uuid) -> Vec<Value> {
    let answer = sys
        .get(
            &format!("/orders/bulk/{bulk_id}/results?format=json"),
            Some(token),
        )
        .await
        .expect_status(200, "GET results?format=json");
    assert!(
        answer
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "JSON export content-type: {:?}",
        answer.headers
    );
    answer
        .body
        .as_array()
        .unwrap_or_else(|| panic!("the JSON export is an array: {}", answer.body))
        .clone()
}

/// One export row as comparable text: (order_id, outcome, code, from, to), "" for null.
type Row = (String, String, String, String, String);

fn json_row(row: &Value) -> Row {
    let field = |k: &str| match &row[k] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => panic!("export field `{k}` is not a string or null: {row} ({other})"),
    };
    (
        field("order_id"),
        field("outcome"),
        field("code"),
        field("from"),
        field("to"),
    )
}

/// `GET /orders/bulk/{id}/results?format=csv`, parsed (the header is checked).
async fn results_csv(sys: &TestSystem, token: &str, bulk_id: Uuid) -> Vec<Row> {
    let answer = sys
        .get(
            &format!("/orders/bulk/{bulk_id}/results?format=csv"),
            Some(token),
        )
        .await
        .expect_status(200, "GET results?format=csv");
    assert!(
        answer
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/csv"),
        "CSV export content-type: {:?}",
        answer.headers
    );
    let text = answer
        .body
        .as_str()
        .unwrap_or_else(|| panic!("CSV export is text: {}", answer.body));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("order_id,outcome,code,from,to"),
        "CSV header of {text:?}"
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 5, "a CSV row has 5 fields: {line:?}");
            (
                f[0].into(),
                f[1].into(),
                f[2].into(),
                f[3].into(),
                f[4].into(),
            )
        })
        .collect()
}

async fn scalar(sys: &TestSystem, sql: &str, id: Uuid) -> i64 {
    sys.count(sql, id).await
}

async fn history_rows_of_bulk(sys: &TestSystem, bulk_id: Uuid) -> i64 {
    scalar(
        sys,
        "select count(*) from order_status_history where bulk_id = $1",
        bulk_id,
    )
    .await
}

/// (status, payment_status, version) of each order.
async fn order_states(sys: &TestSystem, ids: &[Uuid]) -> BTreeMap<Uuid, (String, String, i64)> {
    let rows: Vec<(Uuid, String, String, i64)> =
        sqlx::query_as("select id, status, payment_status, version from orders where id = any($1)")
            .bind(ids)
            .fetch_all(sys.db())
            .await
            .expect("reading order states");
    rows.into_iter()
        .map(|(id, s, p, v)| (id, (s, p, v)))
        .collect()
}

/// (on_hand, reserved) of a sku.
async fn stock(sys: &TestSystem, sku: &str) -> (i64, i64) {
    sqlx::query_as("select on_hand, reserved from inventory where sku = $1")
        .bind(sku)
        .fetch_one(sys.db())
        .await
        .unwrap_or_else(|e| panic!("inventory of {sku}: {e}"))
}

async fn max_outbox_id(sys: &TestSystem) -> i64 {
    sqlx::query_scalar("select coalesce(max(id), 0) from outbox")
        .fetch_one(sys.db())
        .await
        .expect("max outbox id")
}

async fn table_count(sys: &TestSystem, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(sys.db())
        .await
        .unwrap_or_else(|e| panic!("count of {table}: {e}"))
}

/// `n` pending, unpaid orders of `customer` (one item of an untracked sku each), written
/// straight into the database the way `POST /orders` writes them (order, item, creation
/// audit row), in id order. No `order.created` events: nobody here listens for them.
async fn seed_orders(sys: &TestSystem, customer: Uuid, count: usize) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    ids.sort();
    let mut tx = sys.db().begin().await.expect("seeding: begin");
    sqlx::query(
        "insert into orders (id, customer_id, total_cents, currency)
         select id, $2, 1250, 'USD' from unnest($1::uuid[]) as id",
    )
    .bind(&ids)
    .bind(customer)
    .execute(&mut *tx)
    .await
    .expect("seeding orders");
    sqlx::query(
        "insert into order_items (order_id, line, sku, quantity, unit_price_cents)
         select id, 1, 'SEEDED-UNTRACKED', 1, 1250 from unnest($1::uuid[]) as id",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .expect("seeding order items");
    sqlx::query(
        "insert into order_status_history (order_id, from_status, to_status, action, actor_id, actor_role, version)
         select id, null, 'pending', 'create', $2, 'customer', 1 from unnest($1::uuid[]) as id",
    )
    .bind(&ids)
    .bind(customer)
    .execute(&mut *tx)
    .await
    .expect("seeding creation history");
    tx.commit().await.expect("seeding: commit");
    ids
}

fn ids_json(ids: &[Uuid]) -> Value {
    json!(ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
}

async fn order_with(sys: &TestSystem, ctok: &str, items: Value) -> Uuid {
    order_id(&sys.create_order(ctok, items).await)
}

fn untracked() -> Value {
    json!([{"sku": format!("U-{}", &Uuid::new_v4().simple().to_string()[..10]), "quantity": 1, "unit_price_cents": 500}])
}

fn one_of(sku: &str) -> Value {
    json!([{"sku": sku, "quantity": 1, "unit_price_cents": 700}])
}

/// Applies single changes concurrently, each waited for (and asserted) to succeed.
async fn apply_all(sys: &TestSystem, token: &str, ids: &[Uuid], body: Value) {
    join_all(ids.iter().map(|id| sys.apply(token, *id, &body))).await;
}

/// Waits until every outbox row is published (the relay drained).
async fn wait_outbox_drained(sys: &TestSystem, within: Duration) {
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar(
            "select count(*) from outbox where seq is null or seq > (select published_seq from outbox_cursor)",
        )
        .fetch_one(sys.db())
        .await
        .expect("counting unpublished outbox rows");
        if left == 0 {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{left} outbox rows still unpublished after {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---- 1. preview -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_counts_equal_the_real_outcome_on_a_mixed_selection() {
    let sys = TestSystem::start().await;
    let (customer, other, admin, support) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let (ctok, otok, atok, stok) = (
        sys.token("customer", customer),
        sys.token("customer", other),
        sys.token("admin", admin),
        sys.token("support", support),
    );
    // Two tracked skus: A has 2 units for 4 paid candidates (they compete, in id order),
    // B has none.
    let sku_a = format!("A-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let sku_b = format!("B-{}", &Uuid::new_v4().simple().to_string()[..8]);
    sys.set_inventory(&atok, &sku_a, 2).await;
    sys.set_inventory(&atok, &sku_b, 0).await;

    let mut paid_a = Vec::new();
    for _ in 0..3 {
        paid_a.push(order_with(&sys, &ctok, one_of(&sku_a)).await);
    }
    // Two lines, one tracked: competes for A too.
    let multi = order_with(
        &sys,
        &ctok,
        json!([{"sku": sku_a, "quantity": 1, "unit_price_cents": 700}, {"sku": "U-MULTI", "quantity": 3, "unit_price_cents": 100}]),
    )
    .await;
    paid_a.push(multi);
    let paid_b = order_with(&sys, &ctok, one_of(&sku_b)).await;
    let paid_untracked = [
        order_with(&sys, &ctok, untracked()).await,
        order_with(&sys, &ctok, untracked()).await,
    ];
    let unpaid = [
        order_with(&sys, &ctok, one_of(&sku_a)).await,
        order_with(&sys, &ctok, untracked()).await,
    ];
    let cancelled = order_with(&sys, &ctok, untracked()).await;
    let confirmed = order_with(&sys, &ctok, untracked()).await;
    // Not selected (another customer's), though it would confirm.
    let outsider = order_with(&sys, &otok, untracked()).await;

    let mut to_pay = paid_a.clone();
    to_pay.extend([paid_b, confirmed, outsider]);
    to_pay.extend(paid_untracked);
    apply_all(
        &sys,
        &atok,
        &to_pay,
        json!({"action": "mark_paid", "reason": "paid"}),
    )
    .await;
    sys.apply(&atok, confirmed, &json!({"action": "confirm"}))
        .await;
    sys.apply(
        &ctok,
        cancelled,
        &json!({"action": "cancel", "reason": "changed my mind"}),
    )
    .await;

    let mut selected: Vec<Uuid> = paid_a.clone();
    selected.extend([paid_b, cancelled, confirmed]);
    selected.extend(paid_untracked);
    selected.extend(unpaid);
    selected.sort();
    let selection = json!({"filter": {"customer_id": customer}});

    // The filter sees exactly the customer's orders.
    let filtered = sys
        .post(
            "/orders/bulk/filter",
            Some(&stok),
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
        .map(order_id)
        .collect();
    assert_eq!(
        listed, selected,
        "the filter lists the selection in id order"
    );
    assert!(filtered["next_cursor"].is_null(), "one page: {filtered}");

    // Preview, by admin and by support (judged as the admin who would apply it).
    let before_states = order_states(&sys, &selected).await;
    let (history_before, outbox_before, bulks_before) = (
        table_count(&sys, "order_status_history").await,
        max_outbox_id(&sys).await,
        table_count(&sys, "bulk_operations").await,
    );
    let body = json!({"selection": selection, "action": "confirm", "reason": "daily confirmation"});
    let preview = sys
        .post("/orders/bulk/preview", Some(&atok), &body)
        .await
        .expect_status(200, "preview by admin")
        .body;
    let support_preview = sys
        .post("/orders/bulk/preview", Some(&stok), &body)
        .await
        .expect_status(200, "preview by support")
        .body;
    assert_eq!(
        preview, support_preview,
        "support previews what an admin would apply"
    );

    // What the rules say, independent of which A-order comes first.
    assert_eq!(n(&preview, "matched"), 11, "{preview}");
    assert_eq!(
        n(&preview, "would_apply"),
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
    let sample = preview["sample"].as_array().expect("sample array").clone();
    assert!(
        !sample.is_empty() && sample.len() <= 11,
        "a sample of the selection: {preview}"
    );

    // The preview wrote nothing.
    assert_eq!(
        order_states(&sys, &selected).await,
        before_states,
        "preview changed orders"
    );
    assert_eq!(
        table_count(&sys, "order_status_history").await,
        history_before,
        "preview wrote history"
    );
    assert_eq!(
        max_outbox_id(&sys).await,
        outbox_before,
        "preview wrote events"
    );
    assert_eq!(
        table_count(&sys, "bulk_operations").await,
        bulks_before,
        "preview created a bulk"
    );
    assert_eq!(stock(&sys, &sku_a).await, (2, 0), "preview reserved stock");

    // The real run.
    let (bulk_id, job_id) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": selection, "action": "confirm", "reason": "daily confirmation", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_eq!(bulk["mode"], "best_effort", "{bulk}");
    assert_eq!(bulk["action"], "confirm", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        n(&bulk, "total"),
        n(&preview, "matched"),
        "{bulk} vs {preview}"
    );
    assert_eq!(
        n(&bulk, "applied"),
        n(&preview, "would_apply"),
        "{bulk} vs {preview}"
    );
    let would_reject: i64 = preview["would_reject"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(n(&bulk, "rejected"), would_reject, "{bulk} vs {preview}");
    assert_eq!((n(&bulk, "failed"), n(&bulk, "skipped")), (0, 0), "{bulk}");
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(
            bulk[field].is_string(),
            "`{field}` is set on a finished bulk: {bulk}"
        );
    }
    let job = sys.wait_job(&atok, job_id).await;
    assert_eq!(job["status"], "succeeded", "the bulk's job: {job}");

    // The export, per code and per prior status, says what the preview said.
    let rows = results_json(&sys, &atok, bulk_id).await;
    assert_eq!(rows.len(), selected.len(), "one row per order: {rows:#?}");
    let mut codes: BTreeMap<String, i64> = BTreeMap::new();
    let mut from: BTreeMap<String, i64> = BTreeMap::new();
    let by_order: HashMap<String, &Value> = rows
        .iter()
        .map(|r| (r["order_id"].as_str().unwrap().to_owned(), r))
        .collect();
    for row in &rows {
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
    for s in &sample {
        let row = by_order[s["order_id"].as_str().unwrap()];
        assert_eq!(row["outcome"], s["outcome"], "sample {s} vs real {row}");
        if s["outcome"] == "rejected" {
            assert_eq!(row["code"], s["code"], "sample {s} vs real {row}");
        }
    }

    // And the orders themselves: exactly the applied ones moved, stock reserved twice.
    let after = order_states(&sys, &selected).await;
    for row in &rows {
        let id: Uuid = row["order_id"].as_str().unwrap().parse().unwrap();
        let (status, _, version) = &after[&id];
        let (_, _, version_before) = &before_states[&id];
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
    assert_eq!(stock(&sys, &sku_a).await, (2, 2), "two A-orders reserved A");
    assert_eq!(stock(&sys, &sku_b).await, (0, 0), "nothing reserved B");
    assert_eq!(
        order_states(&sys, &[outsider]).await[&outsider].0,
        "pending",
        "an unselected order did not move"
    );
    assert_eq!(
        history_rows_of_bulk(&sys, bulk_id).await,
        4,
        "one history row per applied order"
    );
    sys.stop().await;
}

// ---- 2. atomic --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_bulk_with_one_out_of_stock_order_changes_nothing() {
    let sys = TestSystem::start().await;
    let (customer, admin) = (Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok) = (sys.token("customer", customer), sys.token("admin", admin));
    // One unit of D for two orders: the second (in id order) would be out of stock, but
    // only after the first reserved it — the atomic run must undo that in memory.
    let sku_d = format!("D-{}", &Uuid::new_v4().simple().to_string()[..8]);
    sys.set_inventory(&atok, &sku_d, 1).await;
    let mut selected = vec![
        order_with(&sys, &ctok, one_of(&sku_d)).await,
        order_with(&sys, &ctok, one_of(&sku_d)).await,
        order_with(&sys, &ctok, untracked()).await,
        order_with(&sys, &ctok, untracked()).await,
    ];
    selected.sort();
    let control = order_with(&sys, &ctok, untracked()).await;
    apply_all(&sys, &atok, &selected, json!({"action": "mark_paid"})).await;
    // Every event so far is out: a queue bound now receives only what comes next.
    wait_outbox_drained(&sys, EVENT_DEADLINE).await;
    let mut downstream = sys.downstream_queue("order.status.#").await;

    let before = order_states(&sys, &selected).await;
    let outbox_before = max_outbox_id(&sys).await;
    let body = json!({"selection": {"order_ids": ids_json(&selected)}, "action": "confirm", "reason": "all or nothing", "mode": "atomic"});
    let preview = preview(&sys, &atok, &body["selection"], "confirm").await;
    assert_eq!(
        (n(&preview, "would_apply"), preview["would_reject"].clone()),
        (3, json!({"out_of_stock": 1})),
        "{preview}"
    );

    let (bulk_id, job_id) = submit_bulk(&sys, &atok, &body).await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "rejected", "{bulk}");
    assert_eq!(bulk["mode"], "atomic", "{bulk}");
    assert_eq!(bulk["error"]["code"], "atomic_rejected", "{bulk}");
    assert!(
        bulk["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{bulk}"
    );
    assert_counters_consistent(&bulk);
    assert_eq!(
        (
            n(&bulk, "total"),
            n(&bulk, "applied"),
            n(&bulk, "rejected"),
            n(&bulk, "skipped")
        ),
        (4, 0, 1, 3),
        "{bulk}"
    );
    let job = sys.wait_job(&atok, job_id).await;
    assert_eq!(job["status"], "rejected", "the bulk's job: {job}");

    // The report says which order and why; the others were not applied.
    let rows = results_json(&sys, &atok, bulk_id).await;
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

    // Nothing changed: no audit row, no change event, versions and stock as they were.
    assert_eq!(
        history_rows_of_bulk(&sys, bulk_id).await,
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
    assert_eq!(
        order_states(&sys, &selected).await,
        before,
        "orders changed"
    );
    assert_eq!(stock(&sys, &sku_d).await, (1, 0), "stock changed");

    // Nothing published: the next status event downstream is a later, unrelated change.
    sys.apply(
        &atok,
        control,
        &json!({"action": "mark_paid", "reason": "control"}),
    )
    .await;
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
    sys.set_inventory(&atok, &sku_d, 2).await;
    let (bulk_id, _) = submit_bulk(&sys, &atok, &json!({"selection": body["selection"], "action": "confirm", "reason": "retry", "mode": "atomic"})).await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
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
    assert_eq!(history_rows_of_bulk(&sys, bulk_id).await, 4);
    assert_eq!(stock(&sys, &sku_d).await, (2, 2));
    let mut seen = BTreeSet::new();
    while seen.len() < 4 {
        let msg = message_json(
            &downstream
                .expect_next("the successful atomic bulk's changes")
                .await,
        );
        assert_eq!(msg["bulk_id"], bulk_id.to_string(), "{msg}");
        assert_eq!(msg["to"], "confirmed", "{msg}");
        seen.insert(msg["order_id"].as_str().unwrap().to_owned());
    }
    sys.stop().await;
}

// ---- 3. export --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_export_lists_every_order_with_outcome_and_code() {
    let sys = TestSystem::start().await;
    let (customer, admin, support) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok, stok) = (
        sys.token("customer", customer),
        sys.token("admin", admin),
        sys.token("support", support),
    );
    let mut paid = Vec::new();
    let mut unpaid = Vec::new();
    for _ in 0..3 {
        paid.push(order_with(&sys, &ctok, untracked()).await);
    }
    for _ in 0..2 {
        unpaid.push(order_with(&sys, &ctok, untracked()).await);
    }
    let cancelled = order_with(&sys, &ctok, untracked()).await;
    let confirmed = order_with(&sys, &ctok, untracked()).await;
    let mut to_pay = paid.clone();
    to_pay.push(confirmed);
    apply_all(&sys, &atok, &to_pay, json!({"action": "mark_paid"})).await;
    sys.apply(&atok, confirmed, &json!({"action": "confirm"}))
        .await;
    sys.apply(&ctok, cancelled, &json!({"action": "cancel"}))
        .await;

    let mut selected: Vec<Uuid> = paid.iter().chain(&unpaid).copied().collect();
    selected.extend([cancelled, confirmed]);
    // The `to` form: each order's own action to reach `confirmed`, if there is one.
    let (bulk_id, _) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": {"order_ids": ids_json(&selected)}, "to": "confirmed", "reason": "confirm the batch", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "total"), n(&bulk, "applied"), n(&bulk, "rejected")),
        (7, 3, 4),
        "{bulk}"
    );

    let json_rows = results_json(&sys, &stok, bulk_id).await;
    let csv_rows = results_csv(&sys, &stok, bulk_id).await;
    let from_json: Vec<Row> = json_rows.iter().map(json_row).collect();
    assert_eq!(
        from_json, csv_rows,
        "the JSON and CSV exports hold the same rows in the same order"
    );

    // One row per selected order, no more, no less.
    let mut exported: Vec<Uuid> = from_json.iter().map(|r| r.0.parse().unwrap()).collect();
    exported.sort();
    let mut expected = selected.clone();
    expected.sort();
    assert_eq!(exported, expected, "one row per selected order");

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
    for row in &from_json {
        let id: Uuid = row.0.parse().unwrap();
        let (outcome, code, from, to) = expect[&id];
        assert_eq!(
            (
                row.1.as_str(),
                row.2.as_str(),
                row.3.as_str(),
                row.4.as_str()
            ),
            (outcome, code, from, to),
            "export row of order {id}"
        );
    }

    // The export of an unknown bulk, an unknown format; a finished bulk cannot be cancelled.
    sys.get(
        &format!("/orders/bulk/{}/results", Uuid::now_v7()),
        Some(&atok),
    )
    .await
    .expect_error(404, None, "results of an unknown bulk");
    sys.get(
        &format!("/orders/bulk/{bulk_id}/results?format=xml"),
        Some(&atok),
    )
    .await
    .expect_error(400, None, "results in an unknown format");
    sys.post(
        &format!("/orders/bulk/{bulk_id}/cancel"),
        Some(&atok),
        &json!({}),
    )
    .await
    .expect_error(409, Some("not_running"), "cancel a completed bulk");
    sys.stop().await;
}

/// Ids of an explicit selection that have no order are reported, not dropped: the preview
/// counts them, a best-effort bulk rejects them with `not_found` (and the rest moves), an
/// atomic bulk changes nothing because of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_ids_without_an_order_are_reported_not_found() {
    let sys = TestSystem::start().await;
    let customer = Uuid::new_v4();
    let (ctok, atok) = (
        sys.token("customer", customer),
        sys.token("admin", Uuid::new_v4()),
    );
    let real = order_with(&sys, &ctok, untracked()).await;
    let ghost = Uuid::now_v7();
    // The ghost is listed twice: an id is one item, however often it is given.
    let selection = json!({"order_ids": ids_json(&[real, ghost, ghost])});

    let preview = preview(&sys, &atok, &selection, "cancel").await;
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
        &sys,
        &atok,
        &json!({"selection": selection, "action": "cancel", "reason": "typo test", "mode": "atomic"}),
    )
    .await;
    let bulk = wait_bulk(&sys, &atok, atomic, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "rejected", "{bulk}");
    assert_eq!(sys.order(&atok, real).await["status"], "pending");

    // Best effort: the real order moves; the ghost is rejected with `not_found`.
    let (bulk_id, _) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": selection, "action": "cancel", "reason": "typo test", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "total"), n(&bulk, "applied"), n(&bulk, "rejected")),
        (2, 1, 1),
        "{bulk}"
    );
    let rows: BTreeMap<Uuid, Row> = results_json(&sys, &atok, bulk_id)
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
    assert_eq!(sys.order(&atok, real).await["status"], "cancelled");
    sys.stop().await;
}

/// An order confirmed while its sku was not stock-tracked holds no reservation; once the
/// sku is tracked, cancelling it must release nothing (and so not fail the bulk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_confirmed_before_its_sku_was_tracked_cancels_without_touching_stock() {
    let sys = TestSystem::start().await;
    let (customer, admin) = (Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok) = (sys.token("customer", customer), sys.token("admin", admin));
    let mut selected = Vec::new();
    for _ in 0..4 {
        selected.push(order_with(&sys, &ctok, untracked()).await);
    }
    let sku = format!("LATE-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let late = order_with(&sys, &ctok, one_of(&sku)).await;
    sys.apply(&atok, late, &json!({"action": "mark_paid"}))
        .await;
    sys.apply(&atok, late, &json!({"action": "confirm"})).await;
    sys.set_inventory(&atok, &sku, 5).await;
    selected.push(late);

    let (bulk_id, _) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": {"order_ids": ids_json(&selected)}, "action": "cancel", "reason": "close out", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "applied"), bulk["status"].as_str()),
        (5, Some("completed")),
        "{bulk}"
    );
    let states = order_states(&sys, &selected).await;
    assert!(
        states.values().all(|(s, _, _)| s == "cancelled"),
        "{states:?}"
    );
    assert_eq!(
        stock(&sys, &sku).await,
        (5, 0),
        "nothing was reserved for the late order, so nothing is released"
    );
    sys.stop().await;
}

/// An order the database refuses to write (a trigger here stands in for any defect) fails
/// alone: the other orders of its chunk move, and its item is reported `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unwritable_order_does_not_stop_a_best_effort_bulk() {
    let sys = TestSystem::start().await;
    let (customer, admin) = (Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok) = (sys.token("customer", customer), sys.token("admin", admin));
    let mut selected = Vec::new();
    for _ in 0..5 {
        selected.push(order_with(&sys, &ctok, untracked()).await);
    }
    let poisoned = selected[2];
    let refuse = format!(
        "create function refuse_one() returns trigger language plpgsql as $$
         begin raise exception 'test: order % cannot be written', new.id; end $$;
         create trigger refuse_one before update on orders for each row
           when (new.id = '{poisoned}') execute function refuse_one();"
    );
    sqlx::raw_sql(&refuse).execute(sys.db()).await.unwrap();

    let (bulk_id, _) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": {"order_ids": ids_json(&selected)}, "action": "mark_paid", "reason": "settlement", "mode": "best_effort"}),
    )
    .await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_counters_consistent(&bulk);
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_eq!((n(&bulk, "applied"), n(&bulk, "failed")), (4, 1), "{bulk}");
    let rows = results_json(&sys, &atok, bulk_id).await;
    for row in &rows {
        let id: Uuid = row["order_id"].as_str().unwrap().parse().unwrap();
        let want = if id == poisoned {
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
    let states = order_states(&sys, &selected).await;
    for (id, (_, payment, version)) in &states {
        let want = if *id == poisoned {
            ("unpaid", 1)
        } else {
            ("paid", 2)
        };
        assert_eq!((payment.as_str(), *version), want, "order {id}");
    }
    sys.stop().await;
}

// ---- 4. cancel --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_between_chunks_with_consistent_counters() {
    const CHUNK: i64 = 100;
    const TOTAL: usize = 3000;
    // 100 per chunk at 500 changes/s: after the first burst, five chunks a second, so the
    // whole bulk would take about five seconds.
    let sys =
        TestSystem::start_with_env(&[("BULK_CHUNK_SIZE", "100"), ("WORKER_RATE_BULK", "500")])
            .await;
    let (customer, admin) = (Uuid::new_v4(), Uuid::new_v4());
    let atok = sys.token("admin", admin);
    let ids = seed_orders(&sys, customer, TOTAL).await;

    let (bulk_id, job_id) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": {"filter": {"status": ["pending"], "payment_status": "unpaid"}}, "action": "mark_paid", "reason": "settlement file", "mode": "best_effort"}),
    )
    .await;
    // A second bulk waits in the queue behind it (one bulk at a time per worker).
    let (queued_id, queued_job) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": {"order_ids": ids_json(&ids[..10])}, "action": "mark_paid", "reason": "second file", "mode": "best_effort"}),
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
    assert_eq!(
        running["status"], "running",
        "cancel must find it running: {running}"
    );

    // Cancelling a queued bulk ends it at once.
    let queued = sys
        .post(
            &format!("/orders/bulk/{queued_id}/cancel"),
            Some(&atok),
            &json!({}),
        )
        .await
        .expect_status(200, "cancel a queued bulk")
        .body;
    assert_eq!(queued["status"], "cancelled", "{queued}");
    assert!(queued["finished_at"].is_string(), "{queued}");

    let answer = sys
        .post(
            &format!("/orders/bulk/{bulk_id}/cancel"),
            Some(&atok),
            &json!({}),
        )
        .await
        .expect_status(202, "cancel a running bulk");
    let at_cancel = answer.body;
    assert_eq!(at_cancel["status"], "running", "{at_cancel}");

    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(bulk["status"], "cancelled", "{bulk}");
    assert_counters_consistent(&bulk);
    let (total, applied, skipped) = (n(&bulk, "total"), n(&bulk, "applied"), n(&bulk, "skipped"));
    assert_eq!(total, TOTAL as i64, "{bulk}");
    assert_eq!((n(&bulk, "rejected"), n(&bulk, "failed")), (0, 0), "{bulk}");
    assert!(
        applied > 0 && applied < total,
        "it stopped part-way: {bulk}"
    );
    assert_eq!(applied % CHUNK, 0, "whole chunks only: {bulk}");
    // The cancel waited for the chunk in hand; no chunk started after it.
    assert_eq!(
        applied,
        n(&at_cancel, "applied"),
        "chunks applied after the cancel was answered: {at_cancel} then {bulk}"
    );
    assert_eq!(
        history_rows_of_bulk(&sys, bulk_id).await,
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

    let rows = results_json(&sys, &atok, bulk_id).await;
    assert_eq!(rows.len(), TOTAL, "one export row per order");
    let skipped_rows: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "skipped").collect();
    assert_eq!(
        skipped_rows.len() as i64,
        skipped,
        "skipped rows = skipped counter"
    );
    assert!(
        skipped_rows.iter().all(|r| r["code"] == "cancelled"),
        "skipped items carry code `cancelled`"
    );
    // Applied rows are a prefix of the selection (chunks go in id order).
    let applied_rows = rows
        .iter()
        .take_while(|r| r["outcome"] == "applied")
        .count() as i64;
    assert_eq!(
        applied_rows, applied,
        "applied rows come first, in position order"
    );
    let job = sys.wait_job(&atok, job_id).await;
    assert_eq!(job["status"], "cancelled", "the bulk's job: {job}");

    // The queued bulk, reached by the worker afterwards, never started.
    let job = sys.wait_job(&atok, queued_job).await;
    assert_eq!(job["status"], "cancelled", "the queued bulk's job: {job}");
    let queued = read_bulk(&sys, &atok, queued_id).await;
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
    assert_eq!(history_rows_of_bulk(&sys, queued_id).await, 0);
    sys.stop().await;
}

// ---- 5. crash ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_bulk_resumes_with_every_order_applied_once() {
    const TOTAL: usize = 2000;
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

    // Every order exactly once.
    assert_eq!(
        history_rows_of_bulk(&sys, bulk_id).await,
        TOTAL as i64,
        "history rows with this bulk_id = applied"
    );
    let twice: i64 = sqlx::query_scalar(
        "select count(*) from (select order_id from order_status_history where bulk_id = $1 group by order_id having count(*) > 1) t",
    )
    .bind(bulk_id)
    .fetch_one(sys.db())
    .await
    .unwrap();
    assert_eq!(twice, 0, "orders with two history rows for this bulk");
    let states = order_states(&sys, &ids).await;
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
    let events: i64 = sqlx::query_scalar(
        "select count(*) from outbox where event_type = 'order.status_changed' and payload->>'bulk_id' = $1::text",
    )
    .bind(bulk_id)
    .fetch_one(sys.db())
    .await
    .unwrap();
    assert_eq!(events, TOTAL as i64, "one change event per order");

    // It resumed rather than restarted: the job was claimed by both lives, and the
    // progress events' applied counts never go back.
    let attempts = scalar(
        &sys,
        "select attempts::bigint from jobs where id = $1",
        job_id,
    )
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
    sys.stop().await;
}

// ---- 6. progress on SSE -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_reach_admin_sse_and_not_customers() {
    let sys = TestSystem::start().await;
    let (customer, admin, support) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok, stok) = (
        sys.token("customer", customer),
        sys.token("admin", admin),
        sys.token("support", support),
    );
    // The bulk is about the customer's own orders: it may see their changes, not the bulk.
    let mut own = Vec::new();
    for _ in 0..3 {
        own.push(order_with(&sys, &ctok, untracked()).await);
    }
    let marker = order_with(&sys, &ctok, untracked()).await;
    let mut admin_stream = sys
        .sse_connect("/orders/events/subscribe", Some(&atok), None)
        .await;
    let mut support_stream = sys
        .sse_connect("/orders/events/subscribe", Some(&stok), None)
        .await;
    let mut customer_stream = sys
        .sse_connect("/orders/events/subscribe", Some(&ctok), None)
        .await;

    let (bulk_id, _) = submit_bulk(
        &sys,
        &atok,
        &json!({"selection": {"order_ids": ids_json(&own)}, "action": "mark_paid", "reason": "settled", "mode": "best_effort"}),
    )
    .await;
    let done = |e: &SseEvent| {
        e.kind() == "bulk.progress"
            && e.json()["bulk_id"] == bulk_id.to_string()
            && e.json()["status"] == "completed"
    };
    for (who, stream) in [
        ("admin", &mut admin_stream),
        ("support", &mut support_stream),
    ] {
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
        let changes = seen
            .iter()
            .filter(|e| {
                e.kind() == "order.status_changed" && e.json()["bulk_id"] == bulk_id.to_string()
            })
            .count();
        assert_eq!(changes, 3, "{who} sees the bulk's changes too: {seen:#?}");
    }
    let bulk = read_bulk(&sys, &atok, bulk_id).await;
    assert_eq!(bulk["status"], "completed", "{bulk}");

    // The customer: its own orders' changes, then the marker — and no bulk.progress.
    sys.apply(
        &ctok,
        marker,
        &json!({"action": "cancel", "reason": "marker"}),
    )
    .await;
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
    let own_changes = seen
        .iter()
        .filter(|e| {
            e.kind() == "order.status_changed" && e.json()["bulk_id"] == bulk_id.to_string()
        })
        .count();
    assert_eq!(
        own_changes, 3,
        "the customer sees its own orders' bulk changes: {seen:#?}"
    );
    // Nor in a replay from the start.
    let mut replayed = sys
        .sse_connect("/orders/events/subscribe", Some(&ctok), Some(0))
        .await;
    let seen = replayed.collect_until(is_marker, EVENT_DEADLINE).await;
    assert!(
        seen.iter().all(|e| e.kind() != "bulk.progress"),
        "a customer's replay carried bulk.progress: {seen:#?}"
    );
    let mut replayed = sys
        .sse_connect("/orders/events/subscribe", Some(&atok), Some(0))
        .await;
    let seen = replayed.collect_until(is_marker, EVENT_DEADLINE).await;
    assert!(
        seen.iter().any(done),
        "the admin's replay carries the bulk's progress: {seen:#?}"
    );
    sys.stop().await;
}

// ---- 7. rights and input ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_may_filter_preview_and_read_but_not_apply_and_customers_nothing() {
    let sys = TestSystem::start().await;
    let (customer, admin, support) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok, stok) = (
        sys.token("customer", customer),
        sys.token("admin", admin),
        sys.token("support", support),
    );
    let order = order_with(&sys, &ctok, untracked()).await;
    let selection = json!({"order_ids": [order.to_string()]});
    let change = json!({"selection": selection, "action": "mark_paid", "reason": "settled", "mode": "best_effort"});
    let (bulk_id, _) = submit_bulk(&sys, &atok, &change).await;
    wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;

    let filter = json!({"selection": selection});
    let preview = json!({"selection": selection, "action": "mark_paid"});
    let bulk_path = format!("/orders/bulk/{bulk_id}");
    let results_path = format!("/orders/bulk/{bulk_id}/results");
    let cancel_path = format!("/orders/bulk/{bulk_id}/cancel");

    // Support: filter, preview, read, results; not apply, not cancel.
    sys.post("/orders/bulk/filter", Some(&stok), &filter)
        .await
        .expect_status(200, "support filters");
    sys.post("/orders/bulk/preview", Some(&stok), &preview)
        .await
        .expect_status(200, "support previews");
    sys.get(&bulk_path, Some(&stok))
        .await
        .expect_status(200, "support reads a bulk");
    sys.get(&results_path, Some(&stok))
        .await
        .expect_status(200, "support exports results");
    let bulks_before = table_count(&sys, "bulk_operations").await;
    post_bulk(&sys, &stok, &change, None).await.expect_error(
        403,
        Some("forbidden_role"),
        "support applies",
    );
    sys.post(&cancel_path, Some(&stok), &json!({}))
        .await
        .expect_error(403, Some("forbidden_role"), "support cancels");

    // Customers: nothing, not even about their own orders.
    sys.post("/orders/bulk/filter", Some(&ctok), &filter)
        .await
        .expect_error(403, Some("forbidden_role"), "customer filters");
    sys.post("/orders/bulk/preview", Some(&ctok), &preview)
        .await
        .expect_error(403, Some("forbidden_role"), "customer previews");
    post_bulk(&sys, &ctok, &change, None).await.expect_error(
        403,
        Some("forbidden_role"),
        "customer applies",
    );
    sys.get(&bulk_path, Some(&ctok)).await.expect_error(
        403,
        Some("forbidden_role"),
        "customer reads a bulk",
    );
    sys.get(&results_path, Some(&ctok)).await.expect_error(
        403,
        Some("forbidden_role"),
        "customer exports results",
    );
    sys.post(&cancel_path, Some(&ctok), &json!({}))
        .await
        .expect_error(403, Some("forbidden_role"), "customer cancels");
    // No token at all.
    post_bulk(&sys, "not-a-token", &change, None)
        .await
        .expect_error(401, None, "garbage token applies");
    sys.get(&bulk_path, None)
        .await
        .expect_error(401, None, "anonymous read");

    // Unknown and malformed ids.
    sys.get(&format!("/orders/bulk/{}", Uuid::now_v7()), Some(&atok))
        .await
        .expect_error(404, None, "unknown bulk");
    sys.get("/orders/bulk/not-a-uuid", Some(&atok))
        .await
        .expect_error(400, None, "malformed bulk id");
    sys.post(
        &format!("/orders/bulk/{}/cancel", Uuid::now_v7()),
        Some(&atok),
        &json!({}),
    )
    .await
    .expect_error(404, None, "cancel an unknown bulk");

    // Bad input: 400 in the error format, and nothing created.
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
    let bad_updates = [
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
    ];
    let (bulks, jobs) = (
        table_count(&sys, "bulk_operations").await,
        table_count(&sys, "jobs").await,
    );
    assert_eq!(bulks, bulks_before, "a refused request created a bulk");
    for (what, body) in &bad_updates {
        post_bulk(&sys, &atok, body, None).await.expect_error(
            400,
            None,
            &format!("status-update with {what}: {body}"),
        );
    }
    let malformed = sys
        .request(Method::POST, "/orders/bulk/status-update", Some(&atok))
        .header("content-type", "application/json")
        .body("{\"selection\": ")
        .send()
        .await
        .unwrap();
    Answer::read(malformed)
        .await
        .expect_error(400, None, "malformed JSON");
    let bad_previews = [
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
    ];
    for (what, body) in &bad_previews {
        sys.post("/orders/bulk/preview", Some(&stok), body)
            .await
            .expect_error(400, None, &format!("preview with {what}"));
    }
    for (what, body) in [
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
            json!({"selection": {"order_ids": [id], "filter": {}}}),
        ),
    ] {
        sys.post("/orders/bulk/filter", Some(&stok), &body)
            .await
            .expect_error(400, None, &format!("filter with {what}"));
    }
    sys.get(&format!("{results_path}?format=xml"), Some(&stok))
        .await
        .expect_error(400, None, "results format xml");
    assert_eq!(
        table_count(&sys, "bulk_operations").await,
        bulks,
        "refused requests created bulks"
    );
    assert_eq!(
        table_count(&sys, "jobs").await,
        jobs,
        "refused requests created jobs"
    );
    let bulk = read_bulk(&sys, &atok, bulk_id).await;
    assert_eq!(
        bulk["cancel_requested"], false,
        "a refused cancel changed the bulk: {bulk}"
    );
    sys.stop().await;
}

// ---- 8. idempotency ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_bulk() {
    let sys = TestSystem::start().await;
    let (customer, admin, other_admin) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok, otok) = (
        sys.token("customer", customer),
        sys.token("admin", admin),
        sys.token("admin", other_admin),
    );
    let orders = [
        order_with(&sys, &ctok, untracked()).await,
        order_with(&sys, &ctok, untracked()).await,
    ];
    let body = json!({"selection": {"order_ids": ids_json(&orders)}, "action": "mark_paid", "reason": "settlement 7", "mode": "best_effort"});
    let key = format!("settlement-{}", Uuid::new_v4());

    let first = post_bulk(&sys, &atok, &body, Some(&key))
        .await
        .expect_status(202, "first submission");
    let bulk_id = uuid_of(&first.body, "bulk_id");
    let job_id = uuid_of(&first.body, "job_id");
    // A repeat (even a changed body) by the same admin answers with the first bulk.
    let mut changed = body.clone();
    changed["reason"] = json!("settlement 7, resent");
    for (what, repeat) in [("same body", &body), ("changed body", &changed)] {
        let again = post_bulk(&sys, &atok, repeat, Some(&key))
            .await
            .expect_status(200, &format!("repeat ({what})"));
        assert_eq!(
            uuid_of(&again.body, "bulk_id"),
            bulk_id,
            "{what}: {}",
            again.body
        );
        assert_eq!(
            uuid_of(&again.body, "job_id"),
            job_id,
            "{what}: {}",
            again.body
        );
        assert!(
            again
                .header("location")
                .unwrap_or_default()
                .ends_with(&format!("/orders/bulk/{bulk_id}")),
            "{what}: Location {:?}",
            again.header("location")
        );
    }
    let bulk = wait_bulk(&sys, &atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(
        (bulk["status"].as_str(), n(&bulk, "applied")),
        (Some("completed"), 2),
        "{bulk}"
    );
    // Still the first bulk after it finished.
    let late = post_bulk(&sys, &atok, &body, Some(&key))
        .await
        .expect_status(200, "repeat after completion");
    assert_eq!(uuid_of(&late.body, "bulk_id"), bulk_id, "{}", late.body);
    assert_eq!(late.body["status"], "completed", "{}", late.body);

    assert_eq!(
        scalar(
            &sys,
            "select count(*) from jobs where bulk_id = $1",
            bulk_id
        )
        .await,
        1,
        "one job for the bulk"
    );
    assert_eq!(
        history_rows_of_bulk(&sys, bulk_id).await,
        2,
        "each order changed once"
    );
    for order in orders {
        let rows = sys.history(&atok, order).await;
        assert_eq!(rows.len(), 2, "create + one mark_paid: {rows:#?}");
        assert_eq!(rows[1]["bulk_id"], bulk_id.to_string(), "{rows:#?}");
        assert_eq!(
            rows[1]["reason"], "settlement 7",
            "the first request's reason: {rows:#?}"
        );
    }

    // The key is per actor: another admin with the same key gets its own bulk.
    let theirs = post_bulk(&sys, &otok, &body, Some(&key))
        .await
        .expect_status(202, "another admin, same key");
    let their_id = uuid_of(&theirs.body, "bulk_id");
    assert_ne!(their_id, bulk_id);
    let bulk = wait_bulk(&sys, &otok, their_id, JOB_DEADLINE).await;
    assert_eq!(
        (n(&bulk, "applied"), n(&bulk, "rejected")),
        (0, 2),
        "already paid: {bulk}"
    );
    let keyed: i64 =
        sqlx::query_scalar("select count(*) from bulk_operations where idempotency_key = $1")
            .bind(&key)
            .fetch_one(sys.db())
            .await
            .unwrap();
    assert_eq!(keyed, 2, "one bulk per (actor, key)");
    post_bulk(&sys, &atok, &body, Some("")).await.expect_error(
        400,
        None,
        "an empty Idempotency-Key",
    );
    sys.stop().await;
}

// ---- 9. scale ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_of_many_orders_completes() {
    const TOTAL: usize = 5000;
    let sys = TestSystem::start().await;
    let (customer, admin, support) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (atok, stok) = (sys.token("admin", admin), sys.token("support", support));
    let ids = seed_orders(&sys, customer, TOTAL).await;
    let selection = json!({"filter": {"status": ["pending"], "payment_status": "unpaid"}});

    // The filter pages through all of them (keyset, id order) with the total on every page.
    let mut listed = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = sys
            .post(
                "/orders/bulk/filter",
                Some(&stok),
                &json!({"selection": selection, "limit": 1000, "cursor": cursor}),
            )
            .await
            .expect_status(200, "filter page")
            .body;
        assert_eq!(n(&page, "total"), TOTAL as i64, "total on every page");
        listed.extend(page["orders"].as_array().unwrap().iter().map(order_id));
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
        assert!(
            listed.len() < TOTAL + 1000,
            "the pages never end: {} listed",
            listed.len()
        );
    }
    assert_eq!(listed, ids, "every order once, in id order");

    let preview = preview(&sys, &stok, &selection, "mark_paid").await;
    assert_eq!(
        (n(&preview, "matched"), n(&preview, "would_apply")),
        (TOTAL as i64, TOTAL as i64),
        "{preview}"
    );

    let started = Instant::now();
    let (bulk_id, _) = submit_bulk(&sys, &atok, &json!({"selection": selection, "action": "mark_paid", "reason": "settlement", "mode": "best_effort"})).await;
    let bulk = wait_bulk(&sys, &atok, bulk_id, Duration::from_secs(40)).await;
    let committed = started.elapsed();
    assert_eq!(bulk["status"], "completed", "{bulk}");
    assert_counters_consistent(&bulk);
    assert_eq!(
        (n(&bulk, "total"), n(&bulk, "applied")),
        (TOTAL as i64, TOTAL as i64),
        "{bulk}"
    );
    assert_eq!(
        history_rows_of_bulk(&sys, bulk_id).await,
        TOTAL as i64,
        "one history row per order"
    );
    let events: i64 = sqlx::query_scalar(
        "select count(*) from outbox where event_type = 'order.status_changed' and payload->>'bulk_id' = $1::text",
    )
    .bind(bulk_id)
    .fetch_one(sys.db())
    .await
    .unwrap();
    assert_eq!(events, TOTAL as i64, "one change event per order");
    wait_outbox_drained(&sys, Duration::from_secs(30)).await;
    let published = started.elapsed();
    eprintln!("bulk of {TOTAL}: committed in {committed:?}, published in {published:?}");
    let rows = results_json(&sys, &atok, bulk_id).await;
    assert_eq!(rows.len(), TOTAL);
    assert!(
        rows.iter().all(|r| r["outcome"] == "applied"),
        "every row applied"
    );
    sys.stop().await;
}
