//! Every exchange and queue orderflow uses, with the namespace prefix, declared idempotently.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

/// Broker names under one namespace (`ORDERFLOW_NAMESPACE`; empty gives API.md's names).
#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
    /// Topic exchange of published order events.
    pub events: String,
    /// Work queue of change-status jobs.
    pub jobs: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Names {
            namespace: namespace.to_owned(),
            events: format!("{namespace}orderflow.events"),
            jobs: format!("{namespace}orderflow.jobs"),
        }
    }

    /// The exclusive queue of one SSE bridge instance.
    pub fn sse_queue(&self, instance: &str) -> String {
        format!("{}orderflow.sse.{instance}", self.namespace)
    }
}

/// Declare the shared topology: the events exchange and the job queue. Safe to call from
/// every process at every start.
pub async fn declare(channel: &Channel, names: &Names) -> lapin::Result<()> {
    channel
        .exchange_declare(
            names.events.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.jobs.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}
