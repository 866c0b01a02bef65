//! `orderflow-bench sse`: many idle live-event subscribers on one bridge. Measures the
//! bridge's memory per idle connection (RSS of the system's process, from /proc), the
//! fan-out of one event to every subscriber, and that subscribers which stop reading are
//! cut off by the bridge (it counts them in `slow_disconnects`) without slowing the
//! others: the fan-out is measured while quiet, during a flood of events, and during the
//! same flood with subscribers that never read (which cannot keep up with it).
//!
//! The subscribers that read all ask for `status=cancelled`; the probe events are
//! cancellations, one order each, and the flood is a bulk `mark_paid` (events they do not
//! ask for). The slow subscribers ask for everything and never read a byte.

use crate::seed;
use crate::stats::Latency;
use crate::system::{self, System, SystemArgs};
use crate::token;
use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use uuid::Uuid;

#[derive(Args, Debug, Clone)]
pub struct SseArgs {
    #[command(flatten)]
    pub system: SystemArgs,
    /// Subscribers that read every byte they are sent.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Subscribers that never read (the bridge must disconnect them, not wait for them).
    #[arg(long, default_value_t = 10)]
    pub slow: usize,
    /// Events fanned out one at a time while all is quiet, and again during each flood.
    #[arg(long, default_value_t = 20)]
    pub probes: usize,
    /// Events in the flood: more than a subscriber that never reads can hold (the bridge
    /// buffers 1024 events per connection, the HTTP stack and the sockets some hundred KB).
    #[arg(long, default_value_t = 10_000)]
    pub flood: usize,
    /// Subscriptions being opened at one time.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// Rate limits off: every subscription and probe comes from one admin on one IP.
const SETTINGS: &[(&str, &str)] = &[
    ("RATE_PER_ACTOR", "0"),
    ("RATE_PER_IP", "0"),
    ("WORKER_RATE_GLOBAL", "0"),
    ("WORKER_RATE_PER_CUSTOMER", "0"),
];

/// How long one probe event may take to reach every subscriber.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: SseArgs) -> anyhow::Result<()> {
    let wanted = (args.subscribers + args.slow) as u64 + 1_024;
    let limit = crate::limits::raise_open_files(wanted);
    if limit < wanted {
        eprintln!("open files: {limit}, fewer than the {wanted} this run needs");
    }
    let system = System::start(&args.system, SETTINGS).await?;
    let outcome = bench(&system, &args).await;
    system.stop().await;
    outcome
}

/// Arrival times of each probe event at the subscribers, by the probe's order.
struct Board {
    probe_of: HashMap<Uuid, usize>,
    arrivals: Vec<Mutex<Vec<Instant>>>,
    counts: Vec<AtomicUsize>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    ended: AtomicUsize,
}

impl Board {
    fn new(probes: &[Uuid]) -> Board {
        Board {
            probe_of: probes.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
            arrivals: probes.iter().map(|_| Mutex::default()).collect(),
            counts: probes.iter().map(|_| AtomicUsize::new(0)).collect(),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
        }
    }

    fn record(&self, order: &Uuid, at: Instant) {
        if let Some(&i) = self.probe_of.get(order) {
            self.arrivals[i].lock().expect("arrivals lock").push(at);
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn live(&self) -> usize {
        self.connected.load(Ordering::Relaxed) - self.ended.load(Ordering::Relaxed)
    }
}

async fn bench(system: &System, args: &SseArgs) -> anyhow::Result<()> {
    let pid = system.pid().context("the system has exited")?;
    let admin = token::admin(system::SECRET);
    let control = reqwest::Client::new();
    let mut db = PgConnection::connect(&system.db_url).await?;
    let probes = seed::orders(&mut db, args.probes * 3, None).await?;
    let (control_customer, slow_customer) = (Uuid::new_v4(), Uuid::new_v4());
    seed::orders(&mut db, args.flood, Some(control_customer)).await?;
    seed::orders(&mut db, args.flood, Some(slow_customer)).await?;
    let mut probe_sets = probes.chunks(args.probes.max(1));
    let mut next_probes = || probe_sets.next().unwrap_or_default();
    let board = Arc::new(Board::new(&probes));

    // Idle connections: the system's RSS before and after.
    let rss_before = rss_kib(pid)?;
    let opened = Instant::now();
    let mut subscribers = connect(system, &admin, args, &board).await?;
    let connected = board.connected.load(Ordering::Relaxed);
    println!(
        "{connected} subscribers connected in {:.1?} ({} failed)",
        opened.elapsed(),
        board.failed.load(Ordering::Relaxed)
    );
    if connected == 0 {
        bail!("no subscriber could connect");
    }
    let stats = bridge_stats(&control, system, &admin).await?;
    let rss_after = rss_kib(pid)?;
    println!(
        "system RSS {} MiB idle before, {} MiB with {} connections (bridge count {}): {:.1} KiB per connection; benchmark RSS {} MiB",
        rss_before / 1024,
        rss_after / 1024,
        connected,
        stats["connections"]["total"],
        rss_after.saturating_sub(rss_before) as f64 / connected as f64,
        rss_kib(std::process::id()).unwrap_or(0) / 1024,
    );

    let quiet = fan_out(&control, system, &admin, &board, next_probes(), None).await?;
    quiet.print("quiet");
    let flooded = flood(
        &control,
        system,
        &admin,
        &board,
        control_customer,
        next_probes(),
    )
    .await?;
    flooded.print(&format!("during a flood of {} events", args.flood));

    let slow = connect_slow(system, &admin, args.slow).await?;
    println!("{} slow subscribers connected (never reading)", slow.len());
    let flooded = flood(
        &control,
        system,
        &admin,
        &board,
        slow_customer,
        next_probes(),
    )
    .await?;
    flooded.print(&format!(
        "during a flood of {} events, {} slow subscribers",
        args.flood,
        slow.len()
    ));

    let stats = bridge_stats(&control, system, &admin).await?;
    println!(
        "slow subscribers disconnected by the bridge: {} of {}; reading subscribers dropped: {} of {connected}",
        stats["slow_disconnects"],
        slow.len(),
        board.ended.load(Ordering::Relaxed),
    );
    drop(slow);
    subscribers.abort_all();
    Ok(())
}

/// A bulk `mark_paid` over `customer`'s orders (the flood), probes fanned out every
/// 50 ms meanwhile; returns once the bulk is done and every probe has arrived.
async fn flood(
    http: &reqwest::Client,
    system: &System,
    token: &str,
    board: &Board,
    customer: Uuid,
    probes: &[Uuid],
) -> anyhow::Result<FanOut> {
    let bulk: Value = http
        .post(format!("{}/orders/bulk/status-update", system.base))
        .bearer_auth(token)
        .json(&json!({
            "selection": { "filter": { "customer_id": customer } },
            "action": "mark_paid", "reason": "benchmark flood", "mode": "best_effort",
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let figures = fan_out(
        http,
        system,
        token,
        board,
        probes,
        Some(Duration::from_millis(50)),
    )
    .await?;
    let bulk_id = bulk["bulk_id"].as_str().context("no bulk_id")?;
    wait_bulk(http, system, token, bulk_id).await?;
    Ok(figures)
}

/// Open the reading subscribers, `connect_concurrency` at a time; returns once each is
/// connected (its response headers arrived, so the bridge has registered it) or failed.
async fn connect(
    system: &System,
    token: &str,
    args: &SseArgs,
    board: &Arc<Board>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()?;
    let url = format!("{}/orders/events/subscribe?status=cancelled", system.base);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.subscribers {
        let permit = gate.clone().acquire_owned().await?;
        let request = http
            .get(&url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        let board = board.clone();
        tasks.spawn(async move {
            let response = match request.send().await {
                Ok(r) if r.status().is_success() => r,
                _ => {
                    board.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            board.connected.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            let mut body = response.bytes_stream();
            let mut frames = Frames::default();
            while let Some(Ok(chunk)) = body.next().await {
                let at = Instant::now();
                for order in frames.push(&chunk) {
                    board.record(&order, at);
                }
            }
            board.ended.fetch_add(1, Ordering::Relaxed);
        });
    }
    // Every permit back: every subscription has connected or failed.
    let _all = gate
        .acquire_many(args.connect_concurrency.max(1) as u32)
        .await?;
    Ok(tasks)
}

/// Subscribers that send their request and never read, with a small receive buffer, so
/// what they are sent piles up in the bridge until it gives up on them.
async fn connect_slow(system: &System, token: &str, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let addr: std::net::SocketAddr = system
        .base
        .trim_start_matches("http://")
        .parse()
        .context("the system's address")?;
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut stream = socket.connect(addr).await?;
        let request = format!(
            "GET /orders/events/subscribe HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Fan-out figures over a set of probe events.
struct FanOut {
    probes: usize,
    /// Arrival at each subscriber after the first subscriber had it.
    spread: Latency,
    /// Arrival at each subscriber after the change was submitted.
    from_submit: Latency,
    /// Per event: the last subscriber's arrival after the first's.
    all_reached: Latency,
    missing: usize,
}

impl FanOut {
    fn print(&self, when: &str) {
        println!(
            "fan-out {when}, {} events x {} deliveries: after the first subscriber {}; from submit {}; last subscriber after the first, per event: {}; missing {}",
            self.probes,
            self.spread.count,
            self.spread,
            self.from_submit,
            self.all_reached,
            self.missing
        );
    }
}

/// Cancel each probe order and wait until its event reached every live subscriber:
/// one after the other (`spacing` None), or every `spacing` without waiting in between.
async fn fan_out(
    http: &reqwest::Client,
    system: &System,
    token: &str,
    board: &Board,
    probes: &[Uuid],
    spacing: Option<Duration>,
) -> anyhow::Result<FanOut> {
    let index = |order: &Uuid| board.probe_of[order];
    let mut submitted = Vec::with_capacity(probes.len());
    for order in probes {
        let at = Instant::now();
        http.post(format!("{}/orders/{order}/change-status", system.base))
            .bearer_auth(token)
            .json(&json!({ "action": "cancel", "reason": "benchmark probe" }))
            .send()
            .await?
            .error_for_status()?;
        submitted.push(at);
        match spacing {
            Some(spacing) => tokio::time::sleep(spacing.saturating_sub(at.elapsed())).await,
            None => wait_reached(board, index(order)).await,
        }
    }
    for order in probes {
        wait_reached(board, index(order)).await;
    }
    let live = board.live();
    let (mut spread, mut from_submit, mut all_reached) = (Vec::new(), Vec::new(), Vec::new());
    let mut missing = 0;
    for (order, submitted) in probes.iter().zip(submitted) {
        let mut times = board.arrivals[index(order)]
            .lock()
            .expect("arrivals lock")
            .clone();
        times.sort_unstable();
        missing += live.saturating_sub(times.len());
        let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
            continue;
        };
        all_reached.push(last - first);
        spread.extend(times.iter().map(|t| *t - first));
        from_submit.extend(times.iter().map(|t| t.saturating_duration_since(submitted)));
    }
    Ok(FanOut {
        probes: probes.len(),
        spread: Latency::of(spread),
        from_submit: Latency::of(from_submit),
        all_reached: Latency::of(all_reached),
        missing,
    })
}

/// Until probe `i` reached every live subscriber, or PROBE_TIMEOUT.
async fn wait_reached(board: &Board, i: usize) {
    let start = Instant::now();
    while board.counts[i].load(Ordering::Relaxed) < board.live() && start.elapsed() < PROBE_TIMEOUT
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_bulk(
    http: &reqwest::Client,
    system: &System,
    token: &str,
    bulk_id: &str,
) -> anyhow::Result<()> {
    let url = format!("{}/orders/bulk/{bulk_id}", system.base);
    crate::bulk::wait_for("flood bulk completed", Duration::from_secs(300), || async {
        let op: Value = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        match op["status"].as_str() {
            Some("completed") => Ok(true),
            Some("failed" | "rejected" | "cancelled") => bail!("flood bulk ended {op}"),
            _ => Ok(false),
        }
    })
    .await
    .map(|_| ())
}

async fn bridge_stats(
    http: &reqwest::Client,
    system: &System,
    token: &str,
) -> anyhow::Result<Value> {
    Ok(http
        .get(format!("{}/orders/events/stats", system.base))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Resident memory of process `pid` in KiB (VmRSS of /proc/<pid>/status).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Splits an event stream into frames and yields the `order_id` of each event's data.
#[derive(Default)]
struct Frames {
    buffer: Vec<u8>,
}

#[derive(Deserialize)]
struct Data {
    order_id: Option<Uuid>,
}

impl Frames {
    fn push(&mut self, chunk: &[u8]) -> Vec<Uuid> {
        self.buffer.extend_from_slice(chunk);
        let mut orders = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&frame);
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n");
            if let Ok(Data {
                order_id: Some(order),
            }) = serde_json::from_str(&data)
            {
                orders.push(order);
            }
        }
        orders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_yield_their_order_ids() {
        let id = Uuid::new_v4();
        let stream = format!(
            ": orderflow\nretry: 2000\n\nid: 7\nevent: order.status_changed\ndata: {{\"seq\":7,\"order_id\":\"{id}\"}}\n\n: keep-alive\n\n"
        );
        let (a, b) = stream.as_bytes().split_at(40);
        let mut frames = Frames::default();
        let mut seen = frames.push(a);
        seen.extend(frames.push(b));
        assert_eq!(seen, vec![id]);
        assert!(frames.buffer.is_empty());
    }
}
