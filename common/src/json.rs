//! The JSON view of messages used by the operator API, SSE and CLIs.
//!
//! One rendering for every JSON surface, so `rsnet-ctl messages`, the stream
//! and the proxy inbox show a message the same way. Payloads are text when
//! the data was sent as text, base64 otherwise.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::model::{Content, Data, Direction, Encoding, Header};

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
            "request": b.request.to_string(), "granted": b.granted, "reason": b.reason, "url": b.url, "token": b.token,
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
