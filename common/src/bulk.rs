//! Bulk transfers upward (DESIGN.md §7): the protocol pieces the three
//! tiers share.
//!
//! A file never rides in an exchange. Its sender asks first, with a
//! `bulk-request` message (size, sha256, class, file name) on the normal
//! forward path; the appserver answers down the back-channel with a
//! `bulk-response`: a one-time [`Token`] bound to the source, the size and
//! the hash, which expires, and the path to send the bytes to. Then:
//!
//! ```text
//! HEAD /rs/v1/bulk/TOKEN            → 200, Upload-Offset: bytes held, Upload-Length: size
//!                                     (and Upload-Complete: true once stored)
//! PUT  /rs/v1/bulk/TOKEN            Upload-Offset: N (default 0); body: bytes N.. of the file
//!      → 201 stored (size and sha256 checked)   → 202 short body: Upload-Offset says where to go on
//!      → 409 wrong offset (Upload-Offset says the right one)
//!      → 403 another source's token  → 404 unknown token  → 410 used or expired
//!      → 413 more bytes than granted → 422 wrong sha256 (the upload is discarded)
//! ```
//!
//! Every hop sends these to its own parent: an MLM relays them upward as a
//! stream (never on disk, never whole in memory), adding the
//! [`ORIGIN`] header: the child it authenticated, or the origin its own
//! child vouched for. Each parent checks that origin against the peer's
//! certificate ([`origin`]) exactly as the screen checks a message's
//! source, so one proxy cannot use another's token, even through an MLM.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::http_util::{error, Body};
use crate::id::ComponentId;
use crate::link::StreamBody;
use crate::server::Peer;
use crate::tls::Role;

/// Where transfers go: `/rs/v1/bulk/TOKEN`.
pub const BULK_PREFIX: &str = "/rs/v1/bulk/";
/// Request: the offset the body starts at. Response: the bytes the receiver holds.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// Response: the granted size.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// Response to `HEAD`: `true` once the upload is stored (the token is spent).
pub const UPLOAD_COMPLETE: &str = "upload-complete";
/// The source a relaying MLM vouches for (the child it authenticated).
pub const ORIGIN: &str = "rsnet-origin";
/// The class of the `bulk-response` messages the appserver sends down.
pub const CLASS: &str = "bulk";
/// A transfer refused before its body was read: up to this much of the
/// body is read and dropped first, for at most [`REFUSAL_DRAIN_TIME`], so
/// the refusal reaches a sender still writing instead of a reset.
pub const REFUSAL_DRAIN_BYTES: u64 = 8 << 20;
/// See [`REFUSAL_DRAIN_BYTES`].
pub const REFUSAL_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// Chunk size of file bodies.
const CHUNK: usize = 64 * 1024;

/// A one-time transfer token: 32 random bytes, as 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// A fresh token from the system's secure random source.
    ///
    /// # Errors
    /// If that source fails.
    pub fn new() -> Result<Token, BulkError> {
        let mut b = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| BulkError::Io("no secure random source".into()))?;
        Ok(Token(hex(&b)))
    }

    /// Parses a token as a peer sent it.
    ///
    /// # Errors
    /// [`BulkError::BadToken`] unless it is 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Token, BulkError> {
        if is_sha256_hex(s) {
            Ok(Token(s.to_string()))
        } else {
            Err(BulkError::BadToken)
        }
    }

    /// The token of a transfer path (`/rs/v1/bulk/TOKEN`), if it is one.
    pub fn of_path(path: &str) -> Option<Result<Token, BulkError>> {
        path.strip_prefix(BULK_PREFIX).map(Token::parse)
    }

    /// The transfer path for this token.
    pub fn path(&self) -> String {
        format!("{BULK_PREFIX}{}", self.0)
    }

    /// The string form (a secret: never log it).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What a receiver keeps to recognise the token: its SHA-256 (hex), so
    /// a copy of the receiver's store does not hold live tokens.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Why a transfer request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    /// The path's token is not a token (400).
    #[error("not a transfer token")]
    BadToken,
    /// A header that cannot be used (400).
    #[error("{0}")]
    BadRequest(String),
    /// The peer may not send for the origin it names, or names none (403).
    #[error("{0}")]
    Forbidden(String),
    /// No grant has this token (404).
    #[error("unknown transfer token")]
    UnknownToken,
    /// The offset is not the one the receiver holds (409).
    #[error("upload offset {sent} does not match the {held} bytes held")]
    Offset {
        /// What the sender said.
        sent: u64,
        /// What the receiver holds.
        held: u64,
    },
    /// Another transfer on this token is in progress (409).
    #[error("a transfer on this token is already in progress")]
    Busy,
    /// The token was used, or expired, or its upload failed (410).
    #[error("{0}")]
    Gone(String),
    /// More bytes than granted (413).
    #[error("more than the {0} bytes granted")]
    TooLong(u64),
    /// The file's hash is not the one granted (422).
    #[error("sha256 {got} is not the {want} granted; the upload is discarded")]
    HashMismatch {
        /// The hash granted.
        want: String,
        /// The hash of the bytes received.
        got: String,
    },
    /// Too many transfers at this hop right now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The parent could not be reached (502).
    #[error("{0}")]
    Upstream(String),
    /// Disk or another local failure (503).
    #[error("{0}")]
    Io(String),
}

impl BulkError {
    /// The HTTP status a hop answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            BulkError::BadToken | BulkError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BulkError::Forbidden(_) => StatusCode::FORBIDDEN,
            BulkError::UnknownToken => StatusCode::NOT_FOUND,
            BulkError::Offset { .. } | BulkError::Busy => StatusCode::CONFLICT,
            BulkError::Gone(_) => StatusCode::GONE,
            BulkError::TooLong(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BulkError::HashMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            BulkError::Unavailable(_) | BulkError::Io(_) => StatusCode::SERVICE_UNAVAILABLE,
            BulkError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The answer: a JSON error, with `Upload-Offset` for an offset mismatch.
    pub fn response(&self) -> Response<Body> {
        let mut r = error(self.status(), self);
        if let BulkError::Offset { held, .. } = self {
            r.headers_mut().insert(UPLOAD_OFFSET, (*held).into());
        }
        if matches!(self, BulkError::Unavailable(_)) {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
        }
        r
    }
}

/// The back-channel message carrying `answer` to `to` (class [`CLASS`],
/// subclass `grant` or `denial`): its header and encoded content, for
/// [`crate::backchannel::BackChannel::dispatch`]. Whoever answers a
/// request (the appserver, or an MLM that denies it on the way) sends one.
pub fn response_message(
    to: &ComponentId,
    answer: crate::model::BulkResponse,
) -> (crate::model::Header, Bytes) {
    use crate::model::{Content, ContentKind, Destination, Direction, Header, Qos, Timestamp};
    let created = Timestamp::now();
    let header = Header {
        id: crate::MessageId::new(),
        class: CLASS.into(),
        subclass: Some(if answer.granted { "grant" } else { "denial" }.into()),
        kind: ContentKind::BulkResponse,
        created,
        direction: Direction::Destination(Destination {
            ids: vec![to.clone()],
            group: None,
        }),
        qos: Qos {
            precedence: 7,
            // No use after the grant expires (or, for a denial, a day on).
            expiry: Some(
                answer
                    .expires
                    .unwrap_or_else(|| created.after(std::time::Duration::from_secs(86_400))),
            ),
            ..Qos::default()
        },
        routing: Vec::new(),
    };
    let content = Bytes::from(crate::envelope::wire::encode_content(
        &Content::BulkResponse(answer),
    ));
    (header, content)
}

/// The source a transfer is for, checked against who sent it: a proxy's
/// own ID (it may name itself, or nothing), or the [`ORIGIN`] an MLM
/// vouches for, which must lie in that MLM's subtree
/// ([`crate::tls::Identity::may_send_as`]).
///
/// # Errors
/// [`BulkError::Forbidden`] for any other peer or origin.
pub fn origin(peer: &Peer, headers: &HeaderMap) -> Result<ComponentId, BulkError> {
    let who = peer
        .identity
        .as_ref()
        .ok_or_else(|| BulkError::Forbidden("no client certificate".into()))?;
    let named = match headers.get(ORIGIN) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<ComponentId>().ok())
                .ok_or_else(|| BulkError::BadRequest(format!("{ORIGIN}: not a component ID")))?,
        ),
    };
    let origin = match (who.role, named) {
        (Role::Proxy, None) => who.id.clone(),
        (Role::Proxy | Role::Mlm, Some(o)) => o,
        (Role::Mlm, None) => {
            return Err(BulkError::Forbidden(format!(
                "an MLM relaying a transfer must name its origin ({ORIGIN})"
            )))
        }
        (r, _) => {
            return Err(BulkError::Forbidden(format!(
                "role {} does not send transfers",
                r.as_str()
            )))
        }
    };
    if !who.may_send_as(&origin) {
        return Err(BulkError::Forbidden(format!(
            "origin {origin} is outside the subtree of authenticated peer {}",
            who.id
        )));
    }
    Ok(origin)
}

/// The request's [`UPLOAD_OFFSET`] (0 when absent).
///
/// # Errors
/// [`BulkError::BadRequest`] if it is not a number.
pub fn offset(headers: &HeaderMap) -> Result<u64, BulkError> {
    match headers.get(UPLOAD_OFFSET) {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BulkError::BadRequest(format!("{UPLOAD_OFFSET}: not a byte count"))),
    }
}

/// A response's [`UPLOAD_OFFSET`], if it has a usable one.
pub fn held(headers: &HeaderMap) -> Option<u64> {
    headers.get(UPLOAD_OFFSET)?.to_str().ok()?.parse().ok()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// True for 64 lowercase hex digits (a SHA-256, a token).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The SHA-256 (hex) of a whole file, read in chunks (never held whole).
///
/// # Errors
/// Read failures.
pub async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// A body streaming `path` from `offset` to its end, in 64 KiB chunks;
/// `sent` counts the bytes handed to the connection. Memory stays at a
/// chunk or two whatever the file's size. With `max_rate` (bytes per
/// second, 0 for none) chunks are paced so the body never runs faster.
///
/// # Errors
/// If the file cannot be opened or sought.
pub async fn file_body(
    path: &Path,
    offset: u64,
    sent: Arc<AtomicU64>,
    max_rate: u64,
) -> std::io::Result<StreamBody> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let start = std::time::Instant::now();
    let s = futures_util::stream::unfold(Some((f, 0u64)), move |state| {
        let sent = sent.clone();
        async move {
            let (mut f, mut total) = state?;
            if max_rate > 0 {
                let due = std::time::Duration::from_secs_f64(total as f64 / max_rate as f64);
                let elapsed = start.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    total += n as u64;
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    Some((
                        Ok(hyper::body::Frame::data(Bytes::from(buf))),
                        Some((f, total)),
                    ))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    Ok(BodyExt::boxed(http_body_util::StreamBody::new(s)))
}

/// An empty streamed body (a `HEAD`).
pub fn empty() -> StreamBody {
    BodyExt::boxed(
        http_body_util::Empty::<Bytes>::new().map_err(|e: std::convert::Infallible| match e {}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Identity;

    fn peer(id: &str, role: Role, scopes: &[&str]) -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            identity: Some(Identity {
                id: id.parse().unwrap(),
                role,
                scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
                perms: vec![],
                classes: vec![],
            }),
            revocation: None,
            anonymous: false,
        }
    }

    fn with_origin(o: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, o.parse().unwrap());
        h
    }

    #[test]
    fn tokens_are_random_hex_and_parsed_strictly() {
        let a = Token::new().unwrap();
        let b = Token::new().unwrap();
        assert_ne!(a, b);
        assert!(is_sha256_hex(a.as_str()));
        assert_eq!(Token::parse(a.as_str()).unwrap(), a);
        assert_eq!(
            Token::of_path(&a.path()).unwrap().unwrap(),
            a,
            "path round trip"
        );
        for bad in [
            "",
            "../etc/passwd",
            &"A".repeat(64),
            &"a".repeat(65),
            &"g".repeat(64),
        ] {
            assert_eq!(Token::parse(bad), Err(BulkError::BadToken), "{bad:?}");
        }
        assert!(Token::of_path("/rs/v1/exchange").is_none());
        assert_ne!(a.digest(), a.as_str());
        assert!(!format!("{a:?}").contains(a.as_str()), "never logged");
    }

    #[test]
    fn the_origin_is_checked_against_the_peer() {
        let p1 = peer("acme.p1", Role::Proxy, &[]);
        assert_eq!(origin(&p1, &HeaderMap::new()).unwrap().as_str(), "acme.p1");
        assert_eq!(
            origin(&p1, &with_origin("acme.p1")).unwrap().as_str(),
            "acme.p1"
        );
        assert!(matches!(
            origin(&p1, &with_origin("acme.p2")),
            Err(BulkError::Forbidden(_))
        ));
        let mlm = peer("acme.mlm1", Role::Mlm, &["acme"]);
        assert_eq!(
            origin(&mlm, &with_origin("acme.p2")).unwrap().as_str(),
            "acme.p2"
        );
        assert!(matches!(
            origin(&mlm, &with_origin("globex.p1")),
            Err(BulkError::Forbidden(_))
        ));
        assert!(matches!(
            origin(&mlm, &HeaderMap::new()),
            Err(BulkError::Forbidden(_))
        ));
        assert!(matches!(
            origin(&mlm, &with_origin("not an id")),
            Err(BulkError::BadRequest(_))
        ));
        let op = peer("ops.alice", Role::Operator, &[]);
        assert!(matches!(
            origin(&op, &HeaderMap::new()),
            Err(BulkError::Forbidden(_))
        ));
    }

    #[test]
    fn offsets_are_numbers() {
        let mut h = HeaderMap::new();
        assert_eq!(offset(&h), Ok(0));
        h.insert(UPLOAD_OFFSET, "4096".parse().unwrap());
        assert_eq!(offset(&h), Ok(4096));
        h.insert(UPLOAD_OFFSET, "-1".parse().unwrap());
        assert!(offset(&h).is_err());
        let r = BulkError::Offset { sent: 1, held: 7 }.response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(held(r.headers()), Some(7));
    }
}
