//! A job's effect happens once: redelivered job messages and repeated requests with the
//! same Idempotency-Key change nothing more.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::harness::metrics::Scrape;
use crate::harness::{Answer, TestSystem, uuid_of, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_job_delivery_changes_the_order_once() {
    let sys = TestSystem::start().await;
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;

    let paid = sys
        .apply(&atok, order, &json!({"action": "mark_paid"}))
        .await;
    let paid_job = uuid_of(&paid, "id");

    // The broker redelivers the same message twice (as after a lost ack).
    sys.broker().publish_job_message(paid_job).await;
    sys.broker().publish_job_message(paid_job).await;

    // A later job on the same order, queued behind the duplicates, is applied normally.
    let confirm = sys.apply(&atok, order, &json!({"action": "confirm"})).await;
    let confirm_job = uuid_of(&confirm, "id");

    let job = sys
        .get(&format!("/jobs/{paid_job}"), Some(&atok))
        .await
        .expect_status(200, "GET job")
        .body;
    assert_eq!(
        job["status"], "succeeded",
        "a duplicate must not re-run (and so reject) a finished job: {job}"
    );
    assert!(job["error"].is_null(), "{job}");

    let history = sys.history(&atok, order).await;
    let actions: Vec<&str> = history
        .iter()
        .map(|row| row["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        actions,
        ["create", "mark_paid", "confirm"],
        "one row per applied job: {history:#?}"
    );
    assert_eq!(history[1]["job_id"], paid_job.to_string());
    assert_eq!(history[2]["job_id"], confirm_job.to_string());

    let current = sys.order(&atok, order).await;
    assert_eq!(current["version"], 3, "{current}");
    assert_eq!(
        (&current["status"], &current["payment_status"]),
        (&json!("confirmed"), &json!("paid")),
        "{current}"
    );

    let audit = sys
        .count(
            "select count(*) from order_status_history where order_id = $1",
            order,
        )
        .await;
    let outbox = sys
        .count("select count(*) from outbox where order_id = $1", order)
        .await;
    assert_eq!(
        (audit, outbox),
        (3, 3),
        "exactly one history row and one outbox row per change"
    );
    let paid_rows = sys
        .count(
            "select count(*) from order_status_history where job_id = $1",
            paid_job,
        )
        .await;
    assert_eq!(paid_rows, 1, "the duplicated job is audited once");

    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_repeat_returns_the_first_job() {
    let sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    let other_admin = sys.token("admin", Uuid::new_v4());
    let order = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;
    let body = json!({"action": "mark_paid", "reason": "card captured"});
    let key = [("Idempotency-Key", "pay-order-once")];

    let first = sys
        .change_status(&admin, order, &body, &key)
        .await
        .expect_status(202, "first request with the key");
    let first_job = uuid_of(&first.body, "job_id");

    // The repeat, while the first may still be queued or running.
    let repeat = sys.change_status(&admin, order, &body, &key).await;
    assert_returns_job(&repeat, first_job, "the repeat returns the first job");
    let job = sys.wait_job(&admin, first_job).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // And after it finished.
    let late = sys.change_status(&admin, order, &body, &key).await;
    assert_returns_job(
        &late,
        first_job,
        "a repeat after completion returns the first job",
    );
    assert_eq!(
        sys.jobs_of_order(order).await,
        1,
        "one job row for the three requests"
    );

    // The key is per actor: another admin's request with the same key is its own job.
    let other = sys
        .change_status(&other_admin, order, &body, &key)
        .await
        .expect_status(202, "another actor, same key");
    let other_job = uuid_of(&other.body, "job_id");
    assert_ne!(
        other_job, first_job,
        "same key from a different actor is a different job"
    );
    let job = sys.wait_job(&other_admin, other_job).await;
    assert_eq!(
        job["status"], "rejected",
        "mark_paid needs an unpaid order, this one is paid: {job}"
    );
    assert_eq!(sys.jobs_of_order(order).await, 2);

    let history = sys.history(&admin, order).await;
    let paid_rows = history
        .iter()
        .filter(|row| row["action"] == "mark_paid")
        .count();
    assert_eq!(paid_rows, 1, "paid once: {history:#?}");
    assert_eq!(sys.order(&admin, order).await["version"], 2);

    sys.stop().await;
}

/// A batch is settled by one ack for all of its deliveries (`multiple`): once a burst of
/// jobs is applied, none of their messages is left unacknowledged — a graceful stop finds
/// nothing to hand back to the queue for a redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_of_an_applied_batch_is_acknowledged() {
    const JOBS: usize = 24;
    // A wide window, so the burst is applied in batches of several deliveries.
    let mut sys = TestSystem::start_with_env(&[("WORKER_BATCH_WAIT_MS", "300")]).await;
    let admin = sys.token("admin", Uuid::new_v4());
    let customer = sys.token("customer", Uuid::new_v4());
    let mut orders = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        orders.push(sys.create_simple_order(&customer).await);
    }
    let paid = json!({"action": "mark_paid"});
    let jobs =
        futures::future::join_all(orders.iter().map(|&o| sys.submit(&admin, o, &paid))).await;
    for &job in &jobs {
        let job = sys.wait_job(&admin, job).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let scrape = Scrape::of(&sys).await;
    let batches = scrape.value("orderflow_worker_batch_size_count", &[]);
    assert!(
        batches >= 1.0 && batches < JOBS as f64,
        "the burst must have been applied in batches of several jobs: {batches} batches for {JOBS} jobs"
    );

    sys.terminate(Duration::from_secs(30)).await;
    let queue = sys.broker().jobs_queue();
    // Once the worker's consumer is gone, the broker has returned whatever it held unacked.
    let ready = wait::expect_within(
        Duration::from_secs(10),
        "the worker's consumer gone",
        || async {
            match sys.broker().queue_counts(&queue).await {
                (ready, 0) => Ok(ready),
                (_, consumers) => Err(format!("{consumers} consumers")),
            }
        },
    )
    .await;
    assert_eq!(
        ready, 0,
        "every delivery of an applied batch is acked: {ready} came back to the queue"
    );
    sys.stop().await;
}

/// A repeat with the key is answered 200 or 202 with the first job.
fn assert_returns_job(answer: &Answer, first_job: Uuid, what: &str) {
    assert!(
        matches!(answer.status.as_u16(), 200 | 202),
        "{what}: {} {}",
        answer.status,
        answer.body
    );
    assert_eq!(uuid_of(&answer.body, "job_id"), first_job, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_several_jobs_applies_each_once_even_redelivered() {
    let sys = TestSystem::start().await;
    let admin = Uuid::new_v4();
    let atok = sys.token("admin", admin);
    let ctok = sys.token("customer", Uuid::new_v4());
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(sys.create_simple_order(&ctok).await);
    }
    // Three recorded jobs that no one has published yet (as the ingress's intake leaves a
    // statement's jobs), then one message carrying all three, as the intake publishes it.
    let jobs: Vec<Uuid> = orders.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "insert into jobs (id, kind, order_id, actor_id, actor_role, payload)
         select j, 'change_status', o, $3, 'admin', '{\"action\": \"mark_paid\"}'
         from unnest($1::uuid[], $2::uuid[]) as t(j, o)",
    )
    .bind(&jobs)
    .bind(&orders)
    .bind(admin)
    .execute(sys.db())
    .await
    .expect("recording the jobs");
    let message =
        json!({"jobs": jobs.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()}).to_string();
    sys.broker()
        .publish_raw_job_message(message.as_bytes())
        .await;
    for job_id in &jobs {
        let job = sys.wait_job(&atok, *job_id).await;
        assert_eq!(
            job["status"], "succeeded",
            "every job of the message: {job}"
        );
    }

    // Redelivered (a lost ack), then a job behind it: the message changes nothing more.
    sys.broker()
        .publish_raw_job_message(message.as_bytes())
        .await;
    sys.apply(&atok, orders[0], &json!({"action": "confirm"}))
        .await;
    for (order, job_id) in orders.iter().zip(&jobs) {
        let rows = sys
            .count(
                "select count(*) from order_status_history where job_id = $1",
                *job_id,
            )
            .await;
        assert_eq!(rows, 1, "job {job_id} is audited once");
        let current = sys.order(&atok, *order).await;
        assert_eq!(current["payment_status"], "paid", "{current}");
    }
    let current = sys.order(&atok, orders[0]).await;
    assert_eq!(
        (&current["status"], &current["version"]),
        (&json!("confirmed"), &json!(3)),
        "paid once, then confirmed: {current}"
    );
    sys.stop().await;
}
