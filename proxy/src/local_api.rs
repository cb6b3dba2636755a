//! The local API: plain HTTP on loopback, JSON, for integrators.
//!
//! | path | what |
//! |---|---|
//! | `POST /v1/messages` | one message object, or `{"messages": [...]}`; 202 with the IDs once spooled (fsync) |
//! | `GET /v1/status` | ID, parent, spool and forwarding counters |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors: 400 for invalid input (the field is named), 413 for an oversize
//! body, 507 when the spool is full.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rsnet_common::forward::Outbox;
use rsnet_common::http_util::{error, json, read_body, text, Body};
use rsnet_common::id::ComponentId;
use rsnet_common::limits::{
    BODY_READ_TIMEOUT, MAX_BATCH_MESSAGES, MAX_LOCAL_BODY_BYTES, MAX_TEXT_BYTES,
};
use rsnet_common::metrics::Registry;
use rsnet_common::model::*;
use rsnet_common::store::StoreError;
use serde::Deserialize;
use serde_json::json;

use crate::instances::Instances;

/// One message as an integrator writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// `alarm`, `event` or `data`.
    pub kind: String,
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

/// `{"messages": [...]}` or a single message object; serde errors name the field.
fn parse_inputs(body: &[u8]) -> Result<Vec<MessageInput>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some(list) = v.get("messages") {
        serde_json::from_value(list.clone()).map_err(|e| format!("messages: {e}"))
    } else {
        serde_json::from_value(v)
            .map(|m| vec![m])
            .map_err(|e| format!("message: {e}"))
    }
}

/// Shared state of the local API.
pub struct LocalApi {
    /// This proxy.
    pub me: ComponentId,
    /// Spool front.
    pub outbox: Arc<Outbox>,
    /// Support instances.
    pub instances: Arc<Instances>,
    /// Metrics.
    pub metrics: Registry,
    /// Parent URL in use, for status.
    pub parent: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Parses a lowercase enum value, naming the field when it is not one.
fn named<T: serde::de::DeserializeOwned>(
    v: &Option<String>,
    field: &str,
    i: usize,
) -> Result<Option<T>, String> {
    v.as_ref()
        .map(|s| {
            serde_json::from_value(serde_json::Value::String(s.clone()))
                .map_err(|e| format!("messages[{i}].{field}: {e}"))
        })
        .transpose()
}

fn data(input: &MessageInput, i: usize) -> Result<Option<Data>, String> {
    let mime = input.mime.clone().unwrap_or_else(|| "text/plain".into());
    if mime.parse::<mime::Mime>().is_err() {
        return Err(format!("messages[{i}].mime: {mime:?} is not a MIME type"));
    }
    match (&input.payload, &input.payload_base64) {
        (Some(_), Some(_)) => Err(format!(
            "messages[{i}]: give payload or payload_base64, not both"
        )),
        (Some(p), None) => Ok(Some(Data {
            mime,
            encoding: Encoding::Text,
            payload: Bytes::from(p.clone()),
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

impl LocalApi {
    /// Turns an integrator's input into a message (allocating its support instance).
    ///
    /// # Errors
    /// A message naming the field.
    pub fn build(&self, input: &MessageInput, i: usize) -> Result<Message, String> {
        let si = input
            .support_instance
            .as_deref()
            .map(|k| self.instances.id_for(k))
            .transpose()?;
        let text = input.text.clone().unwrap_or_default();
        if text.len() > MAX_TEXT_BYTES {
            return Err(format!(
                "messages[{i}].text: longer than {MAX_TEXT_BYTES} bytes"
            ));
        }
        let content =
            match input.kind.as_str() {
                "alarm" => Content::Alarm(Alarm {
                    severity: named(&input.severity, "severity", i)?.unwrap_or(Severity::Warning),
                    state: named(&input.state, "state", i)?.unwrap_or(AlarmState::Raised),
                    support_instance: si.clone(),
                    text,
                    data: data(input, i)?,
                }),
                "event" => Content::Event(Event {
                    support_instance: si.clone(),
                    text,
                    data: data(input, i)?,
                }),
                "data" => Content::Data(data(input, i)?.ok_or_else(|| {
                    format!("messages[{i}]: data needs payload or payload_base64")
                })?),
                k => {
                    return Err(format!(
                        "messages[{i}].kind: {k:?} (expected alarm, event or data)"
                    ))
                }
            };
        let class = input.class.clone().unwrap_or_else(|| input.kind.clone());
        if !valid_class(&class) {
            return Err(format!(
                "messages[{i}].class: {class:?} is not a class label ([a-z0-9_.-], 1-64)"
            ));
        }
        if let Some(s) = &input.subclass {
            if !valid_class(s) {
                return Err(format!(
                    "messages[{i}].subclass: {s:?} is not a class label ([a-z0-9_.-], 1-64)"
                ));
            }
        }
        let origin = si.unwrap_or_else(|| self.me.clone());
        let mut m = Message::forward(origin, &class, input.subclass.as_deref(), content);
        if let Some(p) = input.precedence {
            if p > MAX_PRECEDENCE {
                return Err(format!(
                    "messages[{i}].precedence: {p} is above {MAX_PRECEDENCE}"
                ));
            }
            m.header.qos.precedence = p;
        }
        m.header.qos.persistence = input.persistent.unwrap_or(true);
        m.header.qos.expiry = input
            .expiry_s
            .map(|s| m.header.created.after(Duration::from_secs(s)));
        m.header.routing.push(Hop {
            id: self.me.clone(),
            time: m.header.created,
        });
        Ok(m)
    }

    /// Routes one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match (req.method().clone(), req.uri().path()) {
            (Method::POST, "/v1/messages") => self.post_messages(req).await,
            (Method::GET, "/v1/status") => {
                let s = self.outbox.spool().stats();
                json(
                    StatusCode::OK,
                    &json!({ "id": self.me.to_string(), "parent": (self.parent)(), "spool": s }),
                )
            }
            (Method::GET, "/metrics") => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            (m, p) => error(StatusCode::NOT_FOUND, format!("no route for {m} {p}")),
        }
    }

    async fn post_messages(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match read_body(req.into_body(), MAX_LOCAL_BODY_BYTES, BODY_READ_TIMEOUT).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let inputs = match parse_inputs(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        if inputs.is_empty() || inputs.len() > MAX_BATCH_MESSAGES {
            return error(
                StatusCode::BAD_REQUEST,
                format!("messages: give 1..={MAX_BATCH_MESSAGES}"),
            );
        }
        let mut msgs = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            match self.build(input, i) {
                Ok(m) => msgs.push(m),
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            }
        }
        match self.outbox.push(&msgs).await {
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("spool: {e}")),
            Ok(results) => {
                let mut ids = Vec::with_capacity(results.len());
                let mut full = None;
                for r in results {
                    match r {
                        Ok(id) => ids.push(id.to_string()),
                        Err(e @ StoreError::Full { .. }) => full = Some(e.to_string()),
                        Err(e) => {
                            return error(StatusCode::SERVICE_UNAVAILABLE, format!("spool: {e}"))
                        }
                    }
                }
                match full {
                    // Some may have been spooled; their IDs are listed so nothing is sent twice by mistake.
                    Some(e) => json(
                        StatusCode::INSUFFICIENT_STORAGE,
                        &json!({ "error": e, "ids": ids }),
                    ),
                    None => json(StatusCode::ACCEPTED, &json!({ "ids": ids })),
                }
            }
        }
    }
}
