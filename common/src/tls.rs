//! mTLS for every hop (DESIGN.md §9): configs, identities, CRL reloads.
//!
//! A certificate names its holder in URI subject-alternative names written by
//! `rsnet-certs`:
//!
//! * `urn:rsnet:id:acme.p7`: the component ID (exactly one);
//! * `urn:rsnet:role:proxy`: `proxy`, `mlm`, `appserver` or `operator`;
//! * `urn:rsnet:scope:acme`: subtrees an MLM may relay for (default: its
//!   customer), or an operator may see and act on (default: all);
//! * `urn:rsnet:perm:send`: what an operator may do ([`Perm`]: `read`,
//!   `send`, `release`, `admin`; none listed: read only);
//! * `urn:rsnet:class:alarm`: a message class a proxy or MLM may send
//!   (none listed: every class); the protocol's own classes
//!   ([`PROTOCOL_CLASSES`]) are always allowed.
//!
//! [`Identity`] is read from the verified peer certificate and is the only
//! source of "who is this child" a hop trusts; [`Identity::may_send_as`] is the
//! anti-spoofing rule.
//!
//! The CRL is re-read when its file changes ([`ReloadingServerConfig`],
//! [`Revocations`]), without a restart: within one poll interval a revoked
//! child is refused on new connections by the handshake and on connections
//! it already holds at its next request ([`crate::server`] asks
//! [`Revocations`] on every request), and a child refuses a revoked parent
//! when it connects ([`crate::link`]; pooled connections are dropped when
//! the CRL changes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::id::ComponentId;

/// How often the CRL file's modification time is checked.
pub const CRL_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why TLS material could not be loaded or a peer not identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Rustls(String),
    /// The peer certificate does not carry a usable rsnet identity.
    #[error("certificate identity: {0}")]
    Identity(String),
}

/// What a certificate holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A proxy on a customer host.
    Proxy,
    /// A mid-level manager.
    Mlm,
    /// The appserver.
    Appserver,
    /// A person or service module using the operator API.
    Operator,
}

impl Role {
    /// Lowercase name, as in certificates and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Mlm => "mlm",
            Role::Appserver => "appserver",
            Role::Operator => "operator",
        }
    }
    /// The inverse of [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "proxy" => Role::Proxy,
            "mlm" => Role::Mlm,
            "appserver" => Role::Appserver,
            "operator" => Role::Operator,
            _ => return None,
        })
    }
}

/// URI SAN prefixes.
pub const SAN_ID: &str = "urn:rsnet:id:";
/// See [`SAN_ID`].
pub const SAN_ROLE: &str = "urn:rsnet:role:";
/// See [`SAN_ID`].
pub const SAN_SCOPE: &str = "urn:rsnet:scope:";

/// See [`SAN_ID`].
pub const SAN_PERM: &str = "urn:rsnet:perm:";
/// See [`SAN_ID`].
pub const SAN_CLASS: &str = "urn:rsnet:class:";

/// Classes every node sends whatever its certificate lists: heartbeats and
/// reports, control results, release reports, bulk requests, responses.
pub const PROTOCOL_CLASSES: [&str; 5] =
    ["infrastructure", "control", "release", "bulk", "response"];

/// What an operator certificate allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Perm {
    /// Read messages, components, deliveries, uploads, releases.
    Read,
    /// Send back-channel messages and control actions; manage groups.
    Send,
    /// Publish releases and resume, cancel or pin them.
    Release,
    /// Everything, and the audit log.
    Admin,
}

impl Perm {
    /// Every permission.
    pub const ALL: [Perm; 4] = [Perm::Read, Perm::Send, Perm::Release, Perm::Admin];
    /// Its name in certificates and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Send => "send",
            Perm::Release => "release",
            Perm::Admin => "admin",
        }
    }
    /// The inverse of [`Perm::as_str`].
    pub fn parse(s: &str) -> Option<Perm> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Who an authenticated peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The component ID.
    pub id: ComponentId,
    /// Its role.
    pub role: Role,
    /// Subtrees it may relay for (MLMs), or see and act on (operators;
    /// empty: all).
    pub scopes: Vec<ComponentId>,
    /// What it may do (operators; none listed: read only).
    pub perms: Vec<Perm>,
    /// The message classes it may send (none listed: every class).
    pub classes: Vec<String>,
}

impl Identity {
    /// Reads the identity from a DER certificate.
    ///
    /// # Errors
    /// [`TlsError::Identity`] if the certificate does not parse or lacks the SANs.
    pub fn from_der(der: &[u8]) -> Result<Identity, TlsError> {
        let bad = |s: String| TlsError::Identity(s);
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("no subjectAltName".into()))?;
        let (mut id, mut role, mut scopes, mut perms) = (None, None, Vec::new(), Vec::new());
        let mut classes = Vec::new();
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                if let Some(v) = u.strip_prefix(SAN_ID) {
                    id = Some(v.parse::<ComponentId>().map_err(|e| bad(e.to_string()))?);
                } else if let Some(v) = u.strip_prefix(SAN_ROLE) {
                    role = Some(Role::parse(v).ok_or_else(|| bad(format!("unknown role {v:?}")))?);
                } else if let Some(v) = u.strip_prefix(SAN_SCOPE) {
                    scopes.push(v.parse::<ComponentId>().map_err(|e| bad(e.to_string()))?);
                } else if let Some(v) = u.strip_prefix(SAN_CLASS) {
                    if !crate::model::valid_class(v) {
                        return Err(bad(format!("{v:?} is not a class label")));
                    }
                    classes.push(v.to_string());
                } else if let Some(v) = u.strip_prefix(SAN_PERM) {
                    perms.push(
                        Perm::parse(v).ok_or_else(|| bad(format!("unknown permission {v:?}")))?,
                    );
                }
            }
        }
        let id = id.ok_or_else(|| bad(format!("no {SAN_ID} URI")))?;
        let role = role.ok_or_else(|| bad(format!("no {SAN_ROLE} URI")))?;
        if role == Role::Mlm && scopes.is_empty() {
            scopes.push(
                id.customer()
                    .parse()
                    .map_err(|e: crate::id::IdError| bad(e.to_string()))?,
            );
        }
        Ok(Identity {
            id,
            role,
            scopes,
            perms,
            classes,
        })
    }

    /// May this peer send messages of `class`?
    pub fn may_send_class(&self, class: &str) -> bool {
        self.classes.is_empty()
            || PROTOCOL_CLASSES.contains(&class)
            || self.classes.iter().any(|c| c == class)
    }

    /// May this operator do what needs `p`? Every operator may read; `admin`
    /// may do everything.
    pub fn may(&self, p: Perm) -> bool {
        self.role == Role::Operator
            && (p == Perm::Read || self.perms.contains(&p) || self.perms.contains(&Perm::Admin))
    }

    /// May this operator see or act on component `id` (its customer
    /// scopes; none: every customer)?
    pub fn sees(&self, id: &ComponentId) -> bool {
        self.role == Role::Operator
            && (self.scopes.is_empty() || self.scopes.iter().any(|s| id.is_within(s)))
    }

    /// Anti-spoofing (DESIGN.md §9): may this peer send messages whose source is `origin`?
    /// A proxy may send for itself and below; an MLM also for its scopes.
    pub fn may_send_as(&self, origin: &ComponentId) -> bool {
        match self.role {
            Role::Proxy => origin.is_within(&self.id),
            Role::Mlm => {
                origin.is_within(&self.id) || self.scopes.iter().any(|s| origin.is_within(s))
            }
            Role::Appserver | Role::Operator => false,
        }
    }
}

/// Paths of a node's TLS material (config section `[tls]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The provider CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// The CRL (PEM); absent means no revocation checks. Re-read on change.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
        roots
            .add(c.map_err(|e| file_err(ca, e))?)
            .map_err(|e| file_err(ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_err(ca, "no certificate in file"));
    }
    Ok(Arc::new(roots))
}

fn chain(p: &TlsPaths) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_file_iter(&p.cert)
        .map_err(|e| file_err(&p.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&p.cert, e))?;
    if certs.is_empty() {
        return Err(file_err(&p.cert, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&p.key).map_err(|e| file_err(&p.key, e))?;
    Ok((certs, key))
}

/// This node's own identity, read from its certificate.
///
/// # Errors
/// If the certificate cannot be read or carries no identity.
pub fn own_identity(p: &TlsPaths) -> Result<Identity, TlsError> {
    let (certs, _) = chain(p)?;
    Identity::from_der(&certs[0])
}

/// A server config requiring client certificates from the CA and honouring the CRL.
///
/// # Errors
/// If any file is missing or invalid.
pub fn server_config(p: &TlsPaths, alpn_http1: bool) -> Result<ServerConfig, TlsError> {
    server_config_with(p, alpn_http1, false)
}

/// [`server_config`]; with `anonymous`, a client may also connect without
/// a certificate (a certificate it shows is still verified). The server
/// serves such a connection the enrollment path only (`server`).
///
/// # Errors
/// If any file is missing or invalid.
pub fn server_config_with(
    p: &TlsPaths,
    alpn_http1: bool,
    anonymous: bool,
) -> Result<ServerConfig, TlsError> {
    let roots = roots(&p.ca)?;
    let mut vb = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if anonymous {
        vb = vb.allow_unauthenticated();
    }
    if let Some(crl) = &p.crl {
        if crl.exists() {
            let der =
                CertificateRevocationListDer::from_pem_file(crl).map_err(|e| file_err(crl, e))?;
            vb = vb.with_crls([der]).only_check_end_entity_revocation();
        }
    }
    let verifier = vb.build().map_err(|e| TlsError::Rustls(e.to_string()))?;
    let (certs, key) = chain(p)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    if alpn_http1 {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(cfg)
}

/// A client config presenting this node's certificate and trusting only the CA.
///
/// # Errors
/// If any file is missing or invalid.
pub fn client_config(p: &TlsPaths) -> Result<ClientConfig, TlsError> {
    let roots = roots(&p.ca)?;
    let (certs, key) = chain(p)?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client config that trusts only the CA at `ca` and shows no
/// certificate: for a node that enrolls and has none yet.
///
/// # Errors
/// If the file is missing or invalid.
pub fn anonymous_client_config(ca: &Path) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Calls `changed` each time one of `files` gets a new modification time
/// (or appears, or goes), looked at every [`CRL_POLL_INTERVAL`], until it
/// returns `false` (its owner is gone). One watcher for every reloadable
/// file: TLS material, the CRL, a child's own certificate.
pub(crate) fn watch_files(files: Vec<PathBuf>, mut changed: impl FnMut() -> bool + Send + 'static) {
    let stamp = move || -> Vec<Option<SystemTime>> {
        files
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut seen = stamp();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CRL_POLL_INTERVAL).await;
            let now = stamp();
            if now != seen {
                seen = now;
                if !changed() {
                    return;
                }
            }
        }
    });
}

/// The serial numbers a CRL revokes, re-read when its file changes.
#[derive(Clone, Default)]
pub struct Revocations {
    inner: Arc<RwLock<(std::collections::HashSet<Vec<u8>>, u64)>>,
    /// Woken on every change of the list.
    changed: Arc<tokio::sync::Notify>,
}

/// The serial number of a DER certificate (`None` if it does not parse).
pub fn serial_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.raw_serial().to_vec())
}

fn read_crl(path: &Path) -> Result<std::collections::HashSet<Vec<u8>>, TlsError> {
    let der = CertificateRevocationListDer::from_pem_file(path).map_err(|e| file_err(path, e))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|e| file_err(path, format!("CRL does not parse: {e}")))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revocations(v{})", self.version())
    }
}

impl Revocations {
    /// What `crl` revokes (nothing if absent), re-read every
    /// [`CRL_POLL_INTERVAL`] when its file changed. A CRL that does not
    /// read keeps the previous list and logs why.
    pub fn watch(crl: Option<PathBuf>) -> Revocations {
        let r = Revocations::read(crl.as_deref());
        if let Some(path) = crl {
            let weak = Arc::downgrade(&r.inner);
            let changed = r.changed.clone();
            watch_files(vec![path.clone()], move || {
                let Some(inner) = weak.upgrade() else {
                    return false;
                };
                Revocations {
                    inner,
                    changed: changed.clone(),
                }
                .reload(&path);
                true
            });
        }
        r
    }

    /// What `crl` revokes now (nothing if absent or unreadable), not watched.
    fn read(crl: Option<&Path>) -> Revocations {
        let r = Revocations::default();
        if let Some(path) = crl.filter(|p| p.exists()) {
            r.reload(path);
        }
        r
    }

    /// Reads `path` again; a CRL that does not read keeps the previous list.
    fn reload(&self, path: &Path) {
        match read_crl(path) {
            Ok(set) => {
                tracing::info!(revoked = set.len(), "CRL read");
                self.set(set);
            }
            Err(e) => tracing::error!(error = %e, "CRL not read; keeping the previous list"),
        }
    }

    fn set(&self, set: std::collections::HashSet<Vec<u8>>) {
        {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            g.0 = set;
            g.1 += 1;
        }
        self.changed.notify_waiters();
    }

    /// Resolves at the next change of the list.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Resolves once the certificate with this serial is revoked (never,
    /// if it is not): costs nothing until the list changes.
    pub async fn until_revoked(&self, serial: &[u8]) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_revoked(serial) {
                return;
            }
            changed.await;
        }
    }

    /// True if the certificate with this serial is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.0.contains(serial)
    }

    /// Bumped on every change of the list.
    pub fn version(&self) -> u64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// A server config that rebuilds itself when the CRL (or cert) files change.
#[derive(Clone)]
pub struct ReloadingServerConfig {
    current: Arc<RwLock<Arc<ServerConfig>>>,
    revocations: Revocations,
    anonymous: bool,
}

impl ReloadingServerConfig {
    /// Loads the config and starts a task that reloads it when the files change.
    /// A reload that fails keeps the previous config and logs the error.
    ///
    /// # Errors
    /// If the initial load fails.
    pub fn start(p: TlsPaths) -> Result<Self, TlsError> {
        Self::start_with(p, false)
    }

    /// [`ReloadingServerConfig::start`]; with `anonymous`, clients without a
    /// certificate may connect for enrollment ([`server_config_with`]).
    ///
    /// # Errors
    /// If the initial load fails.
    pub fn start_with(p: TlsPaths, anonymous: bool) -> Result<Self, TlsError> {
        let revocations = Revocations::read(p.crl.as_deref());
        let current = Arc::new(RwLock::new(Arc::new(server_config_with(
            &p, true, anonymous,
        )?)));
        let (weak, revoked) = (Arc::downgrade(&current), revocations.clone());
        let files = [Some(&p.cert), Some(&p.key), p.crl.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        watch_files(files, move || {
            let Some(current) = weak.upgrade() else {
                return false;
            };
            // One pass for both: the handshake's verifier and the list asked
            // on every request of an established connection.
            if let Some(crl) = p.crl.as_deref().filter(|c| c.exists()) {
                revoked.reload(crl);
            }
            match server_config_with(&p, true, anonymous) {
                Ok(cfg) => {
                    if let Ok(mut g) = current.write() {
                        *g = Arc::new(cfg);
                    }
                    tracing::info!("TLS material reloaded (certificate or CRL changed)");
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous config")
                }
            }
            true
        });
        Ok(ReloadingServerConfig {
            current,
            revocations,
            anonymous,
        })
    }

    /// Are clients without a certificate let in (for enrollment only)?
    pub fn anonymous(&self) -> bool {
        self.anonymous
    }

    /// What the CRL revokes now, for checks on established connections.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The config to use for the next connection.
    pub fn get(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Counts one TLS handshake in `rsnet_tls_handshakes_total`: `side`
/// `server` (a child or operator connecting here) or `client` (this node
/// connecting to its parent), `result` `ok`, `failed` or `timeout`.
pub fn count_handshake(side: &'static str, result: &'static str) {
    handshake_counter(side, result).inc();
}

/// Registers every series of `rsnet_tls_handshakes_total` for `side`, so
/// that they show before the first handshake.
pub fn register_handshakes(side: &str) {
    for result in ["ok", "failed", "timeout"] {
        handshake_counter(side, result);
    }
}

/// The series of `rsnet_tls_handshakes_total` for `side` and `result`
/// (registered if new).
fn handshake_counter(side: &str, result: &str) -> crate::metrics::Counter {
    crate::metrics::process().counter_with(
        "rsnet_tls_handshakes_total",
        &[("side", side), ("result", result)],
        "TLS handshakes, by side (server: accepted here; client: to the parent) and result",
    )
}
