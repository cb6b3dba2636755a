//! The local API: plain HTTP on loopback, JSON, for integrators.
//!
//! | path | what |
//! |---|---|
//! | `POST /v1/messages` | one message object, or `{"messages": [...]}`; 202 with the IDs once spooled (fsync) |
//! | `GET /v1/inbox?wait=S&limit=N` | back-channel messages for this proxy and its support instances; waits up to S seconds (max 60) for the first; each is leased (not offered again) until acked or the lease ends |
//! | `POST /v1/inbox/ack` | `{"acks": [{"id", "destination"?, "status": "processed"\|"failed", "reason"?}]}` or `{"ids": [...]}`; reports each upward |
//! | `POST /v1/bulk?class=C&name=N` | the body is a file to upload; 202 `{id, size, sha256, state}` once copied (fsync) and requested (see [`crate::bulk`]) |
//! | `GET /v1/bulk`, `GET /v1/bulk/ID` | uploads: state, bytes sent, why denied or retried |
//! | `GET /v1/releases` | each release item's current and previous version: manifest, file path, state (see [`crate::releases`]) |
//! | `POST /v1/releases/ID/applied`, `…/failed` | an integrator's result (`{"reason"}` optional), reported upward |
//! | `PUT /v1/modules/NAME` | `{"version"?, "instances": [KEY, …]}`: registers (or replaces) an integration module, answered with its allocated ID once durable (see [`crate::modules`]) |
//! | `GET /v1/modules`, `GET /v1/modules/NAME`, `DELETE /v1/modules/NAME` | list, show, deregister |
//! | `GET /v1/status` | ID, parent, spool, inbox and forwarding state |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors: 400 for invalid input (the field is named); 413 for an oversize
//! body, or a message that could never travel in an exchange (its content
//! over one part, or its header without room for the hops still to come:
//! [`rsnet_common::envelope::budget`]); 507 when the spool is full.
//!
//! A message is refused at once or spooled; nothing spooled can stall the
//! forwarder behind it. What the parent still rejects for good becomes a
//! dead letter, shown by `GET /v1/status`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rsnet_common::envelope::budget;
use rsnet_common::forward::{self, DeadLetters, Outbox};
use rsnet_common::http_util::{error, json, query_pairs, read_body, text, Body};
use rsnet_common::id::ComponentId;
use rsnet_common::json::{Built, MessageInput};
use rsnet_common::limits::{
    BODY_READ_TIMEOUT, MAX_BATCH_MESSAGES, MAX_LOCAL_BODY_BYTES, MAX_LONG_POLL,
};
use rsnet_common::metrics::Registry;
use rsnet_common::model::*;
use rsnet_common::store::{ClientKey, Pushed, StoreError, MAX_CLIENT_KEY_BYTES};
use serde_json::json;

use crate::inbox::{self, Ack, Inbox};
use crate::instances::Instances;

/// `{"messages": [...]}` or a single message object, each with an optional
/// client `key`; for a single message the key may come as the
/// `Idempotency-Key` header instead. Errors name the field.
///
/// A batch is read in one pass, each message straight into a
/// [`MessageInput`] (no JSON tree, no second look at the bytes: this runs
/// for every message); a batch over [`MAX_BATCH_MESSAGES`] is refused as
/// soon as the reader gets there, and so is an empty one. Public for the `local_messages` fuzz
/// target ([`rsnet_common::fuzzing::local_messages`]).
///
/// # Errors
/// What is wrong, naming the message and field.
pub fn parse_inputs(
    body: &[u8],
    header_key: Option<&str>,
) -> Result<Vec<(MessageInput, Option<String>)>, String> {
    // UTF-8 checked whole (fast), so that fields the reader skips are held
    // to it too: a body is JSON or refused.
    let body = std::str::from_utf8(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut why = None;
    let mut de = serde_json::Deserializer::from_str(body);
    let batch = serde::de::DeserializeSeed::deserialize(Top { why: &mut why }, &mut de)
        .and_then(|b| de.end().map(|()| b))
        .map_err(|e| why.take().unwrap_or_else(|| format!("invalid JSON: {e}")))?;
    let (list, single) = match batch {
        Some(list) => (list, false),
        None => {
            let one: MessageInput =
                serde_json::from_str(body).map_err(|e| format!("message: {e}"))?;
            (vec![one], true)
        }
    };
    if header_key.is_some() && (!single || list.len() != 1) {
        return Err(
            "Idempotency-Key is for a single message; give each message of a batch its own \"key\""
                .into(),
        );
    }
    list.into_iter()
        .enumerate()
        .map(|(i, mut input)| {
            // The label is made only for an error: not an allocation per message.
            let at = || {
                if single {
                    "message".to_string()
                } else {
                    format!("messages[{i}]")
                }
            };
            let key = match (input.key.take(), header_key) {
                (None, h) => h.map(str::to_string),
                (Some(k), None) => Some(k),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{}.key: given both as a field and as Idempotency-Key",
                        at()
                    ))
                }
            };
            if let Some(k) = &key {
                check_key(k).map_err(|e| format!("{}.key: {e}", at()))?;
            }
            Ok((input, key))
        })
        .collect()
}

/// The body's top level, read for its `messages` list (other fields are
/// skipped: a single message is read again as one). `why` gets the error
/// to answer when the list is not what it must be.
struct Top<'w> {
    why: &'w mut Option<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Top<'_> {
    type Value = Option<Vec<MessageInput>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Top<'_> {
    type Value = Option<Vec<MessageInput>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a message object, or {\"messages\": [...]}")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut list = None;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if k == "messages" {
                if list.is_some() {
                    *self.why = Some("messages: given twice".into());
                    return Err(serde::de::Error::duplicate_field("messages"));
                }
                list = Some(map.next_value_seed(Batch {
                    why: &mut *self.why,
                })?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(list)
    }
}

/// The `messages` list: each element read as a [`MessageInput`], its
/// index in the error.
struct Batch<'w> {
    why: &'w mut Option<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Batch<'_> {
    type Value = Vec<MessageInput>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let why = self.why;
        d.deserialize_seq(Batch { why: &mut *why })
            .inspect_err(|_| {
                // Every error inside the list is named by the visitor; one
                // without a name is a `messages` that is no list at all.
                why.get_or_insert_with(|| "messages: must be a list".into());
            })
    }
}

impl<'de> serde::de::Visitor<'de> for Batch<'_> {
    type Value = Vec<MessageInput>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of messages")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH_MESSAGES));
        loop {
            if list.len() > MAX_BATCH_MESSAGES {
                *self.why = Some(format!("messages: give 1..={MAX_BATCH_MESSAGES}"));
                return Err(A::Error::custom("too many messages"));
            }
            match seq.next_element::<MessageInput>() {
                Ok(Some(m)) => list.push(m),
                Ok(None) if list.is_empty() => {
                    *self.why = Some(format!("messages: give 1..={MAX_BATCH_MESSAGES}"));
                    return Err(A::Error::custom("no messages"));
                }
                Ok(None) => return Ok(list),
                Err(e) => {
                    *self.why = Some(format!("messages[{}]: {e}", list.len()));
                    return Err(e);
                }
            }
        }
    }
}

/// A client key: 1..=128 visible ASCII bytes.
fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > MAX_CLIENT_KEY_BYTES {
        return Err(format!("1..={MAX_CLIENT_KEY_BYTES} bytes"));
    }
    if !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("visible ASCII only (no spaces or control characters)".into());
    }
    Ok(())
}

/// Shared state of the local API.
pub struct LocalApi {
    /// This proxy.
    pub me: ComponentId,
    /// Spool front.
    pub outbox: Arc<Outbox>,
    /// What the parent rejected for good.
    pub dead_letters: Arc<DeadLetters>,
    /// Support instances.
    pub instances: Arc<Instances>,
    /// Integration modules integrators registered.
    pub modules: Arc<crate::modules::Modules>,
    /// Back-channel messages for local integrators.
    pub inbox: Arc<Inbox>,
    /// Uploads.
    pub bulk: Arc<crate::bulk::Bulk>,
    /// Releases delivered here.
    pub releases: Arc<crate::releases::Releases>,
    /// Local filtering before the WAN.
    pub rules: Arc<rsnet_common::pipeline::rules::Rules>,
    /// Metrics.
    pub metrics: Registry,
    /// Parent URL in use, for status.
    pub parent: Arc<dyn Fn() -> String + Send + Sync>,
    /// How long a client key is remembered.
    pub key_window: Duration,
    /// Free disk that must stay under the data directory (`[throttle]
    /// min_free_disk_bytes`); below it, messages and files are refused.
    pub disk: Option<rsnet_common::disk::DiskFloor>,
    /// Classes the parent had the forwarder park: (class, seconds left, why).
    pub parked: Arc<dyn Fn() -> Vec<(String, u64, String)> + Send + Sync>,
}

impl LocalApi {
    /// Why nothing can be spooled now, if free disk is below the floor.
    fn disk_low(&self) -> Option<String> {
        let d = self.disk.as_ref()?;
        let free = d.below()?;
        Some(format!(
            "free disk under the proxy's data directory is {} MiB, below the floor of {} MiB (throttle.min_free_disk_bytes): not spooled; free some space",
            free >> 20,
            d.floor() >> 20
        ))
    }

    /// Turns an integrator's input into a message (allocating its support instance).
    ///
    /// # Errors
    /// A message naming the field.
    pub async fn build(&self, input: MessageInput, i: usize) -> Result<Message, String> {
        let si = match input.support_instance.as_deref() {
            Some(k) => Some(self.instances.id_for(k).await?),
            None => None,
        };
        let expiry_s = input.expiry_s;
        let Built {
            content,
            class,
            subclass,
            qos,
        } = input.into_built(i, si.clone())?;
        let origin = si.unwrap_or_else(|| self.me.clone());
        let mut m = Message::forward(origin, &class, subclass.as_deref(), content);
        m.header.qos = qos;
        m.header.qos.expiry = expiry_s.map(|s| m.header.created.after(Duration::from_secs(s)));
        m.header.routing.push(Hop {
            id: self.me.clone(),
            time: m.header.created,
        });
        Ok(m)
    }

    /// `PUT|GET|DELETE /v1/modules/NAME`.
    async fn module(&self, method: Method, name: &str, req: Request<Incoming>) -> Response<Body> {
        use crate::modules::Refused;
        match method {
            Method::PUT => {
                let body = match read_body(req.into_body(), MAX_LOCAL_BODY_BYTES, BODY_READ_TIMEOUT)
                    .await
                {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                // An object, and nothing else serde would take for one (an
                // array of the fields in order).
                let r = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v @ serde_json::Value::Object(_)) => serde_json::from_value(v),
                    Ok(_) => {
                        return error(StatusCode::BAD_REQUEST, "module: expected a JSON object")
                    }
                    Err(e) => Err(e),
                };
                let r = match r {
                    Ok(r) => r,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("module: {e}")),
                };
                match self.modules.register(name, r).await {
                    Ok(m) => json(StatusCode::OK, &m),
                    Err(Refused::Invalid(why)) => error(StatusCode::BAD_REQUEST, why),
                    Err(Refused::Store(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            Method::GET => match self.modules.list().into_iter().find(|m| m.name == name) {
                Some(m) => json(StatusCode::OK, &m),
                None => error(StatusCode::NOT_FOUND, format!("no module {name:?}")),
            },
            Method::DELETE => match self.modules.deregister(name).await {
                Ok(true) => json(StatusCode::OK, &json!({ "deregistered": name })),
                Ok(false) => error(StatusCode::NOT_FOUND, format!("no module {name:?}")),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            m => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{m} /v1/modules/{name}"),
            ),
        }
    }

    /// Routes one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::POST && matches!(req.uri().path(), "/v1/messages" | "/v1/bulk") {
            // Refused at once rather than spooled onto a full disk.
            if let Some(why) = self.disk_low() {
                return error(StatusCode::INSUFFICIENT_STORAGE, why);
            }
        }
        match (req.method().clone(), req.uri().path()) {
            (Method::POST, "/v1/messages") => self.post_messages(req).await,
            (Method::POST, "/v1/bulk") => {
                let q = query_pairs(req.uri().query());
                self.bulk.accept(req, &q).await
            }
            (Method::GET, "/v1/bulk") => self.bulk.list(),
            (Method::GET, "/v1/modules") => {
                json(StatusCode::OK, &json!({ "modules": self.modules.list() }))
            }
            (m, p) if p.starts_with("/v1/modules/") => {
                let name = p.trim_start_matches("/v1/modules/").to_string();
                self.module(m, &name, req).await
            }
            (Method::GET, "/v1/releases") => self.releases.list(),
            (Method::POST, p) if p.starts_with("/v1/releases/") => {
                let rest = p.trim_start_matches("/v1/releases/").to_string();
                let (id, ok) = match (rest.strip_suffix("/applied"), rest.strip_suffix("/failed")) {
                    (Some(id), _) => (id.to_string(), true),
                    (_, Some(id)) => (id.to_string(), false),
                    _ => return error(StatusCode::NOT_FOUND, format!("no route for POST {p}")),
                };
                let body = match read_body(req.into_body(), MAX_LOCAL_BODY_BYTES, BODY_READ_TIMEOUT)
                    .await
                {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let reason = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_string));
                self.releases.applied(&id, ok, reason).await
            }
            (Method::GET, p) if p.starts_with("/v1/bulk/") => {
                let id = p.trim_start_matches("/v1/bulk/").to_string();
                self.bulk.status(&id)
            }
            (Method::GET, "/v1/status") => {
                let s = self.outbox.spool().stats();
                json(
                    StatusCode::OK,
                    &json!({
                        "id": self.me.to_string(),
                        "parent": (self.parent)(),
                        "spool": s,
                        "inbox": self.inbox.queues.stats(),
                        "forwarding": self.inbox.node_forwarding(),
                        "dead_letters": self.dead_letters.view(),
                        "parked": (self.parked)()
                            .into_iter()
                            .map(|(class, left_s, reason)| json!({ "class": class, "retry_in_s": left_s, "reason": reason }))
                            .collect::<Vec<_>>(),
                    }),
                )
            }
            (Method::GET, "/v1/inbox") => self.get_inbox(req.uri().query()).await,
            (Method::POST, "/v1/inbox/ack") => self.post_ack(req).await,
            (Method::GET, "/metrics") => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            (m, p) => error(StatusCode::NOT_FOUND, format!("no route for {m} {p}")),
        }
    }

    async fn get_inbox(&self, query: Option<&str>) -> Response<Body> {
        let (mut wait, mut limit) = (Duration::ZERO, 100usize);
        for (k, v) in query_pairs(query) {
            match k.as_str() {
                "wait" => match v.parse::<u64>() {
                    Ok(s) if s <= MAX_LONG_POLL.as_secs() => wait = Duration::from_secs(s),
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("wait: seconds, 0..={}", MAX_LONG_POLL.as_secs()),
                        )
                    }
                },
                "limit" => match v.parse::<usize>() {
                    Ok(n) if (1..=inbox::MAX_TAKE).contains(&n) => limit = n,
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("limit: 1..={}", inbox::MAX_TAKE),
                        )
                    }
                },
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    )
                }
            }
        }
        let messages = self.inbox.take(wait, limit).await;
        json(StatusCode::OK, &json!({ "messages": messages }))
    }

    async fn post_ack(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match read_body(req.into_body(), MAX_LOCAL_BODY_BYTES, BODY_READ_TIMEOUT).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(default)]
            acks: Vec<Ack>,
            #[serde(default)]
            ids: Vec<String>,
        }
        let b: Body = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
        };
        let mut acks = b.acks;
        acks.extend(b.ids.into_iter().map(|id| Ack {
            id,
            destination: None,
            status: None,
            reason: None,
        }));
        if acks.is_empty() || acks.len() > inbox::MAX_TAKE {
            return error(
                StatusCode::BAD_REQUEST,
                format!("give 1..={} acks or ids", inbox::MAX_TAKE),
            );
        }
        match self.inbox.ack(&acks).await {
            Ok((n, unknown)) => json(StatusCode::OK, &json!({ "acked": n, "unknown": unknown })),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        }
    }

    async fn post_messages(&self, req: Request<Incoming>) -> Response<Body> {
        let header_key = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
            None => None,
            Some(Ok(k)) => Some(k.to_string()),
            Some(Err(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key: visible ASCII only",
                )
            }
        };
        let body = match read_body(req.into_body(), MAX_LOCAL_BODY_BYTES, BODY_READ_TIMEOUT).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let inputs = match parse_inputs(&body, header_key.as_deref()) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let mut msgs = Vec::with_capacity(inputs.len());
        let mut records = Vec::with_capacity(inputs.len());
        // Messages a local rule filters: answered with their ID, never spooled.
        let mut filtered: Vec<(usize, String)> = Vec::new();
        // The input index of each message kept.
        let mut kept: Vec<usize> = Vec::with_capacity(inputs.len());
        let until = Timestamp::now().after(self.key_window);
        for (i, (input, key)) in inputs.into_iter().enumerate() {
            let m = match self.build(input, i).await {
                Ok(m) => m,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            // Local rules first: a filtered message is answered with its ID
            // and never spooled; a modified one travels as modified.
            let id = m.header.id;
            let Some(m) = self.rules.local(m) else {
                filtered.push((i, id.to_string()));
                continue;
            };
            // Refused now, or it travels: nothing spooled can stall the forwarder.
            let r = forward::record(&m);
            if let Err(e) = budget::check(r.header.len(), r.content.len(), m.header.routing.len()) {
                let e = rsnet_common::Error::from(e);
                return error(
                    e.status(),
                    format!("messages[{i}]: too large for an exchange: {e}; files and large payloads go as bulk transfers (POST /v1/bulk)"),
                );
            }
            msgs.push(m);
            kept.push(i);
            let key = key.map(|key| ClientKey { key, until });
            records.push((r, key));
        }
        for (i, m) in msgs.iter().enumerate() {
            if let Some(s) = m
                .header
                .source()
                .filter(|s| !self.instances.is_enabled(&s.origin))
            {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "messages[{}]: support instance {} is disabled by the operator",
                        kept[i], s.origin
                    ),
                );
            }
        }
        match self.outbox.push_keyed(records).await {
            Err(e) => rsnet_common::Error::from(e).response(),
            Ok(results) => {
                let mut ids = Vec::with_capacity(results.len());
                let mut repeated = Vec::new();
                let mut full = None;
                for (i, (r, m)) in results.into_iter().zip(&msgs).enumerate() {
                    match r {
                        Ok(Pushed::New(_)) => ids.push(m.header.id.to_string()),
                        Ok(Pushed::Repeat(first)) => {
                            ids.push(first.to_string());
                            repeated.push(kept[i]);
                        }
                        Err(e @ StoreError::Full { .. }) => full = Some(e),
                        Err(e) => return rsnet_common::Error::from(e).response(),
                    }
                }
                // Filtered messages take their places in the answer.
                for (i, id) in &filtered {
                    ids.insert((*i).min(ids.len()), id.clone());
                }
                let filtered: Vec<usize> = filtered.iter().map(|(i, _)| *i).collect();
                match full {
                    // Some may have been spooled; their IDs are listed so nothing is sent twice by mistake.
                    Some(e) => {
                        let e = rsnet_common::Error::from(e);
                        json(e.status(), &json!({ "error": e.to_string(), "ids": ids }))
                    }
                    None if repeated.is_empty() && filtered.is_empty() => {
                        json(StatusCode::ACCEPTED, &json!({ "ids": ids }))
                    }
                    // Resends under a known key: answered with the first
                    // message's ID, not spooled again; filtered ones: their ID.
                    None => json(
                        StatusCode::ACCEPTED,
                        &json!({ "ids": ids, "repeated": repeated, "filtered": filtered }),
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_inputs;

    fn keys(body: &str, header: Option<&str>) -> Result<Vec<Option<String>>, String> {
        parse_inputs(body.as_bytes(), header).map(|v| v.into_iter().map(|(_, k)| k).collect())
    }

    #[test]
    fn inputs_are_read_with_their_keys_and_errors_name_the_field() {
        let batch =
            r#"{"messages": [{"kind": "alarm", "text": "a", "key": "k1"}, {"kind": "event"}]}"#;
        assert_eq!(keys(batch, None).unwrap(), vec![Some("k1".into()), None]);
        let one = r#"{"kind": "alarm", "text": "a", "severity": "major"}"#;
        assert_eq!(keys(one, Some("h1")).unwrap(), vec![Some("h1".into())]);
        let (input, _) = parse_inputs(one.as_bytes(), None).unwrap().remove(0);
        assert_eq!(
            (input.kind.as_str(), input.severity.as_deref()),
            ("alarm", Some("major"))
        );
        assert!(
            input.key.is_none(),
            "the key is handed out beside the input"
        );
        for (body, header, want) in [
            (batch, Some("h"), "Idempotency-Key is for a single message"),
            (
                r#"{"kind": "alarm", "key": "k"}"#,
                Some("h"),
                "message.key: given both",
            ),
            (
                r#"{"messages": {"kind": "alarm"}}"#,
                None,
                "messages: must be a list",
            ),
            (
                r#"{"messages": [{"kind": "alarm"}, {"kind": "alarm", "colour": 1}]}"#,
                None,
                "messages[1]: unknown field `colour`",
            ),
            (
                r#"{"messages": [{"kind": "alarm", "key": 7}]}"#,
                None,
                "messages[0]: invalid type",
            ),
            (
                r#"{"messages": [{"kind": "alarm", "key": ""}]}"#,
                None,
                "messages[0].key: 1..=",
            ),
            (
                r#"{"messages": [{"kind": "alarm"}, {"kind": "alarm"]}"#,
                None,
                "messages[1]: ",
            ),
            (
                r#"{"messages": [{"kind": "alarm"}], "messages": []}"#,
                None,
                "messages: given twice",
            ),
            (r#"{"messages": [{"kind": "alarm"}]"#, None, "invalid JSON"),
            (
                r#"{"messages": [{"kind": "event"}]} x"#,
                None,
                "invalid JSON",
            ),
            (r#"{"messages": []}"#, None, "messages: give 1..="),
            (
                r#"{"kind": "alarm", "colour": 1}"#,
                None,
                "message: unknown field `colour`",
            ),
            ("[1, 2]", None, "invalid JSON"),
            ("{", None, "invalid JSON"),
        ] {
            let e = keys(body, header).unwrap_err();
            assert!(e.starts_with(want), "{body}: {e}");
        }
        // A batch over the limit is refused where the reader gets past it.
        let one = r#"{"kind": "event"},"#;
        let many = format!(
            r#"{{"messages": [{}{{"kind": "event"}}, not json]}}"#,
            one.repeat(rsnet_common::limits::MAX_BATCH_MESSAGES)
        );
        let e = keys(&many, None).unwrap_err();
        assert!(e.starts_with("messages: give 1..="), "{e}");
        let full = format!(
            r#"{{"messages": [{}{{"kind": "event"}}]}}"#,
            one.repeat(rsnet_common::limits::MAX_BATCH_MESSAGES - 1)
        );
        assert_eq!(
            keys(&full, None).unwrap().len(),
            rsnet_common::limits::MAX_BATCH_MESSAGES
        );
    }
}
