//! A web shop's page on another origin, in real headless Chromium: listed in
//! `CORS_ORIGINS`, its `EventSource` opens with `?access_token=`, shows changes live, and
//! after the system restarts the browser's own reconnect resumes with `Last-Event-ID` —
//! every event once, in order. A page on an origin not listed is refused.

use axum::response::Html;
use uuid::Uuid;

use crate::harness::TestSystem;
use crate::harness::browser::{Driver, UI_DEADLINE, screenshot_dir};

/// The shop's page: subscribes on load and keeps what it saw in `window.seen`.
const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>shop</title></head>
<body><main><h1>Live orders</h1><ol id="events"></ol><p id="state">connecting</p></main>
<script>
  window.seen = []; window.opens = 0; window.errors = 0;
  const params = new URLSearchParams(location.search);
  const es = new EventSource(params.get("api") + "/orders/events/subscribe?access_token=" + params.get("token"));
  window.es = es;
  es.onopen = () => { window.opens += 1; document.getElementById("state").textContent = "open"; };
  es.onerror = () => { window.errors += 1; document.getElementById("state").textContent = "error " + es.readyState; };
  es.addEventListener("order.created", (e) => {
    window.seen.push(Number(e.lastEventId));
    const li = document.createElement("li");
    li.textContent = e.lastEventId + " " + JSON.parse(e.data).order_id;
    document.getElementById("events").appendChild(li);
  });
</script></body></html>"#;

/// Serve the page on a free port of 127.0.0.1: its origin.
async fn serve_page() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the shop's page server");
    let origin = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/", axum::routing::get(|| async { Html(PAGE) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

/// A port that is free now, for a system that must come back on the same address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_streams_live_and_resumes_after_a_restart_and_others_are_refused() {
    let (shop, stranger) = (serve_page().await, serve_page().await);
    let bind = format!("127.0.0.1:{}", free_port());
    let mut sys = TestSystem::start_with_env(&[
        ("CORS_ORIGINS", shop.as_str()),
        ("BIND", bind.as_str()),
        ("SSE_RETRY_MS", "2000"),
    ])
    .await;
    let admin = sys.token("admin", Uuid::new_v4());
    let api = format!("http://{bind}");
    let driver = Driver::start().await;
    let page = driver.page(1280, 800).await;
    page.goto(&format!("{shop}/?api={api}&token={admin}")).await;
    page.wait_for("the stream open", UI_DEADLINE, "return window.opens >= 1")
        .await;

    sys.create_simple_order(&admin).await;
    page.wait_for(
        "the first event, live",
        UI_DEADLINE,
        "return window.seen.length >= 1",
    )
    .await;

    // The system goes away and comes back on the same address; two orders are created
    // before the browser's reconnect (retry: 2 s), so only a resume can deliver them.
    sys.restart().await;
    sys.create_simple_order(&admin).await;
    sys.create_simple_order(&admin).await;
    page.wait_for(
        "three events after the reconnect",
        UI_DEADLINE,
        "return window.seen.length >= 3",
    )
    .await;
    let seen = page.eval("return window.seen").await;
    let seen: Vec<i64> = serde_json::from_value(seen).expect("event ids");
    assert_eq!(seen.len(), 3, "every event once: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gap: {seen:?}"
    );
    let opens = page.eval("return window.opens").await;
    assert!(
        opens.as_i64().unwrap_or(0) >= 2,
        "the browser reconnected: {opens}"
    );
    page.screenshot(&screenshot_dir("browser_sse"), "listed-origin")
        .await;

    let refused = driver.page(1280, 800).await;
    refused
        .goto(&format!("{stranger}/?api={api}&token={admin}"))
        .await;
    refused
        .wait_for(
            "the stream refused",
            UI_DEADLINE,
            "return window.errors >= 1 && window.es.readyState === 2",
        )
        .await;
    sys.create_simple_order(&admin).await;
    page.wait_for(
        "the fourth event on the listed page",
        UI_DEADLINE,
        "return window.seen.length >= 4",
    )
    .await;
    let leaked = refused
        .eval("return window.seen.length + window.opens")
        .await;
    assert_eq!(leaked.as_i64(), Some(0), "the unlisted origin got a stream");
    refused
        .screenshot(&screenshot_dir("browser_sse"), "unlisted-origin")
        .await;

    refused.close().await;
    page.close().await;
    drop(driver);
    sys.stop().await;
}
