//! QoS at every hop (DESIGN.md §3): what becomes of a message whose expiry
//! has passed before it reached the appserver.
//!
//! It is dropped where it is found (a spool, an MLM, the appserver's
//! door) and never stored, and the drop is **reported**: an
//! `infrastructure` event, subclass [`EXPIRED`], from the node that dropped
//! it, naming each message (ID, class, origin, expiry) in a JSON payload.
//! The report travels upward like any message and is stored, so operators
//! and service modules see what never arrived. (Expired back-channel
//! messages are reported in the appserver's delivery view instead.)

use crate::id::{ComponentId, MessageId};
use crate::model::{Content, Data, Encoding, Event, Header, Message, Timestamp};

/// The subclass of expiry reports (class `infrastructure`).
pub const EXPIRED: &str = "expired";
/// The subclass of reports of messages evicted from a full spool.
pub const PRUNED: &str = "pruned";
/// The MIME type of an expiry report's payload.
pub const EXPIRED_MIME: &str = "application/json";
/// Messages named in one report (more make more reports).
pub const PER_REPORT: usize = 200;

/// One message dropped as expired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expired {
    /// Its ID.
    pub id: MessageId,
    /// Its class.
    pub class: String,
    /// Its subclass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subclass: Option<String>,
    /// Where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<ComponentId>,
    /// When it expired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
}

impl Expired {
    /// What a header says about it.
    pub fn of(h: &Header) -> Expired {
        Expired {
            id: h.id,
            class: h.class.clone(),
            subclass: h.subclass.clone(),
            origin: h.source().map(|s| s.origin.clone()),
            expiry: h.qos.expiry.map(Timestamp::to_rfc3339),
        }
    }
}

/// The reports of `at` dropping `gone` as expired (one per [`PER_REPORT`] messages).
pub fn reports(at: &ComponentId, gone: &[Expired]) -> Vec<Message> {
    reports_of(at, gone, EXPIRED, "expired")
}

/// The reports of `at` evicting `gone` from its full spool to make room
/// for more important messages (DESIGN.md §3, persistence).
pub fn pruned(at: &ComponentId, gone: &[Expired]) -> Vec<Message> {
    reports_of(at, gone, PRUNED, "was pruned from the full spool")
}

fn reports_of(at: &ComponentId, gone: &[Expired], subclass: &str, what: &str) -> Vec<Message> {
    gone.chunks(PER_REPORT)
        .map(|chunk| {
            let text = match chunk {
                [one] => format!(
                    "message {} ({}) {what} at {at} before it reached the appserver; dropped",
                    one.id, one.class
                ),
                many => format!(
                    "{} messages {what} at {at} before they reached the appserver; dropped",
                    many.len()
                ),
            };
            let payload = serde_json::json!({ "at": at.to_string(), "messages": chunk });
            Message::originated(
                at.clone(),
                crate::heartbeat::CLASS,
                Some(subclass),
                Content::Event(Event {
                    support_instance: None,
                    text,
                    data: Some(Data {
                        mime: EXPIRED_MIME.into(),
                        encoding: Encoding::Text,
                        payload: serde_json::to_vec(&payload).unwrap_or_default().into(),
                    }),
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_every_message_in_chunks() {
        let at: ComponentId = "acme.mlm1".parse().unwrap();
        let gone: Vec<Expired> = (0..450)
            .map(|_| Expired {
                id: MessageId::new(),
                class: "alarm".into(),
                subclass: None,
                origin: Some("acme.p1".parse().unwrap()),
                expiry: None,
            })
            .collect();
        let r = reports(&at, &gone);
        assert_eq!(r.len(), 3);
        let mut named = 0;
        for m in &r {
            assert_eq!(m.header.subclass.as_deref(), Some(EXPIRED));
            let Content::Event(e) = &m.content else {
                panic!()
            };
            let v: serde_json::Value =
                serde_json::from_slice(&e.data.as_ref().unwrap().payload).unwrap();
            named += v["messages"].as_array().unwrap().len();
            let bytes = crate::envelope::wire::encode_content(&m.content).len();
            assert!(bytes < crate::limits::MAX_PART_BYTES as usize, "{bytes}");
        }
        assert_eq!(named, 450);
    }
}
