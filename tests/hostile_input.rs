//! Hostile input, as an attacker sends it: forged or malformed tokens are 401; another
//! customer's orders and jobs look exactly like ones that do not exist; bodies that try to
//! set server-owned fields are refused and change nothing; oversized bodies are 413; list
//! limits are capped and a cursor walk sees each row once. (No token, expired, wrong
//! secret, `alg: none` and missing `exp` are covered in rejections.rs.)

use crate::harness::*;
use futures::stream;
use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use uuid::Uuid;

/// The claims a valid token carries, for hand-made tokens to vary.
fn claims(sub: Uuid, role: &str) -> Value {
    json!({"sub": sub.to_string(), "role": role, "exp": unix_now() + 3600, "iat": unix_now()})
}

fn header(alg: &str) -> Value {
    json!({"alg": alg, "typ": "JWT"})
}

/// An RSA public key as an attacker finds it published. The classic confusion signs HS256
/// with these bytes as the HMAC secret, hoping the server verifies with "its key".
const RSA_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u
+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh
kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ
0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg
cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc
mwIDAQAB
-----END PUBLIC KEY-----
";

/// A system with one customer's order, and that customer's id; checks first that a token
/// built by hand the way the cases are (correct header and claims) is accepted, so that the
/// cases' 401s are about what each case changes.
async fn system_with_order() -> (TestSystem, Uuid, Uuid) {
    let sys = TestSystem::start().await;
    let sub = Uuid::new_v4();
    let order = sys.create_simple_order(&sys.token("customer", sub)).await;
    let control = sys.token_with(Algorithm::HS256, &header("HS256"), &claims(sub, "customer"));
    sys.get(&format!("/orders/{order}"), Some(&control))
        .await
        .expect_status(200, "control: a hand-made HS256 token with valid claims");
    (sys, sub, order)
}

/// Sends each token to an order read, the order list, a change (which would queue a job) and
/// the event stream; every answer must be a shaped 401 `unauthorized`, and no job queued.
/// The order exists and belongs to the token's subject, so anything but 401 means the token
/// got through. Stops the system.
async fn expect_refused_everywhere(sys: TestSystem, order: Uuid, cases: Vec<(&str, String)>) {
    let mut failures = Vec::new();
    for (case, token) in &cases {
        let requests = [
            (
                "GET /orders/{id}",
                sys.request(Method::GET, &format!("/orders/{order}"), Some(token)),
            ),
            (
                "GET /orders",
                sys.request(Method::GET, "/orders", Some(token)),
            ),
            (
                "POST /orders/{id}/change-status",
                sys.request(
                    Method::POST,
                    &format!("/orders/{order}/change-status"),
                    Some(token),
                )
                .json(&json!({"action": "cancel"})),
            ),
            (
                "GET /orders/events/subscribe",
                sys.request(Method::GET, "/orders/events/subscribe", Some(token)),
            ),
        ];
        for (what, request) in requests {
            let answer = Answer::read(request.send().await.expect("sending")).await;
            let has_message = answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty());
            if answer.status.as_u16() != 401
                || answer.code() != Some("unauthorized")
                || !has_message
            {
                failures.push(format!(
                    "{case}, {what}: expected 401 unauthorized, got {} {}",
                    answer.status, answer.body
                ));
            }
        }
    }
    let jobs = sys.jobs_of_order(order).await;
    if jobs != 0 {
        failures.push(format!("{jobs} jobs were queued with refused tokens"));
    }
    sys.stop().await;
    assert!(
        failures.is_empty(),
        "401 contract broken:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signed_for_another_algorithm_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let admin = claims(sub, "admin");
    let cases = vec![
        (
            "header RS256, HMAC-signed with the server's secret",
            sys.token_with(Algorithm::HS256, &header("RS256"), &admin),
        ),
        (
            "header HS512, HS256-signed with the server's secret",
            sys.token_with(Algorithm::HS256, &header("HS512"), &admin),
        ),
        (
            "HS512, validly signed with the server's secret",
            sys.token_with(Algorithm::HS512, &header("HS512"), &admin),
        ),
        (
            "HS256 signed with an RSA public key as the HMAC secret",
            jwt_signed_with(
                RSA_PUBLIC_KEY_PEM.as_bytes(),
                Algorithm::HS256,
                &header("HS256"),
                &admin,
            ),
        ),
        (
            "header RS256 signed with an RSA public key as the HMAC secret",
            jwt_signed_with(
                RSA_PUBLIC_KEY_PEM.as_bytes(),
                Algorithm::HS256,
                &header("RS256"),
                &admin,
            ),
        ),
        (
            "header ES256 with an HMAC signature",
            sys.token_with(Algorithm::HS256, &header("ES256"), &admin),
        ),
    ];
    expect_refused_everywhere(sys, order, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_unknown_algorithm_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let admin = claims(sub, "admin");
    let cases = vec![
        (
            "alg HS1024",
            sys.token_with(Algorithm::HS256, &header("HS1024"), &admin),
        ),
        (
            "alg NONE (upper case)",
            sys.token_with(Algorithm::HS256, &header("NONE"), &admin),
        ),
        (
            "alg empty",
            sys.token_with(Algorithm::HS256, &header(""), &admin),
        ),
        (
            "alg missing",
            sys.token_with(Algorithm::HS256, &json!({"typ": "JWT"}), &admin),
        ),
        (
            "alg a number",
            sys.token_with(Algorithm::HS256, &json!({"alg": 256, "typ": "JWT"}), &admin),
        ),
    ];
    expect_refused_everywhere(sys, order, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_not_yet_valid_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    // The control: `nbf` in the past is fine, so the case below fails only on its `nbf`.
    let mut past = claims(sub, "customer");
    past["nbf"] = json!(unix_now() - 60);
    sys.get(
        &format!("/orders/{order}"),
        Some(&sys.token_with(Algorithm::HS256, &header("HS256"), &past)),
    )
    .await
    .expect_status(200, "control: nbf a minute ago");

    let mut future = claims(sub, "customer");
    future["nbf"] = json!(unix_now() + 3600);
    let mut soon = claims(sub, "customer");
    soon["nbf"] = json!(unix_now() + 120);
    let cases = vec![
        (
            "nbf in an hour",
            sys.token_with(Algorithm::HS256, &header("HS256"), &future),
        ),
        (
            "nbf in two minutes (beyond any leeway)",
            sys.token_with(Algorithm::HS256, &header("HS256"), &soon),
        ),
    ];
    expect_refused_everywhere(sys, order, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_sub_or_role_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let without = |field: &str| {
        let mut c = claims(sub, "customer");
        c.as_object_mut().expect("object").remove(field);
        sys.token_with(Algorithm::HS256, &header("HS256"), &c)
    };
    let with = |field: &str, value: Value| {
        let mut c = claims(sub, "customer");
        c[field] = value;
        sys.token_with(Algorithm::HS256, &header("HS256"), &c)
    };
    let cases = vec![
        ("no sub", without("sub")),
        ("no role", without("role")),
        ("sub null", with("sub", Value::Null)),
        ("role null", with("role", Value::Null)),
    ];
    expect_refused_everywhere(sys, order, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_unknown_role_or_non_uuid_sub_gets_401() {
    let (sys, sub, order) = system_with_order().await;
    let with = |field: &str, value: Value| {
        let mut c = claims(sub, "customer");
        c[field] = value;
        sys.token_with(Algorithm::HS256, &header("HS256"), &c)
    };
    let cases = vec![
        ("role superuser", with("role", json!("superuser"))),
        ("role Admin (wrong case)", with("role", json!("Admin"))),
        ("role a list", with("role", json!(["customer", "admin"]))),
        ("sub not a uuid", with("sub", json!("alice"))),
        ("sub a number", with("sub", json!(42))),
        ("sub empty", with("sub", json!(""))),
    ];
    expect_refused_everywhere(sys, order, cases).await;
}

/// Everything a client can observe of an error answer but the date.
fn observable(answer: &Answer) -> (u16, Option<String>, Value) {
    (
        answer.status.as_u16(),
        answer.header("content-type").map(str::to_owned),
        answer.body.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_customers_order_and_job_look_exactly_like_missing_ones() {
    let sys = TestSystem::start().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (atok, btok) = (sys.token("customer", a), sys.token("customer", b));
    let order_a = sys.create_simple_order(&atok).await;
    let job_a = sys
        .submit(
            &atok,
            order_a,
            &json!({"action": "cancel", "reason": "mine"}),
        )
        .await;
    assert_eq!(sys.wait_job(&atok, job_a).await["status"], "succeeded");
    let (missing_order, missing_job) = (Uuid::new_v4(), Uuid::new_v4());
    let mut failures = Vec::new();

    // Reads: B asking for A's things vs for things that do not exist.
    for (theirs, missing) in [
        (
            format!("/orders/{order_a}"),
            format!("/orders/{missing_order}"),
        ),
        (
            format!("/orders/{order_a}/history"),
            format!("/orders/{missing_order}/history"),
        ),
        (
            format!("/orders/{order_a}/valid-actions"),
            format!("/orders/{missing_order}/valid-actions"),
        ),
        (format!("/jobs/{job_a}"), format!("/jobs/{missing_job}")),
    ] {
        let (t, m) = (
            sys.get(&theirs, Some(&btok)).await,
            sys.get(&missing, Some(&btok)).await,
        );
        if t.status.as_u16() != 404 || t.code() != Some("not_found") {
            failures.push(format!(
                "B: GET {theirs}: expected 404 not_found, got {} {}",
                t.status, t.body
            ));
        }
        if observable(&t) != observable(&m) {
            failures.push(format!(
                "B: GET {theirs} tells A's from a missing one: {:?} vs {:?}",
                observable(&t),
                observable(&m)
            ));
        }
    }

    // Changes: an action customers may take (404 for both), one they may never take (the
    // same 403 for both: decided by the role before the order is looked at), and a waiting one.
    for (body, headers, status) in [
        (json!({"action": "cancel"}), vec![], 404),
        (json!({"to": "cancelled"}), vec![("Prefer", "wait=5")], 404),
        (json!({"action": "mark_paid"}), vec![], 403),
    ] {
        let t = sys.change_status(&btok, order_a, &body, &headers).await;
        let m = sys
            .change_status(&btok, missing_order, &body, &headers)
            .await;
        if t.status.as_u16() != status {
            failures.push(format!(
                "B changes A's order with {body}: expected {status}, got {} {}",
                t.status, t.body
            ));
        }
        if observable(&t) != observable(&m) {
            failures.push(format!(
                "B changes A's order with {body}: tells it from a missing one: {:?} vs {:?}",
                observable(&t),
                observable(&m)
            ));
        }
    }
    let jobs = sys.jobs_of_order(order_a).await;
    if jobs != 1 {
        failures.push(format!(
            "B's attempts queued jobs on A's order: {jobs} jobs, expected A's 1"
        ));
    }

    // The event stream filtered by A's order id opens like one filtered by a random id.
    let t = sys
        .get(
            &format!("/orders/events/subscribe?order_id={order_a}"),
            Some(&btok),
        )
        .await;
    let m = sys
        .get(
            &format!("/orders/events/subscribe?order_id={missing_order}"),
            Some(&btok),
        )
        .await;
    if t.status != m.status {
        failures.push(format!(
            "B's stream filtered by A's order: {} vs {} for a random id",
            t.status, m.status
        ));
    }

    sys.stop().await;
    assert!(
        failures.is_empty(),
        "enumeration reveals something:\n{}",
        failures.join("\n")
    );
}

async fn count_rows(sys: &TestSystem, table: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(&format!("select count(*) from {table}"))
        .fetch_one(sys.db())
        .await
        .unwrap_or_else(|e| panic!("counting {table}: {e}"))
}

async fn row_counts(sys: &TestSystem) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in [
        "orders",
        "order_items",
        "jobs",
        "order_status_history",
        "outbox",
    ] {
        counts.push((table, count_rows(sys, table).await));
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_setting_server_owned_fields_is_refused_and_creates_nothing() {
    let sys = TestSystem::start().await;
    let customer = Uuid::new_v4();
    let ctok = sys.token("customer", customer);
    let atok = sys.token("admin", Uuid::new_v4());
    let stok = sys.token("support", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;
    let before = row_counts(&sys).await;
    let item = json!({"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1000});
    let with = |field: &str, value: Value| {
        let mut body = json!({"items": [item.clone()]});
        body[field] = value;
        body
    };
    let mut failures = Vec::new();

    let create_cases = [
        (
            "customer",
            &ctok,
            with("status", json!("delivered")),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            with("total_cents", json!(1)),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            with("version", json!(99)),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            with("payment_status", json!("paid")),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            with("id", json!(Uuid::new_v4())),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            with("created_at", json!("2000-01-01T00:00:00Z")),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            with("customer_id", json!(Uuid::new_v4())),
            400,
            "invalid_request",
        ),
        // Its own id is no better: customers never name a customer.
        (
            "customer",
            &ctok,
            with("customer_id", json!(customer)),
            400,
            "invalid_request",
        ),
        (
            "admin",
            &atok,
            with("status", json!("shipped")),
            400,
            "invalid_request",
        ),
        (
            "admin",
            &atok,
            with("payment_status", json!("paid")),
            400,
            "invalid_request",
        ),
        (
            "support",
            &stok,
            with("customer_id", json!(customer)),
            403,
            "forbidden_role",
        ),
        (
            "customer",
            &ctok,
            json!({"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1000, "total_cents": 1}]}),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            json!({"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": -1000}]}),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            json!({"items": [{"sku": "SKU-1", "quantity": 0, "unit_price_cents": 1000}]}),
            400,
            "invalid_request",
        ),
        (
            "customer",
            &ctok,
            json!({"items": [{"sku": "SKU-1", "quantity": 2_147_483_648_i64, "unit_price_cents": 1}]}),
            400,
            "invalid_request",
        ),
        (
            // Each line is within bounds; the sum overflows a 64-bit total.
            "customer",
            &ctok,
            json!({"items": (0..10).map(|n| json!({"sku": format!("SKU-{n}"), "quantity": 1_000_000, "unit_price_cents": 1_000_000_000_000_i64})).collect::<Vec<_>>()}),
            400,
            "invalid_request",
        ),
    ];
    for (who, token, body, status, code) in &create_cases {
        let answer = sys.post("/orders", Some(token), body).await;
        if answer.status.as_u16() != *status || answer.code() != Some(code) {
            failures.push(format!(
                "{who} POST /orders {body}: expected {status} {code}, got {} {}",
                answer.status, answer.body
            ));
        }
    }

    let change_cases = [
        (
            "admin",
            &atok,
            json!({"action": "mark_paid", "status": "paid"}),
        ),
        ("admin", &atok, json!({"action": "mark_paid", "version": 7})),
        (
            "admin",
            &atok,
            json!({"action": "mark_paid", "customer_id": Uuid::new_v4()}),
        ),
        (
            "admin",
            &atok,
            json!({"action": "mark_paid", "total_cents": 0}),
        ),
        (
            "admin",
            &atok,
            json!({"action": "mark_paid", "payment_status": "paid"}),
        ),
        ("admin", &atok, json!({"status": "shipped"})),
        (
            "customer",
            &ctok,
            json!({"action": "cancel", "customer_id": customer}),
        ),
        (
            "customer",
            &ctok,
            json!({"action": "cancel", "status": "cancelled"}),
        ),
    ];
    for (who, token, body) in &change_cases {
        let answer = sys
            .change_status(token, order, body, &[("Prefer", "wait=5")])
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
        .post("/orders", Some(&atok), &with("customer_id", json!(other)))
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
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                return Answer {
                    status,
                    headers,
                    body,
                };
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
    let under = Answer::read(
        post("/orders", &ctok, padded_order(BODY_LIMIT - 1024).into())
            .send()
            .await
            .expect("POST"),
    )
    .await;
    under.expect_status(201, "POST /orders just under 64 KiB");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limits_are_capped() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let ctok = sys.token("customer", Uuid::new_v4());
    sys.create_simple_order(&ctok).await;
    let mut failures = Vec::new();
    for (token, path, status) in [
        (&ctok, "/orders?limit=100000", 400),
        (&ctok, "/orders?limit=201", 400),
        (&ctok, "/orders?limit=0", 400),
        (&ctok, "/orders?limit=-1", 400),
        (&ctok, "/orders?cursor=not-a-uuid", 400),
        (&ctok, "/orders?status=teleported", 400),
        (&ctok, "/orders?limit=200", 200),
        (&atok, "/admin/jobs?limit=0", 400),
        (&atok, "/admin/jobs?limit=100000", 400),
        (&atok, "/admin/jobs?limit=-5", 400),
        (&atok, "/admin/jobs?status=bogus", 400),
        (&atok, "/admin/jobs?cursor=not-a-uuid", 400),
        (&atok, "/admin/jobs?limit=200", 200),
    ] {
        let answer = sys.get(path, Some(token)).await;
        let ok = answer.status.as_u16() == status
            && (status != 400 || answer.code() == Some("invalid_request"));
        if !ok {
            failures.push(format!(
                "GET {path}: expected {status}, got {} {}",
                answer.status, answer.body
            ));
        }
    }
    sys.stop().await;
    assert!(failures.is_empty(), "list limits:\n{}", failures.join("\n"));
}

/// Follows `next_cursor` from the first page; returns the ids of every page, in order.
async fn walk(
    sys: &TestSystem,
    token: &str,
    path: &str,
    limit: usize,
    key: &str,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let body = sys
            .get(&url, Some(token))
            .await
            .expect_status(200, &format!("GET {url}"))
            .body;
        let ids: Vec<String> = body[key]
            .as_array()
            .unwrap_or_else(|| panic!("GET {url}: no `{key}` array in {body}"))
            .iter()
            .map(|row| row["id"].as_str().expect("row id").to_owned())
            .collect();
        assert!(
            ids.len() <= limit,
            "GET {url}: {} rows for limit {limit}",
            ids.len()
        );
        pages.push(ids);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert!(
                    body["next_cursor"].is_null(),
                    "GET {url}: next_cursor must be a string or null: {body}"
                );
                return pages;
            }
        }
        assert!(
            pages.len() <= 20,
            "cursor walk over {path} does not end: {pages:?}"
        );
    }
}

/// Every id exactly once, and exactly the expected set.
fn assert_each_once(what: &str, pages: &[Vec<String>], expected: &HashSet<String>) {
    let all: Vec<&String> = pages.iter().flatten().collect();
    let unique: HashSet<String> = all.iter().map(|s| (*s).clone()).collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "{what}: some id came twice: {pages:?}"
    );
    assert_eq!(&unique, expected, "{what}: pages {pages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_walk_returns_each_row_exactly_once() {
    let sys = TestSystem::start().await;
    let ctok = sys.token("customer", Uuid::new_v4());
    let otok = sys.token("customer", Uuid::new_v4());
    let atok = sys.token("admin", Uuid::new_v4());
    let mut mine = Vec::new();
    for n in 0..7 {
        mine.push(sys.create_simple_order(&ctok).await);
        if n % 3 == 0 {
            sys.create_simple_order(&otok).await; // someone else's, interleaved
        }
    }
    let mine_set: HashSet<String> = mine.iter().map(Uuid::to_string).collect();

    let pages = walk(&sys, &ctok, "/orders", 3, "orders").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1], "7 orders in pages of 3: {pages:?}");
    assert_each_once("customer's walk, limit 3", &pages, &mine_set);

    // A page that ends exactly at the last row says there is no next one.
    let pages = walk(&sys, &ctok, "/orders", 7, "orders").await;
    assert_eq!(
        pages.len(),
        1,
        "7 orders with limit 7 are one page: {pages:?}"
    );
    assert_each_once("customer's walk, limit 7", &pages, &mine_set);

    // Staff see every order, each once.
    let all: HashSet<String> = sqlx::query_scalar::<_, Uuid>("select id from orders")
        .fetch_all(sys.db())
        .await
        .expect("order ids")
        .iter()
        .map(Uuid::to_string)
        .collect();
    assert_eq!(all.len(), 10);
    let pages = walk(&sys, &atok, "/orders", 4, "orders").await;
    assert_each_once("admin's walk, limit 4", &pages, &all);

    // Jobs page the same way.
    let mut jobs = HashSet::new();
    for order in &mine {
        jobs.insert(
            sys.submit(&atok, *order, &json!({"action": "mark_paid"}))
                .await
                .to_string(),
        );
    }
    let pages = walk(&sys, &atok, "/admin/jobs", 3, "jobs").await;
    assert_each_once("admin's job walk, limit 3", &pages, &jobs);

    sys.stop().await;
}
