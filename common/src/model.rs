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
    ///
    /// Written by hand (every hop writes several per message): the same
    /// text as `humantime::format_rfc3339_millis`, which a test holds it to.
    pub fn to_rfc3339(self) -> String {
        let mut s = String::with_capacity(24);
        self.push_rfc3339(&mut s);
        s
    }

    /// [`Timestamp::to_rfc3339`], appended to `s` (the header encoder
    /// writes several per message: no `String` each).
    pub fn push_rfc3339(self, s: &mut String) {
        let ms = self.0.min(Self::MAX.0);
        let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
        let (y, m, d) = civil_from_days(days);
        let (h, min, sec, milli) = (
            rest / 3_600_000,
            rest / 60_000 % 60,
            rest / 1000 % 60,
            rest % 1000,
        );
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, v: u64, width: usize| {
            let mut v = v;
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y as u64, 4);
        put(5, u64::from(m), 2);
        put(8, u64::from(d), 2);
        put(11, h, 2);
        put(14, min, 2);
        put(17, sec, 2);
        put(20, milli, 3);
        // Digits and separators only: always ASCII.
        s.push_str(std::str::from_utf8(&b).unwrap_or_default());
    }
    /// Parses RFC 3339 (UTC, `Z` suffix). The form [`Timestamp::to_rfc3339`]
    /// writes is read by hand; any other goes to humantime.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        if let Some(t) = parse_millis_form(s.as_bytes()) {
            return t;
        }
        let t = humantime::parse_rfc3339(s).ok()?;
        Some(Timestamp(
            t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64
        ))
    }
}

/// Year, month, day of the `days`-th day after 1970-01-01 (H. Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days from 1970-01-01 to `y-m-d` (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` exactly: `Some(result)`; any other shape: `None`
/// (for the general parser to decide).
fn parse_millis_form(b: &[u8]) -> Option<Option<Timestamp>> {
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        b[from..to].iter().try_fold(0u64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
        })
    };
    let fields = (|| {
        Some((
            num(0, 4)?,
            num(5, 7)?,
            num(8, 10)?,
            num(11, 13)?,
            num(14, 16)?,
            num(17, 19)?,
            num(20, 23)?,
        ))
    })();
    // Digits where digits belong, or the general parser decides.
    let (y, mo, d, h, mi, s, ms) = fields?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if y < 1970 || d == 0 || d > month_days || h > 23 || mi > 59 || s > 59 {
        // Before the epoch, or not a time of day; humantime's answer for
        // these (a leap second 60 included) is taken as it is.
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32) as u64;
    Some(Some(Timestamp(
        days * 86_400_000 + h * 3_600_000 + mi * 60_000 + s * 1000 + ms,
    )))
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

    /// A new forward message the node `origin` makes itself (a heartbeat,
    /// a notice, a report, an aggregate), as [`Message::forward`] with this
    /// build's [`crate::VERSION`] in its source, so the appserver learns
    /// every node's version. What integrators send carries none.
    pub fn originated(
        origin: ComponentId,
        class: &str,
        subclass: Option<&str>,
        content: Content,
    ) -> Self {
        let mut m = Message::forward(origin, class, subclass, content);
        if let Direction::Source(s) = &mut m.header.direction {
            s.version = Some(crate::VERSION.to_string());
        }
        m
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
        Message::originated(from.clone(), "response", Some(stage), Content::Response(r))
            .with_hop(hop)
    }
}

/// Checks a class or subclass label: `[a-z0-9_.-]`, 1..=64 bytes.
pub fn valid_class(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_humantime(s: &str) -> Option<Timestamp> {
        let t = humantime::parse_rfc3339(s).ok()?;
        Some(Timestamp(
            t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64
        ))
    }

    #[test]
    fn timestamps_are_written_and_read_as_humantime_does() {
        let mut rng = fastrand::Rng::with_seed(13);
        let mut cases: Vec<u64> = vec![0, 1, 999, 86_399_999, 951_782_400_000, Timestamp::MAX.0];
        cases.extend((0..20_000).map(|_| rng.u64(0..=Timestamp::MAX.0)));
        for ms in cases {
            let t = Timestamp(ms);
            let want = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
                .to_string();
            assert_eq!(t.to_rfc3339(), want);
            assert_eq!(Timestamp::parse_rfc3339(&want), Some(t), "{want}");
        }
        // Past the end is written as the end.
        assert_eq!(Timestamp(u64::MAX).to_rfc3339(), "9999-12-31T23:59:59.999Z");
        // Strings of the same shape with any digits (bad dates, leap days,
        // second 60, before 1970) and other shapes: the same answer.
        for _ in 0..20_000 {
            let d = |n: usize, rng: &mut fastrand::Rng| -> String {
                (0..n).map(|_| char::from(b'0' + rng.u8(0..10))).collect()
            };
            let s = format!(
                "{}-{}-{}T{}:{}:{}.{}Z",
                d(4, &mut rng),
                d(2, &mut rng),
                d(2, &mut rng),
                d(2, &mut rng),
                d(2, &mut rng),
                d(2, &mut rng),
                d(3, &mut rng)
            );
            assert_eq!(Timestamp::parse_rfc3339(&s), by_humantime(&s), "{s}");
        }
        for s in [
            "2026-02-29T00:00:00.000Z",
            "2024-02-29T23:59:59.999Z",
            "1969-12-31T23:59:59.999Z",
            "2026-12-02T01:54:22Z",
            "2026-12-02T01:54:22.5Z",
            "2026-12-02T01:54:22.531+01:00",
            "2026-12-02 01:54:22.531Z",
            "2026-12-02T01:54:60.000Z",
            "2026-1a-02T01:54:22.531Z",
            "",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(s), by_humantime(s), "{s}");
        }
    }
}
