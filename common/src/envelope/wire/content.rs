//! Alarms and events read by hand, in the shape [`super::encode_content`]
//! writes them: the appserver checks the content of every message it
//! stores, and serde over quick-xml was the larger part of that.
//!
//! The reader is deliberately narrow. It takes the root's known attributes,
//! a `<text>` and an optional `<data>`, plain text and the predefined and
//! character references in them. Anything else (another child, CDATA, a
//! comment, a carriage return, text with white space at either end, an
//! attribute it does not know, a value it does not recognise) makes it
//! answer `None`, and [`super::decode_content`] reads the part the general
//! way (limits scan, then serde). A test holds it to serde's result on
//! both sides of that line.
//!
//! Its tokens come from the narrow lexer ([`super::lexer`]) where that
//! takes the part (plain ASCII markup and text), else from quick-xml.

use super::lexer::{Lexer, Resolved, Tag, Token};
use super::{WireAlarm, WireData, WireEvent};
use crate::model::{AlarmState, Encoding, Severity};

/// An alarm in the written shape, or `None` for the general reader.
pub(super) fn alarm(xml: &[u8]) -> Option<WireAlarm> {
    let r = read_either(xml, "alarm")?;
    Some(WireAlarm {
        severity: r.severity?,
        state: r.state?,
        si: r.si,
        text: r.text,
        data: r.data,
    })
}

/// An event in the written shape, or `None` for the general reader.
pub(super) fn event(xml: &[u8]) -> Option<WireEvent> {
    let r = read_either(xml, "event")?;
    if r.severity.is_some() || r.state.is_some() {
        return None;
    }
    Some(WireEvent {
        si: r.si,
        text: r.text,
        data: r.data,
    })
}

#[derive(Default)]
struct Read {
    severity: Option<Severity>,
    state: Option<AlarmState>,
    si: Option<String>,
    text: String,
    data: Option<WireData>,
}

/// Calls `f` with each attribute's name and unescaped value; `None` if one
/// does not parse or `f` refuses it.
fn attributes(e: &Tag<'_>, mut f: impl FnMut(&str, String) -> Option<()>) -> Option<()> {
    let e = match e {
        Tag::General(e) => e,
        // Plain values only: nothing to unescape or normalise.
        Tag::Narrow { .. } => {
            return e
                .attrs(|_| (), |_| (), |k, v| f(k, v.into_owned()).ok_or(()))
                .ok()
        }
    };
    for a in e.attributes() {
        let a = a.ok()?;
        // Line breaks and tabs in a value are normalised differently by
        // readers: the general one decides.
        if a.value.contains(['\t', '\n', '\r']) {
            return None;
        }
        let v = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .ok()?;
        f(a.key.as_ref(), v.into_owned())?;
    }
    Some(())
}

fn set<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v?);
    Some(())
}

fn severity(v: &str) -> Option<Severity> {
    Some(match v {
        "clear" => Severity::Clear,
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "minor" => Severity::Minor,
        "major" => Severity::Major,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

fn state(v: &str) -> Option<AlarmState> {
    Some(match v {
        "raised" => AlarmState::Raised,
        "updated" => AlarmState::Updated,
        "cleared" => AlarmState::Cleared,
        _ => return None,
    })
}

/// The text of an element up to its end tag: plain text and references only.
fn text_until_end(r: &mut Lexer<'_>) -> Option<String> {
    let mut s = String::new();
    loop {
        match r.next().ok()? {
            Token::Text(t) if s.is_empty() => s = t.into_owned(),
            Token::Text(t) => s.push_str(&t),
            Token::Ref(Some(Resolved::Char(c))) => s.push(c),
            Token::Ref(Some(Resolved::Entity(e))) => s.push_str(e),
            Token::End => break,
            _ => return None,
        }
    }
    // The general reader's treatment of these is its own.
    let plain =
        !s.contains('\r') && s.trim_matches(|c: char| c.is_ascii_whitespace()).len() == s.len();
    plain.then_some(s)
}

/// True if the narrow lexer's tokens alone read `xml`.
#[cfg(test)]
pub(super) fn narrow_takes(xml: &[u8], root: &str) -> bool {
    read(Lexer::narrow(xml), root).is_some()
}

/// [`read`] with the narrow lexer, else with quick-xml.
fn read_either(xml: &[u8], root: &str) -> Option<Read> {
    read(Lexer::narrow(xml), root).or_else(|| read(Lexer::general(xml), root))
}

fn read(mut r: Lexer<'_>, root: &str) -> Option<Read> {
    let mut out = Read::default();
    let Token::Start(e) = r.next().ok()? else {
        return None;
    };
    if e.name() != root {
        return None;
    }
    attributes(&e, |k, v| match k {
        "severity" if root == "alarm" => set(&mut out.severity, severity(&v)),
        "state" if root == "alarm" => set(&mut out.state, state(&v)),
        "si" => set(&mut out.si, Some(v)),
        _ => None,
    })?;
    let (mut text, mut data) = (false, false);
    loop {
        let (e, empty) = match r.next().ok()? {
            Token::Start(e) => (e, false),
            Token::Empty(e) => (e, true),
            Token::End => break,
            _ => return None,
        };
        match e.name() {
            // `<text>` has no attributes (the general reader bounds their number).
            "text" if !text && !data && !e.has_attributes() => {
                text = true;
                if !empty {
                    out.text = text_until_end(&mut r)?;
                }
            }
            "data" if !data => {
                data = true;
                let (mut mime, mut encoding, mut size) = (None, None, None);
                attributes(&e, |k, v| match k {
                    "mime" => set(&mut mime, Some(v)),
                    "encoding" => set(
                        &mut encoding,
                        match v.as_str() {
                            "text" => Some(Encoding::Text),
                            "base64" => Some(Encoding::Base64),
                            _ => None,
                        },
                    ),
                    "size" => set(&mut size, v.parse::<u64>().ok()),
                    _ => None,
                })?;
                let payload = if empty {
                    String::new()
                } else {
                    text_until_end(&mut r)?
                };
                out.data = Some(WireData {
                    mime: mime?,
                    encoding: encoding?,
                    size: size?,
                    payload,
                });
            }
            _ => return None,
        }
    }
    // Nothing after the root's end.
    matches!(r.next().ok()?, Token::Eof).then_some(out)
}
