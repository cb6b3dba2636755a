//! Request routing for the appserver's one listener, and the operator API.
//!
//! | path | who | what |
//! |---|---|---|
//! | `POST /rs/v1/exchange` | proxy, mlm | forward messages (see `ingest`) |
//! | `GET /api/v1/messages` | operator | stored messages; filters `source`, `class`, `subclass`, `since`, `until`; pages with `after` + `limit` |
//! | `GET /api/v1/components` | operator | every component seen, its parent path, last heartbeat |
//! | `GET /api/v1/stream` | operator | server-sent events of stored messages; `class`, `subclass`; resumes from `Last-Event-ID` |
//! | `POST /api/v1/messages` | operator | send a back-channel message to IDs and/or `group:NAME`s |
//! | `GET /api/v1/messages/ID/deliveries` | operator | each final destination's state |
//! | `GET /api/v1/groups` | operator | every group |
//! | `PUT, GET, DELETE /api/v1/groups/NAME` | operator | one group (`{"members": [...]}`) |
//! | `HEAD, PUT /rs/v1/bulk/TOKEN` | proxy, mlm | an upload's bytes (see `uploads`) |
//! | `GET /rs/v1/releases/ID/file` | a child the release was offered to | the release's file, `Range: bytes=N-` (see `rollout`) |
//! | `GET /api/v1/uploads` | operator | every upload, newest first; filter `source` |
//! | `GET /api/v1/uploads/ID` | operator | one upload: state, bytes received |
//! | `GET /api/v1/uploads/ID/file` | operator | the stored file |
//! | `POST /api/v1/releases` | operator | publish a release (see `releases`) |
//! | `GET /api/v1/releases[/ID]` | operator | signed release manifests; with an ID, each destination's state and the rollout |
//! | `POST /api/v1/releases/ID/resume\|cancel\|pin` | operator | move a rollout on, withdraw it, or offer it again (`to=`) |
//! | `POST /rs/v1/enroll` | proxy, mlm, or no certificate (enrollment) | a certificate for a CSR (see `enrollments`) |
//! | `POST, GET /api/v1/enrollments` | admin operator | make a one-time token (shown once); list tokens and enrolled components |
//! | `POST /api/v1/revocations` | admin operator | revoke an ID: certificates, enrollment, tokens, upload grants |
//! | `GET /metrics` | any certificate | Prometheus text |

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use rsnet_common::envelope::wire;
use rsnet_common::http_util::{error, json, query_pairs, text, Body};
use rsnet_common::metrics::Registry;
use rsnet_common::model::Timestamp;
use rsnet_common::pipeline::{exchange, ExchangeService};
use rsnet_common::server::Peer;
use rsnet_common::store::{MessageFilter, MessageStore, StoredMessage};
use rsnet_common::tls::{Identity, Perm, Role};

use crate::audit::Audit;
use serde_json::{json, Value};

use rsnet_common::http_util::read_body;
use rsnet_common::id::{ComponentId, GroupName, MessageId};
use rsnet_common::json::MessageInput;
use rsnet_common::limits::{BODY_READ_TIMEOUT, MAX_API_BODY_BYTES};

use std::sync::Mutex;

use crate::deliveries::Deliveries;
use crate::outbound::Outbound;
use crate::topology::Topology;
use tokio::sync::watch;

/// Most messages one API page returns.
pub const MAX_PAGE: usize = 1000;
/// Default page size.
pub const DEFAULT_PAGE: usize = 100;
/// Records one query may scan before returning a partial page (bounds the
/// cost of a filter that matches little); the caller resumes from `next`.
pub const MAX_SCAN: usize = 100_000;
/// Messages the stream reads per page (from the feed or the store).
const STREAM_PAGE: usize = 256;
/// Comment line sent on an idle stream so proxies keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The appserver's request router.
pub struct Api {
    /// Enrollment: tokens, signing, renewal, revocation.
    pub enrollments: Arc<crate::enrollments::Enrollments>,
    /// Children's POSTs: the exchange pipeline.
    pub exchange: ExchangeService,
    /// Stored messages (read side).
    pub messages: Arc<dyn MessageStore>,
    /// The last committed sequence number, for the stream.
    pub committed: watch::Receiver<u64>,
    /// The latest stored messages, rendered once for every subscriber.
    pub feed: Arc<crate::feed::Feed>,
    /// Components (read side; ingest writes it).
    pub topology: Arc<Mutex<Topology>>,
    /// Operator sends and groups.
    pub outbound: Arc<Outbound>,
    /// Delivery records.
    pub deliveries: Arc<Deliveries>,
    /// Published releases.
    pub releases: Arc<crate::releases::Releases>,
    /// Uploads: grants and bytes.
    pub uploads: Arc<crate::uploads::Uploads>,
    /// The operators' audit log.
    pub audit: Audit,
    /// Metrics.
    pub metrics: Registry,
}

/// A stored message rendered as JSON (with its sequence number).
pub fn message_json(seq: u64, m: &StoredMessage) -> String {
    let header = wire::decode_header(&m.header);
    let content = header
        .as_ref()
        .ok()
        .map(|h| wire::decode_content(&m.content, h.kind));
    match (&header, &content) {
        (Ok(h), Some(Ok(c))) => rsnet_common::json::MessageView::new(h, Ok(c))
            .with_u64("seq", seq)
            .with_time("received", m.received)
            .to_json(),
        _ => json!({
            "id": m.id.to_string(),
            "error": "stored record does not parse",
            "seq": seq,
            "received": m.received.to_rfc3339(),
        })
        .to_string(),
    }
}

/// `POST /api/v1/messages`: `to` (an ID, `group:NAME`, or a list of them)
/// plus the fields of a [`MessageInput`].
fn parse_send(body: &[u8]) -> Result<(Vec<String>, MessageInput), String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let to = v
        .as_object_mut()
        .ok_or("body must be a JSON object")?
        .remove("to")
        .ok_or("to: missing (an ID, \"group:NAME\", or a list of them)")?;
    let to: Vec<String> = match to {
        Value::String(s) => vec![s],
        Value::Array(a) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                _ => Err("to: list items must be strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("to: must be a string or a list of strings".into()),
    };
    let input: MessageInput = serde_json::from_value(v).map_err(|e| format!("message: {e}"))?;
    if input.key.is_some() {
        return Err("key: client keys are for a proxy's local API".into());
    }
    Ok((to, input))
}

fn parse_filter(q: &[(String, String)]) -> Result<(MessageFilter, u64, usize), String> {
    let mut f = MessageFilter::default();
    let (mut after, mut limit) = (0u64, DEFAULT_PAGE);
    for (k, v) in q {
        match k.as_str() {
            "source" => f.source = Some(v.parse().map_err(|e| format!("source: {e}"))?),
            "class" => f.class = Some(v.clone()),
            "subclass" => f.subclass = Some(v.clone()),
            "since" => {
                f.since = Some(
                    Timestamp::parse_rfc3339(v)
                        .ok_or_else(|| format!("since: {v:?} is not RFC 3339"))?,
                )
            }
            "until" => {
                f.until = Some(
                    Timestamp::parse_rfc3339(v)
                        .ok_or_else(|| format!("until: {v:?} is not RFC 3339"))?,
                )
            }
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| format!("after: {v:?} is not a sequence number"))?
            }
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| format!("limit: {v:?} is not a number"))?;
                if limit == 0 || limit > MAX_PAGE {
                    return Err(format!("limit: must be 1..={MAX_PAGE}"));
                }
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok((f, after, limit))
}

impl Api {
    /// Routes one request. Each route's future is boxed: this one is then
    /// as small as its own state, and a held long-poll does not carry the
    /// room the largest route (an upload) needs.
    pub async fn handle(&self, req: Request<Incoming>, peer: Arc<Peer>) -> Response<Body> {
        if exchange::is_exchange(&req) {
            return Box::pin(self.exchange.handle(req, &peer)).await;
        }
        let path = req.uri().path().to_string();
        if path == rsnet_common::enroll::ENROLL_PATH {
            return Box::pin(self.enrollments.handle(req, &peer)).await;
        }
        if path.starts_with(rsnet_common::bulk::BULK_PREFIX) {
            return Box::pin(self.uploads.transfer(req, &peer)).await;
        }
        if path.starts_with("/rs/v1/releases/") {
            if req.method() != Method::GET {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{} {path}", req.method()),
                );
            }
            return Box::pin(self.releases.serve(req, &peer)).await;
        }
        if path == "/metrics" {
            return text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            );
        }
        let admin = path == "/" || path == "/admin/tree" || path.starts_with("/node/");
        if !admin && !path.starts_with("/api/v1/") {
            return error(StatusCode::NOT_FOUND, format!("no such path {path}"));
        }
        let Some(op) = peer.identity.clone().filter(|i| i.role == Role::Operator) else {
            return error(
                StatusCode::FORBIDDEN,
                "the operator API needs an operator certificate",
            );
        };
        let method = req.method().clone();
        if admin {
            // The page reads what the API's GETs read: permission `read`.
            return match method {
                Method::GET => self.admin(&path, &op),
                m => error(StatusCode::METHOD_NOT_ALLOWED, format!("{m} {path}")),
            };
        }
        let what = req
            .uri()
            .path_and_query()
            .map_or_else(|| path.clone(), |p| p.to_string());
        let resp = Box::pin(self.operator(req, &op, path.clone())).await;
        let status = resp.status();
        if Audit::records(&method, &path) || status == StatusCode::FORBIDDEN {
            self.audit
                .record(&op, &method, &what, status.as_u16())
                .await;
        }
        resp
    }

    /// `POST /api/v1/revocations` `{"id": ID}`: the certificates, the
    /// enrollment, open tokens and upload grants of ID, all at once.
    async fn revoke(&self, req: Request<Incoming>, op: &Identity) -> Response<Body> {
        let body = match read_body(req.into_body(), MAX_API_BODY_BYTES, BODY_READ_TIMEOUT).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let id = match serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("id")?.as_str()?.parse::<ComponentId>().ok())
        {
            Some(id) => id,
            None => return error(StatusCode::BAD_REQUEST, "expected {\"id\": COMPONENT_ID}"),
        };
        if !op.sees(&id) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "operator {} may not revoke {id} (outside its scopes)",
                    op.id
                ),
            );
        }
        match self.enrollments.revoke(&id).await {
            Ok(mut v) => {
                v["uploads_withdrawn"] = json!(self.uploads.withdraw(&id).await);
                json(StatusCode::OK, &v)
            }
            Err(rsnet_common::enroll::Refusal(s, m)) => error(s, m),
        }
    }

    /// One call to the operator API by `op`.
    async fn operator(
        &self,
        req: Request<Incoming>,
        op: &Identity,
        path: String,
    ) -> Response<Body> {
        let op = op.clone();
        let q = query_pairs(req.uri().query());
        let method = req.method().clone();
        // What the request needs, checked against the certificate's
        // permissions; a customer-scoped credential sees only its customers.
        let needs = match (&method, path.as_str()) {
            (_, "/api/v1/audit" | "/api/v1/enrollments" | "/api/v1/revocations") => Perm::Admin,
            (&Method::GET, _) => Perm::Read,
            (_, p) if p.starts_with("/api/v1/releases") => Perm::Release,
            _ => Perm::Send,
        };
        if !op.may(needs) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "operator {} may not {} {path}: it needs permission {:?} (it has: {})",
                    op.id,
                    method,
                    needs.as_str(),
                    if op.perms.is_empty() {
                        "read".to_string()
                    } else {
                        op.perms
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            );
        }
        if !op.scopes.is_empty() && path.starts_with("/api/v1/releases") {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "releases span customers: operator {} is limited to {}; releases need a credential for every customer",
                    op.id,
                    scopes_text(&op)
                ),
            );
        }
        let sees = |id: &ComponentId| op.sees(id);
        if let Some(rest) = path.strip_prefix("/api/v1/groups/") {
            let name = format!("group:{rest}");
            return match method {
                Method::GET | Method::PUT | Method::DELETE => {
                    self.group(method, &name, req, &op).await
                }
                m => error(StatusCode::METHOD_NOT_ALLOWED, format!("{m} {path}")),
            };
        }
        if let Some(id) = path
            .strip_prefix("/api/v1/messages/")
            .and_then(|r| r.strip_suffix("/deliveries"))
        {
            if method != Method::GET {
                return error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {path}"));
            }
            return self.deliveries(id, &op);
        }
        let by = op.id.to_string();
        if path == "/api/v1/releases" && method == Method::POST {
            return self.releases.publish(req, &q, &by).await;
        }
        if let Some(rest) = path.strip_prefix("/api/v1/releases/") {
            return match (method.clone(), rest.split_once('/')) {
                (Method::GET, None) => self.releases.get(rest),
                (Method::POST, Some((id, action))) => self.releases.act(id, action, &q, &by).await,
                _ => error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {path}")),
            };
        }
        if let Some(rest) = path.strip_prefix("/api/v1/uploads/") {
            if method != Method::GET {
                return error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {path}"));
            }
            return self.uploads.get(rest, sees).await;
        }
        if method == Method::POST && path == "/api/v1/messages" {
            return self.send(req, &op).await;
        }
        if method == Method::POST && path == "/api/v1/enrollments" {
            return self.enrollments.create(req, &op).await;
        }
        if method == Method::POST && path == "/api/v1/revocations" {
            return self.revoke(req, &op).await;
        }
        if method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {path}"));
        }
        match path.as_str() {
            "/api/v1/audit" => {
                let limit = q
                    .iter()
                    .find(|(k, _)| k == "limit")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(100);
                match self.audit.last(limit).await {
                    Ok(e) => json(StatusCode::OK, &json!({ "entries": e })),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("audit log: {e}")),
                }
            }
            "/api/v1/messages" => self.messages(&q, &op).await,
            "/api/v1/enrollments" => self.enrollments.list(&op),
            "/api/v1/releases" => self.releases.list(),
            "/api/v1/uploads" => self.uploads.list(&q, sees).await,
            "/api/v1/groups" => match self.outbound.groups.list() {
                Ok(g) => {
                    let g: Vec<_> = g
                        .into_iter()
                        .filter(|g| all_seen(&op, &g.members))
                        .collect();
                    json(StatusCode::OK, &json!({ "groups": g }))
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            "/api/v1/components" => json(
                StatusCode::OK,
                &json!({ "components": self.components(&op) }),
            ),
            "/api/v1/stream" => {
                let last = req
                    .headers()
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                self.stream(&q, last, &op)
            }
            _ => error(StatusCode::NOT_FOUND, format!("no such path {path}")),
        }
    }

    /// The components `op` may see, sorted by ID.
    pub fn components(&self, op: &Identity) -> Vec<crate::topology::Component> {
        self.topology
            .lock()
            .map(|t| t.list())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.id.parse::<ComponentId>().is_ok_and(|id| op.sees(&id)))
            .collect()
    }

    async fn send(&self, req: Request<Incoming>, op: &Identity) -> Response<Body> {
        let body = match read_body(req.into_body(), MAX_API_BODY_BYTES, BODY_READ_TIMEOUT).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let (to, input) = match parse_send(&body) {
            Ok(x) => x,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        if !op.scopes.is_empty() {
            // Every destination, groups expanded, inside the operator's customers.
            match self.outbound.expand(&to) {
                Ok((dests, _)) => {
                    if let Some(d) = dests.iter().find(|d| !op.sees(d)) {
                        return error(
                            StatusCode::FORBIDDEN,
                            format!(
                                "operator {} is limited to {}: it may not send to {d}",
                                op.id,
                                scopes_text(op)
                            ),
                        );
                    }
                }
                Err(e) => return e.response(),
            }
        }
        match self.outbound.send(to, &input).await {
            Ok(d) => json(
                StatusCode::ACCEPTED,
                &json!({ "id": d.id, "destinations": d.destinations.len(), "summary": d.summary() }),
            ),
            Err(e) => e.response(),
        }
    }

    fn deliveries(&self, id: &str, op: &Identity) -> Response<Body> {
        let Ok(id) = id.parse::<MessageId>() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not a message ID"),
            );
        };
        let visible = self.deliveries.get(&id).and_then(|mut d| {
            d.destinations
                .retain(|dest, _| dest.parse::<ComponentId>().is_ok_and(|x| op.sees(&x)));
            (!d.destinations.is_empty()).then_some(d)
        });
        match visible {
            Some(d) => json(
                StatusCode::OK,
                &json!({ "summary": d.summary(), "delivery": d }),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no back-channel message {id}"),
            ),
        }
    }

    async fn group(
        &self,
        method: Method,
        name: &str,
        req: Request<Incoming>,
        op: &Identity,
    ) -> Response<Body> {
        let name: GroupName = match name.parse() {
            Ok(n) => n,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("group name: {e}")),
        };
        let groups = &self.outbound.groups;
        // A scoped operator sees and changes only groups all of whose
        // members are its customers'.
        if let Ok(Some(g)) = groups.get(&name) {
            if !all_seen(op, &g.members) {
                return error(StatusCode::NOT_FOUND, format!("no such group {name}"));
            }
        }
        match method {
            Method::PUT => {
                let body =
                    match read_body(req.into_body(), MAX_API_BODY_BYTES, BODY_READ_TIMEOUT).await {
                        Ok(b) => b,
                        Err(resp) => return resp,
                    };
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Put {
                    members: Vec<String>,
                }
                let put: Put = match serde_json::from_slice(&body) {
                    Ok(p) => p,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
                };
                if !all_seen(op, &put.members) {
                    return error(
                        StatusCode::FORBIDDEN,
                        format!(
                            "operator {} is limited to {}: members outside it",
                            op.id,
                            scopes_text(op)
                        ),
                    );
                }
                match groups.put(&name, &put.members).await {
                    Ok(g) => json(StatusCode::OK, &g),
                    Err(e) => e.response(),
                }
            }
            Method::DELETE => match groups.delete(&name).await {
                Ok(true) => json(StatusCode::OK, &json!({ "deleted": name.to_string() })),
                Ok(false) => error(StatusCode::NOT_FOUND, format!("no such group {name}")),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            _ => match groups.get(&name) {
                Ok(Some(g)) => json(StatusCode::OK, &g),
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no such group {name}")),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
        }
    }

    async fn messages(&self, q: &[(String, String)], op: &Identity) -> Response<Body> {
        let (filter, after, limit) = match parse_filter(q) {
            Ok(x) => x,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let store = self.messages.clone();
        let last = store.last_seq();
        let r =
            tokio::task::spawn_blocking(move || store.scan(after, limit, MAX_SCAN, &filter)).await;
        match r {
            Ok(Ok((msgs, next))) => {
                // Each message's JSON as written, not parsed back into a tree.
                let items: Vec<Box<serde_json::value::RawValue>> = msgs
                    .iter()
                    .filter(|(_, m)| op.sees(&m.source))
                    .filter_map(|(s, m)| {
                        serde_json::value::RawValue::from_string(message_json(*s, m)).ok()
                    })
                    .collect();
                #[derive(serde::Serialize)]
                struct Page {
                    messages: Vec<Box<serde_json::value::RawValue>>,
                    next: u64,
                    last: u64,
                }
                json(
                    StatusCode::OK,
                    &Page {
                        messages: items,
                        next,
                        last,
                    },
                )
            }
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }

    fn stream(
        &self,
        q: &[(String, String)],
        last_event_id: Option<String>,
        op: &Identity,
    ) -> Response<Body> {
        let op = op.clone();
        let mut filter = MessageFilter::default();
        let mut after = None;
        for (k, v) in q {
            match k.as_str() {
                "class" => filter.class = Some(v.clone()),
                "subclass" => filter.subclass = Some(v.clone()),
                "source" => match v.parse() {
                    Ok(s) => filter.source = Some(s),
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("source: {e}")),
                },
                "after" => after = Some(v.clone()),
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    )
                }
            }
        }
        // Resume point: Last-Event-ID (reconnect) wins over ?after=; default: from the start.
        let from = match last_event_id.or(after).map(|s| s.parse::<u64>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID/after must be a sequence number",
                )
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let store = self.messages.clone();
        let mut committed = self.committed.clone();
        let feed = self.feed.clone();
        tokio::spawn(async move {
            let _listening = feed.listen();
            let mut cursor = from;
            let _ = tx.send(Bytes::from_static(b": rsnet stream\n\n")).await;
            loop {
                // A page's events go out as one chunk (one frame, one TLS
                // record run), not one each: from the feed when it holds
                // what comes next, else read back from the store.
                let (mut events, mut sent) = (Vec::new(), 0u64);
                let next = if let Some(page) = feed.after(cursor, STREAM_PAGE) {
                    for e in &page {
                        if op.sees(&e.source)
                            && filter.admits(&e.source, &e.class, e.subclass.as_deref(), e.created)
                        {
                            events.extend_from_slice(&e.text);
                            sent += 1;
                        }
                    }
                    feed.from_feed.add(sent);
                    page.last().map_or(cursor, |e| e.seq)
                } else {
                    let (s, f) = (store.clone(), filter.clone());
                    let page = tokio::task::spawn_blocking(move || {
                        s.scan(cursor, STREAM_PAGE, MAX_SCAN, &f)
                    })
                    .await;
                    let Ok(Ok((msgs, next))) = page else { return };
                    for (seq, m) in msgs.iter().filter(|(_, m)| op.sees(&m.source)) {
                        crate::feed::push_event(&mut events, *seq, &[&message_json(*seq, m)]);
                        sent += 1;
                    }
                    feed.from_store.add(sent);
                    next
                };
                if !events.is_empty() && tx.send(Bytes::from(events)).await.is_err() {
                    return;
                }
                let advanced = next > cursor;
                cursor = next;
                if advanced {
                    continue;
                }
                // Caught up: wait for a new commit, or send a keep-alive.
                tokio::select! {
                    ok = async { committed.wait_for(|s| *s > cursor).await.is_ok() } => if !ok { return },
                    _ = tokio::time::sleep(KEEPALIVE) => {
                        if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() { return }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(StreamBody::new(stream).boxed())
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "stream"))
    }
}

/// An operator's scopes, for errors.
fn scopes_text(op: &Identity) -> String {
    op.scopes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// True if `op` sees every one of `members` (IDs; a member that does not
/// parse is not seen).
fn all_seen(op: &Identity, members: &[String]) -> bool {
    members
        .iter()
        .all(|m| m.parse::<ComponentId>().is_ok_and(|id| op.sees(&id)))
}

#[cfg(test)]
mod tests {
    use super::parse_send;

    #[test]
    fn an_operator_message_names_its_destinations_and_takes_no_client_key() {
        let (to, input) =
            parse_send(br#"{"to": ["acme.p1", "group:edge"], "kind": "data", "payload": "x"}"#)
                .unwrap();
        assert_eq!(to, ["acme.p1", "group:edge"]);
        assert_eq!(input.kind, "data");
        let e = parse_send(br#"{"to": "acme.p1", "kind": "data", "key": "k"}"#).unwrap_err();
        assert!(e.starts_with("key:"), "{e}");
    }
}
