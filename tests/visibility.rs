//! A customer sees its own orders and nothing of anyone else's: not the order, its
//! history, its valid actions, its jobs — and not its live events.

use crate::harness::*;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_cannot_see_another_customers_order_or_events() {
    let sys = TestSystem::start().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (atok, btok) = (sys.token("customer", a), sys.token("customer", b));
    let admin = sys.token("admin", Uuid::new_v4());
    let order_a = sys.create_simple_order(&atok).await;
    let order_b = sys.create_simple_order(&btok).await;

    let mut stream_a = sys
        .sse_connect("/orders/events/subscribe", Some(&atok), None)
        .await;
    let mut stream_b = sys
        .sse_connect("/orders/events/subscribe", Some(&btok), None)
        .await;

    // A changes its own order, and (the control) A's stream shows it.
    let job_a = sys
        .submit(
            &atok,
            order_a,
            &json!({"action": "cancel", "reason": "found it cheaper"}),
        )
        .await;
    let job = sys.wait_job(&atok, job_a).await;
    assert_eq!(
        job["status"], "succeeded",
        "a customer cancels its own pending order: {job}"
    );
    let a_id = order_a.to_string();
    stream_a
        .collect_until(
            |e| {
                e.kind() == "order.status_changed" && e.order_id().as_deref() == Some(a_id.as_str())
            },
            EVENT_DEADLINE,
        )
        .await;

    // B asks for A's things: 404, exactly as for things that do not exist.
    let nobody = sys
        .get(&format!("/orders/{}", Uuid::new_v4()), Some(&btok))
        .await
        .expect_error(404, None, "unknown order");
    for path in [
        format!("/orders/{order_a}"),
        format!("/orders/{order_a}/history"),
        format!("/orders/{order_a}/valid-actions"),
        format!("/jobs/{job_a}"),
    ] {
        let answer =
            sys.get(&path, Some(&btok))
                .await
                .expect_error(404, None, &format!("B: GET {path}"));
        assert_eq!(
            answer.code(),
            nobody.code(),
            "B: GET {path} must not tell that it exists"
        );
    }
    let answer = sys
        .change_status(
            &btok,
            order_a,
            &json!({"action": "cancel"}),
            &[("Prefer", "wait=10")],
        )
        .await;
    answer.expect_error(404, None, "B changes A's order");
    assert_eq!(
        sys.jobs_of_order(order_a).await,
        1,
        "B's attempt on A's order queued no job"
    );

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
    let b_id = order_b.to_string();
    let seen = stream_b
        .collect_until(
            |e| {
                e.kind() == "order.status_changed" && e.order_id().as_deref() == Some(b_id.as_str())
            },
            EVENT_DEADLINE,
        )
        .await;
    for event in &seen {
        assert_eq!(
            event.order_id().as_deref(),
            Some(b_id.as_str()),
            "B received someone else's event: {event:?}"
        );
    }
    assert_eq!(seen.last().unwrap().json()["job_id"], job_b.to_string());

    sys.stop().await;
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
        .sse_connect(
            &format!("/orders/events/subscribe?access_token={ctok}"),
            None,
            None,
        )
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
