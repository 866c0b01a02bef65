//! `orderflow-bench changes`: single status changes at a constant offered rate, step by
//! step, as a downstream consumer sees them. Each request is sent at its scheduled time
//! whatever the answers before it did (open loop), and every latency counts from that
//! scheduled time, so a stall shows as latency instead of as fewer requests. The events
//! exchange is read by the benchmark's own queue and matched to the accepted jobs: what
//! was accepted but never seen is lost; a job seen with two different seqs was applied
//! twice. Each step also reports where the machine's CPU went ([`crate::cpu`]).
//! `--overload` then offers four times the sustainable rate for a while and
//! watches what is refused, how fast, and how soon latency is back to normal. A refusal's
//! latency is split in two: how late the benchmark itself sent it (on one box the load
//! generator competes for the cores it loads) and the round trip from then on.

use crate::events::{Listener, Seen};
use crate::http1;
use crate::progress::{Counters, Progress};
use crate::stats::Latency;
use crate::system::{self, System, SystemArgs};
use crate::{cpu, seed, token, yardstick};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Args, Debug, Clone)]
pub struct ChangesArgs {
    #[command(flatten)]
    pub system: SystemArgs,
    /// Offered rates in requests per second, one step each, in this order.
    #[arg(long, value_delimiter = ',', default_value = "200,500,1000,2000")]
    pub rates: Vec<u32>,
    /// Requests per step: one `mark_paid` for each of N orders seeded for the step.
    #[arg(long, default_value_t = 10_000)]
    pub orders: u32,
    /// The p99 (milliseconds, submit to event) a rate must stay under to be sustainable.
    #[arg(long, default_value_t = 100)]
    pub p99_ms: u64,
    /// After the steps, offer 4x the sustainable rate for --overload-secs, then the
    /// sustainable rate again for --recovery-secs.
    #[arg(long)]
    pub overload: bool,
    /// Length of the overload burst, in seconds.
    #[arg(long, default_value_t = 30)]
    pub overload_secs: u32,
    /// Seconds of sustainable rate after the burst, in which latency must recover.
    #[arg(long, default_value_t = 10)]
    pub recovery_secs: u32,
    /// The rate the burst is four times of (default: the highest sustainable step).
    #[arg(long)]
    pub sustainable: Option<u32>,
    /// Give up waiting for the remaining events after this many seconds without a new one.
    #[arg(long, default_value_t = 15)]
    pub drain_secs: u64,
    #[command(flatten)]
    pub yardstick: yardstick::YardstickArgs,
}

/// Rate limits off: the benchmark is one admin actor on one IP, and what it measures is
/// the pipeline, not the limiter. `--env` can turn them back on (e.g. for `--overload`).
const SETTINGS: &[(&str, &str)] = &[
    ("RATE_PER_ACTOR", "0"),
    ("RATE_PER_IP", "0"),
    ("WORKER_RATE_GLOBAL", "0"),
    ("WORKER_RATE_PER_CUSTOMER", "0"),
    ("DATABASE_MAX_CONNECTIONS", "20"),
];

pub async fn run(args: ChangesArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.rates.is_empty() && !args.rates.contains(&0),
        "--rates: give one or more rates above 0"
    );
    crate::limits::raise_open_files(8_192);
    let before = args.yardstick.before().await?;
    let system = System::start(&args.system, SETTINGS).await?;
    let outcome = bench(&system, &args).await;
    system.stop().await;
    let best_events_per_sec = outcome?;
    let after = args.yardstick.after().await?;
    yardstick::report(
        "highest events/s of a step",
        best_events_per_sec,
        yardstick::Ceiling::Tx1,
        before.as_ref(),
        after.as_ref(),
    );
    Ok(())
}

/// One submitted change and its answer.
struct Shot {
    scheduled: Instant,
    /// When the benchmark got round to sending it (later than scheduled when the
    /// benchmark itself is short of CPU).
    sent: Instant,
    answered: Instant,
    /// HTTP status; None when the request failed without one.
    status: Option<u16>,
    job: Option<Uuid>,
    retry_after: bool,
}

impl Shot {
    fn accepted(&self) -> bool {
        self.status == Some(202) && self.job.is_some()
    }

    fn refused(&self) -> bool {
        matches!(self.status, Some(429 | 503))
    }

    fn answer_latency(&self) -> Duration {
        self.answered.saturating_duration_since(self.scheduled)
    }

    /// How much later than scheduled the benchmark sent it: part of
    /// [`Shot::answer_latency`], and the system's doing only through the cores they share.
    fn lateness(&self) -> Duration {
        self.sent.saturating_duration_since(self.scheduled)
    }

    /// From sent to answered: the rest of [`Shot::answer_latency`].
    fn round_trip(&self) -> Duration {
        self.answered.saturating_duration_since(self.sent)
    }
}

/// Sends `mark_paid` changes on a schedule and collects every answer.
struct Driver {
    http: Arc<http1::Client>,
    /// `Bearer <admin token>`, built once.
    auth: HeaderValue,
}

/// Every request's body.
const MARK_PAID: &[u8] = br#"{"action":"mark_paid"}"#;

impl Driver {
    /// Send one change per `(order, offset)` at `offset` after now, not waiting for
    /// earlier answers; returns when every request is answered (or failed).
    async fn drive(&self, plan: Vec<(Uuid, Duration)>, counters: &Arc<Counters>) -> Vec<Shot> {
        let start = Instant::now() + Duration::from_millis(20);
        let total = plan.len();
        let mut requests = JoinSet::new();
        for (order, offset) in plan {
            let scheduled = start + offset;
            tokio::time::sleep_until(scheduled.into()).await;
            let request = Request::post(format!("/orders/{order}/change-status"))
                .header(AUTHORIZATION, self.auth.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(MARK_PAID)))
                .expect("a valid request");
            let (http, counters) = (self.http.clone(), counters.clone());
            requests.spawn(async move { shoot(&http, request, scheduled, &counters).await });
        }
        let mut shots = Vec::with_capacity(total);
        while let Some(shot) = requests.join_next().await {
            shots.push(shot.expect("request task"));
        }
        shots.sort_by_key(|s| s.scheduled);
        shots
    }
}

/// A request not answered within this counts as failed.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// The part of a `202` answer the benchmark reads.
#[derive(serde::Deserialize)]
struct Queued {
    job_id: Uuid,
}

async fn shoot(
    http: &http1::Client,
    request: Request<Full<Bytes>>,
    scheduled: Instant,
    counters: &Counters,
) -> Shot {
    Counters::add(&counters.sent);
    let sent = Instant::now();
    let answer = tokio::time::timeout(ANSWER_DEADLINE, http.send(request)).await;
    let (status, job, retry_after) = match answer {
        Ok(Ok(answer)) => {
            let status = answer.status.as_u16();
            let retry_after = answer.headers.contains_key(hyper::header::RETRY_AFTER);
            let job = (status == 202)
                .then(|| serde_json::from_slice::<Queued>(&answer.body).ok())
                .flatten()
                .map(|q| q.job_id);
            (Some(status), job, retry_after)
        }
        Ok(Err(_)) | Err(_) => (None, None, false),
    };
    let shot = Shot {
        scheduled,
        sent,
        answered: Instant::now(),
        status,
        job,
        retry_after,
    };
    Counters::add(&counters.answered);
    if shot.accepted() {
        Counters::add(&counters.accepted);
    } else {
        Counters::add(&counters.rejected);
    }
    shot
}

/// Wait until every accepted job of `shots` has an event, or no new event arrived for
/// `quiet` (what is still missing then counts as lost).
async fn drain(listener: &Listener, shots: &[Shot], quiet: Duration) {
    let jobs: Vec<Uuid> = shots.iter().filter_map(|s| s.job).collect();
    let (mut last_count, mut last_change) = (listener.count(), Instant::now());
    while listener.missing(&jobs) > 0 && last_change.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if listener.count() != last_count {
            (last_count, last_change) = (listener.count(), Instant::now());
        }
    }
}

/// The figures of one phase.
struct Figures {
    offered: usize,
    statuses: BTreeMap<String, usize>,
    accepted: usize,
    accepted_per_sec: f64,
    events_per_sec: f64,
    accept: Latency,
    end_to_end: Latency,
    lost: usize,
    duplicated: usize,
}

impl Figures {
    fn of(shots: &[Shot], listener: &Listener) -> Figures {
        let start = shots
            .first()
            .map(|s| s.scheduled)
            .unwrap_or_else(Instant::now);
        let mut statuses = BTreeMap::new();
        let (mut accept, mut end_to_end) = (Vec::new(), Vec::new());
        let (mut lost, mut duplicated) = (0, 0);
        let mut last_answer = start;
        let mut last_event = start;
        for shot in shots {
            let status = shot.status.map_or("error".to_owned(), |s| s.to_string());
            *statuses.entry(status).or_insert(0) += 1;
            last_answer = last_answer.max(shot.answered);
            let Some(job) = shot.job.filter(|_| shot.accepted()) else {
                continue;
            };
            accept.push(shot.answer_latency());
            let first = match listener.seen(&job) {
                Seen::Never => {
                    lost += 1;
                    continue;
                }
                Seen::Once(at) => at,
                Seen::Twice(at) => {
                    duplicated += 1;
                    at
                }
            };
            last_event = last_event.max(first);
            end_to_end.push(first.saturating_duration_since(shot.scheduled));
        }
        let per_sec = |n: usize, until: Instant| {
            let secs = until.saturating_duration_since(start).as_secs_f64();
            if secs > 0.0 { n as f64 / secs } else { 0.0 }
        };
        Figures {
            offered: shots.len(),
            statuses,
            accepted: accept.len(),
            accepted_per_sec: per_sec(accept.len(), last_answer),
            events_per_sec: per_sec(end_to_end.len(), last_event),
            accept: Latency::of(accept),
            end_to_end: Latency::of(end_to_end),
            lost,
            duplicated,
        }
    }

    fn statuses(&self) -> String {
        self.statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn print(&self, label: &str) {
        println!(
            "{label}: offered {}, accepted {:.0}/s, events {:.0}/s; statuses {{{}}}",
            self.offered,
            self.accepted_per_sec,
            self.events_per_sec,
            self.statuses()
        );
        println!(
            "    accept {}; submit->event {}; lost {}, duplicated {}",
            self.accept, self.end_to_end, self.lost, self.duplicated
        );
    }
}

/// The steps, then the overload burst when asked; the highest events/s of a step.
async fn bench(system: &System, args: &ChangesArgs) -> anyhow::Result<f64> {
    let driver = Driver {
        http: Arc::new(http1::Client::new(&system.base)?),
        auth: HeaderValue::try_from(format!("Bearer {}", token::admin(system::SECRET)))?,
    };
    let listener = Arc::new(Listener::start(system).await?);
    let mut db = PgConnection::connect(&system.db_url).await?;
    let seeded = Instant::now();
    let per_step = args.orders as usize;
    let orders = seed::orders(&mut db, per_step * args.rates.len(), None).await?;
    println!(
        "seeded {} orders ({} per step) in {:.1?}",
        orders.len(),
        per_step,
        seeded.elapsed()
    );

    let meter = cpu::Meter::new(system.pid());
    let limit = Duration::from_millis(args.p99_ms);
    let (mut sustainable, mut accept_bound) = (None::<u32>, None::<u32>);
    let mut best_events_per_sec = 0.0_f64;
    for (rate, orders) in args.rates.iter().zip(orders.chunks(per_step)) {
        let plan = orders
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, Duration::from_secs_f64(i as f64 / *rate as f64)))
            .collect();
        let before = meter.sample();
        let shots = run_phase(&driver, &listener, format!("{rate}/s"), plan, args).await;
        let used = cpu::Usage::between(&before, &meter.sample());
        let f = Figures::of(&shots, &listener);
        f.print(&format!("rate {rate}/s"));
        used.print(f.accepted, "accepted change");
        if let Some(start) = shots.iter().map(|s| s.scheduled).min() {
            print_worst_window(&windows_from(&shots, &listener, start));
        }
        let all_in = f.accepted == f.offered && f.lost == 0 && f.duplicated == 0;
        if all_in && f.end_to_end.p99 < limit {
            sustainable = Some(*rate);
        }
        best_events_per_sec = best_events_per_sec.max(f.events_per_sec);
        if f.accepted == f.offered && f.accept.p99 < limit {
            accept_bound = Some(*rate);
        }
    }
    let show = |r: Option<u32>| r.map_or("none of the rates".to_owned(), |r| format!("{r}/s"));
    println!(
        "highest sustainable rate (all accepted, none lost, submit->event p99 < {limit:?}): {}",
        show(sustainable)
    );
    println!(
        "highest rate with accept p99 < {limit:?}: {}",
        show(accept_bound)
    );

    if args.overload {
        let rate = args.sustainable.or(sustainable).unwrap_or_else(|| {
            println!("no sustainable rate among the steps: the burst is based on the first rate");
            args.rates[0]
        });
        overload(&driver, &listener, &meter, &mut db, rate, args).await?;
    }
    print_jobs(&mut db).await?;
    Ok(best_events_per_sec)
}

/// Drive `plan` with a progress line, then wait for its events.
async fn run_phase(
    driver: &Driver,
    listener: &Arc<Listener>,
    label: String,
    plan: Vec<(Uuid, Duration)>,
    args: &ChangesArgs,
) -> Vec<Shot> {
    let counters = Arc::new(Counters::default());
    let events_before = listener.count();
    let progress = Progress::start(label, plan.len() as u64, counters.clone(), {
        let listener = listener.clone();
        move || format!("events {}", listener.count() - events_before)
    });
    let shots = driver.drive(plan, &counters).await;
    drain(listener, &shots, Duration::from_secs(args.drain_secs)).await;
    drop(progress);
    shots
}

/// 4x `rate` for the burst, then `rate` again: what is accepted, what is refused and how
/// fast, whether anything accepted is lost or doubled, and when latency is back.
async fn overload(
    driver: &Driver,
    listener: &Arc<Listener>,
    meter: &cpu::Meter,
    db: &mut PgConnection,
    rate: u32,
    args: &ChangesArgs,
) -> anyhow::Result<()> {
    let burst_rate = rate as f64 * 4.0;
    let burst_len = Duration::from_secs(args.overload_secs.into());
    let n_burst = (burst_rate * burst_len.as_secs_f64()) as usize;
    let n_after = (rate as u64 * u64::from(args.recovery_secs)) as usize;
    let orders = seed::orders(db, n_burst + n_after, None).await?;
    println!(
        "overload: {burst_rate:.0}/s (4 x {rate}/s) for {burst_len:?}, then {rate}/s for {} s",
        args.recovery_secs
    );
    let plan = orders
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let offset = if i < n_burst {
                Duration::from_secs_f64(i as f64 / burst_rate)
            } else {
                burst_len + Duration::from_secs_f64((i - n_burst) as f64 / rate as f64)
            };
            (*id, offset)
        })
        .collect();
    let before = meter.sample();
    let shots = run_phase(driver, listener, "overload".into(), plan, args).await;
    let used = cpu::Usage::between(&before, &meter.sample());
    let (burst, after) = shots.split_at(n_burst.min(shots.len()));

    let f = Figures::of(burst, listener);
    f.print("  burst");
    let refused: Vec<&Shot> = burst.iter().filter(|s| s.refused()).collect();
    let with_retry_after = refused.iter().filter(|s| s.retry_after).count();
    let refused_latency = Latency::of(refused.iter().map(|s| s.answer_latency()).collect());
    if refused.is_empty() {
        println!("    refused (429/503): none");
    } else {
        println!(
            "    refused (429/503): {} ({with_retry_after} with Retry-After), answered in {refused_latency}",
            refused.len()
        );
        let late = Latency::of(refused.iter().map(|s| s.lateness()).collect());
        let server = Latency::of(refused.iter().map(|s| s.round_trip()).collect());
        println!("      of that, sent late (the benchmark short of CPU): {late}");
        println!("      from sent to answered: {server}");
        print_refusals_per_second(&refused, burst[0].scheduled);
    }
    let all = Figures::of(&shots, listener);
    println!(
        "    accepted in burst and after: {}, lost {}, applied twice {}",
        all.accepted, all.lost, all.duplicated
    );
    println!("  burst and after:");
    used.print(shots.len(), "request answered");

    let Some(burst_end) = after.first().map(|s| s.scheduled) else {
        return Ok(());
    };
    let limit = Duration::from_millis(args.p99_ms);
    let windows = windows_from(after, listener, burst_end);
    let show = |w: &[(Duration, Option<Duration>)]| {
        w.iter()
            .map(|(_, p99)| p99.map_or("-".to_owned(), |d| format!("{:.0?}", d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let accept: Vec<_> = windows.iter().map(|w| (w.0, w.1)).collect();
    let e2e: Vec<_> = windows.iter().map(|w| (w.0, w.2)).collect();
    println!("  after the burst, p99 per 500 ms at {rate}/s:");
    println!("    accept:        {}", show(&accept));
    println!("    submit->event: {}", show(&e2e));
    for (what, w) in [("accept", &accept), ("submit->event", &e2e)] {
        match back_to_normal(w, limit) {
            Some(t) => println!("    {what} p99 under {limit:?} from {t:.1?} after the burst on"),
            None => println!(
                "    {what} p99 not back under {limit:?} within {} s",
                args.recovery_secs
            ),
        }
    }
    Ok(())
}

/// The refusals' p99 per second of the burst (by scheduled time): whether slow refusals
/// come at the start, in spells, or throughout.
fn print_refusals_per_second(refused: &[&Shot], start: Instant) {
    let p99s: Vec<String> = by_window(refused.iter().copied(), start, Duration::from_secs(1))
        .into_values()
        .map(|shots| {
            let latencies = shots.iter().map(|s| s.answer_latency()).collect();
            format!("{:.0?}", Latency::of(latencies).p99)
        })
        .collect();
    println!("      p99 per second of the burst: {}", p99s.join(" "));
}

/// One 500 ms window of sends: its start (after the phase's), accept p99 and
/// submit->event p99.
type Window = (Duration, Option<Duration>, Option<Duration>);

/// Per 500 ms window from `start` (by scheduled time).
fn windows_from(shots: &[Shot], listener: &Listener, start: Instant) -> Vec<Window> {
    const WINDOW: Duration = Duration::from_millis(500);
    by_window(shots, start, WINDOW)
        .into_iter()
        .map(|(i, shots)| {
            let accept: Vec<Duration> = shots.iter().map(|s| s.answer_latency()).collect();
            let e2e: Vec<Duration> = shots
                .iter()
                .filter_map(
                    |s| match s.job.map_or(Seen::Never, |job| listener.seen(&job)) {
                        Seen::Once(at) | Seen::Twice(at) => {
                            Some(at.saturating_duration_since(s.scheduled))
                        }
                        Seen::Never => None,
                    },
                )
                .collect();
            let p99 = |v: Vec<Duration>| (!v.is_empty()).then(|| Latency::of(v).p99);
            (WINDOW * i as u32, p99(accept), p99(e2e))
        })
        .collect()
}

/// `shots` by the `window` of their scheduled time after `start` (its index), in order.
fn by_window<'a>(
    shots: impl IntoIterator<Item = &'a Shot>,
    start: Instant,
    window: Duration,
) -> BTreeMap<u64, Vec<&'a Shot>> {
    let mut windows: BTreeMap<u64, Vec<&Shot>> = BTreeMap::new();
    for shot in shots {
        let index =
            shot.scheduled.saturating_duration_since(start).as_millis() / window.as_millis();
        windows.entry(index as u64).or_default().push(shot);
    }
    windows
}

/// A step's worst 500 ms for each figure: where a stall shows, and when.
fn print_worst_window(windows: &[Window]) {
    let worst = |pick: fn(&Window) -> Option<Duration>| {
        windows
            .iter()
            .filter_map(|w| pick(w).map(|p99| (w.0, p99)))
            .max_by_key(|(_, p99)| *p99)
    };
    if let (Some((at_a, a)), Some((at_e, e))) = (worst(|w| w.1), worst(|w| w.2)) {
        println!(
            "    worst 500 ms: accept p99 {a:.0?} at {at_a:.1?} into the step, submit->event p99 {e:.0?} at {at_e:.1?}"
        );
    }
}

/// When every window from some point on has its p99 under `limit`: that point.
fn back_to_normal(windows: &[(Duration, Option<Duration>)], limit: Duration) -> Option<Duration> {
    let bad = |w: &(Duration, Option<Duration>)| w.1.is_none_or(|p| p >= limit);
    match windows.iter().rposition(bad) {
        None => Some(Duration::ZERO),
        Some(i) => windows.get(i + 1).map(|w| w.0),
    }
}

/// Every job's final status, from the database: each accepted job reaches one.
async fn print_jobs(db: &mut PgConnection) -> anyhow::Result<()> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select status, count(*) from jobs group by status order by status")
            .fetch_all(db)
            .await?;
    let rows: Vec<String> = rows.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("jobs by status: {{{}}}", rows.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_back_to_normal_after_the_last_bad_window() {
        let ms = |n| Duration::from_millis(n);
        let limit = ms(100);
        let w = |p99s: &[u64]| -> Vec<(Duration, Option<Duration>)> {
            p99s.iter()
                .enumerate()
                .map(|(i, p)| (ms(500 * i as u64), Some(ms(*p))))
                .collect()
        };
        assert_eq!(
            back_to_normal(&w(&[900, 20, 150, 30, 40]), limit),
            Some(ms(1500))
        );
        assert_eq!(back_to_normal(&w(&[20, 30]), limit), Some(ms(0)));
        assert_eq!(back_to_normal(&w(&[20, 300]), limit), None);
    }
}
