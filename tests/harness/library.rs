//! The only place the tests call the orderflow library directly: everything else observes
//! the real processes from outside. When the library's API moves, this file follows it.

use sqlx::PgPool;

/// The outbox's published cursor: the newest seq the broker has confirmed.
pub async fn published_seq(pool: &PgPool) -> i64 {
    let mut conn = pool.acquire().await.expect("a connection");
    orderflow::store::outbox::published_seq(&mut conn)
        .await
        .expect("the published cursor")
}

/// The seq a freshly started bridge's hub follows from, after priming on `pool`.
pub async fn primed_bridge_head(pool: &PgPool) -> i64 {
    let state = orderflow::sse::BridgeState::new(
        orderflow::auth::Keys::new("unused"),
        pool.clone(),
        orderflow::config::BridgeConfig {
            sse_ring_capacity: 16,
            sse_client_buffer: 16,
            sse_keepalive_secs: 15,
            sse_retry_ms: 1_000,
            sse_idle_unbind_secs: 30,
        },
        tokio_util::sync::CancellationToken::new(),
    );
    orderflow::sse::prime(&state).await.expect("priming");
    state.hub.head()
}
