//! Enrollment and renewal (DESIGN.md §9): a node's key is made on its own
//! host and never leaves it; only a certificate request travels, up the
//! tree, to the appserver, which signs it under the provider CA.
//!
//! # Wire
//!
//! `POST /rs/v1/enroll`, a JSON [`Request`]; the answer is a JSON
//! [`Answer`] (200) or `{"error": REASON}` (4xx, 5xx).
//!
//! * **Enrollment** carries a one-time token (`ID:SECRET`, made by an
//!   operator). A node that has no certificate yet connects to its parent
//!   with TLS but without a client certificate: a parent serves such a
//!   connection this one path and nothing else (`server`).
//! * **Renewal** carries no token; the node connects with the certificate it
//!   is renewing, and the first hop writes that certificate's serial into
//!   the request, so the appserver renews only a certificate it issued to
//!   that ID and that is not revoked.
//!
//! Every hop runs [`vouch`] before it relays: the request must be for the
//! peer itself, or (from an MLM) for an ID in the peer's scopes, and (at
//! an MLM) for an ID in this MLM's own scopes. A token for `beta.p1` is
//! refused by `acme.mlm1`, whatever the appserver would say.
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::id::ComponentId;
use crate::server::Peer;
use crate::tls::{Identity, Role, TlsPaths};

/// The path of enrollment and renewal requests at every parent.
pub const ENROLL_PATH: &str = "/rs/v1/enroll";
/// Largest request body.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest answer body (a certificate).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Largest CSR (PEM).
const MAX_CSR_BYTES: usize = 8 * 1024;
/// Most host names an MLM may ask for.
const MAX_HOSTS: usize = 16;
/// How long a request may take end to end (the hops and the signing).
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Enrollment and renewal requests a node takes per second (a burst of
/// five times that): each costs its parents a connection upward and the
/// appserver a signature, and nodes without a certificate may send them.
pub const MAX_PER_S: u32 = 20;

/// The rate limit on enrollment requests at one node ([`MAX_PER_S`]).
pub struct Gate(governor::DefaultDirectRateLimiter);

impl Default for Gate {
    fn default() -> Self {
        let n = |v: u32| std::num::NonZeroU32::new(v).unwrap_or(std::num::NonZeroU32::MIN);
        let q = governor::Quota::per_second(n(MAX_PER_S)).allow_burst(n(5 * MAX_PER_S));
        Gate(governor::RateLimiter::direct(q))
    }
}

impl Gate {
    /// `Ok` if a request may go on now.
    ///
    /// # Errors
    /// 429, with a reason, when over the rate: the node asks again later
    /// (a renewal at its next check).
    pub fn admit(&self) -> Result<(), Refusal> {
        self.0.check().map_err(|_| {
            Refusal(
                StatusCode::TOO_MANY_REQUESTS,
                format!("more than {MAX_PER_S} enrollment requests a second here; ask again later"),
            )
        })
    }
}

/// An enrollment or renewal request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The ID to be certified.
    pub id: ComponentId,
    /// Its role: proxy or mlm.
    pub role: Role,
    /// A PKCS#10 request (PEM) signed by the new key.
    pub csr: String,
    /// The one-time token (`ID:SECRET`); none for a renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// DNS names or IPs an MLM serves under (enrollment only; a renewal
    /// keeps the enrolled ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A renewal: the serial (hex) of the certificate the node connected
    /// with, written by the first hop (a node's own value is replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A renewal: the certificate being renewed, and a signature by its
    /// key over the CSR ([`prove`]), so that no hop can renew on a node's
    /// behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Proof that a renewal comes from the holder of the certificate it renews.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// The current certificate (PEM).
    pub cert: String,
    /// Its key's signature (ECDSA P-256, ASN.1, base64) over
    /// [`PROOF_DOMAIN`] followed by the CSR's PEM text.
    pub signature: String,
}

/// What a renewal proof's signature covers first.
pub const PROOF_DOMAIN: &[u8] = b"rsnet-renewal-v1\n";

/// A proof for `csr` by the holder of `cert_pem` and `key_pem`.
///
/// # Errors
/// A key that cannot sign.
pub fn prove(key_pem: &str, cert_pem: &str, csr: &str) -> Result<Proof, String> {
    use base64::Engine;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("key: {e}"))?;
    let mut msg = PROOF_DOMAIN.to_vec();
    msg.extend_from_slice(csr.as_bytes());
    let sig = rcgen::SigningKey::sign(&key, &msg).map_err(|e| format!("key: {e}"))?;
    Ok(Proof {
        cert: cert_pem.to_string(),
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
    })
}

/// What a checked proof shows: the certificate's SHA-256 (hex), its
/// serial (hex) and the identity in it.
#[derive(Debug, Clone)]
pub struct Proven {
    /// SHA-256 of the certificate's DER, hex.
    pub sha256: String,
    /// Its serial, hex.
    pub serial: String,
    /// Whom it names.
    pub identity: Identity,
}

/// Checks `proof` for `csr`: the signature verifies under the key of the
/// certificate it carries. (Whether that certificate is a current one of
/// the component is the caller's question: compare [`Proven::sha256`].)
///
/// # Errors
/// Why the proof does not hold.
pub fn check_proof(proof: &Proof, csr: &str) -> Result<Proven, String> {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    if proof.cert.len() > MAX_CSR_BYTES {
        return Err("proof: the certificate is too large".into());
    }
    let der = rustls_pki_types::CertificateDer::from_pem_slice(proof.cert.as_bytes())
        .map_err(|e| format!("proof: certificate: {e}"))?;
    let identity = Identity::from_der(&der).map_err(|e| format!("proof: certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("proof: certificate: {e}"))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&proof.signature)
        .map_err(|_| "proof: the signature is not base64".to_string())?;
    let mut msg = PROOF_DOMAIN.to_vec();
    msg.extend_from_slice(csr.as_bytes());
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&msg, &sig)
    .map_err(|_| "proof: the signature does not verify with the certificate's key".to_string())?;
    Ok(Proven {
        sha256: sha256_hex(der.as_ref()),
        serial: crate::tls::serial_of(&der)
            .map(|s| hex(&s))
            .unwrap_or_default(),
        identity,
    })
}

/// SHA-256 (hex) of a certificate PEM's DER, as [`Proven::sha256`].
///
/// # Errors
/// If it is not a certificate PEM.
pub fn cert_sha256(cert_pem: &str) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(sha256_hex(der.as_ref()))
}

/// The appserver's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// The certificate (PEM).
    pub cert: String,
}

/// Why a hop refused a request: the status and a reason for the node.
#[derive(Debug, Clone)]
pub struct Refusal(pub StatusCode, pub String);

impl Refusal {
    /// The answer to send.
    pub fn response(&self) -> http::Response<crate::http_util::Body> {
        crate::http_util::error(self.0, self.1.clone())
    }
    fn forbidden(s: impl Into<String>) -> Self {
        Refusal(StatusCode::FORBIDDEN, s.into())
    }
    fn bad(s: impl Into<String>) -> Self {
        Refusal(StatusCode::BAD_REQUEST, s.into())
    }
}

/// A new enrollment token for `id`: `ID:SECRET`, the secret 32 bytes
/// from the system's random source, in hex. The appserver keeps only
/// [`token_hash`] of the secret.
///
/// # Errors
/// If the system's random source fails.
pub fn new_token(id: &ComponentId) -> Result<String, String> {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(format!("{id}:{}", hex(&secret)))
}

/// Splits a token into its ID and secret.
///
/// # Errors
/// A token that is not `ID:SECRET`.
pub fn parse_token(token: &str) -> Result<(ComponentId, &str), String> {
    let (id, secret) = token.rsplit_once(':').ok_or("token: expected ID:SECRET")?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("token: the secret is not 64 hex digits".into());
    }
    Ok((id.parse().map_err(|e| format!("token: {e}"))?, secret))
}

/// What the appserver stores of a token's secret.
pub fn token_hash(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

pub use crate::bulk::hex;

/// SHA-256 of `bytes`, hex (token secrets; certificates by their DER).
fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = sha2::Sha256::default();
    sha2::Digest::update(&mut h, bytes);
    hex(&sha2::Digest::finalize(h))
}

/// Reads lower- or upper-case hex; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// A hop's checks of `req` against the peer that sent it and this hop
/// (`me`), before it relays or signs. Fills in the renewal serial from
/// the peer's certificate when the peer renews itself.
///
/// # Errors
/// The refusal to send back.
pub fn vouch(req: &mut Request, peer: &Peer, me: &Identity) -> Result<(), Refusal> {
    if req.csr.len() > MAX_CSR_BYTES {
        return Err(Refusal::bad(format!(
            "csr: {} bytes, more than {MAX_CSR_BYTES}",
            req.csr.len()
        )));
    }
    if req.hosts.len() > MAX_HOSTS || req.hosts.iter().any(|h| h.is_empty() || h.len() > 253) {
        return Err(Refusal::bad(format!(
            "hosts: at most {MAX_HOSTS} names of 1..=253 bytes"
        )));
    }
    if !matches!(req.role, Role::Proxy | Role::Mlm) {
        return Err(Refusal::bad(format!(
            "role {}: only proxies and MLMs enroll",
            req.role.as_str()
        )));
    }
    if let Some(t) = &req.token {
        let (tid, _) = parse_token(t).map_err(Refusal::bad)?;
        if tid != req.id {
            return Err(Refusal::forbidden(format!(
                "the token is for {tid}, not {}",
                req.id
            )));
        }
    }
    if me.role == Role::Mlm && !me.may_send_as(&req.id) {
        return Err(Refusal::forbidden(format!(
            "{} does not relay enrollments for {} (its scopes: {})",
            me.id,
            req.id,
            me.scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let serial = peer.revocation.as_ref().map(|(s, _)| hex(s));
    match &peer.identity {
        None => {
            if req.token.is_none() {
                return Err(Refusal::forbidden(
                    "a node without a certificate needs an enrollment token",
                ));
            }
            req.serial = None;
        }
        Some(p) if p.id == req.id => {
            if p.role != req.role {
                return Err(Refusal::forbidden(format!(
                    "{} is a {}, not a {}",
                    p.id,
                    p.role.as_str(),
                    req.role.as_str()
                )));
            }
            req.serial = if req.token.is_none() { serial } else { None };
        }
        Some(p) if p.role == Role::Mlm && p.may_send_as(&req.id) => {
            // Relayed from below: the lower hop wrote the serial.
            if req.token.is_none() && req.serial.is_none() {
                return Err(Refusal::bad("a relayed renewal carries its serial"));
            }
        }
        Some(p) => {
            return Err(Refusal::forbidden(format!(
                "{} may not ask for a certificate for {}",
                p.id, req.id
            )))
        }
    }
    Ok(())
}

/// Reads a request body, bounded.
///
/// # Errors
/// The refusal (too large, slow, or not a request).
pub async fn read_request(
    body: hyper::body::Incoming,
) -> Result<Request, http::Response<crate::http_util::Body>> {
    let bytes =
        crate::http_util::read_body(body, MAX_REQUEST_BYTES, crate::limits::BODY_READ_TIMEOUT)
            .await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::bad(format!("enrollment request: {e}")).response())
}

/// A new key and a certificate request for it, both PEM. The key is for
/// this host only.
///
/// # Errors
/// Key generation or encoding.
pub fn new_key_and_csr(id: &ComponentId) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, id.as_str());
    let csr = p
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("certificate request: {e}"))?;
    Ok((key.serialize_pem(), csr))
}

/// Writes a new key and certificate over `paths` (key first, 0600; each
/// through a temporary file, fsync, rename). Nodes that watch the files
/// reload them within a second (`tls`).
///
/// # Errors
/// File system errors.
pub fn install(paths: &TlsPaths, key_pem: &str, cert_pem: &str) -> Result<(), String> {
    write_file(&paths.key, key_pem.as_bytes(), true)?;
    write_file(&paths.cert, cert_pem.as_bytes(), false)
}

/// Writes `data` to `path` through a temporary file (fsync, rename).
///
/// # Errors
/// File system errors, naming the path.
pub fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let tmp = path.with_extension("new");
    let mut f = o.open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads an answer (or the error in it), bounded.
///
/// # Errors
/// The parent's refusal, or a transport problem, as text for the user.
pub async fn read_answer(resp: http::Response<hyper::body::Incoming>) -> Result<Answer, String> {
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES);
    let bytes: Bytes = tokio::time::timeout(ENROLL_TIMEOUT, body.collect())
        .await
        .map_err(|_| "the parent's answer did not arrive in time".to_string())?
        .map_err(|e| format!("the parent's answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(format!("refused ({status}): {reason}"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the parent's answer: {e}"))
}

/// Checks that `cert_pem` is a certificate for `id` in `role` whose key is
/// `key_pem`'s: a parent cannot hand a node someone else's certificate.
///
/// # Errors
/// What does not match.
pub fn check_answer(
    id: &ComponentId,
    role: Role,
    key_pem: &str,
    cert_pem: &str,
) -> Result<Identity, String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("the issued certificate: {e}"))?;
    let got = Identity::from_der(&der).map_err(|e| format!("the issued certificate: {e}"))?;
    if &got.id != id || got.role != role {
        return Err(format!(
            "the issued certificate is for {} ({}), not {id} ({})",
            got.id,
            got.role.as_str(),
            role.as_str()
        ));
    }
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("key: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("the issued certificate: {e}"))?;
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Err("the issued certificate is not for this key".into());
    }
    Ok(got)
}

/// Seconds until the certificate at `path` expires (negative: expired).
///
/// # Errors
/// If it cannot be read.
pub fn seconds_left(path: &Path) -> Result<i64, String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Ok(cert.validity().not_after.timestamp() - now)
}

/// When a node renews its own certificate (config `[renewal]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalConfig {
    /// Renew when the certificate has less than this left. Default 30 days.
    #[serde(default = "default_before")]
    pub before_s: u64,
    /// How often to look. Default 3600.
    #[serde(default = "default_check")]
    pub check_s: u64,
    /// Renew at all (certificates made with `rsnet-certs issue` have no
    /// enrollment and cannot be renewed this way). Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_before() -> u64 {
    30 * 86_400
}
fn default_check() -> u64 {
    3600
}
fn default_true() -> bool {
    true
}

impl Default for RenewalConfig {
    fn default() -> Self {
        RenewalConfig {
            before_s: default_before(),
            check_s: default_check(),
            enabled: true,
        }
    }
}

impl RenewalConfig {
    /// Collects problems.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.check_s == 0 {
            errors.push("renewal.check_s: must be at least 1".into());
        }
    }
}

/// Renews this node's certificate through `link` whenever it is within
/// `cfg.before_s` of its end, until `shutdown`: a new key, a request up
/// the tree, the answer checked and installed. The link and the server
/// pick the new files up by themselves; nothing restarts.
pub async fn renew_until_shutdown(
    link: std::sync::Arc<crate::link::Link>,
    paths: TlsPaths,
    cfg: RenewalConfig,
    renewed: crate::metrics::Counter,
    mut shutdown: crate::server::Shutdown,
) {
    if !cfg.enabled {
        return;
    }
    let every = Duration::from_secs(cfg.check_s);
    loop {
        match seconds_left(&paths.cert) {
            Ok(left) if left < cfg.before_s as i64 => match renew_once(&link, &paths).await {
                Ok(id) => {
                    renewed.inc();
                    tracing::info!(%id, "certificate renewed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, left_s = left, "certificate renewal failed; will try again")
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read own certificate"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// One renewal through `link`.
///
/// # Errors
/// Why it did not happen, as text.
pub async fn renew_once(link: &crate::link::Link, paths: &TlsPaths) -> Result<ComponentId, String> {
    let me = crate::tls::own_identity(paths).map_err(|e| e.to_string())?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let (current_key, current_cert) = (read(&paths.key)?, read(&paths.cert)?);
    let (key, csr) = new_key_and_csr(&me.id)?;
    let proof = prove(&current_key, &current_cert, &csr)?;
    let req = Request {
        id: me.id.clone(),
        role: me.role,
        csr,
        token: None,
        hosts: vec![],
        serial: None,
        proof: Some(proof),
    };
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(
        ENROLL_TIMEOUT,
        link.stream(
            http::Method::POST,
            ENROLL_PATH,
            &[("content-type", "application/json".into())],
            crate::http_util::full(Bytes::from(body)),
            crate::limits::DEFAULT_LINK_CONNECT_TIMEOUT,
        ),
    )
    .await
    .map_err(|_| "no answer in time".to_string())?
    .map_err(|e| e.to_string())?;
    let answer = read_answer(resp).await?;
    check_answer(&me.id, me.role, &key, &answer.cert)?;
    install(paths, &key, &answer.cert)?;
    Ok(me.id)
}

/// Enrolls a node that has no certificate yet: a new key, a request with
/// `token` to `parent` over TLS that trusts only `ca` and shows no client
/// certificate, the answer checked. Returns the key and certificate PEM
/// (the caller installs them).
///
/// # Errors
/// Why it did not happen, as text for the user.
pub async fn enroll(
    parent: &str,
    ca: &Path,
    token: &str,
    role: Role,
    hosts: &[String],
) -> Result<(String, String, Identity), String> {
    let (id, _) = parse_token(token)?;
    let (key, csr) = new_key_and_csr(&id)?;
    let req = Request {
        id: id.clone(),
        role,
        csr,
        token: Some(token.to_string()),
        hosts: hosts.to_vec(),
        serial: None,
        proof: None,
    };
    let config = crate::tls::anonymous_client_config(ca).map_err(|e| e.to_string())?;
    let target = crate::client::Target::Tls {
        base: parent.trim_end_matches('/').to_string(),
        config: std::sync::Arc::new(config),
    };
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(
        ENROLL_TIMEOUT,
        crate::client::send(
            &target,
            http::Method::POST,
            ENROLL_PATH,
            Some(("application/json", Bytes::from(body))),
            &[],
        ),
    )
    .await
    .map_err(|_| format!("{parent}: no answer within {ENROLL_TIMEOUT:?}"))??;
    let answer = read_answer(resp).await?;
    let got = check_answer(&id, role, &key, &answer.cert)?;
    Ok((key, answer.cert, got))
}

/// What `rsnet-proxy enroll` and `rsnet-mlm enroll` are given.
pub struct Setup<'a> {
    /// Parent URLs, in failover order; the first is asked.
    pub parents: &'a [String],
    /// The token.
    pub token: &'a str,
    /// The provider CA certificate, copied into the node's TLS directory.
    pub ca: &'a Path,
    /// Where the node's TLS material and data go (`DIR/tls`, `DIR/data`).
    pub dir: &'a Path,
    /// proxy or mlm.
    pub role: Role,
    /// An MLM's host names.
    pub hosts: &'a [String],
    /// The config file to write; an existing one is not replaced.
    pub config: &'a Path,
    /// The CRL the node reads (kept current by whoever distributes it), so
    /// a revoked parent is refused.
    pub crl: Option<&'a Path>,
}

/// Enrolls a node end to end: a key made here, the request with the
/// token, the certificate checked and installed under `DIR/tls`, and a
/// config written from `body` (given the TLS paths). Returns the
/// identity in the certificate.
///
/// # Errors
/// Why it did not happen, as text for the user; nothing is written before
/// the certificate has arrived, and an existing config is never replaced.
pub async fn setup(
    s: Setup<'_>,
    body: impl FnOnce(&TlsPaths) -> String,
) -> Result<Identity, String> {
    if s.config.exists() {
        return Err(format!(
            "{} exists; refusing to replace it (remove it, or pass another --config)",
            s.config.display()
        ));
    }
    let parent = s.parents.first().ok_or("no --parent given")?;
    let ca = std::fs::read(s.ca).map_err(|e| format!("{}: {e}", s.ca.display()))?;
    let tls_dir = s.dir.join("tls");
    let paths = TlsPaths {
        ca: tls_dir.join("ca.pem"),
        cert: tls_dir.join("cert.pem"),
        key: tls_dir.join("key.pem"),
        crl: s.crl.map(Path::to_path_buf),
    };
    let (key, cert, id) = enroll(parent, s.ca, s.token, s.role, s.hosts).await?;
    write_file(&paths.ca, &ca, false)?;
    install(&paths, &key, &cert)?;
    write_file(s.config, body(&paths).as_bytes(), false)?;
    Ok(id)
}

/// A TOML string literal (for configs written by [`setup`]).
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The config a node's `enroll` writes: `data_dir`, then `extra` (the
/// node's listen address), `[tls]` and `[uplink]`; everything else
/// defaults.
pub fn node_config(
    binary: &str,
    data_dir: &Path,
    extra: &str,
    tls: &TlsPaths,
    parents: &[String],
) -> String {
    let path = |p: &Path| toml_str(&p.to_string_lossy());
    let parents = parents
        .iter()
        .map(|p| toml_str(p))
        .collect::<Vec<_>>()
        .join(", ");
    let crl = tls
        .crl
        .as_deref()
        .map(|c| format!("crl = {}\n", path(c)))
        .unwrap_or_default();
    format!(
        "# Written by `{binary} enroll`; deploy/configs/ shows every setting.\n\
         data_dir = {}\n{extra}\n[tls]\nca = {}\ncert = {}\nkey = {}\n{crl}\n[uplink]\nparents = [{parents}]\n",
        path(data_dir),
        path(&tls.ca),
        path(&tls.cert),
        path(&tls.key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: &str, role: Role, scopes: &[&str]) -> Identity {
        let mut i = Identity {
            id: id.parse().unwrap(),
            role,
            scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
            perms: vec![],
            classes: vec![],
        };
        if role == Role::Mlm && i.scopes.is_empty() {
            i.scopes.push(i.id.customer().parse().unwrap());
        }
        i
    }

    fn peer(who: Option<Identity>) -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            anonymous: who.is_none(),
            revocation: who
                .as_ref()
                .map(|_| (vec![0xab, 0x01], crate::tls::Revocations::watch(None))),
            identity: who,
        }
    }

    fn req(id: &str, role: Role, token: bool) -> Request {
        let id: ComponentId = id.parse().unwrap();
        Request {
            token: token.then(|| new_token(&id).unwrap()),
            id,
            role,
            csr: "csr".into(),
            hosts: vec![],
            serial: Some("ff".into()),
            proof: None,
        }
    }

    #[test]
    fn a_hop_vouches_only_for_the_peer_itself_or_an_mlm_peers_scopes() {
        let mlm = ident("acme.mlm1", Role::Mlm, &[]);
        let app = ident("provider.app", Role::Appserver, &[]);
        let p1 = ident("acme.p1", Role::Proxy, &[]);
        // Without a certificate: a token, and the serial a node wrote is dropped.
        let mut r = req("acme.p9", Role::Proxy, true);
        vouch(&mut r, &peer(None), &mlm).unwrap();
        assert_eq!(r.serial, None);
        let e = vouch(&mut req("acme.p9", Role::Proxy, false), &peer(None), &mlm).unwrap_err();
        assert!(e.1.contains("needs an enrollment token"), "{}", e.1);
        // A proxy renews itself: the serial is the one it connected with.
        let mut r = req("acme.p1", Role::Proxy, false);
        vouch(&mut r, &peer(Some(p1.clone())), &mlm).unwrap();
        assert_eq!(r.serial.as_deref(), Some("ab01"));
        // ... and nobody else, nor itself in another role.
        let e = vouch(
            &mut req("acme.p2", Role::Proxy, false),
            &peer(Some(p1.clone())),
            &mlm,
        )
        .unwrap_err();
        assert!(
            e.1.contains("may not ask for a certificate for acme.p2"),
            "{}",
            e.1
        );
        let e = vouch(&mut req("acme.p1", Role::Mlm, false), &peer(Some(p1)), &mlm).unwrap_err();
        assert!(e.1.contains("is a proxy, not a mlm"), "{}", e.1);
        // An MLM relays for its scopes, with the serial from below.
        let mut r = req("acme.p7", Role::Proxy, false);
        vouch(&mut r, &peer(Some(mlm.clone())), &app).unwrap();
        assert_eq!(r.serial.as_deref(), Some("ff"));
        let e = vouch(
            &mut req("beta.p7", Role::Proxy, true),
            &peer(Some(mlm.clone())),
            &app,
        )
        .unwrap_err();
        assert!(e.1.contains("may not ask"), "{}", e.1);
        // An MLM relays nothing outside its own scopes, whoever asks.
        let e = vouch(&mut req("beta.p7", Role::Proxy, true), &peer(None), &mlm).unwrap_err();
        assert!(
            e.1.contains("does not relay enrollments for beta.p7"),
            "{}",
            e.1
        );
        // A token names whom it enrolls.
        let mut r = req("acme.p9", Role::Proxy, true);
        r.id = "acme.p8".parse().unwrap();
        let e = vouch(&mut r, &peer(None), &mlm).unwrap_err();
        assert!(e.1.contains("the token is for acme.p9"), "{}", e.1);
        // Operators and appservers never enroll; sizes are bounded.
        let e = vouch(&mut req("acme.x", Role::Operator, true), &peer(None), &app).unwrap_err();
        assert!(e.1.contains("only proxies and MLMs"), "{}", e.1);
        let mut r = req("acme.p9", Role::Proxy, true);
        r.csr = "x".repeat(MAX_CSR_BYTES + 1);
        assert_eq!(
            vouch(&mut r, &peer(None), &mlm).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn the_gate_takes_a_burst_then_refuses_with_429() {
        let g = Gate::default();
        for _ in 0..5 * MAX_PER_S {
            g.admit().unwrap();
        }
        let e = g.admit().unwrap_err();
        assert_eq!(e.0, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn tokens_are_id_colon_64_hex_and_only_their_hash_is_kept() {
        let id: ComponentId = "acme.p9".parse().unwrap();
        let t = new_token(&id).unwrap();
        let (got, secret) = parse_token(&t).unwrap();
        assert_eq!(got, id);
        assert_eq!(secret.len(), 64);
        assert_ne!(new_token(&id).unwrap(), t, "tokens are random");
        assert_eq!(token_hash(secret).len(), 64);
        assert_ne!(token_hash(secret), secret);
        for bad in [
            "acme.p9",
            "acme.p9:xyz",
            ":00",
            "acme..p9:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
        assert_eq!(unhex("ab01"), Some(vec![0xab, 0x01]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn a_new_key_csr_and_the_answer_check_fit_together() {
        let id: ComponentId = "acme.p9".parse().unwrap();
        let (key, csr) = new_key_and_csr(&id).unwrap();
        assert!(csr.contains("CERTIFICATE REQUEST"));
        // Signed elsewhere: a self-signed certificate for another key is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![
            rcgen::SanType::URI("urn:rsnet:id:acme.p9".try_into().unwrap()),
            rcgen::SanType::URI("urn:rsnet:role:proxy".try_into().unwrap()),
        ];
        let cert = p.self_signed(&other).unwrap().pem();
        let e = check_answer(&id, Role::Proxy, &key, &cert).unwrap_err();
        assert!(e.contains("not for this key"), "{e}");
        let e = check_answer(&"acme.p8".parse().unwrap(), Role::Proxy, &key, &cert).unwrap_err();
        assert!(e.contains("not acme.p8"), "{e}");
        let mine = rcgen::KeyPair::from_pem(&key).unwrap();
        let cert = p.self_signed(&mine).unwrap().pem();
        check_answer(&id, Role::Proxy, &key, &cert).unwrap();
    }
}
