//! The system of the fault suite, one process per role instance: one ingress, two order
//! workers (one of which also aborts between commit and ack on its own), two outbox relays
//! (one active, one standing by) and one SSE bridge.

use std::time::{Duration, Instant};

use super::must;
use crate::harness::{cluster::Cluster, supervisor::Supervised, wait::poll_until};

/// Knobs every process must agree on (the delay queues are declared from the retry policy).
pub const SHARED_ENV: &[(&str, &str)] = &[
    // Short backoff steps, so the sweeper's threshold (twice the longest step) is short too.
    ("JOB_RETRY_BASE_MS", "100"),
    ("SHUTDOWN_TIMEOUT_SECS", "5"),
];
const WORKER_ENV: &[(&str, &str)] = &[
    ("WORKER_RATE_PER_CUSTOMER", "100000"),
    ("WORKER_RATE_GLOBAL", "100000"),
    ("SWEEP_AFTER_SECS", "10"),
    ("SWEEP_INTERVAL_SECS", "2"),
];
const INGRESS_ENV: &[(&str, &str)] = &[("RATE_PER_ACTOR", "100000")];
const RELAY_ENV: &[(&str, &str)] = &[("RELAY_POLL_MS", "500")];
/// The crash-hook worker aborts after every Nth committed batch, before its ack.
const CRASH_AFTER_COMMIT_EVERY: &str = "50";
/// How long a process may take from spawn to serving.
const START_DEADLINE: Duration = Duration::from_secs(60);

pub struct Roles {
    pub ingress: Supervised,
    pub ingress_url: String,
    pub workers: Vec<Supervised>,
    pub relays: Vec<Supervised>,
    pub bridge: Supervised,
}

impl Roles {
    /// Starts every role and waits until each serves: the ingress and the bridge listen,
    /// both workers consume, one relay is active and the other stands by.
    pub async fn start(cluster: &Cluster) -> Self {
        let bind = ["--bind", "127.0.0.1:0"];
        let ingress = cluster.start(
            "ingress",
            env!("CARGO_BIN_EXE_orderflow"),
            &["serve", bind[0], bind[1]],
            INGRESS_ENV,
        );
        let ingress_url = ingress.wait_listening(START_DEADLINE).await;
        let crash_env: Vec<(&str, &str)> = WORKER_ENV
            .iter()
            .copied()
            .chain([(
                "ORDERFLOW_CRASH_AFTER_COMMIT_EVERY",
                CRASH_AFTER_COMMIT_EVERY,
            )])
            .collect();
        let worker = env!("CARGO_BIN_EXE_order-worker");
        let relay = env!("CARGO_BIN_EXE_outbox-relay");
        let roles = Self {
            ingress,
            ingress_url,
            workers: vec![
                cluster.start("worker-a", worker, &[], WORKER_ENV),
                cluster.start("worker-b-crash-hook", worker, &[], &crash_env),
            ],
            relays: vec![
                cluster.start("relay-1", relay, &[], RELAY_ENV),
                cluster.start("relay-2", relay, &[], RELAY_ENV),
            ],
            bridge: cluster.start("bridge", env!("CARGO_BIN_EXE_sse-bridge"), &bind, &[]),
        };
        roles.bridge.wait_listening(START_DEADLINE).await;
        for worker in &roles.workers {
            let consuming = poll_until(START_DEADLINE, || {
                worker.lives(|l| {
                    l.last()?
                        .first_after("order worker consuming", l.last()?.spawned_at)
                        .map(|_| ())
                })
            })
            .await;
            must(consuming, &format!("{} consuming", worker.name));
        }
        let relays_up = poll_until(START_DEADLINE, || {
            (roles.active_relays().len() == 1 && roles.standing_relays() == 1).then_some(())
        })
        .await;
        must(relays_up, "one relay active and one standing by");
        roles
    }

    /// The relays whose current run holds the relay lock, as far as their logs say.
    pub fn active_relays(&self) -> Vec<usize> {
        (0..self.relays.len())
            .filter(|&i| self.relays[i].lives(|l| l.last().is_some_and(|l| l.relay_active())))
            .collect()
    }

    fn standing_relays(&self) -> usize {
        self.relays
            .iter()
            .filter(|r| {
                r.lives(|l| {
                    l.last().is_some_and(|l| {
                        l.lines
                            .iter()
                            .any(|x| x.message == "another relay is active; standing by")
                    })
                })
            })
            .count()
    }

    /// The first job any worker applied after `after`.
    pub fn first_applied_after(&self, after: Instant) -> Option<Instant> {
        self.workers
            .iter()
            .filter_map(|w| {
                w.lives(|lives| {
                    lives
                        .iter()
                        .filter_map(|l| l.first_applied_after(after))
                        .min()
                })
            })
            .min()
    }

    /// Stops every process for good; returns them, with their lives, for the evidence.
    pub async fn stop(self) -> Vec<Supervised> {
        let mut all: Vec<Supervised> = self.workers.into_iter().chain(self.relays).collect();
        all.push(self.bridge);
        all.push(self.ingress);
        for process in &mut all {
            process.stop().await;
        }
        all
    }
}
