//! W3C Trace Context (`traceparent`) propagation. Every hop a change makes carries the
//! caller's trace — the job message, the job row, the outbox row and the published event —
//! so that downstream services can join their spans to the request that caused an event
//! (API.md: events carry `traceparent`). When spans are exported (`crate::telemetry`),
//! the carried `traceparent` is the ingress request span's own context, and the later
//! hops' spans are made children of the one they read back.

use axum::http::{HeaderMap, Request, Response};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use std::time::Duration;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` to carry for a request: the caller's trace id and flags with a new
/// parent id (this hop), or a new trace when the caller sent none or an invalid one. With
/// spans exported, that is the context of the request's span ([`request_span`]).
pub fn for_request(headers: &HeaderMap) -> String {
    if let Some(current) = of_span(&Span::current()) {
        return current;
    }
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse);
    let (trace_id, flags) = match incoming {
        Some(p) => (p.trace_id.to_owned(), p.flags.to_owned()),
        None => (uuid::Uuid::new_v4().simple().to_string(), "01".to_owned()),
    };
    format!("00-{trace_id}-{:016x}-{flags}", nonzero_span_id())
}

/// The `traceparent` of an exported span; None when spans are not exported.
fn of_span(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The ingress's span for one HTTP request (used when spans are exported): a server span
/// named for the route template, child of the caller's `traceparent` when it sent a
/// valid one.
pub fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{} {route}", request.method()),
        None => request.method().to_string(),
    };
    let span = tracing::info_span!(
        parent: None,
        "HTTP request",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    continue_from(&span, incoming);
    span
}

/// Record the response's status on the [`request_span`].
pub fn record_status<B>(response: &Response<B>, _latency: Duration, span: &Span) {
    span.record("http.response.status_code", response.status().as_u16());
}

/// Make `span` (not yet entered) a child of the hop that carried `traceparent`: the request
/// behind a job, an outbox row or an event. A missing or invalid one leaves it as it is.
pub fn continue_from(span: &Span, traceparent: Option<&str>) {
    let Some(p) = traceparent.and_then(parse) else {
        return;
    };
    let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(p.trace_id),
        SpanId::from_hex(p.parent_id),
        u8::from_str_radix(p.flags, 16),
    ) else {
        return;
    };
    let remote = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    // Fails only for a span no tracer sees (tracing off, or filtered out): nothing to join.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// A valid version-00 `traceparent`, in parts.
struct Parsed<'a> {
    trace_id: &'a str,
    parent_id: &'a str,
    flags: &'a str,
}

fn parse(value: &str) -> Option<Parsed<'_>> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.next().is_none()
        && version == "00"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then_some(Parsed {
        trace_id,
        parent_id,
        flags,
    })
}

fn nonzero_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", value.parse().unwrap());
        h
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_flags_with_a_new_parent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = for_request(&headers(incoming));
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"), "{out}");
        assert_ne!(out, incoming);
        assert!(parse(&out).is_some(), "{out}");
    }

    #[test]
    fn a_missing_or_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let out = for_request(&headers(bad));
            assert!(parse(&out).is_some(), "{bad:?} -> {out}");
            assert!(
                !out.contains("4bf92f3577b34da6"),
                "{bad:?} kept its trace: {out}"
            );
        }
        assert!(parse(&for_request(&HeaderMap::new())).is_some());
    }

    #[test]
    fn with_a_tracer_the_request_span_is_carried_and_later_hops_continue_it() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
            let request = Request::builder()
                .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap();
            let span = request_span(&request);
            let carried = span.in_scope(|| for_request(request.headers()));
            let p = parse(&carried).expect("a valid traceparent");
            assert_eq!((p.trace_id, p.flags), (trace_id, "01"), "{carried}");
            assert_ne!(p.parent_id, "00f067aa0ba902b7", "{carried}");
            assert_eq!(of_span(&span).as_deref(), Some(carried.as_str()));

            let hop = tracing::info_span!(parent: None, "hop");
            continue_from(&hop, Some(&carried));
            let hop = of_span(&hop).expect("the hop's span is exported");
            assert!(hop.starts_with(&format!("00-{trace_id}-")), "{hop}");
        });
    }
}
