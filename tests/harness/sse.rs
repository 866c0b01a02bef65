//! The client side of `text/event-stream`: one parser of the framing (fields until a blank
//! line, comments skipped), and a stream reader over an HTTP response that waits for events
//! with deadlines.

use std::{collections::VecDeque, pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use super::EVENT_DEADLINE;

/// The event stream's path.
pub const SUBSCRIBE: &str = "/orders/events/subscribe";

#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {self:?}"))
    }

    /// The event id as the decimal `seq` it must be.
    pub fn seq(&self) -> u64 {
        self.seq_if_any()
            .unwrap_or_else(|| panic!("SSE event without a decimal id: {self:?}"))
    }

    /// The event id as a decimal `seq`, if it is one.
    pub fn seq_if_any(&self) -> Option<u64> {
        self.id.as_deref().and_then(|id| id.parse().ok())
    }

    pub fn kind(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    pub fn order_id(&self) -> Option<String> {
        self.json()["order_id"].as_str().map(str::to_owned)
    }
}

/// `text/event-stream` framing: bytes in, complete events out.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds a chunk of the body; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).expect("SSE stream is UTF-8");
            out.extend(self.line(&line));
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let (id, event, data) = (
            self.id.take(),
            self.event.take(),
            std::mem::take(&mut self.data),
        );
        if data.is_empty() && event.is_none() {
            return None; // a block of only `retry:` / `id:` lines, no event
        }
        Some(SseEvent {
            id,
            event,
            data: data.join("\n"),
        })
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// An open event stream, read with deadlines; panics if the connection fails.
pub struct SseStream {
    body: Body,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
    ended: bool,
}

impl SseStream {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec()))),
            parser: SseParser::default(),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    /// The next event, or None if none arrived within `within` (or the stream ended).
    pub async fn next_event_within(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => panic!("SSE stream failed: {e}"),
                Ok(Some(Ok(chunk))) => self.ready.extend(self.parser.feed(&chunk)),
            }
        }
    }

    /// The next event; panics naming `what` if none arrives within EVENT_DEADLINE.
    pub async fn expect_event(&mut self, what: &str) -> SseEvent {
        match self.next_event_within(EVENT_DEADLINE).await {
            Some(event) => event,
            None if self.ended => panic!("SSE stream ended while waiting for {what}"),
            None => panic!("no SSE event within {EVENT_DEADLINE:?}: expected {what}"),
        }
    }

    /// Events up to and including the first one matching `pred`; panics (showing what
    /// came) if none matches within `within`.
    pub async fn collect_until(
        &mut self,
        mut pred: impl FnMut(&SseEvent) -> bool,
        within: Duration,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event_within(left).await {
                Some(event) => {
                    let done = pred(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                None => panic!(
                    "SSE: the awaited event did not come within {within:?} (stream ended: {}); got {seen:#?}",
                    self.ended
                ),
            }
        }
    }
}
