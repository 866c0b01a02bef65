//! An OTLP/HTTP trace receiver, as a collector would be: it keeps every span a process
//! exports (`POST /v1/traces`, JSON encoding: `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`).

use std::sync::{Arc, Mutex};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One exported span, as the receiver got it.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub links: Vec<String>,
    pub attributes: Value,
}

impl ExportedSpan {
    /// The string value of an attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .as_array()?
            .iter()
            .find(|kv| kv["key"] == key)?["value"]["stringValue"]
            .as_str()
    }
}

type Spans = Arc<Mutex<Vec<ExportedSpan>>>;

/// A receiver on 127.0.0.1 (port 0), serving until dropped.
pub struct OtlpReceiver {
    endpoint: String,
    spans: Spans,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let spans = Spans::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("OTLP receiver");
        });
        OtlpReceiver {
            endpoint,
            spans,
            task,
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for a process exporting to this receiver.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().expect("spans lock").clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(spans): State<Spans>, Json(body): Json<Value>) -> Json<Value> {
    let mut received = Vec::new();
    for resource in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|kv| kv["key"] == "service.name")
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |field: &str| span[field].as_str().unwrap_or_default().to_owned();
                received.push(ExportedSpan {
                    service: service.to_owned(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["spanId"].as_str().map(str::to_owned))
                        .collect(),
                    attributes: span["attributes"].clone(),
                });
            }
        }
    }
    spans.lock().expect("spans lock").extend(received);
    // An ExportTraceServiceResponse with full success.
    Json(json!({}))
}
