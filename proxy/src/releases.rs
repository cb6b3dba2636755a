//! Releases at the proxy (DESIGN.md §7): checked, fetched, kept, handed
//! to local integrators.
//!
//! ```text
//! offer (back-channel) ─► Inbox: ^release pseudo-queue (the reply's one commit)
//! Releases::run ─► take an offer
//!   ├ signature checked with [releases] public_key ─ bad: report `failed`, dropped
//!   ├ report `offered` (first sight)
//!   ├ room in [releases] capacity_bytes? ─ no: report `rejected` (why); taken
//!   │   again when its lease ends ([inbox] lease_s)
//!   ├ fetch from the parent (Range resume), `fetching` reported every few
//!   │   seconds; size and SHA-256 checked ─ bad: report `failed`, discarded
//!   └ installed as the item's current version (the previous one kept, the
//!     one before removed) ─ report `delivered` ─ removed from ^release
//! GET /v1/releases ─► each item's current and previous version, with paths
//! POST /v1/releases/ID/applied|failed ─► report `applied` / `failed`
//! cancellation ─► offers of that release dropped (reported `failed: cancelled`)
//! ```
//!
//! An offer of the version kept as previous (the operator pinned the item
//! back to it: a rollback) makes it current again without a download.
//!
//! Nothing is reported delivered that was not checked against a manifest
//! signed with the release key: no MLM on the path can substitute a file.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use rsnet_common::backchannel::Queues;
use rsnet_common::download::{self, FetchError};
use rsnet_common::envelope::wire;
use rsnet_common::forward::Outbox;
use rsnet_common::http_util::{error, json, Body};
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::link::Link;
use rsnet_common::model::{Direction, Timestamp};
use rsnet_common::release::{self, DestState, Manifest, ReleasePublicKey, Report};
use rsnet_common::server::Shutdown;
use rsnet_common::store::{put_async, KvStore};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// KV prefix of items: `proxy-release/ITEM`.
const PREFIX: &str = "proxy-release/";
/// KV prefix of cancelled releases.
const CANCELLED: &str = "proxy-release-cancelled/";
/// A download chunk must arrive within this of the last one.
const IDLE: Duration = Duration::from_secs(60);
/// How often `fetching` is reported during a download.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// `[releases]`: what the proxy accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleasesConfig {
    /// The release public key (`rsnet-certs init` writes `PKI/release.pub`).
    /// Without it every offer is rejected (and retried): nothing unchecked
    /// is ever delivered.
    pub public_key: Option<PathBuf>,
    /// Bytes the kept versions (current and previous of each item) may
    /// take, with the one being fetched. Default 4 GiB.
    pub capacity_bytes: u64,
    /// Download bandwidth cap in bytes per second; 0 for none. Default 0.
    pub max_rate_bytes_s: u64,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        ReleasesConfig {
            public_key: None,
            capacity_bytes: 4 << 30,
            max_rate_bytes_s: 0,
        }
    }
}

/// One kept version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    /// The manifest it was checked against.
    pub manifest: Manifest,
    /// Where the file is.
    pub path: PathBuf,
    /// When it was delivered (RFC 3339).
    pub delivered: String,
    /// `delivered`, `applied` or `failed` (as an integrator reported).
    pub state: DestState,
    /// Why it failed to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An item's kept versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Item {
    /// The newest delivered.
    pub current: Option<Version>,
    /// The one before.
    pub previous: Option<Version>,
}

/// See the module docs.
pub struct Releases {
    me: ComponentId,
    key: Option<ReleasePublicKey>,
    capacity: u64,
    max_rate: u64,
    dir: PathBuf,
    kv: Arc<dyn KvStore>,
    link: Arc<Link>,
    outbox: Arc<Outbox>,
    queues: Arc<Queues>,
    wake: Notify,
    /// Releases `offered` was reported for (since start).
    seen: Mutex<HashSet<MessageId>>,
}

impl Releases {
    /// Over `data_dir/releases`.
    ///
    /// # Errors
    /// An unreadable public key, a directory that cannot be made.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        me: ComponentId,
        cfg: &ReleasesConfig,
        data_dir: &std::path::Path,
        kv: Arc<dyn KvStore>,
        link: Arc<Link>,
        outbox: Arc<Outbox>,
        queues: Arc<Queues>,
    ) -> rsnet_common::Result<Arc<Releases>> {
        let key = rsnet_common::release::load_public(cfg.public_key.as_deref())
            .map_err(|e| e.to_string())?;
        let dir = data_dir.join("releases");
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Releases {
            me,
            key,
            capacity: cfg.capacity_bytes,
            max_rate: cfg.max_rate_bytes_s,
            dir,
            kv,
            link,
            outbox,
            queues,
            wake: Notify::new(),
            seen: Mutex::new(HashSet::new()),
        }))
    }

    /// Offers are waiting (called after the inbox's commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn items(&self) -> Vec<(String, Item)> {
        self.kv
            .list(PREFIX)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    k.trim_start_matches(PREFIX).to_string(),
                    serde_json::from_slice(&v).ok()?,
                ))
            })
            .collect()
    }

    fn used(&self) -> u64 {
        self.items()
            .iter()
            .flat_map(|(_, i)| [&i.current, &i.previous])
            .flatten()
            .map(|v| v.manifest.size)
            .sum()
    }

    async fn report(
        &self,
        id: &MessageId,
        state: DestState,
        bytes: Option<u64>,
        reason: Option<String>,
    ) {
        let m = Report {
            release: id.to_string(),
            state,
            bytes,
            reason,
        }
        .message(&self.me);
        if let Err(e) = self.outbox.push(&[m]).await {
            tracing::warn!(release = %id, error = %e, "release report not spooled");
        }
    }

    /// Takes offers from the `^release` pseudo-queue until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let mut taken = self.queues.take(release::PENDING, usize::MAX, 16).await;
            // Cancellations first: an offer taken with its cancellation is dropped.
            taken.records.sort_by_key(|r| {
                !wire::decode_header(&r.header).is_ok_and(|h| release::is_cancel(&h))
            });
            let mut done = Vec::new();
            for r in &taken.records {
                if self.handle(r).await {
                    done.push(r.id);
                }
            }
            if !done.is_empty() {
                self.queues.ack(release::PENDING, &done).await;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// One offer; true once it is settled (delivered, refused for good, or
    /// never usable), false to take it again later.
    async fn handle(&self, r: &rsnet_common::store::SpoolRecord) -> bool {
        let decoded = wire::decode_header(&r.header)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                let c = wire::decode_content(&r.content, h.kind).map_err(|e| e.to_string())?;
                Ok((h, c))
            });
        if let Ok((h, c)) = &decoded {
            if release::is_cancel(h) {
                if let Some(id) = release::cancel_of(c) {
                    tracing::info!(release = %id, "release cancelled");
                    if put_async(&self.kv, vec![(format!("{CANCELLED}{id}"), Vec::new())])
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    let _ = tokio::fs::remove_file(self.dir.join(format!("{id}.part"))).await;
                }
                return true;
            }
        }
        let offer =
            decoded.and_then(|(h, c)| Ok((h, release::offer_of(&c).map_err(|e| e.to_string())?)));
        let (header, (id, signed)) = match offer {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(message = %r.id, error = %e, "not a release offer; dropped");
                return true;
            }
        };
        if !matches!(&header.direction, Direction::Destination(d) if d.ids.contains(&self.me)) {
            tracing::warn!(release = %id, "release offer not addressed to this proxy; dropped");
            return true;
        }
        if matches!(self.kv.get(&format!("{CANCELLED}{id}")), Ok(Some(_))) {
            self.report(&id, DestState::Failed, None, Some("cancelled".into()))
                .await;
            return true;
        }
        let Some(key) = &self.key else {
            self.report(
                &id,
                DestState::Rejected,
                None,
                Some("this proxy has no release public key ([releases] public_key)".into()),
            )
            .await;
            return false;
        };
        let manifest = match key.verify(&signed) {
            Ok(m) => m.clone(),
            Err(e) => {
                tracing::warn!(release = %id, error = %e, "release refused");
                self.report(&id, DestState::Failed, None, Some(e.to_string()))
                    .await;
                return true;
            }
        };
        let item_key = format!("{PREFIX}{}", manifest.item);
        let mut item: Item = self
            .kv
            .get(&item_key)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        let is = |v: &Option<Version>| v.as_ref().is_some_and(|v| v.manifest.id == manifest.id);
        if is(&item.current) {
            self.report(&id, DestState::Delivered, None, None).await;
            return true;
        }
        if is(&item.previous) {
            // Pinned back (rollback): the kept previous version is current again.
            std::mem::swap(&mut item.current, &mut item.previous);
            if let Some(v) = &mut item.current {
                v.state = DestState::Delivered;
                v.reason = None;
            }
            if put_async(
                &self.kv,
                vec![(item_key, serde_json::to_vec(&item).unwrap_or_default())],
            )
            .await
            .is_err()
            {
                return false;
            }
            tracing::info!(release = %id, item = %manifest.item, "rolled back to the previous version");
            self.report(&id, DestState::Delivered, None, None).await;
            return true;
        }
        let first = self.seen.lock().map(|mut s| s.insert(id)).unwrap_or(false);
        if first {
            self.report(&id, DestState::Offered, None, None).await;
        }
        // What installing it frees: the previous version goes.
        let freed = item.previous.as_ref().map_or(0, |v| v.manifest.size);
        let used = self.used().saturating_sub(freed);
        if used.saturating_add(manifest.size) > self.capacity {
            let why = format!(
                "not enough room: kept releases hold {used} bytes; {} more would pass the {} allowed",
                manifest.size, self.capacity
            );
            tracing::info!(release = %id, reason = %why, "release rejected for now");
            self.report(&id, DestState::Rejected, None, Some(why)).await;
            return false;
        }
        let item_dir = self.dir.join(&manifest.item);
        if let Err(e) = tokio::fs::create_dir_all(&item_dir).await {
            self.report(
                &id,
                DestState::Rejected,
                None,
                Some(format!("release directory: {e}")),
            )
            .await;
            return false;
        }
        let part = self.dir.join(format!("{id}.part"));
        let dest = item_dir.join(format!("{id}.bin"));
        let progress = AtomicU64::new(0);
        let path = release::file_path(&id);
        let d = download::Download {
            path: &path,
            manifest: &manifest,
            part: &part,
            dest: &dest,
            idle: IDLE,
            max_rate: self.max_rate,
        };
        let result = {
            let fetch = download::fetch(&self.link, &d, &progress);
            let mut fetch = std::pin::pin!(fetch);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tokio::select! {
                    r = &mut fetch => break r,
                    _ = tick.tick() => {
                        let n = progress.load(Ordering::Relaxed);
                        self.report(&id, DestState::Fetching, Some(n), None).await;
                    }
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(FetchError::Mismatch(e)) => {
                tracing::warn!(release = %id, error = %e, "release file refused");
                self.report(&id, DestState::Failed, None, Some(e)).await;
                return true;
            }
            Err(e) => {
                tracing::info!(release = %id, error = %e, "release download interrupted; resumed later");
                return false;
            }
        }
        let old = item.previous.take();
        item.previous = item.current.take();
        item.current = Some(Version {
            manifest: manifest.clone(),
            path: dest,
            delivered: Timestamp::now().to_rfc3339(),
            state: DestState::Delivered,
            reason: None,
        });
        if let Err(e) = put_async(
            &self.kv,
            vec![(item_key, serde_json::to_vec(&item).unwrap_or_default())],
        )
        .await
        {
            tracing::warn!(release = %id, error = %e, "release not recorded; fetched again later");
            return false;
        }
        if let Some(old) = old {
            let _ = tokio::fs::remove_file(&old.path).await;
        }
        tracing::info!(release = %id, item = %manifest.item, version = %manifest.version, "release delivered");
        self.report(&id, DestState::Delivered, None, None).await;
        true
    }

    /// `GET /v1/releases`: each item's kept versions.
    pub fn list(&self) -> http::Response<Body> {
        let items: Vec<serde_json::Value> = self
            .items()
            .into_iter()
            .map(|(name, i)| serde_json::json!({ "item": name, "current": i.current, "previous": i.previous }))
            .collect();
        json(StatusCode::OK, &serde_json::json!({ "items": items }))
    }

    /// `POST /v1/releases/ID/applied` or `…/failed` (body: an optional
    /// `{"reason": "…"}`): an integrator's result, reported upward.
    pub async fn applied(
        &self,
        id: &str,
        ok: bool,
        reason: Option<String>,
    ) -> http::Response<Body> {
        let Ok(rid) = id.parse::<MessageId>() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not a release ID"),
            );
        };
        let found = self.items().into_iter().find_map(|(name, i)| {
            let is = |v: &Option<Version>| v.as_ref().is_some_and(|v| v.manifest.id == id);
            (is(&i.current) || is(&i.previous)).then_some((name, i))
        });
        let Some((name, mut item)) = found else {
            return error(StatusCode::NOT_FOUND, format!("no delivered release {id}"));
        };
        let state = if ok {
            DestState::Applied
        } else {
            DestState::Failed
        };
        for v in [&mut item.current, &mut item.previous]
            .into_iter()
            .flatten()
        {
            if v.manifest.id == id {
                v.state = state;
                v.reason = reason.clone();
            }
        }
        if let Err(e) = put_async(
            &self.kv,
            vec![(
                format!("{PREFIX}{name}"),
                serde_json::to_vec(&item).unwrap_or_default(),
            )],
        )
        .await
        {
            return rsnet_common::Error::from(e).response();
        }
        self.report(&rid, state, None, reason).await;
        json(
            StatusCode::OK,
            &serde_json::json!({ "release": id, "state": state }),
        )
    }
}
