//! Small HTTP helpers shared by every node's handlers: bodies, JSON, errors,
//! bounded body reads.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use serde::Serialize;

/// The response body type of every handler (full or streaming).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A JSON error: `{"error": reason}`.
pub fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response<Body> {
    json(status, &serde_json::json!({ "error": reason.to_string() }))
}

/// A plain-text response.
pub fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// What a peer's error answer says: the `error` of its JSON body, or the
/// first 256 characters of the body, read at most 64 KiB and for at most
/// `within` (empty if it does not come).
pub async fn error_text<B>(body: B, within: Duration) -> String
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = http_body_util::Limited::new(body, 64 * 1024);
    match tokio::time::timeout(within, body.collect()).await {
        Ok(Ok(b)) => {
            let b = b.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&b).chars().take(256).collect())
        }
        _ => String::new(),
    }
}

/// Reads and discards up to `max` bytes of a request body that will not be
/// used, within `within`, so that the refusal sent next reaches a client
/// still writing it instead of a reset connection. A longer (or slower)
/// body is left unread: the connection then closes with the answer.
pub async fn drain<B>(body: B, max: u64, within: Duration)
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    use futures_util::StreamExt;
    let mut s = std::pin::pin!(stream_body(body, within));
    let mut n = 0u64;
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(c)) = s.next().await {
            n += c.len() as u64;
            if n > max {
                return;
            }
        }
    })
    .await;
}

/// A request body as a stream of chunks for a handler that never holds it
/// whole (a bulk transfer): each chunk must arrive within `idle` of the
/// last, or the stream ends with a `TimedOut` error (a stalled or
/// slowloris sender cannot hold the connection forever). Trailers are
/// skipped.
pub fn stream_body<B>(
    body: B,
    idle: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no body bytes for {idle:?}"),
                    );
                    return Some((Err(e), None));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    return Some((Err(std::io::Error::other(e.to_string())), None));
                }
                Ok(Some(Ok(f))) => match f.into_data() {
                    Ok(d) if d.is_empty() => continue,
                    Ok(d) => return Some((Ok(d), Some(body))),
                    Err(_) => continue, // trailers
                },
            }
        }
    })
}

/// Reads a whole request body of at most `limit` bytes within `timeout`.
///
/// # Errors
/// A ready-made 413 or 408/400 response.
pub async fn read_body<B>(body: B, limit: usize, timeout: Duration) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error:
        std::fmt::Display + Send + Sync + 'static + Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("body not received within {timeout:?}"),
        )),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body larger than {limit} bytes"),
                ))
            } else {
                Err(error(StatusCode::BAD_REQUEST, format!("reading body: {e}")))
            }
        }
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Parses a query string into pairs (percent-decoded).
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query() {
        let q = super::query_pairs(Some("a=1&source=acme.p7&x=%41%2&y=a+b&z"));
        assert_eq!(q[0], ("a".into(), "1".into()));
        assert_eq!(q[2], ("x".into(), "A%2".into()));
        assert_eq!(q[3], ("y".into(), "a b".into()));
        assert_eq!(q[4], ("z".into(), "".into()));
        assert_eq!(super::percent_encode("group:a b"), "group:a%20b");
    }
}
