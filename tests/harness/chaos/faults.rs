//! The faults and their schedule: workers `kill -9`ed at random moments, RabbitMQ stopped
//! and started again, Postgres backends terminated, the active relay and the bridge
//! `kill -9`ed, the SSE client's connection dropped. Each planned fault waits for the
//! system to show its recovery, and the time that took is tallied.

use std::{
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::process::Command;

use super::{RECOVERY_DEADLINE, load::Ledger, must, observers::Observers, roles::Roles};
use crate::harness::{cluster::Cluster, wait::poll_until};

#[derive(Clone, Copy, Debug)]
enum Fault {
    TerminateBackends,
    SseClientDisconnect,
    BrokerRestart,
    RelayKill,
    BridgeKill,
}

/// Faults at fixed fractions of each minute of the run (a shorter run is one scaled cycle).
fn plan(total: Duration) -> Vec<(Duration, Fault)> {
    use Fault::*;
    let cycle = total.min(Duration::from_secs(60));
    let slots = [
        (0.12, TerminateBackends),
        (0.22, SseClientDisconnect),
        (0.30, BrokerRestart),
        (0.50, RelayKill),
        (0.60, TerminateBackends),
        (0.70, BridgeKill),
    ];
    let mut plan = Vec::new();
    let mut base = Duration::ZERO;
    while base < total {
        for (fraction, fault) in slots {
            let at = base + cycle.mul_f64(fraction);
            if at + Duration::from_secs(3) < total {
                plan.push((at, fault));
            }
        }
        base += cycle;
    }
    plan
}

/// Counts and recovery times of the faults.
#[derive(Default, Debug)]
pub struct Tally {
    pub worker_kills: u32,
    pub relay_kills: u32,
    pub bridge_kills: u32,
    pub broker_restarts: u32,
    pub backend_terminations: u32,
    pub backends_terminated: i64,
    pub sse_client_drops: u32,
    pub relay_takeover: Vec<Duration>,
    pub broker_to_202: Vec<Duration>,
    pub broker_to_applied: Vec<Duration>,
    pub broker_outage: Vec<Duration>,
    pub bridge_to_event: Vec<Duration>,
    pub bridge_kill_to_event: Vec<Duration>,
    /// (when the connection was dropped, how long until the next event came).
    pub sse_resume_to_event: Vec<(Instant, Duration)>,
    pub backends_to_applied: Vec<Duration>,
    /// Broker outages (stop_app .. first 202 again): a worker restarted inside one cannot recover.
    pub outages: Vec<(Instant, Instant)>,
}

impl Tally {
    /// Whether `at` fell inside a broker outage.
    pub fn in_outage(&self, at: Instant) -> bool {
        self.outages
            .iter()
            .any(|(from, to)| at >= *from && at <= *to)
    }
}

/// What the faults act on and watch.
pub struct Chaos<'a> {
    pub cluster: &'a Cluster,
    pub roles: &'a Roles,
    pub ledger: &'a Ledger,
    pub observers: &'a Observers,
}

impl Chaos<'_> {
    /// For `run_for` from `started`: the planned faults in their slots, a random worker
    /// `kill -9` every few seconds, and the SSE client's connection dropped every few
    /// seconds. Returns once the run is over and every fault showed its recovery.
    pub async fn run(&self, started: Instant, run_for: Duration) -> Tally {
        let until = started + run_for;
        let tally = Mutex::new(Tally::default());
        let planned = async {
            for (at, fault) in plan(run_for) {
                tokio::time::sleep_until((started + at).into()).await;
                eprintln!(
                    "faults: t={:.1}s {fault:?}",
                    started.elapsed().as_secs_f64()
                );
                self.inject(fault, &tally).await;
            }
        };
        tokio::join!(
            planned,
            self.kill_workers(until, &tally),
            self.drop_sse_connections(until, &tally),
            tokio::time::sleep_until(until.into()),
        );
        tally.into_inner().unwrap()
    }

    async fn inject(&self, fault: Fault, tally: &Mutex<Tally>) {
        match fault {
            Fault::TerminateBackends => self.terminate_backends(tally).await,
            Fault::SseClientDisconnect => self.drop_sse_connection(tally).await,
            Fault::BrokerRestart => self.restart_broker(tally).await,
            Fault::RelayKill => self.kill_active_relay(tally).await,
            Fault::BridgeKill => self.kill_bridge(tally).await,
        }
    }

    async fn terminate_backends(&self, tally: &Mutex<Tally>) {
        let at = Instant::now();
        let n = self.cluster.terminate_backends().await;
        eprintln!("faults: terminated {n} Postgres backends");
        let applied = poll_until(RECOVERY_DEADLINE, || self.roles.first_applied_after(at)).await;
        let applied = must(applied, "a job applied after pg_terminate_backend");
        let mut t = tally.lock().unwrap();
        t.backend_terminations += 1;
        t.backends_terminated += n;
        t.backends_to_applied.push(applied - at);
    }

    async fn drop_sse_connection(&self, tally: &Mutex<Tally>) {
        let at = Instant::now();
        self.observers.disconnect.notify_one();
        let first = poll_until(RECOVERY_DEADLINE, || {
            self.observers.sse.lock().unwrap().first_event_after(at)
        })
        .await;
        let first = must(first, "an SSE event after the client resumed");
        let mut t = tally.lock().unwrap();
        t.sse_client_drops += 1;
        t.sse_resume_to_event.push((at, first - at));
    }

    async fn restart_broker(&self, tally: &Mutex<Tally>) {
        let began = Instant::now();
        eprintln!("faults: rabbitmqctl stop_app");
        let outage = BrokerOutage::begin().await;
        // The outage lasts until a client has met it: the ingress refusing a job.
        let refused = poll_until(RECOVERY_DEADLINE, || self.ledger.first_503_after(began)).await;
        must(refused, "a 503 from the ingress while RabbitMQ is stopped");
        outage.end().await;
        let up = Instant::now();
        eprintln!("faults: rabbitmqctl start_app done");
        let accepted = poll_until(RECOVERY_DEADLINE, || self.ledger.first_202_after(up)).await;
        let accepted = must(accepted, "a 202 after RabbitMQ started again");
        let applied = poll_until(RECOVERY_DEADLINE, || self.roles.first_applied_after(up)).await;
        let applied = must(applied, "a job applied after RabbitMQ started again");
        let mut t = tally.lock().unwrap();
        t.broker_restarts += 1;
        t.broker_outage.push(up - began);
        t.broker_to_202.push(accepted - up);
        t.broker_to_applied.push(applied - up);
        t.outages.push((began, accepted.max(applied)));
    }

    async fn kill_active_relay(&self, tally: &Mutex<Tally>) {
        let relays = &self.roles.relays;
        let active = poll_until(RECOVERY_DEADLINE, || {
            let active = self.roles.active_relays();
            (active.len() == 1).then(|| active[0])
        })
        .await;
        let victim = must(active, "exactly one relay logging `outbox relay active`");
        let at = relays[victim].kill_and_hold().await;
        let standby = 1 - victim;
        let published = poll_until(RECOVERY_DEADLINE, || {
            relays[standby].lives(|lives| {
                lives
                    .iter()
                    .find_map(|l| l.first_after("published", at).map(|l| l.at))
            })
        })
        .await;
        let published = must(
            published,
            "the standby relay publishing after the active one was killed",
        );
        eprintln!(
            "faults: killed the active relay ({}); standby published after {:?}",
            relays[victim].name,
            published - at
        );
        // Two relays again: the restarted one stands by.
        relays[victim].start_again();
        let standing = poll_until(RECOVERY_DEADLINE, || {
            relays[victim].lives(|lives| {
                let life = lives.last()?;
                (life.spawned_at > at
                    && life
                        .first_after("another relay is active; standing by", at)
                        .is_some())
                .then_some(())
            })
        })
        .await;
        must(standing, "the restarted relay standing by");
        let mut t = tally.lock().unwrap();
        t.relay_kills += 1;
        t.relay_takeover.push(published - at);
    }

    async fn kill_bridge(&self, tally: &Mutex<Tally>) {
        let bridge = &self.roles.bridge;
        let at = bridge.kill().await;
        let spawned = poll_until(RECOVERY_DEADLINE, || {
            bridge.lives(|lives| lives.last().map(|l| l.spawned_at).filter(|t| *t > at))
        })
        .await;
        let spawned = must(spawned, "the bridge respawned");
        let first = poll_until(RECOVERY_DEADLINE, || {
            self.observers
                .sse
                .lock()
                .unwrap()
                .first_event_after(spawned)
        })
        .await;
        let first = must(first, "an SSE event from the restarted bridge");
        let mut t = tally.lock().unwrap();
        t.bridge_kills += 1;
        t.bridge_to_event.push(first - spawned);
        t.bridge_kill_to_event.push(first - at);
    }

    /// Drops the SSE client's connection every few seconds until `until`: each time it
    /// resumes with Last-Event-ID, at whatever point the relay and the bridge happen to be.
    async fn drop_sse_connections(&self, until: Instant, tally: &Mutex<Tally>) {
        let mut rng = fastrand::Rng::with_seed(0x55e);
        while let Some(wait) = next_slot(&mut rng, 1_500..4_000, until) {
            tokio::time::sleep(wait).await;
            self.drop_sse_connection(tally).await;
        }
    }

    /// `kill -9` a random worker every few seconds until `until`.
    async fn kill_workers(&self, until: Instant, tally: &Mutex<Tally>) {
        let workers = &self.roles.workers;
        let mut rng = fastrand::Rng::with_seed(0xdead);
        while let Some(wait) = next_slot(&mut rng, 3_000..8_000, until) {
            tokio::time::sleep(wait).await;
            workers[rng.usize(..workers.len())].kill().await;
            tally.lock().unwrap().worker_kills += 1;
        }
    }
}

/// A random wait of `ms` milliseconds, unless it would end less than 3 s before `until`.
fn next_slot(
    rng: &mut fastrand::Rng,
    ms: std::ops::Range<u64>,
    until: Instant,
) -> Option<Duration> {
    let wait = Duration::from_millis(rng.u64(ms));
    (Instant::now() + wait + Duration::from_secs(3) <= until).then_some(wait)
}

/// RabbitMQ's application stopped (`rabbitmqctl stop_app`). Dropping the guard without
/// [`BrokerOutage::end`] (a panicking test) starts it again, so the broker is never left down.
struct BrokerOutage {
    down: bool,
}

fn rabbitmqctl() -> String {
    std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned())
}

async fn run_rabbitmqctl(verb: &str) {
    let output = Command::new(rabbitmqctl())
        .arg(verb)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running `rabbitmqctl {verb}`: {e}"));
    assert!(
        output.status.success(),
        "`rabbitmqctl {verb}` failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl BrokerOutage {
    /// `rabbitmqctl stop_app`; returns once the broker no longer serves clients.
    async fn begin() -> Self {
        // Armed before the command runs: even a half-done stop is undone on panic.
        let guard = Self { down: true };
        run_rabbitmqctl("stop_app").await;
        guard
    }

    /// `rabbitmqctl start_app`; returns once the broker serves clients again.
    async fn end(mut self) {
        run_rabbitmqctl("start_app").await;
        self.down = false;
    }
}

impl Drop for BrokerOutage {
    fn drop(&mut self) {
        if self.down {
            eprintln!("faults: starting RabbitMQ again (the test did not)");
            let _ = std::process::Command::new(rabbitmqctl())
                .arg("start_app")
                .stdin(Stdio::null())
                .status();
        }
    }
}
