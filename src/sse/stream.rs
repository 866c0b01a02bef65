//! One SSE connection: replay what the client missed, then follow the hub live. The
//! stream's cursor only moves forward one seq at a time, filling any hole from the ring or
//! the outbox, so a client sees every event it may see, in seq order, exactly once.

use super::{BridgeState, Filter};
use crate::event::Event;
use crate::http::ApiError;
use crate::store::outbox;
use axum::response::sse::Event as Frame;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

type Tx = mpsc::Sender<Result<Frame, Infallible>>;

const REPLAY_PAGE: i64 = 1000;

/// Open a stream for `filter`, resuming after `resume` (None: from now).
pub(super) async fn open(
    state: BridgeState,
    filter: Filter,
    resume: Option<i64>,
) -> Result<ReceiverStream<Result<Frame, Infallible>>, ApiError> {
    // Subscribe before reading anything, so no event slips between replay and live.
    let (rx, head) = state.hub.subscribe();
    let (tx, out) = mpsc::channel(state.cfg.sse_client_buffer.max(1));
    let hello = Frame::default()
        .retry(Duration::from_millis(state.cfg.sse_retry_ms))
        .comment("orderflow");
    let _ = tx.try_send(Ok(hello));

    let mut cursor = resume.unwrap_or(head);
    // Where replay must reach before following live events: the newest event known,
    // whether the hub has seen it yet or not.
    let mut replay_to = head;
    if let Some(after) = resume {
        let mut conn = state.pool.acquire().await?;
        let (min, max) = outbox::seq_bounds(&mut conn).await?;
        let newest = max.unwrap_or(0).max(head);
        replay_to = newest;
        let oldest_kept = min.unwrap_or(newest + 1);
        if after > newest
            || (after + 1 < oldest_kept && state.hub.range(after, after + 2).is_none())
        {
            // Beyond retention (or from another deployment): say so, and continue from what exists.
            cursor = if after > newest {
                newest
            } else {
                oldest_kept - 1
            };
            let data = serde_json::json!({
                "type": "reset",
                "requested_after": after,
                "resume_after": cursor,
                "message": "the requested position is not available; events after resume_after follow",
            });
            let reset = Frame::default()
                .id(cursor.to_string())
                .event("reset")
                .data(data.to_string());
            let _ = tx.send(Ok(reset)).await;
        }
    }

    let role = filter.actor.role;
    state.stats.connected(role);
    tokio::spawn(async move {
        let _guard = ConnectionGuard {
            state: state.clone(),
            role,
        };
        if let Err(e) = pump(&state, &filter, cursor, replay_to, rx, &tx).await {
            tracing::debug!(reason = %e, "SSE connection ended");
        }
    });
    Ok(ReceiverStream::new(out))
}

struct ConnectionGuard {
    state: BridgeState,
    role: crate::domain::Role,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.stats.disconnected(self.role);
    }
}

/// Why a connection's pump stopped.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("client went away")]
    Gone,
    #[error("client too slow; disconnected (it resumes with Last-Event-ID)")]
    Slow,
    #[error("bridge shutting down")]
    Shutdown,
    #[error("replay failed: {0}")]
    Replay(#[from] sqlx::Error),
}

async fn pump(
    state: &BridgeState,
    filter: &Filter,
    mut cursor: i64,
    replay_to: i64,
    mut rx: broadcast::Receiver<Arc<Event>>,
    tx: &Tx,
) -> Result<(), End> {
    // Catch up to the newest event known at connect; later events arrive through `rx`
    // (and any the hub has not seen yet are filled in when a later one shows the gap).
    let target = replay_to.max(state.hub.head());
    if target > cursor {
        cursor = replay(state, filter, cursor, target + 1, tx).await?;
    }
    loop {
        let received = tokio::select! {
            _ = tx.closed() => return Err(End::Gone),
            _ = state.shutdown.cancelled() => return Err(End::Shutdown),
            r = rx.recv() => r,
        };
        let event = match received {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                state.stats.slow_disconnect();
                return Err(End::Slow);
            }
            Err(broadcast::error::RecvError::Closed) => return Err(End::Shutdown),
        };
        if event.seq <= cursor {
            continue;
        }
        if event.seq > cursor + 1 {
            replay(state, filter, cursor, event.seq, tx).await?;
        }
        deliver(state, filter, &event, tx, false).await?;
        cursor = event.seq;
    }
}

/// Send every event with `after < seq < before`, from the ring when it covers the range,
/// else from the outbox. Returns the new cursor.
async fn replay(
    state: &BridgeState,
    filter: &Filter,
    mut after: i64,
    before: i64,
    tx: &Tx,
) -> Result<i64, End> {
    if let Some(events) = state.hub.range(after, before) {
        state.stats.replayed(true, events.len());
        for e in events {
            deliver(state, filter, &e, tx, true).await?;
        }
        return Ok(before - 1);
    }
    let mut conn = state.pool.acquire().await?;
    loop {
        let page = outbox::replay(&mut conn, after, Some(before), REPLAY_PAGE).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        state.stats.replayed(false, page.len());
        for e in &page {
            deliver(state, filter, e, tx, true).await?;
        }
        after = last;
    }
    Ok(after.max(before - 1))
}

/// Send one event if the connection may see it. Replays wait for room in the buffer; live
/// events do not: a full buffer means the client cannot keep up.
async fn deliver(
    state: &BridgeState,
    filter: &Filter,
    e: &Event,
    tx: &Tx,
    replaying: bool,
) -> Result<(), End> {
    if !filter.allows(e) {
        return Ok(());
    }
    let frame = Frame::default()
        .id(e.seq.to_string())
        .event(e.event_type.as_str())
        .data(e.data.as_str());
    if replaying {
        tx.send(Ok(frame)).await.map_err(|_| End::Gone)?;
    } else {
        // Exported, a live event's send is a span in the trace of the change behind it
        // (replays belong to a reconnect, not to that change).
        let _send = crate::telemetry::hop(|| {
            let span = tracing::info_span!(
                parent: None,
                "sse send",
                otel.kind = "producer",
                seq = e.seq,
                event_type = %e.event_type,
            );
            crate::trace::continue_from(&span, e.traceparent.as_deref());
            span
        });
        tx.try_send(Ok(frame)).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => {
                state.stats.slow_disconnect();
                End::Slow
            }
            mpsc::error::TrySendError::Closed(_) => End::Gone,
        })?;
    }
    state.stats.delivered();
    Ok(())
}
