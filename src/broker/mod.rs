//! RabbitMQ: names and topology, the confirmed publishers, and reconnecting.
//!
//! Every role opens its own connection, declares the topology it relies on (idempotently)
//! and, when the connection is lost, starts over from a fresh one: a supervisor loop per
//! role, so no delivery tag of a dead channel is ever acked.

pub mod marker;
pub mod publisher;
pub mod topology;

pub use topology::Names;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The body of a job message on `orderflow.jobs` and `orderflow.bulk`: the jobs it carries,
/// `{"jobs": [{"id": …, "customer_id": …, "reply": true}, …]}`. What a job asks for is its
/// row in `jobs`, read by the worker.
///
/// The ingress records concurrent change-status submissions in one statement
/// ([`crate::orders::intake`]) and publishes them as one message: a message through a
/// quorum queue costs the broker and both ends far more than the bytes of one more job
/// in it. A bulk, a sweep and a redrive publish one job per message. A message of the
/// first form, `{"job_id": …}` (with the customer in a header), is still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireJobMessage")]
pub struct JobMessage {
    pub jobs: Vec<JobRef>,
    /// Read from the first form: the job's customer and reply wish are the headers'.
    #[serde(skip)]
    pub first_form: bool,
}

/// One job of a [`JobMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    pub id: Uuid,
    /// The order's owner, for per-customer rate limits in the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<Uuid>,
    /// The submitter waits for the outcome (`Prefer: wait`): the worker answers on the
    /// message's `reply_to` once the job is settled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply: bool,
}

impl JobMessage {
    /// A message of one job.
    pub fn one(job: JobRef) -> Self {
        JobMessage::of(vec![job])
    }

    /// A message of these jobs.
    pub fn of(jobs: Vec<JobRef>) -> Self {
        JobMessage {
            jobs,
            first_form: false,
        }
    }
}

impl JobRef {
    pub fn new(id: Uuid) -> Self {
        JobRef {
            id,
            customer_id: None,
            reply: false,
        }
    }
}

/// Both forms a job message has had on the wire.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireJobMessage {
    Jobs(WireJobs),
    /// The first form: one job; its customer and reply wish are in the message's headers.
    One(WireOne),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireJobs {
    jobs: Vec<JobRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOne {
    job_id: Uuid,
}

impl TryFrom<WireJobMessage> for JobMessage {
    type Error = &'static str;

    fn try_from(wire: WireJobMessage) -> Result<Self, Self::Error> {
        match wire {
            WireJobMessage::Jobs(WireJobs { jobs }) if jobs.is_empty() => {
                Err("a job message without jobs")
            }
            WireJobMessage::Jobs(WireJobs { jobs }) => Ok(JobMessage::of(jobs)),
            WireJobMessage::One(WireOne { job_id }) => Ok(JobMessage {
                jobs: vec![JobRef::new(job_id)],
                first_form: true,
            }),
        }
    }
}

/// Open a connection named after the role (it shows in the management UI).
pub async fn connect(url: &str, role: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("orderflow-{role}-{}", std::process::id()).into());
    Connection::connect(url, props)
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", crate::config::redact(url)))
}

/// Run `session` until it returns Ok (it saw `shutdown`) or `shutdown` fires, starting it
/// again after every failure: exponential backoff with jitter, capped at `max_delay`, and
/// reset once a session has lived long enough to count as recovered.
pub async fn supervise<F, Fut>(
    role: &str,
    shutdown: &CancellationToken,
    max_delay: Duration,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut delays = reconnect_delays();
    loop {
        let started = Instant::now();
        match session().await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "{role} session ended; starting over"
            ),
        }
        if started.elapsed() > Duration::from_secs(30) {
            delays = reconnect_delays();
        }
        let delay = delays.next().unwrap_or(max_delay).min(max_delay);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Delays between reconnect attempts: exponential with jitter, capped, never giving up
/// (a role without its broker has nothing else to do than wait for it).
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_message_reads_both_forms_and_refuses_anything_else() {
        let id = Uuid::now_v7();
        let customer = Uuid::now_v7();
        let group = JobMessage::of(vec![
            JobRef {
                customer_id: Some(customer),
                reply: true,
                ..JobRef::new(id)
            },
            JobRef::new(customer),
        ]);
        let wire = serde_json::to_string(&group).unwrap();
        assert_eq!(
            wire,
            format!(
                r#"{{"jobs":[{{"id":"{id}","customer_id":"{customer}","reply":true}},{{"id":"{customer}"}}]}}"#
            )
        );
        assert_eq!(serde_json::from_str::<JobMessage>(&wire).unwrap(), group);

        let first: JobMessage = serde_json::from_str(&format!(r#"{{"job_id":"{id}"}}"#)).unwrap();
        assert_eq!(first.jobs, vec![JobRef::new(id)]);
        assert!(first.first_form);

        for bad in [
            r#"{"jobs":[]}"#.to_owned(),
            format!(r#"{{"job_id":"{id}","extra":1}}"#),
            format!(r#"{{"jobs":[{{"id":"{id}","extra":1}}]}}"#),
            r#"{"job_id":"not-a-uuid"}"#.to_owned(),
            "[]".to_owned(),
        ] {
            assert!(
                serde_json::from_str::<JobMessage>(&bad).is_err(),
                "{bad} was read"
            );
        }
    }
}
