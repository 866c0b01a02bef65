//! One SSE connection: replay what the client missed, then follow its hub mailbox live.
//! The stream is polled by the HTTP connection itself (no task, no channel per
//! connection): while live it only takes events from its mailbox, and it falls back to an
//! asynchronous replay (from the ring, else the outbox) when a client resumes or the hub
//! shows a hole. Its cursor only moves forward, so a client sees every event it may see,
//! in seq order, exactly once.

use super::hub::{Ended, Hub, Listening, Mailbox, Next};
use super::{BridgeState, Filter, Stats};
use crate::domain::Role;
use crate::event::Event;
use crate::http::ApiError;
use crate::store::outbox;
use axum::response::sse::Event as Frame;
use futures::Stream;
use futures::future::BoxFuture;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

const REPLAY_PAGE: i64 = 1000;
/// How long a new connection waits for an idle bridge to bind before it is answered `503`.
const LIVE_WAIT: Duration = Duration::from_secs(5);

/// Open a stream for `filter`, resuming after `resume` (None: from now).
pub(super) async fn open(
    state: &BridgeState,
    filter: Filter,
    resume: Option<i64>,
) -> Result<Connection, ApiError> {
    // A bridge nobody listened to is not bound: binding it and bringing its head up to
    // date takes a few round trips, and the head is where a new connection starts.
    let listening = state.hub.listen();
    if !state.hub.wait_live(LIVE_WAIT).await {
        return Err(ApiError::Unavailable(
            "live events: the bridge cannot reach the broker".into(),
        ));
    }
    // Subscribe before reading anything, so no event slips between replay and live.
    let role = filter.actor.role;
    let (mailbox, head) = state.hub.subscribe(filter);
    let mut conn = Connection {
        ctx: Ctx {
            hub: state.hub.clone(),
            stats: state.stats.clone(),
            pool: state.pool.clone(),
        },
        mailbox,
        _listening: listening,
        role,
        cursor: resume.unwrap_or(head),
        frames: VecDeque::new(),
        replay: None,
        done: false,
    };
    // From here on, dropping `conn` counts the connection as gone.
    state.stats.connected(role);
    conn.frames.push_back(
        Frame::default()
            .retry(Duration::from_millis(state.cfg.sse_retry_ms))
            .comment("orderflow"),
    );
    // Where replay must reach before following live events: the newest event known,
    // whether the hub has seen it yet or not.
    let mut replay_to = head;
    if let Some(after) = resume {
        let mut db = state.pool.acquire().await?;
        let (min, max) = outbox::seq_bounds(&mut db).await?;
        let newest = max.unwrap_or(0).max(head);
        replay_to = newest;
        let oldest_kept = min.unwrap_or(newest + 1);
        if after > newest
            || (after + 1 < oldest_kept && state.hub.range(after, after + 2).is_none())
        {
            // Beyond retention (or from another deployment): say so, and continue from what exists.
            conn.cursor = if after > newest {
                newest
            } else {
                oldest_kept - 1
            };
            let data = serde_json::json!({
                "type": "reset",
                "requested_after": after,
                "resume_after": conn.cursor,
                "message": "the requested position is not available; events after resume_after follow",
            });
            conn.frames.push_back(
                Frame::default()
                    .id(conn.cursor.to_string())
                    .event("reset")
                    .data(data.to_string()),
            );
        }
    }
    // Catch up to the newest event known at connect; later events arrive through the
    // mailbox (and any the hub has not seen yet are filled in when a later one shows the
    // gap).
    let target = replay_to.max(state.hub.head());
    if target > conn.cursor {
        conn.replay = Some(Box::new(Replay::new(&conn.ctx, conn.cursor, target + 1)));
    }
    Ok(conn)
}

/// What a connection needs of the bridge.
struct Ctx {
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    pool: PgPool,
}

/// The body of one SSE response.
pub(super) struct Connection {
    ctx: Ctx,
    mailbox: Arc<Mailbox>,
    /// Keeps the feed bound; dropped after [`Drop`] unsubscribed the mailbox.
    _listening: Listening,
    role: Role,
    /// The seq of the last event this client has had (or may not see).
    cursor: i64,
    /// Frames to send before anything else (the greeting, a reset).
    frames: VecDeque<Frame>,
    /// Events being replayed, before live events resume.
    replay: Option<Box<Replay>>,
    done: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.ctx.hub.unsubscribe(&self.mailbox);
        self.ctx.stats.disconnected(self.role);
    }
}

impl Stream for Connection {
    type Item = Result<Frame, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(frame) = this.frames.pop_front() {
            if this.frames.is_empty() {
                this.frames = VecDeque::new();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(replay) = this.replay.as_mut() {
                match replay.poll_next(cx, &this.ctx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(event))) => {
                        if let Some(frame) = frame(&this.ctx.stats, &this.mailbox.filter, &event) {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                    }
                    Poll::Ready(Ok(None)) => {
                        this.cursor = replay.cursor();
                        this.replay = None;
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(reason = %e, "SSE connection ended: replay failed");
                        this.done = true;
                    }
                }
                continue;
            }
            let (prev, event) = match this.mailbox.poll_peek(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Next::Event(prev, event)) => (prev, event),
                Poll::Ready(Next::Ended(why)) => {
                    match why {
                        Ended::Slow => tracing::debug!(
                            "SSE connection ended: client too slow (it resumes with Last-Event-ID)"
                        ),
                        Ended::Closed => tracing::debug!("SSE connection ended: shutting down"),
                    }
                    this.done = true;
                    continue;
                }
            };
            if event.seq <= this.cursor {
                this.mailbox.pop();
                continue;
            }
            // Events between the cursor and `prev` were offered to this connection (those
            // it may see are ahead in the mailbox); those between `prev` and this one
            // never went through the hub: fill them in first.
            let after = this.cursor.max(prev);
            if event.seq > after + 1 {
                this.replay = Some(Box::new(Replay::new(&this.ctx, after, event.seq)));
                this.cursor = after;
                continue;
            }
            this.mailbox.pop();
            this.cursor = event.seq;
            // Exported, a live event's send is a span in the trace of the change behind it
            // (replays belong to a reconnect, not to that change).
            let _send = crate::telemetry::hop(|| {
                let span = tracing::info_span!(
                    parent: None,
                    "sse send",
                    otel.kind = "producer",
                    seq = event.seq,
                    event_type = %event.event_type,
                );
                crate::trace::continue_from(&span, event.traceparent.as_deref());
                span
            });
            if let Some(frame) = frame(&this.ctx.stats, &this.mailbox.filter, &event) {
                return Poll::Ready(Some(Ok(frame)));
            }
        }
    }
}

/// The frame for `e` if the connection may see it (the hub offers only those, replays
/// offer everything).
fn frame(stats: &Stats, filter: &Filter, e: &Event) -> Option<Frame> {
    if !filter.allows(e) {
        return None;
    }
    stats.delivered();
    Some(
        Frame::default()
            .id(e.seq.to_string())
            .event(e.event_type.as_str())
            .data(e.data.as_str()),
    )
}

/// Every event with `after < seq < before`, from the ring when it covers the range, else
/// from the outbox a page at a time. Replayed events wait for the client (the stream is
/// only polled when the connection can take more).
struct Replay {
    after: i64,
    before: i64,
    events: std::vec::IntoIter<Arc<Event>>,
    /// The next page from the outbox; None once the ring served the range, or the outbox
    /// has no more.
    page: Option<BoxFuture<'static, sqlx::Result<Vec<Event>>>>,
    from_db: bool,
}

impl Replay {
    fn new(ctx: &Ctx, after: i64, before: i64) -> Replay {
        let mut replay = Replay {
            after,
            before,
            events: Vec::new().into_iter(),
            page: None,
            from_db: false,
        };
        match ctx.hub.range(after, before) {
            Some(events) => {
                ctx.stats.replayed(true, events.len());
                replay.events = events.into_iter();
            }
            None => {
                replay.from_db = true;
                replay.page = Some(fetch(ctx.pool.clone(), after, before));
            }
        }
        replay
    }

    /// Where the cursor stands once the replay is done.
    fn cursor(&self) -> i64 {
        self.after.max(self.before - 1)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &Ctx,
    ) -> Poll<sqlx::Result<Option<Arc<Event>>>> {
        loop {
            if let Some(event) = self.events.next() {
                if self.from_db {
                    self.after = event.seq;
                }
                return Poll::Ready(Ok(Some(event)));
            }
            let Some(page) = self.page.as_mut() else {
                if !self.from_db {
                    self.after = self.before - 1;
                }
                return Poll::Ready(Ok(None));
            };
            let page = std::task::ready!(page.as_mut().poll(cx))?;
            if page.is_empty() {
                self.page = None;
                continue;
            }
            ctx.stats.replayed(false, page.len());
            let last = page.last().map_or(self.after, |e| e.seq);
            self.page = Some(fetch(ctx.pool.clone(), last, self.before));
            self.events = page
                .into_iter()
                .map(Arc::new)
                .collect::<Vec<_>>()
                .into_iter();
        }
    }
}

fn fetch(pool: PgPool, after: i64, before: i64) -> BoxFuture<'static, sqlx::Result<Vec<Event>>> {
    Box::pin(async move {
        let mut conn = pool.acquire().await?;
        outbox::between(&mut conn, after, Some(before), REPLAY_PAGE).await
    })
}
