//! The uplink client: how a child reaches its parent.
//!
//! One [`Link`] per node holds the parent URLs (primary first, then
//! failovers), the mTLS client config, an optional HTTP forward proxy
//! (CONNECT; from config or `HTTPS_PROXY`/`NO_PROXY`), and a small pool of
//! idle HTTP/1.1 connections. [`Link::exchange`] sends one envelope and
//! returns the parent's decoded reply; it does not retry. Callers
//! ([`crate::forward`], the MLM relay) own the retry policy and use
//! [`Backoff`].
//!
//! After the handshake the parent's certificate must carry the `mlm` or
//! `appserver` role: a proxy certificate cannot pose as a parent.
//!
//! The link carries envelopes and nothing else: the back-channel state that
//! rides along (pending acks, the messages a reply brings down) belongs to
//! [`crate::backchannel::BackChannelClient`], through which every exchange
//! of a node goes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::envelope::{self, encoding, Decoded, EnvelopeWriter, EXCHANGE_PATH};
use crate::limits::DEFAULT_LINK_CONNECT_TIMEOUT;
use crate::tls::{Identity, Role};

/// A request body on the uplink: a whole envelope (the exchange's fast
/// path, no boxing), or a stream of any length (bulk transfers), which flows
/// chunk by chunk as it is produced, so memory stays bounded by the chunks
/// in flight.
pub type UplinkBody = Either<Full<Bytes>, StreamBody>;

/// A streamed request body.
pub type StreamBody = BoxBody<Bytes, std::io::Error>;

/// Idle connections kept per link.
const MAX_IDLE: usize = 8;
/// Largest CONNECT response head accepted from a forward proxy.
const MAX_PROXY_RESPONSE: usize = 8 * 1024;

/// What failed on the link. Every variant is worth retrying later except
/// [`LinkErrorKind::Refused`] for a 4xx, which says the request itself is bad.
#[derive(Debug, thiserror::Error)]
#[error("link to {parent}: {kind}")]
pub struct LinkError {
    /// The parent URL tried.
    pub parent: String,
    /// What happened.
    pub kind: LinkErrorKind,
}

/// See [`LinkError`].
#[derive(Debug, thiserror::Error)]
pub enum LinkErrorKind {
    /// TCP connect or the forward proxy failed.
    #[error("connect: {0}")]
    Connect(String),
    /// Connecting took longer than the connect timeout.
    #[error("connect timeout: {0:?}")]
    ConnectTimeout(Duration),
    /// TLS handshake failed or the parent's certificate is not a parent's.
    #[error("tls: {0}")]
    Tls(String),
    /// The exchange did not complete in time.
    #[error("exchange timeout: {0:?}")]
    Timeout(Duration),
    /// HTTP-level failure (connection closed mid-request, …).
    #[error("http: {0}")]
    Http(String),
    /// The parent answered with an HTTP error status.
    #[error("refused: HTTP {0}: {1}")]
    Refused(StatusCode, String),
    /// The reply was not a valid envelope.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// A compact envelope was refused by a parent that no longer says it
    /// reads the compact form (it was replaced by an older version): the
    /// same messages go again in the full form.
    #[error("parent no longer reads the compact form: HTTP {0}")]
    FormWithdrawn(StatusCode),
}

/// Every [`LinkErrorKind::label`], so that each series shows from the start.
const ERROR_KINDS: [&str; 8] = [
    "connect",
    "connect_timeout",
    "tls",
    "timeout",
    "http",
    "refused",
    "bad_reply",
    "form_withdrawn",
];

fn error_counter(kind: &str) -> crate::metrics::Counter {
    crate::metrics::process().counter_with(
        "rsnet_link_errors_total",
        &[("kind", kind)],
        "requests to the parent that failed, by kind",
    )
}

impl LinkErrorKind {
    /// The kind as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            LinkErrorKind::Connect(_) => "connect",
            LinkErrorKind::ConnectTimeout(_) => "connect_timeout",
            LinkErrorKind::Tls(_) => "tls",
            LinkErrorKind::Timeout(_) => "timeout",
            LinkErrorKind::Http(_) => "http",
            LinkErrorKind::Refused(..) => "refused",
            LinkErrorKind::BadReply(_) => "bad_reply",
            LinkErrorKind::FormWithdrawn(_) => "form_withdrawn",
        }
    }

    /// False if the request never reached a parent (connect, TLS, a
    /// timeout, a broken connection); true if a parent answered, however.
    pub fn reached_parent(&self) -> bool {
        !matches!(
            self,
            LinkErrorKind::Connect(_)
                | LinkErrorKind::ConnectTimeout(_)
                | LinkErrorKind::Tls(_)
                | LinkErrorKind::Timeout(_)
                | LinkErrorKind::Http(_)
        )
    }
}

impl LinkError {
    /// An error of the request to `parent`, counted in
    /// `rsnet_link_errors_total` by kind.
    fn new(parent: &str, kind: LinkErrorKind) -> LinkError {
        error_counter(kind.label()).inc();
        LinkError {
            parent: parent.to_string(),
            kind,
        }
    }

    /// True if the link was cut (connect, connect timeout, the exchange's
    /// timeout, a connection that broke), or the parent stopped reading the
    /// compact form: not an answer to the messages, so worth trying again
    /// soon, to use a healed link (or the full form) at once.
    pub fn is_cut(&self) -> bool {
        match &self.kind {
            LinkErrorKind::FormWithdrawn(_) => true,
            // A parent whose certificate is refused is not a cut link: it
            // is tried again as slowly as a refusing one.
            LinkErrorKind::Tls(_) => false,
            k => !k.reached_parent(),
        }
    }

    /// True if the parent refused this request as malformed (4xx other than
    /// 408/429): resending the same bytes would fail again.
    pub fn is_permanent(&self) -> bool {
        matches!(&self.kind, LinkErrorKind::Refused(s, _) if s.is_client_error() && *s != StatusCode::REQUEST_TIMEOUT && *s != StatusCode::TOO_MANY_REQUESTS)
    }
}

/// A forward proxy to tunnel through.
#[derive(Debug, Clone)]
pub struct ForwardProxy {
    /// `host:port` of the proxy.
    pub authority: String,
    /// Hosts not to proxy (`NO_PROXY`): exact names, `.suffix`, or `*`.
    pub no_proxy: Vec<String>,
}

impl ForwardProxy {
    /// Parses `http://host:port` (as in `HTTPS_PROXY`).
    pub fn parse(url: &str, no_proxy: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("proxy URL {url:?}: {e}"))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(format!(
                "proxy URL {url:?}: only http:// proxies are supported"
            ));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| format!("proxy URL {url:?} has no host"))?;
        let authority = format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(3128));
        let no_proxy = no_proxy
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(ForwardProxy {
            authority,
            no_proxy,
        })
    }

    /// From `HTTPS_PROXY`/`https_proxy` and `NO_PROXY`/`no_proxy`, if set.
    pub fn from_env() -> Option<Result<Self, String>> {
        let url = std::env::var("HTTPS_PROXY")
            .or_else(|_| std::env::var("https_proxy"))
            .ok()?;
        let np = std::env::var("NO_PROXY")
            .or_else(|_| std::env::var("no_proxy"))
            .unwrap_or_default();
        (!url.is_empty()).then(|| Self::parse(&url, &np))
    }

    fn bypass(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.no_proxy
            .iter()
            .any(|n| n == "*" || *n == host || (n.starts_with('.') && host.ends_with(n.as_str())))
    }
}

struct Parent {
    url: String,
    host: String,
    port: u16,
    /// It said (on its last reply) that it reads zstd-compressed requests.
    takes_zstd: AtomicBool,
    /// It said (on its last answer) that it reads the compact form.
    takes_compact: AtomicBool,
}

/// How long a parent's error body may take to arrive.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// The uplink: parents, TLS, proxy and a connection pool.
pub struct Link {
    parents: Vec<Parent>,
    current: AtomicUsize,
    /// Replaced when the node's certificate is renewed ([`Link::reload_tls`]).
    tls: std::sync::RwLock<tokio_rustls::TlsConnector>,
    proxy: Option<ForwardProxy>,
    /// Idle connections, each with the TLS generation it was made under.
    idle: Mutex<Vec<(SendRequest<UplinkBody>, u64)>>,
    /// Bumped when the own certificate is renewed: older connections are
    /// not pooled again.
    tls_generation: std::sync::atomic::AtomicU64,
    connect_timeout: Duration,
    /// The node's CRL: a revoked parent is refused when connecting, and
    /// pooled connections are dropped when the list changes.
    revocations: std::sync::OnceLock<crate::tls::Revocations>,
    pool_version: std::sync::atomic::AtomicU64,
    /// This node: an MLM parent's scopes must cover it.
    me: std::sync::OnceLock<crate::id::ComponentId>,
    /// Exchanges travel zstd-compressed where the parent takes it.
    compress: AtomicBool,
    /// Whether the parent was reached on the last try ([`Link::reach`]).
    reach: tokio::sync::watch::Sender<Reach>,
}

/// Whether the node reaches its parent, as its last request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The last request was answered (whatever the answer).
    Up,
    /// Requests have failed to reach any parent (connect, TLS, timeout, a
    /// broken connection) since `since` (`at`, as wall-clock time).
    Down {
        /// When the first failed.
        since: std::time::Instant,
        /// The same moment, for reports.
        at: crate::model::Timestamp,
    },
}

impl Link {
    /// A link to `parents` (in failover order).
    ///
    /// # Errors
    /// If a URL is not `https://host[:port]`.
    pub fn new(
        parents: &[String],
        tls: rustls::ClientConfig,
        proxy: Option<ForwardProxy>,
    ) -> Result<Arc<Link>, String> {
        if parents.is_empty() {
            return Err("no parent URL configured".into());
        }
        for kind in ERROR_KINDS {
            error_counter(kind);
        }
        crate::tls::register_handshakes("client");
        let parents = parents
            .iter()
            .map(|u| {
                let uri: Uri = u.parse().map_err(|e| format!("parent URL {u:?}: {e}"))?;
                if uri.scheme_str() != Some("https") {
                    return Err(format!("parent URL {u:?} must be https://"));
                }
                let host = uri
                    .host()
                    .ok_or_else(|| format!("parent URL {u:?} has no host"))?;
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                Ok(Parent {
                    url: u.clone(),
                    host,
                    port: uri.port_u16().unwrap_or(443),
                    takes_zstd: AtomicBool::new(false),
                    takes_compact: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Arc::new(Link {
            parents,
            current: AtomicUsize::new(0),
            tls: std::sync::RwLock::new(tokio_rustls::TlsConnector::from(Arc::new(tls))),
            proxy,
            idle: Mutex::new(Vec::new()),
            tls_generation: std::sync::atomic::AtomicU64::new(0),
            connect_timeout: DEFAULT_LINK_CONNECT_TIMEOUT,
            revocations: std::sync::OnceLock::new(),
            pool_version: std::sync::atomic::AtomicU64::new(0),
            me: std::sync::OnceLock::new(),
            compress: AtomicBool::new(false),
            reach: tokio::sync::watch::Sender::new(Reach::Up),
        }))
    }

    /// Follows whether the parent is reached: [`Reach::Down`] from the
    /// first request that could not reach it, [`Reach::Up`] again at the
    /// first answer.
    pub fn reach(&self) -> tokio::sync::watch::Receiver<Reach> {
        self.reach.subscribe()
    }

    /// Notes what a request found: `kind` if it failed, else an answer.
    /// Called for every exchange: a check under the read lock when nothing
    /// changes.
    fn note(&self, kind: Option<&LinkErrorKind>) {
        let down = kind.is_some_and(|k| !k.reached_parent());
        if matches!(*self.reach.borrow(), Reach::Down { .. }) == down {
            return;
        }
        self.reach.send_if_modified(|r| match (*r, down) {
            (Reach::Up, true) => {
                *r = Reach::Down {
                    since: std::time::Instant::now(),
                    at: crate::model::Timestamp::now(),
                };
                true
            }
            (Reach::Down { .. }, false) => {
                *r = Reach::Up;
                true
            }
            _ => false,
        });
    }

    /// Compresses exchanges from now on (`true`): replies are asked for
    /// compressed, and requests are sent compressed to a parent once it
    /// has said it reads them ([`crate::envelope::encoding`]). Off by default.
    pub fn set_compress(&self, on: bool) {
        self.compress.store(on, Ordering::Relaxed);
    }

    /// The form to write the next envelope in: compact once the parent in
    /// use has said it reads it ([`crate::envelope::Form`]).
    pub fn form(&self) -> envelope::Form {
        let p = &self.parents[self.current.load(Ordering::Relaxed) % self.parents.len()];
        if p.takes_compact.load(Ordering::Relaxed) {
            envelope::Form::Compact
        } else {
            envelope::Form::Full
        }
    }

    /// This node is `me`: from now on an MLM is accepted as its parent
    /// only if the MLM's certificate scopes cover `me` (set once).
    pub fn set_me(&self, me: crate::id::ComponentId) {
        let _ = self.me.set(me);
    }

    /// Rebuilds the client TLS config from `paths` whenever its certificate
    /// or key file changes (looked at every [`crate::tls::CRL_POLL_INTERVAL`]),
    /// so a renewed certificate is used without a restart: new connections
    /// present it, pooled ones are dropped. A config that does not load
    /// keeps the previous one and logs why.
    pub fn reload_tls(self: &Arc<Self>, paths: crate::tls::TlsPaths) {
        let weak = Arc::downgrade(self);
        let files = vec![paths.cert.clone(), paths.key.clone()];
        crate::tls::watch_files(files, move || {
            let Some(link) = weak.upgrade() else {
                return false;
            };
            match crate::tls::client_config(&paths) {
                Ok(cfg) => {
                    *link.tls.write().unwrap_or_else(|p| p.into_inner()) =
                        tokio_rustls::TlsConnector::from(Arc::new(cfg));
                    link.tls_generation.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut idle) = link.idle.lock() {
                        idle.clear();
                    }
                    tracing::info!("own certificate renewed: new connections use it");
                }
                Err(e) => {
                    tracing::error!(error = %e, "renewed certificate not loaded; keeping the previous one")
                }
            }
            true
        });
    }

    /// Checks parents against `r` from now on (set once).
    pub fn set_revocations(&self, r: crate::tls::Revocations) {
        let _ = self.revocations.set(r);
    }

    /// The parent URL in use.
    pub fn current_parent(&self) -> &str {
        &self.parents[self.current.load(Ordering::Relaxed) % self.parents.len()].url
    }

    fn fail_over(&self, from: usize) {
        if self.parents.len() > 1 {
            let _ = self.current.compare_exchange(
                from,
                (from + 1) % self.parents.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if let Ok(mut idle) = self.idle.lock() {
                idle.clear();
            }
            tracing::warn!(next = %self.current_parent(), "failing over to the next parent");
        }
    }

    async fn connect(&self, p: &Parent) -> Result<SendRequest<UplinkBody>, LinkErrorKind> {
        let via = self.proxy.as_ref().filter(|x| !x.bypass(&p.host));
        let target = if p.host.contains(':') {
            format!("[{}]:{}", p.host, p.port)
        } else {
            format!("{}:{}", p.host, p.port)
        };
        let connect = async {
            let addr = via
                .map(|x| x.authority.clone())
                .unwrap_or_else(|| target.clone());
            let mut tcp = TcpStream::connect(&addr)
                .await
                .map_err(|e| LinkErrorKind::Connect(format!("{addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            if via.is_some() {
                tunnel(&mut tcp, &target).await?;
            }
            Ok::<_, LinkErrorKind>(tcp)
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| LinkErrorKind::ConnectTimeout(self.connect_timeout))??;
        let name =
            ServerName::try_from(p.host.clone()).map_err(|e| LinkErrorKind::Tls(e.to_string()))?;
        let connector = self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp)).await;
        crate::tls::count_handshake(
            "client",
            match &tls {
                Ok(Ok(_)) => "ok",
                Ok(Err(_)) => "failed",
                Err(_) => "timeout",
            },
        );
        let tls = tls
            .map_err(|_| LinkErrorKind::ConnectTimeout(self.connect_timeout))?
            .map_err(|e| LinkErrorKind::Tls(e.to_string()))?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| LinkErrorKind::Tls("parent sent no certificate".into()))?;
        let who = Identity::from_der(cert).map_err(|e| LinkErrorKind::Tls(e.to_string()))?;
        if let Some(r) = self.revocations.get() {
            if crate::tls::serial_of(cert).is_some_and(|s| r.is_revoked(&s)) {
                return Err(LinkErrorKind::Tls(format!(
                    "parent {}'s certificate is revoked (CRL)",
                    who.id
                )));
            }
        }
        if !matches!(who.role, Role::Mlm | Role::Appserver) {
            return Err(LinkErrorKind::Tls(format!(
                "parent {} has role {}, not mlm or appserver",
                who.id,
                who.role.as_str()
            )));
        }
        if let Some(me) = self.me.get() {
            if who.role == Role::Mlm && !who.may_send_as(me) {
                return Err(LinkErrorKind::Tls(format!(
                    "parent {}'s scopes ({}) do not cover {me}",
                    who.id,
                    who.scopes
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| LinkErrorKind::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// Sends one envelope and returns the parent's decoded reply (its
    /// answers and any back-channel messages), within `timeout` (which must
    /// cover any long-poll wait the envelope asks for).
    ///
    /// # Errors
    /// [`LinkError`]; a transport error also moves to the next parent.
    ///
    /// # Cancel safety
    /// If dropped, the request may or may not have reached the parent; the
    /// sender must treat its messages as not acknowledged (and resend them).
    pub async fn exchange(
        &self,
        envelope: EnvelopeWriter,
        timeout: Duration,
    ) -> Result<Decoded, LinkError> {
        let form = envelope.form();
        let carries = !envelope.is_empty();
        let (content_type, body) = envelope.finish();
        let idx = self.current.load(Ordering::Relaxed) % self.parents.len();
        let p = &self.parents[idx];
        let err = |kind| {
            self.note(Some(&kind));
            LinkError::new(&p.url, kind)
        };
        match tokio::time::timeout(
            timeout,
            self.exchange_on(p, form, carries, &content_type, body),
        )
        .await
        {
            Err(_) => Err(err(LinkErrorKind::Timeout(timeout))),
            Ok(Err(kind)) => {
                if !matches!(
                    kind,
                    LinkErrorKind::Refused(..)
                        | LinkErrorKind::BadReply(_)
                        | LinkErrorKind::FormWithdrawn(_)
                ) {
                    self.fail_over(idx);
                }
                Err(err(kind))
            }
            Ok(Ok(d)) => {
                self.note(None);
                Ok(d)
            }
        }
    }

    /// Sends one request with a streamed body and the given `headers` to
    /// the parent in use (a fresh connection, not the exchange pool) and
    /// returns its response as
    /// it arrives: the body of either side may be of any length and is
    /// never held whole. `connect_timeout` bounds connecting; the transfer
    /// itself is bounded by the body's own pace (the receiver's idle
    /// timeout, [`crate::http_util::stream_body`]) and the caller.
    ///
    /// # Errors
    /// [`LinkError`]; a transport error also moves to the next parent. A
    /// failed request cannot be replayed (the body was consumed): the
    /// caller resumes it.
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: StreamBody,
        connect_timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, LinkError> {
        let idx = self.current.load(Ordering::Relaxed) % self.parents.len();
        let p = &self.parents[idx];
        let err = |kind| {
            self.note(Some(&kind));
            LinkError::new(&p.url, kind)
        };
        let connect = async {
            let mut send = self.connect(p).await?;
            send.ready()
                .await
                .map_err(|e| LinkErrorKind::Http(e.to_string()))?;
            Ok::<_, LinkErrorKind>(send)
        };
        let mut send = match tokio::time::timeout(connect_timeout, connect).await {
            Err(_) => return Err(err(LinkErrorKind::ConnectTimeout(connect_timeout))),
            Ok(Err(kind)) => {
                self.fail_over(idx);
                return Err(err(kind));
            }
            Ok(Ok(s)) => {
                self.note(None);
                s
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, format!("{}:{}", p.host, p.port));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Either::Right(body))
            .map_err(|e| err(LinkErrorKind::Http(e.to_string())))?;
        send.send_request(req)
            .await
            .map_err(|e| err(LinkErrorKind::Http(e.to_string())))
    }

    async fn exchange_on(
        &self,
        p: &Parent,
        form: envelope::Form,
        carries: bool,
        content_type: &str,
        body: Bytes,
    ) -> Result<Decoded, LinkErrorKind> {
        if let Some(r) = self.revocations.get() {
            // The CRL changed: connections made before are checked again.
            let v = r.version();
            if self.pool_version.swap(v, Ordering::Relaxed) != v {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.clear();
                }
            }
        }
        let current = self.tls_generation.load(Ordering::Relaxed);
        let pooled = self.idle.lock().ok().and_then(|mut v| {
            while let Some((s, g)) = v.pop() {
                if !s.is_closed() && g == current {
                    return Some((s, g));
                }
            }
            None
        });
        let (mut send, generation) = match pooled {
            Some(s) => s,
            None => (self.connect(p).await?, current),
        };
        let compress = self.compress.load(Ordering::Relaxed);
        let mut zstd = compress && p.takes_zstd.load(Ordering::Relaxed);
        let resp = loop {
            send.ready()
                .await
                .map_err(|e| LinkErrorKind::Http(e.to_string()))?;
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(EXCHANGE_PATH)
                .header(header::HOST, format!("{}:{}", p.host, p.port))
                .header(header::CONTENT_TYPE, content_type);
            if compress {
                req = req.header(header::ACCEPT_ENCODING, encoding::ZSTD);
            }
            // Its answers may then say "the rest accepted" rather than list
            // every ID (only a POST with messages has answers to shorten).
            if carries {
                req = req.header(envelope::ACCEPT_FORM, envelope::COMPACT);
            }
            let sent = match zstd.then(|| encoding::compressed(&body)).flatten() {
                Some(z) => {
                    req = req
                        .header(header::CONTENT_ENCODING, encoding::ZSTD)
                        .header(encoding::DECODED_LENGTH, body.len());
                    z
                }
                _ => {
                    zstd = false;
                    body.clone()
                }
            };
            let req = req
                .body(Either::Left(Full::new(sent)))
                .map_err(|e| LinkErrorKind::Http(e.to_string()))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| LinkErrorKind::Http(e.to_string()))?;
            let st = resp.status();
            if compress && (st.is_success() || st == http::StatusCode::UNSUPPORTED_MEDIA_TYPE) {
                p.takes_zstd
                    .store(encoding::accepts_zstd(resp.headers()), Ordering::Relaxed);
            }
            if zstd && st == http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
                // It no longer reads them: once more, as it is, on the same
                // connection (its error body read first, bounded).
                let _ = crate::http_util::error_text(resp.into_body(), ERROR_BODY_WAIT).await;
                zstd = false;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        let compact = envelope::accepts_compact(resp.headers());
        p.takes_compact.store(compact, Ordering::Relaxed);
        if form == envelope::Form::Compact && !compact && status.is_client_error() {
            let _ = crate::http_util::error_text(resp.into_body(), ERROR_BODY_WAIT).await;
            return Err(LinkErrorKind::FormWithdrawn(status));
        }
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !status.is_success() {
            // Bounded in size and time: a parent's error body is peer input.
            let reason = crate::http_util::error_text(resp.into_body(), ERROR_BODY_WAIT).await;
            return Err(LinkErrorKind::Refused(status, reason));
        }
        let coding = encoding::Coding::of(resp.headers())
            .map_err(|e| LinkErrorKind::BadReply(e.to_string()))?;
        let decoded = envelope::decode_coded(
            &ct,
            coding,
            crate::limits::MAX_ENVELOPE_BYTES,
            resp.into_body().into_data_stream(),
        )
        .await
        .map_err(|e| LinkErrorKind::BadReply(e.to_string()))?;
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE && generation == self.tls_generation.load(Ordering::Relaxed) {
                idle.push((send, generation));
            }
        }
        Ok(decoded)
    }
}

/// Opens an HTTP CONNECT tunnel to `target` through an already connected proxy.
async fn tunnel(tcp: &mut TcpStream, target: &str) -> Result<(), LinkErrorKind> {
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| LinkErrorKind::Connect(format!("proxy: {e}")))?;
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Read byte by byte up to the blank line, so no tunnelled byte is consumed.
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() >= MAX_PROXY_RESPONSE {
            return Err(LinkErrorKind::Connect(
                "proxy: response head too large".into(),
            ));
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| LinkErrorKind::Connect(format!("proxy: {e}")))?;
        if n == 0 {
            return Err(LinkErrorKind::Connect(
                "proxy closed the connection during CONNECT".into(),
            ));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf);
    let status_line = head.lines().next().unwrap_or("");
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(LinkErrorKind::Connect(format!(
            "proxy refused CONNECT {target}: {status_line}"
        )));
    }
    Ok(())
}

/// Longest wait before trying a cut link again ([`LinkError::is_cut`]):
/// a link that heals is used within this.
pub const CUT_RETRY_MAX: Duration = Duration::from_secs(3);
/// Longest wait before asking a parent again that refused (an HTTP error
/// status, a certificate it would not take, a reply that did not parse).
pub const REFUSED_RETRY_MAX: Duration = Duration::from_secs(30);

/// How a sender waits after a link error: a cut link is tried again soon
/// (100 ms doubling to [`CUT_RETRY_MAX`]), so an outage costs no more than
/// a few seconds once it is over; a parent that refused is asked again more
/// slowly (1 s doubling to [`REFUSED_RETRY_MAX`]), so a busy or throttling
/// parent is not pressed. Each has its own count of failures in a row.
#[derive(Debug, Clone)]
pub struct Retry {
    cut: Backoff,
    refused: Backoff,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            cut: Backoff::new(Duration::from_millis(100), CUT_RETRY_MAX),
            refused: Backoff::new(Duration::from_secs(1), REFUSED_RETRY_MAX),
        }
    }
}

impl Retry {
    /// The wait after `e`.
    pub fn next_delay(&mut self, e: &LinkError) -> Duration {
        if e.is_cut() {
            self.cut.next_delay()
        } else {
            self.refused.next_delay()
        }
    }
    /// Back to the first delays after a success.
    pub fn reset(&mut self) {
        self.cut.reset();
        self.refused.reset();
    }
}

/// Exponential backoff with full jitter, for retry loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never exceeds `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }
    /// The next delay: uniformly random in [d/2, d] where d = min(max, base·2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        half + Duration::from_micros(fastrand::u64(0..=half.as_micros() as u64))
    }
    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_link_is_retried_within_seconds_and_a_refusal_more_slowly() {
        let err = |kind| LinkError {
            parent: "https://mlm:8443".into(),
            kind,
        };
        let mut r = Retry::default();
        let cut = err(LinkErrorKind::Connect("refused".into()));
        let refused = err(LinkErrorKind::Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy".into(),
        ));
        // However long the outage, the next try is at most CUT_RETRY_MAX away.
        let waits: Vec<_> = (0..50).map(|_| r.next_delay(&cut)).collect();
        assert!(waits.iter().all(|d| *d <= CUT_RETRY_MAX), "{waits:?}");
        assert!(waits[0] <= Duration::from_millis(100));
        // A refusal waits longer, from its own count.
        let first = r.next_delay(&refused);
        assert!(
            first >= Duration::from_millis(500) && first <= Duration::from_secs(1),
            "{first:?}"
        );
        let late: Vec<_> = (0..20).map(|_| r.next_delay(&refused)).collect();
        assert!(late.iter().all(|d| *d <= REFUSED_RETRY_MAX));
        assert!(late.last().is_some_and(|d| *d > CUT_RETRY_MAX), "{late:?}");
        r.reset();
        assert!(r.next_delay(&cut) <= Duration::from_millis(100));
        for k in [
            LinkErrorKind::ConnectTimeout(Duration::from_secs(5)),
            LinkErrorKind::Timeout(Duration::from_secs(30)),
            LinkErrorKind::Http("connection reset".into()),
        ] {
            assert!(err(k).is_cut());
        }
        for k in [
            LinkErrorKind::Tls("revoked".into()),
            LinkErrorKind::BadReply("x".into()),
            LinkErrorKind::Refused(StatusCode::FORBIDDEN, "revoked".into()),
        ] {
            assert!(!err(k).is_cut());
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[7] >= Duration::from_secs(1) && d[7] <= Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn proxy_env_parsing() {
        let p = ForwardProxy::parse("http://squid.acme:3128", "localhost,.internal").unwrap();
        assert_eq!(p.authority, "squid.acme:3128");
        assert!(p.bypass("localhost"));
        assert!(p.bypass("mlm.internal"));
        assert!(!p.bypass("mlm.provider.example"));
        assert!(ForwardProxy::parse("https://x", "").is_err());
    }
}
