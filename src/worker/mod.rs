//! The order worker: consumes `orderflow.jobs`, gathers micro-batches, applies each batch
//! in one transaction, and only then acks — so a crash before the commit redelivers the
//! jobs and a crash after it finds them claimed (nothing applies twice).
//!
//! A batch that fails transiently is retried in-process (backon); still failing, each of
//! its jobs goes to its delay queue or, out of attempts, to the dead queue ([`retry`]).
//! Business rejections are outcomes, not failures: recorded, never retried.

mod bulk;
mod delivery;
mod jobs;
mod limits;
pub mod retry;
pub mod sweeper;

use crate::broker::publisher::JobPublisher;
use crate::broker::{self, Names, topology};
use crate::config::{CommonConfig, WorkerConfig};
use anyhow::Context;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use limits::Limits;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything one worker process shares across broker sessions.
struct Worker {
    pool: PgPool,
    names: Names,
    cfg: WorkerConfig,
    limits: Limits,
    /// Batches committed so far (the fault-injection hook counts them).
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    committed_batches: std::sync::atomic::AtomicU64,
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
        committed_batches: std::sync::atomic::AtomicU64::new(0),
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
}
