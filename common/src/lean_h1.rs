//! A lean HTTP/1.1 loop for children's exchange POSTs, in front of hyper.
//!
//! An MLM holds one long-poll for every child below it, and most of the
//! time that is all a child's connection does. Under hyper each such
//! connection keeps hyper's read buffer (at least 8 KiB) and write buffer
//! (8 KiB, allocated with the connection) and its connection state for as
//! long as it is open: two thirds of what an idle child cost. This loop
//! reads a request head itself and, when it is an exchange POST with a
//! small body, answers it without hyper; while the answer is awaited (the
//! long-poll) it holds no buffer at all, only the TLS stream.
//!
//! Anything else — another path or method, a body over [`LEAN_BODY_MAX`]
//! or of unknown length, `Transfer-Encoding`, `Expect`, HTTP/1.0, an
//! anonymous peer — is handed to hyper together with the bytes already
//! read ([`Rewind`]), and the connection stays with hyper from then on. So
//! the lean loop only ever decides what it fully understands; every
//! request it does not is served exactly as before.
//!
//! What it checks is what hyper would: a head of at most [`MAX_HEAD_BYTES`]
//! read within [`HEADER_READ_TIMEOUT`], at most [`MAX_HEADERS`] headers,
//! exactly one valid `Content-Length`, the body within
//! [`BODY_READ_TIMEOUT`], and the CRL before and during every request. A
//! child that closes its connection while its poll is held ends the wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::http_util::Body;
use crate::limits::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT};
use crate::server::Peer;

/// Longest request head the loop reads; a longer one is hyper's to refuse.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in a request head.
pub const MAX_HEADERS: usize = 64;
/// Largest body answered here; a larger one goes to hyper, whose reading
/// waits on the body memory budget. Bounds what one connection can make
/// this loop hold before the budget is asked.
pub const LEAN_BODY_MAX: u64 = 64 * 1024;
/// Bytes a child may send ahead (its next request) while its poll is held.
const READ_AHEAD_MAX: usize = MAX_HEAD_BYTES;

/// Answers one exchange POST (the body is whole).
pub type LeanHandler = Arc<
    dyn Fn(Request<Full<Bytes>>, Arc<Peer>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// Wraps an async function as a [`LeanHandler`].
pub fn handler<F, Fut>(f: F) -> LeanHandler
where
    F: Fn(Request<Full<Bytes>>, Arc<Peer>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Arc::new(move |req, peer| Box::pin(f(req, peer)))
}

/// What to do with a connection after a request served here.
enum Next {
    /// Served here; read the next request.
    KeepAlive,
    /// Served here, and the connection is done.
    Close,
}

/// Serves `io` until it closes; `path` is the exchange path. Requests that
/// are not lean exchange POSTs go to `fallback` with the connection.
pub async fn serve<IO, F, Fut>(
    mut io: IO,
    peer: Arc<Peer>,
    path: &'static str,
    handler: LeanHandler,
    fallback: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Rewind<IO>) -> Fut,
    Fut: Future<Output = ()>,
{
    // Bytes read and not yet used (a head, or the start of the next one).
    let mut pending = BytesMut::new();
    loop {
        if peer.anonymous {
            // A peer without a certificate may only enroll: hyper's path says so.
            break;
        }
        let head =
            tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(&mut io, &mut pending, path));
        let (end, lean) = match head.await {
            Ok(Ok(Some((end, Some(lean))))) => (end, lean),
            // A whole head this loop does not answer.
            Ok(Ok(Some((_, None)))) => break,
            // Closed between requests: done.
            Ok(Ok(None)) => return,
            // Too long, malformed, a read error: hyper's to answer.
            Ok(Err(HeadError::Hyper)) => break,
            Ok(Err(HeadError::Io)) => return,
            // Idle, or a head not finished, past the head timeout: closed,
            // as hyper closes it.
            Err(_) => return,
        };
        match serve_one(&mut io, &mut pending, end, lean, &peer, &handler).await {
            Next::KeepAlive => continue,
            Next::Close => {
                let _ = io.shutdown().await;
                return;
            }
        }
    }
    fallback(Rewind {
        prefix: pending.freeze(),
        io,
    })
    .await;
}

enum HeadError {
    /// Not something this loop answers; hand the bytes to hyper.
    Hyper,
    /// The connection failed.
    Io,
}

/// Reads until `pending` holds a whole head; returns its length and, if
/// it is a lean exchange POST, what it says (one parse per head). `None`
/// if the peer closed cleanly before sending anything.
async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    pending: &mut BytesMut,
    path: &str,
) -> Result<Option<(usize, Option<Lean>)>, HeadError> {
    loop {
        if !pending.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(pending) {
                Ok(httparse::Status::Complete(n)) => return Ok(Some((n, lean(&req, path)))),
                Ok(httparse::Status::Partial) if pending.len() < MAX_HEAD_BYTES => {}
                // Too long, too many headers, malformed.
                _ => return Err(HeadError::Hyper),
            }
        }
        pending.reserve(2048);
        match io.read_buf(pending).await {
            Ok(0) if pending.is_empty() => return Ok(None),
            Ok(0) => return Err(HeadError::Hyper),
            Ok(_) => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

/// A parsed head this loop will answer.
struct Lean {
    request: http::request::Builder,
    headers: HeaderMap,
    length: usize,
    close: bool,
}

/// A parsed head as a lean exchange POST, or `None`.
fn lean(req: &httparse::Request<'_, '_>, path: &str) -> Option<Lean> {
    if req.method != Some("POST") || req.version != Some(1) {
        return None;
    }
    let target = req.path?;
    if target.split('?').next() != Some(path) {
        return None;
    }
    let mut map = HeaderMap::with_capacity(req.headers.len());
    let mut length = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == http::header::CONTENT_LENGTH {
            // Exactly one, plain digits (no list, no sign, no spaces).
            let v = std::str::from_utf8(h.value).ok()?;
            if length.is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            length = Some(v.parse::<u64>().ok()?);
        } else if name == http::header::TRANSFER_ENCODING
            || name == http::header::EXPECT
            || name == http::header::UPGRADE
        {
            return None;
        } else if name == http::header::CONNECTION {
            let v = std::str::from_utf8(h.value).ok()?;
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                close = true;
            }
        }
        map.append(name, value);
    }
    let length = length.filter(|l| *l <= LEAN_BODY_MAX)?;
    let uri = http::Uri::try_from(target).ok()?;
    Some(Lean {
        request: Request::builder()
            .method(Method::POST)
            .uri(uri)
            .version(http::Version::HTTP_11),
        headers: map,
        length: length as usize,
        close,
    })
}

async fn serve_one<IO>(
    io: &mut IO,
    pending: &mut BytesMut,
    end: usize,
    lean: Lean,
    peer: &Arc<Peer>,
    handler: &LeanHandler,
) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // The body: what came with the head, then the rest.
    let need = end + lean.length;
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, async {
        while pending.len() < need {
            pending.reserve(need - pending.len());
            match io.read_buf(pending).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    });
    match read.await {
        Ok(true) => {}
        Ok(false) => return Next::Close,
        Err(_) => {
            let r = crate::http_util::error(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {BODY_READ_TIMEOUT:?}"),
            );
            let _ = write_response(io, r, true).await;
            return Next::Close;
        }
    }
    pending.advance(end);
    let body = pending.split_to(lean.length).freeze();
    if pending.is_empty() {
        // Nothing read ahead: give the buffer back while the answer is awaited.
        *pending = BytesMut::new();
    }
    let Lean {
        request,
        headers,
        close,
        ..
    } = lean;
    let Ok(mut req) = request.body(Full::new(body)) else {
        return Next::Close;
    };
    *req.headers_mut() = headers;
    if peer.is_revoked() {
        let who = peer.identity.as_ref().map(|i| i.id.to_string());
        tracing::warn!(peer = ?who, "request from a revoked certificate refused; connection closed");
        let _ = write_response(io, crate::server::revoked_response(), true).await;
        return Next::Close;
    }
    let answer = handler(req, peer.clone());
    let response = {
        tokio::pin!(answer);
        // Read ahead while waiting: a close ends the wait (as hyper drops
        // the request), bytes of a next request are kept for it.
        let mut scratch = [0u8; 512];
        loop {
            let watching = pending.len() < READ_AHEAD_MAX;
            tokio::select! {
                r = &mut answer => break r,
                _ = peer.until_revoked() => {
                    let who = peer.identity.as_ref().map(|i| i.id.to_string());
                    tracing::warn!(peer = ?who, "certificate revoked during a request; request ended, connection closed");
                    let _ = write_response(io, crate::server::revoked_response(), true).await;
                    return Next::Close;
                }
                r = io.read(&mut scratch), if watching => match r {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(n) => pending.extend_from_slice(&scratch[..n]),
                },
            }
        }
    };
    let close = close
        || response
            .headers()
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    match write_response(io, response, close).await {
        Ok(()) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Writes a whole response: the body is collected (exchange answers are
/// built in memory) and sent with its `Content-Length`.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    response: Response<Body>,
    close: bool,
) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(body.len().to_string().as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    if body.len() <= 16 * 1024 {
        head.extend_from_slice(&body);
        io.write_all(&head).await?;
    } else {
        io.write_all(&head).await?;
        io.write_all(&body).await?;
    }
    io.flush().await
}

/// A connection with bytes already read put back in front of it, for
/// hyper to read as if they had not been.
pub struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const PATH: &str = "/rs/v1/exchange";

    async fn body_len<B>(b: B) -> usize
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display
            + Send
            + Sync
            + 'static
            + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        crate::http_util::read_body(b, usize::MAX, std::time::Duration::from_secs(10))
            .await
            .map_or(0, |b| b.len())
    }

    fn peer() -> Arc<Peer> {
        Arc::new(Peer {
            addr: "127.0.0.1:9".parse().unwrap(),
            identity: None,
            revocation: None,
            anonymous: false,
        })
    }

    /// A connection served by the lean loop: the lean handler answers
    /// `lean <body length>`, hyper (the fallback) `hyper <path> <body length>`.
    fn start(lean_calls: Arc<AtomicUsize>) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let h = handler(move |req: Request<Full<Bytes>>, _| {
            lean_calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let n = body_len(req.into_body()).await;
                crate::http_util::text(StatusCode::OK, "text/plain", format!("lean {n}"))
            }
        });
        tokio::spawn(serve(server, peer(), PATH, h, |rest| async move {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let n = body_len(req.into_body()).await;
                    Ok::<_, std::convert::Infallible>(crate::http_util::text(
                        StatusCode::OK,
                        "text/plain",
                        format!("hyper {path} {n}"),
                    ))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(rest), svc)
                .await;
        }));
        Client {
            io: client,
            buf: Vec::new(),
        }
    }

    /// A client's end: the stream and what was read past the last response.
    struct Client {
        io: DuplexStream,
        buf: Vec<u8>,
    }

    impl Client {
        async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
            self.io.write_all(b).await
        }
        async fn more(&mut self) {
            let mut chunk = [0u8; 4096];
            let k = self.io.read(&mut chunk).await.unwrap();
            assert!(
                k > 0,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }

    /// Reads one response: (status, body).
    async fn response(c: &mut Client) -> (u16, String) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&c.buf) {
                let len: usize = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .unwrap_or(0);
                let code = r.code.unwrap();
                while c.buf.len() < n + len {
                    c.more().await;
                }
                let body = String::from_utf8_lossy(&c.buf[n..n + len]).to_string();
                c.buf.drain(..n + len);
                return (code, body);
            }
            c.more().await;
        }
    }

    fn post(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
        let mut v = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn exchange_posts_are_answered_here_and_the_rest_by_hyper_on_the_same_connection() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = start(calls.clone());
        // Two lean exchanges, the second sent before the first is answered.
        let mut both = post(PATH, b"hello", "");
        both.extend(post(PATH, b"again!", ""));
        c.write_all(&both).await.unwrap();
        assert_eq!(response(&mut c).await, (200, "lean 5".into()));
        assert_eq!(response(&mut c).await, (200, "lean 6".into()));
        // Another path: hyper takes the connection, bytes and all.
        c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut c).await, (200, "hyper /metrics 0".into()));
        // And keeps it: an exchange now goes to hyper too.
        c.write_all(&post(PATH, b"late", "")).await.unwrap();
        assert_eq!(response(&mut c).await, (200, format!("hyper {PATH} 4")));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// What this loop does not fully understand is hyper's to judge: it
    /// never answers a head that could be read two ways.
    #[tokio::test]
    async fn ambiguous_or_large_requests_go_to_hyper() {
        let big = vec![b'x'; LEAN_BODY_MAX as usize + 1];
        let cases: Vec<(Vec<u8>, (u16, String))> = vec![
            // Both framings (smuggling): hyper's to judge (it reads the chunks).
            (
                format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").into_bytes(),
                (200, format!("hyper {PATH} 3")),
            ),
            // Two lengths that differ.
            (
                format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd").into_bytes(),
                (400, String::new()),
            ),
            // A chunked body.
            (
                format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").into_bytes(),
                (200, format!("hyper {PATH} 3")),
            ),
            // Over the lean bound.
            (post(PATH, &big, ""), (200, format!("hyper {PATH} {}", big.len()))),
            // Another method on the path.
            (format!("PUT {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab").into_bytes(), (200, format!("hyper {PATH} 2"))),
            // HTTP/1.0.
            (format!("POST {PATH} HTTP/1.0\r\ncontent-length: 2\r\n\r\nab").into_bytes(), (200, format!("hyper {PATH} 2"))),
        ];
        for (req, want) in cases {
            let calls = Arc::new(AtomicUsize::new(0));
            let mut c = start(calls.clone());
            c.write_all(&req).await.unwrap();
            let (code, body) = response(&mut c).await;
            assert_eq!(
                code,
                want.0,
                "{}",
                String::from_utf8_lossy(&req[..60.min(req.len())])
            );
            if want.0 == 200 {
                assert_eq!(body, want.1);
            }
            assert_eq!(calls.load(Ordering::SeqCst), 0, "answered by the lean loop");
        }
    }

    /// A child that goes away while its poll is held ends the wait, as
    /// under hyper: the held answer is dropped, not kept until it fires.
    #[tokio::test]
    async fn a_child_that_closes_while_its_poll_is_held_ends_the_wait() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let started = Arc::new(tokio::sync::Notify::new());
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (d, s) = (dropped.clone(), started.clone());
        let h = handler(move |_req, _| {
            let flag = Flag(d.clone());
            let s = s.clone();
            async move {
                s.notify_one();
                std::future::pending::<()>().await;
                drop(flag);
                crate::http_util::text(StatusCode::OK, "text/plain", "never")
            }
        });
        let conn = tokio::spawn(serve(server, peer(), PATH, h, |_rest| async {}));
        client.write_all(&post(PATH, b"poll", "")).await.unwrap();
        started.notified().await;
        assert!(!dropped.load(Ordering::SeqCst));
        drop(client);
        tokio::time::timeout(std::time::Duration::from_secs(10), conn)
            .await
            .expect("the connection ended")
            .unwrap();
        assert!(
            dropped.load(Ordering::SeqCst),
            "the held answer was dropped"
        );
    }

    /// An idle connection, or one that never finishes its head, is closed
    /// after the head timeout; a body that never comes, after the body's.
    #[tokio::test(start_paused = true)]
    async fn idle_slow_heads_and_missing_bodies_are_closed_by_their_timeouts() {
        for req in [
            &b""[..],
            b"POST /rs/v1/exch",
            b"POST /rs/v1/exchange HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc",
        ] {
            let calls = Arc::new(AtomicUsize::new(0));
            let mut c = start(calls.clone());
            c.write_all(req).await.unwrap();
            let mut rest = Vec::new();
            // Paused time runs on to the timeout; the loop closes its end.
            tokio::time::timeout(BODY_READ_TIMEOUT * 2, c.io.read_to_end(&mut rest))
                .await
                .expect("closed by the timeout")
                .unwrap();
            if req.ends_with(b"abc") {
                assert!(
                    String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"),
                    "{:?}",
                    String::from_utf8_lossy(&rest)
                );
            } else {
                assert!(rest.is_empty());
            }
            assert_eq!(calls.load(Ordering::SeqCst), 0);
        }
    }
}
