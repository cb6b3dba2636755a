//! Heartbeats and lifecycle notices (DESIGN.md §3).
//!
//! A heartbeat is a `data` message, class `infrastructure`, subclass
//! `heartbeat`, MIME `text/xml`, whose payload is the node's status tree:
//!
//! ```xml
//! <status id="acme.p7" role="proxy" version="0.1.0" uptime-s="42" interval-s="60">
//!   <spool messages="3" bytes="2048" capacity="1073741824"/>
//!   <queues messages="0" bytes="0"/>
//!   <module name="nagios" id="acme.p7.m1" version="4.4">
//!     <instance id="acme.p7.si1" key="db1.acme" state="enabled"/>
//!   </module>
//!   <module name="local-api"><instance id="acme.p7.si2" key="web1" state="enabled"/></module>
//! </status>
//! ```
//!
//! `interval-s` is how often the node promises a heartbeat: the appserver
//! judges the node's liveness by it. `queues` is what the node holds for
//! the nodes below it (an MLM's back-channel queues). The appserver reads
//! the tree back with [`StatusTree::from_xml`] (bounded, never trusting the
//! sender) and keeps it in its topology.
//!
//! Cold-start and shutdown notices are `event`s, class `infrastructure`,
//! subclass `cold-start` / `shutdown`. Everything here is *originated* by
//! the node ([`Message::originated`]): its source carries the node's
//! software version.

use std::fmt::Write;

use bytes::Bytes;
use quick_xml::escape::escape;
use serde::{Deserialize, Serialize};

use crate::envelope::wire::{self, InvalidMessage};
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

/// Most integration modules one status tree may list.
pub const MAX_MODULES: usize = 256;
/// Most support instances one status tree may list, over all its modules.
pub const MAX_INSTANCES: usize = 10_000;
/// Longest name, key, state or version in a status tree.
pub const MAX_FIELD_BYTES: usize = 255;

/// A support instance in the status tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Its ID.
    pub id: ComponentId,
    /// The integrator's key (hostname, IP).
    pub key: String,
    /// `enabled` or `disabled`.
    pub state: String,
}

/// An integration module and the support instances it reports on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    /// The integrator's name for it (`local-api` for instances no
    /// registered module claims).
    pub name: String,
    /// The ID its proxy allocated to it, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ComponentId>,
    /// Its own software version, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its support instances.
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
}

/// How full a store is: a spool, or a node's back-channel queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Capacity in bytes, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

impl From<SpoolStats> for Level {
    fn from(s: SpoolStats) -> Level {
        Level {
            messages: s.messages,
            bytes: s.bytes,
            capacity: Some(s.capacity),
        }
    }
}

/// A node's status tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusTree {
    /// The node.
    pub id: ComponentId,
    /// `proxy` or `mlm`.
    pub role: String,
    /// Its software version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Seconds between its heartbeats.
    pub interval_s: u64,
    /// The spool, if the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<Level>,
    /// What it holds for the nodes below it, if it holds anything for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Level>,
    /// Integration modules and their support instances.
    #[serde(default)]
    pub modules: Vec<ModuleStatus>,
}

impl StatusTree {
    /// A tree for this build's node `id` of `role`, with nothing in it yet.
    pub fn new(id: ComponentId, role: &str, uptime_s: u64, interval_s: u64) -> StatusTree {
        StatusTree {
            id,
            role: role.to_string(),
            version: crate::VERSION.to_string(),
            uptime_s,
            interval_s,
            spool: None,
            queues: None,
            modules: Vec::new(),
        }
    }

    /// The status tree as XML.
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<status id="{}" role="{}" version="{}" uptime-s="{}" interval-s="{}">"#,
            self.id,
            escape(self.role.as_str()),
            escape(self.version.as_str()),
            self.uptime_s,
            self.interval_s,
        );
        for (name, level) in [("spool", &self.spool), ("queues", &self.queues)] {
            if let Some(l) = level {
                let _ = write!(
                    s,
                    r#"<{name} messages="{}" bytes="{}""#,
                    l.messages, l.bytes
                );
                if let Some(c) = l.capacity {
                    let _ = write!(s, r#" capacity="{c}""#);
                }
                s.push_str("/>");
            }
        }
        for m in &self.modules {
            let _ = write!(s, r#"<module name="{}""#, escape(m.name.as_str()));
            if let Some(id) = &m.id {
                let _ = write!(s, r#" id="{id}""#);
            }
            if let Some(v) = &m.version {
                let _ = write!(s, r#" version="{}""#, escape(v.as_str()));
            }
            s.push('>');
            for i in &m.instances {
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

    /// Reads a status tree a node sent, within [`MAX_MODULES`],
    /// [`MAX_INSTANCES`] and [`MAX_FIELD_BYTES`] and the XML limits of
    /// every part.
    ///
    /// # Errors
    /// The first field or limit that is wrong.
    pub fn from_xml(xml: &[u8]) -> Result<StatusTree, InvalidMessage> {
        let w: WireStatus = wire::decode_document(xml, "status", "status")?;
        let bad = |f: &str, why: String| InvalidMessage::Field {
            field: format!("status/{f}"),
            reason: why,
        };
        let text = |f: &str, v: String| {
            if v.len() > MAX_FIELD_BYTES || v.chars().any(char::is_control) {
                Err(bad(
                    f,
                    format!("must be at most {MAX_FIELD_BYTES} bytes without control characters"),
                ))
            } else {
                Ok(v)
            }
        };
        if w.modules.len() > MAX_MODULES {
            return Err(bad(
                "module",
                format!("{} modules, limit {MAX_MODULES}", w.modules.len()),
            ));
        }
        let n: usize = w.modules.iter().map(|m| m.instances.len()).sum();
        if n > MAX_INSTANCES {
            return Err(bad(
                "module/instance",
                format!("{n} instances, limit {MAX_INSTANCES}"),
            ));
        }
        let mut modules = Vec::with_capacity(w.modules.len());
        for m in w.modules {
            let mut instances = Vec::with_capacity(m.instances.len());
            for i in m.instances {
                instances.push(InstanceStatus {
                    id: i
                        .id
                        .parse()
                        .map_err(|e| bad("module/instance/@id", format!("{e}")))?,
                    key: text("module/instance/@key", i.key)?,
                    state: text("module/instance/@state", i.state)?,
                });
            }
            modules.push(ModuleStatus {
                name: text("module/@name", m.name)?,
                id: m
                    .id
                    .map(|s| s.parse())
                    .transpose()
                    .map_err(|e| bad("module/@id", format!("{e}")))?,
                version: m.version.map(|v| text("module/@version", v)).transpose()?,
                instances,
            });
        }
        Ok(StatusTree {
            id: w.id.parse().map_err(|e| bad("@id", format!("{e}")))?,
            role: text("@role", w.role)?,
            version: text("@version", w.version)?,
            uptime_s: w.uptime_s,
            interval_s: w.interval_s,
            spool: w.spool.map(Into::into),
            queues: w.queues.map(Into::into),
            modules,
        })
    }

    /// The heartbeat message carrying this tree.
    pub fn heartbeat(&self) -> Message {
        let mut m = Message::originated(
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

    /// The tree a heartbeat carries, if `content` is one that reads.
    pub fn of(content: &Content) -> Option<Result<StatusTree, InvalidMessage>> {
        match content {
            Content::Data(d) if d.mime == "text/xml" && d.encoding == Encoding::Text => {
                Some(StatusTree::from_xml(&d.payload))
            }
            _ => None,
        }
    }
}

/// A lifecycle notice (`cold-start` or `shutdown`) from `id`.
pub fn notice(id: &ComponentId, subclass: &str, text: &str) -> Message {
    Message::originated(
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

/// An `event` of class `infrastructure` that `origin` makes itself, with
/// `text` for people and `data` as JSON for programs (liveness changes,
/// outage reports).
pub fn event(
    origin: &ComponentId,
    subclass: &str,
    text: String,
    data: &serde_json::Value,
) -> Message {
    Message::originated(
        origin.clone(),
        CLASS,
        Some(subclass),
        Content::Event(Event {
            support_instance: None,
            text,
            data: Some(Data {
                mime: "application/json".into(),
                encoding: Encoding::Text,
                payload: Bytes::from(data.to_string()),
            }),
        }),
    )
}

// The tree as it travels (quick-xml's serde names attributes `@name`).
#[derive(Deserialize)]
struct WireStatus {
    #[serde(rename = "@id")]
    id: String,
    #[serde(rename = "@role")]
    role: String,
    #[serde(rename = "@version")]
    version: String,
    #[serde(rename = "@uptime-s", default)]
    uptime_s: u64,
    #[serde(rename = "@interval-s", default)]
    interval_s: u64,
    #[serde(default)]
    spool: Option<WireLevel>,
    #[serde(default)]
    queues: Option<WireLevel>,
    #[serde(rename = "module", default)]
    modules: Vec<WireModule>,
}

#[derive(Deserialize)]
struct WireLevel {
    #[serde(rename = "@messages", default)]
    messages: u64,
    #[serde(rename = "@bytes", default)]
    bytes: u64,
    #[serde(rename = "@capacity", default)]
    capacity: Option<u64>,
}

impl From<WireLevel> for Level {
    fn from(w: WireLevel) -> Level {
        Level {
            messages: w.messages,
            bytes: w.bytes,
            capacity: w.capacity,
        }
    }
}

#[derive(Deserialize)]
struct WireModule {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@id", default)]
    id: Option<String>,
    #[serde(rename = "@version", default)]
    version: Option<String>,
    #[serde(rename = "instance", default)]
    instances: Vec<WireInstance>,
}

#[derive(Deserialize)]
struct WireInstance {
    #[serde(rename = "@id")]
    id: String,
    #[serde(rename = "@key")]
    key: String,
    #[serde(rename = "@state")]
    state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> StatusTree {
        let mut t = StatusTree::new("acme.p7".parse().unwrap(), "proxy", 42, 60);
        t.spool = Some(Level {
            messages: 3,
            bytes: 2048,
            capacity: Some(1 << 30),
        });
        t.queues = Some(Level::default());
        t.modules = vec![
            ModuleStatus {
                name: "nagios <4>".into(),
                id: Some("acme.p7.m1".parse().unwrap()),
                version: Some("4.4 \"x\"".into()),
                instances: vec![InstanceStatus {
                    id: "acme.p7.si1".parse().unwrap(),
                    key: "db1 & co".into(),
                    state: "enabled".into(),
                }],
            },
            ModuleStatus {
                name: "local-api".into(),
                id: None,
                version: None,
                instances: vec![],
            },
        ];
        t
    }

    #[test]
    fn a_tree_reads_back_as_it_was_written() {
        let t = tree();
        assert_eq!(StatusTree::from_xml(t.to_xml().as_bytes()).unwrap(), t);
        let hb = t.heartbeat();
        assert_eq!(
            hb.header.source().and_then(|s| s.version.as_deref()),
            Some(crate::VERSION)
        );
        assert_eq!(StatusTree::of(&hb.content).unwrap().unwrap(), t);
    }

    #[test]
    fn a_hostile_tree_is_refused_not_trusted() {
        let many = format!(
            r#"<status id="a.p" role="proxy" version="1" uptime-s="1">{}</status>"#,
            r#"<module name="m"/>"#.repeat(MAX_MODULES + 1)
        );
        let instances = format!(
            r#"<status id="a.p" role="proxy" version="1"><module name="m">{}</module></status>"#,
            r#"<instance id="a.p.si1" key="k" state="enabled"/>"#.repeat(MAX_INSTANCES + 1)
        );
        let long = format!(
            r#"<status id="a.p" role="proxy" version="{}"/>"#,
            "v".repeat(MAX_FIELD_BYTES + 1)
        );
        for (xml, why) in [
            (many.as_str(), "modules"),
            (instances.as_str(), "instances"),
            (long.as_str(), "at most"),
            (
                r#"<status id="Not An ID" role="p" version="1"/>"#,
                "status/@id",
            ),
            (
                r#"<other id="a.p" role="p" version="1"/>"#,
                "expected <status>",
            ),
            (r#"<status id="a.p" role="p" version="1">"#, ""),
            (
                r#"<status id="a.p" role="p&#10;x" version="1"/>"#,
                "control",
            ),
            (
                r#"<!DOCTYPE x [<!ENTITY a "b">]><status id="a.p" role="p" version="1"/>"#,
                "DOCTYPE",
            ),
        ] {
            let e = StatusTree::from_xml(xml.as_bytes()).expect_err(xml);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_tree_without_an_interval_reads_as_zero() {
        let t = StatusTree::from_xml(br#"<status id="a.p" role="mlm" version="0.1.0"/>"#).unwrap();
        assert_eq!((t.interval_s, t.modules.len()), (0, 0));
    }
}
