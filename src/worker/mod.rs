//! The order worker: consumes `orderflow.jobs`, gathers micro-batches, applies each batch
//! in one transaction, and only then acks — so a crash before the commit redelivers the
//! jobs and a crash after it finds them claimed (nothing applies twice).

pub mod apply;

use crate::broker::{self, topology, Names};
use crate::config::WorkerConfig;
use crate::job::JobMessage;
use anyhow::Context;
use apply::Outcome;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Run the worker until `shutdown`, reconnecting to the broker whenever it is lost.
pub async fn run(pool: PgPool, amqp_url: String, names: Names, cfg: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut delays = broker::reconnect_delays();
    loop {
        let started = Instant::now();
        match session(&pool, &amqp_url, &names, &cfg, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "order worker lost its broker session; reconnecting"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            delays = broker::reconnect_delays();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One broker connection's lifetime: declare, consume, apply batches. Returns Ok on shutdown.
async fn session(pool: &PgPool, url: &str, names: &Names, cfg: &WorkerConfig, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let conn = broker::connect(url, "order-worker").await?;
    let channel = conn.create_channel().await?;
    topology::declare(&channel, names).await.context("declaring topology")?;
    channel.basic_qos(cfg.worker_prefetch, BasicQosOptions::default()).await?;
    let replies = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(names.jobs.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    tracing::info!(queue = %names.jobs, prefetch = cfg.worker_prefetch, batch = cfg.worker_batch_size, "order worker consuming");

    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = consumer.next() => next,
        };
        let Some(first) = first else { anyhow::bail!("consumer stream ended (channel closed)") };
        let mut batch = vec![first.context("receiving a delivery")?];
        gather(&mut consumer, &mut batch, cfg).await?;
        // The batch in hand is finished even when shutdown arrives meanwhile.
        process(pool, &replies, batch).await?;
    }
    let _ = channel.close(200, "shutdown".into()).await;
    let _ = conn.close(200, "shutdown".into()).await;
    tracing::info!("order worker stopped");
    Ok(())
}

/// Add deliveries that arrive within the batch window, up to the batch size.
async fn gather(consumer: &mut Consumer, batch: &mut Vec<Delivery>, cfg: &WorkerConfig) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.worker_batch_wait_ms);
    while batch.len() < cfg.worker_batch_size {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(d)) => batch.push(d.context("receiving a delivery")?),
            Ok(None) => anyhow::bail!("consumer stream ended (channel closed)"),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Apply one batch and settle every delivery in it.
async fn process(pool: &PgPool, replies: &Channel, batch: Vec<Delivery>) -> anyhow::Result<()> {
    let mut parsed = Vec::with_capacity(batch.len());
    for delivery in batch {
        match serde_json::from_slice::<JobMessage>(&delivery.data) {
            Ok(msg) => parsed.push((msg.job_id, delivery)),
            Err(e) => {
                tracing::error!(error = %e, "unparseable job message; discarding");
                delivery.acker.reject(BasicRejectOptions { requeue: false }).await?;
            }
        }
    }
    if parsed.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = parsed.iter().map(|(id, _)| *id).collect();
    let report = match apply_with_retries(pool, &ids).await {
        Ok(report) => report,
        Err(e) if crate::store::is_transient(&e) => {
            // Still failing after in-process retries: give the jobs back to the queue.
            tracing::warn!(error = %e, jobs = ids.len(), "batch failed transiently; requeueing");
            for (_, d) in &parsed {
                d.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await?;
            }
            return Ok(());
        }
        Err(e) if ids.len() > 1 => {
            // One job may be poisoning the batch: apply one at a time so the others proceed.
            tracing::warn!(error = %e, "batch failed; applying its jobs one by one");
            let mut report = Vec::with_capacity(ids.len());
            for id in &ids {
                report.extend(apply_single(pool, *id).await?);
            }
            report
        }
        Err(_) => apply_single(pool, ids[0]).await?,
    };
    for (_, d) in &parsed {
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    for ((job_id, outcome), (_, d)) in report.iter().zip(&parsed) {
        tracing::debug!(%job_id, ?outcome, "job settled");
        if let Some(reply_to) = d.properties.reply_to() {
            let props = BasicProperties::default().with_correlation_id(job_id.to_string().into());
            // A lost reply only makes a waiting client fall back to reading the job.
            let _ = replies
                .basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), b"{}", props)
                .await;
        }
    }
    Ok(())
}

async fn apply_with_retries(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<apply::Report> {
    (|| apply::apply_batch(pool, ids))
        .retry(ExponentialBuilder::default().with_jitter().with_max_times(3))
        .when(crate::store::is_transient)
        .notify(|e, after| tracing::warn!(error = %e, ?after, "transient database error; retrying batch"))
        .await
}

/// Apply one job alone; a job that fails even alone (not transiently) is parked as dead.
async fn apply_single(pool: &PgPool, id: Uuid) -> anyhow::Result<apply::Report> {
    match apply_with_retries(pool, &[id]).await {
        Ok(report) => Ok(report),
        Err(e) if crate::store::is_transient(&e) => Err(e).context("applying a job"),
        Err(e) => {
            tracing::error!(job_id = %id, error = %e, "job fails on its own; marking it dead");
            let error = serde_json::json!({ "code": "apply_failed", "message": e.to_string() });
            crate::store::jobs::mark_dead(&mut *pool.acquire().await?, id, &error).await?;
            Ok(vec![(id, Outcome::Dead(e.to_string()))])
        }
    }
}
