//! Uploads from this proxy (DESIGN.md §7): files too large for an
//! exchange, sent up as bulk transfers.
//!
//! ```text
//! POST /v1/bulk?class=C&name=N  (body: the file; Idempotency-Key optional:
//!   a resend within a day is answered with the first upload, not a second)
//!   └ copied to DATA/bulk/ID.bin with its SHA-256 (bounded, fsync), record
//!     `bulk/ID` = requested, a `bulk-request` spooled: 202 {id, size, sha256}
//! bulk-response (back-channel) ─► ^bulk pseudo-queue (in the reply's one
//!   commit) ─► Bulk::apply_pending: granted (token) / denied (ask again later)
//! driver ─► granted: HEAD (the offset the receiver holds) ─► PUT from there,
//!           paced by max_rate_bytes_s ─► 201: done, copy removed
//! GET /v1/bulk[/ID] ─► state, bytes sent, requests, resumes
//! ```
//!
//! The copy makes the upload independent of the integrator's file (it may
//! change or vanish) and survive a restart. Every step is retried:
//!
//! * no answer to a request within `answer_timeout_s` (lost on the way, an
//!   appserver crash): a new request is sent;
//! * denied with a time to ask again (throttle, disk): asked again then;
//!   denied for good (too large): failed, with the reason;
//! * a transfer cut off (link, restart of any node): after a backoff, resumed
//!   from the offset the receiver holds;
//! * a token refused (expired, unknown): a new request;
//! * a hash the receiver disputes: sent again from scratch, twice at most.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rsnet_common::backchannel::Queues;
use rsnet_common::bulk::{self, Token, UPLOAD_OFFSET};
use rsnet_common::envelope::wire;
use rsnet_common::forward::Outbox;
use rsnet_common::http_util::{error, json, stream_body, Body};
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::link::{Backoff, Link};
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::{BulkRequest, BulkResponse, Content, Message, Timestamp};
use rsnet_common::server::Shutdown;
use rsnet_common::store::{put_async, KvStore, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// The pseudo-queue holding `bulk-response`s received (their received mark
/// is durable) and not yet applied to their upload.
pub const BULK: &str = "^bulk";
/// KV prefix of upload records.
const PREFIX: &str = "bulk/";
/// A body chunk from the integrator must arrive within this of the last one.
const IDLE: Duration = Duration::from_secs(30);
/// A transfer whose bytes stop moving for this long is abandoned and resumed.
const STALL: Duration = Duration::from_secs(60);
/// Requests sent again for one upload after the receiver disputed its hash.
const MAX_HASH_RETRIES: u32 = 2;

/// `[bulk]`: uploads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkConfig {
    /// Largest file, in bytes. Default 4 GiB.
    pub max_bytes: u64,
    /// Bytes all uploads not yet done may hold in the data directory.
    /// Default 16 GiB.
    pub capacity_bytes: u64,
    /// Ask again when a request has had no answer for this long, in
    /// seconds. Default 300.
    pub answer_timeout_s: u64,
    /// Transfers at once. Default 2.
    pub max_concurrent: usize,
    /// Upload bandwidth cap in bytes per second; 0 for none. Default 0.
    pub max_rate_bytes_s: u64,
    /// First retry delay after a failed transfer, in milliseconds. Default 1000.
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds. Default 60000.
    pub retry_max_ms: u64,
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            max_bytes: 4 << 30,
            capacity_bytes: 16 << 30,
            answer_timeout_s: 300,
            max_concurrent: 2,
            max_rate_bytes_s: 0,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
        }
    }
}

impl BulkConfig {
    /// Adds every problem to `errors`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.answer_timeout_s == 0 {
            errors.push("bulk.answer_timeout_s: must be at least 1".into());
        }
        if self.max_concurrent == 0 {
            errors.push("bulk.max_concurrent: must be at least 1".into());
        }
        if self.capacity_bytes < self.max_bytes {
            errors.push("bulk.capacity_bytes: must be at least max_bytes".into());
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            errors.push("bulk.retry_base_ms: at least 1, and retry_max_ms at least that".into());
        }
    }
}

/// Where an upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Asked; waiting for the answer.
    Requested,
    /// Denied for now; asks again at `next_at`.
    Denied,
    /// Granted; transferring (or waiting to retry).
    Granted,
    /// Stored at the appserver.
    Done,
    /// Given up: `reason` says why.
    Failed,
}

/// One upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upload {
    /// The upload's local ID.
    pub id: MessageId,
    /// What it is.
    pub class: String,
    /// The integrator's name for it.
    pub filename: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 (hex).
    pub sha256: String,
    /// See [`State`].
    pub state: State,
    /// The ID of the latest `bulk-request` for it (the upload's ID at the appserver).
    pub request: MessageId,
    /// When accepted from the integrator.
    pub created: Timestamp,
    /// Last state change.
    pub updated: Timestamp,
    /// Why it was last denied, retried or failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// Not before this: the next request (denied) or transfer attempt (granted).
    #[serde(default)]
    pub next_at: Option<Timestamp>,
    /// The grant's token (a secret: never shown).
    #[serde(default)]
    token: Option<String>,
    /// The grant's expiry.
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// `bulk-request`s sent.
    #[serde(default)]
    pub requests: u32,
    /// Transfer attempts under the current grant.
    #[serde(default)]
    pub attempts: u32,
    /// Offsets transfers resumed from (bytes the receiver already held).
    #[serde(default)]
    pub resumed_from: Vec<u64>,
    /// Requests sent again because the receiver disputed the hash.
    #[serde(default)]
    pub hash_retries: u32,
    /// When it was stored at the appserver.
    #[serde(default)]
    pub done: Option<Timestamp>,
    /// The integrator's `Idempotency-Key`, if it gave one.
    #[serde(default)]
    key: Option<String>,
}

/// How long an upload's `Idempotency-Key` is recognised.
const KEY_WINDOW: Duration = Duration::from_secs(86_400);

/// How one transfer attempt ended.
enum Outcome {
    Done,
    /// Try the same grant again after a backoff.
    Retry(String),
    /// The grant is no use: ask again.
    Rerequest(String),
    /// The file must be sent again from scratch, under a new grant.
    Disputed(String),
    Fail(String),
}

struct Counters {
    requests: Counter,
    done: Counter,
    failed: Counter,
    sent: Counter,
}

/// The proxy's uploads.
pub struct Bulk {
    me: ComponentId,
    cfg: BulkConfig,
    dir: PathBuf,
    kv: Arc<dyn KvStore>,
    outbox: Arc<Outbox>,
    link: Arc<Link>,
    queues: Arc<Queues>,
    uploads: Mutex<BTreeMap<MessageId, Upload>>,
    /// Transfers running now: bytes the receiver holds (as far as known).
    sending: Mutex<HashMap<MessageId, Arc<AtomicU64>>>,
    wake: Notify,
    counters: Counters,
}

impl Bulk {
    /// Loads the uploads of `data_dir/bulk`.
    ///
    /// # Errors
    /// A directory that cannot be made, a store that cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        me: ComponentId,
        cfg: &BulkConfig,
        data_dir: &std::path::Path,
        kv: Arc<dyn KvStore>,
        outbox: Arc<Outbox>,
        link: Arc<Link>,
        queues: Arc<Queues>,
        metrics: &Registry,
    ) -> rsnet_common::Result<Arc<Bulk>> {
        let dir = data_dir.join("bulk");
        std::fs::create_dir_all(&dir)?;
        let mut uploads = BTreeMap::new();
        for (_, v) in kv.list(PREFIX)? {
            if let Ok(u) = serde_json::from_slice::<Upload>(&v) {
                uploads.insert(u.id, u);
            }
        }
        // Partial copies of a crash before the 202 were never acknowledged.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "part") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let c = |n: &str, h: &str| metrics.counter(n, h);
        Ok(Arc::new(Bulk {
            me,
            cfg: cfg.clone(),
            dir,
            kv,
            outbox,
            link,
            queues,
            uploads: Mutex::new(uploads),
            sending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            counters: Counters {
                requests: c("rsnet_bulk_requests_total", "bulk requests sent"),
                done: c(
                    "rsnet_bulk_uploads_done_total",
                    "uploads stored at the appserver",
                ),
                failed: c("rsnet_bulk_uploads_failed_total", "uploads given up"),
                sent: c(
                    "rsnet_bulk_sent_bytes_total",
                    "upload bytes sent to the parent",
                ),
            },
        }))
    }

    fn file(&self, id: &MessageId) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    fn get(&self, id: &MessageId) -> Option<Upload> {
        self.uploads.lock().ok()?.get(id).cloned()
    }

    async fn save(&self, u: &Upload) -> Result<(), StoreError> {
        put_async(
            &self.kv,
            vec![(
                format!("{PREFIX}{}", u.id),
                serde_json::to_vec(u).unwrap_or_default(),
            )],
        )
        .await?;
        if let Ok(mut all) = self.uploads.lock() {
            all.insert(u.id, u.clone());
        }
        Ok(())
    }

    /// Bytes the copies of uploads not yet done hold.
    fn held_bytes(&self) -> u64 {
        self.uploads
            .lock()
            .map(|all| {
                all.values()
                    .filter(|u| !matches!(u.state, State::Done | State::Failed))
                    .map(|u| u.size)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// `POST /v1/bulk?class=C&name=N`: takes the file in the body.
    pub async fn accept(&self, req: Request<Incoming>, q: &[(String, String)]) -> Response<Body> {
        let (mut class, mut name) = (None, None);
        for (k, v) in q {
            match k.as_str() {
                "class" => class = Some(v.clone()),
                "name" => name = Some(v.clone()),
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    )
                }
            }
        }
        let class = class.unwrap_or_else(|| "file".into());
        if !rsnet_common::model::valid_class(&class) {
            return error(StatusCode::BAD_REQUEST, "class: [a-z0-9_.-], 1..=64 bytes");
        }
        let Some(name) =
            name.filter(|n| !n.is_empty() && n.len() <= 255 && !n.chars().any(char::is_control))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "name: the file's name, 1..=255 bytes without control characters",
            );
        };
        let room = self.cfg.capacity_bytes.saturating_sub(self.held_bytes());
        let limit = self.cfg.max_bytes.min(room);
        let too_big = |n: u64| {
            if n > self.cfg.max_bytes {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("an upload is at most {} bytes", self.cfg.max_bytes),
                )
            } else {
                error(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "uploads under way hold {} of the {} bytes they may; try again later",
                        self.held_bytes(),
                        self.cfg.capacity_bytes
                    ),
                )
            }
        };
        let key = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
            None => None,
            Some(Ok(k))
                if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(k.to_string())
            }
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key: 1..=128 visible ASCII bytes",
                )
            }
        };
        // A resend after a lost answer: the upload it made, not a second one.
        let since = Timestamp(
            Timestamp::now()
                .0
                .saturating_sub(KEY_WINDOW.as_millis() as u64),
        );
        let earlier = key.as_ref().and_then(|k| {
            self.uploads.lock().ok().and_then(|all| {
                all.values()
                    .find(|u| u.key.as_ref() == Some(k) && u.created >= since)
                    .cloned()
            })
        });
        if let Some(u) = earlier {
            // Read (and drop) the body first, so the answer reaches the sender.
            rsnet_common::http_util::drain(req.into_body(), self.cfg.max_bytes, IDLE).await;
            let mut v = self.view(&u);
            v["repeated"] = serde_json::json!(true);
            return json(StatusCode::ACCEPTED, &v);
        }
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > limit) {
            return too_big(n);
        }
        let id = MessageId::new();
        let part = self.dir.join(format!("{id}.part"));
        let (size, sha256) = match copy(req.into_body(), &part, limit).await {
            Ok(x) => x,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return match e {
                    CopyError::TooLong(n) => too_big(n),
                    CopyError::Body(e) => error(StatusCode::BAD_REQUEST, format!("body: {e}")),
                    CopyError::Io(e) => {
                        error(StatusCode::SERVICE_UNAVAILABLE, format!("upload copy: {e}"))
                    }
                };
            }
        };
        if let Err(e) = tokio::fs::rename(&part, self.file(&id)).await {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("upload copy: {e}"));
        }
        let now = Timestamp::now();
        let mut u = Upload {
            id,
            class,
            filename: name,
            size,
            sha256,
            state: State::Requested,
            request: MessageId::new(),
            created: now,
            updated: now,
            reason: None,
            next_at: None,
            token: None,
            expires: None,
            requests: 0,
            attempts: 0,
            resumed_from: Vec::new(),
            hash_retries: 0,
            done: None,
            key,
        };
        if let Err(e) = self.request(&mut u).await {
            let _ = tokio::fs::remove_file(self.file(&id)).await;
            let _ =
                rsnet_common::store::delete_async(&self.kv, vec![format!("{PREFIX}{id}")]).await;
            if let Ok(mut all) = self.uploads.lock() {
                all.remove(&id);
            }
            return rsnet_common::Error::from(e).response();
        }
        tracing::info!(upload = %id, size, "upload accepted");
        json(StatusCode::ACCEPTED, &self.view(&u))
    }

    /// Records and spools a new `bulk-request` for `u`.
    async fn request(&self, u: &mut Upload) -> Result<(), StoreError> {
        u.state = State::Requested;
        u.request = MessageId::new();
        u.requests += 1;
        u.updated = Timestamp::now();
        u.next_at = None;
        u.token = None;
        u.expires = None;
        u.attempts = 0;
        // The record first: a crash before the push is healed by the answer timeout.
        self.save(u).await?;
        let mut m = Message::originated(
            self.me.clone(),
            bulk::CLASS,
            Some("request"),
            Content::BulkRequest(BulkRequest {
                size: u.size,
                sha256: u.sha256.clone(),
                class: u.class.clone(),
                filename: u.filename.clone(),
            }),
        )
        .with_hop(&self.me);
        m.header.id = u.request;
        // Low: a request held back (a closed window) holds back only what is no more urgent.
        m.header.qos.precedence = 2;
        self.outbox.push(&[m]).await?;
        self.counters.requests.inc();
        self.wake.notify_one();
        Ok(())
    }

    /// Asks again for `u`, saying why in its record; on a store error the
    /// driver tries again later.
    async fn request_again(&self, mut u: Upload, why: String) {
        tracing::info!(upload = %u.id, reason = %why, "asking again for the upload");
        u.reason = Some(why);
        if let Err(e) = self.request(&mut u).await {
            tracing::warn!(upload = %u.id, error = %e, "bulk request not spooled; trying later");
            u.state = State::Denied;
            u.next_at = Some(Timestamp::now().after(Duration::from_millis(self.cfg.retry_max_ms)));
            let _ = self.save(&u).await;
        }
    }

    /// Applies the `bulk-response`s waiting in the [`BULK`] pseudo-queue
    /// (see the module docs), then removes them from it.
    pub async fn apply_pending(&self) {
        let taken = self
            .queues
            .take(BULK, usize::MAX, rsnet_common::limits::MAX_BATCH_MESSAGES)
            .await;
        let mut done = Vec::new();
        for r in &taken.records {
            let answer = wire::decode_header(&r.header)
                .map_err(|e| e.to_string())
                .and_then(|h| wire::decode_content(&r.content, h.kind).map_err(|e| e.to_string()));
            match answer {
                Ok(Content::BulkResponse(b)) => {
                    if let Err(e) = self.apply(b).await {
                        // Kept in the queue: applied at the next start.
                        tracing::warn!(message = %r.id, error = %e, "bulk response not applied");
                        continue;
                    }
                }
                Ok(_) => tracing::warn!(message = %r.id, "not a bulk-response; dropped"),
                Err(e) => {
                    tracing::warn!(message = %r.id, error = %e, "bulk response does not parse; dropped")
                }
            }
            done.push(r.id);
        }
        if !done.is_empty() {
            self.queues.ack(BULK, &done).await;
            self.wake.notify_one();
        }
    }

    async fn apply(&self, b: BulkResponse) -> Result<(), StoreError> {
        let found = self.uploads.lock().ok().and_then(|all| {
            all.values()
                .find(|u| u.request == b.request && u.state == State::Requested)
                .cloned()
        });
        let Some(mut u) = found else {
            tracing::info!(request = %b.request, "answer to a request no upload waits for; ignored");
            return Ok(());
        };
        let now = Timestamp::now();
        u.updated = now;
        let grant = b
            .token
            .as_deref()
            .map(Token::parse)
            .and_then(Result::ok)
            .filter(|t| b.url.as_deref() == Some(t.path().as_str()));
        match (b.granted, grant) {
            (true, Some(token)) => {
                u.state = State::Granted;
                u.token = Some(token.as_str().to_string());
                u.expires = b.expires;
                u.reason = None;
                u.next_at = None;
                tracing::info!(upload = %u.id, "upload granted");
            }
            (true, None) => {
                u.state = State::Denied;
                u.reason = Some("the grant's token or URL is malformed".into());
                u.next_at = Some(now.after(Duration::from_millis(self.cfg.retry_max_ms)));
            }
            (false, _) => {
                let why = b.reason.unwrap_or_else(|| "denied".into());
                match b.retry_after {
                    Some(after) => {
                        tracing::info!(upload = %u.id, reason = %why, "upload denied for now");
                        u.state = State::Denied;
                        u.next_at = Some(now.after(after));
                    }
                    None => {
                        tracing::warn!(upload = %u.id, reason = %why, "upload denied for good");
                        u.state = State::Failed;
                        self.counters.failed.inc();
                        let _ = tokio::fs::remove_file(self.file(&u.id)).await;
                    }
                }
                u.reason = Some(why);
            }
        }
        self.save(&u).await
    }

    /// Moves every upload along until `shutdown`: asks again where no
    /// answer came or a denial's time is up, starts granted transfers.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let next = self.step().await;
            let nap = next
                .map(|t| Duration::from_millis(t.0.saturating_sub(Timestamp::now().0)))
                .unwrap_or(Duration::from_secs(30))
                .min(Duration::from_secs(30));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// One pass of [`Bulk::run`]; the earliest time something is due.
    async fn step(self: &Arc<Self>) -> Option<Timestamp> {
        let now = Timestamp::now();
        let open: Vec<Upload> = self
            .uploads
            .lock()
            .map(|all| {
                all.values()
                    .filter(|u| !matches!(u.state, State::Done | State::Failed))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut next: Option<Timestamp> = None;
        let mut due = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
        let answer_timeout = Duration::from_secs(self.cfg.answer_timeout_s);
        for u in open {
            match u.state {
                State::Requested => {
                    let at = u.updated.after(answer_timeout);
                    if now >= at {
                        self.request_again(u, "no answer to the bulk request".into())
                            .await;
                    } else {
                        due(at);
                    }
                }
                State::Denied => {
                    let at = u.next_at.unwrap_or(now);
                    if now >= at {
                        let why = u.reason.clone().unwrap_or_default();
                        self.request_again(u, why).await;
                    } else {
                        due(at);
                    }
                }
                State::Granted => {
                    let running = self
                        .sending
                        .lock()
                        .map(|s| s.contains_key(&u.id))
                        .unwrap_or(true);
                    if running {
                        continue;
                    }
                    if u.expires.is_some_and(|e| e <= now) {
                        self.request_again(u, "the grant expired".into()).await;
                        continue;
                    }
                    let at = u.next_at.unwrap_or(now);
                    if now < at {
                        due(at);
                        continue;
                    }
                    let progress = {
                        let Ok(mut s) = self.sending.lock() else {
                            continue;
                        };
                        if s.contains_key(&u.id) || s.len() >= self.cfg.max_concurrent {
                            continue;
                        }
                        let p = Arc::new(AtomicU64::new(0));
                        s.insert(u.id, p.clone());
                        p
                    };
                    let me = self.clone();
                    tokio::spawn(async move { me.transfer(u, progress).await });
                }
                State::Done | State::Failed => {}
            }
        }
        next
    }

    /// Runs one transfer attempt of `u` and records how it ended.
    async fn transfer(self: Arc<Self>, mut u: Upload, progress: Arc<AtomicU64>) {
        let outcome = self.attempt(&mut u, &progress).await;
        let id = u.id;
        let now = Timestamp::now();
        u.updated = now;
        match outcome {
            Outcome::Done => {
                u.state = State::Done;
                u.done = Some(now);
                u.token = None;
                u.reason = None;
                u.next_at = None;
                self.counters.done.inc();
                tracing::info!(upload = %u.id, size = u.size, "upload stored at the appserver");
                if let Err(e) = self.save(&u).await {
                    tracing::warn!(upload = %u.id, error = %e, "upload state not saved; it is resent");
                } else {
                    let _ = tokio::fs::remove_file(self.file(&u.id)).await;
                }
            }
            Outcome::Retry(why) => {
                u.attempts += 1;
                let mut b = Backoff::new(
                    Duration::from_millis(self.cfg.retry_base_ms),
                    Duration::from_millis(self.cfg.retry_max_ms),
                );
                let mut delay = b.next_delay();
                for _ in 1..u.attempts.min(16) {
                    delay = b.next_delay();
                }
                tracing::info!(upload = %u.id, reason = %why, ?delay, "transfer interrupted; resuming later");
                u.reason = Some(why);
                u.next_at = Some(now.after(delay));
                let _ = self.save(&u).await;
            }
            Outcome::Rerequest(why) => self.request_again(u, why).await,
            Outcome::Disputed(why) if u.hash_retries < MAX_HASH_RETRIES => {
                u.hash_retries += 1;
                self.request_again(u, why).await;
            }
            Outcome::Disputed(why) | Outcome::Fail(why) => {
                tracing::warn!(upload = %u.id, reason = %why, "upload failed");
                u.state = State::Failed;
                u.reason = Some(why);
                self.counters.failed.inc();
                let _ = self.save(&u).await;
                let _ = tokio::fs::remove_file(self.file(&u.id)).await;
            }
        }
        if let Ok(mut s) = self.sending.lock() {
            s.remove(&id);
        }
        self.wake.notify_one();
    }

    async fn attempt(&self, u: &mut Upload, progress: &Arc<AtomicU64>) -> Outcome {
        let Some(token) = u.token.as_deref().and_then(|t| Token::parse(t).ok()) else {
            return Outcome::Rerequest("no usable token".into());
        };
        let path = token.path();
        let timeout = Duration::from_secs(10);
        // Up to a few offset corrections before backing off.
        for _ in 0..3 {
            let head = match self
                .link
                .stream(Method::HEAD, &path, &[], bulk::empty(), timeout)
                .await
            {
                Ok(r) => r,
                Err(e) => return Outcome::Retry(e.to_string()),
            };
            let status = head.status();
            if let Some(o) = token_refused(status, "") {
                return o;
            }
            let Some(held) = bulk::held(head.headers()).filter(|_| status == StatusCode::OK) else {
                return Outcome::Retry(format!("HEAD answered {status}"));
            };
            if head
                .headers()
                .get(bulk::UPLOAD_COMPLETE)
                .is_some_and(|v| v == "true")
            {
                // Stored before this proxy heard the 201 (a crash, a cut).
                return Outcome::Done;
            }
            if held > u.size {
                return Outcome::Rerequest(format!(
                    "the receiver holds {held} of {} bytes",
                    u.size
                ));
            }
            if held > 0 {
                u.resumed_from.push(held);
                if u.resumed_from.len() > 32 {
                    u.resumed_from.remove(0);
                }
            }
            progress.store(held, Ordering::Relaxed);
            let body = match bulk::file_body(
                &self.file(&u.id),
                held,
                progress.clone(),
                self.cfg.max_rate_bytes_s,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => return Outcome::Fail(format!("the upload's copy cannot be read: {e}")),
            };
            let before = progress.load(Ordering::Relaxed);
            let headers = [
                (UPLOAD_OFFSET, held.to_string()),
                (
                    http::header::CONTENT_TYPE.as_str(),
                    "application/octet-stream".into(),
                ),
            ];
            let put = self
                .link
                .stream(Method::PUT, &path, &headers, body, timeout);
            let resp = match watch_stall(put, progress).await {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    self.counters
                        .sent
                        .add(progress.load(Ordering::Relaxed) - before);
                    return Outcome::Retry(e.to_string());
                }
                None => return Outcome::Retry(format!("no bytes moved for {STALL:?}")),
            };
            self.counters
                .sent
                .add(progress.load(Ordering::Relaxed).saturating_sub(before));
            let status = resp.status();
            let why =
                rsnet_common::http_util::error_text(resp.into_body(), Duration::from_secs(10))
                    .await;
            match status {
                StatusCode::CREATED => return Outcome::Done,
                StatusCode::ACCEPTED | StatusCode::CONFLICT => continue,
                StatusCode::UNPROCESSABLE_ENTITY => return Outcome::Disputed(why),
                StatusCode::PAYLOAD_TOO_LARGE => return Outcome::Fail(why),
                s => {
                    if let Some(o) = token_refused(s, &why) {
                        return o;
                    }
                    return Outcome::Retry(format!("{s}: {why}"));
                }
            }
        }
        Outcome::Retry("the receiver's offset kept changing".into())
    }

    fn view(&self, u: &Upload) -> serde_json::Value {
        let sending = self
            .sending
            .lock()
            .ok()
            .and_then(|s| s.get(&u.id).map(|p| p.load(Ordering::Relaxed)));
        let sent = match u.state {
            State::Done => u.size,
            _ => sending.unwrap_or(0),
        };
        serde_json::json!({
            "id": u.id.to_string(),
            "class": u.class,
            "filename": u.filename,
            "size": u.size,
            "sha256": u.sha256,
            "state": u.state,
            "transferring": sending.is_some(),
            "sent": sent,
            "reason": u.reason,
            "request": u.request.to_string(),
            "requests": u.requests,
            "attempts": u.attempts,
            "resumed_from": u.resumed_from,
            "created": u.created.to_rfc3339(),
            "updated": u.updated.to_rfc3339(),
            "next_at": u.next_at.map(Timestamp::to_rfc3339),
            "expires": u.expires.map(Timestamp::to_rfc3339),
            "done": u.done.map(Timestamp::to_rfc3339),
        })
    }

    /// `GET /v1/bulk/ID`.
    pub fn status(&self, id: &str) -> Response<Body> {
        let Ok(id) = id.parse::<MessageId>() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not an upload ID"),
            );
        };
        match self.get(&id) {
            Some(u) => json(StatusCode::OK, &self.view(&u)),
            None => error(StatusCode::NOT_FOUND, format!("no upload {id}")),
        }
    }

    /// `GET /v1/bulk`: every upload, oldest first.
    pub fn list(&self) -> Response<Body> {
        let all: Vec<Upload> = self
            .uploads
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default();
        let mut views: Vec<_> = all.iter().map(|u| (u.created, self.view(u))).collect();
        views.sort_by_key(|(c, _)| *c);
        let views: Vec<_> = views.into_iter().map(|(_, v)| v).collect();
        json(StatusCode::OK, &serde_json::json!({ "uploads": views }))
    }
}

/// What a token refusal means for the sender, if `status` is one.
fn token_refused(status: StatusCode, why: &str) -> Option<Outcome> {
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN => Some(
            Outcome::Rerequest(format!("the parent refused the token ({status}) {why}")),
        ),
        StatusCode::BAD_REQUEST => Some(Outcome::Retry(format!("{status}: {why}"))),
        _ => None,
    }
}

/// Runs `put`, giving up when `progress` has not moved for [`STALL`].
async fn watch_stall<F, T>(put: F, progress: &AtomicU64) -> Option<T>
where
    F: std::future::Future<Output = T>,
{
    let mut put = std::pin::pin!(put);
    let mut last = progress.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    let tick = Duration::from_secs(5);
    loop {
        tokio::select! {
            r = &mut put => return Some(r),
            _ = tokio::time::sleep(tick) => {
                let now = progress.load(Ordering::Relaxed);
                if now == last {
                    quiet += tick;
                    if quiet >= STALL {
                        return None;
                    }
                } else {
                    last = now;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
}

enum CopyError {
    TooLong(u64),
    Body(std::io::Error),
    Io(std::io::Error),
}

/// Streams `body` into `part` (at most `limit` bytes) with its SHA-256;
/// size and hash after fsync.
async fn copy(
    body: Incoming,
    part: &std::path::Path,
    limit: u64,
) -> Result<(u64, String), CopyError> {
    let mut f = tokio::fs::File::create(part).await.map_err(CopyError::Io)?;
    let mut body = std::pin::pin!(stream_body(body, IDLE));
    let (mut size, mut h) = (0u64, Sha256::new());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(CopyError::Body)?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(CopyError::TooLong(size));
        }
        h.update(&chunk);
        f.write_all(&chunk).await.map_err(CopyError::Io)?;
    }
    f.sync_all().await.map_err(CopyError::Io)?;
    Ok((size, bulk::hex(&h.finalize())))
}
