//! The accept loop every node runs: TCP, optional mTLS, HTTP/1.1 (hyper).
//!
//! Each accepted connection gets a [`Peer`] (address and, under mTLS, the
//! verified [`Identity`]) that is handed to every request on it; handlers
//! never look at certificates themselves. Every request is checked against
//! the CRL as it is now, and one in progress ends when its peer is revoked. Slow peers are bounded here:
//! the TLS handshake by [`HANDSHAKE_TIMEOUT`], request heads by
//! [`HEADER_READ_TIMEOUT`], and the number of open connections by a semaphore.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::http_util::Body;
use crate::limits::{HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT};
use crate::tls::{Identity, ReloadingServerConfig};

/// Default cap on open connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// The verified identity (mTLS listeners only).
    pub identity: Option<Identity>,
    /// Its certificate's serial number and the CRL's list, to refuse it on
    /// this connection once it is revoked (mTLS listeners only).
    pub revocation: Option<(Vec<u8>, crate::tls::Revocations)>,
    /// Connected over TLS without a client certificate (a listener that
    /// lets nodes enroll): only [`crate::enroll::ENROLL_PATH`] is served.
    pub anonymous: bool,
}

impl Peer {
    /// True if the peer's certificate has been revoked since it connected.
    pub fn is_revoked(&self) -> bool {
        self.revocation
            .as_ref()
            .is_some_and(|(serial, r)| r.is_revoked(serial))
    }

    /// Resolves once the peer's certificate is revoked (never, without one).
    pub async fn until_revoked(&self) {
        match &self.revocation {
            Some((serial, r)) => r.until_revoked(serial).await,
            None => std::future::pending().await,
        }
    }
}

/// The answer to a revoked peer: 403, and the connection closed.
pub(crate) fn revoked_response() -> Response<Body> {
    let mut r = crate::http_util::error(http::StatusCode::FORBIDDEN, "certificate revoked");
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

/// A signal that tells servers and loops to stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side of [`Shutdown`].
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// A new pair.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }
    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
    /// Resolves when triggered.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

impl ShutdownTrigger {
    /// Triggers shutdown.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

/// Binds a listener; `addr` may use port 0.
///
/// # Errors
/// If the address cannot be bound.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))
}

/// Serves HTTP/1.1 on `listener` until shutdown; with `tls`, requires a
/// client certificate and resolves each peer's identity. At most
/// `max_connections` at once (no limit per peer: [`serve_with`]).
pub fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<ReloadingServerConfig>,
    max_connections: usize,
    handler: F,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Request<Incoming>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let limits = ConnLimits {
        max_connections,
        per_peer: max_connections,
    };
    serve_with(listener, tls, limits, handler, shutdown)
}

/// Caps on a listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at once.
    pub max_connections: usize,
    /// Open connections at once from one peer identity (TLS listeners):
    /// one leaked key cannot take every slot.
    pub per_peer: usize,
}

/// Counts a peer identity's open connections; one less on drop.
struct PeerSlot {
    peers: Arc<std::sync::Mutex<std::collections::HashMap<Option<crate::id::ComponentId>, usize>>>,
    id: Option<crate::id::ComponentId>,
}

impl PeerSlot {
    fn take(
        peers: &Arc<
            std::sync::Mutex<std::collections::HashMap<Option<crate::id::ComponentId>, usize>>,
        >,
        id: &Option<crate::id::ComponentId>,
        max: usize,
    ) -> Option<PeerSlot> {
        let mut m = peers.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(id.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            id: id.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

/// [`serve`] with a cap per peer identity too.
pub fn serve_with<F, Fut>(
    listener: TcpListener,
    tls: Option<ReloadingServerConfig>,
    limits: ConnLimits,
    handler: F,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Request<Incoming>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_inner(listener, tls, limits, handler, None, shutdown)
}

/// [`serve_with`] for a listener that children connect to: their exchange
/// POSTs at `path` are answered by `lean` in the lean HTTP/1.1 loop
/// ([`crate::lean_h1`]), which holds far less per connection while a
/// long-poll waits; every other request goes to `handler` as before.
pub fn serve_children<F, Fut>(
    listener: TcpListener,
    tls: ReloadingServerConfig,
    limits: ConnLimits,
    handler: F,
    lean: (&'static str, crate::lean_h1::LeanHandler),
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Request<Incoming>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_inner(listener, Some(tls), limits, handler, Some(lean), shutdown)
}

fn serve_inner<F, Fut>(
    listener: TcpListener,
    tls: Option<ReloadingServerConfig>,
    limits: ConnLimits,
    handler: F,
    lean: Option<(&'static str, crate::lean_h1::LeanHandler)>,
    mut shutdown: Shutdown,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Request<Incoming>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    if tls.is_some() {
        crate::tls::register_handshakes("server");
    }
    let max_connections = limits.max_connections;
    let per_peer = limits.per_peer.max(1);
    let peers = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.wait() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%addr, max_connections, "connection limit reached; dropping connection");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let handler = handler.clone();
            let lean = lean.clone();
            let peers = peers.clone();
            let revocations = tls.as_ref().map(|t| t.revocations().clone());
            let anonymous = tls.as_ref().is_some_and(|t| t.anonymous());
            let tls = tls.as_ref().map(|t| t.get());
            tokio::spawn(async move {
                let _permit = permit;
                match tls {
                    None => {
                        serve_conn(
                            TokioIo::new(tcp),
                            Arc::new(Peer {
                                addr,
                                identity: None,
                                revocation: None,
                                anonymous: false,
                            }),
                            handler,
                        )
                        .await
                    }
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        let stream = match tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(s)) => {
                                crate::tls::count_handshake("server", "ok");
                                s
                            }
                            Ok(Err(e)) => {
                                crate::tls::count_handshake("server", "failed");
                                tracing::info!(%addr, error = %e, "TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                crate::tls::count_handshake("server", "timeout");
                                tracing::info!(%addr, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
                                return;
                            }
                        };
                        let cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .cloned();
                        let serial = cert.as_ref().and_then(|c| crate::tls::serial_of(c));
                        let identity = cert.as_ref().map(|c| Identity::from_der(c));
                        let identity = match identity {
                            Some(Ok(i)) => Some(i),
                            Some(Err(e)) => {
                                tracing::info!(%addr, error = %e, "peer certificate has no rsnet identity");
                                return;
                            }
                            // Only where the config lets clients in without one.
                            None if anonymous => None,
                            None => return,
                        };
                        // Clients without a certificate share one peer's cap.
                        let key = identity.as_ref().map(|i| i.id.clone());
                        let Some(_slot) = PeerSlot::take(&peers, &key, per_peer) else {
                            tracing::warn!(%addr, peer = ?key, per_peer, "connection limit per peer reached; dropping connection");
                            return;
                        };
                        let peer = Arc::new(Peer {
                            addr,
                            anonymous: identity.is_none(),
                            identity,
                            revocation: serial.zip(revocations),
                        });
                        match lean {
                            Some((path, lean)) => {
                                let p = peer.clone();
                                crate::lean_h1::serve(stream, peer, path, lean, |rest| {
                                    serve_conn(TokioIo::new(rest), p, handler)
                                })
                                .await
                            }
                            None => serve_conn(TokioIo::new(stream), peer, handler).await,
                        }
                    }
                }
            });
        }
    })
}

async fn serve_conn<I, F, Fut>(io: I, peer: Arc<Peer>, handler: F)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = service_fn(move |req| {
        // Every request on an established connection is checked against the
        // CRL as it is now: a revoked peer is refused and the connection closed.
        let revoked = peer.is_revoked();
        // A client without a certificate may enroll, and do nothing else.
        let stranger = peer.anonymous && req.uri().path() != crate::enroll::ENROLL_PATH;
        let fut = (!revoked && !stranger).then(|| handler(req, peer.clone()));
        let who = peer.identity.as_ref().map(|i| i.id.to_string());
        let peer = peer.clone();
        async move {
            if stranger {
                let mut r = crate::http_util::error(
                    http::StatusCode::FORBIDDEN,
                    "a client certificate is needed (without one, only enrollment is served)",
                );
                r.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return Ok::<_, std::convert::Infallible>(r);
            }
            let Some(fut) = fut else {
                tracing::warn!(peer = ?who, "request from a revoked certificate refused; connection closed");
                return Ok::<_, std::convert::Infallible>(revoked_response());
            };
            // A request in progress (a held long-poll, an upload streaming
            // in) ends when its peer is revoked, not when it is done.
            tokio::select! {
                r = fut => Ok::<_, std::convert::Infallible>(r),
                _ = peer.until_revoked() => {
                    tracing::warn!(peer = ?who, "certificate revoked during a request; request ended, connection closed");
                    Ok(revoked_response())
                }
            }
        }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, svc)
        .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A [`Shutdown`] triggered by SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> Shutdown {
    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        trigger.trigger();
        // Keep the trigger alive so receivers don't see a closed channel.
        std::future::pending::<()>().await;
    });
    shutdown
}

/// Raises the soft limit on open files to the hard one: a parent holds a
/// socket per child (`max_connections` defaults to 20,000), and the
/// common soft default of 1,024 would make `accept` fail for everyone
/// long before the connection caps apply.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        let from = l.current;
        l.current = l.maximum;
        match setrlimit(Resource::Nofile, l) {
            Ok(()) => tracing::debug!(?from, to = ?l.current, "open files limit raised"),
            Err(e) => tracing::warn!(error = %e, "open files limit not raised"),
        }
    }
}

/// The body of every daemon's `main`: logging, config, signals, run.
/// Exits 2 for a config error, 1 for a start-up or run failure, 0 after a
/// clean shutdown; errors are printed as `NAME: error`.
pub async fn daemon_main<C, Fut>(
    name: &str,
    config: &std::path::Path,
    load: impl FnOnce(&std::path::Path) -> Result<C, crate::config::ConfigError>,
    run: impl FnOnce(C, Shutdown) -> Fut,
) -> std::process::ExitCode
where
    Fut: Future<Output = crate::Result<()>>,
{
    crate::init_logging();
    raise_open_files_limit();
    let cfg = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(cfg, shutdown_on_signals()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
