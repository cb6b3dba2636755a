//! The exchange envelope: `multipart/related` (RFC 2387) carrying many messages.
//!
//! # Wire form
//!
//! ```text
//! POST /rs/v1/exchange
//! Content-Type: multipart/related; type="application/xml"; start="<exchange>"; boundary=B
//!
//! --B                                    optional control part, first if present
//! Content-ID: <exchange>
//!
//! <exchange wait-ms="25000"><ack>MSGID</ack></exchange>
//! --B                                    then, per message, a header part …
//! Content-ID: <MSGID.header>
//!
//! <header id="MSGID" class="alarm" content="alarm" …>…</header>
//! --B                                    … immediately followed by its content part
//! Content-ID: <MSGID.content>
//!
//! <alarm severity="major" state="raised"><text>…</text></alarm>
//! --B--
//! ```
//!
//! Parts carry no `Content-Type`: each is `application/xml`, as the
//! envelope's `type` says (a part that has one is read all the same).
//! The body may travel zstd-compressed ([`encoding`]).
//!
//! # The compact form
//!
//! To a parent that advertises it ([`ACCEPT_FORM`]), a child sends each
//! message as **one part without part headers**: its header element (in
//! the compact shape of [`wire::encode_header_compact`]) immediately
//! followed by its content element. The message ID is the header's `id`.
//! About 240 bytes a message less than the full form on a proxy's uplink,
//! and half the parts to frame and find. A reader takes both forms, mixed
//! in one envelope: a part with a `Content-ID` is read as above, one
//! without is a whole message. Replies keep the full form (children may
//! be of an older version), except that to a child that says it reads the
//! compact form they list no acceptances by ID ([`Control::accepted_rest`]).
//!
//! The `Content-ID` names the message and the part's role, so a hop routes on
//! the header alone and passes the content on as opaque bytes. A reply uses
//! the same form: the hop's answers in its control part (see [`Control`]),
//! then any back-channel messages.
//!
//! # Errors
//!
//! Two levels, on purpose. An [`EnvelopeError`] spoils the whole body (not
//! multipart, over a size limit, parts out of order): the hop answers with an
//! HTTP error and stores nothing. An [`InvalidMessage`] spoils one message: it
//! comes back as [`Decoded::rejected`] and is answered with a `rejected`
//! response while the rest of the batch proceeds.
//!
//! Parsing is streaming ([`framing`]) and bounded: [`MAX_ENVELOPE_BYTES`],
//! [`MAX_PART_BYTES`], [`MAX_HEADER_BYTES`] and [`MAX_PARTS`] are checked as
//! bytes arrive, before anything is buffered past them.

pub mod budget;
pub mod encoding;
pub mod framing;
pub mod wire;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;

use crate::id::MessageId;
use crate::limits::{MAX_ENVELOPE_BYTES, MAX_HEADER_BYTES, MAX_PARTS, MAX_PART_BYTES};
use crate::model::{Content, Header, Hop, Message, Response, Status};
pub use wire::InvalidMessage;

/// Protocol version prefix of every node-to-node path.
pub const PROTOCOL_PREFIX: &str = "/rs/v1";
/// The path a child POSTs envelopes to.
pub const EXCHANGE_PATH: &str = "/rs/v1/exchange";
const CONTROL_ID: &str = "exchange";
/// The header by which a parent (on its answers) says it reads the
/// compact form, and a child (on a POST that carries messages) says it
/// reads compact replies ([`Control::accepted_rest`]).
pub const ACCEPT_FORM: &str = "rsnet-accept-form";
/// [`ACCEPT_FORM`]'s value.
pub const COMPACT: &str = "compact";

/// The form an [`EnvelopeWriter`] writes messages in (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Form {
    /// Two parts a message, each named by its `Content-ID`; every version reads it.
    #[default]
    Full,
    /// One part a message and compact headers; only for a parent that
    /// said [`ACCEPT_FORM`]` = compact`.
    Compact,
}

/// True if these headers (a parent's answer, or a child's POST) say
/// that their sender reads the compact form.
pub fn accepts_compact(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_FORM)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim().eq_ignore_ascii_case(COMPACT))
}
const RFC2046_MAX_BOUNDARY: usize = 70;

/// A message as it travels: a parsed header and the content as raw XML.
///
/// Relays route on the header and never parse the content; the appserver
/// and final receivers call [`Item::content`].
#[derive(Debug, Clone)]
pub struct Item {
    /// The parsed header. Change it through [`Item::header_mut`], which
    /// drops `raw`.
    pub header: Header,
    /// The content element, as XML bytes.
    pub content: Bytes,
    /// The header's bytes as received, when they can take the next hop
    /// without being written again ([`Item::header_with_hop`]).
    pub raw: Option<wire::RawHeader>,
}

/// Items are the same message if header and content are: `raw` is only
/// how the header was received.
impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header && self.content == other.content
    }
}
impl Eq for Item {}

impl Item {
    /// Wraps a whole message (encodes its content once).
    pub fn new(m: &Message) -> Self {
        Item::of(
            m.header.clone(),
            Bytes::from(wire::encode_content(&m.content)),
        )
    }

    /// An item of a header and content XML made here (nothing received).
    pub fn of(header: Header, content: Bytes) -> Self {
        Item {
            header,
            content,
            raw: None,
        }
    }

    /// The header, to change: the received bytes no longer stand for it.
    pub fn header_mut(&mut self) -> &mut Header {
        self.raw = None;
        &mut self.header
    }

    /// The header with `hop` added to its routing list, as compact XML:
    /// the received bytes with the hop put in where they allow it
    /// ([`wire::RawHeader`]), else written anew.
    pub fn header_with_hop(&self, hop: &Hop) -> Bytes {
        let with = |h: &Header| {
            let mut h = h.clone();
            h.routing.push(hop.clone());
            h
        };
        match &self.raw {
            Some(raw) => {
                let b = raw.with_hop(hop, self.header.created);
                // (One hop too many reads as an error; the budget refuses it.)
                debug_assert!(
                    self.header.routing.len() >= crate::limits::MAX_ROUTING_HOPS
                        || wire::decode_header(&b).ok() == Some(with(&self.header)),
                    "a header was changed but kept its received bytes"
                );
                b
            }
            None => {
                let b = Bytes::from(wire::encode_header_compact_with_hop(&self.header, hop));
                debug_assert_eq!(b, wire::encode_header_compact(&with(&self.header)));
                b
            }
        }
    }

    /// Parses the content, checking it matches the header's kind.
    ///
    /// # Errors
    /// [`InvalidMessage`] naming the failing field.
    pub fn content(&self) -> Result<Content, InvalidMessage> {
        wire::decode_content(&self.content, self.header.kind)
    }

    /// Parses into a whole message.
    ///
    /// # Errors
    /// As [`Item::content`].
    pub fn message(&self) -> Result<Message, InvalidMessage> {
        Ok(Message {
            header: self.header.clone(),
            content: self.content()?,
        })
    }
}

/// The control part: the hop's answers for the messages it was sent, acks
/// for back-channel messages and a long-poll hint.
///
/// Answers are per hop, not messages: `accepted` lists every message the
/// parent accepted in one text node, and only the exceptions (rejected, or
/// retry later) get a `<response>` element each. A batch of 1,000 accepted
/// alarms is answered in 37 KB of one element rather than 2,000 parts.
///
/// To a child that reads the compact form (it says so with [`ACCEPT_FORM`]
/// on a POST that carries messages) the parent lists no acceptances at
/// all: `accepted_rest` says that every message of the request without a
/// `<response>` was accepted. The 37 bytes a message this saves are most
/// of what a reply costs on a slow link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// How long the sender is willing to wait for a reply when it has nothing to send.
    pub wait_ms: Option<u64>,
    /// Back-channel messages received in earlier replies.
    pub acks: Vec<MessageId>,
    /// Messages of the request the parent accepted (reply only).
    pub accepted: Vec<MessageId>,
    /// Answers other than a plain "accepted" (reply only).
    pub responses: Vec<Response>,
    /// Every message of the request that `responses` does not answer was
    /// accepted (reply only, to a child that reads the compact form).
    pub accepted_rest: bool,
}

impl Control {
    /// The wait hint as a duration.
    pub fn wait(&self) -> Option<Duration> {
        self.wait_ms.map(Duration::from_millis)
    }

    /// Records a hop answer: a plain acceptance joins `accepted`, anything
    /// else (a rejection, or an acceptance with a correlation) `responses`.
    pub fn answer(&mut self, a: Response) {
        if a.status == Status::Accepted && a.correlation.is_none() {
            self.accepted.push(a.request);
        } else {
            self.responses.push(a);
        }
    }

    /// Every answer, by the message it answers.
    pub fn answers(&self) -> HashMap<MessageId, Response> {
        let mut m = HashMap::with_capacity(self.accepted.len() + self.responses.len());
        for id in &self.accepted {
            m.insert(*id, Response::accepted(*id, None));
        }
        for r in &self.responses {
            m.insert(r.request, r.clone());
        }
        m
    }

    /// The answers for the messages `sent` in the request, by message:
    /// [`Control::answers`], and with `accepted_rest` an acceptance for
    /// each message sent that has no other answer. A message the reply
    /// does not answer has no entry (the sender keeps it and sends it
    /// again).
    pub fn answers_for(
        &self,
        sent: impl IntoIterator<Item = MessageId>,
    ) -> HashMap<MessageId, Response> {
        let mut m = self.answers();
        if self.accepted_rest {
            for id in sent {
                m.entry(id).or_insert_with(|| Response::accepted(id, None));
            }
        }
        m
    }

    /// Writes plain acceptances as `accepted_rest` instead of by ID.
    /// Only for a reply that answers every message of its request, to a
    /// child that reads the compact form.
    pub fn accept_rest(&mut self) {
        self.accepted.clear();
        self.accepted_rest = true;
    }

    fn is_empty(&self) -> bool {
        !self.accepted_rest
            && self.wait_ms.is_none()
            && self.acks.is_empty()
            && self.accepted.is_empty()
            && self.responses.is_empty()
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// A message that could not be parsed, with the ID its `Content-ID` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The message ID from the part's `Content-ID`.
    pub id: MessageId,
    /// What is wrong.
    pub error: InvalidMessage,
}

/// A decoded envelope: the control part, good items and rejected ones, in order.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The control part (empty if absent).
    pub control: Control,
    /// Messages that parsed.
    pub items: Vec<Item>,
    /// Messages that did not.
    pub rejected: Vec<Rejected>,
}

/// Why a whole envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not `multipart/related` with a usable boundary (HTTP 415).
    #[error("content type: {0}")]
    ContentType(String),
    /// The body or a part is over its limit (HTTP 413).
    #[error("{what} larger than {limit} bytes")]
    TooLarge {
        /// `body`, `decoded body`, `part` or `header part`.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// More parts than [`MAX_PARTS`] (HTTP 413).
    #[error("more than {0} parts")]
    TooManyParts(usize),
    /// Broken framing, a missing or bad `Content-ID`, parts out of order (HTTP 400).
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

impl EnvelopeError {
    /// The HTTP status a hop answers with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            EnvelopeError::ContentType(_) => http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EnvelopeError::TooLarge { .. } | EnvelopeError::TooManyParts(_) => {
                http::StatusCode::PAYLOAD_TOO_LARGE
            }
            EnvelopeError::Malformed(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Builds an envelope body part by part.
pub struct EnvelopeWriter {
    boundary: String,
    buf: BytesMut,
    messages: usize,
    has_control: bool,
    form: Form,
}

impl Default for EnvelopeWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvelopeWriter {
    /// An empty envelope in the full form, with a fresh random boundary.
    pub fn new() -> Self {
        Self::in_form(Form::Full)
    }

    /// An empty envelope in `form`, with a fresh random boundary.
    pub fn in_form(form: Form) -> Self {
        EnvelopeWriter {
            boundary: fresh_boundary(),
            buf: BytesMut::with_capacity(4096),
            messages: 0,
            has_control: false,
            form,
        }
    }

    /// The form messages are written in.
    pub fn form(&self) -> Form {
        self.form
    }

    /// A part: its `Content-ID` and body. Parts carry no `Content-Type`
    /// of their own: every part is `application/xml`, as the envelope's
    /// `type` parameter says, and 31 bytes a part are worth saving on a
    /// slow link.
    fn part(&mut self, content_id: std::fmt::Arguments<'_>, body: &[u8]) {
        self.buf.put_slice(b"--");
        self.buf.put_slice(self.boundary.as_bytes());
        self.buf.put_slice(b"\r\nContent-ID: <");
        let _ = std::fmt::Write::write_fmt(&mut BufWriter(&mut self.buf), content_id);
        self.buf.put_slice(b">\r\n\r\n");
        self.buf.put_slice(body);
        self.buf.put_slice(b"\r\n");
    }

    /// Adds the control part; call first, and only if it has something to say.
    pub fn control(&mut self, c: &Control) -> &mut Self {
        if !c.is_empty() {
            let xml = wire::encode_control(c);
            self.part(format_args!("{CONTROL_ID}"), xml.as_bytes());
            self.has_control = true;
        }
        self
    }

    /// Makes room for `messages` more messages of `payload` header and
    /// content bytes in all, with their framing, so that a large envelope
    /// is not copied as its buffer grows.
    pub fn reserve_for(&mut self, messages: usize, payload: usize) -> &mut Self {
        // Per message: the delimiter line and the part's line breaks; in
        // the full form, two parts with their Content-IDs.
        let framing = match self.form {
            Form::Compact => self.boundary.len() + 10,
            Form::Full => 2 * (self.boundary.len() + 70),
        };
        self.buf
            .reserve(payload.saturating_add(messages.saturating_mul(framing)) + 64);
        self
    }

    /// Adds a message whose header and content are already XML, the
    /// header in the writer's form (a full header is a valid compact one).
    /// In the compact form a message too large for one part travels in
    /// two, as in the full form.
    pub fn raw(&mut self, id: &MessageId, header_xml: &[u8], content_xml: &[u8]) -> &mut Self {
        if self.form == Form::Compact
            && header_xml.len() + content_xml.len() <= MAX_PART_BYTES as usize
        {
            // No part headers. The empty header section is followed by one
            // more line break, which is where some multipart readers (multer
            // among them) look for the end of part headers; to a reader by
            // the RFC, as [`framing`] is, the body starts with that line
            // break, which XML ignores.
            self.buf.put_slice(b"--");
            self.buf.put_slice(self.boundary.as_bytes());
            self.buf.put_slice(b"\r\n\r\n\r\n");
            self.buf.put_slice(header_xml);
            self.buf.put_slice(content_xml);
            self.buf.put_slice(b"\r\n");
        } else {
            self.part(format_args!("{id}.header"), header_xml);
            self.part(format_args!("{id}.content"), content_xml);
        }
        self.messages += 1;
        self
    }

    /// Adds an item (encodes its header in the writer's form).
    pub fn item(&mut self, item: &Item) -> &mut Self {
        let h = self.header(&item.header);
        self.raw(&item.header.id, h.as_bytes(), &item.content)
    }

    /// Adds a whole message.
    pub fn message(&mut self, m: &Message) -> &mut Self {
        let h = self.header(&m.header);
        let c = wire::encode_content(&m.content);
        self.raw(&m.header.id, h.as_bytes(), c.as_bytes())
    }

    fn header(&self, h: &Header) -> String {
        match self.form {
            Form::Full => wire::encode_header(h),
            Form::Compact => wire::encode_header_compact(h),
        }
    }

    /// Messages added so far.
    pub fn len(&self) -> usize {
        self.messages
    }

    /// True if no message was added.
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Bytes so far.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// The `Content-Type` header value and the body.
    pub fn finish(mut self) -> (String, Bytes) {
        self.buf.put_slice(b"--");
        self.buf.put_slice(self.boundary.as_bytes());
        self.buf.put_slice(b"--\r\n");
        // RFC 2387: `start` names the root part; without it the first part is the root.
        let start = if self.has_control {
            format!("; start=\"<{CONTROL_ID}>\"")
        } else {
            String::new()
        };
        let ct = format!(
            "multipart/related; type=\"application/xml\"{start}; boundary={}",
            self.boundary
        );
        (ct, self.buf.freeze())
    }
}

/// 16 characters from a secure random source (95 bits): no content can
/// hold it but by a chance nobody will see, and none can be made to, as
/// nobody knows it before the envelope is written.
fn fresh_boundary() -> String {
    const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut raw = [0u8; 16];
    if !crate::random::fill(&mut raw) {
        // No system randomness: fall back to a v7 UUID's random bits.
        return format!("rsnet-{}", uuid::Uuid::now_v7().simple());
    }
    // 62 does not divide 256: the slight bias leaves over 5.9 bits a character.
    raw.iter()
        .map(|b| ALPHABET[*b as usize % 62] as char)
        .collect()
}

struct BufWriter<'a>(&'a mut BytesMut);
impl std::fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// Extracts the boundary from a `multipart/related` content type.
///
/// # Errors
/// [`EnvelopeError::ContentType`] for anything else.
pub fn boundary(content_type: &str) -> Result<String, EnvelopeError> {
    let m: mime::Mime = content_type
        .parse()
        .map_err(|_| EnvelopeError::ContentType(format!("{content_type:?} is not a media type")))?;
    if m.type_() != mime::MULTIPART || m.subtype() != "related" {
        return Err(EnvelopeError::ContentType(format!(
            "{} is not multipart/related",
            m.essence_str()
        )));
    }
    let b = m
        .get_param(mime::BOUNDARY)
        .ok_or_else(|| EnvelopeError::ContentType("no boundary parameter".into()))?;
    if b.as_str().is_empty() || b.as_str().len() > RFC2046_MAX_BOUNDARY {
        return Err(EnvelopeError::ContentType(
            "boundary must be 1-70 characters".into(),
        ));
    }
    Ok(b.as_str().to_string())
}

/// Reads a compact message part (module docs) into `out`.
fn compact_message(index: usize, bytes: Bytes, out: &mut Decoded) -> Result<(), EnvelopeError> {
    match wire::decode_leading_header(&bytes) {
        Ok((_, end, _)) if end > MAX_HEADER_BYTES => Err(EnvelopeError::TooLarge {
            what: "header",
            limit: MAX_HEADER_BYTES as u64,
        }),
        Ok((header, end, raw)) => {
            out.items.push(Item {
                header,
                content: bytes.slice(end..),
                raw,
            });
            Ok(())
        }
        Err((Some(id), error)) => {
            out.rejected.push(Rejected { id, error });
            Ok(())
        }
        // Nothing to answer it by: the sender halves the envelope and
        // rejects this message for good.
        Err((None, e)) => Err(EnvelopeError::Malformed(format!(
            "part {index} has no Content-ID and no readable header id: {e}"
        ))),
    }
}

fn split_cid(cid: &str) -> Result<(MessageId, &str), EnvelopeError> {
    let (id, role) = cid.rsplit_once('.').ok_or_else(|| {
        EnvelopeError::Malformed(format!("Content-ID <{cid}> is not <MSGID.role>"))
    })?;
    let id = id
        .parse()
        .map_err(|e| EnvelopeError::Malformed(format!("Content-ID <{cid}>: {e}")))?;
    Ok((id, role))
}

/// Decodes an envelope from a body stream, enforcing every limit as bytes arrive.
///
/// # Errors
/// [`EnvelopeError`] if the body as a whole is unusable; per-message problems
/// land in [`Decoded::rejected`] instead.
///
/// # Cancel safety
/// Dropping the future drops the partially read body; nothing is stored by decoding.
pub async fn decode<S, O, E>(content_type: &str, body: S) -> Result<Decoded, EnvelopeError>
where
    S: Stream<Item = Result<O, E>> + Send + 'static,
    O: Into<Bytes> + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let boundary = boundary(content_type)?;
    let mut reader = framing::Parts::new(
        Box::pin(body),
        &boundary,
        MAX_ENVELOPE_BYTES,
        MAX_PART_BYTES as usize,
    );
    let mut out = Decoded::default();
    type Pending = Result<(Header, Option<wire::RawHeader>), InvalidMessage>;
    let mut pending: Option<(MessageId, Pending)> = None;
    let mut parts = 0usize;
    while let Some(part) = reader.next().await? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(EnvelopeError::TooManyParts(MAX_PARTS));
        }
        let (index, cid, bytes) = (part.index, part.content_id, part.body);
        let Some(cid) = cid else {
            if let Some((prev, _)) = pending {
                return Err(EnvelopeError::Malformed(format!(
                    "header of {prev} has no content part"
                )));
            }
            compact_message(index, bytes, &mut out)?;
            continue;
        };
        if cid == CONTROL_ID {
            if parts != 1 {
                return Err(EnvelopeError::Malformed(
                    "control part <exchange> must come first".into(),
                ));
            }
            out.control = wire::decode_control(&bytes)
                .map_err(|e| EnvelopeError::Malformed(format!("control part: {e}")))?;
            continue;
        }
        let (id, role) = split_cid(&cid)?;
        match role {
            "header" => {
                if let Some((prev, _)) = pending {
                    return Err(EnvelopeError::Malformed(format!(
                        "header of {prev} has no content part"
                    )));
                }
                if bytes.len() > MAX_HEADER_BYTES {
                    return Err(EnvelopeError::TooLarge {
                        what: "header part",
                        limit: MAX_HEADER_BYTES as u64,
                    });
                }
                let header = wire::decode_received_header(&bytes).and_then(|(h, raw)| {
                    if h.id == id {
                        Ok((h, raw))
                    } else {
                        Err(InvalidMessage::Field {
                            field: "header/@id".into(),
                            reason: format!("{} differs from Content-ID {id}", h.id),
                        })
                    }
                });
                pending = Some((id, header));
            }
            "content" => match pending.take() {
                Some((hid, header)) if hid == id => match header {
                    Ok((header, raw)) => out.items.push(Item {
                        header,
                        content: bytes,
                        raw,
                    }),
                    Err(error) => out.rejected.push(Rejected { id, error }),
                },
                _ => {
                    return Err(EnvelopeError::Malformed(format!(
                        "content part of {id} does not follow its header"
                    )))
                }
            },
            other => {
                return Err(EnvelopeError::Malformed(format!(
                    "unknown part role {other:?} in <{cid}>"
                )))
            }
        }
    }
    if let Some((id, _)) = pending {
        return Err(EnvelopeError::Malformed(format!(
            "header of {id} has no content part"
        )));
    }
    Ok(out)
}

/// Decodes an envelope sent with content coding `coding`, whose decoded
/// form may be at most `limit` bytes (and never over [`MAX_ENVELOPE_BYTES`]).
///
/// # Errors
/// As [`decode`]; a compressed body that decodes past the limit is
/// [`EnvelopeError::TooLarge`], a damaged one [`EnvelopeError::Malformed`].
pub async fn decode_coded<S, O, E>(
    content_type: &str,
    coding: encoding::Coding,
    limit: u64,
    body: S,
) -> Result<Decoded, EnvelopeError>
where
    S: Stream<Item = Result<O, E>> + Send + Unpin + 'static,
    O: Into<Bytes> + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    match coding {
        encoding::Coding::Identity => decode(content_type, body).await,
        encoding::Coding::Zstd => {
            let inflate = encoding::Inflate::new(body, limit.min(MAX_ENVELOPE_BYTES))
                .map_err(|e| EnvelopeError::Malformed(format!("zstd: {e}")))?;
            decode(content_type, inflate).await
        }
    }
}

/// Decodes an envelope already held in memory (tests, fuzzing, replies).
///
/// # Errors
/// As [`decode`].
pub async fn decode_bytes(content_type: &str, body: Bytes) -> Result<Decoded, EnvelopeError> {
    let s = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    decode(content_type, s).await
}

/// A test event from `origin` with `hops` in its routing list.
#[cfg(test)]
pub(crate) fn test_item(origin: &str, hops: &[&str]) -> Item {
    use crate::model::{Content, Event, Hop, Timestamp};
    let mut m = Message::forward(
        origin.parse().expect("test origin"),
        "event",
        None,
        Content::Event(Event {
            support_instance: None,
            text: String::new(),
            data: None,
        }),
    );
    m.header.routing = hops
        .iter()
        .map(|h| Hop {
            id: h.parse().expect("test hop"),
            time: Timestamp::now(),
        })
        .collect();
    Item::new(&m)
}

#[cfg(test)]
mod tests;
