//! The HTTP edge of an exchange: a child's POST in, the reply envelope out.
//!
//! [`receive`] turns a POST into an [`Inbound`]: the authenticated peer, the
//! control part, the items that decoded, and a `rejected` answer for each
//! that did not. Whole-POST refusals happen here and only here, as HTTP
//! errors: not a POST to [`EXCHANGE_PATH`], no proxy or mlm certificate, an
//! envelope that breaks a limit or does not parse, a body that does not
//! fit the memory budget ([`crate::memory`]: reserved before a byte of it
//! is read, refused with 503 and a retry-after). Everything after this is
//! per message ([`super::Screen`] and the stages behind it).

use http::{header, Method, Response, StatusCode};
use hyper::body::Incoming;

use crate::envelope::{self, Control, EnvelopeWriter, Item, EXCHANGE_PATH};
use crate::http_util::{error, full, Body};
use crate::limits::BODY_READ_TIMEOUT;
use crate::memory::{self, BodyBudget, Refused, Reservation};
use crate::model::Response as Answer;
use crate::server::Peer;
use crate::store::SpoolRecord;
use crate::tls::{Identity, Role};

/// A child's POST, decoded.
pub struct Inbound {
    /// Who sent it.
    pub peer: Identity,
    /// Acks and wait hint.
    pub control: Control,
    /// Messages that decoded.
    pub items: Vec<Item>,
    /// Answers for messages that did not.
    pub rejected: Vec<Answer>,
    /// The body's room in the memory budget: hold it until answered.
    pub reservation: Reservation,
}

/// True if this request is an exchange POST.
pub fn is_exchange(req: &http::Request<Incoming>) -> bool {
    req.uri().path() == EXCHANGE_PATH
}

/// Decodes an exchange POST within the limits.
///
/// # Errors
/// A ready HTTP error response when the POST as a whole is refused.
pub async fn receive(
    req: http::Request<Incoming>,
    peer: &Peer,
    budget: &BodyBudget,
) -> Result<Inbound, Response<Body>> {
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
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let reservation = match budget.reserve(&identity.id, len).await {
        Ok(r) => r,
        Err(e @ Refused::TooLarge(_)) => {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))
        }
        Err(e @ Refused::Busy(_)) => {
            tracing::info!(peer = %identity.id, "exchange refused: body memory budget full");
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            if let Ok(v) = http::HeaderValue::from_str(&memory::RETRY_AFTER.as_secs().to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(r);
        }
    };
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
            return Err(crate::Error::from(e).response());
        }
        Ok(Ok(d)) => d,
    };
    Ok(Inbound {
        peer: identity,
        control: decoded.control,
        items: decoded.items,
        rejected: decoded
            .rejected
            .into_iter()
            .map(|r| Answer::rejected(r.id, r.error.to_string()))
            .collect(),
        reservation,
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
