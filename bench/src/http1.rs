//! The load generator's HTTP client: HTTP/1.1 over kept-alive connections to one address,
//! built on hyper's connection API, and nothing else.
//!
//! On one box the generator shares the cores it loads, so what it spends per request is
//! taken from the system under test, and when it is short of CPU it sends late — which
//! `orderflow-bench changes --overload` counts as latency (`sent late`). A general client
//! (reqwest) resolves the URL, looks up its pool by host and runs its redirect and timeout
//! layers on every request; this one takes an idle connection off a stack, writes the
//! request and reads the answer.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::net::TcpStream;

/// A pool of HTTP/1.1 connections to one server: as many as there are requests in flight
/// at once, each reused once its answer is read.
pub struct Client {
    addr: SocketAddr,
    host: hyper::header::HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// An answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Client {
    /// A client for the server at `base` (`http://host:port`, an IP address).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(base)?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("no host in {base}"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| anyhow::anyhow!("no port in {base}"))?;
        let addr: SocketAddr = format!("{host}:{port}").parse()?;
        Ok(Client {
            addr,
            host: hyper::header::HeaderValue::from_str(&addr.to_string())?,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Send `request` (its URI is the path; `Host` is added) and read the whole answer.
    pub async fn send(&self, mut request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        request
            .headers_mut()
            .insert(hyper::header::HOST, self.host.clone());
        let mut sender = self.connection().await?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        // Reusable once its answer is read, unless either side is closing it.
        let keep = !parts
            .headers
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if keep && !sender.is_closed() {
            self.idle.lock().expect("idle connections").push(sender);
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// An idle connection that is still open, or a new one.
    async fn connection(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        loop {
            let Some(mut sender) = self.idle.lock().expect("idle connections").pop() else {
                break;
            };
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server or the client closes the connection; either is fine.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers every request on a connection with `answer`, and counts the
    /// connections it accepted.
    async fn server(answer: &'static str) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (accepted, count) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.send(()).expect("counted");
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    // Each request here fits one read and has no body.
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (base, count)
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/ping")
            .body(Full::new(Bytes::new()))
            .expect("a request")
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (base, mut connections) =
            server("HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\nretry-after: 1\r\n\r\nok").await;
        let client = Client::new(&base).expect("a client");
        for _ in 0..3 {
            let answer = client.send(get()).await.expect("an answer");
            assert_eq!(answer.status, StatusCode::ACCEPTED);
            assert_eq!(&answer.body[..], b"ok");
            assert!(answer.headers.contains_key(hyper::header::RETRY_AFTER));
        }
        connections.close();
        let mut opened = 0;
        while connections.recv().await.is_some() {
            opened += 1;
        }
        assert_eq!(
            opened, 1,
            "three requests, one after another, on one connection"
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_not_reused() {
        let (base, mut connections) = server(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let client = Client::new(&base).expect("a client");
        for _ in 0..2 {
            let answer = client.send(get()).await.expect("an answer");
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        connections.close();
        let mut opened = 0;
        while connections.recv().await.is_some() {
            opened += 1;
        }
        assert_eq!(opened, 2, "a new connection after `connection: close`");
    }
}
