//! Single changes: gather a micro-batch of deliveries, apply it in one transaction
//! ([`crate::orders::apply::apply_batch`]), and only then settle each delivery — ack, park
//! a dead one, answer a waiting ingress on direct reply-to.

use super::Worker;
use super::delivery::{JobDelivery, Parsed};
use super::retry::{self, Disposition};
use crate::orders::apply::{self, Outcome, Report};
use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

impl Worker {
    pub(super) async fn jobs_loop(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let (channel, control, mut consumer) =
            super::consume(conn, &self.names.jobs, self.cfg.worker_prefetch).await?;
        tracing::info!(queue = %self.names.jobs, prefetch = self.cfg.worker_prefetch, batch = self.cfg.worker_batch_size, "order worker consuming");
        while !shutdown.is_cancelled() {
            // A delivery already waiting means work piled up while the last batch was being
            // applied: that backlog is the next batch, taken at once. Only a worker that was
            // idle lingers for more (`WORKER_BATCH_WAIT_MS`).
            let (first, linger) = match consumer.next().now_or_never() {
                Some(next) => (next, Duration::ZERO),
                None => {
                    let next = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        next = consumer.next() => next,
                    };
                    (next, Duration::from_millis(self.cfg.worker_batch_wait_ms))
                }
            };
            let Some(first) = first else {
                anyhow::bail!("consumer stream ended (channel closed)")
            };
            let mut batch = vec![JobDelivery::parse(first.context("receiving a delivery")?)];
            self.gather(&mut consumer, &mut batch, linger).await?;
            // The batch in hand is finished even when shutdown arrives meanwhile.
            self.process(&control, batch).await?;
        }
        let _ = channel.close(200, "shutdown".into()).await;
        let _ = control.close(200, "shutdown".into()).await;
        Ok(())
    }

    /// Add the deliveries already received and those that arrive within `linger`, read, up
    /// to the batch size in jobs (a message may carry several; one that cannot be read
    /// counts as one).
    async fn gather(
        &self,
        consumer: &mut Consumer,
        batch: &mut Vec<Parsed>,
        linger: Duration,
    ) -> anyhow::Result<()> {
        // `timeout_at` polls the delivery before the deadline: with no linger it still takes
        // every delivery that is ready.
        let deadline = tokio::time::Instant::now() + linger;
        let count = |p: &Parsed| p.as_ref().map_or(1, Vec::len);
        let mut jobs: usize = batch.iter().map(count).sum();
        while jobs < self.cfg.worker_batch_size {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(d)) => {
                    let parsed = JobDelivery::parse(d.context("receiving a delivery")?);
                    jobs += count(&parsed);
                    batch.push(parsed);
                }
                Ok(None) => anyhow::bail!("consumer stream ended (channel closed)"),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Apply one batch and settle every delivery in it.
    async fn process(&self, control: &Channel, batch: Vec<Parsed>) -> anyhow::Result<()> {
        let jobs = self.triage(control, batch).await?;
        if jobs.is_empty() {
            return Ok(());
        }
        let customers: Vec<Option<Uuid>> = jobs.iter().map(|j| j.customer_id).collect();
        self.limits.admit(&customers).await;

        let ids: Vec<Uuid> = jobs.iter().map(|j| j.job_id).collect();
        let report = match apply_with_retries(&self.pool, &ids).await {
            Ok(report) => report,
            Err(e) if crate::store::is_transient(&e) => {
                tracing::warn!(error = %e, jobs = ids.len(), "batch still failing after retries; backing off");
                return self.back_off(control, &jobs, &e).await;
            }
            Err(e) => {
                // One job may be poisoning the batch: apply one at a time so the others proceed.
                tracing::warn!(error = %e, "batch failed; applying its jobs one by one");
                let mut report = Vec::with_capacity(ids.len());
                for job in &jobs {
                    report.extend(self.apply_alone(control, job).await?);
                }
                report
            }
        };
        self.after_commit();
        self.settle(control, &jobs, &report).await
    }

    /// The jobs worth applying. Unreadable messages, and messages whose consumers keep
    /// dying on them, are parked in the dead queue here (before the broker's own
    /// redelivery limit would drop them), the latter job by job.
    async fn triage(
        &self,
        control: &Channel,
        batch: Vec<Parsed>,
    ) -> anyhow::Result<Vec<JobDelivery>> {
        let mut jobs = Vec::with_capacity(batch.len());
        for parsed in batch {
            match parsed {
                Ok(parsed) if parsed[0].redeliveries + 1 >= self.names.retry.delivery_limit => {
                    let why = format!(
                        "delivered {} times without being settled",
                        parsed[0].redeliveries + 1
                    );
                    for job in &parsed {
                        tracing::error!(job_id = %job.job_id, %why, "parking a job that crashes its workers");
                        retry::park(control, &self.names, job, &why).await?;
                        self.record_failure(job.job_id, job.attempt, Disposition::Dead, &why)
                            .await;
                    }
                    parsed[0]
                        .delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await?;
                }
                Ok(parsed) => jobs.extend(parsed),
                Err(unreadable) => {
                    let (delivery, why) = *unreadable;
                    tracing::error!(%why, "parking an unreadable job message");
                    retry::park_unreadable(control, &self.names, &delivery, &why).await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
            }
        }
        Ok(jobs)
    }

    /// The database keeps failing: every job of the batch goes to its delay queue (or, out
    /// of attempts, the dead queue), confirmed before the deliveries are acked.
    async fn back_off(
        &self,
        control: &Channel,
        jobs: &[JobDelivery],
        e: &sqlx::Error,
    ) -> anyhow::Result<()> {
        let why = format!("transient failure: {e}");
        for job in jobs {
            let disposition = retry::retry_or_park(control, &self.names, job, &why).await?;
            self.record_failure(job.job_id, job.attempt, disposition, &why)
                .await;
        }
        ack_through(jobs).await
    }

    /// After the commit: park dead jobs, ack every delivery, then wake waiting requests.
    ///
    /// One ack settles the whole batch: `multiple` acks every delivery of this consumer's
    /// channel up to the batch's last tag, and every earlier one is in this batch (batches
    /// of a consumer are settled one after another, and each is settled whole).
    async fn settle(
        &self,
        control: &Channel,
        jobs: &[JobDelivery],
        report: &Report,
    ) -> anyhow::Result<()> {
        for (job, (_, outcome)) in jobs.iter().zip(report) {
            if let Outcome::Dead(why) = outcome {
                retry::park(control, &self.names, job, why).await?;
            }
        }
        ack_through(jobs).await?;
        for (job, (job_id, outcome)) in jobs.iter().zip(report) {
            tracing::debug!(%job_id, ?outcome, "job settled");
            if let Some(reply_to) = job
                .delivery
                .properties
                .reply_to()
                .as_ref()
                .filter(|_| job.reply)
            {
                let props =
                    BasicProperties::default().with_correlation_id(job_id.to_string().into());
                // A lost reply only makes a waiting client fall back to reading the job.
                let _ = control
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        b"{}",
                        props,
                    )
                    .await;
            }
        }
        Ok(())
    }

    /// Apply one job on its own; if even that fails, it is retried later or parked.
    async fn apply_alone(&self, control: &Channel, job: &JobDelivery) -> anyhow::Result<Report> {
        let e = match apply_with_retries(&self.pool, &[job.job_id]).await {
            Ok(report) => return Ok(report),
            Err(e) => e,
        };
        let why = format!("cannot be applied: {e}");
        let outcome = if crate::store::is_transient(&e) {
            let disposition = retry::retry_or_park(control, &self.names, job, &why).await?;
            self.record_failure(job.job_id, job.attempt, disposition, &why)
                .await;
            Outcome::Deferred
        } else {
            // Parked with the other settled deliveries of the batch.
            self.record_failure(job.job_id, job.attempt, Disposition::Dead, &why)
                .await;
            Outcome::Dead(why)
        };
        Ok(vec![(job.job_id, outcome)])
    }

    /// Best effort: the database may be what is failing. A job whose row still says
    /// `queued` is picked up again by the sweeper, so nothing is lost if this fails.
    pub(super) async fn record_failure(
        &self,
        job_id: Uuid,
        attempt: u32,
        disposition: Disposition,
        why: &str,
    ) {
        let error = json!({ "code": "apply_failed", "message": why, "attempt": attempt });
        let result = async {
            let mut conn = self.pool.acquire().await?;
            match disposition {
                Disposition::Retrying { .. } => {
                    crate::store::jobs::mark_retrying(&mut conn, job_id, attempt as i32, &error)
                        .await
                }
                Disposition::Dead => crate::store::jobs::mark_dead(&mut conn, job_id, &error).await,
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%job_id, error = %e, "could not record the job's failure; the sweeper will see it");
        }
    }

    /// The fault-injection hook (tests only, cargo feature `fault-injection`): die between
    /// commit and ack every Nth batch, to prove a redelivery applies nothing twice.
    #[cfg(feature = "fault-injection")]
    fn after_commit(&self) {
        use std::sync::atomic::Ordering;
        let n = self.committed_batches.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.cfg.crash_after_commit_every;
        if every > 0 && n % every == 0 {
            eprintln!("fault injection: aborting after committed batch {n}, before its ack");
            std::process::abort();
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn after_commit(&self) {}
}

/// Ack every delivery of these jobs (and, `multiple`, every earlier one of this consumer's
/// channel: batches of a consumer are settled one after another, each whole, and a
/// message's jobs are all in one batch).
async fn ack_through(jobs: &[JobDelivery]) -> anyhow::Result<()> {
    if let Some(last) = jobs
        .iter()
        .map(|j| &j.delivery)
        .max_by_key(|d| d.delivery_tag)
    {
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
    }
    Ok(())
}

async fn apply_with_retries(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<Report> {
    (|| apply::apply_batch(pool, ids))
        .retry(ExponentialBuilder::default().with_jitter().with_max_times(3))
        .when(crate::store::is_transient)
        .notify(|e, after| tracing::warn!(error = %e, ?after, "transient database error; retrying batch"))
        .await
}
