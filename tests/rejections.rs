//! Every way a change can be refused, as a client sees it: the stable code with its HTTP
//! status, the job recorded as rejected (never retried), the order untouched — and the
//! requests refused before any job exists (400 shape errors, 401 authentication).

use crate::harness::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: (&str, &str) = ("Prefer", "wait=10");

/// Submits with `Prefer: wait=10` and checks the rejection contract: `status` and `code`
/// in the answer with the job id; `GET /jobs/{id}` shows it rejected with that code; the
/// order's version did not move.
#[allow(clippy::too_many_arguments)]
async fn expect_rejection(
    sys: &TestSystem,
    token: &str,
    admin: &str,
    order_id: Uuid,
    body: Value,
    headers: &[(&str, &str)],
    status: u16,
    code: &str,
) -> Result<(), String> {
    let version = sys.order(admin, order_id).await["version"].clone();
    let mut all_headers = vec![WAIT];
    all_headers.extend_from_slice(headers);
    let answer = sys
        .change_status(token, order_id, &body, &all_headers)
        .await;
    if answer.status.as_u16() != status || answer.code() != Some(code) {
        return Err(format!(
            "expected {status} {code}, got {} {}",
            answer.status, answer.body
        ));
    }
    if answer.body["error"]["message"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err(format!("no error.message: {}", answer.body));
    }
    let Some(job_id) = answer.body["error"]["job_id"].as_str().map(str::to_owned) else {
        return Err(format!(
            "rejection answer without error.job_id: {}",
            answer.body
        ));
    };
    let job = sys.get(&format!("/jobs/{job_id}"), Some(token)).await;
    if job.status.as_u16() != 200
        || job.body["status"] != "rejected"
        || job.body["error"]["code"] != code
    {
        return Err(format!(
            "job {job_id} should be rejected with {code}: {} {}",
            job.status, job.body
        ));
    }
    let after = sys.order(admin, order_id).await["version"].clone();
    if after != version {
        return Err(format!(
            "a rejected change moved the order's version {version} -> {after}"
        ));
    }
    Ok(())
}

/// A role that may never perform the action is refused at once: 403, and no job is created.
async fn expect_forbidden(
    sys: &TestSystem,
    token: &str,
    order_id: Uuid,
    body: Value,
) -> Result<(), String> {
    let jobs = sys.jobs_of_order(order_id).await;
    let answer = sys.change_status(token, order_id, &body, &[WAIT]).await;
    if answer.status.as_u16() != 403 || answer.code() != Some("forbidden_role") {
        return Err(format!(
            "expected 403 forbidden_role, got {} {}",
            answer.status, answer.body
        ));
    }
    let after = sys.jobs_of_order(order_id).await;
    if after != jobs {
        return Err(format!(
            "a forbidden request created a job ({jobs} -> {after} jobs)"
        ));
    }
    Ok(())
}

fn record(failures: &mut Vec<String>, case: &str, outcome: Result<(), String>) {
    if let Err(e) = outcome {
        failures.push(format!("{case}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_code_is_reachable_with_its_status() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let ctok = sys.token("customer", Uuid::new_v4());
    let mut failures = Vec::new();
    let f = &mut failures;

    // A pending, unpaid order.
    let pending = sys.create_simple_order(&ctok).await;
    for body in [
        json!({"action": "ship", "tracking_number": "X"}),
        json!({"action": "mark_paid"}),
    ] {
        let case = format!("forbidden_role: customer {body}");
        record(f, &case, expect_forbidden(&sys, &ctok, pending, body).await);
    }
    for body in [json!({"action": "deliver"}), json!({"to": "shipped"})] {
        let case = format!("invalid_transition: admin {body} on pending");
        record(
            f,
            &case,
            expect_rejection(
                &sys,
                &atok,
                &atok,
                pending,
                body,
                &[],
                409,
                "invalid_transition",
            )
            .await,
        );
    }
    let case = "version_conflict: expected_version 99";
    let body = json!({"action": "mark_paid", "expected_version": 99});
    record(
        f,
        case,
        expect_rejection(
            &sys,
            &atok,
            &atok,
            pending,
            body,
            &[],
            409,
            "version_conflict",
        )
        .await,
    );
    let case = "version_conflict: If-Match \"99\"";
    let body = json!({"action": "mark_paid"});
    let if_match = [("If-Match", "\"99\"")];
    record(
        f,
        case,
        expect_rejection(
            &sys,
            &atok,
            &atok,
            pending,
            body,
            &if_match,
            409,
            "version_conflict",
        )
        .await,
    );
    for body in [json!({"action": "confirm"}), json!({"to": "confirmed"})] {
        let case = format!("payment_required: admin {body} on unpaid");
        record(
            f,
            &case,
            expect_rejection(
                &sys,
                &atok,
                &atok,
                pending,
                body,
                &[],
                422,
                "payment_required",
            )
            .await,
        );
    }

    // A customer may cancel its own order only while it is pending.
    let confirmed = sys.create_simple_order(&ctok).await;
    sys.apply(&atok, confirmed, &json!({"action": "mark_paid"}))
        .await;
    sys.apply(&atok, confirmed, &json!({"action": "confirm"}))
        .await;
    let case = "not_owner: customer cancels its confirmed order";
    let body = json!({"action": "cancel", "reason": "changed my mind"});
    record(
        f,
        case,
        expect_rejection(&sys, &ctok, &atok, confirmed, body, &[], 422, "not_owner").await,
    );

    // Stock: 1 on hand, 2 wanted.
    let sku = format!("SCARCE-{}", &Uuid::new_v4().simple().to_string()[..8]);
    sys.set_inventory(&atok, &sku, 1).await;
    let scarce = uuid_of(
        &sys.create_order(
            &ctok,
            json!([{"sku": sku, "quantity": 2, "unit_price_cents": 500}]),
        )
        .await,
        "id",
    );
    sys.apply(&atok, scarce, &json!({"action": "mark_paid"}))
        .await;
    let case = "out_of_stock: confirm 2 of 1 on hand";
    let body = json!({"action": "confirm"});
    record(
        f,
        case,
        expect_rejection(&sys, &atok, &atok, scarce, body, &[], 422, "out_of_stock").await,
    );
    let inventory = sys
        .get(&format!("/inventory/{sku}"), Some(&atok))
        .await
        .expect_status(200, "GET inventory");
    assert_eq!(
        inventory.body["reserved"], 0,
        "a rejected confirm reserves nothing: {}",
        inventory.body
    );

    // Ship needs a tracking number.
    let processing = sys.create_simple_order(&ctok).await;
    for step in ["mark_paid", "confirm", "start_processing"] {
        sys.apply(&atok, processing, &json!({ "action": step }))
            .await;
    }
    let case = "missing_field: ship without tracking_number";
    let body = json!({"action": "ship"});
    record(
        f,
        case,
        expect_rejection(
            &sys,
            &atok,
            &atok,
            processing,
            body,
            &[],
            422,
            "missing_field",
        )
        .await,
    );

    // Rejections are business outcomes: nothing was audited or announced for them.
    for order in [pending, confirmed, scarce, processing] {
        let history = sys
            .count(
                "select count(*) from order_status_history where order_id = $1",
                order,
            )
            .await;
        let outbox = sys
            .count("select count(*) from outbox where order_id = $1", order)
            .await;
        if history != outbox {
            failures.push(format!(
                "order {order}: {history} history rows but {outbox} outbox rows"
            ));
        }
    }
    assert_eq!(
        sys.count(
            "select count(*) from order_status_history where order_id = $1",
            pending
        )
        .await,
        1,
        "only the creation is in the history of an order whose every change was rejected"
    );

    sys.stop().await;
    assert!(
        failures.is_empty(),
        "rejection contract broken:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_expected_version_or_if_match_is_applied() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;

    sys.apply(
        &atok,
        order,
        &json!({"action": "mark_paid", "expected_version": 1}),
    )
    .await;
    let answer = sys
        .change_status(
            &atok,
            order,
            &json!({"action": "confirm"}),
            &[WAIT, ("If-Match", "\"2\"")],
        )
        .await
        .expect_status(200, "confirm with If-Match \"2\" and Prefer: wait");
    assert_eq!(answer.body["job"]["status"], "succeeded", "{}", answer.body);
    assert_eq!(
        answer.body["order"]["status"], "confirmed",
        "{}",
        answer.body
    );
    assert_eq!(answer.body["order"]["version"], 3, "{}", answer.body);

    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_change_requests_are_rejected_with_400_and_queue_nothing() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;
    let path = format!("/orders/{order}/change-status");
    let mut failures = Vec::new();

    let malformed = sys
        .request(Method::POST, &path, Some(&atok))
        .header("content-type", "application/json")
        .body(r#"{"action": "#)
        .send()
        .await
        .expect("POST malformed JSON");
    let answer = Answer::read(malformed).await;
    if answer.status.as_u16() != 400 || answer.code().is_none() {
        failures.push(format!("malformed JSON: {} {}", answer.status, answer.body));
    }

    for body in [
        json!({"action": "confirm", "bogus": 1}),
        json!({"action": "teleport"}),
        json!({"to": "teleported"}),
        json!({"action": "confirm", "to": "confirmed"}),
        json!({"reason": "neither action nor to"}),
        json!({"action": 5}),
        json!({"action": "mark_paid", "expected_version": "three"}),
        json!(["mark_paid"]),
    ] {
        let answer = sys.change_status(&atok, order, &body, &[WAIT]).await;
        let shaped =
            answer.body["error"]["code"].is_string() && answer.body["error"]["message"].is_string();
        if answer.status.as_u16() != 400 || !shaped {
            failures.push(format!(
                "{body}: expected 400 with an error body, got {} {}",
                answer.status, answer.body
            ));
        }
    }

    let answer = sys
        .post("/orders", Some(&atok), &json!({"items": "nope"}))
        .await;
    if answer.status.as_u16() != 400 {
        failures.push(format!(
            "POST /orders with items: \"nope\": {} {}",
            answer.status, answer.body
        ));
    }
    let answer = sys.get("/orders?limit=abc", Some(&atok)).await;
    if answer.status.as_u16() != 400 {
        failures.push(format!(
            "GET /orders?limit=abc: {} {}",
            answer.status, answer.body
        ));
    }

    let jobs = sys.jobs_of_order(order).await;
    if jobs != 0 {
        failures.push(format!(
            "{jobs} jobs were created by requests refused with 400"
        ));
    }
    sys.stop().await;
    assert!(
        failures.is_empty(),
        "400 contract broken:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401() {
    let sys = TestSystem::start().await;
    let sub = Uuid::new_v4();
    let atok = sys.token("admin", sub);
    let order = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;
    let missing = format!("/orders/{}", Uuid::new_v4());

    // The control: a valid token gets past authentication (404 for an order that does not exist).
    sys.get(&missing, Some(&atok))
        .await
        .expect_error(404, None, "valid token, unknown order");

    let bad_tokens = [
        ("no token", None),
        ("expired", Some(sys.expired_token("admin", sub))),
        (
            "wrong secret",
            Some(signed_token("not-the-secret", "admin", sub, 3600)),
        ),
        ("alg none", Some(unsigned_token("admin", sub))),
        ("no exp claim", Some(sys.token_without_exp("admin", sub))),
        ("not a JWT", Some("not-a-jwt".to_owned())),
    ];
    let mut failures = Vec::new();
    for (case, token) in &bad_tokens {
        let token = token.as_deref();
        let requests = [
            (
                "GET /orders/{id}",
                sys.request(Method::GET, &format!("/orders/{order}"), token),
            ),
            ("GET /orders", sys.request(Method::GET, "/orders", token)),
            (
                "POST /orders/{id}/change-status",
                sys.request(
                    Method::POST,
                    &format!("/orders/{order}/change-status"),
                    token,
                )
                .json(&json!({"action": "mark_paid"})),
            ),
            (
                "GET /jobs/{id}",
                sys.request(Method::GET, &format!("/jobs/{}", Uuid::new_v4()), token),
            ),
            (
                "GET /orders/events/subscribe",
                sys.request(Method::GET, "/orders/events/subscribe", token),
            ),
        ];
        for (what, request) in requests {
            let answer = Answer::read(request.send().await.expect("sending")).await;
            let shaped = answer.body["error"]["code"].is_string()
                && answer.body["error"]["message"].is_string();
            if answer.status.as_u16() != 401 || !shaped {
                failures.push(format!(
                    "{case}, {what}: expected 401 with an error body, got {} {}",
                    answer.status, answer.body
                ));
            }
        }
    }
    // EventSource cannot send headers: a bad ?access_token= is refused the same way.
    let answer = sys
        .get(
            &format!(
                "/orders/events/subscribe?access_token={}",
                unsigned_token("admin", sub)
            ),
            None,
        )
        .await;
    if answer.status.as_u16() != 401 {
        failures.push(format!(
            "SSE ?access_token=<alg none>: {} {}",
            answer.status, answer.body
        ));
    }
    let jobs = sys.jobs_of_order(order).await;
    if jobs != 0 {
        failures.push(format!(
            "{jobs} jobs were created by unauthenticated requests"
        ));
    }

    sys.stop().await;
    assert!(
        failures.is_empty(),
        "401 contract broken:\n{}",
        failures.join("\n")
    );
}
