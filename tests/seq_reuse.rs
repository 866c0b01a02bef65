//! An event id is never given to two different events. After a failover to a database that
//! lost some seq stamps (asynchronous replication), the relay taking over finds the broker's
//! marker ahead of the database and numbers new events after it (docs/scaling.md, "What a
//! deployment must promise us").

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::harness::metrics::Scrape;
use crate::harness::{JOB_DEADLINE, TestSystem, message_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewound_cursor_does_not_reuse_published_seqs() {
    let mut sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    for _ in 0..4 {
        sys.create_simple_order(&admin).await;
    }
    sys.wait_outbox_drained(JOB_DEADLINE).await;
    let published: i64 = sqlx::query_scalar("select max(seq) from outbox")
        .fetch_one(sys.db())
        .await
        .expect("max seq");
    assert_eq!(published, 4, "four orders, four order.created events");

    // What a failover to a standby that missed the last commits of the relay leaves: the
    // events exist, but their seq stamps (and the cursor's progress) are gone.
    sys.kill_process().await;
    let mut tx = sys.db().begin().await.expect("begin");
    sqlx::query("update outbox set seq = null where seq > 1")
        .execute(&mut *tx)
        .await
        .expect("forgetting seq stamps");
    sqlx::query("update outbox_cursor set published_seq = 1")
        .execute(&mut *tx)
        .await
        .expect("rewinding the cursor");
    tx.commit().await.expect("commit");

    let mut downstream = sys.broker().downstream_queue("#").await;
    sys.restart().await;
    let mut ids = BTreeSet::new();
    while ids.len() < 3 {
        let delivery = downstream.expect_next("the three re-stamped events").await;
        let id: i64 = message_id(&delivery)
            .and_then(|m| m.parse().ok())
            .expect("a numeric message id");
        ids.insert(id);
    }
    assert!(
        ids.iter().all(|id| *id > published),
        "seqs 2..={published} were already published; the relay reused {ids:?}"
    );
    let stamped: Vec<i64> = sqlx::query_scalar("select seq from outbox where seq > 1 order by seq")
        .fetch_all(sys.db())
        .await
        .expect("seqs");
    assert_eq!(
        stamped,
        vec![5, 6, 7],
        "numbered after the broker's marker, gap-free"
    );
    let scrape = Scrape::of(&sys).await;
    assert_eq!(
        scrape.value("orderflow_relay_seq_conflicts_total", &[]),
        1.0,
        "the takeover counted its conflict"
    );
    sys.stop().await;
}
