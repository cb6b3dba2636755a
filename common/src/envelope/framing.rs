//! The envelope's framing reader: the parts of a `multipart/related` body
//! (RFC 2046 §5.1), as the body streams in, within bounds.
//!
//! Written for this one job rather than taken from a general multipart
//! reader: one delimiter search per part with a searcher built once per
//! body, part bodies handed out as slices of the read buffer (no copy),
//! and only the `Content-ID` header looked at. It also reads an empty part
//! header section as the RFC says (the compact form's parts have none).
//!
//! Bounds: the whole body ([`MAX_ENVELOPE_BYTES`] or less), each part
//! body, and each part's header section ([`MAX_PART_HEAD_BYTES`]) are
//! checked as bytes arrive, before more is buffered.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::{encoding, EnvelopeError};

/// The most a part's header section may take.
pub const MAX_PART_HEAD_BYTES: usize = 8 * 1024;

/// One part: its `Content-ID` (without the angle brackets) if it has one,
/// and its body.
#[derive(Debug)]
pub struct Part {
    /// Position in the body, from 0.
    pub index: usize,
    /// The `Content-ID`, if the part has one.
    pub content_id: Option<String>,
    /// The body, a slice of the read buffer.
    pub body: Bytes,
}

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the first delimiter.
    Preamble,
    /// Just after a delimiter: `--` (the end) or the end of its line.
    AfterDelimiter,
    /// At a part's header section.
    Head,
    /// At a part's body.
    Body,
    /// After the close delimiter.
    Done,
}

/// Reads parts from a body stream. See the module docs.
pub struct Parts<S> {
    body: S,
    eof: bool,
    buf: BytesMut,
    /// `CRLF--boundary`.
    delimiter: memchr::memmem::Finder<'static>,
    delimiter_len: usize,
    at: At,
    read: u64,
    max_body: u64,
    max_part: usize,
    index: usize,
    content_id: Option<String>,
    /// How far the buffer was searched for the delimiter without a match.
    searched: usize,
}

impl<S, O, E> Parts<S>
where
    S: Stream<Item = Result<O, E>> + Unpin,
    O: Into<Bytes>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A reader of `body`, split at `boundary`, taking at most `max_body`
    /// bytes in all and `max_part` in one part's body.
    pub fn new(body: S, boundary: &str, max_body: u64, max_part: usize) -> Self {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        let delimiter_len = delimiter.len();
        // The first delimiter may open the body: a line break is read before it.
        let mut buf = BytesMut::with_capacity(16 * 1024);
        buf.extend_from_slice(b"\r\n");
        Parts {
            body,
            eof: false,
            buf,
            delimiter: memchr::memmem::Finder::new(&delimiter).into_owned(),
            delimiter_len,
            at: At::Preamble,
            read: 0,
            max_body,
            max_part,
            index: 0,
            content_id: None,
            searched: 0,
        }
    }

    /// Reads more of the body into the buffer; `false` at its end.
    async fn fill(&mut self) -> Result<bool, EnvelopeError> {
        if self.eof {
            return Ok(false);
        }
        match self.body.next().await {
            None => {
                self.eof = true;
                Ok(false)
            }
            Some(Err(e)) => Err(stream_error(e.into())),
            Some(Ok(chunk)) => {
                let chunk: Bytes = chunk.into();
                self.read += chunk.len() as u64;
                if self.read > self.max_body {
                    return Err(EnvelopeError::TooLarge {
                        what: "body",
                        limit: self.max_body,
                    });
                }
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
        }
    }

    /// Reads more, or fails: the body ended inside the framing.
    async fn need_more(&mut self, inside: &str) -> Result<(), EnvelopeError> {
        if self.fill().await? {
            Ok(())
        } else {
            Err(EnvelopeError::Malformed(format!(
                "body ends inside {inside}"
            )))
        }
    }

    /// Finds the next delimiter in the buffer, reading as needed; returns
    /// its offset. Fails once more than `limit` bytes lie before it.
    async fn find_delimiter(
        &mut self,
        limit: usize,
        what: &'static str,
    ) -> Result<usize, EnvelopeError> {
        loop {
            let from = self.searched.saturating_sub(self.delimiter_len - 1);
            if let Some(i) = self.delimiter.find(&self.buf[from..]) {
                self.searched = 0;
                return Ok(from + i);
            }
            self.searched = self.buf.len();
            if self.buf.len() > limit + self.delimiter_len {
                return Err(EnvelopeError::TooLarge {
                    what,
                    limit: limit as u64,
                });
            }
            self.need_more(what).await?;
        }
    }

    /// The next part, `None` after the close delimiter.
    ///
    /// # Errors
    /// [`EnvelopeError::Malformed`] for broken framing or a body that ends
    /// inside it; [`EnvelopeError::TooLarge`] past a bound.
    pub async fn next(&mut self) -> Result<Option<Part>, EnvelopeError> {
        loop {
            match self.at {
                At::Done => return Ok(None),
                At::Preamble => {
                    // The preamble is bounded like a part's head.
                    let i = self.find_delimiter(MAX_PART_HEAD_BYTES, "preamble").await?;
                    self.buf.advance(i + self.delimiter_len);
                    self.at = At::AfterDelimiter;
                }
                At::AfterDelimiter => {
                    while self.buf.len() < 2 {
                        self.need_more("a delimiter").await?;
                    }
                    if self.buf.starts_with(b"--") {
                        // The close delimiter: what follows is the epilogue, ignored.
                        self.at = At::Done;
                        return Ok(None);
                    }
                    // Transport padding (spaces, tabs), then the line break.
                    loop {
                        let pad = self
                            .buf
                            .iter()
                            .take_while(|b| matches!(b, b' ' | b'\t'))
                            .count();
                        if pad > 1024 {
                            return Err(EnvelopeError::Malformed(
                                "padding after a delimiter".into(),
                            ));
                        }
                        if self.buf.len() >= pad + 2 {
                            if &self.buf[pad..pad + 2] != b"\r\n" {
                                return Err(EnvelopeError::Malformed(
                                    "a delimiter is not followed by a line break".into(),
                                ));
                            }
                            self.buf.advance(pad + 2);
                            break;
                        }
                        self.need_more("a delimiter").await?;
                    }
                    self.at = At::Head;
                }
                At::Head => {
                    // An empty header section is the line break alone.
                    let end = loop {
                        if self.buf.starts_with(b"\r\n") {
                            break 0;
                        }
                        if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                            break i + 2;
                        }
                        if self.buf.len() > MAX_PART_HEAD_BYTES {
                            return Err(EnvelopeError::TooLarge {
                                what: "part headers",
                                limit: MAX_PART_HEAD_BYTES as u64,
                            });
                        }
                        self.need_more("part headers").await?;
                    };
                    if end > MAX_PART_HEAD_BYTES {
                        return Err(EnvelopeError::TooLarge {
                            what: "part headers",
                            limit: MAX_PART_HEAD_BYTES as u64,
                        });
                    }
                    let head = self.buf.split_to(end);
                    self.buf.advance(2);
                    self.content_id = content_id(&head, self.index)?;
                    self.at = At::Body;
                }
                At::Body => {
                    let i = self.find_delimiter(self.max_part, "part").await?;
                    if i > self.max_part {
                        return Err(EnvelopeError::TooLarge {
                            what: "part",
                            limit: self.max_part as u64,
                        });
                    }
                    let body = self.buf.split_to(i).freeze();
                    self.buf.advance(self.delimiter_len);
                    self.at = At::AfterDelimiter;
                    let index = self.index;
                    self.index += 1;
                    return Ok(Some(Part {
                        index,
                        content_id: self.content_id.take(),
                        body,
                    }));
                }
            }
        }
    }
}

/// The `Content-ID` among a part's header lines, without its brackets.
fn content_id(head: &[u8], index: usize) -> Result<Option<String>, EnvelopeError> {
    let mut found = None;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(EnvelopeError::Malformed(format!(
                "part {index}: a header line without a colon"
            )));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-id") && found.is_none() {
            let v = std::str::from_utf8(value)
                .map_err(|_| EnvelopeError::Malformed("Content-ID is not ASCII".into()))?;
            found = Some(
                v.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            );
        }
    }
    Ok(found)
}

/// An error of the body stream: a decoded body past its limit is 413,
/// anything else (a damaged compressed body, a broken connection) 400.
fn stream_error(e: Box<dyn std::error::Error + Send + Sync>) -> EnvelopeError {
    match e.downcast::<encoding::InflateError>() {
        Ok(i) => match *i {
            encoding::InflateError::TooLarge(limit) => EnvelopeError::TooLarge {
                what: "decoded body",
                limit,
            },
            other => EnvelopeError::Malformed(other.to_string()),
        },
        Err(other) => EnvelopeError::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Content-ID and body of each part.
    type Read = Vec<(Option<String>, Vec<u8>)>;

    /// All parts of `body` read in chunks of `chunk` bytes, or the error.
    fn read(
        body: &[u8],
        chunk: usize,
        max_body: u64,
        max_part: usize,
    ) -> Result<Read, EnvelopeError> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(chunk.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        rt(async move {
            let mut p = Parts::new(futures_util::stream::iter(chunks), "B", max_body, max_part);
            let mut out = Vec::new();
            while let Some(part) = p.next().await? {
                out.push((part.content_id, part.body.to_vec()));
            }
            Ok(out)
        })
    }

    const BODY: &[u8] = b"preamble, ignored\r\n--B\r\nContent-ID: <one>\r\nX-Other: x\r\n\r\nfirst\r\n--Bx is not a delimiter\r\n--B  \t\r\ncontent-id:   <two> \r\n\r\n\r\n--B\r\n\r\nthird, no headers\r\n--B--\r\nepilogue, ignored";

    #[test]
    fn parts_are_read_the_same_however_the_body_is_cut() {
        let want = vec![
            (
                Some("one".to_string()),
                b"first\r\n--Bx is not a delimiter".to_vec(),
            ),
            (Some("two".to_string()), b"".to_vec()),
            (None, b"third, no headers".to_vec()),
        ];
        // "--Bx" inside a body is no delimiter only if "x" may follow one:
        // by the RFC it may not, so such a body is refused.
        assert!(read(BODY, BODY.len(), 1 << 20, 1 << 20).is_err());
        let body = String::from_utf8_lossy(BODY).replace("--Bx", "-- Bx");
        let want: Vec<_> = want
            .into_iter()
            .map(|(c, b)| {
                (
                    c,
                    String::from_utf8_lossy(&b)
                        .replace("--Bx", "-- Bx")
                        .into_bytes(),
                )
            })
            .collect();
        for chunk in [1, 2, 3, 7, 16, body.len()] {
            assert_eq!(
                read(body.as_bytes(), chunk, 1 << 20, 1 << 20).unwrap(),
                want,
                "chunks of {chunk}"
            );
        }
        // The first delimiter may open the body.
        let parts = read(b"--B\r\n\r\nonly\r\n--B--", 4, 1 << 20, 1 << 20).unwrap();
        assert_eq!(parts, vec![(None, b"only".to_vec())]);
    }

    #[test]
    fn broken_framing_and_bounds_are_errors() {
        let status = |body: &[u8], max_body: u64, max_part: usize| {
            read(body, 5, max_body, max_part)
                .map(|_| ())
                .unwrap_err()
                .status()
        };
        use http::StatusCode as S;
        // Never closed, ended inside headers, a header line without a colon, no delimiter at all.
        assert_eq!(status(b"--B\r\n\r\nbody", 1 << 20, 1 << 20), S::BAD_REQUEST);
        assert_eq!(
            status(b"--B\r\nContent-ID: <a>", 1 << 20, 1 << 20),
            S::BAD_REQUEST
        );
        assert_eq!(
            status(b"--B\r\nno colon\r\n\r\nx\r\n--B--", 1 << 20, 1 << 20),
            S::BAD_REQUEST
        );
        assert_eq!(
            status(b"no delimiter here", 1 << 20, 1 << 20),
            S::BAD_REQUEST
        );
        // A part over its bound, a body over its bound, headers over theirs.
        assert_eq!(
            status(b"--B\r\n\r\n0123456789\r\n--B--", 1 << 20, 4),
            S::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(b"--B\r\n\r\n0123456789\r\n--B--", 12, 1 << 20),
            S::PAYLOAD_TOO_LARGE
        );
        let mut big = b"--B\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'h', MAX_PART_HEAD_BYTES + 10));
        big.extend_from_slice(b"\r\n\r\nx\r\n--B--");
        assert_eq!(status(&big, 1 << 20, 1 << 20), S::PAYLOAD_TOO_LARGE);
        // A part over its bound is refused before the rest is buffered.
        let endless = futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(Bytes::from_static(b"xxxxxxxxxxxxxxxx"))
        });
        let e = rt(async {
            let mut p = Parts::new(
                Box::pin(futures_util::StreamExt::chain(
                    futures_util::stream::iter([Ok(Bytes::from_static(b"--B\r\n\r\n"))]),
                    endless,
                )),
                "B",
                u64::MAX,
                1024,
            );
            p.next().await.map(|_| ())
        })
        .unwrap_err();
        assert_eq!(e.status(), S::PAYLOAD_TOO_LARGE);
    }
}
