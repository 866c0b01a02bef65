//! The endpoints the operations console added, over HTTP against the real system: the
//! overview snapshot (jobs, queues, outbox lag, bulks, history retention, change rate),
//! retrying every dead job matching a filter, discarding a dead job, the status-history
//! retention run by the active relay, and the console's static files.

use crate::harness::TestSystem;
use crate::harness::wait::expect_within;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// A job the worker cannot read, published: it ends dead with code `invalid_job`.
async fn dead_job(sys: &TestSystem, admin: &str, admin_id: Uuid) -> Uuid {
    let order = sys.create_simple_order(admin).await;
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
    let job = sys.wait_job(admin, job_id).await;
    assert_eq!(job["status"], "dead", "{job}");
    job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_are_retried_by_filter_and_discarded_once() {
    let sys = TestSystem::start().await;
    let admin_id = Uuid::new_v4();
    let admin = sys.token("admin", admin_id);
    let support = sys.token("support", Uuid::new_v4());
    let customer = sys.token("customer", Uuid::new_v4());
    let mut dead = Vec::new();
    for _ in 0..3 {
        dead.push(dead_job(&sys, &admin, admin_id).await);
    }

    // The filters of the dead-letter view; support may look, not act.
    let listed = sys
        .get(
            "/admin/jobs?status=dead&error_code=invalid_job&kind=change_status",
            Some(&support),
        )
        .await
        .expect_status(200, "support lists dead jobs by error code")
        .body;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(3), "{listed}");
    let none = sys
        .get(
            "/admin/jobs?status=dead&error_code=apply_failed",
            Some(&admin),
        )
        .await
        .expect_status(200, "another error code")
        .body;
    assert_eq!(none["jobs"], json!([]), "{none}");
    sys.get("/admin/jobs", Some(&customer)).await.expect_error(
        403,
        Some("forbidden_role"),
        "a customer lists jobs",
    );
    for (who, token) in [("support", &support), ("customer", &customer)] {
        sys.post("/admin/jobs/dead/retry", Some(token), &json!({}))
            .await
            .expect_error(403, Some("forbidden_role"), &format!("{who} retries all"));
        sys.post(
            &format!("/admin/jobs/{}/discard", dead[0]),
            Some(token),
            &json!({}),
        )
        .await
        .expect_error(403, Some("forbidden_role"), &format!("{who} discards"));
    }

    // A reason with a NUL is refused in the error shape, before anything is written.
    sys.post(
        &format!("/admin/jobs/{}/discard", dead[0]),
        Some(&admin),
        &json!({"reason": "by\u{0}phone"}),
    )
    .await
    .expect_error(400, Some("invalid_request"), "a NUL in the discard reason");

    // Discard one: it ends cancelled, keeping why it died; only once.
    let discarded = sys
        .post(
            &format!("/admin/jobs/{}/discard", dead[0]),
            Some(&admin),
            &json!({"reason": "the order was handled by phone"}),
        )
        .await
        .expect_status(200, "discard a dead job")
        .body;
    assert_eq!(discarded["status"], "cancelled", "{discarded}");
    assert_eq!(discarded["error"]["code"], "discarded", "{discarded}");
    assert_eq!(
        discarded["error"]["message"],
        "the order was handled by phone"
    );
    assert_eq!(
        discarded["error"]["dead_error"]["code"], "invalid_job",
        "why it died is kept: {discarded}"
    );
    sys.post(
        &format!("/admin/jobs/{}/discard", dead[0]),
        Some(&admin),
        &json!({}),
    )
    .await
    .expect_error(409, Some("not_dead"), "discarding twice");
    sys.post(
        &format!("/admin/jobs/{}/discard", Uuid::new_v4()),
        Some(&admin),
        &json!({}),
    )
    .await
    .expect_error(404, Some("not_found"), "discarding an unknown job");

    // The defect is fixed; retry every dead job with that error code — twice at once.
    sqlx::query(r#"update jobs set payload = '{"action": "mark_paid"}'::jsonb where id = any($1)"#)
        .bind(&dead[1..])
        .execute(sys.db())
        .await
        .expect("fixing the payloads");
    let filter = json!({"error_code": "invalid_job"});
    let (a, b) = tokio::join!(
        sys.post("/admin/jobs/dead/retry", Some(&admin), &filter),
        sys.post("/admin/jobs/dead/retry", Some(&admin), &filter)
    );
    let (a, b) = (
        a.expect_status(200, "retry all matching").body,
        b.expect_status(200, "retry all matching, again").body,
    );
    assert_eq!(
        a["requeued"].as_u64().unwrap_or(0) + b["requeued"].as_u64().unwrap_or(0),
        2,
        "each matching dead job is requeued once: {a} / {b}"
    );
    assert_eq!(a["more"], false, "{a}");
    for id in &dead[1..] {
        let job = sys.wait_job(&admin, *id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "attempts were reset: {job}");
    }
    let again = sys
        .post("/admin/jobs/dead/retry", Some(&admin), &json!({}))
        .await
        .expect_status(200, "nothing left to retry")
        .body;
    assert_eq!(again["requeued"], 0, "{again}");
    sys.post(
        "/admin/jobs/dead/retry",
        Some(&admin),
        &json!({"status": "dead"}),
    )
    .await
    .expect_error(400, Some("invalid_request"), "an unknown filter field");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_reports_the_pipeline_and_history_retention_prunes_old_rows() {
    let sys = TestSystem::start_with_env(&[
        ("HISTORY_RETENTION_DAYS", "30"),
        ("RETENTION_INTERVAL_SECS", "1"),
    ])
    .await;
    let admin = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&admin).await;
    sys.apply(&admin, order, &json!({"action": "mark_paid"}))
        .await;

    // An audit row from 40 days ago (as an old deployment would have), and the new ones.
    sqlx::query(
        "insert into order_status_history (order_id, from_status, to_status, action, actor_id, actor_role, version, created_at)
         values ($1, null, 'pending', 'create', $2, 'admin', 0, now() - interval '40 days')",
    )
    .bind(order)
    .bind(Uuid::new_v4())
    .execute(sys.db())
    .await
    .expect("inserting an old history row");
    expect_within(
        Duration::from_secs(20),
        "the relay pruning history older than 30 days",
        || async {
            let old: i64 = sqlx::query_scalar(
                "select count(*) from order_status_history where created_at < now() - interval '30 days'",
            )
            .fetch_one(sys.db())
            .await
            .expect("counting old rows");
            if old == 0 { Ok(()) } else { Err(format!("{old} old rows")) }
        },
    )
    .await;
    let kept = sys.history(&admin, order).await;
    assert_eq!(
        kept.iter()
            .map(|h| h["action"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["create", "mark_paid"],
        "recent history is kept"
    );

    for role in ["admin", "support"] {
        let o = sys
            .get("/admin/overview", Some(&sys.token(role, Uuid::new_v4())))
            .await
            .expect_status(200, &format!("{role} reads the overview"))
            .body;
        for status in [
            "queued",
            "running",
            "succeeded",
            "rejected",
            "retrying",
            "dead",
            "cancelled",
        ] {
            assert!(o["jobs"][status].is_i64(), "jobs.{status} is counted: {o}");
        }
        assert_eq!(o["jobs"]["succeeded"], 1, "{o}");
        assert_eq!(
            o["queues"][sys.broker().jobs_queue()],
            0,
            "queue depths by name: {o}"
        );
        assert!(o["outbox"]["lag_secs"].is_number(), "{o}");
        assert!(o["outbox"]["published_seq"].is_i64(), "{o}");
        assert_eq!(o["bulk"]["in_flight"], 0, "{o}");
        assert_eq!(o["history"]["retention_days"], 30, "{o}");
        assert!(o["history"]["oldest_at"].is_string(), "{o}");
        let series = o["changes"]["series"].as_array().expect("a series");
        assert_eq!(series.len(), 90, "15 minutes of 10-second buckets");
        let total: i64 = series.iter().map(|b| b[1].as_i64().unwrap_or(0)).sum();
        assert_eq!(total, 2, "the creation and the change, counted: {series:?}");
    }
    sys.get(
        "/admin/overview",
        Some(&sys.token("customer", Uuid::new_v4())),
    )
    .await
    .expect_error(403, Some("forbidden_role"), "a customer reads the overview");
    sys.get("/admin/overview", None)
        .await
        .expect_error(401, Some("unauthorized"), "no token");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_is_served_from_the_binary_with_revalidation() {
    let sys = TestSystem::start().await;
    let page = sys
        .get("/console", None)
        .await
        .expect_status(200, "GET /console");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'")),
        "{:?}",
        page.headers
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let html = page.body.as_str().unwrap_or_default().to_owned();
    assert!(html.contains("/console/app.js"), "{html}");

    let script = sys
        .get("/console/pages/order.js", None)
        .await
        .expect_status(200, "a module");
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(script.header("x-content-type-options"), Some("nosniff"));
    let etag = script.header("etag").expect("an ETag").to_owned();
    sys.send(
        sys.request(Method::GET, "/console/pages/order.js", None)
            .header("if-none-match", &etag),
        "revalidating",
    )
    .await
    .expect_status(304, "revalidated with its ETag");
    assert_eq!(
        sys.get("/console/app.css", None)
            .await
            .header("content-type"),
        Some("text/css; charset=utf-8")
    );
    sys.get("/console/../Cargo.toml", None)
        .await
        .expect_status(404, "outside the console");
    sys.get("/console/nothing.js", None)
        .await
        .expect_status(404, "an unknown file");
    sys.stop().await;
}
