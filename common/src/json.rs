//! The JSON view of messages used by the operator API, SSE and CLIs.
//!
//! One rendering for every JSON surface, so `rsnet-ctl messages`, the stream
//! and the proxy inbox show a message the same way. Payloads are text when
//! the data was sent as text, base64 otherwise.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::id::ComponentId;
use crate::limits::MAX_TEXT_BYTES;
use crate::model::{
    valid_class, Alarm, AlarmState, Content, Data, Direction, Encoding, Event, Header, Qos,
    Severity, MAX_PRECEDENCE,
};

fn data_json(d: &Data) -> Value {
    let payload = match d.encoding {
        Encoding::Text => Value::String(String::from_utf8_lossy(&d.payload).into_owned()),
        Encoding::Base64 => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&d.payload))
        }
    };
    json!({ "mime": d.mime, "encoding": d.encoding, "size": d.payload.len(), "payload": payload })
}

/// The content as JSON, tagged with its kind.
pub fn content(c: &Content) -> Value {
    match c {
        Content::Alarm(a) => json!({
            "severity": a.severity, "state": a.state,
            "support_instance": a.support_instance.as_ref().map(|s| s.to_string()),
            "text": a.text, "data": a.data.as_ref().map(data_json),
        }),
        Content::Event(e) => json!({
            "support_instance": e.support_instance.as_ref().map(|s| s.to_string()),
            "text": e.text, "data": e.data.as_ref().map(data_json),
        }),
        Content::Response(r) => json!({
            "request": r.request.to_string(), "status": r.status, "reason": r.reason,
            "retry_after_ms": r.retry_after.map(|d| d.as_millis() as u64), "correlation": r.correlation,
        }),
        Content::BulkRequest(b) => {
            json!({ "size": b.size, "sha256": b.sha256, "class": b.class, "filename": b.filename })
        }
        Content::BulkResponse(b) => json!({
            "request": b.request.to_string(), "granted": b.granted, "reason": b.reason,
            "retry_after_ms": b.retry_after.map(|d| d.as_millis() as u64),
            "expires": b.expires.map(|t| t.to_rfc3339()),
            // The token is a secret and the URL carries it: neither is shown.
        }),
        Content::Data(d) => data_json(d),
    }
}

/// The header fields as a JSON object (to which callers add their own).
pub fn header(h: &Header) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(h.id.to_string()));
    m.insert("class".into(), json!(h.class));
    m.insert("subclass".into(), json!(h.subclass));
    m.insert("kind".into(), json!(h.kind));
    m.insert("created".into(), json!(h.created.to_rfc3339()));
    match &h.direction {
        Direction::Source(s) => {
            m.insert("source".into(), json!(s.origin.to_string()));
            if let Some(v) = &s.version {
                m.insert("version".into(), json!(v));
            }
        }
        Direction::Destination(d) => {
            m.insert(
                "destinations".into(),
                json!(d.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()),
            );
            m.insert(
                "group".into(),
                json!(d.group.as_ref().map(|g| g.to_string())),
            );
        }
    }
    m.insert(
        "qos".into(),
        json!({ "precedence": h.qos.precedence, "persistence": h.qos.persistence, "expiry": h.qos.expiry.map(|e| e.to_rfc3339()) }),
    );
    m.insert(
        "routing".into(),
        json!(h
            .routing
            .iter()
            .map(|r| json!({"id": r.id.to_string(), "time": r.time.to_rfc3339()}))
            .collect::<Vec<_>>()),
    );
    m
}

// ---------------------------------------------------------------- input

/// One message as an integrator (proxy local API) or an operator
/// (`POST /api/v1/messages`) writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// `alarm`, `event` or `data`.
    pub kind: String,
    /// The integrator's client key: the proxy's local API only (the
    /// operator API refuses it).
    #[serde(default)]
    pub key: Option<String>,
    /// Class; default: the kind.
    #[serde(default)]
    pub class: Option<String>,
    /// Subclass.
    #[serde(default)]
    pub subclass: Option<String>,
    /// The integrator's key for the support instance (hostname, IP, …).
    #[serde(default)]
    pub support_instance: Option<String>,
    /// Alarm severity (clear, info, warning, minor, major, critical); default `warning`.
    #[serde(default)]
    pub severity: Option<String>,
    /// Alarm state (raised, updated, cleared); default `raised`.
    #[serde(default)]
    pub state: Option<String>,
    /// Text (alarm, event).
    #[serde(default)]
    pub text: Option<String>,
    /// MIME type of `payload` / `payload_base64`; default `text/plain`.
    #[serde(default)]
    pub mime: Option<String>,
    /// Payload as text.
    #[serde(default)]
    pub payload: Option<String>,
    /// Payload as base64.
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// 0..=9, default 4.
    #[serde(default)]
    pub precedence: Option<u8>,
    /// Default true.
    #[serde(default)]
    pub persistent: Option<bool>,
    /// Drop if not delivered within this many seconds.
    #[serde(default)]
    pub expiry_s: Option<u64>,
}

/// What a [`MessageInput`] builds: everything of a message but its header's
/// ID, time, direction and routing, which the caller decides.
#[derive(Debug, Clone)]
pub struct Built {
    /// The content.
    pub content: Content,
    /// Class (default: the kind).
    pub class: String,
    /// Subclass.
    pub subclass: Option<String>,
    /// Precedence and persistence (expiry is `expiry_s` from the caller's clock).
    pub qos: Qos,
}

/// Parses a lowercase enum value, naming the field when it is not one.
fn named<T: serde::de::DeserializeOwned>(
    v: &Option<String>,
    field: &str,
    i: usize,
) -> Result<Option<T>, String> {
    use serde::de::IntoDeserializer;
    v.as_deref()
        .map(|s| {
            let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
                s.into_deserializer();
            T::deserialize(d).map_err(|e| format!("messages[{i}].{field}: {e}"))
        })
        .transpose()
}

/// The payload of `input` (taken out of it), with its MIME type.
fn data(input: &mut MessageInput, i: usize) -> Result<Option<Data>, String> {
    let mime = input.mime.take().unwrap_or_else(|| "text/plain".into());
    if mime.parse::<mime::Mime>().is_err() {
        return Err(format!("messages[{i}].mime: {mime:?} is not a MIME type"));
    }
    match (input.payload.take(), input.payload_base64.take()) {
        (Some(_), Some(_)) => Err(format!(
            "messages[{i}]: give payload or payload_base64, not both"
        )),
        (Some(p), None) => Ok(Some(Data {
            mime,
            encoding: Encoding::Text,
            payload: Bytes::from(p),
        })),
        (None, Some(b)) => {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("messages[{i}].payload_base64: {e}"))?;
            Ok(Some(Data {
                mime,
                encoding: Encoding::Base64,
                payload: payload.into(),
            }))
        }
        (None, None) => Ok(None),
    }
}

impl MessageInput {
    /// Checks the input and builds content, class and QoS; `si` is the
    /// support instance the content names. `i` is the index in the
    /// request, for error messages.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn build(&self, i: usize, si: Option<ComponentId>) -> Result<Built, String> {
        self.clone().into_built(i, si)
    }

    /// [`MessageInput::build`], moving the input's strings into what it
    /// builds (the proxy's local API, for every message).
    ///
    /// # Errors
    /// A message naming the field.
    pub fn into_built(mut self, i: usize, si: Option<ComponentId>) -> Result<Built, String> {
        let text = self.text.take().unwrap_or_default();
        if text.len() > MAX_TEXT_BYTES {
            return Err(format!(
                "messages[{i}].text: longer than {MAX_TEXT_BYTES} bytes"
            ));
        }
        let content =
            match self.kind.as_str() {
                "alarm" => Content::Alarm(Alarm {
                    severity: named(&self.severity, "severity", i)?.unwrap_or(Severity::Warning),
                    state: named(&self.state, "state", i)?.unwrap_or(AlarmState::Raised),
                    support_instance: si,
                    text,
                    data: data(&mut self, i)?,
                }),
                "event" => Content::Event(Event {
                    support_instance: si,
                    text,
                    data: data(&mut self, i)?,
                }),
                "data" => Content::Data(data(&mut self, i)?.ok_or_else(|| {
                    format!("messages[{i}]: data needs payload or payload_base64")
                })?),
                k => {
                    return Err(format!(
                        "messages[{i}].kind: {k:?} (expected alarm, event or data)"
                    ))
                }
            };
        let class = self.class.take().unwrap_or(self.kind);
        if !valid_class(&class) {
            return Err(format!(
                "messages[{i}].class: {class:?} is not a class label ([a-z0-9_.-], 1-64)"
            ));
        }
        if let Some(s) = &self.subclass {
            if !valid_class(s) {
                return Err(format!(
                    "messages[{i}].subclass: {s:?} is not a class label ([a-z0-9_.-], 1-64)"
                ));
            }
        }
        let mut qos = Qos::default();
        if let Some(p) = self.precedence {
            if p > MAX_PRECEDENCE {
                return Err(format!(
                    "messages[{i}].precedence: {p} is above {MAX_PRECEDENCE}"
                ));
            }
            qos.precedence = p;
        }
        qos.persistence = self.persistent.unwrap_or(true);
        Ok(Built {
            content,
            class,
            subclass: self.subclass,
            qos,
        })
    }

    /// `expiry_s` as a duration.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expiry_s.map(Duration::from_secs)
    }
}
