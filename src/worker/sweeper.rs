//! The sweeper: publishes again the jobs that are accepted but in no queue — the ingress
//! died between inserting the job and publishing it, or a message was lost with a broker.
//! Harmless when the job is in fact queued: the worker's claim makes a duplicate a no-op.

use crate::broker::publisher::JobPublisher;
use crate::broker::{JobMessage, JobRef};
use crate::domain::Actor;
use crate::store::jobs;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SWEEP_BATCH: i64 = 500;

/// Sweep every `interval` until shutdown.
pub async fn run(
    pool: PgPool,
    publisher: JobPublisher,
    older_than: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        match sweep_once(&pool, &publisher, older_than).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                jobs = n,
                "republished jobs that were accepted but not in any queue"
            ),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "sweep failed; will try again"),
        }
    }
}

/// One sweep; returns how many jobs were published again.
pub async fn sweep_once(
    pool: &PgPool,
    publisher: &JobPublisher,
    older_than: Duration,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let stale = jobs::take_stale(
            &mut *pool.acquire().await?,
            older_than.as_secs_f64(),
            SWEEP_BATCH,
        )
        .await?;
        for job in &stale {
            let actor = Actor {
                id: job.actor_id,
                role: job.actor_role,
            };
            publisher
                .publish(
                    &JobMessage::one(JobRef {
                        customer_id: job.customer_id,
                        ..JobRef::new(job.id)
                    }),
                    Some(&actor),
                    job.traceparent.as_deref(),
                )
                .await?;
        }
        total += stale.len();
        if (stale.len() as i64) < SWEEP_BATCH {
            return Ok(total);
        }
    }
}
