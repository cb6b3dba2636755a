//! The message model (DESIGN.md §3): one header plus one content element.
//!
//! These are the domain types every node works with. They are always valid:
//! the wire form (`envelope::wire`) converts into them with `TryFrom`, and
//! anything that fails names the offending field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{ComponentId, GroupName, MessageId};

/// Milliseconds since the Unix epoch; what every timestamp in the model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Now, by the wall clock.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }
    /// The latest time RFC 3339 can write: 9999-12-31T23:59:59.999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);
    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn after(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64)
                .min(Self::MAX.0),
        )
    }
    /// RFC 3339 with milliseconds, UTC (`2026-11-22T15:33:00.123Z`); a time
    /// past [`Timestamp::MAX`] is written as that.
    pub fn to_rfc3339(self) -> String {
        let ms = self.0.min(Self::MAX.0);
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }
    /// Parses RFC 3339 (UTC, `Z` suffix).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t = humantime::parse_rfc3339(s).ok()?;
        Some(Timestamp(
            t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64
        ))
    }
}

/// Quality of service carried by every message (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    /// After this the message is dropped (with a logged notice) wherever it sits.
    pub expiry: Option<Timestamp>,
    /// Higher goes first; 0..=9, default 4.
    pub precedence: u8,
    /// Kept at the expense of non-persistent messages of equal precedence when a spool is full.
    pub persistence: bool,
}

/// Report stage: the back-channel message is stored at its destination.
pub const DELIVERED: &str = "delivered";
/// Report stage: the destination processed it (accepted) or failed to (rejected).
pub const PROCESSED: &str = "processed";

/// Highest precedence value.
pub const MAX_PRECEDENCE: u8 = 9;

impl Default for Qos {
    fn default() -> Self {
        Qos {
            expiry: None,
            precedence: 4,
            persistence: true,
        }
    }
}

impl Qos {
    /// True if the message has expired at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

/// Where a forward message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The originating component or support instance.
    pub origin: ComponentId,
    /// Version of the originating component's software, if it said.
    pub version: Option<String>,
}

/// Where a back-channel message goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Destination {
    /// Final destination IDs.
    pub ids: Vec<ComponentId>,
    /// A group, expanded by the appserver.
    pub group: Option<GroupName>,
}

/// Forward (up) or back-channel (down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// A forward message, from its source.
    Source(Source),
    /// A back-channel message, to its destinations.
    Destination(Destination),
}

/// One routing element: a hop the message passed, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The hop's component ID.
    pub id: ComponentId,
    /// When it passed.
    pub time: Timestamp,
}

/// The six content kinds (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentKind {
    /// [`Alarm`]
    Alarm,
    /// [`Event`]
    Event,
    /// [`Response`]
    Response,
    /// [`BulkRequest`]
    BulkRequest,
    /// [`BulkResponse`]
    BulkResponse,
    /// [`Data`]
    Data,
}

impl ContentKind {
    /// Every kind, in discriminant order (`ALL[k as usize] == k`).
    pub const ALL: [ContentKind; 6] = [
        ContentKind::Alarm,
        ContentKind::Event,
        ContentKind::Response,
        ContentKind::BulkRequest,
        ContentKind::BulkResponse,
        ContentKind::Data,
    ];

    /// The XML element name and the header's `content` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Alarm => "alarm",
            ContentKind::Event => "event",
            ContentKind::Response => "response",
            ContentKind::BulkRequest => "bulk-request",
            ContentKind::BulkResponse => "bulk-response",
            ContentKind::Data => "data",
        }
    }
    /// The inverse of [`ContentKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Message header (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Unique, time-ordered.
    pub id: MessageId,
    /// Routes the message to service modules (`alarm`, `infrastructure`, …).
    pub class: String,
    /// Finer routing (`heartbeat`, `disk`, …).
    pub subclass: Option<String>,
    /// Which content element follows, so a hop can route without parsing it.
    pub kind: ContentKind,
    /// When the message was made.
    pub created: Timestamp,
    /// Source (forward) or destination (back-channel).
    pub direction: Direction,
    /// Expiry, precedence, persistence.
    pub qos: Qos,
    /// Every hop appends itself.
    pub routing: Vec<Hop>,
}

impl Header {
    /// The source of a forward message, if this is one.
    pub fn source(&self) -> Option<&Source> {
        match &self.direction {
            Direction::Source(s) => Some(s),
            Direction::Destination(_) => None,
        }
    }
}

/// Alarm severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Cleared / informational.
    Clear,
    /// Informational.
    Info,
    /// Warning.
    Warning,
    /// Minor.
    Minor,
    /// Major.
    Major,
    /// Critical.
    Critical,
}

/// Alarm state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    /// Newly raised.
    Raised,
    /// Updated while active.
    Updated,
    /// Cleared.
    Cleared,
}

/// An alarm from a support instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// How bad.
    pub severity: Severity,
    /// Raised, updated or cleared.
    pub state: AlarmState,
    /// The support instance it concerns.
    pub support_instance: Option<ComponentId>,
    /// Human-readable text.
    pub text: String,
    /// Optional attached data.
    pub data: Option<Data>,
}

/// A stateless notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The support instance it concerns.
    pub support_instance: Option<ComponentId>,
    /// Human-readable text.
    pub text: String,
    /// Optional attached data.
    pub data: Option<Data>,
}

/// Outcome of a processed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Taken: stored, or accepted by the next hop.
    Accepted,
    /// Not taken; see reason and retry-after.
    Rejected,
}

/// Status of a processed message (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The message this answers.
    pub request: MessageId,
    /// Accepted or rejected.
    pub status: Status,
    /// Why, when rejected.
    pub reason: Option<String>,
    /// When to try again; absent on a rejection means "never" (permanent).
    pub retry_after: Option<Duration>,
    /// The receiver's own ID for the message.
    pub correlation: Option<String>,
    /// With a retry-after: it concerns only messages of this class (a
    /// class's time window), so the sender holds back that class alone.
    pub retry_class: Option<String>,
}

impl Response {
    /// Accepted, with an optional correlation ID.
    pub fn accepted(request: MessageId, correlation: Option<String>) -> Self {
        Response {
            request,
            status: Status::Accepted,
            reason: None,
            retry_after: None,
            correlation,
            retry_class: None,
        }
    }
    /// Rejected for good: the sender must not retry (invalid, not allowed).
    pub fn rejected(request: MessageId, reason: impl Into<String>) -> Self {
        Response {
            request,
            status: Status::Rejected,
            reason: Some(reason.into()),
            retry_after: None,
            correlation: None,
            retry_class: None,
        }
    }
    /// Rejected for now: retry after `after` (throttled, parent down).
    pub fn retry(request: MessageId, reason: impl Into<String>, after: Duration) -> Self {
        Response {
            request,
            status: Status::Rejected,
            reason: Some(reason.into()),
            retry_after: Some(after),
            correlation: None,
            retry_class: None,
        }
    }
}

/// Request to upload a file (DESIGN.md §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkRequest {
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// What the file is (`core`, `explorer`).
    pub class: String,
    /// The name the sender gave; never used as a path.
    pub filename: String,
}

/// Answer to a [`BulkRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkResponse {
    /// The request this answers.
    pub request: MessageId,
    /// Granted or not.
    pub granted: bool,
    /// Why not.
    pub reason: Option<String>,
    /// Where to PUT the bytes (`/rs/v1/bulk/TOKEN`, on the sender's parent).
    pub url: Option<String>,
    /// One-time token.
    pub token: Option<String>,
    /// Not granted for now: ask again after this.
    pub retry_after: Option<Duration>,
    /// Granted until this time: the transfer must be complete by then.
    pub expires: Option<Timestamp>,
}

/// How a data payload is written in XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text, escaped.
    Text,
    /// Base64 (standard alphabet, padded).
    Base64,
}

/// Any payload with a MIME type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// MIME type of the payload.
    pub mime: String,
    /// How it is written on the wire.
    pub encoding: Encoding,
    /// The payload bytes (decoded).
    pub payload: Bytes,
}

/// One content element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// See [`Alarm`].
    Alarm(Alarm),
    /// See [`Event`].
    Event(Event),
    /// See [`Response`].
    Response(Response),
    /// See [`BulkRequest`].
    BulkRequest(BulkRequest),
    /// See [`BulkResponse`].
    BulkResponse(BulkResponse),
    /// See [`Data`].
    Data(Data),
}

impl Content {
    /// Which kind this is.
    pub fn kind(&self) -> ContentKind {
        match self {
            Content::Alarm(_) => ContentKind::Alarm,
            Content::Event(_) => ContentKind::Event,
            Content::Response(_) => ContentKind::Response,
            Content::BulkRequest(_) => ContentKind::BulkRequest,
            Content::BulkResponse(_) => ContentKind::BulkResponse,
            Content::Data(_) => ContentKind::Data,
        }
    }
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The content; `header.kind == content.kind()`.
    pub content: Content,
}

impl Message {
    /// A new forward message from `origin`, stamped now (`created` is the
    /// time in its v7 ID), with default QoS.
    pub fn forward(
        origin: ComponentId,
        class: &str,
        subclass: Option<&str>,
        content: Content,
    ) -> Self {
        let id = MessageId::new();
        Message {
            header: Header {
                id,
                class: class.to_string(),
                subclass: subclass.map(str::to_string),
                kind: content.kind(),
                // The ID's own time: a compact header leaves it out.
                created: id.millis().map_or_else(Timestamp::now, Timestamp),
                direction: Direction::Source(Source {
                    origin,
                    version: None,
                }),
                qos: Qos::default(),
                routing: Vec::new(),
            },
            content,
        }
    }

    /// Appends `id` to the routing list, stamped with the creation time
    /// (what a node does to the messages it originates).
    pub fn with_hop(mut self, id: &ComponentId) -> Self {
        self.header.routing.push(Hop {
            id: id.clone(),
            time: self.header.created,
        });
        self
    }

    /// A destination's report on a back-channel message (class `response`,
    /// subclass [`DELIVERED`] or [`PROCESSED`]), from `from`, passing `hop`.
    pub fn response(from: &ComponentId, stage: &str, r: Response, hop: &ComponentId) -> Self {
        Message::forward(from.clone(), "response", Some(stage), Content::Response(r)).with_hop(hop)
    }
}

/// Checks a class or subclass label: `[a-z0-9_.-]`, 1..=64 bytes.
pub fn valid_class(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}
