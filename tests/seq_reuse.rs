//! Event ids (`seq`) are gap-free, and never given to two different events. Writers
//! number events as they commit, in commit order (docs/storage.md, "Outbox"). After a
//! failover to a database that lost some commits (asynchronous replication), writers there
//! number new events with seqs the broker has already seen; the relay taking over finds
//! that the broker's marker names an event this database does not hold, and renumbers
//! what it has not published after the marker (docs/scaling.md, "What a deployment must
//! promise us"). A relay that merely died mid-flight sends its events again under the
//! same ids.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::harness::metrics::Scrape;
use crate::harness::{JOB_DEADLINE, TestSystem, library, message_id};

/// Four orders created and published: seqs 1..=4, the broker's marker at 4.
async fn four_published_events() -> TestSystem {
    let sys = TestSystem::start().await;
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
    sys
}

/// Restart, and collect the ids of the first `n` events published.
async fn restart_and_collect(sys: &mut TestSystem, n: usize) -> BTreeSet<i64> {
    let mut downstream = sys.broker().downstream_queue("#").await;
    sys.restart().await;
    let mut ids = BTreeSet::new();
    while ids.len() < n {
        let delivery = downstream
            .expect_next("the events after the takeover")
            .await;
        let id: i64 = message_id(&delivery)
            .and_then(|m| m.parse().ok())
            .expect("a numeric message id");
        ids.insert(id);
    }
    ids
}

async fn seqs_after_first(sys: &TestSystem) -> Vec<i64> {
    sqlx::query_scalar("select seq from outbox where seq > 1 order by seq")
        .fetch_all(sys.db())
        .await
        .expect("seqs")
}

async fn conflicts(sys: &TestSystem) -> f64 {
    Scrape::of(sys)
        .await
        .value("orderflow_relay_seq_conflicts_total", &[])
}

/// With the system down, what a failover to a standby that missed the last three commits
/// leaves — events 2..=4 and their publishing are gone — and then `new` events committed
/// there, numbered from 2 on.
async fn lose_commits_then_write(sys: &mut TestSystem, new: usize) -> Vec<i64> {
    sys.kill_process().await;
    let mut tx = sys.db().begin().await.expect("begin");
    for statement in [
        "delete from outbox where seq > 1",
        "update outbox_head set last_seq = 1",
        "update outbox_cursor set published_seq = 1",
    ] {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .expect(statement);
    }
    tx.commit().await.expect("commit");
    let seqs = library::write_events(sys.db(), new).await;
    assert_eq!(
        seqs,
        (2..2 + new as i64).collect::<Vec<_>>(),
        "the writers number after what this database has"
    );
    seqs
}

/// Fewer new events than were lost: the marker's seq (4) names no event here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_of_lost_commits_are_not_reused() {
    let mut sys = four_published_events().await;
    lose_commits_then_write(&mut sys, 2).await;

    let ids = restart_and_collect(&mut sys, 2).await;
    assert_eq!(
        ids,
        BTreeSet::from([5, 6]),
        "seqs 2..=4 were already published; the new events follow the broker's marker"
    );
    assert_eq!(
        seqs_after_first(&sys).await,
        vec![5, 6],
        "renumbered, gap-free"
    );
    assert_eq!(
        conflicts(&sys).await,
        1.0,
        "the takeover counted its conflict"
    );

    // Writers go on after the renumbered events.
    assert_eq!(library::write_events(sys.db(), 1).await, vec![7]);
    sys.stop().await;
}

/// As many new events as were lost, and more: seq 4 exists again, but names another
/// event (the marker records which event it sent as 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_that_names_another_event_after_failover_is_not_reused() {
    let mut sys = four_published_events().await;
    lose_commits_then_write(&mut sys, 4).await;

    let ids = restart_and_collect(&mut sys, 4).await;
    assert_eq!(
        ids,
        BTreeSet::from([5, 6, 7, 8]),
        "seqs 2..=4 were already published for other events"
    );
    assert_eq!(seqs_after_first(&sys).await, vec![5, 6, 7, 8]);
    assert_eq!(
        conflicts(&sys).await,
        1.0,
        "the takeover counted its conflict"
    );
    sys.stop().await;
}

/// A relay that died before it saw its confirms leaves the cursor behind the marker, and
/// the same events after it: they go out again under the same ids, nothing renumbered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_again_after_a_crash_keep_their_ids() {
    let mut sys = four_published_events().await;
    sys.kill_process().await;
    sqlx::query("update outbox_cursor set published_seq = 1")
        .execute(sys.db())
        .await
        .expect("rewinding the cursor");

    let ids = restart_and_collect(&mut sys, 3).await;
    assert_eq!(ids, BTreeSet::from([2, 3, 4]), "the same ids as before");
    assert_eq!(seqs_after_first(&sys).await, vec![2, 3, 4]);
    assert_eq!(conflicts(&sys).await, 0.0, "no conflict");
    sys.stop().await;
}

/// Writers number their events as they commit: whatever runs at once, and whatever rolls
/// back, the committed events hold 1..=N, each once, and the head names N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_seqs_gap_free() {
    let sys = TestSystem::start().await;
    let writers = (0..6).map(|w| {
        let db = sys.db().clone();
        tokio::spawn(async move {
            let mut committed = 0;
            for round in 0..15 {
                let n = 1 + (w + round) % 3;
                // Every fourth transaction rolls back: its seqs go to the next writer.
                let commit = (w + round) % 4 != 0;
                library::write_events_then(&db, n, commit).await;
                committed += if commit { n } else { 0 };
            }
            committed
        })
    });
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.expect("a writer");
    }
    let seqs: Vec<i64> = sqlx::query_scalar("select seq from outbox order by seq")
        .fetch_all(sys.db())
        .await
        .expect("seqs");
    assert_eq!(
        seqs,
        (1..=committed as i64).collect::<Vec<_>>(),
        "every committed event numbered once, no gaps"
    );
    let head: i64 = sqlx::query_scalar("select last_seq from outbox_head")
        .fetch_one(sys.db())
        .await
        .expect("the head");
    assert_eq!(head, committed as i64);
    sys.stop().await;
}
