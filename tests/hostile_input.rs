//! Hostile bodies, as an attacker sends them: fields the server owns cannot be set (the
//! request is refused and changes nothing), and a body over 64 KiB is 413 whether or not
//! it announces its length.

use futures::stream;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Answer, TestSystem};

/// Row counts of every table a request could write.
async fn row_counts(sys: &TestSystem) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in [
        "orders",
        "order_items",
        "jobs",
        "order_status_history",
        "outbox",
    ] {
        counts.push((table, sys.table_count(table).await));
    }
    counts
}

/// A valid order body of one item with `field` set to `value`.
fn order_with(field: &str, value: Value) -> Value {
    let mut body = json!({"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1000}]});
    body[field] = value;
    body
}

/// `POST /orders` bodies that set what the server owns (or break its arithmetic), by whom,
/// and the answer each must get.
fn refused_creations(customer: Uuid) -> Vec<(&'static str, Value, u16, &'static str)> {
    let refused = |who, body| (who, body, 400, "invalid_request");
    vec![
        refused("customer", order_with("status", json!("delivered"))),
        refused("customer", order_with("total_cents", json!(1))),
        refused("customer", order_with("version", json!(99))),
        refused("customer", order_with("payment_status", json!("paid"))),
        refused("customer", order_with("id", json!(Uuid::new_v4()))),
        refused(
            "customer",
            order_with("created_at", json!("2000-01-01T00:00:00Z")),
        ),
        refused("customer", order_with("customer_id", json!(Uuid::new_v4()))),
        // Its own id is no better: customers never name a customer.
        refused("customer", order_with("customer_id", json!(customer))),
        refused("admin", order_with("status", json!("shipped"))),
        refused("admin", order_with("payment_status", json!("paid"))),
        (
            "support",
            order_with("customer_id", json!(customer)),
            403,
            "forbidden_role",
        ),
        refused(
            "customer",
            json!({"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1000, "total_cents": 1}]}),
        ),
        refused(
            "customer",
            json!({"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": -1000}]}),
        ),
        refused(
            "customer",
            json!({"items": [{"sku": "SKU-1", "quantity": 0, "unit_price_cents": 1000}]}),
        ),
        refused(
            "customer",
            json!({"items": [{"sku": "SKU-1", "quantity": 2_147_483_648_i64, "unit_price_cents": 1}]}),
        ),
        // Each line is within bounds; the sum overflows a 64-bit total.
        refused(
            "customer",
            json!({"items": (0..10).map(|n| json!({"sku": format!("SKU-{n}"), "quantity": 1_000_000, "unit_price_cents": 1_000_000_000_000_i64})).collect::<Vec<_>>()}),
        ),
    ]
}

/// Change-status bodies that set what the server owns, by whom (each must be 400).
fn refused_changes(customer: Uuid) -> Vec<(&'static str, Value)> {
    vec![
        ("admin", json!({"action": "mark_paid", "status": "paid"})),
        ("admin", json!({"action": "mark_paid", "version": 7})),
        (
            "admin",
            json!({"action": "mark_paid", "customer_id": Uuid::new_v4()}),
        ),
        ("admin", json!({"action": "mark_paid", "total_cents": 0})),
        (
            "admin",
            json!({"action": "mark_paid", "payment_status": "paid"}),
        ),
        ("admin", json!({"status": "shipped"})),
        (
            "customer",
            json!({"action": "cancel", "customer_id": customer}),
        ),
        (
            "customer",
            json!({"action": "cancel", "status": "cancelled"}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_setting_server_owned_fields_is_refused_and_creates_nothing() {
    let sys = TestSystem::start().await;
    let customer = Uuid::new_v4();
    let ctok = sys.token("customer", customer);
    let atok = sys.token("admin", Uuid::new_v4());
    let stok = sys.token("support", Uuid::new_v4());
    let token = |who: &str| match who {
        "customer" => &ctok,
        "admin" => &atok,
        _ => &stok,
    };
    let order = sys.create_simple_order(&ctok).await;
    let before = row_counts(&sys).await;
    let mut failures = Vec::new();

    for (who, body, status, code) in &refused_creations(customer) {
        let answer = sys.post("/orders", Some(token(who)), body).await;
        if answer.status.as_u16() != *status || answer.code() != Some(code) {
            failures.push(format!(
                "{who} POST /orders {body}: expected {status} {code}, got {} {}",
                answer.status, answer.body
            ));
        }
    }
    for (who, body) in &refused_changes(customer) {
        let answer = sys
            .change_status(token(who), order, body, &[("Prefer", "wait=5")])
            .await;
        if answer.status.as_u16() != 400 || answer.code() != Some("invalid_request") {
            failures.push(format!(
                "{who} change-status {body}: expected 400 invalid_request, got {} {}",
                answer.status, answer.body
            ));
        }
    }

    let after = row_counts(&sys).await;
    if after != before {
        failures.push(format!(
            "refused requests wrote rows: before {before:?}, after {after:?}"
        ));
    }
    let current = sys.order(&atok, order).await;
    if current["status"] != "pending"
        || current["payment_status"] != "unpaid"
        || current["version"] != 1
    {
        failures.push(format!("the order changed: {current}"));
    }

    // The control: admin may name the customer, and the server sets everything else.
    let other = Uuid::new_v4();
    let created = sys
        .post(
            "/orders",
            Some(&atok),
            &order_with("customer_id", json!(other)),
        )
        .await
        .expect_status(201, "admin creates an order for a customer")
        .body;
    assert_eq!(created["customer_id"], other.to_string(), "{created}");
    assert_eq!(created["total_cents"], 1000, "{created}");

    sys.stop().await;
    assert!(
        failures.is_empty(),
        "server-owned fields were settable:\n{}",
        failures.join("\n")
    );
}

/// A valid order body whose only fault may be its size: JSON whitespace pads it to `size` bytes.
fn padded_order(size: usize) -> String {
    let body =
        json!({"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1000}]}).to_string();
    let padding = size.checked_sub(body.len()).expect("size fits the body");
    format!("{}{}", " ".repeat(padding), body)
}

const BODY_LIMIT: usize = 64 * 1024;

/// Sends an oversized request until an answer arrives. The server answers 413 as soon as it
/// has read 64 KiB and closes the connection without reading the rest, so the client may
/// see its write fail (broken pipe, reset) instead of the answer; such tries are repeated
/// (their count is printed). Panics if no try gets an answer.
async fn answer_to_oversized(what: &str, make: impl Fn() -> reqwest::RequestBuilder) -> Answer {
    let mut transport_errors = Vec::new();
    for _ in 0..10 {
        let resp = match make().send().await {
            Ok(resp) => resp,
            Err(e) => {
                transport_errors.push(format!("{e:?}"));
                continue;
            }
        };
        let (status, headers) = (resp.status(), resp.headers().clone());
        match resp.text().await {
            Ok(text) => {
                if !transport_errors.is_empty() {
                    eprintln!(
                        "{what}: {} tries lost their answer to a closed connection: {transport_errors:#?}",
                        transport_errors.len()
                    );
                }
                return Answer::parsed(status, headers, text);
            }
            Err(e) => transport_errors.push(format!("reading the answer: {e:?}")),
        }
    }
    panic!("{what}: no answer in 10 tries: {transport_errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413_and_creates_nothing() {
    let sys = TestSystem::start().await;
    let ctok = sys.token("customer", Uuid::new_v4());
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;
    let post = |path: &str, token: &str, body: reqwest::Body| {
        sys.request(Method::POST, path, Some(token))
            .header("content-type", "application/json")
            .body(body)
    };

    // The control: the same body just under the limit is a fine order.
    let under = post("/orders", &ctok, padded_order(BODY_LIMIT - 1024).into());
    sys.send(under, "POST /orders just under 64 KiB")
        .await
        .expect_status(201, "POST /orders just under 64 KiB");
    let before = row_counts(&sys).await;

    answer_to_oversized("POST /orders over 64 KiB", || {
        post("/orders", &ctok, padded_order(BODY_LIMIT + 4096).into())
    })
    .await
    .expect_error(
        413,
        Some("payload_too_large"),
        "POST /orders over 64 KiB with Content-Length",
    );

    // Without Content-Length (chunked), the server must count what it reads.
    answer_to_oversized("POST /orders chunked", || {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = padded_order(4 * BODY_LIMIT)
            .into_bytes()
            .chunks(8 * 1024)
            .map(|c| Ok(c.to_vec()))
            .collect();
        post(
            "/orders",
            &ctok,
            reqwest::Body::wrap_stream(stream::iter(chunks)),
        )
    })
    .await
    .expect_error(
        413,
        Some("payload_too_large"),
        "POST /orders over 64 KiB, chunked",
    );

    let path = format!("/orders/{order}/change-status");
    answer_to_oversized("change-status over 64 KiB", || {
        post(
            &path,
            &atok,
            format!(
                "{}{}",
                " ".repeat(BODY_LIMIT + 4096),
                json!({"action": "mark_paid"})
            )
            .into(),
        )
    })
    .await
    .expect_error(413, Some("payload_too_large"), "change-status over 64 KiB");

    let after = row_counts(&sys).await;
    sys.stop().await;
    assert_eq!(after, before, "oversized requests wrote rows");
}

/// Inputs that used to escape the contract's error shape (a 500 from Postgres, a bare 405).
fn escapes(order: Uuid) -> Vec<(Method, String, Option<Value>, u16, &'static str)> {
    let change = format!("/orders/{order}/change-status");
    let bulk =
        json!({"selection": {"order_ids": [order]}, "action": "cancel", "mode": "best_effort"});
    let mut bulk_nul = bulk.clone();
    bulk_nul["reason"] = json!("bulk\u{0}reason");
    vec![
        (
            Method::POST,
            change.clone(),
            Some(json!({"action": "cancel", "reason": "a\u{0}b"})),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            change,
            Some(json!({"action": "ship", "tracking_number": "1Z\u{0}9"})),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/orders/bulk/status-update".into(),
            Some(bulk_nul),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/inventory/a%00b".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/inventory/a%00b".into(),
            Some(json!({"on_hand": 1})),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/admin/jobs?error_code=a%00b".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::DELETE,
            format!("/orders/{order}"),
            None,
            405,
            "method_not_allowed",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_bad_skus_and_unsupported_methods_get_the_error_shape() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&atok).await;
    let before = row_counts(&sys).await;
    let mut failures = Vec::new();
    for (method, path, body, status, code) in escapes(order) {
        let mut req = sys.request(method.clone(), &path, Some(&atok));
        if let Some(body) = &body {
            req = req.json(body);
        }
        let answer = sys.send(req, &format!("{method} {path}")).await;
        let shaped = answer.body["error"]["message"].is_string();
        if answer.status.as_u16() != status || answer.code() != Some(code) || !shaped {
            failures.push(format!(
                "{method} {path} {body:?}: expected {status} {code}, got {} {}",
                answer.status, answer.body
            ));
        }
        if status == 405 && answer.header("allow").is_none_or(|a| !a.contains("GET")) {
            failures.push(format!(
                "{method} {path}: 405 without an Allow header naming GET"
            ));
        }
    }
    assert_eq!(
        row_counts(&sys).await,
        before,
        "refused requests wrote rows"
    );
    sys.stop().await;
    assert!(
        failures.is_empty(),
        "outside the contract:\n{}",
        failures.join("\n")
    );
}
