//! Cross-origin access for the origins in `CORS_ORIGINS` only: preflights answered (not
//! 405), the CORS headers on REST and SSE answers for a listed origin, none for another.

use reqwest::Method;
use uuid::Uuid;

use crate::harness::{TestSystem, sse::SUBSCRIBE};

const SHOP: &str = "http://127.0.0.1:18301";
const STRANGER: &str = "http://evil.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_get_cors_headers_and_others_none() {
    let sys =
        TestSystem::start_with_env(&[("CORS_ORIGINS", &format!("{SHOP},http://localhost:3000"))])
            .await;
    let admin = sys.token("admin", Uuid::new_v4());

    let preflight = |origin: &str| {
        sys.request(Method::OPTIONS, "/orders", None)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key,traceparent",
            )
    };
    let answer = sys.send(preflight(SHOP), "preflight from the shop").await;
    assert!(
        answer.status.is_success(),
        "preflight: {} {}",
        answer.status,
        answer.body
    );
    assert_eq!(answer.header("access-control-allow-origin"), Some(SHOP));
    let allowed = answer
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_lowercase();
    for h in [
        "authorization",
        "content-type",
        "idempotency-key",
        "if-match",
        "prefer",
        "traceparent",
        "last-event-id",
    ] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    let stranger = sys
        .send(preflight(STRANGER), "preflight from a stranger")
        .await;
    assert_eq!(
        stranger.header("access-control-allow-origin"),
        None,
        "{:?}",
        stranger.headers
    );

    let rest = sys
        .send(
            sys.request(Method::GET, "/orders", Some(&admin))
                .header("origin", SHOP),
            "GET /orders",
        )
        .await
        .expect_status(200, "GET /orders from the shop");
    assert_eq!(rest.header("access-control-allow-origin"), Some(SHOP));
    let exposed = rest
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_lowercase();
    for h in ["location", "etag", "retry-after"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }

    let path = format!("{SUBSCRIBE}?access_token={admin}");
    let sse = sys
        .request(Method::GET, &path, None)
        .header("origin", SHOP)
        .send()
        .await
        .expect("opening the stream");
    assert_eq!(sse.status(), 200);
    let header = |name: &str| {
        sse.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("access-control-allow-origin").as_deref(), Some(SHOP));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    drop(sse);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_origins_no_origin_is_allowed() {
    let sys = TestSystem::start().await;
    let answer = sys
        .send(
            sys.request(Method::OPTIONS, "/orders", None)
                .header("origin", SHOP)
                .header("access-control-request-method", "POST"),
            "preflight",
        )
        .await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "{:?}",
        answer.headers
    );
    sys.stop().await;
}
