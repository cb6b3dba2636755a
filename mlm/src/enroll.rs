//! Enrollment and renewal requests from below, relayed to the parent
//! ([`rsnet_common::enroll`]): checked against the child that sent them
//! and this MLM's scopes, sent up, and the parent's answer passed down.
//! Nothing is kept here; the MLM never sees a key.
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rsnet_common::enroll::{self, ENROLL_PATH, ENROLL_TIMEOUT, MAX_ANSWER_BYTES};
use rsnet_common::http_util::{error, Body};
use rsnet_common::link::Link;
use rsnet_common::server::Peer;
use rsnet_common::tls::Identity;
use serde::Deserialize;

/// `[enrollment]` in the MLM's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRelayConfig {
    /// Let nodes without a certificate connect to enroll (they are served
    /// the enrollment path and nothing else). Default true; false refuses
    /// them at the TLS handshake. Renewals from children with a
    /// certificate are relayed either way.
    #[serde(default = "yes")]
    pub accept: bool,
}

fn yes() -> bool {
    true
}

impl Default for EnrollmentRelayConfig {
    fn default() -> Self {
        EnrollmentRelayConfig { accept: true }
    }
}

/// Relays `POST /rs/v1/enroll`.
pub struct EnrollRelay {
    /// This MLM (its scopes bound what it relays).
    pub me: Identity,
    /// The parent.
    pub link: Arc<Link>,
    /// The rate limit on requests relayed.
    pub gate: enroll::Gate,
}

impl EnrollRelay {
    /// One request from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        if req.method() != http::Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        }
        if let Err(x) = self.gate.admit() {
            return x.response();
        }
        let mut r = match enroll::read_request(req.into_body()).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        if let Err(x) = enroll::vouch(&mut r, peer, &self.me) {
            tracing::warn!(id = %r.id, addr = %peer.addr, reason = %x.1, "enrollment request refused");
            return x.response();
        }
        let body = match serde_json::to_vec(&r) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let up = async {
            let resp = self
                .link
                .stream(
                    http::Method::POST,
                    ENROLL_PATH,
                    &[("content-type", "application/json".into())],
                    rsnet_common::http_util::full(Bytes::from(body)),
                    rsnet_common::limits::DEFAULT_LINK_CONNECT_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("the parent's answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        match tokio::time::timeout(ENROLL_TIMEOUT, up).await {
            Ok(Ok((status, bytes))) => {
                let mut resp = Response::new(rsnet_common::http_util::full(bytes));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, format!("parent: {e}")),
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the parent did not answer within {ENROLL_TIMEOUT:?}"),
            ),
        }
    }
}
