//! An Idempotency-Key makes a bulk submission happen once per actor: a repeat — even with a
//! changed body, even after the bulk finished — answers with the first bulk.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{history_rows_of_bulk, ids_json, n, orders, post_bulk, staffed, wait_bulk};
use crate::harness::{Answer, JOB_DEADLINE, TestSystem, uuid_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_bulk() {
    let staff = staffed().await;
    let (sys, atok) = (&staff.sys, &staff.atok);
    let orders = orders(sys, &staff.ctok, 2).await;
    let body = json!({"selection": {"order_ids": ids_json(&orders)}, "action": "mark_paid", "reason": "settlement 7", "mode": "best_effort"});
    let key = format!("settlement-{}", Uuid::new_v4());

    let first = post_bulk(sys, atok, &body, Some(&key))
        .await
        .expect_status(202, "first submission");
    let bulk_id = uuid_of(&first.body, "bulk_id");
    let job_id = uuid_of(&first.body, "job_id");
    // A repeat (even a changed body) by the same admin answers with the first bulk.
    let mut changed = body.clone();
    changed["reason"] = json!("settlement 7, resent");
    for (what, repeat) in [("same body", &body), ("changed body", &changed)] {
        let again = post_bulk(sys, atok, repeat, Some(&key))
            .await
            .expect_status(200, &format!("repeat ({what})"));
        assert_is_the_first(&again, what, bulk_id, job_id);
    }
    let bulk = wait_bulk(sys, atok, bulk_id, JOB_DEADLINE).await;
    assert_eq!(
        (bulk["status"].as_str(), n(&bulk, "applied")),
        (Some("completed"), 2),
        "{bulk}"
    );
    // Still the first bulk after it finished.
    let late = post_bulk(sys, atok, &body, Some(&key))
        .await
        .expect_status(200, "repeat after completion");
    assert_eq!(uuid_of(&late.body, "bulk_id"), bulk_id, "{}", late.body);
    assert_eq!(late.body["status"], "completed", "{}", late.body);
    assert_applied_once(sys, atok, bulk_id, &orders).await;

    // The key is per actor: another admin with the same key gets its own bulk.
    let otok = sys.token("admin", Uuid::new_v4());
    let theirs = post_bulk(sys, &otok, &body, Some(&key))
        .await
        .expect_status(202, "another admin, same key");
    let their_id = uuid_of(&theirs.body, "bulk_id");
    assert_ne!(their_id, bulk_id);
    let bulk = wait_bulk(sys, &otok, their_id, JOB_DEADLINE).await;
    assert_eq!(
        (n(&bulk, "applied"), n(&bulk, "rejected")),
        (0, 2),
        "already paid: {bulk}"
    );
    let keyed: i64 =
        sqlx::query_scalar("select count(*) from bulk_operations where idempotency_key = $1")
            .bind(&key)
            .fetch_one(sys.db())
            .await
            .unwrap();
    assert_eq!(keyed, 2, "one bulk per (actor, key)");
    post_bulk(sys, atok, &body, Some(""))
        .await
        .expect_error(400, None, "an empty Idempotency-Key");
    staff.sys.stop().await;
}

fn assert_is_the_first(again: &Answer, what: &str, bulk_id: Uuid, job_id: Uuid) {
    assert_eq!(
        uuid_of(&again.body, "bulk_id"),
        bulk_id,
        "{what}: {}",
        again.body
    );
    assert_eq!(
        uuid_of(&again.body, "job_id"),
        job_id,
        "{what}: {}",
        again.body
    );
    assert!(
        again
            .header("location")
            .unwrap_or_default()
            .ends_with(&format!("/orders/bulk/{bulk_id}")),
        "{what}: Location {:?}",
        again.header("location")
    );
}

/// One job for the bulk, and each order changed once, with the first request's reason.
async fn assert_applied_once(sys: &TestSystem, atok: &str, bulk_id: Uuid, orders: &[Uuid]) {
    assert_eq!(
        sys.count("select count(*) from jobs where bulk_id = $1", bulk_id)
            .await,
        1,
        "one job for the bulk"
    );
    assert_eq!(
        history_rows_of_bulk(sys, bulk_id).await,
        2,
        "each order changed once"
    );
    for order in orders {
        let rows: Vec<Value> = sys.history(atok, *order).await;
        assert_eq!(rows.len(), 2, "create + one mark_paid: {rows:#?}");
        assert_eq!(rows[1]["bulk_id"], bulk_id.to_string(), "{rows:#?}");
        assert_eq!(
            rows[1]["reason"], "settlement 7",
            "the first request's reason: {rows:#?}"
        );
    }
}
