//! Publishing with publisher confirms. A job is accepted only once the broker confirmed
//! it; an event is marked published only once the broker confirmed it.

use super::JobMessage;
use super::marker::SentMarker;
use super::{Names, connect, topology};
use crate::domain::Actor;
use crate::event::Event;
use futures::StreamExt;
use futures::future::Either;
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{Instrument, Span};
use uuid::Uuid;

/// RabbitMQ's pseudo-queue for direct reply-to: replies come back on the publishing channel.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

const PERSISTENT: u8 = 2;

/// Why a message was not durably accepted by the broker. Callers answer 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable (no queue `{0}`)")]
    Unroutable(String),
}

impl From<lapin::Error> for PublishError {
    fn from(e: lapin::Error) -> Self {
        PublishError::Unavailable(e.to_string())
    }
}

fn first_job(msg: &JobMessage) -> Uuid {
    msg.jobs.first().map(|j| j.id).unwrap_or_default()
}

/// A job publish's span (a producer hop; none while spans are not exported).
fn publish_span(queue: &str, job_id: Uuid) -> Span {
    crate::telemetry::hop(|| {
        tracing::info_span!(
            "publish job",
            otel.name = %format_args!("publish {queue}"),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.destination.name = %queue,
            job_id = %job_id,
        )
    })
}

/// Turn a confirmation into success or the reason it is not one.
fn check(confirmation: Confirmation, target: &str) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(target.to_owned())),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        Confirmation::NotRequested => Err(PublishError::Unavailable(
            "channel not in confirm mode".into(),
        )),
    }
}

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<()>>>>;

struct Session {
    /// Kept open for the channel; the overview opens short-lived channels on it too.
    conn: Connection,
    channel: Channel,
    /// For passive declares of the job queue (its depth, several times a second), apart
    /// from publishing: a failed declare closes its channel.
    probe: tokio::sync::Mutex<Option<Channel>>,
}

/// The ingress's publisher of job messages: one confirm-mode channel that also consumes
/// direct replies, so `Prefer: wait` learns the outcome as soon as the worker committed.
/// Reconnects lazily: a publish after a lost connection opens a new one.
pub struct JobPublisher {
    url: String,
    names: Names,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    waiters: Waiters,
    /// Jobs per message of the recent publishes (a moving average, `f64` bits): what a
    /// message in the job queue stands for, for [`Self::ready_jobs`].
    jobs_per_message: AtomicU64,
}

/// A registered wait for a job's reply; unregisters itself when dropped.
#[derive(Debug)]
pub struct ReplyWaiter {
    job_id: Uuid,
    rx: Option<oneshot::Receiver<()>>,
    waiters: Waiters,
}

impl ReplyWaiter {
    /// Wait up to `limit` for the worker's reply. True if it came.
    pub async fn wait(mut self, limit: Duration) -> bool {
        let Some(rx) = self.rx.take() else {
            return false;
        };
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }
}

impl Drop for ReplyWaiter {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .expect("waiters lock")
            .remove(&self.job_id);
    }
}

impl JobPublisher {
    pub fn new(url: &str, names: Names, timeout: Duration) -> Self {
        JobPublisher {
            url: url.to_owned(),
            names,
            timeout,
            session: tokio::sync::Mutex::new(None),
            waiters: Arc::default(),
            jobs_per_message: AtomicU64::new(1f64.to_bits()),
        }
    }

    async fn session(&self) -> Result<Arc<Session>, PublishError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.channel.status().connected() {
                return Ok(s.clone());
            }
            tracing::warn!("job publisher channel lost; reconnecting");
        }
        *guard = None;
        let session = tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        let session = Arc::new(session);
        *guard = Some(session.clone());
        Ok(session)
    }

    async fn open(&self) -> Result<Session, PublishError> {
        let conn = connect(&self.url, "ingress")
            .await
            .map_err(|e| PublishError::Unavailable(format!("{e:#}")))?;
        let channel = conn.create_channel().await?;
        topology::declare(&channel, &self.names).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut replies = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let waiters = self.waiters.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let job_id = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|c| c.as_str().parse().ok());
                if let Some(tx) =
                    job_id.and_then(|id: Uuid| waiters.lock().expect("waiters lock").remove(&id))
                {
                    let _ = tx.send(());
                }
            }
        });
        Ok(Session {
            conn,
            channel,
            probe: tokio::sync::Mutex::default(),
        })
    }

    /// Register interest in a job's reply. Do this before publishing, so no reply is missed.
    pub fn expect_reply(&self, job_id: Uuid) -> ReplyWaiter {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(job_id, tx);
        ReplyWaiter {
            job_id,
            rx: Some(rx),
            waiters: self.waiters.clone(),
        }
    }

    /// Publish one job and wait for the broker's confirm, in a producer span of its own.
    /// `actor` and `traceparent` go in the message's headers (the job's row has both).
    pub async fn publish(
        &self,
        msg: &JobMessage,
        actor: Option<&Actor>,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        self.count_jobs_per_message(msg);
        let span = publish_span(&self.names.jobs, first_job(msg));
        self.publish_to(&self.names.jobs, msg, actor, traceparent)
            .instrument(span)
            .await
    }

    /// Publish the jobs of concurrent submissions in one message and wait for the
    /// broker's confirm. A job with `reply` is answered on direct reply-to once its outcome
    /// is committed (register with [`Self::expect_reply`] first). Each submitter waits for
    /// this publish in its own span ([`Self::publish_span`]).
    pub async fn publish_group(&self, msg: &JobMessage) -> Result<(), PublishError> {
        self.count_jobs_per_message(msg);
        self.publish_to(&self.names.jobs, msg, None, None).await
    }

    /// Fold a job-queue message into the moving mean of jobs per message (over about the
    /// last hundred; a race loses an update).
    fn count_jobs_per_message(&self, msg: &JobMessage) {
        let mean = f64::from_bits(self.jobs_per_message.load(Ordering::Relaxed));
        let mean = mean + (msg.jobs.len() as f64 - mean) / 100.0;
        self.jobs_per_message
            .store(mean.to_bits(), Ordering::Relaxed);
    }

    /// Publish a bulk job to the bulk queue, confirmed like any job.
    pub async fn publish_bulk(
        &self,
        msg: &JobMessage,
        actor: &Actor,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let span = publish_span(&self.names.bulk, first_job(msg));
        self.publish_to(&self.names.bulk, msg, Some(actor), traceparent)
            .instrument(span)
            .await
    }

    async fn publish_to(
        &self,
        queue: &str,
        msg: &JobMessage,
        actor: Option<&Actor>,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let session = self.session().await?;
        let body = serde_json::to_vec(msg).expect("job message serializes");
        let mut headers = FieldTable::default();
        if let Some(actor) = actor {
            headers.insert(
                "actor".into(),
                AMQPValue::LongString(format!("{}:{}", actor.role, actor.id).into()),
            );
        }
        if let Some(traceparent) = traceparent {
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(traceparent.into()),
            );
        }
        let mut props = BasicProperties::default()
            .with_message_id(first_job(msg).to_string().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        if msg.jobs.iter().any(|j| j.reply) {
            props = props.with_reply_to(DIRECT_REPLY_TO.into());
        }
        let outcome = tokio::time::timeout(self.timeout, async {
            let confirm = session
                .channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await?;
            check(confirm.await?, queue)
        })
        .await
        .unwrap_or(Err(PublishError::Timeout(self.timeout)));
        if outcome.is_err() {
            // Whatever went wrong, the next publish starts from a fresh channel.
            *self.session.lock().await = None;
        }
        outcome
    }

    /// The span of a job's publish on the job queue, for a request that waits for the
    /// publish of the group its job is in.
    pub fn publish_span(&self, job_id: Uuid) -> Span {
        publish_span(&self.names.jobs, job_id)
    }

    /// Can a job be published right now? (For `/readyz`.)
    pub async fn check_ready(&self) -> Result<(), PublishError> {
        self.session().await.map(|_| ())
    }

    /// Jobs ready in the job queue (admission control's backlog gate), estimated: a message
    /// carries the jobs of one intake statement, so the messages ready times the jobs per
    /// message of this ingress's recent publishes.
    pub async fn ready_jobs(&self) -> Result<u32, PublishError> {
        let session = self.session().await?;
        let mut probe = session.probe.lock().await;
        let channel = match probe.as_ref() {
            Some(c) if c.status().connected() => c.clone(),
            _ => probe.insert(session.conn.create_channel().await?).clone(),
        };
        let declared = tokio::time::timeout(
            self.timeout,
            channel.queue_declare(
                self.names.jobs.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| PublishError::Timeout(self.timeout))??;
        let per_message = f64::from_bits(self.jobs_per_message.load(Ordering::Relaxed));
        let jobs = (f64::from(declared.message_count()) * per_message).ceil();
        // u32::MAX means "not known" to the gate.
        Ok(jobs.min(f64::from(u32::MAX - 1)) as u32)
    }

    /// Messages ready in each durable job queue, by name (for the operations overview).
    /// Passive declares on a channel of their own, so a failure cannot touch publishing.
    pub async fn queue_depths(&self) -> Result<Vec<(String, u32)>, PublishError> {
        let session = self.session().await?;
        tokio::time::timeout(self.timeout, async {
            let channel = session.conn.create_channel().await?;
            let mut depths = Vec::new();
            for queue in self.names.durable_queues() {
                let declared = channel
                    .queue_declare(
                        queue.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                depths.push((queue, declared.message_count()));
            }
            let _ = channel.close(200, "OK".into()).await;
            Ok(depths)
        })
        .await
        .unwrap_or(Err(PublishError::Timeout(self.timeout)))
    }
}

/// Events queued on the channel, waiting for the broker's confirms (see [`EventPublisher::send`]).
pub type Sending<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>>;

/// One publish on its way: queued on the channel, then written, then a confirm to await.
type Publishing<'a> = futures::future::BoxFuture<'a, lapin::Result<lapin::PublisherConfirm>>;

/// The relay's publisher of events: pipelined publishes, then every confirm awaited.
/// Each batch is preceded by the relay marker (its last event), see [`Names::relay_marker`].
pub struct EventPublisher {
    channel: Channel,
    exchange: String,
    marker: String,
}

impl EventPublisher {
    pub async fn open(conn: &Connection, names: &Names) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        topology::declare(&channel, names).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(EventPublisher {
            channel,
            exchange: names.events.clone(),
            marker: names.relay_marker.clone(),
        })
    }

    /// The last event any relay has sent, as the broker remembers it (the marker queue's
    /// one message, looked at and put back). None before the first batch ever.
    pub async fn sent_high_water(&self, conn: &Connection) -> anyhow::Result<Option<SentMarker>> {
        use anyhow::Context as _;
        let peek = conn.create_channel().await?;
        let got = peek
            .basic_get(
                self.marker.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .context("reading the relay marker")?;
        let marker = match got {
            None => None,
            Some(message) => {
                let text = String::from_utf8_lossy(&message.delivery.data).into_owned();
                message
                    .delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                Some(SentMarker::parse(&text).with_context(|| {
                    format!("the relay marker holds `{text}`, not a seq and an event")
                })?)
            }
        };
        let _ = peek.close(200, "peeked".into()).await;
        Ok(marker)
    }

    /// Queue `events` for publishing, in order, before returning; the returned future
    /// resolves once the broker has confirmed every one of them (or with the first
    /// failure). Queue the next batch before awaiting it to keep the broker busy.
    pub fn send(&self, events: Vec<Event>) -> Sending<'_> {
        let mut sending: Sending<'_> = Box::pin(async move {
            // `basic_publish` queues its frames (and takes the next delivery tag) on its
            // first poll, then waits for the I/O loop to write them. Awaiting each in turn
            // costs a hand-off to the I/O loop per event; instead each publish is polled
            // once, in order — which fixes the order on the wire — and the writes are
            // awaited together.
            let mut sends: Vec<Either<_, Publishing<'_>>> = Vec::with_capacity(events.len() + 1);
            // The marker first: a seq is "used" once it may have left, so the broker's
            // memory is never behind what consumers could have seen.
            if let Some(last) = events.last() {
                let marker = SentMarker {
                    seq: last.seq,
                    event: last.stored,
                };
                let mut mark = Box::pin(self.publish_marker(marker));
                sends.push(match futures::poll!(mark.as_mut()) {
                    Poll::Ready(sent) => Either::Left(std::future::ready(sent)),
                    Poll::Pending => Either::Right(mark),
                });
            }
            for e in &events {
                let mut send: Publishing<'_> = Box::pin(self.publish(e));
                let first = futures::poll!(send.as_mut());
                sends.push(match first {
                    Poll::Ready(sent) => Either::Left(std::future::ready(sent)),
                    Poll::Pending => Either::Right(send),
                });
            }
            let confirms = futures::future::try_join_all(sends).await?;
            for confirm in confirms {
                check(confirm.await?, &self.exchange)?;
            }
            Ok(())
        });
        // The first poll queues every event; what is left is waiting for the broker.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match sending.as_mut().poll(&mut cx) {
            Poll::Ready(done) => Box::pin(std::future::ready(done)),
            Poll::Pending => sending,
        }
    }

    fn publish_marker(&self, marker: SentMarker) -> Publishing<'_> {
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(PERSISTENT);
        let body = marker.to_string().into_bytes();
        Box::pin(async move {
            self.channel
                .basic_publish(
                    "".into(),
                    self.marker.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await
        })
    }

    fn publish<'a>(
        &'a self,
        e: &'a Event,
    ) -> impl Future<Output = lapin::Result<lapin::PublisherConfirm>> + 'a {
        let mut headers = FieldTable::default();
        if let Some(id) = e.order_id {
            headers.insert(
                "order_id".into(),
                AMQPValue::LongString(id.to_string().into()),
            );
        }
        if let Some(id) = e.customer_id {
            headers.insert(
                "customer_id".into(),
                AMQPValue::LongString(id.to_string().into()),
            );
        }
        if let Some(traceparent) = &e.traceparent {
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(traceparent.as_str().into()),
            );
        }
        let props = BasicProperties::default()
            .with_message_id(e.seq.to_string().into())
            .with_type(e.event_type.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        self.channel.basic_publish(
            self.exchange.as_str().into(),
            e.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            e.data.as_bytes(),
            props,
        )
    }
}
