//! Nothing lost, nothing twice, under crashes and restarts (DESIGN.md, "Guarantees").
//!
//! Every role runs as its own process while lanes of clients walk orders through the state
//! machine, a downstream queue collects every event and an admin SSE client follows the
//! stream. Meanwhile workers are `kill -9`ed (and one aborts between commit and ack on its
//! own), RabbitMQ is restarted, Postgres backends are terminated, the active relay and the
//! bridge are `kill -9`ed, and the SSE client drops its connection and resumes.
//!
//! Afterwards the database, the downstream queue and the SSE client must show that every
//! accepted job reached exactly one terminal state, no job took effect twice, every change
//! was published (seqs gap-free), per order every consumer saw the history's order, and the
//! resumed SSE client missed nothing. The figures are printed one per line (`faults: …`).
//!
//! ~60 s of load by default; `FAULT_SUITE_SECS=300` runs longer. The cluster holds the
//! broker exclusively: no other test runs during the broker restart.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::harness::{
    chaos::{
        self,
        evidence::{Evidence, Timeline, list_ms},
        faults::Chaos,
        load::Load,
        observers::Observers,
        roles::{Roles, SHARED_ENV},
    },
    cluster::Cluster,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_job_lost_or_applied_twice_under_crashes_and_restarts() {
    let run_for = chaos::run_length();
    let test_started = Instant::now();
    let mut cluster = Cluster::create(SHARED_ENV).await;
    let roles = Roles::start(&cluster).await;
    let admin = cluster.token("admin", Uuid::new_v4());
    let observers = Observers::start(&mut cluster, roles.bridge.url_watch(), admin.clone()).await;

    let load_started = Instant::now();
    let load = Load::start(roles.ingress_url.clone(), admin, cluster.db().clone());
    let chaos = Chaos {
        cluster: &cluster,
        roles: &roles,
        ledger: load.ledger(),
        observers: &observers,
    };
    let tally = chaos.run(load_started, run_for).await;
    let load_secs = load_started.elapsed().as_secs_f64();
    let ledger = load.stop().await;

    let drained = chaos::drain(cluster.db(), &ledger.accepted_jobs(), &observers).await;
    let observed = observers.stop().await;
    let processes = roles.stop().await;
    let timeline = Timeline {
        test_started,
        load_started,
        load_secs,
        drained,
    };
    let evidence =
        Evidence::gather(cluster.db(), ledger, observed, &processes, tally, timeline).await;
    evidence.print();

    assert_every_accepted_job_reached_one_terminal_state(&evidence);
    assert_no_job_took_effect_twice(&evidence);
    assert_every_committed_change_recorded_once(&evidence);
    assert_every_change_published_gap_free_in_history_order(&evidence);
    assert_resumed_sse_client_saw_every_event_once_in_order(&evidence);
    assert_every_role_recovered(&evidence);
    assert_the_crash_hook_fired(&evidence);
    cluster.clean().await;
}

/// Guarantee 1: A 202 means the job reaches exactly one terminal state.
fn assert_every_accepted_job_reached_one_terminal_state(ev: &Evidence) {
    let (db, accepted) = (&ev.db, ev.accepted.len() as i64);
    assert!(
        ev.timeline.drained.is_some(),
        "not drained within {:?} after the load stopped (figures above)",
        chaos::DRAIN_DEADLINE
    );
    assert!(
        db.missing.is_empty(),
        "accepted jobs missing from the database: {:?}",
        db.missing
    );
    assert_eq!(
        (db.found, db.terminal),
        (accepted, accepted),
        "every accepted job is in exactly one terminal state; not yet: {:?}",
        db.non_terminal
    );
}

/// Guarantee 2: A job's effect is applied at most once.
fn assert_no_job_took_effect_twice(ev: &Evidence) {
    let (db, clients) = (&ev.db, &ev.clients);
    assert_eq!(
        db.effects.twice_applied, 0,
        "a job id has more than one history row"
    );
    assert_eq!(
        db.version_mismatch, 0,
        "every order's version counts its history rows (no change applied twice)"
    );
    assert!(
        clients.races_both.is_empty(),
        "both of two racing submissions of one step took effect: {:?}",
        clients.races_both
    );
    assert!(
        clients.invalid_succeeded.is_empty(),
        "requests the state machine must reject succeeded: {:?}",
        clients.invalid_succeeded
    );
}

/// Guarantee 3: Every committed change has exactly one history row and one outbox row.
fn assert_every_committed_change_recorded_once(ev: &Evidence) {
    let (db, outbox) = (&ev.db, &ev.db.outbox);
    let succeeded = db.count_of("succeeded");
    assert_eq!(
        (succeeded, succeeded),
        (db.effects.history_job_rows, outbox.status_changes),
        "succeeded jobs = history rows with a job id = status-change outbox rows"
    );
    assert_eq!(
        (
            db.effects.succeeded_without_row,
            db.effects.unsucceeded_with_row,
            outbox.changes_not_one_per_job
        ),
        (0, 0, 0),
        "a job's effect is recorded iff it succeeded, once"
    );
}

/// Guarantee 4: Every outbox row is published, gap-free seqs, per order in commit order — and the
/// downstream consumer saw each, per order in history order.
fn assert_every_change_published_gap_free_in_history_order(ev: &Evidence) {
    let outbox = &ev.db.outbox;
    assert_eq!(
        outbox.published, outbox.rows,
        "every outbox row is published"
    );
    assert_eq!(
        (
            outbox.sequenced,
            outbox.distinct_seqs,
            outbox.min_seq,
            outbox.max_seq
        ),
        (outbox.rows, outbox.rows, Some(1), Some(outbox.rows)),
        "every outbox row has its own seq, gap-free 1..N"
    );
    assert_eq!(
        ev.outbox_order.bad, 0,
        "per order, seq order is history order: {:?}",
        ev.outbox_order.examples
    );
    assert_eq!(
        ev.down.mismatches, 0,
        "downstream message_id = body seq and order_id header = body order_id"
    );
    assert_eq!(
        ev.down.distinct() as i64,
        outbox.rows,
        "downstream saw every event"
    );
    assert_eq!(
        ev.down_order.bad, 0,
        "per order, downstream events follow the history: {:?}",
        ev.down_order.examples
    );
}

/// Guarantee 5: A client resuming with Last-Event-ID sees every event, in order, once.
fn assert_resumed_sse_client_saw_every_event_once_in_order(ev: &Evidence) {
    let stream = &ev.stream;
    assert!(
        stream.breaks == 0 && stream.resets == 0,
        "a resumed SSE connection skipped or repeated events ({} breaks): {:?}",
        stream.breaks,
        stream.examples
    );
    assert_eq!(
        stream.distinct as i64, ev.db.outbox.rows,
        "the SSE client saw every event"
    );
    assert_eq!(
        ev.sse_order.bad, 0,
        "per order, SSE events follow the history: {:?}",
        ev.sse_order.examples
    );
}

/// Recovery: every role survives the faults; a standby relay takes over within 5 s.
fn assert_every_role_recovered(ev: &Evidence) {
    assert!(
        ev.procs.unexpected_exits.is_empty(),
        "processes died on their own: {:?}",
        ev.procs.unexpected_exits
    );
    assert!(
        ev.tally
            .relay_takeover
            .iter()
            .all(|d| *d <= Duration::from_secs(5)),
        "a standby relay takes over within 5 s: {}",
        list_ms(&ev.tally.relay_takeover)
    );
}

/// The crash-after-commit fault did happen: the worker hook exists only in builds with the
/// `fault-injection` feature (test builds turn it on), and without it the suite would
/// quietly test less.
fn assert_the_crash_hook_fired(ev: &Evidence) {
    assert!(
        ev.procs.crash_hook_aborts > 0,
        "the crash-hook worker never aborted after a commit: is the `fault-injection` feature on?"
    );
}
