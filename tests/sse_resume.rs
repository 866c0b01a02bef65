//! A live stream that reconnects with its last event id gets exactly what it missed — in
//! order, without duplicates, without gaps — whether the bridge still holds the events in
//! memory or (after a restart) has to replay them from the outbox.

use serde_json::json;
use uuid::Uuid;

use crate::harness::{
    EVENT_DEADLINE, SseEvent, SseStream, TestSystem, library, sse::SUBSCRIBE, wait,
};

#[derive(Clone, Copy, Debug)]
enum Resume {
    /// `Last-Event-ID` header, same process (replay from the in-memory ring).
    Header,
    /// `?last_event_id=` query parameter, same process.
    Query,
    /// `Last-Event-ID` header after the process was killed and restarted (replay from the outbox).
    HeaderAfterRestart,
}

/// Reconnects after `last_seen` the way `mode` says.
async fn resume(sys: &TestSystem, mode: Resume, token: &str, last_seen: u64) -> SseStream {
    match mode {
        Resume::Header | Resume::HeaderAfterRestart => {
            sys.sse_connect(SUBSCRIBE, Some(token), Some(last_seen))
                .await
        }
        Resume::Query => {
            let path = format!("{SUBSCRIBE}?last_event_id={last_seen}");
            sys.sse_connect(&path, Some(token), None).await
        }
    }
}

async fn missed_events_are_replayed_exactly(mode: Resume) {
    let mut sys = TestSystem::start().await;
    let ctok = sys.token("customer", Uuid::new_v4());
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;

    let mut stream = sys.sse_connect(SUBSCRIBE, Some(&ctok), None).await;
    sys.apply(&atok, order, &json!({"action": "mark_paid"}))
        .await;
    let seen = stream
        .collect_until(|e| e.kind() == "order.status_changed", EVENT_DEADLINE)
        .await;
    let last_seen = seen.last().unwrap().seq();
    drop(stream);

    // Three changes while disconnected, each committed before the next.
    let missed = [
        json!({"action": "confirm"}),
        json!({"action": "start_processing"}),
        json!({"action": "ship", "tracking_number": "1Z999"}),
    ];
    let mut jobs = Vec::new();
    for step in &missed {
        jobs.push(sys.apply(&atok, order, step).await["id"].clone());
    }
    if let Resume::HeaderAfterRestart = mode {
        sys.restart().await;
    }

    let mut resumed = resume(&sys, mode, &ctok, last_seen).await;
    let mut last = last_seen;
    for (i, (step, job)) in missed.iter().zip(&jobs).enumerate() {
        let event = resumed
            .expect_event(&format!("{mode:?}: missed event #{} ({step})", i + 1))
            .await;
        let data = event.json();
        assert_eq!(event.kind(), "order.status_changed", "{mode:?}: {event:?}");
        assert_eq!(
            data["action"], step["action"],
            "{mode:?}: missed events in order, got {data}"
        );
        assert_eq!(&data["job_id"], job, "{mode:?}: {data}");
        assert_eq!(data["version"], 3 + i, "{mode:?}: {data}");
        assert_eq!(
            event.seq(),
            last + 1,
            "{mode:?}: ids continue gap-free after Last-Event-ID {last_seen} (nothing repeated, nothing skipped)"
        );
        assert_eq!(data["seq"].as_u64(), Some(event.seq()), "{mode:?}: {data}");
        last = event.seq();
    }

    // Nothing extra was replayed: the next event is a new, live change.
    let job = sys
        .submit(&atok, order, &json!({"action": "deliver"}))
        .await;
    let event = resumed
        .expect_event(&format!("{mode:?}: the live deliver event"))
        .await;
    let data = event.json();
    assert_eq!(
        data["action"], "deliver",
        "{mode:?}: an extra event came after the replay: {event:?}"
    );
    assert_eq!(data["job_id"], job.to_string(), "{mode:?}: {data}");
    assert_eq!(
        event.seq(),
        last + 1,
        "{mode:?}: live events continue the replayed ids"
    );

    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_stream_gets_exactly_the_missed_events() {
    missed_events_are_replayed_exactly(Resume::Header).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_stream_by_query_parameter_gets_exactly_the_missed_events() {
    missed_events_are_replayed_exactly(Resume::Query).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_stream_after_bridge_restart_loses_nothing() {
    missed_events_are_replayed_exactly(Resume::HeaderAfterRestart).await;
}

/// A bridge starts following from the newest event the broker has confirmed, not from the
/// newest seq: an event the relay sequenced but had not published yet (it will arrive
/// through the bridge's queue) must not be taken as already seen — it would be dropped as
/// a repeat and clients following from "now" would never get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_starts_from_the_published_cursor_not_the_newest_seq() {
    let mut sys = TestSystem::start().await;
    let ctok = sys.token("customer", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;
    // `order.created` is published: the cursor reaches it.
    let published = wait::expect_within(EVENT_DEADLINE, "order.created published", || async {
        let published = library::published_seq(sys.db()).await;
        if published >= 1 {
            Ok(published)
        } else {
            Err(format!("published through {published}"))
        }
    })
    .await;

    // With the system down, leave what a relay leaves when it dies between committing a
    // batch's seqs and the broker's confirms: a sequenced, unpublished event.
    sys.kill_process().await;
    sqlx::query(
        "insert into outbox (order_id, event_type, routing_key, payload, seq)
         values ($1, 'order.status_changed', 'order.status.cancelled', '{}', $2)",
    )
    .bind(order)
    .bind(published + 1)
    .execute(sys.db())
    .await
    .expect("a sequenced, unpublished event");

    let head = library::primed_bridge_head(sys.db()).await;
    assert_eq!(
        head,
        published,
        "the hub starts at the published cursor ({published}), not at the newest seq ({})",
        published + 1
    );
    sys.stop().await;
}

/// Published events older than the retention window are deleted by the relay, oldest
/// first; seqs go on from where they were; a client resuming from a deleted position is
/// told so with a `reset` event and continues from what is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_published_events_and_a_resume_before_them_gets_reset() {
    let mut sys = TestSystem::start_with_env(&[
        ("OUTBOX_RETENTION_SECS", "1"),
        ("RETENTION_INTERVAL_SECS", "1"),
    ])
    .await;
    let ctok = sys.token("customer", Uuid::new_v4());
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;
    sys.apply(&atok, order, &json!({"action": "mark_paid"}))
        .await;
    // Both events (seq 1 and 2) are published, then deleted once older than a second.
    wait::expect_within(
        EVENT_DEADLINE,
        "retention deleting the published events",
        || async {
            let (rows, published): (i64, i64) = sqlx::query_as(
                "select (select count(*) from outbox), (select published_seq from outbox_cursor)",
            )
            .fetch_one(sys.db())
            .await
            .expect("outbox figures");
            if rows == 0 && published == 2 {
                Ok(())
            } else {
                Err(format!("{rows} rows left, published through {published}"))
            }
        },
    )
    .await;

    // A fresh bridge (nothing in memory): resuming after seq 1 can only be answered with
    // a reset to what is kept; the next change follows as seq 3, not as a restarted seq 1.
    sys.restart().await;
    let mut stream = sys.sse_connect(SUBSCRIBE, Some(&ctok), Some(1)).await;
    sys.apply(&atok, order, &json!({"action": "confirm"})).await;
    let seen = stream
        .collect_until(|e| e.kind() == "order.status_changed", EVENT_DEADLINE)
        .await;
    let kinds: Vec<&str> = seen.iter().map(SseEvent::kind).collect();
    assert_eq!(kinds, ["reset", "order.status_changed"], "{seen:#?}");
    let reset = seen[0].json();
    assert_eq!(
        (
            reset["requested_after"].as_i64(),
            reset["resume_after"].as_i64()
        ),
        (Some(1), Some(2)),
        "{reset}"
    );
    assert_eq!(seen[1].seq(), 3, "seqs go on after a prune: {:?}", seen[1]);
    assert_eq!(seen[1].json()["to"], "confirmed");
    sys.stop().await;
}

/// The bridge's counters, as an admin reads them.
async fn bridge_stats(sys: &TestSystem, admin: &str) -> serde_json::Value {
    sys.get("/orders/events/stats", Some(admin))
        .await
        .expect_status(200, "bridge stats")
        .body
}

/// A bridge nobody listens to unbinds from the events exchange and takes no events; the
/// next connection binds it again and follows from "now", and a connection resuming from
/// before the unbound time gets every event it missed, from the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bridge_unbinds_and_the_next_connection_binds_it_again() {
    let sys = TestSystem::start_with_env(&[("SSE_IDLE_UNBIND_SECS", "0")]).await;
    let ctok = sys.token("customer", Uuid::new_v4());
    let atok = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&ctok).await;
    let stats = bridge_stats(&sys, &atok).await;
    assert_eq!(stats["bound"], false, "nobody has listened yet: {stats}");
    assert_eq!(stats["events_received"], 0, "{stats}");

    let mut stream = sys.sse_connect(SUBSCRIBE, Some(&ctok), None).await;
    assert_eq!(bridge_stats(&sys, &atok).await["bound"], true);
    sys.apply(&atok, order, &json!({"action": "mark_paid"}))
        .await;
    let paid = stream
        .collect_until(|e| e.kind() == "order.status_changed", EVENT_DEADLINE)
        .await
        .pop()
        .unwrap();
    drop(stream);
    let received = wait::expect_within(EVENT_DEADLINE, "the bridge unbinds", || async {
        let stats = bridge_stats(&sys, &atok).await;
        match (&stats["bound"], stats["events_received"].as_u64()) {
            (serde_json::Value::Bool(false), Some(n)) => Ok(n),
            _ => Err(format!("still bound: {stats}")),
        }
    })
    .await;

    // Unbound: a change is published past the bridge.
    let missed = sys.apply(&atok, order, &json!({"action": "confirm"})).await;
    wait::expect_within(EVENT_DEADLINE, "the confirm event published", || async {
        let published = library::published_seq(sys.db()).await as u64;
        (published > paid.seq())
            .then_some(())
            .ok_or(format!("published through {published}"))
    })
    .await;
    assert_eq!(
        bridge_stats(&sys, &atok).await["events_received"],
        received,
        "an unbound bridge takes no events"
    );

    // A new connection binds the bridge again and follows from now: its first event is
    // the next change, not the one made while nobody listened.
    let mut live = sys.sse_connect(SUBSCRIBE, Some(&ctok), None).await;
    let mut resumed = sys
        .sse_connect(SUBSCRIBE, Some(&ctok), Some(paid.seq()))
        .await;
    assert_eq!(bridge_stats(&sys, &atok).await["bound"], true);
    let next = sys
        .submit(&atok, order, &json!({"action": "start_processing"}))
        .await;
    let event = live.expect_event("the next change, live").await;
    assert_eq!(
        event.json()["job_id"],
        next.to_string(),
        "a new connection follows from now: {event:?}"
    );
    assert_eq!(event.seq(), paid.seq() + 2, "{event:?}");

    // Resuming from before the unbound time loses nothing and repeats nothing.
    let replayed = resumed.expect_event("the change made while unbound").await;
    assert_eq!(replayed.json()["job_id"], missed["id"], "{replayed:?}");
    assert_eq!(replayed.seq(), paid.seq() + 1, "{replayed:?}");
    let following = resumed.expect_event("then the live change").await;
    assert_eq!(following.seq(), event.seq(), "{following:?}");
    sys.stop().await;
}
