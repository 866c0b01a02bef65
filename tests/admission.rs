//! Admission control: past its capacity the ingress refuses at once — 503 `overloaded`
//! with `Retry-After`, nothing recorded — instead of letting requests queue for the
//! database, and `/readyz` says it is overloaded; the work it did accept is applied once.
//!
//! Capacity is exhausted by holding a lock in the test's own database, not by load: the
//! in-flight gate with a lock that stops job inserts (requests hold their slots while they
//! wait for it), the backlog gate with a lock that stops the worker's audit rows (jobs pile
//! up in the queue while the ingress still accepts).

use std::time::Duration;

use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::harness::{Answer, TestSystem, metrics, wait};

const MARK_PAID: &str = r#"{"action": "mark_paid"}"#;

/// Panics unless `answer` is a 503 `overloaded` with a whole `Retry-After` ≥ 1 s.
fn expect_overloaded(answer: Answer, what: &str) -> Answer {
    let answer = answer.expect_error(503, Some("overloaded"), what);
    let secs: u64 = answer
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: 503 without a Retry-After in seconds"));
    assert!(secs >= 1, "{what}: Retry-After {secs}");
    answer
}

/// `/readyz`'s answer: (status, `load`).
async fn readiness(sys: &TestSystem) -> (u16, String) {
    let answer = sys.get("/readyz", None).await;
    let load = answer.body["load"].as_str().unwrap_or_default().to_owned();
    (answer.status.as_u16(), load)
}

/// A transaction of the test's own holding `lock` (a `LOCK TABLE` statement) until it is
/// rolled back.
async fn hold(sys: &TestSystem, lock: &str) -> Transaction<'static, Postgres> {
    let mut tx = sys
        .db()
        .begin()
        .await
        .expect("a transaction of the test's own");
    sqlx::query(lock).execute(&mut *tx).await.expect(lock);
    tx
}

/// Waits until every order in `ids` is paid, and asserts each was changed exactly once.
async fn expect_paid_once(sys: &TestSystem, ids: &[Uuid]) {
    for id in ids {
        wait::expect_within(wait::JOB_DEADLINE, "an accepted change applied", || async {
            let paid = sys
                .count(
                    "select count(*) from orders where id = $1 and payment_status = 'paid'",
                    *id,
                )
                .await;
            (paid == 1)
                .then_some(())
                .ok_or(format!("order {id} not paid yet"))
        })
        .await;
        let changes = sys
            .count(
                "select count(*) from order_status_history where order_id = $1 and action = 'mark_paid'",
                *id,
            )
            .await;
        assert_eq!(changes, 1, "order {id}: mark_paid applied {changes} times");
        assert_eq!(sys.jobs_of_order(*id).await, 1, "order {id}: one job");
    }
}

/// How long a request may wait for a slot in the in-flight test: long enough that a
/// refusal without waiting cannot be mistaken for one after it.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_slots_are_refused_and_nothing_is_recorded() {
    let queue_ms = QUEUE_WAIT.as_millis().to_string();
    let sys = TestSystem::start_with_env(&[
        ("INGRESS_MAX_IN_FLIGHT", "2"),
        ("INGRESS_QUEUE_MS", &queue_ms),
        ("RATE_PER_ACTOR", "0"),
    ])
    .await;
    let admin = sys.token("admin", Uuid::new_v4());
    let mut orders = Vec::new();
    for _ in 0..4 {
        orders.push(sys.create_simple_order(&admin).await);
    }
    let body: Value = serde_json::from_str(MARK_PAID).unwrap();

    // Job inserts wait for this lock; the two requests that reach them hold both slots.
    let lock = hold(&sys, "lock table jobs in share mode").await;
    let held: Vec<_> = orders[..2]
        .iter()
        .map(|id| {
            let (sys, admin, body, id) = (&sys, &admin, &body, *id);
            async move { sys.change_status(admin, id, body, &[]).await }
        })
        .collect();
    let held = futures::future::join_all(held);
    let refused = async {
        metrics::wait_for(
            &sys,
            "orderflow_ingress_requests_in_flight",
            &[],
            "= 2 (both slots taken)",
            |v| v == 2.0,
            Duration::from_secs(10),
        )
        .await;
        // The third and fourth are answered while the other two still wait for the lock
        // (the lock is only released after: one that queued instead would never be
        // answered). The third waits the queue deadline for a slot; the fourth arrives
        // while the ingress is refusing, and is refused without waiting.
        let mut answers = Vec::new();
        for (order, nth) in [(orders[2], "third"), (orders[3], "fourth")] {
            let started = std::time::Instant::now();
            let answer =
                tokio::time::timeout(QUEUE_WAIT * 5, sys.change_status(&admin, order, &body, &[]))
                    .await
                    .unwrap_or_else(|_| {
                        panic!("a {nth} change was not refused while both slots were taken")
                    });
            answers.push((answer, started.elapsed()));
        }
        let ready = readiness(&sys).await;
        lock.rollback().await.expect("releasing the lock");
        (answers, ready)
    };
    let (held, (answers, (ready_status, load))) = tokio::join!(held, refused);

    let [(third, third_took), (fourth, fourth_took)] = <[_; 2]>::try_from(answers).ok().unwrap();
    expect_overloaded(third, "a third change while two hold the slots");
    assert!(
        third_took >= QUEUE_WAIT,
        "the first request without a slot is refused after waiting {QUEUE_WAIT:?} for one, not after {third_took:?}"
    );
    expect_overloaded(fourth, "a fourth change while the ingress is refusing");
    assert!(
        fourth_took < QUEUE_WAIT / 2,
        "while refusing, a request without a slot is refused at once, not after {fourth_took:?}"
    );
    assert_eq!(ready_status, 503, "/readyz while refusing: {load}");
    assert!(load.starts_with("overloaded"), "/readyz load: {load:?}");
    for answer in held {
        answer.expect_status(202, "a change holding a slot, once the lock is gone");
    }
    expect_paid_once(&sys, &orders[..2]).await;
    for refused in &orders[2..] {
        assert_eq!(
            sys.jobs_of_order(*refused).await,
            0,
            "a refused change left no job"
        );
    }
    let scrape = metrics::Scrape::of(&sys).await;
    assert_eq!(
        scrape.value("orderflow_overload_refused_total", &[("gate", "in_flight")]),
        2.0
    );
    // Capacity is back: the refused changes go through when retried.
    for refused in &orders[2..] {
        sys.submit(&admin, *refused, &body).await;
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_jobs_are_refused_while_the_queue_is_too_deep_and_accepted_once_it_drains() {
    let sys = TestSystem::start_with_env(&[
        ("INGRESS_MAX_BACKLOG", "3"),
        ("WORKER_PREFETCH", "1"),
        ("WORKER_BATCH_SIZE", "1"),
        ("RATE_PER_ACTOR", "0"),
    ])
    .await;
    let admin = sys.token("admin", Uuid::new_v4());
    let body: Value = serde_json::from_str(MARK_PAID).unwrap();
    let mut orders = Vec::new();
    for _ in 0..6 {
        orders.push(sys.create_simple_order(&admin).await);
    }

    // The worker writes an audit row with each change: with this lock it stops, while the
    // ingress (which writes none for a change) still records and queues jobs.
    let lock = hold(&sys, "lock table order_status_history in share mode").await;
    // One job waits in the stopped worker, four in the queue: one more than the limit.
    let accepted = &orders[..5];
    for id in accepted {
        sys.submit(&admin, *id, &body).await;
    }
    let load = wait::expect_within(
        Duration::from_secs(5),
        "/readyz says overloaded",
        || async {
            let (status, load) = readiness(&sys).await;
            (status == 503 && load.starts_with("overloaded"))
                .then_some(load.clone())
                .ok_or(format!("{status} {load}"))
        },
    )
    .await;
    assert!(load.contains("queue"), "the reason names the queue: {load}");

    let refused_order = orders[5];
    let answer = sys.change_status(&admin, refused_order, &body, &[]).await;
    expect_overloaded(answer, "a change while the queue is too deep");
    // Reads are not refused by the backlog gate.
    sys.get(&format!("/orders/{refused_order}"), Some(&admin))
        .await
        .expect_status(200, "reading an order while jobs are refused");

    lock.rollback().await.expect("releasing the lock");
    expect_paid_once(&sys, accepted).await;
    assert_eq!(
        sys.jobs_of_order(refused_order).await,
        0,
        "the refused change left no job"
    );
    wait::expect_within(
        Duration::from_secs(10),
        "ready again once drained",
        || async {
            let (status, load) = readiness(&sys).await;
            (status == 200 && load == "ok")
                .then_some(())
                .ok_or(format!("{status} {load}"))
        },
    )
    .await;
    sys.submit(&admin, refused_order, &body).await;
    let scrape = metrics::Scrape::of(&sys).await;
    assert_eq!(
        scrape.value("orderflow_overload_refused_total", &[("gate", "backlog")]),
        1.0
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_overload_holds_back_slots_until_it_is_over() {
    const SLOTS: usize = 4;
    let sys = TestSystem::start_with_env(&[
        ("INGRESS_MAX_IN_FLIGHT", "4"),
        ("INGRESS_QUEUE_MS", "50"),
        ("RATE_PER_ACTOR", "0"),
        ("RATE_PER_IP", "0"),
    ])
    .await;
    let admin = sys.token("admin", Uuid::new_v4());
    let body: Value = serde_json::from_str(MARK_PAID).unwrap();
    let mut orders = Vec::new();
    for _ in 0..2 * SLOTS + 1 {
        orders.push(sys.create_simple_order(&admin).await);
    }
    let change = |id: Uuid| {
        let (sys, admin, body) = (&sys, &admin, &body);
        async move { sys.change_status(admin, id, body, &[]).await }
    };
    let in_flight = |n: usize| {
        metrics::wait_for(
            &sys,
            "orderflow_ingress_requests_in_flight",
            &[],
            "(requests holding a slot)",
            move |v| v == n as f64,
            Duration::from_secs(10),
        )
    };
    let held_back = |n: usize, what: &'static str| {
        metrics::wait_for(
            &sys,
            "orderflow_ingress_slots_held_back",
            &[],
            what,
            move |v| v == n as f64,
            Duration::from_secs(10),
        )
    };

    // Every slot held (job inserts wait for the lock), then a burst: more than sixteen
    // refusals per slot within a second is a sustained overload, not a passing one.
    let lock = hold(&sys, "lock table jobs in share mode").await;
    let held = futures::future::join_all(orders[..SLOTS].iter().map(|id| change(*id)));
    let burst = async {
        in_flight(SLOTS).await;
        for _ in 0..16 * SLOTS + 1 {
            let answer = sys
                .get(&format!("/orders/{}", orders[0]), Some(&admin))
                .await;
            expect_overloaded(answer, "a read while every slot is held");
        }
        lock.rollback().await.expect("releasing the lock");
    };
    let (held, ()) = tokio::join!(held, burst);
    for answer in held {
        answer.expect_status(202, "a change that held its slot through the burst");
    }

    // Three of the four slots are held back as the requests in flight finish: one change
    // in flight is now all the ingress works on, and the next request is refused.
    held_back(3, "= 3 after the burst").await;
    let lock = hold(&sys, "lock table jobs in share mode").await;
    let one = change(orders[SLOTS]);
    let refused = async {
        in_flight(1).await;
        let answer = sys
            .get(&format!("/orders/{}", orders[0]), Some(&admin))
            .await;
        expect_overloaded(
            answer,
            "a read beside the one change in flight, slots held back",
        );
        lock.rollback().await.expect("releasing the lock");
    };
    let (one, ()) = tokio::join!(one, refused);
    one.expect_status(202, "the change in the one slot left");

    // A second without refusals: every slot is back.
    held_back(0, "= 0 once the overload is over").await;
    let lock = hold(&sys, "lock table jobs in share mode").await;
    let again = futures::future::join_all(orders[SLOTS + 1..].iter().map(|id| change(*id)));
    let full = async {
        in_flight(SLOTS).await;
        lock.rollback().await.expect("releasing the lock");
    };
    let (again, ()) = tokio::join!(again, full);
    for answer in again {
        answer.expect_status(202, "all four slots are back");
    }
    expect_paid_once(&sys, &orders).await;
    sys.stop().await;
}
