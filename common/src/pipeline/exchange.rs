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

use crate::envelope::encoding::{self, Coding};
use crate::envelope::{self, Control, EnvelopeWriter, Item, EXCHANGE_PATH};
use crate::http_util::{error, full, Body};
use crate::limits::{BODY_READ_TIMEOUT, MAX_ENVELOPE_BYTES};
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
    /// The body's room in the memory budget: hold it until the items have
    /// been through the stages (a long-poll's wait need not hold it).
    pub reservation: Reservation,
    /// The child takes a zstd-compressed reply.
    pub compress_reply: bool,
    /// The child reads compact replies ([`Control::accepted_rest`]).
    pub compact_reply: bool,
}

/// True if this request is an exchange POST.
pub fn is_exchange<B>(req: &http::Request<B>) -> bool {
    req.uri().path() == EXCHANGE_PATH
}

/// Decodes an exchange POST within the limits.
///
/// # Errors
/// A ready HTTP error response when the POST as a whole is refused.
pub async fn receive<B>(
    req: http::Request<B>,
    peer: &Peer,
    budget: &BodyBudget,
) -> Result<Inbound, Response<Body>>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
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
    let coding = match Coding::of(req.headers()) {
        Ok(c) => c,
        Err(e) => return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())),
    };
    let length_of = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    // What is held in memory is the decoded body: a compressed one
    // reserves the size it declares it decodes to (and may not exceed).
    let len = match coding {
        Coding::Identity => length_of(header::CONTENT_LENGTH.as_str()),
        Coding::Zstd => length_of(encoding::DECODED_LENGTH),
    };
    let compress_reply = encoding::accepts_zstd(req.headers());
    let compact_reply = envelope::accepts_compact(req.headers());
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
    let limit = len.unwrap_or(MAX_ENVELOPE_BYTES);
    let decoding = envelope::decode_coded(&ct, coding, limit, body);
    let decoded = match tokio::time::timeout(BODY_READ_TIMEOUT, decoding).await {
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
        compress_reply,
        compact_reply,
    })
}

/// Marks a response as coming from a parent that reads zstd-compressed
/// requests (RFC 7694) and the compact envelope form: the child may send
/// its next POSTs so.
pub fn advertise(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::ACCEPT_ENCODING,
        http::HeaderValue::from_static(encoding::ZSTD),
    );
    h.insert(
        envelope::ACCEPT_FORM,
        http::HeaderValue::from_static(envelope::COMPACT),
    );
    r
}

/// Builds a reply envelope: the answers in the control part, then
/// `downward` back-channel messages (as queued: header and content XML),
/// compressed if the child takes it (`compress`) and it is worth it. With
/// `accept_rest` (the child reads compact replies, and `answers` answer
/// every message of its request) plain acceptances are not listed by ID.
pub fn reply(
    answers: impl IntoIterator<Item = Answer>,
    downward: &[SpoolRecord],
    compress: bool,
    accept_rest: bool,
) -> Response<Body> {
    let mut control = Control::default();
    for a in answers {
        control.answer(a);
    }
    if accept_rest && !control.accepted.is_empty() {
        control.accept_rest();
    }
    let mut w = EnvelopeWriter::new();
    w.control(&control);
    let payload = downward
        .iter()
        .map(|r| r.header.len() + r.content.len())
        .sum();
    w.reserve_for(downward.len(), payload);
    for r in downward {
        w.raw(&r.id, &r.header, &r.content);
    }
    let (ct, body) = w.finish();
    let r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ct);
    let (r, body) = match compress.then(|| encoding::compressed(&body)).flatten() {
        Some(z) => (r.header(header::CONTENT_ENCODING, encoding::ZSTD), z),
        None => (r, body),
    };
    r.body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}
