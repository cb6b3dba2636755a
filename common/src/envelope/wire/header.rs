//! The header part, read and written by hand.
//!
//! Every hop parses every header (to check the source and route) and writes
//! it again (to append its routing hop), so this is the hottest XML in the
//! system. It is a single pass over XML tokens that enforces the same
//! limits as [`scan`](super::scan) on the way, with no serde in between:
//! about three times less work than scan + serde for the same result. The
//! tokens come from the narrow lexer ([`super::lexer`]) for the plain ASCII
//! markup rsnet writes, and from quick-xml for anything else or anything
//! wrong (then the part is read again, so that errors are quick-xml's). The
//! element shape is documented in `docs/PROTOCOL.md`; unknown attributes and
//! elements are ignored, as serde did, so later versions can add fields.
//!
//! # The compact header
//!
//! [`encode_header_compact`] leaves out what the reader derives, and
//! [`decode_header`] always derives it when it is missing:
//!
//! * `content`, when the class is the name of the content kind (an alarm
//!   of class `alarm`);
//! * `created`, when it is the time in the message's v7 ID;
//! * a hop's `time`, when it equals `created`;
//! * `<source origin=".."/>` (with no `version`), when the origin is the
//!   first hop.
//!
//! Only a parent that advertises the compact form is sent compact headers
//! (an older one requires every field: see [`crate::envelope::Form`]).
//!
//! # One more hop without writing the header again
//!
//! A relay and the appserver add their routing hop to every header they
//! pass on or store. When the header as received ends with its routing
//! list (`…</routing></header>`, as every rsnet node writes it), the
//! reader notes where the next `<hop/>` goes, and [`RawHeader::with_hop`]
//! copies the received bytes with the hop put in there: the same header a
//! reader decodes, plus the hop, without encoding it again. Any other
//! shape is written anew from the parsed header.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::lexer::{Lexer, Tag, Token};
use super::{field, parse_id, parse_ts, InvalidMessage};
use crate::id::{ComponentId, MessageId};
use crate::limits::{MAX_DESTINATIONS, MAX_ROUTING_HOPS, MAX_XML_DEPTH};
use crate::model::*;

const PART: &str = "header";

/// Writes a header as XML, every field spelled out.
pub fn encode_header(h: &Header) -> String {
    encode(h, false, None)
}

/// Writes a header as XML, leaving out what [`decode_header`] derives (the
/// module docs): about 100 bytes less for a proxy's alarm.
pub fn encode_header_compact(h: &Header) -> String {
    encode(h, true, None)
}

/// [`encode_header_compact`] of `h` with `hop` after its routing list's
/// last hop: what a relay passes on, without copying the header to add it.
pub fn encode_header_compact_with_hop(h: &Header, hop: &Hop) -> String {
    encode(h, true, Some(hop))
}

/// A header as `xml` says it (compact or full), written in the full form;
/// `xml` as it is if it does not decode (the parent answers for it).
pub fn full_header(xml: &bytes::Bytes) -> bytes::Bytes {
    match decode_header(xml) {
        Ok(h) => bytes::Bytes::from(encode_header(&h)),
        Err(_) => xml.clone(),
    }
}

fn encode(h: &Header, compact: bool, extra: Option<&Hop>) -> String {
    let mut s = String::with_capacity(256 + 80 * (h.routing.len() + 1));
    let mut routing = h.routing.iter().chain(extra);
    s.push_str("<header");
    s.push_str(" id=\"");
    h.id.push_str_to(&mut s);
    s.push('"');
    attr(&mut s, "class", &h.class);
    if let Some(sc) = &h.subclass {
        attr(&mut s, "subclass", sc);
    }
    if !(compact && h.kind.as_str() == h.class) {
        attr(&mut s, "content", h.kind.as_str());
    }
    if !(compact && h.id.millis() == Some(h.created.0)) {
        attr_time(&mut s, "created", h.created);
    }
    s.push('>');
    match &h.direction {
        Direction::Source(src)
            if compact
                && src.version.is_none()
                && h.routing
                    .first()
                    .or(extra)
                    .is_some_and(|f| f.id == src.origin) => {}
        Direction::Source(src) => {
            s.push_str("<source");
            attr(&mut s, "origin", src.origin.as_str());
            if let Some(v) = &src.version {
                attr(&mut s, "version", v);
            }
            s.push_str("/>");
        }
        Direction::Destination(d) => {
            s.push_str("<destination");
            if let Some(g) = &d.group {
                attr(&mut s, "group", &g.to_string());
            }
            s.push('>');
            for id in &d.ids {
                s.push_str("<to>");
                s.push_str(&quick_xml::escape::escape(id.as_str()));
                s.push_str("</to>");
            }
            s.push_str("</destination>");
        }
    }
    let q = &h.qos;
    if *q != Qos::default() {
        s.push_str("<qos");
        let _ = write!(s, " precedence=\"{}\"", q.precedence);
        let _ = write!(s, " persistence=\"{}\"", q.persistence);
        if let Some(e) = q.expiry {
            attr_time(&mut s, "expiry", e);
        }
        s.push_str("/>");
    }
    if let Some(first) = routing.next() {
        s.push_str("<routing>");
        for hop in std::iter::once(first).chain(routing) {
            push_hop(&mut s, hop, h.created, compact);
        }
        s.push_str("</routing>");
    }
    s.push_str("</header>");
    s
}

/// One `<hop/>`; compact leaves out a time equal to `created`.
fn push_hop(s: &mut String, hop: &Hop, created: Timestamp, compact: bool) {
    s.push_str("<hop");
    attr(s, "id", hop.id.as_str());
    if !(compact && hop.time == created) {
        attr_time(s, "time", hop.time);
    }
    s.push_str("/>");
}

/// An attribute holding a time: RFC 3339 text, which needs no escaping.
fn attr_time(s: &mut String, name: &str, t: Timestamp) {
    s.push(' ');
    s.push_str(name);
    s.push_str("=\"");
    t.push_rfc3339(s);
    s.push('"');
}

fn attr(s: &mut String, name: &str, value: &str) {
    s.push(' ');
    s.push_str(name);
    s.push_str("=\"");
    s.push_str(&quick_xml::escape::escape(value));
    s.push('"');
}

/// Where the reader is: the element path below the root that matters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Header,
    Destination,
    To,
    Routing,
    /// An element this version does not know; skipped with its children.
    Other,
}

/// The header's fields as found, before validation.
#[derive(Default, Debug)]
struct Found {
    // Parsed as read (no copy of the text), reported in `validate`'s order.
    id: Option<Result<MessageId, InvalidMessage>>,
    class: Option<String>,
    subclass: Option<String>,
    content: Option<String>,
    created: Option<Result<Timestamp, InvalidMessage>>,
    source: Option<(Option<String>, Option<String>)>,
    destination: Option<(Option<String>, Vec<String>)>,
    qos: Option<(Option<String>, Option<String>, Option<String>)>,
    routing: Vec<Hopping>,
    /// Where the next hop goes, if the root's last child is `<routing>`
    /// (set when the root ends).
    hop_at: Option<usize>,
    /// Just before the latest `</routing>`, while no element followed it.
    routing_end: Option<usize>,
}

/// A hop's `id` and `time`, parsed as read.
type Hopping = (
    Option<Result<ComponentId, InvalidMessage>>,
    Option<Result<Timestamp, InvalidMessage>>,
);

/// Sets `slot` to `parse(v)` if it was not set (the first of repeated attributes wins).
fn first<T>(slot: &mut Option<T>, v: &str, parse: impl FnOnce(&str) -> T) {
    if slot.is_none() {
        *slot = Some(parse(v));
    }
}

fn message_id(v: &str) -> Result<MessageId, InvalidMessage> {
    v.parse().map_err(|e| field("header/@id", e))
}

fn xml_err(reason: impl ToString) -> InvalidMessage {
    InvalidMessage::Xml {
        part: PART,
        reason: reason.to_string(),
    }
}

fn limit(what: String) -> InvalidMessage {
    InvalidMessage::Limit { part: PART, what }
}

/// Calls `f(name, value)` for each attribute, after the count limit.
fn attrs(
    e: &Tag<'_>,
    f: impl FnMut(&str, Cow<'_, str>) -> Result<(), InvalidMessage>,
) -> Result<(), InvalidMessage> {
    e.attrs(limit, xml_err, f)
}

fn once(slot: &mut Option<String>, v: Cow<'_, str>) {
    if slot.is_none() {
        *slot = Some(v.into_owned());
    }
}

/// Parses and validates a header part (full or compact).
///
/// # Errors
/// [`InvalidMessage`] naming the field, or the XML limit, that failed.
pub fn decode_header(xml: &[u8]) -> Result<Header, InvalidMessage> {
    let (f, end) = found(xml, false);
    end?;
    validate(f)
}

/// [`decode_header`] of a received header part, with its bytes kept for
/// [`RawHeader::with_hop`] when they can take one.
///
/// # Errors
/// As [`decode_header`].
pub fn decode_received_header(
    xml: &bytes::Bytes,
) -> Result<(Header, Option<RawHeader>), InvalidMessage> {
    let (f, end) = found(xml, false);
    end?;
    let raw = RawHeader::of(xml, f.hop_at);
    Ok((validate(f)?, raw))
}

/// A compact part's leading header: the header, where it ends, and its
/// bytes if they can take a hop ([`decode_leading_header`]).
pub type Leading = (Header, usize, Option<RawHeader>);

/// Parses the header element a compact message part starts with (the
/// content element follows it); returns the header, where it ends, and
/// its bytes for [`RawHeader::with_hop`] when they can take one.
///
/// # Errors
/// What is wrong, with the header's `id` if that could be read, so the
/// message can be answered.
pub fn decode_leading_header(
    xml: &bytes::Bytes,
) -> Result<Leading, (Option<MessageId>, InvalidMessage)> {
    let (f, end) = found(xml, true);
    let id = f.id.as_ref().and_then(|i| i.as_ref().ok().copied());
    match end {
        Ok(end) => {
            let raw = RawHeader::of(&xml.slice(..end), f.hop_at);
            validate(f).map(|h| (h, end, raw)).map_err(|e| (id, e))
        }
        Err(e) => Err((id, e)),
    }
}

/// A header's bytes as received, and where in them the next routing hop
/// goes (the module docs, "One more hop").
///
/// It stands for the header it was decoded into only while that header is
/// unchanged: whoever changes a header drops its `RawHeader`
/// ([`crate::envelope::Item::header_mut`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    bytes: bytes::Bytes,
    /// Just before the last `</routing>`, which the root's end follows.
    hop_at: usize,
}

impl RawHeader {
    fn of(bytes: &bytes::Bytes, hop_at: Option<usize>) -> Option<RawHeader> {
        // Without what comes before the root (a compact part's body starts
        // with a line break): it would pile up at every hop.
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
        hop_at
            .filter(|at| (start..=bytes.len()).contains(at))
            .map(|at| RawHeader {
                bytes: bytes.slice(start..),
                hop_at: at - start,
            })
    }

    /// The header with `hop` after its last hop, valid in the compact form
    /// (the hop's time is left out when it equals `created`, the header's
    /// creation time, as [`encode_header_compact`] does).
    pub fn with_hop(&self, hop: &Hop, created: Timestamp) -> bytes::Bytes {
        let mut h = String::with_capacity(crate::envelope::budget::MAX_HOP_BYTES);
        push_hop(&mut h, hop, created, true);
        let mut out = Vec::with_capacity(self.bytes.len() + h.len());
        out.extend_from_slice(&self.bytes[..self.hop_at]);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&self.bytes[self.hop_at..]);
        out.into()
    }
}

/// The root element of `xml` read ([`read`]), by the narrow lexer where it
/// can and by quick-xml where it cannot or where anything went wrong (so
/// that what is reported is quick-xml's finding).
fn found(xml: &[u8], leading: bool) -> (Found, Result<usize, InvalidMessage>) {
    let mut f = Found::default();
    if let Ok(end) = read(Lexer::narrow(xml), &mut f, leading) {
        return (f, Ok(end));
    }
    let mut f = Found::default();
    let end = read(Lexer::general(xml), &mut f, leading);
    (f, end)
}

/// Whether the narrow lexer's reading of `xml` is quick-xml's: `Ok(true)`
/// if it took `xml` and found the same (fields, errors in them, where a hop
/// goes, where the root ends), `Ok(false)` if it left `xml` to quick-xml,
/// `Err` saying how they differ. For the fuzz target `header` and tests.
#[doc(hidden)]
pub fn narrow_reading_agrees(xml: &[u8], leading: bool) -> Result<bool, String> {
    let mut narrow = Found::default();
    let Ok(end) = read(Lexer::narrow(xml), &mut narrow, leading) else {
        return Ok(false);
    };
    let mut general = Found::default();
    let general_end = read(Lexer::general(xml), &mut general, leading);
    let (a, b) = (
        format!("{:?} {narrow:?}", Ok::<_, InvalidMessage>(end)),
        format!("{general_end:?} {general:?}"),
    );
    if a == b {
        Ok(true)
    } else {
        Err(format!("narrow: {a}\ngeneral: {b}"))
    }
}

/// Reads the root element into `f`. With `leading` it stops where that
/// element ends and returns the position; else it reads to the end (one
/// root only) and returns the length.
fn read(mut r: Lexer<'_>, f: &mut Found, leading: bool) -> Result<usize, InvalidMessage> {
    let mut stack: Vec<At> = Vec::with_capacity(4);
    let mut seen_root = false;
    loop {
        let before = r.position();
        let ev = r.next().map_err(xml_err)?;
        let (e, empty) = match &ev {
            Token::Start(e) => (e, false),
            Token::Empty(e) => (e, true),
            Token::End => {
                match (stack.pop(), stack.len()) {
                    (Some(At::Routing), 1) => f.routing_end = Some(before),
                    (Some(At::Header), 0) => f.hop_at = f.routing_end,
                    _ => {}
                }
                if leading && stack.is_empty() {
                    return Ok(r.position());
                }
                continue;
            }
            Token::Text(t) => {
                if stack.last() == Some(&At::To) {
                    let s: &str = t;
                    if let Some((_, to)) = f.destination.as_mut() {
                        if let Some(last) = to.last_mut() {
                            last.push_str(s.trim());
                        }
                    }
                }
                continue;
            }
            Token::Ref(_) if stack.last() == Some(&At::To) => {
                return Err(field("header/destination/to", "entity in a component ID"))
            }
            Token::DocType => return Err(limit("DOCTYPE is not allowed".into())),
            Token::Eof => break,
            Token::Unsure => return Err(xml_err("not in the narrow lexer's shape")),
            Token::Ref(_) | Token::Other => continue,
        };
        if stack.len() >= MAX_XML_DEPTH {
            return Err(limit(format!("nesting deeper than {MAX_XML_DEPTH}")));
        }
        if stack.len() == 1 {
            // An element after the routing list: a hop goes nowhere then.
            f.routing_end = None;
        }
        let at = match (stack.last(), e.name()) {
            (None, "header") if !seen_root => {
                seen_root = true;
                attrs(e, |k, v| {
                    match k {
                        "id" => first(&mut f.id, &v, message_id),
                        "class" => once(&mut f.class, v),
                        "subclass" => once(&mut f.subclass, v),
                        "content" => once(&mut f.content, v),
                        "created" => first(&mut f.created, &v, |c| parse_ts("header/@created", c)),
                        _ => {}
                    }
                    Ok(())
                })?;
                At::Header
            }
            (None, _) if seen_root => return Err(xml_err("more than one root element")),
            (None, other) => {
                return Err(xml_err(format!(
                    "root element is <{}>, expected <header>",
                    other
                )))
            }
            (Some(At::Header), "source") => {
                if f.source.is_some() {
                    return Err(field("header/source", "appears more than once"));
                }
                let (mut origin, mut version) = (None, None);
                attrs(e, |k, v| {
                    match k {
                        "origin" => once(&mut origin, v),
                        "version" => once(&mut version, v),
                        _ => {}
                    }
                    Ok(())
                })?;
                f.source = Some((origin, version));
                At::Other
            }
            (Some(At::Header), "destination") => {
                if f.destination.is_some() {
                    return Err(field("header/destination", "appears more than once"));
                }
                let mut group = None;
                attrs(e, |k, v| {
                    if k == "group" {
                        once(&mut group, v);
                    }
                    Ok(())
                })?;
                f.destination = Some((group, Vec::new()));
                At::Destination
            }
            (Some(At::Destination), "to") => {
                if let Some((_, to)) = f.destination.as_mut() {
                    if to.len() >= MAX_DESTINATIONS {
                        return Err(field(
                            "header/destination",
                            format!("more than {MAX_DESTINATIONS} destinations"),
                        ));
                    }
                    to.push(String::new());
                }
                At::To
            }
            (Some(At::Header), "qos") => {
                if f.qos.is_some() {
                    return Err(field("header/qos", "appears more than once"));
                }
                let (mut p, mut pers, mut exp) = (None, None, None);
                attrs(e, |k, v| {
                    match k {
                        "precedence" => once(&mut p, v),
                        "persistence" => once(&mut pers, v),
                        "expiry" => once(&mut exp, v),
                        _ => {}
                    }
                    Ok(())
                })?;
                f.qos = Some((p, pers, exp));
                At::Other
            }
            (Some(At::Header), "routing") => At::Routing,
            (Some(At::Routing), "hop") => {
                if f.routing.len() >= MAX_ROUTING_HOPS {
                    return Err(field(
                        "header/routing",
                        format!("more than {MAX_ROUTING_HOPS} hops"),
                    ));
                }
                let (mut id, mut time) = (None, None);
                attrs(e, |k, v| {
                    match k {
                        "id" => first(&mut id, &v, |i| parse_id("header/routing/hop/@id", i)),
                        "time" => first(&mut time, &v, |t| parse_ts("header/routing/hop/@time", t)),
                        _ => {}
                    }
                    Ok(())
                })?;
                f.routing.push((id, time));
                At::Other
            }
            _ => {
                // Unknown here: still bound by the attribute limit.
                attrs(e, |_, _| Ok(()))?;
                At::Other
            }
        };
        if !empty {
            stack.push(at);
        } else if leading && stack.is_empty() {
            return Ok(r.position());
        }
    }
    if !stack.is_empty() {
        return Err(xml_err("unclosed element"));
    }
    if !seen_root {
        return Err(xml_err("no root element"));
    }
    Ok(r.position())
}

fn required(v: Option<String>, path: &str) -> Result<String, InvalidMessage> {
    v.ok_or_else(|| field(path, "missing"))
}

fn validate(f: Found) -> Result<Header, InvalidMessage> {
    let id: MessageId = f.id.ok_or_else(|| field("header/@id", "missing"))??;
    let class = required(f.class, "header/@class")?;
    if !valid_class(&class) {
        return Err(field(
            "header/@class",
            format!("{class:?} is not a class label ([a-z0-9_.-], 1-64)"),
        ));
    }
    if let Some(s) = &f.subclass {
        if !valid_class(s) {
            return Err(field(
                "header/@subclass",
                format!("{s:?} is not a class label ([a-z0-9_.-], 1-64)"),
            ));
        }
    }
    let kind = match f.content {
        Some(content) => {
            ContentKind::parse(&content).ok_or(InvalidMessage::UnknownKind(content))?
        }
        // Left out (compact form) when the class names the kind.
        None => ContentKind::parse(&class).ok_or_else(|| {
            field(
                "header/@content",
                "missing, and the class names no content kind to take it from",
            )
        })?,
    };
    let created = match f.created {
        Some(c) => c?,
        None => Timestamp(id.millis().ok_or_else(|| {
            field(
                "header/@created",
                "missing, and the ID is not a v7 UUID to take it from",
            )
        })?),
    };
    let routing = f
        .routing
        .into_iter()
        .map(|(id, time)| {
            Ok(Hop {
                id: id.ok_or_else(|| field("header/routing/hop/@id", "missing"))??,
                time: match time {
                    Some(t) => t?,
                    None => created,
                },
            })
        })
        .collect::<Result<Vec<_>, InvalidMessage>>()?;
    let direction = match (f.source, f.destination) {
        (Some((origin, version)), None) => {
            if version.as_ref().is_some_and(|v| v.len() > 64) {
                return Err(field("header/source/@version", "longer than 64 bytes"));
            }
            let origin = required(origin, "header/source/@origin")?;
            Direction::Source(Source {
                origin: parse_id("header/source/@origin", &origin)?,
                version,
            })
        }
        (None, Some((group, to))) => {
            let ids = to
                .iter()
                .map(|t| parse_id("header/destination/to", t))
                .collect::<Result<Vec<_>, _>>()?;
            let group = group
                .map(|g| g.parse().map_err(|e| field("header/destination/@group", e)))
                .transpose()?;
            if ids.is_empty() && group.is_none() {
                return Err(field("header/destination", "names no destination"));
            }
            Direction::Destination(Destination { ids, group })
        }
        (Some(_), Some(_)) => return Err(field("header", "has both <source> and <destination>")),
        (None, None) => match routing.first() {
            // Compact: a message from its first hop.
            Some(first) => Direction::Source(Source {
                origin: first.id.clone(),
                version: None,
            }),
            None => return Err(field("header", "needs a <source> or a <destination>")),
        },
    };
    let mut qos = Qos::default();
    if let Some((p, pers, exp)) = f.qos {
        if let Some(p) = p {
            let p: u8 = p
                .parse()
                .map_err(|_| field("header/qos/@precedence", format!("{p:?} is not 0..=9")))?;
            if p > MAX_PRECEDENCE {
                return Err(field(
                    "header/qos/@precedence",
                    format!("{p} is above {MAX_PRECEDENCE}"),
                ));
            }
            qos.precedence = p;
        }
        if let Some(p) = pers {
            qos.persistence = match p.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(field(
                        "header/qos/@persistence",
                        format!("{p:?} is not true or false"),
                    ))
                }
            };
        }
        qos.expiry = exp
            .map(|e| parse_ts("header/qos/@expiry", &e))
            .transpose()?;
    }
    Ok(Header {
        id,
        class,
        subclass: f.subclass,
        kind,
        created,
        direction,
        qos,
        routing,
    })
}
