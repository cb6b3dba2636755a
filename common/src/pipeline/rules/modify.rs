//! The `modify` action: set or remove header fields and content attributes.
//!
//! ```toml
//! [[rule]]
//! name = "disk-is-major"
//! action = "modify"
//! [rule.match]
//! subclass = "disk"
//! [rule.set]
//! class = "alarm"          # rewrite class and subclass
//! subclass = "storage"
//! precedence = 7           # 0..=9
//! persistence = true
//! expiry_s = 3600          # expires an hour after it passes this hop
//! severity = "major"       # alarms
//! text = "disk trouble"    # alarms and events
//! # and/or: remove = ["subclass", "expiry", "data", "support_instance"]
//! ```
//!
//! Header fields change on every kind; content attributes on alarms and
//! events only (other kinds pass with their content as it was).

use std::time::Duration;

use bytes::Bytes;

use crate::envelope::wire::encode_content;
use crate::envelope::Item;
use crate::id::ComponentId;
use crate::model::{Content, Header, Severity, Timestamp};

use super::config::{parse_severity, RuleConfig};

/// A compiled `modify`.
#[derive(Debug, Clone, Default)]
pub(super) struct Modify {
    class: Option<String>,
    /// `Some(None)` removes it.
    subclass: Option<Option<String>>,
    precedence: Option<u8>,
    persistence: Option<bool>,
    /// `Some(None)` removes it.
    expiry: Option<Option<Duration>>,
    severity: Option<Severity>,
    text: Option<String>,
    remove_data: bool,
    remove_support_instance: bool,
}

impl Modify {
    /// From a validated rule.
    pub(super) fn new(r: &RuleConfig) -> Modify {
        let s = r.set.clone().unwrap_or_default();
        let removes = |f: &str| r.remove.iter().any(|x| x == f);
        Modify {
            class: s.class,
            subclass: if removes("subclass") {
                Some(None)
            } else {
                s.subclass.map(Some)
            },
            precedence: s.precedence,
            persistence: s.persistence,
            expiry: if removes("expiry") {
                Some(None)
            } else {
                s.expiry_s.map(|e| Some(Duration::from_secs(e)))
            },
            severity: s.severity.as_deref().and_then(parse_severity),
            text: s.text,
            remove_data: removes("data"),
            remove_support_instance: removes("support_instance"),
        }
    }

    /// True if it changes the content, not only the header.
    pub(super) fn touches_content(&self) -> bool {
        self.severity.is_some()
            || self.text.is_some()
            || self.remove_data
            || self.remove_support_instance
    }

    /// Changes the header of a message passing at `now`.
    pub(super) fn header(&self, h: &mut Header, now: Timestamp) {
        if let Some(c) = &self.class {
            h.class.clone_from(c);
        }
        if let Some(s) = &self.subclass {
            h.subclass.clone_from(s);
        }
        if let Some(p) = self.precedence {
            h.qos.precedence = p;
        }
        if let Some(p) = self.persistence {
            h.qos.persistence = p;
        }
        if let Some(e) = self.expiry {
            h.qos.expiry = e.map(|d| now.after(d));
        }
    }

    /// Changes the content; true if it changed anything.
    pub(super) fn content(&self, c: &mut Content) -> bool {
        let (text, data, si): (&mut String, _, &mut Option<ComponentId>) = match c {
            Content::Alarm(a) => {
                if let Some(s) = self.severity {
                    a.severity = s;
                }
                (&mut a.text, &mut a.data, &mut a.support_instance)
            }
            Content::Event(e) => (&mut e.text, &mut e.data, &mut e.support_instance),
            _ => return false,
        };
        if let Some(t) = &self.text {
            text.clone_from(t);
        }
        if self.remove_data {
            *data = None;
        }
        if self.remove_support_instance {
            *si = None;
        }
        true
    }

    /// Changes an item in place; its content (already decoded as
    /// `content`, if it could be) is encoded again only if it changed.
    pub(super) fn item(&self, item: &mut Item, content: Option<&Content>, now: Timestamp) {
        self.header(item.header_mut(), now);
        if !self.touches_content() {
            return;
        }
        match content.cloned() {
            Some(mut c) => {
                if self.content(&mut c) {
                    item.content = Bytes::from(encode_content(&c));
                }
            }
            None => tracing::debug!(
                message = %item.header.id,
                "content unreadable; only its header was modified"
            ),
        }
    }
}
