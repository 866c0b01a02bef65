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

/// Commit `n` events (`bulk.progress`) in one transaction, as any writer does; returns
/// their seqs.
pub async fn write_events(pool: &PgPool, n: usize) -> Vec<i64> {
    write_events_then(pool, n, true).await
}

/// Write `n` events in one transaction, then commit it or roll it back; returns the seqs
/// they had in it.
pub async fn write_events_then(pool: &PgPool, n: usize, commit: bool) -> Vec<i64> {
    let events: Vec<_> = (0..n)
        .map(|_| {
            orderflow::event::NewEvent::bulk_progress(uuid::Uuid::new_v4(), serde_json::json!({}))
        })
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    orderflow::store::changes::write(
        &mut tx,
        &orderflow::store::changes::Changes {
            at: chrono::Utc::now(),
            events: &events,
            ..Default::default()
        },
    )
    .await
    .expect("writing events");
    let seqs = sqlx::query_scalar("select seq from outbox order by id desc limit $1")
        .bind(n as i64)
        .fetch_all(&mut *tx)
        .await
        .expect("their seqs");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    let mut seqs: Vec<i64> = seqs;
    seqs.sort_unstable();
    seqs
}
