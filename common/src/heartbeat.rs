//! Heartbeats and lifecycle notices (DESIGN.md §3).
//!
//! A heartbeat is a `data` message, class `infrastructure`, subclass
//! `heartbeat`, MIME `text/xml`, whose payload is the node's status tree:
//!
//! ```xml
//! <status id="acme.p7" role="proxy" version="0.1.0" uptime-s="42">
//!   <spool messages="3" bytes="2048" capacity="1073741824"/>
//!   <module id="local-api"><instance id="acme.p7.si1" key="db1.acme" state="enabled"/></module>
//! </status>
//! ```
//!
//! Cold-start and shutdown notices are `event`s, class `infrastructure`,
//! subclass `cold-start` / `shutdown`.

use std::fmt::Write;

use bytes::Bytes;
use quick_xml::escape::escape;

use crate::id::ComponentId;
use crate::model::{Content, Data, Encoding, Event, Message, Qos};
use crate::store::SpoolStats;

/// Class of infrastructure messages.
pub const CLASS: &str = "infrastructure";
/// Subclass of heartbeats.
pub const HEARTBEAT: &str = "heartbeat";
/// Subclass of the cold-start notice.
pub const COLD_START: &str = "cold-start";
/// Subclass of the shutdown notice.
pub const SHUTDOWN: &str = "shutdown";

/// A support instance in the status tree.
#[derive(Debug, Clone)]
pub struct InstanceStatus {
    /// Its ID.
    pub id: ComponentId,
    /// The integrator's key (hostname, IP).
    pub key: String,
    /// `enabled` or `disabled`.
    pub state: String,
}

/// A node's status tree.
#[derive(Debug, Clone)]
pub struct StatusTree {
    /// The node.
    pub id: ComponentId,
    /// `proxy` or `mlm`.
    pub role: &'static str,
    /// Seconds since start.
    pub uptime_s: u64,
    /// The spool, if the node has one.
    pub spool: Option<SpoolStats>,
    /// Integration modules → their support instances.
    pub modules: Vec<(String, Vec<InstanceStatus>)>,
}

impl StatusTree {
    /// The status tree as XML.
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<status id="{}" role="{}" version="{}" uptime-s="{}">"#,
            self.id,
            self.role,
            env!("CARGO_PKG_VERSION"),
            self.uptime_s
        );
        if let Some(sp) = &self.spool {
            let _ = write!(
                s,
                r#"<spool messages="{}" bytes="{}" capacity="{}"/>"#,
                sp.messages, sp.bytes, sp.capacity
            );
        }
        for (m, instances) in &self.modules {
            let _ = write!(s, r#"<module id="{}">"#, escape(m.as_str()));
            for i in instances {
                let _ = write!(
                    s,
                    r#"<instance id="{}" key="{}" state="{}"/>"#,
                    i.id,
                    escape(i.key.as_str()),
                    escape(i.state.as_str())
                );
            }
            s.push_str("</module>");
        }
        s.push_str("</status>");
        s
    }

    /// The heartbeat message carrying this tree.
    pub fn heartbeat(&self) -> Message {
        let mut m = Message::forward(
            self.id.clone(),
            CLASS,
            Some(HEARTBEAT),
            Content::Data(Data {
                mime: "text/xml".into(),
                encoding: Encoding::Text,
                payload: Bytes::from(self.to_xml()),
            }),
        );
        // A heartbeat is worthless once the next one is due; never crowd out real traffic.
        m.header.qos = Qos {
            persistence: false,
            precedence: 2,
            expiry: None,
        };
        m
    }
}

/// A lifecycle notice (`cold-start` or `shutdown`) from `id`.
pub fn notice(id: &ComponentId, subclass: &str, text: &str) -> Message {
    Message::forward(
        id.clone(),
        CLASS,
        Some(subclass),
        Content::Event(Event {
            support_instance: None,
            text: text.to_string(),
            data: None,
        }),
    )
}
