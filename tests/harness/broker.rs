//! The system's RabbitMQ namespace as a downstream service and an operator see it: consume
//! the events exchange, look into queues, and publish job messages the way the ingress (or a
//! buggy publisher) does.

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{EVENT_DEADLINE, wait};

/// One sandbox's namespace on the broker.
#[derive(Clone)]
pub struct Broker {
    pub amqp_url: String,
    /// Prefix of every exchange and queue name of the system, e.g. `t-1a2b3c4d.`.
    pub ns: String,
}

impl Broker {
    /// The full name of the namespace's queue or exchange `name` (e.g. `orderflow.jobs.dead`).
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.ns)
    }

    pub fn jobs_queue(&self) -> String {
        self.name("orderflow.jobs")
    }

    pub fn events_exchange(&self) -> String {
        self.name("orderflow.events")
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting to RabbitMQ at {} (TEST_AMQP_URL): {e}",
                    self.amqp_url
                )
            })
    }

    /// A downstream consumer: a server-named exclusive queue bound to the events exchange
    /// with `binding_key`. Bind only after the system is up (it declares the exchange).
    pub async fn downstream_queue(&self, binding_key: &str) -> Downstream {
        let conn = self.connect().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = self.bound_queue(&channel, "", options, binding_key).await;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "orderflow-test-downstream".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consuming the downstream queue");
        Downstream {
            _conn: conn,
            _channel: channel,
            consumer,
            queue,
        }
    }

    /// Declares the durable queue `queue` (it outlives a broker restart with its messages)
    /// bound to the events exchange with `binding_key`.
    pub async fn durable_downstream_queue(&self, queue: &str, binding_key: &str) {
        let conn = self.connect().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.bound_queue(&channel, queue, options, binding_key)
            .await;
        let _ = conn.close(200, "OK".into()).await;
    }

    /// Declares `queue` (server-named if empty) and binds it; returns its name.
    async fn bound_queue(
        &self,
        channel: &Channel,
        queue: &str,
        options: QueueDeclareOptions,
        binding_key: &str,
    ) -> String {
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("declaring the downstream queue {queue:?}: {e}"));
        let queue = declared.name().as_str().to_owned();
        let exchange = self.events_exchange();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| {
                panic!("binding a queue to {exchange} (declared before the system was up?): {e}")
            });
        queue
    }

    /// How many messages are ready in `queue` (passive declare: the queue must exist).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        self.queue_counts(queue).await.0
    }

    /// (messages ready, consumers) of `queue` (passive declare: the queue must exist).
    pub async fn queue_counts(&self, queue: &str) -> (u32, u32) {
        let conn = self.connect().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        let _ = conn.close(200, "OK".into()).await;
        (declared.message_count(), declared.consumer_count())
    }

    /// Takes (and acks) the next message of `queue`, polling with basic.get until `within`.
    pub async fn take_message_within(&self, queue: &str, within: Duration) -> Option<Delivery> {
        let conn = self.connect().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        let taken = wait::poll(within, || async {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"));
            got.map(|message| message.delivery).ok_or_else(String::new)
        })
        .await
        .ok();
        let _ = conn.close(200, "OK".into()).await;
        taken
    }

    /// Publishes a job message as the ingress does (default exchange, routing key = the
    /// jobs queue, message_id = job id, persistent), and waits for the broker's confirm.
    pub async fn publish_job_message(&self, job_id: Uuid) {
        let body = json!({ "job_id": job_id }).to_string();
        let properties = BasicProperties::default()
            .with_message_id(job_id.to_string().into())
            .with_content_type("application/json".into());
        self.publish_to_jobs_queue(body.as_bytes(), properties)
            .await;
    }

    /// Publishes raw bytes to the jobs queue and waits for the confirm, as a buggy or
    /// hostile publisher would.
    pub async fn publish_raw_job_message(&self, body: &[u8]) {
        self.publish_to_jobs_queue(body, BasicProperties::default())
            .await;
    }

    async fn publish_to_jobs_queue(&self, body: &[u8], properties: BasicProperties) {
        let conn = self.connect().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("enabling publisher confirms");
        let confirm = channel
            .basic_publish(
                "".into(),
                self.jobs_queue().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publishing a job message")
            .await
            .expect("waiting for the publisher confirm");
        assert!(confirm.is_ack(), "the broker did not ack the job message");
        assert!(
            confirm.take_message().is_none(),
            "the job message was returned: no queue {} bound to the default exchange",
            self.jobs_queue()
        );
        let _ = conn.close(200, "OK".into()).await;
    }
}

/// A consumer of a downstream queue (auto-ack).
pub struct Downstream {
    _conn: Connection,
    _channel: Channel,
    consumer: Consumer,
    queue: String,
}

impl Downstream {
    /// The next delivery; panics naming `what` if none arrives within EVENT_DEADLINE.
    pub async fn expect_next(&mut self, what: &str) -> Delivery {
        match tokio::time::timeout(EVENT_DEADLINE, self.consumer.next()).await {
            Err(_) => panic!("no downstream message within {EVENT_DEADLINE:?}: expected {what}"),
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(e))) => panic!("downstream consumer on {} failed: {e}", self.queue),
            Ok(None) => panic!("downstream consumer on {} was closed", self.queue),
        }
    }
}

pub fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
}

pub fn message_json(delivery: &Delivery) -> Value {
    serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
        panic!(
            "downstream body is not JSON ({e}): {}",
            String::from_utf8_lossy(&delivery.data)
        )
    })
}

pub fn message_header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}
