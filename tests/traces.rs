//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, one change is one trace —
//! the caller's — from the HTTP request through the job publish, the worker's apply, the
//! relay's publish and the SSE send; and the `traceparent` the change carries (job row,
//! events) is the ingress request span's own context.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::harness::{
    EVENT_DEADLINE, TestSystem, otlp::ExportedSpan, otlp::OtlpReceiver, uuid_of, wait,
};

/// The caller's trace: its id, and the caller's span (the parent of ours).
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Each hop's span, by its name: the ingress request, the job publish, the worker's apply,
/// the relay's publish and the SSE send.
const REQUEST: &str = "POST /orders/{id}/change-status";
const APPLY: &str = "apply job";
const EVENT_PUBLISH: &str = "publish event";
const SSE_SEND: &str = "sse send";

fn is_job_publish(span: &ExportedSpan) -> bool {
    span.name.starts_with("publish ") && span.name.ends_with("orderflow.jobs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_is_one_trace_continuing_the_callers_traceparent() {
    let receiver = OtlpReceiver::start().await;
    let sys = TestSystem::start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // Export within a tenth of a second rather than the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let (customer, admin) = (Uuid::new_v4(), Uuid::new_v4());
    let (ctok, atok) = (sys.token("customer", customer), sys.token("admin", admin));
    let order = sys.create_simple_order(&ctok).await;
    let mut stream = sys
        .sse_connect("/orders/events/subscribe", Some(&ctok), None)
        .await;

    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let answer = sys
        .change_status(
            &atok,
            order,
            &json!({"action": "mark_paid", "reason": "wire transfer received"}),
            &[("traceparent", &caller)],
        )
        .await
        .expect_status(202, "change-status with a traceparent");
    let job_id = uuid_of(&answer.body, "job_id");
    stream
        .collect_until(|e| e.kind() == "order.status_changed", EVENT_DEADLINE)
        .await;

    // Every hop's span arrives, in the caller's trace.
    let spans = wait::expect_within(
        EVENT_DEADLINE,
        "the spans of every hop in the caller's trace",
        || {
            let spans: Vec<ExportedSpan> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == CALLER_TRACE)
                .collect();
            let has = |name: &str| spans.iter().any(|s| s.name == name);
            let missing: Vec<&str> = [REQUEST, APPLY, EVENT_PUBLISH, SSE_SEND]
                .into_iter()
                .filter(|n| !has(n))
                .chain((!spans.iter().any(is_job_publish)).then_some("publish …orderflow.jobs"))
                .collect();
            let result = if missing.is_empty() {
                Ok(spans)
            } else {
                let names: Vec<String> = receiver
                    .spans()
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.trace_id))
                    .collect();
                Err(format!("missing {missing:?}; received {names:?}"))
            };
            std::future::ready(result)
        },
    )
    .await;
    let one = |name: &str| -> &ExportedSpan {
        let named: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(named.len(), 1, "one `{name}` span in the trace: {named:#?}");
        named[0]
    };

    // The request span is the caller's child, and what the change carries is its context.
    let request = one(REQUEST);
    assert_eq!(request.parent_span_id, CALLER_SPAN, "{request:#?}");
    assert_eq!(request.service, "orderflow", "`orderflow all` names itself");
    let carried = format!("00-{CALLER_TRACE}-{}-01", request.span_id);
    let stored: Option<String> = sqlx::query_scalar("select traceparent from jobs where id = $1")
        .bind(job_id)
        .fetch_one(sys.db())
        .await
        .expect("reading the job's traceparent");
    assert_eq!(
        stored.as_deref(),
        Some(carried.as_str()),
        "the job carries the request span's context"
    );

    // Job publish within the request; the later hops are children of the carried context.
    let publish_job = spans
        .iter()
        .find(|s| is_job_publish(s))
        .expect("found above");
    assert!(
        ancestors(&spans, publish_job).contains(&request.span_id.as_str()),
        "the job publish happens within the request: {publish_job:#?}"
    );
    for name in [APPLY, EVENT_PUBLISH, SSE_SEND] {
        let span = one(name);
        assert_eq!(
            span.parent_span_id, request.span_id,
            "`{name}` continues the carried traceparent: {span:#?}"
        );
    }
    let apply = one(APPLY);
    assert_eq!(apply.attribute("job_id"), Some(job_id.to_string().as_str()));
    assert_eq!(apply.attribute("outcome"), Some("succeeded"));
    assert_eq!(
        apply.links.len(),
        1,
        "the job's span links to its batch's span: {apply:#?}"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_buffered_are_sent_when_the_process_stops() {
    let receiver = OtlpReceiver::start().await;
    let mut sys = TestSystem::start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // No scheduled export while the test runs: only the shutdown flush sends them.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ])
    .await;
    let admin = sys.token("admin", Uuid::new_v4());
    let order = sys.create_simple_order(&admin).await;
    sys.apply(&admin, order, &json!({"action": "mark_paid"}))
        .await;
    sys.wait_outbox_drained(EVENT_DEADLINE).await;
    assert!(
        receiver.spans().is_empty(),
        "nothing is exported before the schedule or the shutdown"
    );

    sys.terminate(Duration::from_secs(30)).await;
    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    for name in [REQUEST, APPLY, EVENT_PUBLISH] {
        assert!(
            names.iter().any(|n| n == name),
            "`{name}` flushed at shutdown; got {names:?}"
        );
    }
    sys.stop().await;
}

/// The span ids above `span` in its trace, nearest first.
fn ancestors<'a>(spans: &'a [ExportedSpan], span: &'a ExportedSpan) -> Vec<&'a str> {
    let mut up = Vec::new();
    let mut parent = span.parent_span_id.as_str();
    while !parent.is_empty() && !up.contains(&parent) {
        up.push(parent);
        parent = spans
            .iter()
            .find(|s| s.span_id == parent)
            .map_or("", |s| s.parent_span_id.as_str());
    }
    up
}
