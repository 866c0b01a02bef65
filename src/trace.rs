//! W3C Trace Context (`traceparent`) propagation. orderflow runs no tracer of its own; it
//! carries the caller's trace through every hop it makes — the job message, the job row,
//! the outbox row and the published event — so that downstream services can join their
//! spans to the request that caused an event (API.md: events carry `traceparent`).

use axum::http::HeaderMap;

/// The `traceparent` to carry for a request: the caller's trace id and flags with a new
/// parent id (this hop), or a new trace when the caller sent none or an invalid one.
pub fn for_request(headers: &HeaderMap) -> String {
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse);
    let (trace_id, flags) = match incoming {
        Some((trace_id, flags)) => (trace_id.to_owned(), flags.to_owned()),
        None => (uuid::Uuid::new_v4().simple().to_string(), "01".to_owned()),
    };
    format!("00-{trace_id}-{:016x}-{flags}", nonzero_span_id())
}

/// (trace id, flags) of a valid version-00 `traceparent`, else None.
fn parse(value: &str) -> Option<(&str, &str)> {
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
    valid.then_some((trace_id, flags))
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
}
