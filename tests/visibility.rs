//! A customer sees its own orders and nothing of anyone else's: not the order, its
//! history, its valid actions, its jobs — and not its live events. Another customer's
//! things look exactly like things that do not exist.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Answer, EVENT_DEADLINE, SseEvent, TestSystem, sse::SUBSCRIBE};

/// The status change of one order.
fn change_of(order: Uuid) -> impl Fn(&SseEvent) -> bool {
    let id = order.to_string();
    move |e| e.kind() == "order.status_changed" && e.order_id().as_deref() == Some(id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_cannot_see_another_customers_order_or_events() {
    let sys = TestSystem::start().await;
    let (atok, btok) = (
        sys.token("customer", Uuid::new_v4()),
        sys.token("customer", Uuid::new_v4()),
    );
    let order_a = sys.create_simple_order(&atok).await;
    let order_b = sys.create_simple_order(&btok).await;
    let mut stream_a = sys.sse_connect(SUBSCRIBE, Some(&atok), None).await;
    let mut stream_b = sys.sse_connect(SUBSCRIBE, Some(&btok), None).await;

    // A changes its own order, and (the control) A's stream shows it.
    let body = json!({"action": "cancel", "reason": "found it cheaper"});
    let job_a = sys.submit(&atok, order_a, &body).await;
    let job = sys.wait_job(&atok, job_a).await;
    assert_eq!(
        job["status"], "succeeded",
        "a customer cancels its own pending order: {job}"
    );
    stream_a
        .collect_until(change_of(order_a), EVENT_DEADLINE)
        .await;

    assert_b_gets_404_for_as_things(&sys, &btok, order_a, job_a).await;
    let listing = sys
        .get("/orders", Some(&btok))
        .await
        .expect_status(200, "B: GET /orders")
        .body;
    let ids: Vec<&str> = listing["orders"].as_array().map_or(vec![], |orders| {
        orders.iter().filter_map(|o| o["id"].as_str()).collect()
    });
    assert_eq!(
        ids,
        vec![order_b.to_string().as_str()],
        "B lists only its own order: {listing}"
    );

    // The owner and staff still see A's things.
    let admin = sys.token("admin", Uuid::new_v4());
    sys.get(&format!("/jobs/{job_a}"), Some(&admin))
        .await
        .expect_status(200, "admin: GET A's job");
    let support = sys.token("support", Uuid::new_v4());
    sys.get(&format!("/orders/{order_a}"), Some(&support))
        .await
        .expect_status(200, "support: GET A's order");

    // B's stream: A's change was published before B's (A's job had committed and reached
    // A's stream before B submitted), so if B's stream carried A's event it would come first.
    let job_b = sys
        .submit(&btok, order_b, &json!({"action": "cancel"}))
        .await;
    let seen = stream_b
        .collect_until(change_of(order_b), EVENT_DEADLINE)
        .await;
    for event in &seen {
        assert_eq!(
            event.order_id(),
            Some(order_b.to_string()),
            "B received someone else's event: {event:?}"
        );
    }
    assert_eq!(seen.last().unwrap().json()["job_id"], job_b.to_string());
    sys.stop().await;
}

/// B asks for A's things, and tries to change A's order: 404, exactly as for things that
/// do not exist, and no job queued.
async fn assert_b_gets_404_for_as_things(sys: &TestSystem, btok: &str, order_a: Uuid, job_a: Uuid) {
    let nobody = sys
        .get(&format!("/orders/{}", Uuid::new_v4()), Some(btok))
        .await
        .expect_error(404, None, "unknown order");
    for path in [
        format!("/orders/{order_a}"),
        format!("/orders/{order_a}/history"),
        format!("/orders/{order_a}/valid-actions"),
        format!("/jobs/{job_a}"),
    ] {
        let answer =
            sys.get(&path, Some(btok))
                .await
                .expect_error(404, None, &format!("B: GET {path}"));
        assert_eq!(
            answer.code(),
            nobody.code(),
            "B: GET {path} must not tell that it exists"
        );
    }
    sys.change_status(
        btok,
        order_a,
        &json!({"action": "cancel"}),
        &[("Prefer", "wait=10")],
    )
    .await
    .expect_error(404, None, "B changes A's order");
    assert_eq!(
        sys.jobs_of_order(order_a).await,
        1,
        "B's attempt on A's order queued no job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_accepts_access_token_query_parameter() {
    let sys = TestSystem::start().await;
    let customer = Uuid::new_v4();
    let ctok = sys.token("customer", customer);
    let admin = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;

    // EventSource cannot set headers: the token rides in the query.
    let mut stream = sys
        .sse_connect(&format!("{SUBSCRIBE}?access_token={ctok}"), None, None)
        .await;
    let job = sys
        .submit(&admin, order, &json!({"action": "mark_paid"}))
        .await;
    let seen = stream
        .collect_until(|e| e.kind() == "order.status_changed", EVENT_DEADLINE)
        .await;
    let event = seen.last().unwrap().json();
    assert_eq!(event["order_id"], order.to_string(), "{event}");
    assert_eq!(event["job_id"], job.to_string(), "{event}");
    assert_eq!(event["customer_id"], customer.to_string(), "{event}");

    sys.stop().await;
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
    let mut failures = Vec::new();
    reads_tell_nothing(&sys, &btok, order_a, job_a, &mut failures).await;
    changes_tell_nothing(&sys, &btok, order_a, &mut failures).await;
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
            &format!("/orders/events/subscribe?order_id={}", Uuid::new_v4()),
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

/// B asking for A's things vs for things that do not exist: the same 404, byte for byte.
async fn reads_tell_nothing(
    sys: &TestSystem,
    btok: &str,
    order_a: Uuid,
    job_a: Uuid,
    failures: &mut Vec<String>,
) {
    let (missing_order, missing_job) = (Uuid::new_v4(), Uuid::new_v4());
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
            sys.get(&theirs, Some(btok)).await,
            sys.get(&missing, Some(btok)).await,
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
}

/// B changing A's order vs a missing one: the same answer.
async fn changes_tell_nothing(
    sys: &TestSystem,
    btok: &str,
    order_a: Uuid,
    failures: &mut Vec<String>,
) {
    let missing_order = Uuid::new_v4();
    // Changes: an action customers may take (404 for both), one they may never take (the
    // same 403 for both: decided by the role before the order is looked at), and a waiting one.
    for (body, headers, status) in [
        (json!({"action": "cancel"}), vec![], 404),
        (json!({"to": "cancelled"}), vec![("Prefer", "wait=5")], 404),
        (json!({"action": "mark_paid"}), vec![], 403),
    ] {
        let t = sys.change_status(btok, order_a, &body, &headers).await;
        let m = sys
            .change_status(btok, missing_order, &body, &headers)
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
}
