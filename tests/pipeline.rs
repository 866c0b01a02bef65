//! The end-to-end pipeline: a change accepted over HTTP is applied by a worker, audited in
//! the history, published downstream through the outbox relay and streamed over SSE —
//! and, per order, every consumer sees the changes in the order the history records them.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use lapin::message::Delivery;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{
    EVENT_DEADLINE, SseEvent, SseStream, TestSystem, broker::Downstream, message_header,
    message_id, message_json, uuid_of,
};

fn is_status_change(event: &SseEvent) -> bool {
    event.kind() == "order.status_changed"
}

/// One step of the walk and what every record of it must say.
struct Step {
    action: &'static str,
    reason: &'static str,
    from: &'static str,
    to: &'static str,
    version: i64,
}

/// mark_paid: payment changes, status does not.
const MARK_PAID: Step = Step {
    action: "mark_paid",
    reason: "wire transfer received",
    from: "pending",
    to: "pending",
    version: 2,
};

/// confirm: status changes.
const CONFIRM: Step = Step {
    action: "confirm",
    reason: "stock checked",
    from: "pending",
    to: "confirmed",
    version: 3,
};

/// A step as it happened: by which job.
struct Change<'a> {
    step: &'a Step,
    job: Uuid,
}

/// Who did what to which order.
struct Parties {
    order: Uuid,
    customer: Uuid,
    admin: Uuid,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_and_confirmed_order_is_audited_published_and_streamed() {
    let sys = TestSystem::start().await;
    let (customer, admin) = (Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok) = (sys.token("customer", customer), sys.token("admin", admin));
    let order = sys.create_simple_order(&ctok).await;
    let who = Parties {
        order,
        customer,
        admin,
    };
    let mut downstream = sys.broker().downstream_queue("order.status.*").await;
    let mut stream = sys
        .sse_connect("/orders/events/subscribe", Some(&ctok), None)
        .await;

    let (paid, before_paid) = change_and_stream(&sys, &atok, &mut stream, &who, &MARK_PAID).await;
    let (confirmed, before_confirm) =
        change_and_stream(&sys, &atok, &mut stream, &who, &CONFIRM).await;

    // The customer's stream: at most its own order.created first, then both changes, in order.
    let (paid_event, skipped) = before_paid.split_last().unwrap();
    for event in skipped {
        assert_eq!(
            event.kind(),
            "order.created",
            "unexpected event before mark_paid: {event:?}"
        );
        assert_eq!(event.order_id(), Some(order.to_string()), "{event:?}");
    }
    assert_eq!(
        before_confirm.len(),
        1,
        "exactly one event between mark_paid and confirm: {before_confirm:#?}"
    );
    let confirm_event = &before_confirm[0];
    let changes = [paid, confirmed];
    assert_status_event(paid_event, &changes[0], &who);
    assert_status_event(confirm_event, &changes[1], &who);
    assert!(
        confirm_event.seq() > paid_event.seq(),
        "ids increase: {paid_event:?} then {confirm_event:?}"
    );

    // Downstream: both changes, routing key order.status.<to>, message_id = seq.
    let paid_msg = downstream
        .expect_next("order.status.pending (mark_paid)")
        .await;
    let confirm_msg = downstream.expect_next("order.status.confirmed").await;
    assert_published(&paid_msg, "order.status.pending", paid_event, &who);
    assert_published(&confirm_msg, "order.status.confirmed", confirm_event, &who);
    assert_eq!(message_json(&confirm_msg)["to"], "confirmed");

    assert_audited(&sys, &ctok, &atok, &who, &changes).await;
    assert_order_confirmed_at_version_3(&sys, &ctok, order).await;
    sys.stop().await;
}

/// Submits the step as the admin, and reads the customer's stream up to its status change;
/// waits for the job's success. Returns the change and the events read.
async fn change_and_stream<'a>(
    sys: &TestSystem,
    atok: &str,
    stream: &mut SseStream,
    who: &Parties,
    step: &'a Step,
) -> (Change<'a>, Vec<SseEvent>) {
    let action = step.action;
    let sent = Instant::now();
    let body = json!({"action": action, "reason": step.reason});
    let job = sys.submit(atok, who.order, &body).await;
    let seen = stream.collect_until(is_status_change, EVENT_DEADLINE).await;
    eprintln!(
        "round trip POST change-status -> SSE event: {action} {:?}",
        sent.elapsed()
    );
    let settled = sys.wait_job(atok, job).await;
    assert_eq!(settled["status"], "succeeded", "{action} job: {settled}");
    assert_eq!(settled["order_id"], who.order.to_string(), "job: {settled}");
    (Change { step, job }, seen)
}

/// The SSE event of a change: its type, its seq as its id, and every field of the change.
fn assert_status_event(event: &SseEvent, change: &Change<'_>, who: &Parties) {
    let data = event.json();
    assert_eq!(event.kind(), "order.status_changed", "{event:?}");
    assert_eq!(data["type"], "order.status_changed", "{data}");
    assert_eq!(
        data["seq"].as_u64(),
        Some(event.seq()),
        "SSE id is the seq: {event:?}"
    );
    assert_eq!(data["order_id"], who.order.to_string(), "{data}");
    assert_eq!(data["customer_id"], who.customer.to_string(), "{data}");
    assert_eq!(data["action"], change.step.action, "{data}");
    assert_eq!(
        (&data["from"], &data["to"]),
        (&json!(change.step.from), &json!(change.step.to)),
        "{data}"
    );
    assert_eq!(data["payment_status"], "paid", "{data}");
    assert_eq!(data["version"], change.step.version, "{data}");
    assert_eq!(
        data["actor"],
        json!({"id": who.admin.to_string(), "role": "admin"}),
        "{data}"
    );
    assert_eq!(data["reason"], change.step.reason, "{data}");
    assert_eq!(data["job_id"], change.job.to_string(), "{data}");
}

/// The downstream message of a change is the SSE event's twin, with its AMQP properties.
fn assert_published(msg: &Delivery, key: &str, event: &SseEvent, who: &Parties) {
    let body = message_json(msg);
    assert_eq!(msg.routing_key.as_str(), key, "routing key of {body}");
    assert_eq!(
        message_id(msg),
        Some(event.seq().to_string()),
        "message_id is the seq, the same id the SSE stream used: {body}"
    );
    assert_eq!(
        body,
        event.json(),
        "downstream body and SSE data are the same JSON"
    );
    let props = &msg.properties;
    assert_eq!(
        props.kind().as_ref().map(|s| s.as_str()),
        Some("order.status_changed"),
        "type property"
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json"),
        "content_type"
    );
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        message_header(msg, "order_id"),
        Some(who.order.to_string()),
        "order_id header"
    );
    assert_eq!(
        message_header(msg, "customer_id"),
        Some(who.customer.to_string()),
        "customer_id header"
    );
}

/// The audit: creation, then both changes with who, why and which job; the owner reads the
/// same; one history row and one outbox row per committed change, nothing else.
async fn assert_audited(
    sys: &TestSystem,
    ctok: &str,
    atok: &str,
    who: &Parties,
    changes: &[Change<'_>; 2],
) {
    let history = sys.history(atok, who.order).await;
    assert_eq!(
        history.len(),
        3,
        "create + mark_paid + confirm: {history:#?}"
    );
    let create = &history[0];
    assert_eq!(create["action"], "create", "{create}");
    assert!(create["from"].is_null(), "{create}");
    assert_eq!(create["to"], "pending", "{create}");
    assert_eq!(create["version"], 1, "{create}");
    assert_eq!(
        create["actor"],
        json!({"id": who.customer.to_string(), "role": "customer"}),
        "{create}"
    );
    for (row, change) in history[1..].iter().zip(changes) {
        assert_eq!(row["action"], change.step.action, "{row}");
        assert_eq!(
            (&row["from"], &row["to"]),
            (&json!(change.step.from), &json!(change.step.to)),
            "{row}"
        );
        assert_eq!(
            row["actor"],
            json!({"id": who.admin.to_string(), "role": "admin"}),
            "{row}"
        );
        assert_eq!(row["reason"], change.step.reason, "{row}");
        assert_eq!(row["job_id"], change.job.to_string(), "{row}");
        assert!(row["bulk_id"].is_null(), "{row}");
        assert_eq!(row["version"], change.step.version, "{row}");
        assert!(row["at"].is_string(), "{row}");
    }
    assert_eq!(
        sys.history(ctok, who.order).await,
        history,
        "the owner reads the same history"
    );
    let outbox = sys
        .count("select count(*) from outbox where order_id = $1", who.order)
        .await;
    let audit = sys
        .count(
            "select count(*) from order_status_history where order_id = $1",
            who.order,
        )
        .await;
    assert_eq!(
        (audit, outbox),
        (3, 3),
        "history and outbox rows for create + 2 changes"
    );
}

async fn assert_order_confirmed_at_version_3(sys: &TestSystem, ctok: &str, order: Uuid) {
    let order = sys
        .get(&format!("/orders/{order}"), Some(ctok))
        .await
        .expect_status(200, "GET order");
    assert_eq!(order.body["status"], "confirmed", "{}", order.body);
    assert_eq!(order.body["payment_status"], "paid", "{}", order.body);
    assert_eq!(order.body["version"], 3, "{}", order.body);
    let etag = order.header("etag").unwrap_or_default();
    assert_eq!(
        etag.trim_start_matches("W/").trim_matches('"'),
        "3",
        "ETag is the version: {etag:?}"
    );
}

/// (action, version) of an event, with `create` for `order.created`.
fn event_step(body: &Value) -> (String, i64) {
    let action = match body["action"].as_str() {
        Some(a) => a.to_owned(),
        None if body["type"] == "order.created" => "create".to_owned(),
        None => panic!("event without an action: {body}"),
    };
    (
        action,
        body["version"]
            .as_i64()
            .unwrap_or_else(|| panic!("event without a version: {body}")),
    )
}

/// Per order, (action, version) of each step in history order.
type Steps = BTreeMap<String, Vec<(String, i64)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_per_order_follow_history_order() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    // Bound before the first order exists, so this consumer sees every order event.
    let mut downstream = sys.broker().downstream_queue("order.#").await;

    let mut orders = Vec::new();
    for _ in 0..3 {
        let ctok = sys.token("customer", Uuid::new_v4());
        orders.push(sys.create_simple_order(&ctok).await);
    }
    let succeeded = submit_interleaved_steps(&sys, &atok, &orders).await;

    let mut expected = Steps::new();
    for &order_id in &orders {
        let steps: Vec<(String, i64)> = sys
            .history(&atok, order_id)
            .await
            .iter()
            .map(|row| {
                (
                    row["action"].as_str().unwrap_or_default().to_owned(),
                    row["version"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        expected.insert(order_id.to_string(), steps);
    }
    let changes: usize = expected.values().map(|h| h.len() - 1).sum();
    assert_eq!(
        succeeded, changes,
        "one history row per succeeded job: {expected:#?}"
    );

    let (seen, ids) = collect_order_events(&mut downstream, &expected).await;
    assert_eq!(
        seen, expected,
        "per order, events in history order (action, version)"
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "message ids unique and increasing in publish order: {ids:?}"
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no duplicates: {ids:?}"
    );

    // Nothing more was published for these orders: the next event is a new order's creation.
    let sentinel = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;
    let msg = downstream
        .expect_next("the sentinel order's order.created")
        .await;
    let body = message_json(&msg);
    assert_eq!(
        (body["type"].as_str(), body["order_id"].as_str()),
        (Some("order.created"), Some(sentinel.to_string().as_str())),
        "an extra event was published after the expected ones: {body}"
    );

    sys.stop().await;
}

/// Interleaves the orders' changes, submits them all before waiting for any, then waits
/// for each. Returns how many succeeded (every mark_paid must).
async fn submit_interleaved_steps(sys: &TestSystem, atok: &str, orders: &[Uuid]) -> usize {
    let steps = [
        json!({"action": "mark_paid"}),
        json!({"action": "confirm"}),
        json!({"action": "start_processing", "reason": "picked"}),
        json!({"action": "ship", "tracking_number": "TRACK-1"}),
    ];
    let mut jobs = Vec::new();
    for step in &steps {
        for &order_id in orders {
            jobs.push((order_id, step, sys.submit(atok, order_id, step).await));
        }
    }
    let mut outcomes = Vec::new();
    let mut succeeded = 0;
    for (order_id, step, job_id) in &jobs {
        let job = sys.wait_job(atok, *job_id).await;
        if step["action"] == "mark_paid" {
            assert_eq!(
                job["status"], "succeeded",
                "mark_paid on {order_id} has no reason to fail: {job}"
            );
        }
        if job["status"] == "succeeded" {
            succeeded += 1;
        }
        let (short_id, action) = (
            order_id.simple().to_string(),
            step["action"].as_str().unwrap_or_default(),
        );
        outcomes.push(format!(
            "{}…: {action} -> {}",
            &short_id[24..],
            job["status"].as_str().unwrap_or("?")
        ));
    }
    eprintln!("job outcomes: {outcomes:?}");
    succeeded
}

/// Collects until every order has as many events as history rows; checks each message's
/// routing key, order_id header and message_id (= seq). Returns the steps seen per order
/// and the message ids in arrival order.
async fn collect_order_events(downstream: &mut Downstream, expected: &Steps) -> (Steps, Vec<u64>) {
    let mut seen = Steps::new();
    let mut ids = Vec::new();
    let total: usize = expected.values().map(Vec::len).sum();
    while ids.len() < total {
        let msg = downstream
            .expect_next(&format!(
                "{total} order events; got {} so far: {seen:#?}",
                ids.len()
            ))
            .await;
        let body = message_json(&msg);
        let order = body["order_id"].as_str().unwrap_or_default().to_owned();
        assert!(
            expected.contains_key(&order),
            "event for an unknown order: {body}"
        );
        let key = msg.routing_key.as_str();
        if body["type"] == "order.created" {
            assert_eq!(key, "order.created", "{body}");
        } else {
            assert_eq!(
                key,
                format!("order.status.{}", body["to"].as_str().unwrap_or_default()),
                "{body}"
            );
        }
        assert_eq!(
            message_header(&msg, "order_id").as_deref(),
            Some(order.as_str()),
            "{body}"
        );
        let id: u64 = message_id(&msg)
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("message_id must be the decimal seq: {body}"));
        assert_eq!(body["seq"].as_u64(), Some(id), "message_id = seq: {body}");
        ids.push(id);
        seen.entry(order).or_default().push(event_step(&body));
    }
    (seen, ids)
}

/// The parts of a W3C `traceparent`: (trace id, parent id, flags); panics when malformed.
fn traceparent_parts(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2),
        "not a traceparent: {value:?}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// A caller's trace context rides from the request to the job and to the event the change
/// produced (API.md: events carry `traceparent`); a request without one starts a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_context_reaches_the_job_and_the_published_event() {
    let sys = TestSystem::start().await;
    let (ctok, atok) = (
        sys.token("customer", Uuid::new_v4()),
        sys.token("admin", Uuid::new_v4()),
    );
    let mut downstream = sys.broker().downstream_queue("order.#").await;

    // No traceparent on the request: the event still carries a (new) valid one.
    let order_id = sys.create_simple_order(&ctok).await;
    let created = downstream.expect_next("order.created").await;
    assert_eq!(message_json(&created)["type"], "order.created");
    let header = message_header(&created, "traceparent").expect("a traceparent header");
    traceparent_parts(&header);

    // With one: same trace id and flags, a new parent id (this hop).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let answer = sys
        .change_status(
            &atok,
            order_id,
            &json!({"action": "mark_paid"}),
            &[("traceparent", incoming.as_str())],
        )
        .await;
    let job_id = uuid_of(&answer.expect_status(202, "change-status").body, "job_id");
    let changed = downstream.expect_next("order.status_changed").await;
    assert_eq!(message_json(&changed)["job_id"], job_id.to_string());
    let header = message_header(&changed, "traceparent").expect("a traceparent header");
    let (trace, parent, flags) = traceparent_parts(&header);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (trace_id, "01"),
        "the event continues the caller's trace: {header}"
    );
    assert_ne!(parent, "00f067aa0ba902b7", "a new parent id for this hop");
    let stored: Option<String> = sqlx::query_scalar("select traceparent from jobs where id = $1")
        .bind(job_id)
        .fetch_one(sys.db())
        .await
        .expect("the job's traceparent");
    assert_eq!(
        stored.as_deref(),
        Some(header.as_str()),
        "the job row keeps it"
    );
    sys.stop().await;
}

/// Accepting a change records its job without touching the order's row: a request for an
/// order that a worker's transaction holds locked (mid-batch, or in a bulk chunk) is
/// answered at once, not when that transaction ends — the ingress has one writer, and a
/// submission waiting there would hold up every other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_accepted_while_a_worker_holds_its_order_locked() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;

    // The lock a worker batch takes on the orders it applies (`orders::load_many`).
    let mut worker = sys.db().begin().await.expect("begin");
    sqlx::query("select id from orders where id = $1 for update")
        .bind(order)
        .execute(&mut *worker)
        .await
        .expect("lock the order");
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        sys.change_status(&atok, order, &json!({"action": "mark_paid"}), &[]),
    )
    .await
    .expect(
        "the request was still waiting after 10 s: accepting it waited for the order's row lock",
    );
    let answer = answered.expect_status(202, "change-status while the order is locked");
    let job = uuid_of(&answer.body, "job_id");

    // Once the worker's transaction ends, the change is applied as usual.
    worker.rollback().await.expect("release the lock");
    let done = sys.wait_job(&atok, job).await;
    assert_eq!(done["status"], "succeeded", "job: {done}");
}
