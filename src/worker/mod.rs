//! The order worker: consumes `orderflow.jobs`, gathers micro-batches, applies each batch
//! in one transaction, and only then acks — so a crash before the commit redelivers the
//! jobs and a crash after it finds them claimed (nothing applies twice).
//!
//! A batch that fails transiently is retried in-process (backon); still failing, each of
//! its jobs goes to its delay queue or, out of attempts, to the dead queue ([`retry`]).
//! Business rejections are outcomes, not failures: recorded, never retried.

pub mod apply;
pub mod bulk;
mod delivery;
mod limits;
pub mod retry;
pub mod sweeper;

use crate::broker::publisher::JobPublisher;
use crate::broker::{self, Names, topology};
use crate::config::{CommonConfig, WorkerConfig};
use anyhow::Context;
use apply::Outcome;
use backon::{ExponentialBuilder, Retryable};
use delivery::JobDelivery;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use limits::Limits;
use retry::Disposition;
use serde_json::json;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Everything one worker process shares across broker sessions.
struct Worker {
    pool: PgPool,
    names: Names,
    cfg: WorkerConfig,
    limits: Limits,
    committed_batches: AtomicU64,
}

/// Consume `queue` with `prefetch` on a channel of its own, plus a confirm-mode control
/// channel: retry and dead-letter copies must be confirmed before their original is acked.
async fn consume(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
) -> lapin::Result<(Channel, Channel, Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let control = conn.create_channel().await?;
    control
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, control, consumer))
}

/// Run the worker (and its sweeper) until `shutdown`, reconnecting whenever the broker is lost.
pub async fn run(
    pool: PgPool,
    common: &CommonConfig,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = Names::from_config(common);
    let sweeper = (cfg.sweep_interval_secs > 0).then(|| {
        let publisher = JobPublisher::new(&common.amqp_url, names.clone(), Duration::from_secs(5));
        // Jobs in a delay queue are not stale: wait out the longest backoff before sweeping them.
        let longest = names
            .retry
            .steps()
            .last()
            .map(|a| names.retry.delay_after(a))
            .unwrap_or_default();
        let older_than = Duration::from_secs(cfg.sweep_after_secs).max(longest * 2);
        tokio::spawn(sweeper::run(
            pool.clone(),
            publisher,
            older_than,
            Duration::from_secs(cfg.sweep_interval_secs),
            shutdown.clone(),
        ))
    });
    let worker = Worker {
        limits: Limits::new(
            cfg.worker_rate_global,
            cfg.worker_rate_per_customer,
            cfg.worker_batch_size,
            cfg.worker_rate_bulk,
            cfg.bulk_chunk_size.max(1) as usize,
        ),
        pool,
        names,
        cfg,
        committed_batches: AtomicU64::new(0),
    };
    broker::supervise("order worker", &shutdown, Duration::from_secs(5), || {
        worker.session(&common.amqp_url, &shutdown)
    })
    .await;
    if let Some(sweeper) = sweeper {
        sweeper.await.context("sweeper task")??;
    }
    Ok(())
}

impl Worker {
    /// One broker connection's lifetime: declare, then consume single jobs and bulk jobs
    /// side by side (separate channels, so a long bulk never holds up a single change).
    /// Ok on shutdown.
    async fn session(&self, url: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = broker::connect(url, "order-worker").await?;
        let setup = conn.create_channel().await?;
        topology::declare(&setup, &self.names)
            .await
            .context("declaring topology")?;
        let _ = setup.close(200, "declared".into()).await;
        tokio::try_join!(
            self.jobs_loop(&conn, shutdown),
            self.bulk_loop(&conn, shutdown)
        )?;
        let _ = conn.close(200, "shutdown".into()).await;
        tracing::info!("order worker stopped");
        Ok(())
    }

    async fn jobs_loop(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let (channel, control, mut consumer) =
            consume(conn, &self.names.jobs, self.cfg.worker_prefetch).await?;
        tracing::info!(queue = %self.names.jobs, prefetch = self.cfg.worker_prefetch, batch = self.cfg.worker_batch_size, "order worker consuming");
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            let Some(first) = first else {
                anyhow::bail!("consumer stream ended (channel closed)")
            };
            let mut batch = vec![first.context("receiving a delivery")?];
            self.gather(&mut consumer, &mut batch).await?;
            // The batch in hand is finished even when shutdown arrives meanwhile.
            self.process(&control, batch).await?;
        }
        let _ = channel.close(200, "shutdown".into()).await;
        let _ = control.close(200, "shutdown".into()).await;
        Ok(())
    }

    async fn bulk_loop(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if !self.cfg.worker_bulk {
            return Ok(());
        }
        // One bulk at a time per worker; more workers, more bulks in parallel.
        let (channel, control, mut consumer) = consume(conn, &self.names.bulk, 1).await?;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            let Some(delivery) = next else {
                anyhow::bail!("bulk consumer stream ended (channel closed)")
            };
            match JobDelivery::parse(delivery.context("receiving a bulk delivery")?) {
                Ok(job) => self.run_bulk(&control, job, shutdown).await?,
                Err(unreadable) => {
                    let (delivery, why) = *unreadable;
                    tracing::error!(%why, "parking an unreadable bulk message");
                    retry::park(&control, &self.names, &delivery, 1, &why).await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
            }
        }
        let _ = channel.close(200, "shutdown".into()).await;
        let _ = control.close(200, "shutdown".into()).await;
        Ok(())
    }

    /// Work one bulk to its end, chunk by chunk. On shutdown it stops between chunks without
    /// acking: the broker hands the bulk to another worker, which resumes it.
    #[tracing::instrument(skip_all, fields(job_id = %d.job_id))]
    async fn run_bulk(
        &self,
        control: &Channel,
        d: JobDelivery,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let claimed = (|| async {
            crate::store::jobs::claim_bulk(&mut *self.pool.acquire().await?, d.job_id).await
        })
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_max_times(3),
        )
        .when(crate::store::is_transient)
        .await?;
        let Some(job) = claimed else {
            tracing::info!("bulk job already finished (a redelivery); nothing to do");
            d.delivery.acker.ack(BasicAckOptions::default()).await?;
            return Ok(());
        };
        let chunk = self.cfg.bulk_chunk_size.max(1);
        let finished = loop {
            if shutdown.is_cancelled() {
                tracing::info!("stopping between bulk chunks; another worker will resume");
                return Ok(());
            }
            self.limits.admit_bulk(chunk as usize).await;
            let step = (|| bulk::step(&self.pool, &job, chunk))
                .retry(ExponentialBuilder::default().with_jitter().with_max_times(3))
                .when(|e| matches!(e, bulk::StepError::Database(db) if crate::store::is_transient(db)))
                .notify(|e, after| tracing::warn!(error = %e, ?after, "transient error in a bulk step; retrying"))
                .await;
            match step {
                Ok(bulk::Step::Progressed(op)) => {
                    tracing::debug!(
                        applied = op.applied,
                        rejected = op.rejected,
                        pending = op.pending(),
                        "bulk chunk committed"
                    );
                }
                Ok(bulk::Step::Finished(op)) => break Ok(op),
                Err(bulk::StepError::Database(e)) if crate::store::is_transient(&e) => {
                    // Still failing: give the bulk back; it resumes where it stopped.
                    return Err(e).context("bulk step");
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        let mut conn = self.pool.acquire().await?;
        let status = match finished {
            Ok(op) => {
                tracing::info!(status = %op.status, applied = op.applied, rejected = op.rejected, skipped = op.skipped, "bulk finished");
                let status = match op.status.as_str() {
                    "completed" => "succeeded",
                    "rejected" => "rejected",
                    "cancelled" => "cancelled",
                    _ => "dead",
                };
                let finished = crate::store::jobs::Finished {
                    id: job.id,
                    status,
                    result: Some(json!({ "bulk_id": op.id, "status": op.status })),
                    error: op.error.clone(),
                };
                crate::store::jobs::finish_many(&mut conn, &[finished]).await?;
                status
            }
            Err(why) => {
                tracing::error!(%why, "bulk cannot be worked; failing it");
                let error = json!({ "code": "bulk_failed", "message": why });
                if let Some(bulk_id) = job.bulk_id {
                    crate::store::bulk::finish(&mut conn, bulk_id, "failed", Some(&error)).await?;
                }
                crate::store::jobs::mark_dead(&mut conn, job.id, &error).await?;
                retry::park(control, &self.names, &d.delivery, d.attempt, &why).await?;
                "dead"
            }
        };
        d.delivery.acker.ack(BasicAckOptions::default()).await?;
        tracing::debug!(%status, "bulk job settled");
        Ok(())
    }

    /// Add deliveries that arrive within the batch window, up to the batch size.
    async fn gather(
        &self,
        consumer: &mut Consumer,
        batch: &mut Vec<Delivery>,
    ) -> anyhow::Result<()> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.worker_batch_wait_ms);
        while batch.len() < self.cfg.worker_batch_size {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(d)) => batch.push(d.context("receiving a delivery")?),
                Ok(None) => anyhow::bail!("consumer stream ended (channel closed)"),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Apply one batch and settle every delivery in it.
    async fn process(&self, control: &Channel, batch: Vec<Delivery>) -> anyhow::Result<()> {
        let mut jobs = Vec::with_capacity(batch.len());
        for delivery in batch {
            match JobDelivery::parse(delivery) {
                Ok(job) if job.redeliveries + 1 >= self.names.retry.delivery_limit => {
                    // Its consumers keep dying on it: stop before the broker's limit drops it.
                    let why = format!(
                        "delivered {} times without being settled",
                        job.redeliveries + 1
                    );
                    tracing::error!(job_id = %job.job_id, %why, "parking a job that crashes its workers");
                    retry::park(control, &self.names, &job.delivery, job.attempt, &why).await?;
                    self.record_failure(job.job_id, job.attempt, Disposition::Dead, &why)
                        .await;
                    job.delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Ok(job) => jobs.push(job),
                Err(unreadable) => {
                    let (delivery, why) = *unreadable;
                    tracing::error!(%why, "parking an unreadable job message");
                    retry::park(control, &self.names, &delivery, 1, &why).await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
            }
        }
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
                for job in &jobs {
                    let why = format!("transient failure: {e}");
                    let disposition = retry::retry_or_park(
                        control,
                        &self.names,
                        &job.delivery,
                        job.attempt,
                        &why,
                    )
                    .await?;
                    self.record_failure(job.job_id, job.attempt, disposition, &why)
                        .await;
                    job.delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                return Ok(());
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
        for (job, (_, outcome)) in jobs.iter().zip(&report) {
            if let Outcome::Dead(why) = outcome {
                retry::park(control, &self.names, &job.delivery, job.attempt, why).await?;
            }
            job.delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        for (job, (job_id, outcome)) in jobs.iter().zip(&report) {
            tracing::debug!(%job_id, ?outcome, "job settled");
            if let Some(reply_to) = job.delivery.properties.reply_to() {
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
    async fn apply_alone(
        &self,
        control: &Channel,
        job: &JobDelivery,
    ) -> anyhow::Result<apply::Report> {
        let e = match apply_with_retries(&self.pool, &[job.job_id]).await {
            Ok(report) => return Ok(report),
            Err(e) => e,
        };
        let why = format!("cannot be applied: {e}");
        let outcome = if crate::store::is_transient(&e) {
            let disposition =
                retry::retry_or_park(control, &self.names, &job.delivery, job.attempt, &why)
                    .await?;
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
    async fn record_failure(
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

    /// The fault-injection hook: die between commit and ack when configured to.
    fn after_commit(&self) {
        let n = self.committed_batches.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.cfg.crash_after_commit_every;
        if every > 0 && n % every == 0 {
            eprintln!("fault injection: aborting after committed batch {n}, before its ack");
            std::process::abort();
        }
    }
}

async fn apply_with_retries(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<apply::Report> {
    (|| apply::apply_batch(pool, ids))
        .retry(ExponentialBuilder::default().with_jitter().with_max_times(3))
        .when(crate::store::is_transient)
        .notify(|e, after| tracing::warn!(error = %e, ?after, "transient database error; retrying batch"))
        .await
}
