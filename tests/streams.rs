//! The listener's stream path (src/http/serve.rs), over raw TCP: a connection whose first
//! request opens the event stream is answered outside hyper — the same router, the head and
//! chunked body written to the socket, `connection: close` — and everything else on the
//! same port is still hyper's, including bytes the listener read ahead.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use uuid::Uuid;

use crate::harness::sse::{SUBSCRIBE, SseEvent, SseParser};
use crate::harness::{EVENT_DEADLINE, TestSystem};

const IO_DEADLINE: Duration = Duration::from_secs(10);

/// A raw HTTP/1.1 response reader: the head, then the body by its framing.
struct Raw {
    io: TcpStream,
    buf: Vec<u8>,
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    /// A new connection to the system.
    async fn connect(sys: &TestSystem) -> Self {
        let url = sys.url("");
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let io = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Raw {
            io,
            buf: Vec::new(),
        }
    }

    /// Read more bytes; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(IO_DEADLINE, self.io.read(&mut chunk))
            .await
            .expect("the server sent nothing for 10 s")
            .expect("reading from the server");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..at].to_vec()).expect("an ASCII line");
                self.buf.drain(..at + 2);
                return line;
            }
            assert!(self.fill().await, "EOF in the middle of a line");
        }
    }

    async fn head(&mut self) -> Head {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line: {status_line}");
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line: {status_line}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return Head { status, headers };
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header line: {line}"));
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "EOF before {n} body bytes");
        }
        self.buf.drain(..n).collect()
    }

    /// The next chunk of a chunked body; None for the last (zero-size) chunk.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let size_line = self.line().await;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("chunk size line: {size_line:?}"));
        let data = self.exact(size).await;
        assert_eq!(self.line().await, "", "a chunk ends with CRLF");
        (size > 0).then_some(data)
    }

    /// True once the server has closed the connection (and sent nothing more).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn stream_request(token: &str) -> String {
    format!(
        "GET {SUBSCRIBE} HTTP/1.1\r\nhost: orderflow\r\naccept: text/event-stream\r\nauthorization: Bearer {token}\r\n\r\n"
    )
}

/// Chunks until an event matching `wanted` arrives; panics after `EVENT_DEADLINE`.
async fn event_where(
    raw: &mut Raw,
    parser: &mut SseParser,
    wanted: impl Fn(&SseEvent) -> bool,
) -> SseEvent {
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "the event did not arrive in time"
        );
        let chunk = raw.chunk().await.expect("the stream ended");
        if let Some(event) = parser.feed(&chunk).into_iter().find(&wanted) {
            return event;
        }
    }
}

async fn connections(sys: &TestSystem, admin: &str) -> u64 {
    let answer = sys.get("/orders/events/stats", Some(admin)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["connections"]["total"]
        .as_u64()
        .expect("connections.total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_on_a_fresh_connection_is_chunked_closes_its_connection_and_ends_at_shutdown()
 {
    let mut sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    let mut raw = Raw::connect(&sys).await;
    // The head in two writes: the listener must wait for all of it.
    let request = stream_request(&admin);
    let (first, rest) = request.split_at(request.len() / 2);
    raw.io.write_all(first.as_bytes()).await.unwrap();
    raw.io.flush().await.unwrap();
    raw.io.write_all(rest.as_bytes()).await.unwrap();

    let head = raw.head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        head.header("connection"),
        Some("close"),
        "served on the stream path, which closes the connection when the stream ends"
    );
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    assert!(head.header("date").is_some(), "a response carries its date");
    assert_eq!(head.header("content-length"), None);

    let mut parser = SseParser::default();
    let order = sys.create_simple_order(&admin).await.to_string();
    let created = event_where(&mut raw, &mut parser, |e| {
        e.kind() == "order.created" && e.order_id().as_deref() == Some(order.as_str())
    })
    .await;
    assert!(created.seq() > 0);
    assert_eq!(connections(&sys, &admin).await, 1);

    // A graceful stop ends the stream with the last chunk, then closes the connection.
    sys.terminate(Duration::from_secs(30)).await;
    while raw.chunk().await.is_some() {}
    assert!(
        raw.closed().await,
        "the connection stays open after the last chunk"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_no_longer_counted() {
    let sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    let mut raw = Raw::connect(&sys).await;
    raw.io
        .write_all(stream_request(&admin).as_bytes())
        .await
        .unwrap();
    assert_eq!(raw.head().await.status, 200);
    assert!(raw.chunk().await.is_some(), "the greeting");
    assert_eq!(connections(&sys, &admin).await, 1);
    drop(raw);
    // Idle: no event will be written to find out; the listener must see the close.
    let deadline = Instant::now() + EVENT_DEADLINE;
    while connections(&sys, &admin).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still counted after {EVENT_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_request_gets_the_json_error_and_its_connection_closes() {
    let sys = TestSystem::start().await;
    let mut raw = Raw::connect(&sys).await;
    raw.io
        .write_all(format!("GET {SUBSCRIBE} HTTP/1.1\r\nhost: orderflow\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = raw.head().await;
    assert_eq!(head.status, 401);
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.header("connection"), Some("close"));
    let length: usize = head
        .header("content-length")
        .expect("an error body has its length")
        .parse()
        .expect("a decimal content-length");
    let body: Value = serde_json::from_slice(&raw.exact(length).await).expect("a JSON error");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        raw.closed().await,
        "the connection stays open after the error"
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_are_served_by_hyper_with_the_bytes_read_ahead() {
    let sys = TestSystem::start().await;
    let admin = sys.token("admin", Uuid::new_v4());
    let mut raw = Raw::connect(&sys).await;
    // Two pipelined requests and then a stream, in one write: the listener reads past the
    // first head and must hand every byte to hyper.
    let pipelined = format!(
        "GET /healthz HTTP/1.1\r\nhost: orderflow\r\n\r\nGET /healthz HTTP/1.1\r\nhost: orderflow\r\n\r\n{}",
        stream_request(&admin)
    );
    raw.io.write_all(pipelined.as_bytes()).await.unwrap();
    for _ in 0..2 {
        let head = raw.head().await;
        assert_eq!(head.status, 200);
        assert_ne!(head.header("connection"), Some("close"), "kept alive");
        let length: usize = head.header("content-length").unwrap().parse().unwrap();
        let body: Value = serde_json::from_slice(&raw.exact(length).await).unwrap();
        assert_eq!(body["status"], "ok");
    }
    // The stream on a connection hyper already serves is hyper's: it works the same.
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let mut parser = SseParser::default();
    let order = sys.create_simple_order(&admin).await.to_string();
    event_where(&mut raw, &mut parser, |e| {
        e.order_id().as_deref() == Some(order.as_str())
    })
    .await;
    sys.stop().await;
}
