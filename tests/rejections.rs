//! Every way a change can be refused, as a client sees it: the stable code with its HTTP
//! status, the job recorded as rejected (never retried), the order untouched — and the
//! requests refused before any job exists (400 shape errors, 403 roles). Authentication
//! (401) has its own file.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{TestSystem, uuid_of};

const WAIT: (&str, &str) = ("Prefer", "wait=10");

/// A change the state machine must reject, and how.
struct Rejection<'a> {
    token: &'a str,
    order: Uuid,
    body: Value,
    headers: &'a [(&'a str, &'a str)],
    status: u16,
    code: &'a str,
}

/// Submits with `Prefer: wait=10` and checks the rejection contract: `status` and `code`
/// in the answer with the job id; `GET /jobs/{id}` shows it rejected with that code; the
/// order's version did not move.
async fn expect_rejection(sys: &TestSystem, admin: &str, r: &Rejection<'_>) -> Result<(), String> {
    let (token, order_id, code) = (r.token, r.order, r.code);
    let version = sys.order(admin, order_id).await["version"].clone();
    let mut all_headers = vec![WAIT];
    all_headers.extend_from_slice(r.headers);
    let answer = sys
        .change_status(token, order_id, &r.body, &all_headers)
        .await;
    if answer.status.as_u16() != r.status || answer.code() != Some(code) {
        return Err(format!(
            "expected {} {code}, got {} {}",
            r.status, answer.status, answer.body
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

/// What an admin asking for a change on a pending, unpaid order is refused with.
fn refused_on_pending(atok: &str, pending: Uuid) -> Vec<(String, Rejection<'_>)> {
    let admin = |body: Value, headers, status, code| Rejection {
        token: atok,
        order: pending,
        body,
        headers,
        status,
        code,
    };
    let mut cases = Vec::new();
    for body in [json!({"action": "deliver"}), json!({"to": "shipped"})] {
        let case = format!("invalid_transition: admin {body} on pending");
        cases.push((case, admin(body, &[], 409, "invalid_transition")));
    }
    let body = json!({"action": "mark_paid", "expected_version": 99});
    let case = "version_conflict: expected_version 99".to_owned();
    cases.push((case, admin(body, &[], 409, "version_conflict")));
    let body = json!({"action": "mark_paid"});
    let case = "version_conflict: If-Match \"99\"".to_owned();
    cases.push((
        case,
        admin(body, &[("If-Match", "\"99\"")], 409, "version_conflict"),
    ));
    for body in [json!({"action": "confirm"}), json!({"to": "confirmed"})] {
        let case = format!("payment_required: admin {body} on unpaid");
        cases.push((case, admin(body, &[], 422, "payment_required")));
    }
    cases
}

/// An order of the customer walked through `steps` by the admin.
async fn order_after(sys: &TestSystem, ctok: &str, atok: &str, steps: &[&str]) -> Uuid {
    let order = sys.create_simple_order(ctok).await;
    for step in steps {
        sys.apply(atok, order, &json!({ "action": step })).await;
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_code_is_reachable_with_its_status() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let ctok = sys.token("customer", Uuid::new_v4());
    let mut failures = Vec::new();

    let pending = sys.create_simple_order(&ctok).await;
    for body in [
        json!({"action": "ship", "tracking_number": "X"}),
        json!({"action": "mark_paid"}),
    ] {
        let case = format!("forbidden_role: customer {body}");
        let outcome = expect_forbidden(&sys, &ctok, pending, body).await;
        record(&mut failures, &case, outcome);
    }
    let mut cases = refused_on_pending(&atok, pending);

    let (later, sku) = refused_on_later_orders(&sys, &ctok, &atok).await;
    cases.extend(later);

    for (case, rejection) in &cases {
        let outcome = expect_rejection(&sys, &atok, rejection).await;
        record(&mut failures, case, outcome);
    }
    let inventory = sys
        .get(&format!("/inventory/{sku}"), Some(&atok))
        .await
        .expect_status(200, "GET inventory");
    assert_eq!(
        inventory.body["reserved"], 0,
        "a rejected confirm reserves nothing: {}",
        inventory.body
    );
    let mut orders: Vec<Uuid> = cases.iter().map(|(_, r)| r.order).collect();
    orders.dedup();
    assert_nothing_recorded(&sys, pending, &orders, &mut failures).await;
    sys.stop().await;
    assert!(
        failures.is_empty(),
        "rejection contract broken:\n{}",
        failures.join("\n")
    );
}

/// Orders that each meet one more refusal: a customer's confirmed order (not_owner), one
/// wanting more stock than there is (out_of_stock), a processing one (missing_field).
/// Returns the cases and the scarce sku.
async fn refused_on_later_orders<'a>(
    sys: &TestSystem,
    ctok: &'a str,
    atok: &'a str,
) -> (Vec<(String, Rejection<'a>)>, String) {
    let mut cases = Vec::new();
    // A customer may cancel its own order only while it is pending.
    let confirmed = order_after(sys, ctok, atok, &["mark_paid", "confirm"]).await;
    let cancel = json!({"action": "cancel", "reason": "changed my mind"});
    let not_owner = Rejection {
        token: ctok,
        order: confirmed,
        body: cancel,
        headers: &[],
        status: 422,
        code: "not_owner",
    };
    cases.push((
        "not_owner: customer cancels its confirmed order".into(),
        not_owner,
    ));

    // Stock: 1 on hand, 2 wanted.
    let sku = format!("SCARCE-{}", &Uuid::new_v4().simple().to_string()[..8]);
    sys.set_inventory(atok, &sku, 1).await;
    let items = json!([{"sku": sku, "quantity": 2, "unit_price_cents": 500}]);
    let scarce = uuid_of(&sys.create_order(ctok, items).await, "id");
    sys.apply(atok, scarce, &json!({"action": "mark_paid"}))
        .await;
    let out_of_stock = Rejection {
        token: atok,
        order: scarce,
        body: json!({"action": "confirm"}),
        headers: &[],
        status: 422,
        code: "out_of_stock",
    };
    cases.push(("out_of_stock: confirm 2 of 1 on hand".into(), out_of_stock));

    // Ship needs a tracking number.
    let steps = ["mark_paid", "confirm", "start_processing"];
    let processing = order_after(sys, ctok, atok, &steps).await;
    let missing_field = Rejection {
        token: atok,
        order: processing,
        body: json!({"action": "ship"}),
        headers: &[],
        status: 422,
        code: "missing_field",
    };
    cases.push((
        "missing_field: ship without tracking_number".into(),
        missing_field,
    ));
    (cases, sku)
}

/// Rejections are business outcomes: nothing was audited or announced for them.
async fn assert_nothing_recorded(
    sys: &TestSystem,
    pending: Uuid,
    orders: &[Uuid],
    failures: &mut Vec<String>,
) {
    for &order in orders {
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
        .body(r#"{"action": "#);
    let answer = sys.send(malformed, "POST malformed JSON").await;
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
