//! Relaying uploads upward (DESIGN.md §7): `HEAD` and `PUT
//! /rs/v1/bulk/TOKEN` from a child go to the parent as a stream.
//!
//! ```text
//! child ── PUT (body) ──► BulkRelay ── PUT (same body, chunk by chunk) ──► parent
//!        ◄── answer ─────            ◄── answer ─────────────────────────
//! ```
//!
//! The MLM never writes a transfer to disk and never holds it whole: each
//! chunk of the child's body is handed to the parent's connection as it
//! arrives, so memory is a few chunks per transfer whatever the file's
//! size, and the child's pace is the parent's (TCP back-pressure both
//! ways). The token is checked for form only; the grant lives at the
//! appserver. What the MLM adds is the [`ORIGIN`] it vouches for: the
//! child's certificate ID (or, from a stacked MLM, the origin that MLM
//! vouched for, checked against its subtree by [`bulk::origin`]).
//! Transfers at once are capped by `[bulk] max_transfers`; past it a child
//! hears 503 with `Retry-After` and tries again later.
//!
//! The MLM also has its say on the requests that go up before any bytes
//! move ([`BulkGate`], a pipeline stage): one larger than `[bulk]
//! max_bytes` is denied here, with a `bulk-response` sent down to its
//! source, and goes no further.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::{header, Method, Request, Response};

use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use rsnet_common::bulk::{self, BulkError, Token, ORIGIN, UPLOAD_LENGTH, UPLOAD_OFFSET};
use rsnet_common::http_util::{drain, stream_body, Body};
use rsnet_common::id::ComponentId;
use rsnet_common::link::Link;
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::server::Peer;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A body chunk must arrive within this of the last one, either way.
const IDLE: Duration = Duration::from_secs(60);

/// `[bulk]`: relaying transfers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkConfig {
    /// Largest upload this MLM lets through (bytes); a larger request is
    /// denied here for good ([`BulkGate`]). Default: no limit of its own.
    pub max_bytes: Option<u64>,
    /// Transfers relayed at once. Default 64.
    pub max_transfers: usize,
    /// Connecting to the parent for a transfer, in milliseconds. Default 10000.
    pub connect_timeout_ms: u64,
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            max_bytes: None,
            max_transfers: 64,
            connect_timeout_ms: 10_000,
        }
    }
}

impl BulkConfig {
    /// Adds every problem to `errors`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_transfers == 0 {
            errors.push("bulk.max_transfers: must be at least 1".into());
        }
        if self.connect_timeout_ms == 0 {
            errors.push("bulk.connect_timeout_ms: must be at least 1".into());
        }
    }
}

/// See the module docs.
pub struct BulkRelay {
    link: Arc<Link>,
    slots: Arc<Semaphore>,
    max: usize,
    connect_timeout: Duration,
    relayed: Counter,
}

impl BulkRelay {
    /// Relays over `link`.
    pub fn new(link: Arc<Link>, cfg: &BulkConfig, metrics: &Registry) -> BulkRelay {
        let slots = Arc::new(Semaphore::new(cfg.max_transfers));
        let s = slots.clone();
        metrics.gauge(
            "rsnet_bulk_relays_in_progress",
            "transfers being relayed to the parent",
            {
                let max = cfg.max_transfers;
                move || (max - s.available_permits()) as f64
            },
        );
        BulkRelay {
            link,
            slots,
            max: cfg.max_transfers,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            relayed: metrics.counter(
                "rsnet_bulk_relayed_bytes_total",
                "transfer bytes relayed to the parent",
            ),
        }
    }

    /// How many transfers are being relayed now (the throttle's probe).
    pub fn in_progress(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// `HEAD` or `PUT /rs/v1/bulk/TOKEN` from a child.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let (parts, body) = req.into_parts();
        match self.check(&parts, peer) {
            Ok((origin, offset, slot)) => match self.relay(parts, body, origin, offset).await {
                Ok(r) => {
                    drop(slot);
                    r
                }
                Err(e) => e.response(),
            },
            Err(e) => {
                // Refused before the body was read: take some of it first,
                // so the answer reaches a child still writing.
                drain(body, bulk::REFUSAL_DRAIN_BYTES, bulk::REFUSAL_DRAIN_TIME).await;
                e.response()
            }
        }
    }

    /// What must hold before anything goes upstream: the path, the origin,
    /// the offset, a free slot.
    fn check(
        &self,
        parts: &http::request::Parts,
        peer: &Peer,
    ) -> Result<(ComponentId, u64, OwnedSemaphorePermit), BulkError> {
        Token::of_path(parts.uri.path()).ok_or(BulkError::BadToken)??;
        let origin = bulk::origin(peer, &parts.headers)?;
        if parts.method != Method::HEAD && parts.method != Method::PUT {
            return Err(BulkError::BadRequest("HEAD or PUT".into()));
        }
        let offset = bulk::offset(&parts.headers)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            BulkError::Unavailable(format!(
                "this MLM relays at most {} transfers at once; try again",
                self.max
            ))
        })?;
        Ok((origin, offset, slot))
    }

    async fn relay(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        origin: ComponentId,
        offset: u64,
    ) -> Result<Response<Body>, BulkError> {
        let (method, path) = (parts.method, parts.uri.path().to_string());
        let body = if method == Method::PUT {
            let relayed = self.relayed.clone();
            let s = stream_body(body, IDLE).map(move |r| {
                r.map(|b| {
                    relayed.add(b.len() as u64);
                    Frame::data(b)
                })
            });
            BodyExt::boxed(http_body_util::StreamBody::new(s))
        } else {
            bulk::empty()
        };
        let headers = [
            (ORIGIN, origin.to_string()),
            (UPLOAD_OFFSET, offset.to_string()),
            (
                header::CONTENT_TYPE.as_str(),
                "application/octet-stream".into(),
            ),
        ];
        let resp = self
            .link
            .stream(method, &path, &headers, body, self.connect_timeout)
            .await
            .map_err(|e| BulkError::Upstream(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let mut out = Response::builder().status(parts.status);
        for h in [
            UPLOAD_OFFSET,
            UPLOAD_LENGTH,
            bulk::UPLOAD_COMPLETE,
            header::CONTENT_TYPE.as_str(),
            header::RETRY_AFTER.as_str(),
        ] {
            if let Some(v) = parts.headers.get(h) {
                out = out.header(h, v);
            }
        }
        let answer = stream_body(body, IDLE).map(|r| r.map(Frame::data));
        out.body(BodyExt::boxed(http_body_util::StreamBody::new(answer)))
            .map_err(|e| BulkError::Upstream(e.to_string()))
    }
}

/// The MLM's pipeline stage for `bulk-request`s passing upward: one larger
/// than `[bulk] max_bytes` is absorbed here (the child's spool lets it go)
/// and its source is sent a denial for good, as the appserver would send.
/// Everything else passes on.
pub struct BulkGate {
    /// This MLM.
    pub me: ComponentId,
    /// The limit (`None`: none of its own; the stage passes everything).
    pub max_bytes: Option<u64>,
    /// Where the denial goes down.
    pub backchannel: Arc<rsnet_common::backchannel::BackChannel>,
}

impl rsnet_common::pipeline::Stage for BulkGate {
    fn name(&self) -> &'static str {
        "bulk-gate"
    }

    fn judge<'a>(
        &'a self,
        _ex: &'a rsnet_common::pipeline::Exchange,
        items: Vec<rsnet_common::envelope::Item>,
    ) -> rsnet_common::pipeline::StageFuture<'a> {
        use rsnet_common::model::{BulkResponse, Content, ContentKind};
        use rsnet_common::pipeline::{Judged, Verdict};
        Box::pin(async move {
            let Some(max) = self.max_bytes else {
                return Judged {
                    forward: items,
                    decided: Vec::new(),
                };
            };
            let mut out = Judged::default();
            for item in items {
                let over = (item.header.kind == ContentKind::BulkRequest)
                    .then(|| item.content().ok())
                    .flatten()
                    .and_then(|c| match c {
                        Content::BulkRequest(b) if b.size > max => Some(b.size),
                        _ => None,
                    });
                let (Some(size), Some(src)) = (over, item.header.source()) else {
                    out.forward.push(item);
                    continue;
                };
                let reason = format!(
                    "{size} bytes is more than the {max} that {} lets through",
                    self.me
                );
                let (header, content) = bulk::response_message(
                    &src.origin,
                    BulkResponse {
                        request: item.header.id,
                        granted: false,
                        reason: Some(reason.clone()),
                        url: None,
                        token: None,
                        retry_after: None,
                        expires: None,
                    },
                );
                let routed = self.backchannel.route(std::slice::from_ref(&src.origin));
                let verdict = match self
                    .backchannel
                    .dispatch(&header, content, &routed, None)
                    .await
                {
                    Ok(_) if !routed.copies.is_empty() => {
                        tracing::info!(request = %item.header.id, origin = %src.origin, %reason, "bulk request denied here");
                        Verdict::Absorb { correlation: None }
                    }
                    // The denial cannot go down now: the child keeps the request and sends it again.
                    Ok(_) => Verdict::defer(
                        format!("{reason}; no route back yet"),
                        Duration::from_secs(5),
                    ),
                    Err(e) => Verdict::defer(
                        format!("{reason}; denial not queued: {e}"),
                        Duration::from_secs(5),
                    ),
                };
                out.decided.push((item.header.id, verdict));
            }
            out
        })
    }
}
