//! Compression of exchange bodies as a transport encoding (`zstd`).
//!
//! The envelope stays XML in MIME; on a slow customer link the same bytes
//! travel compressed, the way HTTP compresses any body:
//!
//! * **Replies.** A child that wants compressed replies says
//!   `Accept-Encoding: zstd` on its POST; the parent then sends the reply
//!   with `Content-Encoding: zstd` (when it is worth it: over
//!   [`MIN_COMPRESS_BYTES`]).
//! * **Requests** (RFC 7694). A parent that takes compressed requests says
//!   `Accept-Encoding: zstd` on every exchange reply. A child compresses its
//!   POSTs only after it has seen that from this parent, so an older parent
//!   is never sent what it cannot read; a parent that answers a compressed
//!   POST with 415 is sent it again uncompressed.
//!
//! A compressed request declares its decoded size in [`DECODED_LENGTH`]:
//! the parent reserves that in its body memory budget before reading, and
//! [`Inflate`] refuses a body that decodes to a byte more (or, without the
//! header, to more than an envelope may hold). Decoder memory is bounded
//! too: frames whose window is over 2^[`WINDOW_LOG`] bytes are refused,
//! and this module's encoder never makes one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::HeaderMap;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// The content coding token.
pub const ZSTD: &str = "zstd";
/// Request header: the size of the body once decoded, in bytes.
pub const DECODED_LENGTH: &str = "rsnet-decoded-length";
/// Largest window (log2 bytes) this side makes or accepts: 1 MiB.
pub const WINDOW_LOG: u32 = 20;
/// Bodies shorter than this are sent as they are.
pub const MIN_COMPRESS_BYTES: usize = 512;
/// Level 1: on envelopes of alarms twice as fast as level 3 (240 against
/// 120 MB/s on this machine) for the same ratio (about 9:1).
const LEVEL: i32 = 1;
const OUT_CHUNK: usize = 64 * 1024;

/// A body's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// As it is.
    Identity,
    /// zstd frames.
    Zstd,
}

/// A `Content-Encoding` this side does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("content encoding {0:?} is not supported (only zstd)")]
pub struct Unsupported(pub String);

impl Coding {
    /// The coding a message's `Content-Encoding` names.
    ///
    /// # Errors
    /// [`Unsupported`] for anything but none, `identity` and `zstd`.
    pub fn of(headers: &HeaderMap) -> Result<Coding, Unsupported> {
        let Some(v) = headers.get(http::header::CONTENT_ENCODING) else {
            return Ok(Coding::Identity);
        };
        let s = v.to_str().unwrap_or("").trim();
        if s.eq_ignore_ascii_case(ZSTD) {
            Ok(Coding::Zstd)
        } else if s.is_empty() || s.eq_ignore_ascii_case("identity") {
            Ok(Coding::Identity)
        } else {
            Err(Unsupported(s.chars().take(64).collect()))
        }
    }
}

/// True if `headers` hold an `Accept-Encoding` that lists zstd (with a
/// non-zero q, if it has one).
pub fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut p = item.split(';');
            let coding = p.next().unwrap_or("").trim();
            let q_zero = p.any(|param| {
                param
                    .trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case(ZSTD) && !q_zero
        })
}

/// Compresses a body as one zstd frame (with its size in the frame header).
///
/// # Errors
/// Only if zstd cannot set up (out of memory); send the body uncompressed.
pub fn compress(body: &[u8]) -> std::io::Result<Bytes> {
    let mut c = zstd::bulk::Compressor::new(LEVEL)?;
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(WINDOW_LOG))?;
    Ok(Bytes::from(c.compress(body)?))
}

/// `body` compressed, if it is long enough to be worth it (and zstd could
/// set up); `None`: send it as it is.
pub fn compressed(body: &[u8]) -> Option<Bytes> {
    if body.len() < MIN_COMPRESS_BYTES {
        return None;
    }
    compress(body).ok()
}

/// Why a compressed body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    /// It decodes to more than it may.
    #[error("compressed body decodes to more than {0} bytes")]
    TooLarge(u64),
    /// Not zstd, or damaged, or cut short.
    #[error("compressed body: {0}")]
    Corrupt(String),
    /// The underlying body failed.
    #[error("{0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// A body stream decoded from zstd as it arrives, never past `limit` bytes.
pub struct Inflate<S> {
    inner: S,
    decoder: Decoder<'static>,
    input: Bytes,
    /// Where each step decodes to; what it wrote is copied out, so a
    /// short output does not pin a whole chunk.
    out: Vec<u8>,
    limit: u64,
    produced: u64,
    /// The last decoder step ended a frame, with no output held back.
    at_frame_end: bool,
    /// The last step filled its output: the decoder may hold more.
    more: bool,
    done: bool,
}

impl<S> Inflate<S> {
    /// Decodes `inner`, refusing output past `limit` bytes.
    ///
    /// # Errors
    /// Only if zstd cannot set up a decoder (out of memory).
    pub fn new(inner: S, limit: u64) -> std::io::Result<Self> {
        let mut decoder = Decoder::new()?;
        decoder.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(WINDOW_LOG))?;
        Ok(Inflate {
            inner,
            decoder,
            input: Bytes::new(),
            out: vec![0u8; OUT_CHUNK],
            limit,
            produced: 0,
            at_frame_end: false,
            more: false,
            done: false,
        })
    }

    /// One decoder step over what input is held; `Some` if it produced bytes.
    fn step(&mut self) -> Option<Result<Bytes, InflateError>> {
        let mut inb = InBuffer::around(&self.input);
        let mut outb = OutBuffer::around(&mut self.out[..]);
        let hint = match self.decoder.run(&mut inb, &mut outb) {
            Ok(h) => h,
            Err(e) => return Some(Err(InflateError::Corrupt(e.to_string()))),
        };
        let (read, written) = (inb.pos(), outb.pos());
        self.input = self.input.slice(read..);
        self.more = written == OUT_CHUNK;
        self.at_frame_end = hint == 0 && !self.more;
        if written == 0 {
            return None;
        }
        self.produced += written as u64;
        if self.produced > self.limit {
            return Some(Err(InflateError::TooLarge(self.limit)));
        }
        Some(Ok(Bytes::copy_from_slice(&self.out[..written])))
    }
}

impl<S, O, E> Stream for Inflate<S>
where
    S: Stream<Item = Result<O, E>> + Unpin,
    O: Into<Bytes>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, InflateError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.input.is_empty() || this.more {
                let before = this.input.len();
                if let Some(r) = this.step() {
                    if r.is_err() {
                        this.done = true;
                    }
                    return Poll::Ready(Some(r));
                }
                if this.input.len() < before || this.more {
                    continue;
                }
                // Input held but nothing read nor written: cannot happen
                // with zstd; treat it as damage rather than spin.
                if !this.input.is_empty() {
                    this.done = true;
                    return Poll::Ready(Some(Err(InflateError::Corrupt("decoder stalled".into()))));
                }
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => this.input = chunk.into(),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(InflateError::Body(e.into()))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if this.at_frame_end {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(InflateError::Corrupt(
                        "body ends inside a zstd frame".into(),
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn chunks(b: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let v: Vec<_> = b
            .chunks(size.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(v)
    }

    async fn inflate_all(b: &[u8], chunk: usize, limit: u64) -> Result<Vec<u8>, InflateError> {
        let mut s = Inflate::new(chunks(b, chunk), limit).unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn round_trips_in_any_chunking_and_refuses_past_the_limit() {
        let body: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let z = compress(&body).unwrap();
        assert!(z.len() < body.len() / 2);
        for chunk in [1, 7, 4096, z.len()] {
            assert_eq!(
                inflate_all(&z, chunk, body.len() as u64).await.unwrap(),
                body
            );
        }
        assert!(matches!(
            inflate_all(&z, 4096, body.len() as u64 - 1).await,
            Err(InflateError::TooLarge(_))
        ));
        // Cut short, or not zstd at all.
        assert!(matches!(
            inflate_all(&z[..z.len() - 3], 4096, u64::MAX).await,
            Err(InflateError::Corrupt(_))
        ));
        assert!(matches!(
            inflate_all(b"--B\r\n\r\nnot zstd", 4096, u64::MAX).await,
            Err(InflateError::Corrupt(_))
        ));
        // An empty body is no frame.
        assert!(inflate_all(b"", 1, 10).await.is_err());
    }

    #[tokio::test]
    async fn a_bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 16 << 20];
        let z = compress(&zeros).unwrap();
        assert!(z.len() < 4096, "{}", z.len());
        assert!(matches!(
            inflate_all(&z, 1024, 1 << 20).await,
            Err(InflateError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn a_frame_with_a_larger_window_than_allowed_is_refused() {
        let body: Vec<u8> = (0..(4u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let mut c = zstd::bulk::Compressor::new(19).unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(23))
            .unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
            .unwrap();
        let z = c.compress(&body).unwrap();
        assert!(matches!(
            inflate_all(&z, 65536, u64::MAX).await,
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn accept_encoding_lists_are_read_as_rfc_9110_says() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::ACCEPT_ENCODING, v.parse().unwrap());
            m
        };
        assert!(accepts_zstd(&h("zstd")));
        assert!(accepts_zstd(&h("gzip, ZSTD;q=0.5")));
        assert!(!accepts_zstd(&h("gzip, zstd;q=0")));
        assert!(!accepts_zstd(&h("gzip")));
        assert!(!accepts_zstd(&HeaderMap::new()));
        let mut m = HeaderMap::new();
        m.insert(http::header::CONTENT_ENCODING, "br".parse().unwrap());
        assert_eq!(Coding::of(&m), Err(Unsupported("br".into())));
        m.insert(http::header::CONTENT_ENCODING, "zstd".parse().unwrap());
        assert_eq!(Coding::of(&m), Ok(Coding::Zstd));
        assert_eq!(Coding::of(&HeaderMap::new()), Ok(Coding::Identity));
    }
}
