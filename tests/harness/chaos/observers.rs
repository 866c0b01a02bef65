//! The fault suite's observers, which must live through every fault: a consumer of a
//! durable downstream queue (it outlives the broker restart with its messages), and an
//! admin following the SSE stream from seq 1 that resumes with Last-Event-ID whenever its
//! connection ends.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use serde_json::Value;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    SseEvent,
    broker::{message_header, message_id},
    cluster::Cluster,
    sse::{SUBSCRIBE, SseParser},
};

/// One delivery on the downstream queue.
pub struct Got {
    pub message_id: Option<String>,
    pub order_header: Option<String>,
    pub body: Value,
    pub redelivered: bool,
}

#[derive(Default)]
pub struct DownstreamLog {
    pub got: Vec<Got>,
    pub sessions: u64,
}

/// One SSE connection of the resuming client.
pub struct Segment {
    pub resumed_after: u64,
    pub connected_at: Instant,
    pub events: Vec<(Instant, SseEvent)>,
    pub end: Option<String>,
}

#[derive(Default)]
pub struct SseLog {
    pub segments: Vec<Segment>,
    pub failed_connects: u64,
}

impl SseLog {
    pub fn last_seq(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .find_map(|s| s.events.last().and_then(|(_, e)| e.seq_if_any()))
            .unwrap_or(0)
    }

    /// The first event of a connection made after `after`.
    pub fn first_event_after(&self, after: Instant) -> Option<Instant> {
        self.segments
            .iter()
            .filter(|s| s.connected_at > after)
            .find_map(|s| s.events.first().map(|(at, _)| *at))
    }
}

/// Both observers, running.
pub struct Observers {
    pub downstream: Arc<Mutex<DownstreamLog>>,
    pub sse: Arc<Mutex<SseLog>>,
    /// Tells the SSE client to drop its connection (it resumes at once).
    pub disconnect: Arc<Notify>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What the observers saw, once they stopped.
pub struct Observed {
    pub downstream: DownstreamLog,
    pub sse: SseLog,
}

impl Observers {
    /// Binds a durable queue on `order.#` and starts consuming it, and starts the admin
    /// SSE client against the bridge wherever it listens.
    pub async fn start(
        cluster: &mut Cluster,
        bridge: watch::Receiver<Option<String>>,
        admin: String,
    ) -> Self {
        let queue = cluster
            .own_durable_queue("faults.downstream", "order.#")
            .await;
        let stop = CancellationToken::new();
        let downstream = Arc::new(Mutex::new(DownstreamLog::default()));
        let sse = Arc::new(Mutex::new(SseLog::default()));
        let disconnect = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(consume(
                cluster.broker().amqp_url.clone(),
                queue,
                downstream.clone(),
                stop.clone(),
            )),
            tokio::spawn(follow(
                bridge,
                admin,
                sse.clone(),
                disconnect.clone(),
                stop.clone(),
            )),
        ];
        Self {
            downstream,
            sse,
            disconnect,
            stop,
            tasks,
        }
    }

    /// How many distinct events the downstream queue delivered so far.
    pub fn distinct_downstream(&self) -> u64 {
        let log = self.downstream.lock().unwrap();
        let ids: std::collections::HashSet<&str> = log
            .got
            .iter()
            .filter_map(|g| g.message_id.as_deref())
            .collect();
        ids.len() as u64
    }

    pub async fn stop(self) -> Observed {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        Observed {
            downstream: take(self.downstream),
            sse: take(self.sse),
        }
    }
}

fn take<T: Default>(log: Arc<Mutex<T>>) -> T {
    std::mem::take(&mut *log.lock().unwrap())
}

/// Consumes the durable downstream queue, acking each delivery, reconnecting until stopped.
async fn consume(
    amqp_url: String,
    queue: String,
    log: Arc<Mutex<DownstreamLog>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let session = async {
            let conn = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            channel.basic_qos(500, BasicQosOptions::default()).await?;
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "faults-downstream".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            log.lock().unwrap().sessions += 1;
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return Ok::<(), lapin::Error>(()),
                    next = consumer.next() => next,
                };
                let Some(delivery) = next else { return Ok(()) };
                let delivery = delivery?;
                let got = Got {
                    message_id: message_id(&delivery),
                    order_header: message_header(&delivery, "order_id"),
                    body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                    redelivered: delivery.redelivered,
                };
                log.lock().unwrap().got.push(got);
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
        };
        // A broker stopped in the middle of the session's setup can leave lapin's pending
        // call unresolved: the session is abandoned on stop, whatever it is waiting for.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = session => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// An admin following every event from seq 1, resuming with Last-Event-ID whenever its
/// connection ends (the bridge died, or `disconnect` told it to drop the connection).
async fn follow(
    bridge: watch::Receiver<Option<String>>,
    token: String,
    log: Arc<Mutex<SseLog>>,
    disconnect: Arc<Notify>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("building the SSE client");
    let mut last: u64 = 0;
    while !stop.is_cancelled() {
        let Some(base) = bridge.borrow().clone() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let request = http
            .get(format!("{base}{SUBSCRIBE}"))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("last-event-id", last.to_string())
            .send();
        // A bridge killed after accepting the connection must not hold up stopping.
        let resp = tokio::select! {
            _ = stop.cancelled() => break,
            resp = request => resp,
        };
        let resp = match resp {
            Ok(resp) if resp.status().as_u16() == 200 => resp,
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status();
                panic!(
                    "SSE subscribe refused: {status} {}",
                    resp.text().await.unwrap_or_default()
                );
            }
            _ => {
                log.lock().unwrap().failed_connects += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let index = {
            let mut log = log.lock().unwrap();
            log.segments.push(Segment {
                resumed_after: last,
                connected_at: Instant::now(),
                events: Vec::new(),
                end: None,
            });
            log.segments.len() - 1
        };
        let mut body = resp.bytes_stream();
        // Not an `SseStream`: that one panics when its connection fails, and this client
        // must live through a bridge `kill -9`.
        let mut parser = SseParser::default();
        let end = loop {
            tokio::select! {
                _ = stop.cancelled() => break "stopped".to_owned(),
                _ = disconnect.notified() => break "dropped by the client".to_owned(),
                chunk = body.next() => match chunk {
                    None => break "ended by the server".to_owned(),
                    Some(Err(e)) => break format!("failed: {e}"),
                    Some(Ok(bytes)) => {
                        let events = parser.feed(&bytes);
                        let at = Instant::now();
                        let mut log = log.lock().unwrap();
                        for event in events {
                            if let Some(seq) = event.seq_if_any() {
                                last = seq;
                            }
                            log.segments[index].events.push((at, event));
                        }
                    }
                },
            }
        };
        log.lock().unwrap().segments[index].end = Some(end);
    }
}
