//! Enrollment at the top (DESIGN.md §9): one-time tokens made by an
//! operator, certificate requests signed under the provider CA, renewals,
//! and revocation that reaches everything a node was given.
//!
//! The appserver signs only when `[enrollment] pki_dir` names the PKI
//! directory (`rsnet-certs init`): it then holds the CA key, and records
//! what it issues in the same index `rsnet-certs` keeps, under its lock.
//!
//! | key | value |
//! |---|---|
//! | `enroll/t/HASH` | a token ([`TokenRecord`]); HASH is SHA-256 of its secret, the secret is never stored |
//! | `enroll/c/ID` | an enrolled component ([`Enrolled`]): what its certificates say, their serials |
//!
//! A token is used once: the check, the signing and the record happen
//! under one lock, and the record commits before the answer goes out. A
//! renewal is granted only for the serial of a certificate this
//! enrollment issued, not revoked, with what the enrollment allowed (a
//! renewal cannot widen it).
use std::path::PathBuf;
use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use rsnet_certs::{Grant, Pki};
use rsnet_common::enroll::{self, Refusal};
use rsnet_common::http_util::{error, json, read_body, Body};
use rsnet_common::id::ComponentId;
use rsnet_common::limits::{BODY_READ_TIMEOUT, MAX_API_BODY_BYTES};
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::Timestamp;
use rsnet_common::server::Peer;
use rsnet_common::store::KvStore;
use rsnet_common::tls::{Identity, Revocations, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;

const TOKENS: &str = "enroll/t/";
const ENROLLED: &str = "enroll/c/";
/// Serials kept per component (the current one and a few before it).
const KEEP_SERIALS: usize = 4;
/// Most message classes a token may list.
const MAX_CLASSES: usize = 64;

/// `[enrollment]` in the appserver's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// The PKI directory (`rsnet-certs init`); without it nothing is
    /// signed here and enrollment requests are answered 503.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// Longest life of a token, in seconds. Default 30 days.
    #[serde(default = "default_max_token")]
    pub max_token_s: u64,
}

fn default_max_token() -> u64 {
    30 * 86_400
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        EnrollmentConfig {
            pki_dir: None,
            max_token_s: default_max_token(),
        }
    }
}

impl EnrollmentConfig {
    /// Collects problems.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if let Some(d) = &self.pki_dir {
            if !d.join("ca.pem").exists() || !d.join("ca.key").exists() {
                errors.push(format!(
                    "enrollment.pki_dir: {} holds no CA (ca.pem and ca.key; `rsnet-certs init`)",
                    d.display()
                ));
            }
        }
        if self.max_token_s == 0 {
            errors.push("enrollment.max_token_s: must be at least 1".into());
        }
    }
}

/// A token as stored (its secret is not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Whom it enrolls.
    pub id: ComponentId,
    /// As what.
    pub role: Role,
    /// Message classes the certificate allows (none: every class).
    pub classes: Vec<String>,
    /// An MLM's scopes (none: its customer).
    pub scopes: Vec<String>,
    /// The server names an MLM may ask for (none: localhost, 127.0.0.1, ::1).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Life of the certificates it leads to, in seconds.
    pub cert_valid_s: u64,
    /// Made then, by whom.
    pub created: Timestamp,
    /// The operator who made it.
    pub created_by: String,
    /// Refused after this.
    pub expires: Timestamp,
    /// Used then.
    #[serde(default)]
    pub used: Option<Timestamp>,
    /// Withdrawn (the component was revoked).
    #[serde(default)]
    pub withdrawn: bool,
}

impl TokenRecord {
    fn state(&self, now: Timestamp) -> &'static str {
        if self.used.is_some() {
            "used"
        } else if self.withdrawn {
            "withdrawn"
        } else if self.expires <= now {
            "expired"
        } else {
            "open"
        }
    }
}

/// An enrolled component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    /// Its role.
    pub role: Role,
    /// What its certificates allow.
    pub classes: Vec<String>,
    /// An MLM's scopes.
    pub scopes: Vec<String>,
    /// An MLM's host names.
    pub hosts: Vec<String>,
    /// Life of each certificate, in seconds.
    pub cert_valid_s: u64,
    /// Serials (hex) of its latest certificates, newest last.
    pub serials: Vec<String>,
    /// SHA-256 (hex) of its latest certificates, newest last: a renewal
    /// must prove it holds the key of one of these.
    #[serde(default)]
    pub certs: Vec<String>,
    /// When enrolled and last renewed.
    pub enrolled: Timestamp,
    /// When last renewed.
    #[serde(default)]
    pub renewed: Option<Timestamp>,
    /// Revoked: no renewal, ever.
    #[serde(default)]
    pub revoked: bool,
}

/// `POST /api/v1/enrollments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    id: ComponentId,
    role: String,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    /// The server names an MLM may ask for (none: only localhost,
    /// 127.0.0.1, ::1): a token holder cannot get a certificate for
    /// another host's name.
    #[serde(default)]
    hosts: Vec<String>,
    /// Seconds the token may wait to be used. Default one day.
    #[serde(default)]
    expires_s: Option<u64>,
    /// Seconds each certificate lasts. Default 365 days; at least 60.
    #[serde(default)]
    cert_valid_s: Option<u64>,
}

/// The appserver's enrollment authority.
pub struct Enrollments {
    pki: Option<Pki>,
    kv: Arc<dyn KvStore>,
    me: Identity,
    revocations: Revocations,
    max_token_s: u64,
    /// One request at a time: a token is checked, signed for and spent
    /// with nothing in between.
    lock: tokio::sync::Mutex<()>,
    issued: Counter,
    renewed: Counter,
    refused: Counter,
    /// The rate limit on enrollment and renewal requests.
    gate: enroll::Gate,
    /// The classes each enrolled component (with a class list) may send,
    /// for [`EnrolledClasses`].
    classes: std::sync::RwLock<std::collections::HashMap<ComponentId, Vec<String>>>,
}

impl Enrollments {
    /// The authority over `cfg.pki_dir` (none: enrollment is off).
    ///
    /// # Errors
    /// If the PKI directory cannot be opened.
    pub fn open(
        cfg: &EnrollmentConfig,
        kv: Arc<dyn KvStore>,
        me: Identity,
        revocations: Revocations,
        metrics: &Registry,
    ) -> rsnet_common::Result<Arc<Enrollments>> {
        let pki = match &cfg.pki_dir {
            Some(d) => Some(
                Pki::open(d).map_err(|e| rsnet_common::Error::Setup(format!("enrollment: {e}")))?,
            ),
            None => None,
        };
        let mut classes = std::collections::HashMap::new();
        for (k, v) in kv.list(ENROLLED)? {
            let (Some(id), Ok(e)) = (
                k.strip_prefix(ENROLLED)
                    .and_then(|i| i.parse::<ComponentId>().ok()),
                serde_json::from_slice::<Enrolled>(&v),
            ) else {
                continue;
            };
            if !e.classes.is_empty() {
                classes.insert(id, e.classes);
            }
        }
        Ok(Arc::new(Enrollments {
            classes: std::sync::RwLock::new(classes),
            gate: enroll::Gate::default(),
            pki,
            kv,
            me,
            revocations,
            max_token_s: cfg.max_token_s,
            lock: tokio::sync::Mutex::new(()),
            issued: metrics.counter(
                "rsnet_enrollments_total",
                "certificates issued to enrolling nodes",
            ),
            renewed: metrics.counter("rsnet_renewals_total", "certificates renewed"),
            refused: metrics.counter(
                "rsnet_enrollments_refused_total",
                "enrollment and renewal requests refused",
            ),
        }))
    }

    /// Does this appserver sign (a PKI directory is configured)? Only then
    /// are clients without a certificate let in.
    pub fn enabled(&self) -> bool {
        self.pki.is_some()
    }

    /// `POST /rs/v1/enroll` from a child (or a node with no certificate).
    pub async fn handle(&self, req: http::Request<Incoming>, peer: &Peer) -> Response<Body> {
        if req.method() != http::Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        }
        if let Err(x) = self.gate.admit() {
            self.refused.inc();
            return x.response();
        }
        let mut r = match enroll::read_request(req.into_body()).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        let answer = match enroll::vouch(&mut r, peer, &self.me) {
            Ok(()) => self.sign(r).await,
            Err(x) => Err(x),
        };
        match answer {
            Ok(cert) => json(StatusCode::OK, &enroll::Answer { cert }),
            Err(Refusal(status, reason)) => {
                self.refused.inc();
                tracing::warn!(peer = ?peer.identity.as_ref().map(|i| i.id.to_string()), addr = %peer.addr, %reason, "enrollment refused");
                error(status, reason)
            }
        }
    }

    async fn sign(&self, r: enroll::Request) -> Result<String, Refusal> {
        let Some(pki) = self.pki.clone() else {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "enrollment is not set up at the appserver ([enrollment] pki_dir)".into(),
            ));
        };
        let forbidden = |s: String| Refusal(StatusCode::FORBIDDEN, s);
        let internal = |e: String| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e);
        let _one = self.lock.lock().await;
        let now = Timestamp::now();
        let enrolled_key = format!("{ENROLLED}{}", r.id);
        let prior: Option<Enrolled> = self.load(&enrolled_key).map_err(internal)?;
        let (mut record, token_key, token) = match &r.token {
            Some(t) => {
                let (_, secret) = enroll::parse_token(t).map_err(forbidden)?;
                let key = format!("{TOKENS}{}", enroll::token_hash(secret));
                let Some(tok) = self.load::<TokenRecord>(&key).map_err(internal)? else {
                    return Err(forbidden("unknown enrollment token".into()));
                };
                match tok.state(now) {
                    "open" => {}
                    "used" => {
                        return Err(forbidden(format!(
                            "this enrollment token was used already (at {})",
                            tok.used.map(|u| u.to_rfc3339()).unwrap_or_default()
                        )))
                    }
                    "withdrawn" => {
                        return Err(forbidden(format!(
                            "this enrollment token was withdrawn: {} was revoked",
                            tok.id
                        )))
                    }
                    _ => {
                        return Err(forbidden(format!(
                            "this enrollment token expired at {}",
                            tok.expires.to_rfc3339()
                        )))
                    }
                }
                if tok.id != r.id || tok.role != r.role {
                    return Err(forbidden(format!(
                        "this token enrolls {} as a {}, not {} as a {}",
                        tok.id,
                        tok.role.as_str(),
                        r.id,
                        r.role.as_str()
                    )));
                }
                if r.role != Role::Mlm && !r.hosts.is_empty() {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        "hosts are for MLMs".into(),
                    ));
                }
                if let Some(h) = r.hosts.iter().find(|h| !tok.hosts.contains(h)) {
                    return Err(forbidden(format!(
                        "this token does not allow the server name {h:?} (it allows: {})",
                        if tok.hosts.is_empty() {
                            "localhost, 127.0.0.1, ::1".to_string()
                        } else {
                            tok.hosts.join(", ")
                        }
                    )));
                }
                let record = Enrolled {
                    role: tok.role,
                    classes: tok.classes.clone(),
                    scopes: tok.scopes.clone(),
                    hosts: r.hosts.clone(),
                    cert_valid_s: tok.cert_valid_s,
                    serials: prior
                        .as_ref()
                        .map(|p| p.serials.clone())
                        .unwrap_or_default(),
                    certs: prior.map(|p| p.certs).unwrap_or_default(),
                    enrolled: now,
                    renewed: None,
                    revoked: false,
                };
                (record, Some(key), Some(tok))
            }
            None => {
                let Some(proof) = &r.proof else {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        "a renewal carries a proof signed with the key of the certificate it renews".into(),
                    ));
                };
                let proven = enroll::check_proof(proof, &r.csr).map_err(forbidden)?;
                if proven.identity.id != r.id || proven.identity.role != r.role {
                    return Err(forbidden(format!(
                        "the proof's certificate is for {}, not {}",
                        proven.identity.id, r.id
                    )));
                }
                // The first hop saw the node connect with this certificate.
                if r.serial.as_ref().is_some_and(|s| *s != proven.serial) {
                    return Err(forbidden(
                        "the certificate in the proof is not the one the node connected with"
                            .into(),
                    ));
                }
                let serial = proven.serial.clone();
                let Some(mut record) = prior else {
                    return Err(forbidden(format!(
                        "{} was not enrolled here (its certificate came from rsnet-certs issue): renew it with rsnet-certs, or enroll it with a token",
                        r.id
                    )));
                };
                if record.revoked {
                    return Err(forbidden(format!("{} is revoked", r.id)));
                }
                if record.role != r.role {
                    return Err(forbidden(format!(
                        "{} is enrolled as a {}",
                        r.id,
                        record.role.as_str()
                    )));
                }
                let revoked_here =
                    enroll::unhex(&serial).is_some_and(|s| self.revocations.is_revoked(&s));
                let revoked_in_pki = pki
                    .is_revoked(&serial)
                    .map_err(|e| internal(e.to_string()))?;
                if !record.certs.contains(&proven.sha256) || revoked_here || revoked_in_pki {
                    return Err(forbidden(format!(
                        "certificate {serial} is not a current certificate of {}",
                        r.id
                    )));
                }
                record.renewed = Some(now);
                (record, None, None)
            }
        };
        let (id, role, csr) = (r.id.to_string(), r.role, r.csr.clone());
        let grant_record = record.clone();
        let (cert, serial) = tokio::task::spawn_blocking(move || {
            pki.issue_csr(
                &Grant {
                    id: &id,
                    role,
                    hosts: &grant_record.hosts,
                    scopes: &grant_record.scopes,
                    perms: &[],
                    classes: &grant_record.classes,
                    valid_for: std::time::Duration::from_secs(grant_record.cert_valid_s),
                },
                &csr,
            )
        })
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
        record.serials.push(serial.clone());
        let drop = record.serials.len().saturating_sub(KEEP_SERIALS);
        record.serials.drain(..drop);
        record
            .certs
            .push(enroll::cert_sha256(&cert).map_err(internal)?);
        let drop = record.certs.len().saturating_sub(KEEP_SERIALS);
        record.certs.drain(..drop);
        let mut puts = vec![(enrolled_key, to_vec(&record)?)];
        if let (Some(k), Some(mut tok)) = (token_key, token) {
            tok.used = Some(now);
            puts.push((k, to_vec(&tok)?));
        }
        rsnet_common::store::commit_async(&self.kv, puts, Vec::new())
            .await
            .map_err(|e| internal(e.to_string()))?;
        {
            let mut c = self.classes.write().unwrap_or_else(|p| p.into_inner());
            if record.classes.is_empty() {
                c.remove(&r.id);
            } else {
                c.insert(r.id.clone(), record.classes.clone());
            }
        }
        if r.token.is_some() {
            self.issued.inc();
            tracing::info!(id = %r.id, role = r.role.as_str(), %serial, "enrolled");
        } else {
            self.renewed.inc();
            tracing::info!(id = %r.id, %serial, "certificate renewed");
        }
        Ok(cert)
    }

    fn load<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        match self.kv.get(key).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| format!("{key}: {e}")),
        }
    }

    /// `POST /api/v1/enrollments` by `op`: a new token, shown once.
    pub async fn create(&self, req: http::Request<Incoming>, op: &Identity) -> Response<Body> {
        if self.pki.is_none() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "enrollment is not set up at the appserver ([enrollment] pki_dir)",
            );
        }
        let body = match read_body(req.into_body(), MAX_API_BODY_BYTES, BODY_READ_TIMEOUT).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let n: NewToken = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("enrollment: {e}")),
        };
        let role = match Role::parse(&n.role) {
            Some(r @ (Role::Proxy | Role::Mlm)) => r,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("role {:?}: expected proxy or mlm", n.role),
                )
            }
        };
        if !op.sees(&n.id) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "operator {} may not enroll {} (outside its scopes)",
                    op.id, n.id
                ),
            );
        }
        if n.classes.len() > MAX_CLASSES {
            return error(
                StatusCode::BAD_REQUEST,
                format!("classes: at most {MAX_CLASSES}"),
            );
        }
        if let Some(c) = n
            .classes
            .iter()
            .find(|c| !rsnet_common::model::valid_class(c))
        {
            return error(
                StatusCode::BAD_REQUEST,
                format!("classes: {c:?} is not a class label"),
            );
        }
        if role != Role::Mlm && (!n.scopes.is_empty() || !n.hosts.is_empty()) {
            return error(StatusCode::BAD_REQUEST, "scopes and hosts are for MLMs");
        }
        if n.hosts.len() > 16 || n.hosts.iter().any(|h| h.is_empty() || h.len() > 253) {
            return error(
                StatusCode::BAD_REQUEST,
                "hosts: at most 16 names of 1..=253 bytes",
            );
        }
        for s in &n.scopes {
            match s.parse::<ComponentId>() {
                Ok(s) if op.sees(&s) => {}
                Ok(s) => {
                    return error(
                        StatusCode::FORBIDDEN,
                        format!("operator {} may not grant scope {s}", op.id),
                    )
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("scopes: {e}")),
            }
        }
        let expires_s = n.expires_s.unwrap_or(86_400);
        if expires_s == 0 || expires_s > self.max_token_s {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expires_s: 1..={} (enrollment.max_token_s)",
                    self.max_token_s
                ),
            );
        }
        let cert_valid_s = n.cert_valid_s.unwrap_or(365 * 86_400);
        if !(60..=10 * 365 * 86_400).contains(&cert_valid_s) {
            return error(StatusCode::BAD_REQUEST, "cert_valid_s: 60 s to 10 years");
        }
        let token = match enroll::new_token(&n.id) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        let Ok((_, secret)) = enroll::parse_token(&token) else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "token");
        };
        let now = Timestamp::now();
        let rec = TokenRecord {
            id: n.id.clone(),
            role,
            classes: n.classes,
            scopes: n.scopes,
            hosts: n.hosts,
            cert_valid_s,
            created: now,
            created_by: op.id.to_string(),
            expires: now.after(std::time::Duration::from_secs(expires_s)),
            used: None,
            withdrawn: false,
        };
        let value = match to_vec(&rec) {
            Ok(v) => v,
            Err(Refusal(s, m)) => return error(s, m),
        };
        let key = format!("{TOKENS}{}", enroll::token_hash(secret));
        if let Err(e) = rsnet_common::store::put_async(&self.kv, vec![(key, value)]).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        json(
            StatusCode::CREATED,
            &json!({
                "token": token,
                "id": rec.id.to_string(),
                "role": role.as_str(),
                "classes": rec.classes,
                "scopes": rec.scopes,
                "expires": rec.expires.to_rfc3339(),
                "cert_valid_s": cert_valid_s,
            }),
        )
    }

    /// `GET /api/v1/enrollments`: tokens (never their secrets) and enrolled
    /// components that `op` sees.
    pub fn list(&self, op: &Identity) -> Response<Body> {
        let now = Timestamp::now();
        let tokens = match self.kv.list(TOKENS) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let tokens: Vec<_> = tokens
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice::<TokenRecord>(v).ok())
            .filter(|t| op.sees(&t.id))
            .map(|t| {
                json!({
                    "id": t.id.to_string(),
                    "role": t.role.as_str(),
                    "classes": t.classes,
                    "state": t.state(now),
                    "created": t.created.to_rfc3339(),
                    "created_by": t.created_by,
                    "expires": t.expires.to_rfc3339(),
                })
            })
            .collect();
        let enrolled = match self.kv.list(ENROLLED) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let components: Vec<_> = enrolled
            .iter()
            .filter_map(|(k, v)| {
                let id: ComponentId = k.strip_prefix(ENROLLED)?.parse().ok()?;
                let e: Enrolled = serde_json::from_slice(v).ok()?;
                op.sees(&id).then(|| {
                    json!({
                        "id": id.to_string(),
                        "role": e.role.as_str(),
                        "classes": e.classes,
                        "serial": e.serials.last(),
                        "enrolled": e.enrolled.to_rfc3339(),
                        "renewed": e.renewed.map(|r| r.to_rfc3339()),
                        "revoked": e.revoked,
                    })
                })
            })
            .collect();
        json(
            StatusCode::OK,
            &json!({ "tokens": tokens, "components": components }),
        )
    }

    /// Follows the CRL until `shutdown`: when it changes (`rsnet-certs
    /// revoke` too), every ID with a revoked certificate in the PKI has its
    /// enrollment ended, its open tokens withdrawn, and its upload grants
    /// withdrawn (`uploads`), as a revocation through the API does.
    pub async fn follow_crl(
        self: Arc<Self>,
        uploads: Arc<crate::uploads::Uploads>,
        mut shutdown: rsnet_common::server::Shutdown,
    ) {
        let Some(pki) = self.pki.clone() else {
            return;
        };
        loop {
            tokio::select! {
                _ = self.revocations.changed() => {}
                _ = shutdown.wait() => return,
            }
            let p = pki.clone();
            let ids = match tokio::task::spawn_blocking(move || p.revoked_ids()).await {
                Ok(Ok(ids)) => ids,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "PKI index not read after a CRL change");
                    continue;
                }
                Err(_) => continue,
            };
            for id in ids.iter().filter_map(|i| i.parse::<ComponentId>().ok()) {
                let ended = {
                    let _one = self.lock.lock().await;
                    self.end(&id).await
                };
                match ended {
                    Ok((ended, tokens)) if ended || tokens > 0 => {
                        let grants = uploads.withdraw(&id).await;
                        tracing::warn!(%id, tokens, grants, "revoked in the CRL: enrollment ended");
                    }
                    Ok(_) => {}
                    Err(Refusal(_, e)) => tracing::warn!(%id, error = %e, "enrollment not ended"),
                }
            }
        }
    }

    /// Ends `id`'s enrollment and withdraws its open tokens: whether an
    /// enrollment was ended, and how many tokens.
    async fn end(&self, id: &ComponentId) -> Result<(bool, usize), Refusal> {
        let internal = |e: String| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e);
        let mut puts = Vec::new();
        let key = format!("{ENROLLED}{id}");
        if let Some(mut e) = self.load::<Enrolled>(&key).map_err(internal)? {
            if !e.revoked {
                e.revoked = true;
                puts.push((key, to_vec(&e)?));
            }
        }
        let ended = !puts.is_empty();
        let mut tokens = 0;
        for (k, v) in self.kv.list(TOKENS).map_err(|e| internal(e.to_string()))? {
            if let Ok(mut t) = serde_json::from_slice::<TokenRecord>(&v) {
                if &t.id == id && t.used.is_none() && !t.withdrawn {
                    t.withdrawn = true;
                    tokens += 1;
                    puts.push((k, to_vec(&t)?));
                }
            }
        }
        if !puts.is_empty() {
            rsnet_common::store::commit_async(&self.kv, puts, Vec::new())
                .await
                .map_err(|e| internal(e.to_string()))?;
        }
        self.classes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok((ended, tokens))
    }

    /// `POST /api/v1/revocations` `{"id": ID}`: revokes every certificate
    /// of ID (the CRL is rewritten; every hop that reads it refuses the
    /// node within seconds, on open connections too), ends its enrollment
    /// (no renewal) and withdraws its open tokens. The caller withdraws
    /// its upload grants.
    pub async fn revoke(&self, id: &ComponentId) -> Result<serde_json::Value, Refusal> {
        let Some(pki) = self.pki.clone() else {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation here needs [enrollment] pki_dir (or use rsnet-certs revoke)".into(),
            ));
        };
        let internal = |e: String| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e);
        let _one = self.lock.lock().await;
        let who = id.to_string();
        let certificates = tokio::task::spawn_blocking(move || pki.revoke(&who))
            .await
            .map_err(|e| internal(e.to_string()))?
            .unwrap_or(0);
        let (enrolled, tokens) = self.end(id).await?;
        if certificates == 0 && !enrolled && tokens == 0 {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "nothing to revoke for {id}: no unrevoked certificate, enrollment or token"
                ),
            ));
        }
        tracing::warn!(%id, certificates, tokens, "revoked");
        Ok(json!({
            "id": id.to_string(),
            "certificates": certificates,
            "enrollment_ended": enrolled,
            "tokens_withdrawn": tokens,
        }))
    }
}

/// The appserver's check of each message's class against the enrollment
/// of the component it comes from (the nearest enrolled ancestor of its
/// origin: a proxy's support instances send under the proxy's). The first
/// hop checks the class against the sender's certificate; this checks it
/// again at the top, so an MLM on the path cannot pass on a class its
/// child may not send. A class outside the enrollment is deferred like the
/// screen's (`retry-class`, an hour), naming the class.
pub struct EnrolledClasses(pub Arc<Enrollments>);

impl EnrolledClasses {
    fn check(
        &self,
        item: &rsnet_common::envelope::Item,
    ) -> Option<rsnet_common::pipeline::Verdict> {
        let origin = &item.header.source()?.origin;
        let class = item.header.class.as_str();
        if rsnet_common::tls::PROTOCOL_CLASSES.contains(&class) {
            return None;
        }
        let c = self.0.classes.read().unwrap_or_else(|p| p.into_inner());
        let mut at = Some(origin.clone());
        while let Some(id) = at {
            if let Some(allowed) = c.get(&id) {
                if allowed.iter().any(|a| a == class) {
                    return None;
                }
                return Some(rsnet_common::pipeline::Verdict::defer_class(
                    format!(
                        "class {class} is not allowed for {id} (its enrollment allows: {})",
                        allowed.join(", ")
                    ),
                    rsnet_common::pipeline::CLASS_PARKED,
                    class,
                ));
            }
            at = id.parent();
        }
        None
    }
}

impl rsnet_common::pipeline::Stage for EnrolledClasses {
    fn name(&self) -> &'static str {
        "enrolled-classes"
    }

    fn judge<'a>(
        &'a self,
        _ex: &'a rsnet_common::pipeline::Exchange,
        items: Vec<rsnet_common::envelope::Item>,
    ) -> rsnet_common::pipeline::StageFuture<'a> {
        let j = rsnet_common::pipeline::Judged::each(items, |i| self.check(i));
        Box::pin(async move { j })
    }
}

fn to_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, Refusal> {
    serde_json::to_vec(v).map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
