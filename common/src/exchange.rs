//! The parent side of an exchange, shared by the MLM and the appserver.
//!
//! [`receive`] turns a child's POST into an [`Inbound`]: the authenticated
//! peer, the control part, the items that passed the checks every hop makes,
//! and a ready `rejected` response for each that did not. The node then
//! decides about the rest and answers with [`reply`].
//!
//! Checks made here, in order: POST to [`EXCHANGE_PATH`]; an mTLS peer with
//! role proxy or mlm; a well-formed envelope within limits (else the whole
//! POST fails with 4xx); per message: parses, travels upward (has a source),
//! and its source lies inside the peer's subtree (anti-spoofing, DESIGN.md §9).

use http::{header, Method, Response, StatusCode};
use hyper::body::Incoming;

use crate::envelope::{self, Control, EnvelopeWriter, Item, EXCHANGE_PATH};
use crate::http_util::{error, full, Body};
use crate::limits::BODY_READ_TIMEOUT;
use crate::model::{Direction, Response as Answer};
use crate::server::Peer;
use crate::store::SpoolRecord;
use crate::tls::{Identity, Role};

/// A child's POST after the common checks.
pub struct Inbound {
    /// Who sent it.
    pub peer: Identity,
    /// Acks and wait hint.
    pub control: Control,
    /// Messages that passed.
    pub items: Vec<Item>,
    /// Answers for messages that did not.
    pub rejected: Vec<Answer>,
}

/// True if this request is an exchange POST.
pub fn is_exchange(req: &http::Request<Incoming>) -> bool {
    req.uri().path() == EXCHANGE_PATH
}

/// Runs the common checks on an exchange POST.
///
/// # Errors
/// A ready HTTP error response when the POST as a whole is refused.
pub async fn receive(req: http::Request<Incoming>, peer: &Peer) -> Result<Inbound, Response<Body>> {
    if req.method() != Method::POST {
        return Err(error(StatusCode::METHOD_NOT_ALLOWED, "exchange takes POST"));
    }
    let Some(identity) = peer
        .identity
        .clone()
        .filter(|i| matches!(i.role, Role::Proxy | Role::Mlm))
    else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "exchange is for proxy and mlm certificates",
        ));
    };
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = http_body_util::BodyExt::into_data_stream(req.into_body());
    let decoded = match tokio::time::timeout(BODY_READ_TIMEOUT, envelope::decode(&ct, body)).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {BODY_READ_TIMEOUT:?}"),
            ))
        }
        Ok(Err(e)) => {
            tracing::info!(peer = %identity.id, error = %e, "envelope refused");
            return Err(error(e.status(), e));
        }
        Ok(Ok(d)) => d,
    };
    let mut rejected: Vec<Answer> = decoded
        .rejected
        .into_iter()
        .map(|r| Answer::rejected(r.id, r.error.to_string()))
        .collect();
    let mut items = Vec::with_capacity(decoded.items.len());
    for item in decoded.items {
        let id = item.header.id;
        match &item.header.direction {
            Direction::Destination(_) => {
                rejected.push(Answer::rejected(id, "back-channel message sent upward"))
            }
            Direction::Source(s) if !identity.may_send_as(&s.origin) => {
                rejected.push(Answer::rejected(
                    id,
                    format!(
                        "source {} is outside the subtree of authenticated peer {}",
                        s.origin, identity.id
                    ),
                ))
            }
            Direction::Source(_) => items.push(item),
        }
    }
    if !rejected.is_empty() {
        tracing::info!(peer = %identity.id, rejected = rejected.len(), first = rejected[0].reason.as_deref().unwrap_or(""), "messages rejected");
    }
    Ok(Inbound {
        peer: identity,
        control: decoded.control,
        items,
        rejected,
    })
}

/// Builds a reply envelope: the answers in the control part, then
/// `downward` back-channel messages (as queued: header and content XML).
pub fn reply(
    answers: impl IntoIterator<Item = Answer>,
    downward: &[SpoolRecord],
) -> Response<Body> {
    let mut control = Control::default();
    for a in answers {
        control.answer(a);
    }
    let mut w = EnvelopeWriter::new();
    w.control(&control);
    for r in downward {
        w.raw(&r.id, &r.header, &r.content);
    }
    let (ct, body) = w.finish();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ct)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}
