//! Poison messages and dead jobs: a message the worker cannot read is parked in
//! `orderflow.jobs.dead` at once with its reason, and the queue keeps flowing; a job that
//! cannot be applied ends `dead` with its error and its message parked, and an admin can
//! redrive it — once; business rejections are outcomes, never retried or parked.

use std::time::Duration;

use lapin::message::Delivery;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{JOB_DEADLINE, TestSystem, message_header, message_id};

fn dead_queue(sys: &TestSystem) -> String {
    sys.broker().name("orderflow.jobs.dead")
}

/// The delay queues of the default retry policy (JOB_MAX_ATTEMPTS=5: steps 1 to 4).
fn retry_queues(sys: &TestSystem) -> Vec<String> {
    (1..=4)
        .map(|n| sys.broker().name(&format!("orderflow.jobs.retry.{n}")))
        .collect()
}

async fn take_dead(sys: &TestSystem, what: &str) -> Delivery {
    sys.broker()
        .take_message_within(&dead_queue(sys), JOB_DEADLINE)
        .await
        .unwrap_or_else(|| {
            panic!(
                "nothing reached {} within {JOB_DEADLINE:?}: expected {what}",
                dead_queue(sys)
            )
        })
}

/// A change that succeeds, submitted after something else: once it is terminal, the
/// worker (one consumer, batches in delivery order) has settled everything queued before it.
async fn barrier(sys: &TestSystem, admin: &str) {
    let order = sys.create_simple_order(admin).await;
    sys.apply(admin, order, &json!({"action": "mark_paid"}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_job_message_is_parked_with_its_reason() {
    let sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    let poison: [&[u8]; 4] = [
        b"\x00\xffnot json at all",
        br#"{"job_id": "not-a-uuid"}"#,
        br#"{"job_id": "0190e6a4-0000-7000-8000-000000000000", "extra": 1}"#,
        b"[]",
    ];
    for body in poison {
        sys.broker().publish_raw_job_message(body).await;
    }

    // The queue keeps flowing: a real change behind the poison is applied.
    barrier(&sys, &admin).await;

    let mut parked = Vec::new();
    for n in 0..poison.len() {
        let message = take_dead(&sys, &format!("poison message {n}")).await;
        let reason = message_header(&message, "x-reason").unwrap_or_default();
        assert!(
            reason.contains("unparseable"),
            "a parked poison message says why (x-reason mentions `unparseable`): headers {:?}",
            message.properties.headers()
        );
        parked.push(message.data.clone());
    }
    let mut expected: Vec<Vec<u8>> = poison.iter().map(|b| b.to_vec()).collect();
    expected.sort();
    parked.sort();
    assert_eq!(
        parked, expected,
        "each poison message is parked as it was published"
    );

    assert_eq!(
        sys.broker().queue_depth(&dead_queue(&sys)).await,
        0,
        "only the poison was parked"
    );
    assert_eq!(
        sys.broker().queue_depth(&sys.broker().jobs_queue()).await,
        0,
        "the work queue is drained"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_that_cannot_be_applied_is_dead_and_can_be_redriven_once() {
    let sys = TestSystem::start().await;
    let admin_id = Uuid::new_v4();
    let admin = sys.token("admin", admin_id);
    let customer = sys.token("customer", Uuid::new_v4());
    let order = sys.create_simple_order(&customer).await;

    // A job the worker cannot read, as a defect (or an older/newer release) would leave it.
    let job_id = Uuid::now_v7();
    sqlx::query(
        "insert into jobs (id, kind, order_id, actor_id, actor_role, payload, status)
         values ($1, 'change_status', $2, $3, 'admin', '{\"action\": \"teleport\"}'::jsonb, 'queued')",
    )
    .bind(job_id)
    .bind(order)
    .bind(admin_id)
    .execute(sys.db())
    .await
    .expect("inserting an unreadable job");
    sys.broker().publish_job_message(job_id).await;
    assert_dead_and_parked(&sys, &admin, job_id).await;
    assert_listed_dead(&sys, &admin, job_id).await;

    assert_only_admins_redrive(&sys, &admin, &customer, job_id).await;

    // The operator fixes what made it unreadable, then redrives it — twice at once.
    sqlx::query(r#"update jobs set payload = '{"action": "mark_paid"}'::jsonb where id = $1"#)
        .bind(job_id)
        .execute(sys.db())
        .await
        .expect("fixing the payload");
    redrive_twice_at_once(&sys, &admin, job_id).await;
    let job = sys.wait_job(&admin, job_id).await;
    assert_eq!(
        job["status"], "succeeded",
        "the redriven job applies: {job}"
    );
    assert_eq!(job["attempts"], 1, "a redrive resets the attempts: {job}");
    assert_eq!(sys.order(&admin, order).await["payment_status"], "paid");
    let retry_path = format!("/admin/jobs/{job_id}/retry");
    sys.post(&retry_path, Some(&admin), &json!({}))
        .await
        .expect_error(409, Some("not_dead"), "redrive of a job that succeeded");

    // Someone shovels the parked copy back into the work queue: nothing applies twice.
    sys.broker().publish_job_message(job_id).await;
    barrier(&sys, &admin).await;
    let history = sys.history(&admin, order).await;
    let paid = history
        .iter()
        .filter(|h| h["action"] == "mark_paid")
        .count();
    assert_eq!(
        paid, 1,
        "exactly one mark_paid in the history: {history:#?}"
    );
    assert_eq!(
        sys.wait_job(&admin, job_id).await["attempts"],
        1,
        "the duplicate did not claim the job again"
    );
    assert_eq!(
        sys.broker().queue_depth(&dead_queue(&sys)).await,
        0,
        "nothing else was parked"
    );
    sys.stop().await;
}

/// An unreadable job is dead with its error, not retried; its message is parked with a
/// reason.
async fn assert_dead_and_parked(sys: &TestSystem, admin: &str, job_id: Uuid) {
    let job = sys.wait_job(admin, job_id).await;
    assert_eq!(
        job["status"], "dead",
        "an unreadable job is dead, not retried: {job}"
    );
    assert!(
        job["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
            && job["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
        "a dead job carries its error: {job}"
    );
    let parked = take_dead(sys, "the dead job's message").await;
    assert_eq!(
        message_id(&parked).as_deref(),
        Some(job_id.to_string().as_str()),
        "the parked message is the job's"
    );
    let reason = message_header(&parked, "x-reason").unwrap_or_default();
    assert!(
        !reason.is_empty(),
        "the parked message says why: headers {:?}",
        parked.properties.headers()
    );
    for queue in retry_queues(sys) {
        assert_eq!(
            sys.broker().queue_depth(&queue).await,
            0,
            "a job that cannot be read is not retried ({queue})"
        );
    }
}

/// `GET /admin/jobs?status=dead` lists exactly this job, with its error.
async fn assert_listed_dead(sys: &TestSystem, admin: &str, job_id: Uuid) {
    let listed = sys
        .get("/admin/jobs?status=dead", Some(admin))
        .await
        .expect_status(200, "GET /admin/jobs?status=dead")
        .body;
    let ids: Vec<&str> = listed["jobs"].as_array().map_or(vec![], |jobs| {
        jobs.iter().filter_map(|j| j["id"].as_str()).collect()
    });
    assert_eq!(
        ids,
        vec![job_id.to_string().as_str()],
        "the dead job is listed: {listed}"
    );
    assert!(
        listed["jobs"][0]["error"].is_object(),
        "the listing shows the error: {listed}"
    );
}

/// Only admins redrive; unknown jobs are 404.
async fn assert_only_admins_redrive(sys: &TestSystem, admin: &str, customer: &str, job_id: Uuid) {
    let retry_path = format!("/admin/jobs/{job_id}/retry");
    for (role, token) in [
        ("support", sys.token("support", Uuid::new_v4())),
        ("customer", customer.to_owned()),
    ] {
        sys.post(&retry_path, Some(&token), &json!({}))
            .await
            .expect_error(403, Some("forbidden_role"), &format!("{role} redrives"));
    }
    sys.post(
        &format!("/admin/jobs/{}/retry", Uuid::new_v4()),
        Some(admin),
        &json!({}),
    )
    .await
    .expect_error(404, Some("not_found"), "redrive of an unknown job");
}

/// Two concurrent redrives: one queues the job (202), the other is refused `not_dead`.
async fn redrive_twice_at_once(sys: &TestSystem, admin: &str, job_id: Uuid) {
    let retry_path = format!("/admin/jobs/{job_id}/retry");
    let empty = json!({});
    let (first, second) = tokio::join!(
        sys.post(&retry_path, Some(admin), &empty),
        sys.post(&retry_path, Some(admin), &empty)
    );
    let mut statuses = [first.status.as_u16(), second.status.as_u16()];
    statuses.sort();
    assert_eq!(
        statuses,
        [202, 409],
        "two concurrent redrives queue the job once: {} / {}",
        first.body,
        second.body
    );
    let (accepted, refused) = if first.status.as_u16() == 202 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(refused.code(), Some("not_dead"), "{}", refused.body);
    assert_eq!(
        accepted.body["job_id"],
        job_id.to_string(),
        "{}",
        accepted.body
    );
    assert_eq!(accepted.body["status"], "queued", "{}", accepted.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_rejections_are_not_retried() {
    let sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    let order = sys
        .create_simple_order(&sys.token("customer", Uuid::new_v4()))
        .await;

    let job_id = sys
        .submit(&admin, order, &json!({"action": "deliver"}))
        .await;
    let job = sys.wait_job(&admin, job_id).await;
    assert_eq!(
        job["status"], "rejected",
        "deliver on a pending order is a rejection: {job}"
    );
    assert_eq!(job["error"]["code"], "invalid_transition", "{job}");
    assert_eq!(job["attempts"], 1, "a rejection is decided once: {job}");

    // Everything the worker did for the rejected job is settled once a later job is done.
    barrier(&sys, &admin).await;
    let job = sys
        .get(&format!("/jobs/{job_id}"), Some(&admin))
        .await
        .expect_status(200, "GET /jobs/{id}")
        .body;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("rejected"), Some(1)),
        "{job}"
    );
    let mut queues = vec![sys.broker().jobs_queue(), dead_queue(&sys)];
    queues.extend(retry_queues(&sys));
    for queue in queues {
        assert_eq!(
            sys.broker().queue_depth(&queue).await,
            0,
            "a rejection leaves nothing in {queue}"
        );
    }
    assert_eq!(
        sys.order(&admin, order).await["version"],
        1,
        "the rejected change did not touch the order"
    );
    assert!(
        sys.broker()
            .take_message_within(&dead_queue(&sys), Duration::from_millis(200))
            .await
            .is_none(),
        "nothing was parked"
    );
    sys.stop().await;
}
