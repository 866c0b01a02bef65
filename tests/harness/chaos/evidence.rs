//! The evidence, afterwards: what the database, the downstream queue, the resuming SSE
//! client and the processes' lives say about the run, reduced to the figures the fault
//! suite prints and asserts.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    faults::Tally,
    load::{Expect, LANES, Ledger},
    observers::{DownstreamLog, Observed, SseLog},
};
use crate::harness::{
    TERMINAL_JOB_STATUSES,
    supervisor::{Ending, Supervised, applied},
};

/// Per order, the versions an observer saw (first occurrence of each seq, in arrival order).
pub type Versions = BTreeMap<Uuid, Vec<i64>>;

#[derive(sqlx::FromRow)]
pub struct EffectCounts {
    pub history_job_rows: i64,
    pub twice_applied: i64,
    pub succeeded_without_row: i64,
    pub unsucceeded_with_row: i64,
}

#[derive(sqlx::FromRow)]
pub struct OutboxCounts {
    pub rows: i64,
    pub status_changes: i64,
    pub created: i64,
    pub sequenced: i64,
    pub distinct_seqs: i64,
    pub min_seq: Option<i64>,
    pub max_seq: Option<i64>,
    pub published: i64,
    pub changes_not_one_per_job: i64,
}

/// What the database says about the accepted jobs, the history and the outbox.
pub struct Database {
    by_status: Vec<(String, i64)>,
    pub found: i64,
    pub terminal: i64,
    pub non_terminal: Vec<(Uuid, String, i32, Option<Value>)>,
    pub missing: Vec<Uuid>,
    /// Jobs in the database whose 202 no client saw (up to 10).
    pub unanswered: Vec<(Uuid, String)>,
    pub dead: Vec<(Uuid, Option<Value>)>,
    pub outcome: HashMap<Uuid, String>,
    pub effects: EffectCounts,
    pub outbox: OutboxCounts,
    pub orders: i64,
    pub version_mismatch: i64,
    /// Per order, the versions in history order and in seq order.
    pub history: Versions,
    pub outbox_order: Versions,
}

async fn versions(pool: &PgPool, sql: &str) -> Versions {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut versions = Versions::new();
    for (order, version) in rows {
        versions.entry(order).or_default().push(version);
    }
    versions
}

impl Database {
    async fn read(pool: &PgPool, accepted: &[Uuid]) -> Self {
        let outcomes: Vec<(Uuid, String)> =
            sqlx::query_as("select id, status from jobs where id = any($1)")
                .bind(accepted)
                .fetch_all(pool)
                .await
                .expect("job outcomes");
        let outcome: HashMap<Uuid, String> = outcomes.into_iter().collect();
        let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
        for status in outcome.values() {
            *by_status.entry(status.clone()).or_default() += 1;
        }
        let terminal = outcome
            .values()
            .filter(|s| TERMINAL_JOB_STATUSES.contains(&s.as_str()))
            .count() as i64;
        let missing = accepted
            .iter()
            .filter(|id| !outcome.contains_key(id))
            .copied()
            .collect();
        let non_terminal = sqlx::query_as(
            "select id, status, attempts, error from jobs
             where id = any($1) and not (status = any($2)) order by id limit 10",
        )
        .bind(accepted)
        .bind(&TERMINAL_JOB_STATUSES[..])
        .fetch_all(pool)
        .await
        .expect("non-terminal jobs");
        let unanswered = sqlx::query_as(
            "select j.id, j.status from jobs j
             where not exists (select 1 from unnest($1::uuid[]) a(id) where a.id = j.id) limit 10",
        )
        .bind(accepted)
        .fetch_all(pool)
        .await
        .expect("jobs never accepted");
        let dead = sqlx::query_as(
            "select id, error from jobs where id = any($1) and status = 'dead' order by id limit 5",
        )
        .bind(accepted)
        .fetch_all(pool)
        .await
        .expect("dead jobs");
        let (orders, version_mismatch): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where o.version <>
                 (select count(*) from order_status_history h where h.order_id = o.id))
             from orders o",
        )
        .fetch_one(pool)
        .await
        .expect("order versions");
        Database {
            by_status: by_status.into_iter().collect(),
            found: outcome.len() as i64,
            terminal,
            non_terminal,
            missing,
            unanswered,
            dead,
            outcome,
            effects: effect_counts(pool).await,
            outbox: outbox_counts(pool).await,
            orders,
            version_mismatch,
            history: versions(
                pool,
                "select order_id, version from order_status_history order by order_id, id",
            )
            .await,
            outbox_order: versions(
                pool,
                "select order_id, (payload->>'version')::bigint from outbox
                 where seq is not null order by seq",
            )
            .await,
        }
    }

    pub fn count_of(&self, status: &str) -> i64 {
        self.by_status
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n)
    }
}

async fn effect_counts(pool: &PgPool) -> EffectCounts {
    sqlx::query_as(
        "select (select count(*) from order_status_history where job_id is not null) as history_job_rows,
                (select count(*) from (select job_id from order_status_history where job_id is not null
                                       group by job_id having count(*) > 1) t) as twice_applied,
                (select count(*) from jobs j where j.status = 'succeeded'
                    and not exists (select 1 from order_status_history h where h.job_id = j.id))
                    as succeeded_without_row,
                (select count(*) from jobs j where j.status <> 'succeeded'
                    and exists (select 1 from order_status_history h where h.job_id = j.id))
                    as unsucceeded_with_row",
    )
    .fetch_one(pool)
    .await
    .expect("history figures")
}

async fn outbox_counts(pool: &PgPool) -> OutboxCounts {
    sqlx::query_as(
        "select count(*) as rows,
                count(*) filter (where event_type = 'order.status_changed') as status_changes,
                count(*) filter (where event_type = 'order.created') as created,
                count(seq) as sequenced, count(distinct seq) as distinct_seqs,
                min(seq) as min_seq, max(seq) as max_seq, count(*) filter (where seq <= (select published_seq from outbox_cursor)) as published,
                (select count(*) from jobs j
                    left join (select payload->>'job_id' as job_id, count(*) as n from outbox
                               where event_type = 'order.status_changed' group by 1) o
                        on o.job_id = j.id::text
                    where j.status = 'succeeded' and coalesce(o.n, 0) <> 1) as changes_not_one_per_job
         from outbox",
    )
    .fetch_one(pool)
    .await
    .expect("outbox figures")
}

/// The clients' expectations against the outcomes.
pub struct Expectations {
    pub valid_not_succeeded: Vec<(Uuid, String)>,
    pub invalid_succeeded: Vec<Uuid>,
    pub races: usize,
    pub races_both: Vec<(Uuid, Uuid)>,
}

impl Expectations {
    fn judge(ledger: &Ledger, outcome: &HashMap<Uuid, String>) -> Self {
        let succeeded = |id: &Uuid| outcome.get(id).is_some_and(|s| s == "succeeded");
        let expectations = ledger.accepted.lock().unwrap();
        let races = ledger.races.lock().unwrap();
        Expectations {
            valid_not_succeeded: expectations
                .iter()
                .filter(|(id, e)| **e == Expect::Success && !succeeded(id))
                .map(|(id, _)| (*id, outcome.get(id).cloned().unwrap_or_default()))
                .collect(),
            invalid_succeeded: expectations
                .iter()
                .filter(|(id, e)| **e == Expect::Rejection && succeeded(id))
                .map(|(id, _)| *id)
                .collect(),
            races: races.len(),
            races_both: races
                .iter()
                .filter(|(a, b)| succeeded(a) && succeeded(b))
                .copied()
                .collect(),
        }
    }
}

fn uuid_field(v: &Value, field: &str) -> Option<Uuid> {
    v[field].as_str().and_then(|s| s.parse().ok())
}

/// What the downstream queue got: per order, the versions of the first delivery of each
/// message id, in arrival order.
pub struct DownstreamSeen {
    pub deliveries: usize,
    pub versions: Versions,
    pub duplicates: u64,
    /// Duplicates our own consumer caused (redelivered after its connection was lost).
    pub redelivered: u64,
    pub mismatches: u64,
    pub sessions: u64,
}

impl DownstreamSeen {
    fn of(log: &DownstreamLog) -> Self {
        let mut seen = HashSet::new();
        let mut versions = Versions::new();
        let (mut duplicates, mut redelivered, mut mismatches) = (0, 0, 0);
        for got in &log.got {
            let body_seq = got.body["seq"].as_i64().map(|s| s.to_string());
            let body_order = uuid_field(&got.body, "order_id");
            let header_order = got.order_header.as_deref().and_then(|s| s.parse().ok());
            if got.message_id.is_none() || got.message_id != body_seq || header_order != body_order
            {
                mismatches += 1;
            }
            let Some(id) = got.message_id.clone() else {
                continue;
            };
            if !seen.insert(id) {
                duplicates += 1;
                redelivered += u64::from(got.redelivered);
                continue;
            }
            if let (Some(order), Some(version)) = (body_order, got.body["version"].as_i64()) {
                versions.entry(order).or_default().push(version);
            }
        }
        DownstreamSeen {
            deliveries: log.got.len(),
            versions,
            duplicates,
            redelivered,
            mismatches,
            sessions: log.sessions,
        }
    }

    pub fn distinct(&self) -> usize {
        self.versions.values().map(Vec::len).sum()
    }
}

/// What the resuming SSE client got. Every connection must continue gap-free from its
/// Last-Event-ID (the admin is entitled to every event).
pub struct StreamSeen {
    pub events: usize,
    pub distinct: usize,
    pub versions: Versions,
    pub resets: usize,
    pub duplicates: usize,
    /// Events whose seq was not the one after the previous (or after Last-Event-ID).
    pub breaks: usize,
    pub examples: Vec<String>,
    pub connections: usize,
    pub failed_connects: u64,
    pub ends: Vec<String>,
}

impl StreamSeen {
    fn of(log: &SseLog) -> Self {
        let mut versions = Versions::new();
        let mut seen = HashSet::new();
        let (mut events, mut resets, mut duplicates, mut breaks) = (0, 0, 0, 0);
        let mut examples = Vec::new();
        for (n, segment) in log.segments.iter().enumerate() {
            let mut expected = segment.resumed_after + 1;
            for (_, event) in &segment.events {
                events += 1;
                if event.kind() == "reset" {
                    resets += 1;
                }
                let seq = event.seq_if_any();
                if seq != Some(expected) {
                    breaks += 1;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "connection #{n} (Last-Event-ID {}): expected seq {expected}, got {:?} ({})",
                            segment.resumed_after,
                            event.id,
                            event.kind()
                        ));
                    }
                    expected = seq.unwrap_or(expected);
                }
                expected += 1;
                let Some(seq) = seq else { continue };
                if !seen.insert(seq) {
                    duplicates += 1;
                    continue;
                }
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if let (Some(order), Some(version)) =
                    (uuid_field(&data, "order_id"), data["version"].as_i64())
                {
                    versions.entry(order).or_default().push(version);
                }
            }
        }
        StreamSeen {
            events,
            distinct: seen.len(),
            versions,
            resets,
            duplicates,
            breaks,
            examples,
            connections: log.segments.len(),
            failed_connects: log.failed_connects,
            ends: log.segments.iter().filter_map(|s| s.end.clone()).collect(),
        }
    }
}

/// What the processes' lives say: restarts, recovery, deaths nobody asked for.
#[derive(Default)]
pub struct ProcessRecord {
    pub worker_recovery: Vec<Duration>,
    pub worker_restarts: usize,
    pub crash_hook_aborts: usize,
    pub died_before_applying: usize,
    pub restarted_in_outage: usize,
    pub unexpected_exits: Vec<String>,
    pub swept: u64,
    pub parked_crashers: u64,
    pub applied_lines: usize,
    pub warnings: usize,
    pub errors: usize,
    /// SSE drop -> next event, outside broker outages (no event flows while it is down).
    pub sse_resumes: Vec<Duration>,
    pub sse_resumes_in_outage: usize,
}

impl ProcessRecord {
    fn of(all: &[Supervised], tally: &Tally) -> Self {
        let sse_resumes: Vec<Duration> = tally
            .sse_resume_to_event
            .iter()
            .filter(|(at, _)| !tally.in_outage(*at))
            .map(|(_, d)| *d)
            .collect();
        let mut record = ProcessRecord {
            sse_resumes_in_outage: tally.sse_resume_to_event.len() - sse_resumes.len(),
            sse_resumes,
            ..Default::default()
        };
        for process in all {
            let worker = process.name.starts_with("worker");
            process.lives(|lives| {
                for life in lives {
                    record.warnings += life.warnings;
                    record.errors += life.errors;
                    for line in &life.lines {
                        match line.message.as_str() {
                            "republished jobs that were accepted but not in any queue" => {
                                record.swept += line.fields["jobs"].as_u64().unwrap_or(0)
                            }
                            "parking a job that crashes its workers" => record.parked_crashers += 1,
                            "job settled" if applied(&line.fields) => record.applied_lines += 1,
                            _ => {}
                        }
                    }
                    match &life.ended {
                        Some((_, Ending::CrashHook)) => record.crash_hook_aborts += 1,
                        Some((at, Ending::Exited(status))) => {
                            record.unexpected_exits.push(format!(
                                "{} generation {} exited on its own: {status} ({:?} after spawn)",
                                process.name,
                                life.generation,
                                *at - life.spawned_at
                            ))
                        }
                        _ => {}
                    }
                    if !worker || life.generation == 1 {
                        continue;
                    }
                    record.worker_restarts += 1;
                    if tally.in_outage(life.spawned_at) {
                        // Restarted while the broker was down: it could not recover then.
                        record.restarted_in_outage += 1;
                        continue;
                    }
                    match life.first_applied_after(life.spawned_at) {
                        Some(at) => record.worker_recovery.push(at - life.spawned_at),
                        None => record.died_before_applying += 1,
                    }
                }
            });
        }
        record
    }
}

/// Orders whose observed versions differ from the history's; with up to 3 examples.
fn order_mismatches(history: &Versions, seen: &Versions) -> (usize, Vec<String>) {
    let mut bad = 0;
    let mut examples = Vec::new();
    for (order, expected) in history {
        let got = seen.get(order).cloned().unwrap_or_default();
        if &got != expected {
            bad += 1;
            if examples.len() < 3 {
                examples.push(format!("order {order}: history {expected:?}, seen {got:?}"));
            }
        }
    }
    for order in seen.keys().filter(|o| !history.contains_key(o)) {
        bad += 1;
        if examples.len() < 3 {
            examples.push(format!("order {order}: seen but has no history"));
        }
    }
    (bad, examples)
}

/// Per order, how one observer's order of events compares with the history.
pub struct Order {
    pub bad: usize,
    pub examples: Vec<String>,
}

impl Order {
    fn of(history: &Versions, seen: &Versions) -> Self {
        let (bad, examples) = order_mismatches(history, seen);
        Self { bad, examples }
    }
}

/// When the phases of the run began.
pub struct Timeline {
    pub test_started: Instant,
    pub load_started: Instant,
    pub load_secs: f64,
    /// How long the drain took; None if it did not finish within its deadline.
    pub drained: Option<Duration>,
}

/// Everything the guarantees are judged on.
pub struct Evidence {
    pub accepted: Vec<Uuid>,
    pub ledger: std::sync::Arc<Ledger>,
    pub db: Database,
    pub clients: Expectations,
    pub down: DownstreamSeen,
    pub stream: StreamSeen,
    pub tally: Tally,
    pub procs: ProcessRecord,
    pub outbox_order: Order,
    pub down_order: Order,
    pub sse_order: Order,
    pub timeline: Timeline,
    pub checks_started: Instant,
}

impl Evidence {
    pub async fn gather(
        pool: &PgPool,
        ledger: std::sync::Arc<Ledger>,
        observed: Observed,
        processes: &[Supervised],
        tally: Tally,
        timeline: Timeline,
    ) -> Self {
        let checks_started = Instant::now();
        let accepted = ledger.accepted_jobs();
        let db = Database::read(pool, &accepted).await;
        let down = DownstreamSeen::of(&observed.downstream);
        let stream = StreamSeen::of(&observed.sse);
        Self {
            clients: Expectations::judge(&ledger, &db.outcome),
            procs: ProcessRecord::of(processes, &tally),
            outbox_order: Order::of(&db.history, &db.outbox_order),
            down_order: Order::of(&db.history, &down.versions),
            sse_order: Order::of(&db.history, &stream.versions),
            accepted,
            ledger,
            db,
            down,
            stream,
            tally,
            timeline,
            checks_started,
        }
    }

    /// The figures, one per line (`faults: …`); printed before any assertion, so that a
    /// failing run still reports them.
    pub fn print(&self) {
        self.print_run();
        self.print_jobs_and_effects();
        self.print_observers();
        self.print_faults_and_recovery();
        self.print_details();
    }

    fn print_run(&self) {
        let (t, db, ledger) = (&self.timeline, &self.db, &self.ledger);
        eprintln!(
            "faults: phases: setup {:.1}s, load {:.1}s, drain+stop {:.1}s, checks {:.1}s",
            (t.load_started - t.test_started).as_secs_f64(),
            t.load_secs,
            (self.checks_started - t.load_started).as_secs_f64() - t.load_secs,
            self.checks_started.elapsed().as_secs_f64()
        );
        eprintln!(
            "faults: load {:.0}s, {LANES} lanes, {} orders walked ({} orders in the database), drained in {:?} (deadline {:?})",
            t.load_secs,
            ledger.orders.lock().unwrap().len(),
            db.orders,
            t.drained,
            super::DRAIN_DEADLINE
        );
        eprintln!(
            "faults: accepted jobs {} ({} answered 202, {} repeats answered 200); found {}, missing {}, non-terminal {}",
            self.accepted.len(),
            ledger.accepted_202.load(Relaxed),
            ledger.repeats_200.load(Relaxed),
            db.found,
            db.missing.len(),
            db.found - db.terminal
        );
        eprintln!(
            "faults: terminal by status: succeeded {}, rejected {}, dead {}, cancelled {}",
            db.count_of("succeeded"),
            db.count_of("rejected"),
            db.count_of("dead"),
            db.count_of("cancelled")
        );
        eprintln!(
            "faults: ingress answers retried: 503 {}, other 5xx {}, 429 {}, transport errors {}, order creations retried {}",
            ledger.unavailable_503.load(Relaxed),
            ledger.server_errors.load(Relaxed),
            ledger.limited_429.load(Relaxed),
            ledger.transport_errors.load(Relaxed),
            ledger.orders_retried.load(Relaxed)
        );
        eprintln!(
            "faults: jobs in the database that no client saw accepted: {}",
            db.unanswered.len()
        );
    }

    fn print_jobs_and_effects(&self) {
        let (db, outbox, clients) = (&self.db, &self.db.outbox, &self.clients);
        eprintln!(
            "faults: succeeded {} = history rows with job_id {} = status-change outbox rows {}; job ids with 2+ history rows {}; succeeded without history {}; not succeeded with history {}; succeeded jobs without exactly one outbox row {}",
            db.count_of("succeeded"),
            db.effects.history_job_rows,
            outbox.status_changes,
            db.effects.twice_applied,
            db.effects.succeeded_without_row,
            db.effects.unsucceeded_with_row,
            outbox.changes_not_one_per_job
        );
        eprintln!(
            "faults: orders whose version differs from their history row count: {}",
            db.version_mismatch
        );
        eprintln!(
            "faults: outbox rows {} ({} order.created, {} order.status_changed), sequenced {}, published {}, distinct seqs {}, seq range {:?}..{:?}; orders whose seq order differs from history {}",
            outbox.rows,
            outbox.created,
            outbox.status_changes,
            outbox.sequenced,
            outbox.published,
            outbox.distinct_seqs,
            outbox.min_seq,
            outbox.max_seq,
            self.outbox_order.bad
        );
        eprintln!(
            "faults: expectations: valid steps not succeeded {}, must-reject jobs that succeeded {}, races {} with both succeeded {}",
            clients.valid_not_succeeded.len(),
            clients.invalid_succeeded.len(),
            clients.races,
            clients.races_both.len()
        );
    }

    fn print_observers(&self) {
        let (down, stream) = (&self.down, &self.stream);
        eprintln!(
            "faults: downstream deliveries {}, distinct message ids {}, duplicates {} (redelivered to our own consumer {}), id/header mismatches {}, consumer sessions {}, orders out of history order {}",
            down.deliveries,
            down.distinct(),
            down.duplicates,
            down.redelivered,
            down.mismatches,
            down.sessions,
            self.down_order.bad
        );
        eprintln!(
            "faults: sse events {}, distinct seqs {}, connections {} (failed connects {}), resets {}, seq breaks within a connection {}, duplicates {}, orders out of history order {}",
            stream.events,
            stream.distinct,
            stream.connections,
            stream.failed_connects,
            stream.resets,
            stream.breaks,
            stream.duplicates,
            self.sse_order.bad
        );
        eprintln!("faults: sse connection ends: {:?}", stream.ends);
    }

    fn print_faults_and_recovery(&self) {
        let (tally, procs) = (&self.tally, &self.procs);
        eprintln!(
            "faults: kills/restarts: worker kill -9 {}, worker crash-after-commit aborts {}, worker restarts {}, relay kill -9 {}, bridge kill -9 {}, broker restarts {}, pg terminations {} ({} backends), sse client drops {}",
            tally.worker_kills,
            procs.crash_hook_aborts,
            procs.worker_restarts,
            tally.relay_kills,
            tally.bridge_kills,
            tally.broker_restarts,
            tally.backend_terminations,
            tally.backends_terminated,
            tally.sse_client_drops
        );
        eprintln!(
            "faults: recovery max: worker restart->first job applied {} (of {} restarts measured; {} died before applying one, {} restarted during the broker outage); relay kill->standby published {}; broker start_app->first 202 {} (->first job applied {}, stop_app..start_app done {}); bridge restart->first event {} (kill->first event {}); sse client drop->first event {} ({} drops during the broker outage not counted); pg terminate->next job applied {}",
            max_ms(&procs.worker_recovery),
            procs.worker_recovery.len(),
            procs.died_before_applying,
            procs.restarted_in_outage,
            max_ms(&tally.relay_takeover),
            max_ms(&tally.broker_to_202),
            max_ms(&tally.broker_to_applied),
            list_ms(&tally.broker_outage),
            max_ms(&tally.bridge_to_event),
            max_ms(&tally.bridge_kill_to_event),
            max_ms(&procs.sse_resumes),
            procs.sse_resumes_in_outage,
            max_ms(&tally.backends_to_applied)
        );
        eprintln!(
            "faults: jobs republished by the sweeper {}, jobs parked for crashing workers {}, job settled lines {}, process log warnings {}, errors {}",
            procs.swept, procs.parked_crashers, procs.applied_lines, procs.warnings, procs.errors
        );
    }

    fn print_details(&self) {
        for line in self
            .procs
            .unexpected_exits
            .iter()
            .chain(&self.stream.examples)
            .chain(&self.down_order.examples)
            .chain(&self.sse_order.examples)
            .chain(&self.outbox_order.examples)
        {
            eprintln!("faults: detail: {line}");
        }
        for (id, status, attempts, error) in &self.db.non_terminal {
            eprintln!(
                "faults: detail: non-terminal job {id}: {status}, attempts {attempts}, error {error:?}"
            );
        }
        for (id, error) in &self.db.dead {
            eprintln!("faults: detail: dead job {id}: {error:?}");
        }
        for (id, status) in self.clients.valid_not_succeeded.iter().take(5) {
            eprintln!("faults: detail: valid step {id} ended {status}");
        }
    }
}

pub fn max_ms(ds: &[Duration]) -> String {
    ds.iter()
        .max()
        .map_or("n/a".to_owned(), |d| format!("{} ms", d.as_millis()))
}

pub fn list_ms(ds: &[Duration]) -> String {
    let ms: Vec<String> = ds.iter().map(|d| d.as_millis().to_string()).collect();
    format!("[{}]", ms.join(", "))
}
