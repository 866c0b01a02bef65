//! Bulk operations: a preview that tells the truth, background runs over the same state
//! machine in chunks, atomic all-or-nothing, results export, cancel between chunks,
//! resumption after a crash with no order changed twice, progress on staff SSE streams
//! only, rights, idempotency, and no cap on the number of orders.
//!
//! Large selections are seeded straight into the database (creating thousands of orders
//! over HTTP would measure the ingress, not the bulk); everything else goes through the API.
//! This module is the bulk API's client; each submodule one guarantee.

mod atomic;
mod best_effort;
mod cancel;
mod idempotency;
mod in_flight;
mod preview;
mod progress;
mod resume;
mod rights;
mod scale;

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Answer, TestSystem, uuid_of, wait};

const BULK_STATUSES_TERMINAL: [&str; 4] = ["completed", "rejected", "cancelled", "failed"];

/// `POST /orders/bulk/status-update`, optionally with an Idempotency-Key.
async fn post_bulk(sys: &TestSystem, token: &str, body: &Value, key: Option<&str>) -> Answer {
    let mut req = sys
        .request(Method::POST, "/orders/bulk/status-update", Some(token))
        .json(body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    sys.send(req, "POST /orders/bulk/status-update").await
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
    wait::expect_within(within, &format!("bulk {bulk_id}: {what}"), || async {
        let bulk = read_bulk(sys, token, bulk_id).await;
        if pred(&bulk) {
            Ok(bulk)
        } else {
            Err(bulk.to_string())
        }
    })
    .await
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

async fn history_rows_of_bulk(sys: &TestSystem, bulk_id: Uuid) -> i64 {
    sys.count(
        "select count(*) from order_status_history where bulk_id = $1",
        bulk_id,
    )
    .await
}

/// `order.status_changed` outbox rows of this bulk.
async fn change_events_of_bulk(sys: &TestSystem, bulk_id: Uuid) -> i64 {
    sys.count(
        "select count(*) from outbox where event_type = 'order.status_changed' and payload->>'bulk_id' = $1::text",
        bulk_id,
    )
    .await
}

/// (status, payment_status, version) of each order.
type States = BTreeMap<Uuid, (String, String, i64)>;

async fn order_states(sys: &TestSystem, ids: &[Uuid]) -> States {
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
    uuid_of(&sys.create_order(ctok, items).await, "id")
}

fn untracked() -> Value {
    json!([{"sku": format!("U-{}", &Uuid::new_v4().simple().to_string()[..10]), "quantity": 1, "unit_price_cents": 500}])
}

fn one_of(sku: &str) -> Value {
    json!([{"sku": sku, "quantity": 1, "unit_price_cents": 700}])
}

/// A tracked sku name with this prefix, unique to the test.
fn sku(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// `count` untracked orders of the token's customer.
async fn orders(sys: &TestSystem, ctok: &str, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(order_with(sys, ctok, untracked()).await);
    }
    ids
}

/// Applies single changes concurrently, each waited for (and asserted) to succeed.
async fn apply_all(sys: &TestSystem, token: &str, ids: &[Uuid], body: Value) {
    join_all(ids.iter().map(|id| sys.apply(token, *id, &body))).await;
}

/// A system with tokens for one customer, an admin and a support agent.
struct Staffed {
    sys: TestSystem,
    customer: Uuid,
    ctok: String,
    atok: String,
    stok: String,
}

async fn staffed() -> Staffed {
    staffed_with_env(&[]).await
}

async fn staffed_with_env(env: &[(&str, &str)]) -> Staffed {
    let sys = TestSystem::start_with_env(env).await;
    let customer = Uuid::new_v4();
    Staffed {
        ctok: sys.token("customer", customer),
        atok: sys.token("admin", Uuid::new_v4()),
        stok: sys.token("support", Uuid::new_v4()),
        customer,
        sys,
    }
}
