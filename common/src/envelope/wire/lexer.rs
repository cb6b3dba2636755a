//! Tokens of a header's XML, from one of two lexers: a narrow one written
//! for the shape rsnet writes, and quick-xml for everything else.
//!
//! Every hop reads every header, and quick-xml's general tokenizer (UTF-8
//! checks, duplicate-attribute checks, value normalisation, a name stack
//! of its own) was the larger part of that. [`Lexer::narrow`] takes only
//! plain ASCII markup: elements and attributes with plain names, values in
//! double quotes with nothing to unescape or normalise, single spaces
//! between attributes, text without references. At the first byte outside
//! that it gives up ([`Token::Unsure`]), and the caller reads the whole
//! part again with [`Lexer::general`]. It never reports an error of its
//! own: what it accepts, quick-xml accepts as the same tokens at the same
//! positions (a test and the fuzz target `header` hold it to that), so
//! errors and everything unusual are quick-xml's to judge.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event as XmlEvent};

use crate::limits::{MAX_XML_ATTRIBUTES, MAX_XML_DEPTH};

/// One token.
pub(super) enum Token<'a> {
    /// `<name …>`.
    Start(Tag<'a>),
    /// `<name …/>`.
    Empty(Tag<'a>),
    /// `</name>` (the name matches the open element: both lexers check).
    End,
    /// Character data, as written (references come as [`Token::Ref`]).
    Text(Cow<'a, str>),
    /// An entity or character reference in text: what it stands for, if
    /// it is a character reference or one of XML's predefined entities.
    Ref(Option<Resolved>),
    /// A document type declaration.
    DocType,
    /// A comment, processing instruction, CDATA section or declaration.
    Other,
    /// The end of the input.
    Eof,
    /// The narrow lexer met something it does not take: read again with
    /// [`Lexer::general`].
    Unsure,
}

/// What a reference stands for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Resolved {
    Char(char),
    Entity(&'static str),
}

/// An element's start: its name and attributes.
pub(super) enum Tag<'a> {
    General(BytesStart<'a>),
    /// The name, and what follows it up to `>` or `/>` (checked already).
    Narrow {
        name: &'a str,
        attrs: &'a str,
    },
}

/// A general lexer's error, as text.
pub(super) type LexError = String;

impl Tag<'_> {
    /// The element's name.
    pub(super) fn name(&self) -> &str {
        match self {
            Tag::General(e) => e.name().into_inner(),
            Tag::Narrow { name, .. } => name,
        }
    }

    /// True if the element has an attribute (or something malformed where one would be).
    pub(super) fn has_attributes(&self) -> bool {
        match self {
            Tag::General(e) => e.attributes().next().is_some(),
            Tag::Narrow { attrs, .. } => !attrs.is_empty(),
        }
    }

    /// Calls `f(name, value)` for each attribute; more than
    /// [`MAX_XML_ATTRIBUTES`] is an error, as is a malformed one.
    pub(super) fn attrs<E>(
        &self,
        limit: impl Fn(String) -> E,
        xml: impl Fn(LexError) -> E,
        mut f: impl FnMut(&str, Cow<'_, str>) -> Result<(), E>,
    ) -> Result<(), E> {
        let too_many = || {
            limit(format!(
                "more than {MAX_XML_ATTRIBUTES} attributes on one element"
            ))
        };
        match self {
            Tag::General(e) => {
                let mut n = 0;
                for a in e.attributes() {
                    n += 1;
                    if n > MAX_XML_ATTRIBUTES {
                        return Err(too_many());
                    }
                    let a = a.map_err(|e| xml(e.to_string()))?;
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| xml(e.to_string()))?;
                    f(a.key.as_ref(), v)?;
                }
                Ok(())
            }
            Tag::Narrow { attrs, .. } => {
                // ` name="value"` repeated, as the lexer checked it.
                let mut rest = *attrs;
                let mut n = 0;
                while let Some(r) = rest.strip_prefix(' ') {
                    n += 1;
                    if n > MAX_XML_ATTRIBUTES {
                        return Err(too_many());
                    }
                    let Some((name, r)) = r.split_once("=\"") else {
                        break;
                    };
                    let Some((value, r)) = r.split_once('"') else {
                        break;
                    };
                    f(name, Cow::Borrowed(value))?;
                    rest = r;
                }
                Ok(())
            }
        }
    }
}

/// A source of [`Token`]s over one part's bytes.
pub(super) enum Lexer<'a> {
    General(Box<quick_xml::Reader<&'a [u8]>>),
    Narrow(Narrow<'a>),
}

impl<'a> Lexer<'a> {
    /// quick-xml over `xml`.
    pub(super) fn general(xml: &'a [u8]) -> Lexer<'a> {
        Lexer::General(Box::new(quick_xml::Reader::from_reader(xml)))
    }

    /// The narrow lexer over `xml` (see the module docs); it takes ASCII only.
    pub(super) fn narrow(xml: &'a [u8]) -> Lexer<'a> {
        let ascii = if xml.is_ascii() {
            std::str::from_utf8(xml).ok()
        } else {
            None
        };
        Lexer::Narrow(Narrow {
            xml: ascii.map_or(b"", str::as_bytes),
            text: ascii.unwrap_or(""),
            ascii: ascii.is_some(),
            pos: 0,
            open: Vec::with_capacity(4),
        })
    }

    /// How far the input has been read.
    pub(super) fn position(&self) -> usize {
        match self {
            Lexer::General(r) => r.buffer_position() as usize,
            Lexer::Narrow(n) => n.pos,
        }
    }

    /// The next token.
    ///
    /// # Errors
    /// quick-xml's, for input that is not well-formed (the narrow lexer
    /// answers [`Token::Unsure`] instead).
    pub(super) fn next(&mut self) -> Result<Token<'a>, LexError> {
        match self {
            Lexer::General(r) => Ok(match r.read_event().map_err(|e| e.to_string())? {
                XmlEvent::Start(e) => Token::Start(Tag::General(e)),
                XmlEvent::Empty(e) => Token::Empty(Tag::General(e)),
                XmlEvent::End(_) => Token::End,
                XmlEvent::Text(t) => Token::Text(t.into_inner()),
                XmlEvent::GeneralRef(g) => Token::Ref(match g.resolve_char_ref() {
                    Ok(Some(c)) => Some(Resolved::Char(c)),
                    Ok(None) => {
                        quick_xml::escape::resolve_predefined_entity(&g).map(Resolved::Entity)
                    }
                    Err(_) => None,
                }),
                XmlEvent::DocType(_) => Token::DocType,
                XmlEvent::Eof => Token::Eof,
                _ => Token::Other,
            }),
            Lexer::Narrow(n) => Ok(n.next().unwrap_or(Token::Unsure)),
        }
    }
}

/// The narrow lexer's state.
pub(super) struct Narrow<'a> {
    /// The input if it is ASCII (else empty, and `ascii` false).
    xml: &'a [u8],
    /// The same as text, so that names and values are slices of it.
    text: &'a str,
    ascii: bool,
    pos: usize,
    /// Names of the open elements.
    open: Vec<&'a str>,
}

/// A name's first byte: an ASCII letter or `_`.
fn name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

/// A name's later bytes.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// A byte of an attribute value taken as it is: printable ASCII but `&`
/// and `<` (tabs and line breaks would be normalised).
fn value_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) & (b != b'&') & (b != b'<')
}

impl<'a> Narrow<'a> {
    /// The next token, `None` where unsure.
    fn next(&mut self) -> Option<Token<'a>> {
        if !self.ascii {
            return None;
        }
        let xml = self.xml;
        let Some(&b) = xml.get(self.pos) else {
            return self.open.is_empty().then_some(Token::Eof);
        };
        if b != b'<' {
            return self.text();
        }
        match *xml.get(self.pos + 1)? {
            b'/' => {
                let start = self.pos + 2;
                let end = self.name_end(start)?;
                if xml.get(end) != Some(&b'>') || self.open.pop()? != self.slice(start, end) {
                    return None;
                }
                self.pos = end + 1;
                Some(Token::End)
            }
            c if name_start(c) => {
                let start = self.pos + 1;
                let end = self.name_end(start)?;
                let name = self.slice(start, end);
                let attrs_at = end;
                let mut i = end;
                let mut seen: [&str; MAX_XML_ATTRIBUTES] = [""; MAX_XML_ATTRIBUTES];
                let mut n = 0;
                loop {
                    match *xml.get(i)? {
                        b' ' => {
                            let k = i + 1;
                            if !name_start(*xml.get(k)?) {
                                return None;
                            }
                            let ke = self.name_end(k)?;
                            let key = self.slice(k, ke);
                            // A repeated attribute is an error to quick-xml;
                            // more than the limit is left to it as well.
                            if n == MAX_XML_ATTRIBUTES || seen[..n].contains(&key) {
                                return None;
                            }
                            seen[n] = key;
                            n += 1;
                            if xml.get(ke..ke + 2)? != b"=\"" {
                                return None;
                            }
                            let vs = ke + 2;
                            let len = memchr::memchr(b'"', &xml[vs..])?;
                            if !xml[vs..vs + len]
                                .iter()
                                .fold(true, |ok, &b| ok & value_byte(b))
                            {
                                return None;
                            }
                            i = vs + len + 1;
                        }
                        b'>' => {
                            if self.open.len() > MAX_XML_DEPTH {
                                return None;
                            }
                            self.open.push(name);
                            self.pos = i + 1;
                            return Some(Token::Start(Tag::Narrow {
                                name,
                                attrs: self.slice(attrs_at, i),
                            }));
                        }
                        b'/' if xml.get(i + 1) == Some(&b'>') => {
                            self.pos = i + 2;
                            return Some(Token::Empty(Tag::Narrow {
                                name,
                                attrs: self.slice(attrs_at, i),
                            }));
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// The input from `start` to `end` (ASCII: every byte is a character boundary).
    fn slice(&self, start: usize, end: usize) -> &'a str {
        self.text.get(start..end).unwrap_or("")
    }

    /// Where the name starting at `start` ends (it has at least one byte).
    fn name_end(&self, start: usize) -> Option<usize> {
        let rest = self.xml.get(start..)?;
        if !name_start(*rest.first()?) {
            return None;
        }
        let len = rest
            .iter()
            .position(|&b| !name_byte(b))
            .unwrap_or(rest.len());
        Some(start + len)
    }

    /// Text up to the next `<`: printable ASCII without `&` or `>`; line
    /// breaks and tabs only where the text is nothing but white space.
    fn text(&mut self) -> Option<Token<'a>> {
        let rest = &self.xml[self.pos..];
        let len = memchr::memchr(b'<', rest).unwrap_or(rest.len());
        let t = &rest[..len];
        // Without a short cut, so that it runs over many bytes at a time.
        let printable = t.iter().fold(true, |ok, &b| ok & (0x20..0x7f).contains(&b));
        let plain = printable && memchr::memchr2(b'&', b'>', t).is_none();
        if !plain && !t.iter().all(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            return None;
        }
        self.pos += len;
        Some(Token::Text(Cow::Borrowed(
            self.slice(self.pos - len, self.pos),
        )))
    }
}
