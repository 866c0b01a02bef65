//! The HTTP listener: hyper serves every connection, except one whose first request opens
//! an endless stream (the SSE route). That request goes through the same router — auth,
//! CORS, limits, metrics, traces: nothing is bypassed — and only its response is written
//! here, straight to the socket, with chunked framing and `connection: close`.
//!
//! Why: an idle SSE connection held by hyper keeps its 8 KiB read buffer, a second read
//! buffer it allocates to watch for the client closing (the first is still shared with
//! the request's headers), its 8 KiB write buffer and its connection state — about
//! 17 KiB resident per connection at 10,000 connections (`orderflow-bench sse`). Served
//! here, an idle stream holds its task, its socket and its response body; the buffer its
//! request was read into is freed before the first event is written. Everything that is
//! not a stream, and any request this module is not sure about (a body, an upgrade,
//! HTTP/1.0, a head it cannot parse), is handed to hyper together with the bytes read so
//! far, so hyper answers it exactly as it would have.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{self, HeaderName, HeaderValue, Method, Request, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The largest request head read here; a longer one is hyper's to answer (or refuse).
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a stream request may have here (hyper's own limit is 100).
const MAX_HEADERS: usize = 64;
/// A stream whose client takes nothing for this long is closed: its mailbox has long
/// been cut off as slow by then, and it resumes with `Last-Event-ID`.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` until `shutdown`, then let every connection finish what it
/// has in hand (hyper's graceful shutdown; streams end when their source closes).
/// Requests for a path in `stream_paths` that open a connection are served as streams.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stream_paths: &'static [&'static str],
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (io, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(
            io,
            addr,
            app.clone(),
            stream_paths,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Out of file descriptors (or another resource): wait a moment rather than spin, as hyper
/// and axum do; a connection aborted before it was accepted is simply gone.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn connection(
    mut io: TcpStream,
    addr: SocketAddr,
    app: Router,
    stream_paths: &'static [&'static str],
    shutdown: CancellationToken,
) {
    // Events are small writes in a row: Nagle's algorithm would hold each behind the
    // previous one's acknowledgement.
    let _ = io.set_nodelay(true);
    let read = if stream_paths.is_empty() {
        Bytes::new()
    } else {
        let head = tokio::select! {
            _ = shutdown.cancelled() => return,
            head = first_request(&mut io, stream_paths, addr) => head,
        };
        match head {
            Ok(First::Stream(req)) => return stream(io, app, *req).await,
            Ok(First::Other(read)) => read,
            Err(e) => {
                tracing::debug!(error = %e, "connection closed before its first request");
                return;
            }
        }
    };
    let service = TowerToHyperService::new(app.map_request(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(addr));
        req
    }));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(Rewind { read, io }), service);
    let mut conn = pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return finished(result),
        _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    finished(conn.await);
}

fn finished(result: hyper::Result<()>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

enum First {
    /// A stream request, ready for the router.
    Stream(Box<Request<Body>>),
    /// Anything else: what was read of it, for hyper.
    Other(Bytes),
}

/// Read the connection's first request head and decide who serves it.
async fn first_request(
    io: &mut TcpStream,
    stream_paths: &[&str],
    addr: SocketAddr,
) -> io::Result<First> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if tokio::io::AsyncReadExt::read_buf(io, &mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Complete(_)) => {
                return Ok(match stream_request(&parsed, stream_paths, addr) {
                    Some(req) => First::Stream(Box::new(req)),
                    None => First::Other(buf.freeze()),
                });
            }
            // Too long, too many headers, not HTTP/1 (an HTTP/2 preface): hyper's.
            Ok(httparse::Status::Partial) | Err(_) => return Ok(First::Other(buf.freeze())),
        }
    }
}

/// The request, if it is a plain `GET` of a stream path over HTTP/1.1 with no body and no
/// upgrade; None for anything else.
fn stream_request(
    parsed: &httparse::Request<'_, '_>,
    stream_paths: &[&str],
    addr: SocketAddr,
) -> Option<Request<Body>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let target = parsed.path?;
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !stream_paths.contains(&path) {
        return None;
    }
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(http::Version::HTTP_11)
        .body(Body::empty())
        .ok()?;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == http::header::CONTENT_LENGTH && h.value != b"0"
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::UPGRADE
        {
            return None;
        }
        let value = HeaderValue::from_bytes(h.value).ok()?;
        req.headers_mut().append(name, value);
    }
    req.extensions_mut().insert(ConnectInfo(addr));
    Some(req)
}

/// Answer a stream request and write its response until the body ends, the client goes
/// away, or the client takes nothing for `WRITE_DEADLINE`.
async fn stream(mut io: TcpStream, app: Router, req: Request<Body>) {
    let Ok(response) = app.oneshot(req).await;
    if let Err(e) = write_response(&mut io, response).await {
        tracing::debug!(error = %e, "stream ended");
    }
    let _ = io.shutdown().await;
}

async fn write_response(io: &mut TcpStream, response: Response<Body>) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let length = http_body::Body::size_hint(&body).exact();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if [
            http::header::CONTENT_LENGTH,
            http::header::TRANSFER_ENCODING,
            http::header::CONNECTION,
        ]
        .contains(name)
        {
            continue;
        }
        for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            head.extend_from_slice(part);
        }
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n");
    match length {
        Some(n) => head.extend_from_slice(format!("content-length: {n}\r\n\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
    }
    write(io, &mut [IoSlice::new(&head)]).await?;
    drop(head);

    let mut body = pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            gone = client_gone(io) => return gone,
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if length.is_some() {
            write(io, &mut [IoSlice::new(&data)]).await?;
        } else {
            let size = format!("{:x}\r\n", data.len());
            write(
                io,
                &mut [
                    IoSlice::new(size.as_bytes()),
                    IoSlice::new(&data),
                    IoSlice::new(b"\r\n"),
                ],
            )
            .await?;
        }
    }
    if length.is_none() {
        write(io, &mut [IoSlice::new(b"0\r\n\r\n")]).await?;
    }
    Ok(())
}

/// Write all of `parts`, or fail once the client has taken nothing for `WRITE_DEADLINE`.
async fn write(io: &mut TcpStream, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
    let all = async {
        while !parts.is_empty() {
            let n = io.write_vectored(parts).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        Ok(())
    };
    tokio::time::timeout(WRITE_DEADLINE, all)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Resolves once the client has closed the connection (or reset it). Anything it sends
/// meanwhile is read into a small buffer on the stack and dropped: a stream's response
/// never ends, so no later request on this connection could be answered.
async fn client_gone(io: &TcpStream) -> io::Result<()> {
    let mut sink = [0u8; 64];
    loop {
        io.readable().await?;
        match io.try_read(&mut sink) {
            Ok(0) => return Err(io::ErrorKind::ConnectionAborted.into()),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The socket, with the bytes already read from it put back in front.
struct Rewind {
    read: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
