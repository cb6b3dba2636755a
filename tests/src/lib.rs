//! Shared helpers of the end-to-end suite (`tests/e2e.rs`).
//!
//! The tree itself comes from `rsnet_demo::Tree`, so the tests start the
//! same processes, certificates and configs as the demo.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A memory field of process `pid` (`"self"` for this one) in bytes:
/// `VmRSS` (resident now) or `VmHWM` (resident at its peak); 0 once it is
/// gone.
pub fn memory_bytes(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A fresh directory under the system temp dir.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rsnet-e2e-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP forward proxy for tests: answers `CONNECT host:port` and
/// splices bytes both ways. It counts the tunnels it opened and the bytes
/// it carried, and can play a broken or a slow network:
///
/// * in black-hole mode every byte from the parent to the child (or,
///   upward, from the child to the parent) is dropped, and leaving that
///   mode cuts every tunnel, as a network that recovers would;
/// * [`ConnectProxy::down`] cuts every tunnel and refuses new ones;
/// * [`ConnectProxy::start_wan`] makes it a WAN link: every tunnel shares
///   one bandwidth per direction, and each byte arrives a fixed delay after
///   its turn on the wire (a user-space stand-in for netem, which this
///   kernel lacks).
pub struct ConnectProxy {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Tunnels opened so far.
    pub tunnels: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes carried toward the parents (TLS records included; the
    /// CONNECT exchange itself not).
    pub bytes_up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bytes carried toward the children.
    pub bytes_down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    black_hole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    black_hole_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: tokio::sync::watch::Sender<u64>,
}

/// One direction of an emulated WAN link, shared by every tunnel.
#[derive(Clone)]
struct Wire {
    /// Bytes per second.
    rate: f64,
    delay: Duration,
    /// When the wire is free again.
    free_at: std::sync::Arc<std::sync::Mutex<tokio::time::Instant>>,
}

impl Wire {
    fn new(rate_bits: u64, delay: Duration) -> Wire {
        Wire {
            rate: rate_bits as f64 / 8.0,
            delay,
            free_at: std::sync::Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())),
        }
    }

    /// When `n` bytes handed over now arrive at the far end.
    fn arrival(&self, n: usize) -> tokio::time::Instant {
        let mut f = self.free_at.lock().expect("wire");
        let start = (*f).max(tokio::time::Instant::now());
        *f = start + Duration::from_secs_f64(n as f64 / self.rate);
        *f + self.delay
    }
}

/// Copies `r` to `w` until either ends, counting bytes into `count` and
/// dropping them while `hole` is set; through `wire` if there is one.
async fn splice(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    hole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    wire: Option<Wire>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A WAN link moves packets: read at most one segment at a time, so
    // tunnels interleave on the shared wire as they would on a real one.
    let mut buf = vec![0u8; if wire.is_some() { 1448 } else { 16 * 1024 }];
    // The next bytes that pass (counted), or None at the end.
    async fn next(
        r: &mut tokio::net::tcp::OwnedReadHalf,
        buf: &mut [u8],
        hole: &std::sync::atomic::AtomicBool,
        count: &std::sync::atomic::AtomicU64,
    ) -> Option<usize> {
        loop {
            let n = match r.read(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            if !hole.load(Ordering::SeqCst) {
                count.fetch_add(n as u64, Ordering::Relaxed);
                return Some(n);
            }
        }
    }
    let Some(wire) = wire else {
        while let Some(n) = next(&mut r, &mut buf, &hole, &count).await {
            if w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
        return;
    };
    // About 0.7 s of the wire's bytes may wait in its queue (a router's
    // buffer); beyond that the sender is held back by TCP.
    let depth = ((wire.rate * 0.7) as usize / buf.len()).max(8);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(depth);
    let reader = async move {
        while let Some(n) = next(&mut r, &mut buf, &hole, &count).await {
            if tx.send((wire.arrival(n), buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The reader ending (EOF) lets the writer deliver what is on the wire.
    tokio::join!(reader, writer);
}

impl ConnectProxy {
    /// Starts listening on a free loopback port.
    pub async fn start() -> ConnectProxy {
        Self::start_with(None).await
    }

    /// A WAN link: `rate_bits` per second each way, shared by every tunnel,
    /// and `delay` each way on top.
    pub async fn start_wan(rate_bits: u64, delay: Duration) -> ConnectProxy {
        Self::start_with(Some((
            Wire::new(rate_bits, delay),
            Wire::new(rate_bits, delay),
        )))
        .await
    }

    async fn start_with(wires: Option<(Wire, Wire)>) -> ConnectProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let tunnels = Arc::new(AtomicUsize::new(0));
        let bytes_up = Arc::new(AtomicU64::new(0));
        let bytes_down = Arc::new(AtomicU64::new(0));
        let black_hole = Arc::new(AtomicBool::new(false));
        let black_hole_up = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let (t, bh, bhu, dn, ep, nup, ndown) = (
            tunnels.clone(),
            black_hole.clone(),
            black_hole_up.clone(),
            down.clone(),
            epoch.clone(),
            bytes_up.clone(),
            bytes_down.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (t, bh, bhu, mut cut) = (t.clone(), bh.clone(), bhu.clone(), ep.subscribe());
                let (nup, ndown, wires) = (nup.clone(), ndown.clone(), wires.clone());
                if dn.load(Ordering::SeqCst) {
                    // The link is down: every connection is closed at once.
                    drop(c);
                    continue;
                }
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if c.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_string);
                    let Some(target) = target else {
                        let _ = c
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    };
                    let Ok(up) = tokio::net::TcpStream::connect(&target).await else {
                        let _ = c.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    t.fetch_add(1, Ordering::SeqCst);
                    if c.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = c.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (cr, cw) = c.into_split();
                    let (ur, uw) = up.into_split();
                    let (wu, wd) = match wires {
                        Some((u, d)) => (Some(u), Some(d)),
                        None => (None, None),
                    };
                    tokio::select! {
                        _ = splice(cr, uw, bhu, nup, wu) => {}
                        _ = splice(ur, cw, bh, ndown, wd) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        ConnectProxy {
            addr,
            tunnels,
            bytes_up,
            bytes_down,
            black_hole,
            black_hole_up,
            down,
            epoch,
        }
    }

    /// Takes the link down (true: every tunnel is cut and every new
    /// connection closed at once, as a cable pulled) or up again.
    pub fn down(&self, on: bool) {
        self.down.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            self.epoch.send_modify(|e| *e += 1);
        }
    }

    /// Drops (true) or passes (false) bytes toward the parent: requests
    /// (and the acks in them) are lost. Switching it off also cuts every
    /// open tunnel.
    pub fn black_hole_up(&self, on: bool) {
        self.black_hole_up
            .store(on, std::sync::atomic::Ordering::SeqCst);
        if !on {
            self.epoch.send_modify(|e| *e += 1);
        }
    }

    /// Drops (true) or passes (false) bytes toward the children. Switching
    /// it off also cuts every open tunnel.
    pub fn black_hole(&self, on: bool) {
        self.black_hole
            .store(on, std::sync::atomic::Ordering::SeqCst);
        if !on {
            self.epoch.send_modify(|e| *e += 1);
        }
    }
}

/// A parent with smaller limits than this version's: an mTLS exchange
/// endpoint (with an MLM certificate) that refuses, as a whole and with
/// HTTP 413, every envelope holding a content part over `max_part` bytes,
/// and accepts every message of any other envelope. It keeps the IDs it
/// accepted. A proxy must isolate the message such a parent cannot take
/// and keep everything else flowing.
///
/// It reads the compact form only while `compact` is on (off at first),
/// and says so in its answers then; while off it refuses an envelope with
/// a compact message part with 400, as a version before that form does.
pub struct SmallParent {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Messages accepted so far.
    pub accepted: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Envelopes refused so far.
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Reads (and advertises) the compact form.
    pub compact: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Envelopes that held compact message parts: (accepted, refused).
    pub compact_envelopes: std::sync::Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
    _stop: rsnet_common::server::ShutdownTrigger,
}

impl SmallParent {
    /// Starts on a free loopback port with the MLM certificate `tls`.
    pub async fn start(tls: rsnet_common::tls::TlsPaths, max_part: usize) -> SmallParent {
        use rsnet_common::envelope::{self, Control};
        use rsnet_common::http_util::error;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let (stop, shutdown) = rsnet_common::server::Shutdown::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let compact = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let compact_envelopes = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let (acc, refs, form, seen) = (
            accepted.clone(),
            refused.clone(),
            compact.clone(),
            compact_envelopes.clone(),
        );
        let handler = move |req: http::Request<_>, _peer| {
            let (acc, refs, form, seen) = (acc.clone(), refs.clone(), form.clone(), seen.clone());
            async move {
                let ct = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let Ok(body) = http_body_util::BodyExt::collect(req.into_body()).await else {
                    return error(http::StatusCode::BAD_REQUEST, "body");
                };
                let body = body.to_bytes();
                let d = match envelope::decode_bytes(&ct, body.clone()).await {
                    Ok(d) => d,
                    Err(e) => return error(e.status(), e),
                };
                // A message in the full form has a `<ID.header>` part.
                let named = body.windows(8).filter(|w| w == b".header>").count();
                if d.items.len() + d.rejected.len() > named {
                    if !form.load(Ordering::SeqCst) {
                        seen.1.fetch_add(1, Ordering::SeqCst);
                        return error(http::StatusCode::BAD_REQUEST, "part 1 has no Content-ID");
                    }
                    seen.0.fetch_add(1, Ordering::SeqCst);
                }
                if let (true, Some(w)) = (d.items.is_empty(), d.control.wait()) {
                    // A long-poll: hold it as a real parent would (nothing is ever queued here).
                    tokio::time::sleep(w.min(std::time::Duration::from_secs(5))).await;
                }
                if d.items.iter().any(|i| i.content.len() > max_part) {
                    refs.fetch_add(1, Ordering::SeqCst);
                    return error(
                        http::StatusCode::PAYLOAD_TOO_LARGE,
                        format!("part larger than {max_part} bytes"),
                    );
                }
                let mut c = Control::default();
                let mut a = acc.lock().expect("lock");
                for i in &d.items {
                    a.insert(i.header.id.to_string());
                    c.accepted.push(i.header.id);
                }
                drop(a);
                let mut r = rsnet_common::pipeline::exchange::reply(
                    c.accepted
                        .iter()
                        .map(|id| rsnet_common::model::Response::accepted(*id, None)),
                    &[],
                    false,
                    false,
                );
                if form.load(Ordering::SeqCst) {
                    r.headers_mut().insert(
                        envelope::ACCEPT_FORM,
                        http::HeaderValue::from_static(envelope::COMPACT),
                    );
                }
                r
            }
        };
        let tls = rsnet_common::tls::ReloadingServerConfig::start(tls).expect("tls");
        rsnet_common::server::serve(listener, Some(tls), 64, handler, shutdown);
        SmallParent {
            addr,
            accepted,
            refused,
            compact,
            compact_envelopes,
            _stop: stop,
        }
    }
}

// ---- a hand-driven child

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use rsnet_common::bulk::{self, UPLOAD_OFFSET};
use rsnet_common::client::{call, send as http_send, Target};
use rsnet_common::envelope::{decode_bytes, Control, EnvelopeWriter};
use rsnet_common::model::{BulkRequest, BulkResponse, Content, Message, Status};
use rsnet_common::tls::{Role, TlsPaths};
use rsnet_common::{ComponentId, MessageId};
use rsnet_demo::Tree;

/// Longest a [`RawChild`] waits for an answer.
const RAW_WAIT: Duration = Duration::from_secs(120);

/// A child speaking the protocol by hand, with its own certificate.
pub struct RawChild {
    /// Its component ID.
    pub id: ComponentId,
    /// Where it sends.
    pub target: Target,
    acks: Vec<MessageId>,
}

impl RawChild {
    /// A child with a fresh certificate for `id` and `role`, talking to the node at `at`.
    pub fn new(tree: &Tree, id: &str, role: Role, at: std::net::SocketAddr) -> RawChild {
        let f = tree.pki.issue(id, role, &[], &[]).unwrap();
        let config = rsnet_common::tls::client_config(&TlsPaths {
            ca: tree.pki.ca(),
            cert: f.cert,
            key: f.key,
            crl: None,
        })
        .unwrap();
        RawChild {
            id: id.parse().unwrap(),
            target: Target::Tls {
                base: format!("https://127.0.0.1:{}", at.port()),
                config: Arc::new(config),
            },
            acks: Vec::new(),
        }
    }

    /// One exchange: `msgs` up, with the acks owed and a wait hint.
    pub async fn exchange(
        &mut self,
        msgs: &[Message],
        wait_ms: u64,
    ) -> rsnet_common::envelope::Decoded {
        let mut w = EnvelopeWriter::new();
        w.control(&Control {
            wait_ms: Some(wait_ms),
            acks: std::mem::take(&mut self.acks),
            ..Default::default()
        });
        for m in msgs {
            w.message(m);
        }
        let (ct, body) = w.finish();
        let (s, b) = call(
            &self.target,
            Method::POST,
            "/rs/v1/exchange",
            Some((&ct, body)),
        )
        .await
        .unwrap();
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        let boundary = String::from_utf8_lossy(&b)
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("--")
            .to_string();
        let d = decode_bytes(&format!("multipart/related; boundary={boundary}"), b)
            .await
            .unwrap();
        self.acks.extend(d.items.iter().map(|i| i.header.id));
        d
    }

    /// Asks to upload `size` bytes with hash `sha`; the answer.
    pub async fn request(&mut self, size: u64, sha: &str) -> BulkResponse {
        let m = Message::forward(
            self.id.clone(),
            bulk::CLASS,
            Some("request"),
            Content::BulkRequest(BulkRequest {
                size,
                sha256: sha.into(),
                class: "core".into(),
                filename: "core.1".into(),
            }),
        )
        .with_hop(&self.id);
        let d = self.exchange(std::slice::from_ref(&m), 0).await;
        let a = d.control.answers();
        assert_eq!(a[&m.header.id].status, Status::Accepted, "{a:?}");
        let mut items = d.items;
        let deadline = Instant::now() + RAW_WAIT;
        loop {
            for i in &items {
                if let Ok(Content::BulkResponse(b)) = i.content() {
                    if b.request == m.header.id {
                        return b;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no bulk-response");
            items = self.exchange(&[], 5000).await.items;
        }
    }

    /// PUTs `body` at `offset`; the status and the answer's text.
    pub async fn put(
        &self,
        path: &str,
        offset: u64,
        body: Vec<u8>,
        extra: &[(&str, String)],
    ) -> (StatusCode, String) {
        let mut h = vec![(UPLOAD_OFFSET, offset.to_string())];
        h.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let r = http_send(
            &self.target,
            Method::PUT,
            path,
            Some(("application/octet-stream", Bytes::from(body))),
            &h,
        )
        .await
        .unwrap();
        let s = r.status();
        let b = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    /// PUTs a streamed `body` from offset 0 to the node at `target`; the
    /// status and the answer's text.
    pub async fn put_stream(
        &self,
        target: &Target,
        path: &str,
        body: rsnet_common::http_util::Body,
    ) -> (StatusCode, String) {
        let r = rsnet_common::client::send_body(
            target,
            Method::PUT,
            path,
            body,
            &[(UPLOAD_OFFSET, "0".into())],
        )
        .await
        .unwrap();
        let s = r.status();
        let b = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    /// HEADs `path`; the status and the `Upload-Offset` held.
    pub async fn head(&self, path: &str) -> (StatusCode, Option<u64>) {
        let r = http_send(&self.target, Method::HEAD, path, None, &[])
            .await
            .unwrap();
        (r.status(), bulk::held(r.headers()))
    }
}

// ---- a hostile parent

/// A hostile MLM: an mTLS parent (with an MLM certificate) that accepts
/// every message its children send, keeps the release reports among them,
/// hands each child the back-channel messages a test gives it (until the
/// child acknowledges them), and answers every release file path with
/// `file`, whatever the manifest says. What a compromised MLM on the path
/// could do to a release.
pub struct FakeParent {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Release reports received: (origin, report).
    pub reports: Arc<std::sync::Mutex<Vec<(String, rsnet_common::release::Report)>>>,
    /// Delivery and processing reports received: (origin, response).
    pub responses: Arc<std::sync::Mutex<Vec<(String, rsnet_common::model::Response)>>>,
    down: Arc<
        std::sync::Mutex<std::collections::HashMap<String, Vec<rsnet_common::store::SpoolRecord>>>,
    >,
    _stop: rsnet_common::server::ShutdownTrigger,
}

impl FakeParent {
    /// Starts on a free loopback port with the MLM certificate `tls`.
    pub async fn start(tls: TlsPaths, file: Vec<u8>) -> FakeParent {
        use rsnet_common::envelope;
        use rsnet_common::http_util::{error, full};
        use std::sync::Mutex;
        let (stop, shutdown) = rsnet_common::server::Shutdown::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reports: Arc<Mutex<Vec<_>>> = Arc::default();
        let responses: Arc<Mutex<Vec<_>>> = Arc::default();
        let down: Arc<Mutex<std::collections::HashMap<String, Vec<_>>>> = Arc::default();
        let file = Bytes::from(file);
        let (reps, resps, dn) = (reports.clone(), responses.clone(), down.clone());
        let handler = move |req: http::Request<hyper::body::Incoming>,
                            peer: Arc<rsnet_common::server::Peer>| {
            let (reps, resps, dn, file) = (reps.clone(), resps.clone(), dn.clone(), file.clone());
            async move {
                let who = peer
                    .identity
                    .as_ref()
                    .map(|i| i.id.to_string())
                    .unwrap_or_default();
                if req.uri().path().starts_with("/rs/v1/releases/") {
                    return http::Response::builder()
                        .status(StatusCode::OK)
                        .header(http::header::CONTENT_LENGTH, file.len())
                        .body(full(file))
                        .unwrap_or_else(|_| http::Response::new(full("")));
                }
                let ct = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = http_body_util::BodyExt::into_data_stream(req.into_body());
                let d = match envelope::decode(&ct, body).await {
                    Ok(d) => d,
                    Err(e) => return error(e.status(), e),
                };
                for i in &d.items {
                    if let (Ok(rsnet_common::model::Content::Response(r)), Some(src)) =
                        (i.content(), i.header.source())
                    {
                        resps
                            .lock()
                            .expect("lock")
                            .push((src.origin.to_string(), r));
                    }
                    if i.header.class == rsnet_common::release::CLASS {
                        if let (Ok(c), Some(src)) = (i.content(), i.header.source()) {
                            if let Some(r) = rsnet_common::release::Report::of(&c) {
                                reps.lock().expect("lock").push((src.origin.to_string(), r));
                            }
                        }
                    }
                }
                let take = |dn: &Mutex<
                    std::collections::HashMap<String, Vec<rsnet_common::store::SpoolRecord>>,
                >| {
                    let mut g = dn.lock().expect("lock");
                    let q = g.entry(who.clone()).or_default();
                    q.retain(|r| !d.control.acks.contains(&r.id));
                    q.clone()
                };
                let mut out = take(&dn);
                if out.is_empty() && d.items.is_empty() {
                    if let Some(w) = d.control.wait() {
                        let until = Instant::now() + w.min(Duration::from_secs(2));
                        while out.is_empty() && Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            out = take(&dn);
                        }
                    }
                }
                rsnet_common::pipeline::exchange::reply(
                    d.items
                        .iter()
                        .map(|i| rsnet_common::model::Response::accepted(i.header.id, None)),
                    &out,
                    false,
                    false,
                )
            }
        };
        let tls = rsnet_common::tls::ReloadingServerConfig::start(tls).expect("tls");
        rsnet_common::server::serve(listener, Some(tls), 64, handler, shutdown);
        FakeParent {
            addr,
            reports,
            responses,
            down,
            _stop: stop,
        }
    }

    /// Hands `m` (a back-channel message) to `child` in its next replies.
    pub fn offer(&self, child: &str, m: &Message) {
        self.down
            .lock()
            .expect("lock")
            .entry(child.to_string())
            .or_default()
            .push(rsnet_common::forward::record(m));
    }
}

/// `rsnet-ctl --tree DIR/tree.json ARGS…` against `tree`: its standard
/// output. Panics with its standard error if it fails.
pub fn ctl(tree: &Tree, args: &[&str]) -> String {
    let out = std::process::Command::new(rsnet_demo::bin_dir().join("rsnet-ctl"))
        .arg("--tree")
        .arg(tree.dir.join("tree.json"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rsnet-ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Proxy `i`'s `GET /v1/status`, or `None` while it does not answer.
pub async fn proxy_status(tree: &Tree, i: usize) -> Option<serde_json::Value> {
    let (_, v) = rsnet_demo::json_call(&tree.node_target(i).ok()?, Method::GET, "/v1/status", None)
        .await
        .ok()?;
    Some(v)
}

/// A started tree of one MLM and one proxy under it (`acme.mlm1`,
/// `acme.p1`), heartbeats every `heartbeat_s`, removed when dropped. Call
/// from a multi-threaded runtime: the processes start in `block_in_place`.
pub fn small_tree(tag: &str, heartbeat_s: u64) -> Tree {
    let mut tree = tokio::task::block_in_place(|| {
        Tree::start(
            &tempdir(tag),
            &rsnet_demo::Spec {
                mlms: vec![("mlm1".into(), None)],
                proxies: vec![("p1".into(), Some(0))],
                heartbeat_s,
                ..rsnet_demo::Spec::demo()
            },
        )
    })
    .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    tree.remove_on_drop = true;
    tree
}

/// A subscription to the appserver's stream, as a client reads it.
pub struct Sse {
    body: hyper::body::Incoming,
    buf: String,
}

impl Sse {
    /// Subscribes with `query` (and `Last-Event-ID: last`); returns once the
    /// stream's opening comment arrived, so the subscriber is registered.
    pub async fn open(op: &Target, query: &str, last: Option<u64>) -> Sse {
        let extra: Vec<(&str, String)> = last
            .map(|l| ("last-event-id", l.to_string()))
            .into_iter()
            .collect();
        let resp = rsnet_common::client::send(
            op,
            Method::GET,
            &format!("/api/v1/stream?{query}"),
            None,
            &extra,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut sse = Sse {
            body: resp.into_body(),
            buf: String::new(),
        };
        while !sse.buf.contains(": rsnet stream\n\n") {
            sse.more().await;
        }
        let at = sse.buf.find(": rsnet stream\n\n").unwrap_or(0);
        sse.buf.drain(..at + ": rsnet stream\n\n".len());
        sse
    }

    pub async fn more(&mut self) {
        use http_body_util::BodyExt;
        let f = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
            .await
            .expect("stream data in time")
            .unwrap()
            .unwrap();
        self.buf
            .push_str(&String::from_utf8_lossy(&f.into_data().unwrap_or_default()));
    }

    /// The next `n` events: (sequence number, data line). A chunk may hold
    /// many events: the reader stops after the `n`th, as a client that goes
    /// away then would.
    pub async fn events(&mut self, n: usize) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        while got.len() < n {
            while let Some(end) = self.buf.find("\n\n").filter(|_| got.len() < n) {
                let ev: String = self.buf.drain(..end + 2).collect();
                if let (Some(id), Some(data)) = (
                    ev.lines().find_map(|l| l.strip_prefix("id: ")),
                    ev.lines().find_map(|l| l.strip_prefix("data: ")),
                ) {
                    got.push((id.parse().unwrap(), data.to_string()));
                }
            }
            if got.len() < n {
                self.more().await;
            }
        }
        got
    }
}
