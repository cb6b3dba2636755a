//! The JSON view of messages used by the operator API, SSE and CLIs.
//!
//! One rendering for every JSON surface, so `rsnet-ctl messages`, the stream
//! and the proxy inbox show a message the same way. Payloads are text when
//! the data was sent as text, base64 otherwise.

use base64::Engine as _;
use serde_json::{json, Value};

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::id::ComponentId;
use crate::limits::MAX_TEXT_BYTES;
use crate::model::{
    valid_class, Alarm, AlarmState, Content, ContentKind, Data, Direction, Encoding, Event, Header,
    Hop, Qos, Severity, Timestamp, MAX_PRECEDENCE,
};

// ---------------------------------------------------------------- view

/// A message as every JSON surface shows it (the operator API, the
/// stream, the proxy's inbox): the header's fields, `content`, and the
/// fields the caller adds (`seq`, `received`, `destination`), as one
/// object with its keys in order.
///
/// It is written straight to text, borrowing from the message: no JSON
/// tree in between. The appserver's stream writes one per message per
/// subscriber, and building a `serde_json::Value` for each was most of the
/// stream's cost.
pub struct MessageView<'a>(Fields<'a>);

impl<'a> MessageView<'a> {
    /// The header's fields, and `content` (or `error` with the text given,
    /// when the content does not parse).
    pub fn new(h: &'a Header, content: Result<&'a Content, String>) -> Self {
        let mut f = header_fields(h);
        match content {
            Ok(c) => f.push(("content", content_field(c))),
            Err(e) => f.push(("error", Field::Text(e))),
        }
        MessageView(Fields(f))
    }

    /// Adds a number field.
    pub fn with_u64(mut self, key: &'static str, v: u64) -> Self {
        self.0 .0.push((key, Field::U64(v)));
        self
    }

    /// Adds a time field (RFC 3339).
    pub fn with_time(mut self, key: &'static str, t: Timestamp) -> Self {
        self.0 .0.push((key, Field::Time(t)));
        self
    }

    /// Adds a text field.
    pub fn with_str(mut self, key: &'static str, v: &'a str) -> Self {
        self.0 .0.push((key, Field::Str(v)));
        self
    }

    /// The view as JSON text.
    pub fn to_json(&self) -> String {
        // Every field serializes without error (strings, numbers, values).
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The view as JSON text in two pieces, around the value of field
    /// `key`: `before + value + after` is what [`MessageView::to_json`]
    /// writes with that value. For a value known only later (the
    /// appserver's stream renders a message before the store gives it its
    /// sequence number). Without such a field, `after` is empty.
    pub fn to_json_around(&self, key: &str) -> (String, String) {
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let mut before = None;
        out.push(b'{');
        for (i, (k, v)) in self.0.in_order().into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Keys are this module's own names: nothing to escape, but
            // written as serde_json writes them all the same.
            let _ = serde_json::to_writer(&mut out, k);
            out.push(b':');
            if *k == key && before.is_none() {
                before = Some(std::mem::take(&mut out));
                continue;
            }
            let _ = serde_json::to_writer(&mut out, v);
        }
        out.push(b'}');
        // serde_json writes UTF-8 only.
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap_or_default();
        match before {
            Some(b) => (text(b), text(out)),
            None => (text(out), String::new()),
        }
    }
}

impl serde::Serialize for MessageView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// An object's fields, written with their keys sorted (as a
/// `serde_json::Map` writes them, so the text is the same as it was).
struct Fields<'a>(Vec<(&'static str, Field<'a>)>);

/// One field's value, borrowed from the message where it can be.
enum Field<'a> {
    Str(&'a str),
    OptStr(Option<&'a str>),
    Text(String),
    Id(&'a ComponentId),
    OptId(Option<&'a ComponentId>),
    Time(Timestamp),
    OptTime(Option<Timestamp>),
    U64(u64),
    Bool(bool),
    Kind(ContentKind),
    Severity(Severity),
    State(AlarmState),
    Encoding(Encoding),
    Ids(&'a [ComponentId]),
    Routing(&'a [Hop]),
    Object(Fields<'a>),
    OptObject(Option<Fields<'a>>),
    /// The kinds the surfaces show rarely: built as a tree.
    Value(Value),
}

impl<'a> Fields<'a> {
    /// The fields, keys sorted.
    fn in_order(&self) -> Vec<&(&'static str, Field<'a>)> {
        let mut order: Vec<&(&'static str, Field<'a>)> = self.0.iter().collect();
        order.sort_by_key(|(k, _)| *k);
        order
    }
}

impl serde::Serialize for Fields<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let order = self.in_order();
        let mut m = s.serialize_map(Some(order.len()))?;
        for (k, v) in order {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl serde::Serialize for Field<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            Field::Str(v) => s.serialize_str(v),
            Field::OptStr(v) => v.serialize(s),
            Field::Text(v) => s.serialize_str(v),
            Field::Id(v) => v.serialize(s),
            Field::OptId(v) => v.serialize(s),
            Field::Time(t) => s.serialize_str(&t.to_rfc3339()),
            Field::OptTime(None) => s.serialize_none(),
            Field::OptTime(Some(t)) => s.serialize_str(&t.to_rfc3339()),
            Field::U64(v) => s.serialize_u64(*v),
            Field::Bool(v) => s.serialize_bool(*v),
            Field::Kind(v) => v.serialize(s),
            Field::Severity(v) => v.serialize(s),
            Field::State(v) => v.serialize(s),
            Field::Encoding(v) => v.serialize(s),
            Field::Ids(v) => v.serialize(s),
            Field::Routing(hops) => {
                let mut q = s.serialize_seq(Some(hops.len()))?;
                for h in *hops {
                    q.serialize_element(&Fields(vec![
                        ("id", Field::Id(&h.id)),
                        ("time", Field::Time(h.time)),
                    ]))?;
                }
                q.end()
            }
            Field::Object(f) => f.serialize(s),
            Field::OptObject(f) => f.serialize(s),
            Field::Value(v) => v.serialize(s),
        }
    }
}

fn header_fields(h: &Header) -> Vec<(&'static str, Field<'_>)> {
    let mut f = Vec::with_capacity(12);
    f.push(("id", Field::Text(h.id.to_string())));
    f.push(("class", Field::Str(&h.class)));
    f.push(("subclass", Field::OptStr(h.subclass.as_deref())));
    f.push(("kind", Field::Kind(h.kind)));
    f.push(("created", Field::Time(h.created)));
    match &h.direction {
        Direction::Source(s) => {
            f.push(("source", Field::Id(&s.origin)));
            if let Some(v) = &s.version {
                f.push(("version", Field::Str(v)));
            }
        }
        Direction::Destination(d) => {
            f.push(("destinations", Field::Ids(&d.ids)));
            f.push((
                "group",
                match &d.group {
                    Some(g) => Field::Text(g.to_string()),
                    None => Field::OptStr(None),
                },
            ));
        }
    }
    f.push((
        "qos",
        Field::Object(Fields(vec![
            ("precedence", Field::U64(u64::from(h.qos.precedence))),
            ("persistence", Field::Bool(h.qos.persistence)),
            ("expiry", Field::OptTime(h.qos.expiry)),
        ])),
    ));
    f.push(("routing", Field::Routing(&h.routing)));
    f
}

fn data_fields(d: &Data) -> Fields<'_> {
    let payload = match d.encoding {
        Encoding::Text => String::from_utf8_lossy(&d.payload).into_owned(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&d.payload),
    };
    Fields(vec![
        ("mime", Field::Str(&d.mime)),
        ("encoding", Field::Encoding(d.encoding)),
        ("size", Field::U64(d.payload.len() as u64)),
        ("payload", Field::Text(payload)),
    ])
}

fn content_field(c: &Content) -> Field<'_> {
    Field::Object(match c {
        Content::Alarm(a) => Fields(vec![
            ("severity", Field::Severity(a.severity)),
            ("state", Field::State(a.state)),
            (
                "support_instance",
                Field::OptId(a.support_instance.as_ref()),
            ),
            ("text", Field::Str(&a.text)),
            ("data", Field::OptObject(a.data.as_ref().map(data_fields))),
        ]),
        Content::Event(e) => Fields(vec![
            (
                "support_instance",
                Field::OptId(e.support_instance.as_ref()),
            ),
            ("text", Field::Str(&e.text)),
            ("data", Field::OptObject(e.data.as_ref().map(data_fields))),
        ]),
        Content::Data(d) => data_fields(d),
        Content::Response(r) => {
            return Field::Value(json!({
                "request": r.request.to_string(), "status": r.status, "reason": r.reason,
                "retry_after_ms": r.retry_after.map(|d| d.as_millis() as u64), "correlation": r.correlation,
            }))
        }
        Content::BulkRequest(b) => {
            return Field::Value(
                json!({ "size": b.size, "sha256": b.sha256, "class": b.class, "filename": b.filename }),
            )
        }
        Content::BulkResponse(b) => {
            return Field::Value(json!({
                "request": b.request.to_string(), "granted": b.granted, "reason": b.reason,
                "retry_after_ms": b.retry_after.map(|d| d.as_millis() as u64),
                "expires": b.expires.map(|t| t.to_rfc3339()),
                // The token is a secret and the URL carries it: neither is shown.
            }));
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Destination, Response, Source, Status};

    fn header(direction: Direction, kind: ContentKind) -> Header {
        let created = Timestamp(1_700_000_000_000);
        Header {
            id: "0190a5b2-0000-7000-8000-000000000001".parse().unwrap(),
            class: kind.as_str().into(),
            subclass: Some("disk".into()),
            kind,
            created,
            direction,
            qos: Qos::default(),
            routing: vec![
                Hop {
                    id: "acme.p1".parse().unwrap(),
                    time: created,
                },
                Hop {
                    id: "acme.mlm1".parse().unwrap(),
                    time: Timestamp(created.0 + 5),
                },
            ],
        }
    }

    /// The text, parsed and written again by `serde_json` (whose maps sort
    /// their keys): the view's keys are in order at every level.
    fn sorted(text: &str) -> Value {
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
        v
    }

    #[test]
    fn a_view_writes_every_field_in_key_order_with_what_the_caller_adds() {
        let src = Direction::Source(Source {
            origin: "acme.p1".parse().unwrap(),
            version: Some("1.2.3".into()),
        });
        let h = header(src, ContentKind::Alarm);
        let c = Content::Alarm(Alarm {
            severity: Severity::Major,
            state: AlarmState::Raised,
            support_instance: Some("db1".parse().unwrap()),
            text: "disk \"/\" full\n".into(),
            data: Some(Data {
                mime: "text/plain".into(),
                encoding: Encoding::Text,
                payload: Bytes::from_static(b"97%"),
            }),
        });
        let text = MessageView::new(&h, Ok(&c))
            .with_u64("seq", 7)
            .with_time("received", Timestamp(1_700_000_000_009))
            .to_json();
        assert_eq!(
            text,
            concat!(
                r#"{"class":"alarm","content":{"data":{"encoding":"text","mime":"text/plain","payload":"97%","size":3},"#,
                r#""severity":"major","state":"raised","support_instance":"db1","text":"disk \"/\" full\n"},"#,
                r#""created":"2023-11-14T22:13:20.000Z","id":"0190a5b2-0000-7000-8000-000000000001","kind":"alarm","#,
                r#""qos":{"expiry":null,"persistence":true,"precedence":4},"received":"2023-11-14T22:13:20.009Z","#,
                r#""routing":[{"id":"acme.p1","time":"2023-11-14T22:13:20.000Z"},{"id":"acme.mlm1","time":"2023-11-14T22:13:20.005Z"}],"#,
                r#""seq":7,"source":"acme.p1","subclass":"disk","version":"1.2.3"}"#
            )
        );
        sorted(&text);
        // In two pieces around `seq`, the same text with any value there.
        let view = MessageView::new(&h, Ok(&c))
            .with_u64("seq", 0)
            .with_time("received", Timestamp(1_700_000_000_009));
        let (before, after) = view.to_json_around("seq");
        assert!(before.ends_with(r#","seq":"#), "{before}");
        assert_eq!(format!("{before}7{after}"), text);
        assert_eq!(view.to_json_around("nope"), (view.to_json(), String::new()));
    }

    #[test]
    fn destinations_binary_data_other_kinds_and_bad_content_are_shown_too() {
        let to = Direction::Destination(Destination {
            ids: vec!["acme.p1".parse().unwrap(), "acme.p2".parse().unwrap()],
            group: Some("group:edge".parse().unwrap()),
        });
        let h = header(to.clone(), ContentKind::Event);
        let c = Content::Event(Event {
            support_instance: None,
            text: "hi".into(),
            data: Some(Data {
                mime: "application/octet-stream".into(),
                encoding: Encoding::Base64,
                payload: Bytes::from_static(&[0, 255]),
            }),
        });
        let v = sorted(
            &MessageView::new(&h, Ok(&c))
                .with_str("destination", "inbox")
                .to_json(),
        );
        assert_eq!(v["destinations"], json!(["acme.p1", "acme.p2"]));
        assert_eq!(v["group"], "group:edge");
        assert_eq!(v["destination"], "inbox");
        assert_eq!(v["content"]["data"]["payload"], "AP8=");
        assert_eq!(v["content"]["support_instance"], Value::Null);
        assert!(v.get("source").is_none());

        let h = header(to, ContentKind::Response);
        let c = Content::Response(Response {
            request: h.id,
            status: Status::Rejected,
            reason: Some("full".into()),
            retry_after: Some(Duration::from_millis(1500)),
            correlation: None,
            retry_class: None,
        });
        let v = sorted(&MessageView::new(&h, Ok(&c)).to_json());
        assert_eq!(v["content"]["retry_after_ms"], 1500);
        assert_eq!(v["content"]["status"], "rejected");
        assert_eq!(v["content"]["reason"], "full");

        let v = sorted(&MessageView::new(&h, Err("content: bad".into())).to_json());
        assert_eq!(v["error"], "content: bad");
        assert!(v.get("content").is_none());
    }
}
