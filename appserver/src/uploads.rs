//! Uploads (DESIGN.md §7, upward): granting `bulk-request`s and receiving
//! the bytes.
//!
//! ```text
//! bulk-request (stored by ingest) ─► Uploads::requested ─► grant or deny
//!     grant: token (random; only its SHA-256 kept), bound to the source,
//!            size and sha256, expiring; record `upload/ID` = granted
//!     └► bulk-response down the back-channel to the source
//! HEAD /rs/v1/bulk/TOKEN ─► bytes held (DATA/uploads/ID.part)
//! PUT  /rs/v1/bulk/TOKEN ─► appended at the offset held, streamed, bounded
//!     by the granted size; at the last byte: fsync, sha256 checked,
//!     renamed to ID.bin, record = stored, token spent
//! GET /api/v1/uploads[/ID[/file]] ─► operators list and download
//! ```
//!
//! The upload's ID is the ID of the `bulk-request` message that asked for
//! it, so the request is also in the message store for service modules.
//! A request is denied, with a reason and a time to ask again, when it is
//! larger than `[uploads] max_bytes` or would take the granted-but-not-yet-
//! received bytes past `max_pending_bytes`. A grant that expires fails and
//! its partial file is removed. Free disk space is not measured (not built
//! yet): `max_pending_bytes` is the bound.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rsnet_common::backchannel::BackChannel;
use rsnet_common::bulk::{self, BulkError, Token, UPLOAD_LENGTH, UPLOAD_OFFSET};
use rsnet_common::http_util::{drain, error, json, stream_body, Body};
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::{BulkRequest, BulkResponse, Timestamp};
use rsnet_common::server::{Peer, Shutdown};
use rsnet_common::store::{put_async, KvStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// KV prefix of upload records.
pub const PREFIX: &str = "upload/";
/// KV prefix of token digests (value: the upload ID).
const TOKENS: &str = "upload-token/";
/// A body chunk must arrive within this of the last one.
const IDLE: Duration = Duration::from_secs(60);
/// How often expired grants are swept.
const SWEEP: Duration = Duration::from_secs(30);

/// `[uploads]`: what the appserver grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// Largest upload, in bytes. Default 4 GiB.
    pub max_bytes: u64,
    /// Bytes granted and not yet received, all uploads together; a request
    /// beyond is denied for now. Default 64 GiB.
    pub max_pending_bytes: u64,
    /// How long a grant is good for, in seconds: the transfer must be
    /// complete by then. Default 86400.
    pub grant_ttl_s: u64,
    /// When a denied sender may ask again, in seconds. Default 60.
    pub retry_after_s: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            max_bytes: 4 << 30,
            max_pending_bytes: 64 << 30,
            grant_ttl_s: 86_400,
            retry_after_s: 60,
        }
    }
}

impl UploadsConfig {
    /// Adds every problem to `errors`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.grant_ttl_s == 0 {
            errors.push("uploads.grant_ttl_s: must be at least 1".into());
        }
        if self.retry_after_s == 0 {
            errors.push("uploads.retry_after_s: must be at least 1".into());
        }
        if self.max_pending_bytes < self.max_bytes {
            errors.push("uploads.max_pending_bytes: must be at least max_bytes".into());
        }
    }
}

/// Where an upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// Granted; bytes may be arriving.
    Granted,
    /// Complete, checked, stored.
    Stored,
    /// Expired, or the bytes were not what was granted.
    Failed,
}

/// One upload, as stored and as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upload {
    /// The ID of the `bulk-request` that asked for it.
    pub id: MessageId,
    /// Who sent it.
    pub source: ComponentId,
    /// What it is (`core`, `explorer`).
    pub class: String,
    /// The sender's name for it (never used as a path).
    pub filename: String,
    /// Bytes granted.
    pub size: u64,
    /// SHA-256 granted (hex).
    pub sha256: String,
    /// See [`UploadState`].
    pub state: UploadState,
    /// When granted.
    pub granted: Timestamp,
    /// Until when the grant holds.
    pub expires: Timestamp,
    /// When stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<Timestamp>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Upload {
    fn view(&self, received: u64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "source": self.source.to_string(),
            "class": self.class,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "state": self.state,
            "received": received,
            "granted": self.granted.to_rfc3339(),
            "expires": self.expires.to_rfc3339(),
            "stored": self.stored.map(Timestamp::to_rfc3339),
            "reason": self.reason,
        })
    }
}

struct Counters {
    granted: Counter,
    denied: Counter,
    stored: Counter,
    failed: Counter,
    received: Counter,
}

/// The appserver's uploads.
pub struct Uploads {
    cfg: UploadsConfig,
    dir: PathBuf,
    kv: Arc<dyn KvStore>,
    backchannel: Arc<BackChannel>,
    /// Granted uploads not yet stored or failed: their sizes.
    open: Mutex<HashMap<MessageId, u64>>,
    /// Uploads a PUT is writing right now.
    busy: Mutex<HashSet<MessageId>>,
    counters: Counters,
}

/// Releases a [`Uploads::busy`] claim when the PUT ends, however it ends.
struct Claim<'a>(&'a Uploads, MessageId);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.busy.lock() {
            b.remove(&self.1);
        }
    }
}

impl Uploads {
    /// Over `data_dir/uploads`; open grants are loaded from `kv`.
    ///
    /// # Errors
    /// A directory that cannot be made, a store that cannot be read.
    pub fn open(
        cfg: &UploadsConfig,
        data_dir: &std::path::Path,
        kv: Arc<dyn KvStore>,
        backchannel: Arc<BackChannel>,
        metrics: &Registry,
    ) -> rsnet_common::Result<Arc<Uploads>> {
        let dir = data_dir.join("uploads");
        std::fs::create_dir_all(&dir)?;
        let mut open = HashMap::new();
        for (_, v) in kv.list(PREFIX)? {
            if let Ok(u) = serde_json::from_slice::<Upload>(&v) {
                if u.state == UploadState::Granted {
                    open.insert(u.id, u.size);
                }
            }
        }
        let c = |n: &str, h: &str| metrics.counter(n, h);
        let up = Arc::new(Uploads {
            cfg: cfg.clone(),
            dir,
            kv,
            backchannel,
            open: Mutex::new(open),
            busy: Mutex::new(HashSet::new()),
            counters: Counters {
                granted: c("rsnet_bulk_granted_total", "bulk requests granted"),
                denied: c("rsnet_bulk_denied_total", "bulk requests denied"),
                stored: c("rsnet_bulk_stored_total", "uploads stored"),
                failed: c(
                    "rsnet_bulk_failed_total",
                    "uploads failed (expired, wrong hash, too long)",
                ),
                received: c("rsnet_bulk_received_bytes_total", "upload bytes received"),
            },
        });
        let o = up.clone();
        metrics.gauge(
            "rsnet_bulk_pending_bytes",
            "bytes granted and not yet received",
            move || o.pending() as f64,
        );
        Ok(up)
    }

    fn part(&self, id: &MessageId) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn file(&self, id: &MessageId) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    fn pending(&self) -> u64 {
        self.open.lock().map(|o| o.values().sum()).unwrap_or(0)
    }

    fn load(&self, id: &MessageId) -> Result<Option<Upload>, BulkError> {
        match self.kv.get(&format!("{PREFIX}{id}")) {
            Ok(Some(v)) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| BulkError::Io(format!("upload record {id}: {e}"))),
            Ok(None) => Ok(None),
            Err(e) => Err(BulkError::Io(e.to_string())),
        }
    }

    async fn save(&self, u: &Upload, extra: Vec<(String, Vec<u8>)>) -> Result<(), BulkError> {
        let mut pairs = extra;
        pairs.push((
            format!("{PREFIX}{}", u.id),
            serde_json::to_vec(u).unwrap_or_default(),
        ));
        put_async(&self.kv, pairs)
            .await
            .map_err(|e| BulkError::Io(e.to_string()))?;
        if let Ok(mut o) = self.open.lock() {
            if u.state == UploadState::Granted {
                o.insert(u.id, u.size);
            } else {
                o.remove(&u.id);
            }
        }
        Ok(())
    }

    /// Decides on `bulk-request`s ingest has just stored (not repeats) and
    /// sends each source its `bulk-response`. A failure here is logged: the
    /// sender asks again when no answer comes.
    pub async fn requested(&self, requests: Vec<(MessageId, ComponentId, BulkRequest)>) {
        for (id, source, req) in requests {
            let answer = match self.decide(id, &source, &req).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(request = %id, error = %e, "bulk request not answered");
                    continue;
                }
            };
            if let Err(e) = self.answer(&source, answer).await {
                tracing::warn!(request = %id, error = %e, "bulk response not queued");
            }
        }
    }

    async fn decide(
        &self,
        id: MessageId,
        source: &ComponentId,
        req: &BulkRequest,
    ) -> Result<BulkResponse, BulkError> {
        let deny = |reason: String, retry: bool| {
            self.counters.denied.inc();
            tracing::info!(request = %id, %source, %reason, "bulk request denied");
            BulkResponse {
                request: id,
                granted: false,
                reason: Some(reason),
                url: None,
                token: None,
                retry_after: retry.then(|| Duration::from_secs(self.cfg.retry_after_s)),
                expires: None,
            }
        };
        if req.size > self.cfg.max_bytes {
            return Ok(deny(
                format!(
                    "{} bytes is more than the {} an upload may have",
                    req.size, self.cfg.max_bytes
                ),
                false,
            ));
        }
        let pending = self.pending();
        if pending.saturating_add(req.size) > self.cfg.max_pending_bytes {
            return Ok(deny(
                format!(
                    "the appserver has {pending} bytes of uploads under way; \
                     {} more would pass its limit of {}",
                    req.size, self.cfg.max_pending_bytes
                ),
                true,
            ));
        }
        let token = Token::new()?;
        let now = Timestamp::now();
        let up = Upload {
            id,
            source: source.clone(),
            class: req.class.clone(),
            filename: req.filename.clone(),
            size: req.size,
            sha256: req.sha256.clone(),
            state: UploadState::Granted,
            granted: now,
            expires: now.after(Duration::from_secs(self.cfg.grant_ttl_s)),
            stored: None,
            reason: None,
        };
        self.save(
            &up,
            vec![(
                format!("{TOKENS}{}", token.digest()),
                id.to_string().into_bytes(),
            )],
        )
        .await?;
        self.counters.granted.inc();
        tracing::info!(upload = %id, %source, size = req.size, "bulk request granted");
        Ok(BulkResponse {
            request: id,
            granted: true,
            reason: None,
            url: Some(token.path()),
            token: Some(token.as_str().to_string()),
            retry_after: None,
            expires: Some(up.expires),
        })
    }

    /// Queues `answer` for `source`, on the back-channel.
    async fn answer(&self, source: &ComponentId, answer: BulkResponse) -> Result<(), String> {
        let (header, content) = bulk::response_message(source, answer);
        let routed = self.backchannel.route(std::slice::from_ref(source));
        if routed.copies.is_empty() {
            return Err(format!("no route to {source}"));
        }
        self.backchannel
            .dispatch(&header, content, &routed, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The upload `token` names, checked for `origin`: it exists, is the
    /// origin's, and is still open.
    async fn granted(&self, token: &Token, origin: &ComponentId) -> Result<Upload, BulkError> {
        let id = match self.kv.get(&format!("{TOKENS}{}", token.digest())) {
            Ok(Some(v)) => String::from_utf8_lossy(&v)
                .parse::<MessageId>()
                .map_err(|e| BulkError::Io(format!("token record: {e}")))?,
            Ok(None) => return Err(BulkError::UnknownToken),
            Err(e) => return Err(BulkError::Io(e.to_string())),
        };
        let up = self.load(&id)?.ok_or(BulkError::UnknownToken)?;
        if &up.source != origin {
            tracing::warn!(upload = %id, %origin, owner = %up.source, "transfer token used by another source");
            return Err(BulkError::Forbidden(format!(
                "this transfer token was granted to another source, not {origin}"
            )));
        }
        match up.state {
            // Answered by the caller: HEAD says complete, PUT is refused.
            UploadState::Stored => return Ok(up),
            UploadState::Failed => {
                return Err(BulkError::Gone(format!(
                    "this upload failed: {}",
                    up.reason.as_deref().unwrap_or("unknown")
                )))
            }
            UploadState::Granted => {}
        }
        if up.expires <= Timestamp::now() {
            self.fail(up, "the grant expired").await;
            return Err(BulkError::Gone("this transfer token has expired".into()));
        }
        Ok(up)
    }

    async fn fail(&self, mut up: Upload, reason: &str) {
        let _ = tokio::fs::remove_file(self.part(&up.id)).await;
        up.state = UploadState::Failed;
        up.reason = Some(reason.to_string());
        self.counters.failed.inc();
        tracing::warn!(upload = %up.id, source = %up.source, reason, "upload failed");
        if let Err(e) = self.save(&up, Vec::new()).await {
            tracing::warn!(upload = %up.id, error = %e, "upload state not saved");
        }
    }

    async fn held(&self, id: &MessageId) -> u64 {
        tokio::fs::metadata(self.part(id))
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// `HEAD` and `PUT /rs/v1/bulk/TOKEN` from a child.
    pub async fn transfer(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        match self.try_transfer(&parts, &mut body, peer).await {
            Ok(r) => r,
            Err(e) => {
                // Refused before the body was read: take some of it first.
                if let Some(b) = body {
                    drain(b, bulk::REFUSAL_DRAIN_BYTES, bulk::REFUSAL_DRAIN_TIME).await;
                }
                e.response()
            }
        }
    }

    async fn try_transfer(
        &self,
        parts: &http::request::Parts,
        body: &mut Option<Incoming>,
        peer: &Peer,
    ) -> Result<Response<Body>, BulkError> {
        let token = Token::of_path(parts.uri.path()).ok_or(BulkError::BadToken)??;
        let origin = bulk::origin(peer, &parts.headers)?;
        let up = self.granted(&token, &origin).await?;
        let stored = up.state == UploadState::Stored;
        match parts.method {
            Method::HEAD => {
                // A sender that crashed before it heard the 201 learns here
                // that the upload is stored, and does not ask again.
                let held = if stored {
                    up.size
                } else {
                    self.held(&up.id).await
                };
                let mut r = Response::builder()
                    .status(StatusCode::OK)
                    .header(UPLOAD_OFFSET, held)
                    .header(UPLOAD_LENGTH, up.size);
                if stored {
                    r = r.header(bulk::UPLOAD_COMPLETE, "true");
                }
                Ok(r.body(rsnet_common::http_util::full(""))
                    .unwrap_or_else(|_| Response::new(rsnet_common::http_util::full(""))))
            }
            Method::PUT if stored => Err(BulkError::Gone(
                "this transfer token was already used: the upload is stored".into(),
            )),
            Method::PUT => self.receive(&parts.headers, body, up).await,
            _ => Err(BulkError::BadRequest("HEAD or PUT".into())),
        }
    }

    async fn receive(
        &self,
        headers: &http::HeaderMap,
        body: &mut Option<Incoming>,
        up: Upload,
    ) -> Result<Response<Body>, BulkError> {
        let _claim = {
            let mut b = self.busy.lock().map_err(|_| BulkError::Busy)?;
            if !b.insert(up.id) {
                return Err(BulkError::Busy);
            }
            Claim(self, up.id)
        };
        let held = self.held(&up.id).await;
        let sent = bulk::offset(headers)?;
        if sent != held {
            return Err(BulkError::Offset { sent, held });
        }
        let io = |e: std::io::Error| BulkError::Io(format!("upload file: {e}"));
        let part = self.part(&up.id);
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await
            .map_err(io)?;
        // Hashed on the way when this PUT carries the whole file; a resumed
        // one is hashed from disk at the end.
        let mut hasher = (held == 0).then(Sha256::new);
        let mut n = held;
        let Some(incoming) = body.take() else {
            return Err(BulkError::BadRequest("no body".into()));
        };
        let mut body = std::pin::pin!(stream_body(incoming, IDLE));
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // Keep what arrived: the sender resumes from there.
                    f.flush().await.map_err(io)?;
                    tracing::info!(upload = %up.id, held = n, error = %e, "transfer cut off");
                    return Err(BulkError::BadRequest(format!("body: {e}")));
                }
            };
            if n + chunk.len() as u64 > up.size {
                drop(f);
                self.fail(up.clone(), "the sender sent more bytes than granted")
                    .await;
                return Err(BulkError::TooLong(up.size));
            }
            f.write_all(&chunk).await.map_err(io)?;
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            n += chunk.len() as u64;
            self.counters.received.add(chunk.len() as u64);
        }
        f.flush().await.map_err(io)?;
        if n < up.size {
            return Ok(Response::builder()
                .status(StatusCode::ACCEPTED)
                .header(UPLOAD_OFFSET, n)
                .header(UPLOAD_LENGTH, up.size)
                .body(rsnet_common::http_util::full(""))
                .unwrap_or_else(|_| Response::new(rsnet_common::http_util::full(""))));
        }
        f.sync_all().await.map_err(io)?;
        drop(f);
        let got = match hasher {
            Some(h) => bulk::hex(&h.finalize()),
            None => bulk::sha256_file(&part).await.map_err(io)?,
        };
        if got != up.sha256 {
            let e = BulkError::HashMismatch {
                want: up.sha256.clone(),
                got,
            };
            self.fail(up, &e.to_string()).await;
            return Err(e);
        }
        tokio::fs::rename(&part, self.file(&up.id))
            .await
            .map_err(io)?;
        let mut done = up;
        done.state = UploadState::Stored;
        done.stored = Some(Timestamp::now());
        self.save(&done, Vec::new()).await?;
        self.counters.stored.inc();
        tracing::info!(upload = %done.id, source = %done.source, size = done.size, "upload stored");
        Ok(json(StatusCode::CREATED, &done.view(done.size)))
    }

    /// Fails every grant that has expired (and removes its partial file),
    /// every [`SWEEP`] until `shutdown`.
    pub async fn sweep_until_shutdown(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP) => {}
                _ = shutdown.wait() => return,
            }
            let open: Vec<MessageId> = self
                .open
                .lock()
                .map(|o| o.keys().copied().collect())
                .unwrap_or_default();
            let now = Timestamp::now();
            for id in open {
                if let Ok(Some(up)) = self.load(&id) {
                    if up.state == UploadState::Granted && up.expires <= now {
                        self.fail(up, "the grant expired").await;
                    }
                }
            }
        }
    }

    /// Withdraws every open grant of `source` and below (its certificate
    /// was revoked): their tokens are refused from now on. Returns how many.
    pub async fn withdraw(&self, source: &ComponentId) -> usize {
        let open: Vec<MessageId> = self
            .open
            .lock()
            .map(|o| o.keys().copied().collect())
            .unwrap_or_default();
        let mut n = 0;
        for id in open {
            if let Ok(Some(up)) = self.load(&id) {
                if up.state == UploadState::Granted && up.source.is_within(source) {
                    self.fail(up, "the source's certificate was revoked").await;
                    n += 1;
                }
            }
        }
        n
    }

    /// `GET /api/v1/uploads[?source=ID]`: every upload, newest first.
    /// Only uploads whose source `sees` accepts are listed (an operator's scope).
    pub async fn list(
        &self,
        q: &[(String, String)],
        sees: impl Fn(&ComponentId) -> bool,
    ) -> Response<Body> {
        let mut source = None;
        for (k, v) in q {
            match k.as_str() {
                "source" => match v.parse::<ComponentId>() {
                    Ok(s) => source = Some(s),
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("source: {e}")),
                },
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    )
                }
            }
        }
        let pairs = match self.kv.list(PREFIX) {
            Ok(p) => p,
            Err(e) => return rsnet_common::Error::from(e).response(),
        };
        let mut all: Vec<Upload> = pairs
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .filter(|u: &Upload| source.as_ref().is_none_or(|s| u.source.is_within(s)))
            .filter(|u: &Upload| sees(&u.source))
            .collect();
        all.sort_by_key(|u| std::cmp::Reverse(u.granted));
        let mut out = Vec::with_capacity(all.len());
        for u in &all {
            let received = match u.state {
                UploadState::Granted => self.held(&u.id).await,
                UploadState::Stored => u.size,
                UploadState::Failed => 0,
            };
            out.push(u.view(received));
        }
        json(StatusCode::OK, &serde_json::json!({ "uploads": out }))
    }

    /// `GET /api/v1/uploads/ID` and `GET /api/v1/uploads/ID/file`.
    /// An upload whose source `sees` refuses is answered as unknown.
    pub async fn get(&self, rest: &str, sees: impl Fn(&ComponentId) -> bool) -> Response<Body> {
        let (id, file) = match rest.strip_suffix("/file") {
            Some(id) => (id, true),
            None => (rest, false),
        };
        let Ok(id) = id.parse::<MessageId>() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not an upload ID"),
            );
        };
        let up = match self.load(&id) {
            Ok(Some(u)) if sees(&u.source) => u,
            Ok(_) => return error(StatusCode::NOT_FOUND, format!("no upload {id}")),
            Err(e) => return e.response(),
        };
        if !file {
            let received = match up.state {
                UploadState::Granted => self.held(&id).await,
                UploadState::Stored => up.size,
                UploadState::Failed => 0,
            };
            return json(StatusCode::OK, &up.view(received));
        }
        if up.state != UploadState::Stored {
            return error(
                StatusCode::CONFLICT,
                format!("upload {id} is not stored (it is {:?})", up.state),
            );
        }
        let body = match bulk::file_body(&self.file(&id), 0, Default::default(), 0).await {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("upload file: {e}"),
                )
            }
        };
        // The sender's name, reduced to safe characters, for the download.
        let name: String = up
            .filename
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, up.size)
            .header(
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            )
            .header("x-sha256", up.sha256.as_str())
            .body(body)
            .unwrap_or_else(|_| Response::new(rsnet_common::http_util::full("")))
    }
}
