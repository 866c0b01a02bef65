//! Bulk jobs: one bulk at a time per worker, worked through
//! [`crate::orders::bulk::step`] with `BULK_CHUNKS_IN_FLIGHT` chunks applied at once (one
//! chunk's transaction overlaps the next one's, so the database is not idle while the
//! worker judges a chunk or waits for a commit). A worker stopped mid-bulk does not ack:
//! the broker hands the bulk to another worker, which resumes with the chunks not done.

use super::Worker;
use super::delivery::JobDelivery;
use super::retry;
use crate::orders::bulk::{self, Control, Lane, StepError};
use crate::orders::command::ChangeCommand;
use crate::store::bulk::BulkOp;
use crate::store::jobs::{self, Job};
use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

/// How a bulk's run ended in this worker.
enum Run {
    /// The bulk reached a terminal status.
    Finished(BulkOp),
    /// It cannot be worked (a defect): it fails.
    Failed(String),
    /// Shutdown between chunks: left unacked for another worker.
    Interrupted,
}

impl Worker {
    pub(super) async fn bulk_loop(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if !self.cfg.worker_bulk {
            return Ok(());
        }
        let (channel, control, mut consumer) = super::consume(conn, &self.names.bulk, 1).await?;
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
                Ok(mut jobs) if jobs.len() == 1 => {
                    let job = jobs.pop().expect("one job");
                    self.run_bulk(&control, job, shutdown).await?
                }
                Ok(jobs) => {
                    let delivery = jobs[0].delivery.clone();
                    let why = "a bulk message carries one job";
                    tracing::error!(jobs = jobs.len(), why, "parking a bulk message");
                    retry::park_unreadable(&control, &self.names, &delivery, why).await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Err(unreadable) => {
                    let (delivery, why) = *unreadable;
                    tracing::error!(%why, "parking an unreadable bulk message");
                    retry::park_unreadable(&control, &self.names, &delivery, &why).await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
            }
        }
        let _ = channel.close(200, "shutdown".into()).await;
        let _ = control.close(200, "shutdown".into()).await;
        Ok(())
    }

    /// Work one bulk to its end and settle its delivery.
    #[tracing::instrument(skip_all, fields(job_id = %d.job_id))]
    async fn run_bulk(
        &self,
        control: &Channel,
        d: JobDelivery,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let claimed =
            (|| async { jobs::claim_bulk(&mut *self.pool.acquire().await?, d.job_id).await })
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
        match self.work_chunks(&job, shutdown).await? {
            Run::Interrupted => return Ok(()),
            Run::Finished(op) => {
                tracing::info!(status = %op.status, applied = op.applied, rejected = op.rejected, skipped = op.skipped, "bulk finished");
                bulk::settle(&mut *self.pool.acquire().await?, &job, &op).await?;
            }
            Run::Failed(why) => {
                tracing::error!(%why, "bulk cannot be worked; failing it");
                bulk::fail(&mut *self.pool.acquire().await?, &job, &why).await?;
                retry::park(control, &self.names, &d, &why).await?;
            }
        }
        d.delivery.acker.ack(BasicAckOptions::default()).await?;
        tracing::debug!("bulk job settled");
        Ok(())
    }

    /// Work the bulk's chunks until it ends, fails or shutdown comes. A database that keeps
    /// failing is an error: the bulk is given back and resumes where it stopped.
    async fn work_chunks(&self, job: &Job, shutdown: &CancellationToken) -> anyhow::Result<Run> {
        let chunk = self.cfg.bulk_chunk_size.max(1);
        loop {
            if shutdown.is_cancelled() {
                tracing::info!("stopping between bulk chunks; another worker will resume");
                return Ok(Run::Interrupted);
            }
            let control = (|| bulk::step::control(&self.pool, job, chunk))
                .retry(ExponentialBuilder::default().with_jitter().with_max_times(3))
                .when(is_transient)
                .notify(|e, after| tracing::warn!(error = %e, ?after, "transient error in a bulk step; retrying"))
                .await;
            let request = match control {
                Ok(Control::Finished(op)) => return Ok(Run::Finished(op)),
                Ok(Control::Chunks(request)) => request,
                Err(e) => return settle_error(e),
            };
            let lanes = (0..self.cfg.bulk_chunks_in_flight.max(1))
                .map(|_| self.lane(job, &request, chunk, shutdown));
            if let Err(e) = futures::future::try_join_all(lanes).await {
                return settle_error(e);
            }
        }
    }

    /// Claim and apply chunks one after the other until none is left to claim, a cancel is
    /// asked for or shutdown comes. Several lanes run at once.
    async fn lane(
        &self,
        job: &Job,
        request: &ChangeCommand,
        chunk: i64,
        shutdown: &CancellationToken,
    ) -> Result<(), StepError> {
        while !shutdown.is_cancelled() {
            self.limits.admit_bulk(chunk as usize).await;
            let lane = (|| bulk::step::apply_next(&self.pool, job, request))
                .retry(ExponentialBuilder::default().with_jitter().with_max_times(3))
                .when(is_transient)
                .notify(|e, after| tracing::warn!(error = %e, ?after, "transient error in a bulk chunk; retrying"))
                .await?;
            if lane == Lane::Drained {
                break;
            }
        }
        Ok(())
    }
}

fn is_transient(e: &StepError) -> bool {
    matches!(e, StepError::Database(db) if crate::store::is_transient(db))
}

/// A step that failed for good: a database still failing after retries gives the bulk back
/// (an error: it resumes later); anything else is a defect and the bulk fails.
fn settle_error(e: StepError) -> anyhow::Result<Run> {
    match e {
        StepError::Database(e) if crate::store::is_transient(&e) => Err(e).context("bulk step"),
        e => Ok(Run::Failed(e.to_string())),
    }
}
