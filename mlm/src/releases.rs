//! Releases at an MLM (DESIGN.md §7): fetched **once** from the parent,
//! checked, then offered to the children below, who fetch from here.
//!
//! ```text
//! offer (back-channel) ─► Downlink: ^release pseudo-queue, in the reply's
//!                         one commit (received mark), acked upward
//! ReleaseCache::run ─► take an offer ─► room in [releases] capacity_bytes?
//!     ─► fetch /rs/v1/releases/ID/file from the parent (resumed with
//!        Range; size and SHA-256 checked against the manifest) into
//!        DATA/releases/ID.bin ─► record which children get it
//!     ─► queue one copy of the offer per child (the destinations behind
//!        it) ─► report `cached` upward ─► remove it from ^release
//! child ─► GET /rs/v1/releases/ID/file (Range) ─► only a child it was offered to
//! ```
//!
//! The MLM does not check the manifest's signature: the destinations do,
//! and it cannot be forged here. An offer whose fetch fails stays in
//! `^release` and is taken again when its lease ends (`[backchannel]
//! lease_ms`). The cached copy is removed `[releases] keep_s` after every
//! destination it was offered to has reported delivered, applied or failed
//! ([`ReleaseWatch`] sees the reports pass upward; the wait lets the next
//! stage of a staged release reuse the copy), or at once when the release
//! is cancelled (the cancellation is passed on below like any back-channel
//! message).
//!
//! A release of kind `config` addressed to the MLM itself carries its
//! rules: the MLM checks the manifest's signature (`[releases] public_key`),
//! fetches and checks the file like any other, then checks the rules in it
//! and puts them in force (written over its `rules_file`), reporting
//! `applied`, or `failed` with the reason (a bad signature, a mistake in
//! the rules: the rules in force stay).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rsnet_common::backchannel::BackChannel;
use rsnet_common::download::{self, FetchError};
use rsnet_common::envelope::wire;
use rsnet_common::forward::Outbox;
use rsnet_common::http_util::{error, Body};
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::link::Link;
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::Direction;
use rsnet_common::release::{self, DestState, Report};
use rsnet_common::server::{Peer, Shutdown};
use rsnet_common::store::{put_async, KvStore};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// KV prefix of cached releases.
const PREFIX: &str = "mlm-release/";
/// A download chunk must arrive within this of the last one.
const IDLE: Duration = Duration::from_secs(60);

/// `[releases]`: the MLM's cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleasesConfig {
    /// Bytes the cached release files may take. Default 16 GiB.
    pub capacity_bytes: u64,
    /// How long a copy is kept once every destination it was offered to
    /// has reported a final state, in seconds (a staged release offers the
    /// next stage later). Default 86400.
    pub keep_s: u64,
    /// The release public key, for `config` releases addressed to the MLM
    /// itself (its rules). Without it such a release fails, named.
    pub public_key: Option<PathBuf>,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        ReleasesConfig {
            capacity_bytes: 16 << 30,
            keep_s: 86_400,
            public_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    size: u64,
    children: Vec<ComponentId>,
    /// Destinations below that have not reported a final state yet.
    #[serde(default)]
    waiting: Vec<ComponentId>,
    /// When `waiting` became empty (ms since the epoch).
    #[serde(default)]
    settled: Option<u64>,
}

/// KV prefix of cancelled releases.
const CANCELLED: &str = "mlm-release-cancelled/";

/// See the module docs.
pub struct ReleaseCache {
    me: ComponentId,
    cfg: ReleasesConfig,
    dir: PathBuf,
    kv: Arc<dyn KvStore>,
    link: Arc<Link>,
    backchannel: Arc<BackChannel>,
    outbox: Arc<Outbox>,
    wake: Notify,
    served: Counter,
    fetched: Counter,
    settle: tokio::sync::Mutex<()>,
    key: Option<release::ReleasePublicKey>,
    rules: Arc<rsnet_common::pipeline::rules::Rules>,
}

impl ReleaseCache {
    /// Over `data_dir/releases`.
    ///
    /// # Errors
    /// A directory that cannot be made.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        me: ComponentId,
        cfg: &ReleasesConfig,
        data_dir: &std::path::Path,
        kv: Arc<dyn KvStore>,
        link: Arc<Link>,
        backchannel: Arc<BackChannel>,
        outbox: Arc<Outbox>,
        rules: Arc<rsnet_common::pipeline::rules::Rules>,
        metrics: &Registry,
    ) -> rsnet_common::Result<Arc<ReleaseCache>> {
        let key = release::load_public(cfg.public_key.as_deref()).map_err(|e| e.to_string())?;
        let dir = data_dir.join("releases");
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(ReleaseCache {
            me,
            cfg: cfg.clone(),
            dir,
            kv,
            link,
            backchannel,
            outbox,
            wake: Notify::new(),
            served: metrics.counter(
                "rsnet_release_served_bytes_total",
                "release file bytes served to children",
            ),
            fetched: metrics.counter(
                "rsnet_release_fetched_total",
                "release files fetched from the parent and checked",
            ),
            settle: tokio::sync::Mutex::new(()),
            key,
            rules,
        }))
    }

    /// Why a release for the MLM itself cannot be applied before it is
    /// fetched (its signature, its kind), if it cannot.
    fn refuse_own(&self, signed: &release::SignedManifest) -> Option<String> {
        let Some(key) = &self.key else {
            return Some(format!(
                "{} has no release public key ([releases] public_key)",
                self.me
            ));
        };
        if let Err(e) = key.verify(signed) {
            return Some(e.to_string());
        }
        (signed.manifest.kind != release::ReleaseKind::Config).then(|| {
            format!(
                "{} applies config releases (its rules) only, not {:?}",
                self.me, signed.manifest.kind
            )
        })
    }

    /// Puts the rules in the fetched, checked file `file` in force.
    async fn apply_own(&self, file: &std::path::Path) -> Result<usize, String> {
        let text = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("release file: {e}"))?;
        let rules = self.rules.clone();
        let r = tokio::task::spawn_blocking(move || rules.install(&text)).await;
        r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }

    /// Offers are waiting (called after the downlink's commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn cached(&self, id: &MessageId) -> Option<Cached> {
        let v = self.kv.get(&format!("{PREFIX}{id}")).ok()??;
        serde_json::from_slice(&v).ok()
    }

    fn used(&self) -> u64 {
        self.kv
            .list(PREFIX)
            .unwrap_or_default()
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice::<Cached>(v).ok())
            .map(|c| c.size)
            .sum()
    }

    /// Takes offers from the `^release` pseudo-queue until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            self.step().await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Removes copies settled more than `keep_s` ago.
    async fn sweep(&self) {
        let now = rsnet_common::model::Timestamp::now().0;
        let keep = self.cfg.keep_s.saturating_mul(1000);
        let due: Vec<MessageId> = self
            .kv
            .list(PREFIX)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| {
                let c: Cached = serde_json::from_slice(&v).ok()?;
                let at = c.settled?;
                (now.saturating_sub(at) >= keep)
                    .then(|| k.trim_start_matches(PREFIX).parse().ok())?
            })
            .collect();
        for id in due {
            self.remove(&id).await;
            tracing::info!(release = %id, "every destination below has it; cached copy removed");
        }
    }

    async fn step(&self) {
        self.sweep().await;
        let queues = self.backchannel.queues();
        let taken = queues.take(release::PENDING, usize::MAX, 64).await;
        let mut done = Vec::new();
        for r in &taken.records {
            match self.handle(r).await {
                Ok(()) => done.push(r.id),
                Err(e) => {
                    tracing::warn!(message = %r.id, error = %e, "release offer not passed on yet; taken again when its lease ends")
                }
            }
        }
        if !done.is_empty() {
            queues.ack(release::PENDING, &done).await;
        }
    }

    /// One offer: fetch (unless cached), then offer below. `Ok` also for an
    /// offer that can never be passed on (logged), so it leaves the queue.
    async fn handle(&self, r: &rsnet_common::store::SpoolRecord) -> Result<(), String> {
        let header = match wire::decode_header(&r.header) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(message = %r.id, error = %e, "release offer header does not parse; dropped");
                return Ok(());
            }
        };
        let offer = wire::decode_content(&r.content, header.kind)
            .map_err(|e| e.to_string())
            .and_then(|c| release::offer_of(&c).map_err(|e| e.to_string()));
        let (id, signed) = match offer {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(message = %r.id, error = %e, "not a release offer; dropped");
                return Ok(());
            }
        };
        let Direction::Destination(d) = &header.direction else {
            return Ok(());
        };
        if matches!(self.kv.get(&format!("{CANCELLED}{id}")), Ok(Some(_))) {
            tracing::info!(release = %id, "offer of a cancelled release; dropped");
            return Ok(());
        }
        let below: Vec<ComponentId> = d.ids.iter().filter(|x| **x != self.me).cloned().collect();
        let mut mine = below.len() < d.ids.len();
        if mine {
            if let Some(why) = self.refuse_own(&signed) {
                tracing::warn!(release = %id, reason = %why, "release for this MLM refused");
                self.report(&id, DestState::Failed, Some(why)).await;
                mine = false;
                if below.is_empty() {
                    return Ok(());
                }
            }
        }
        let file = self.dir.join(format!("{id}.bin"));
        if self.cached(&id).is_none() || !file.exists() {
            let size = signed.manifest.size;
            let used = self.used();
            if used.saturating_add(size) > self.cfg.capacity_bytes {
                let why = format!(
                    "{} holds {used} bytes of releases; {size} more would pass its {} bytes",
                    self.me, self.cfg.capacity_bytes
                );
                self.report(&id, DestState::Rejected, Some(why.clone()))
                    .await;
                return Err(why);
            }
            let part = self.dir.join(format!("{id}.part"));
            let progress = AtomicU64::new(0);
            let path = release::file_path(&id);
            let d = download::Download {
                path: &path,
                manifest: &signed.manifest,
                part: &part,
                dest: &file,
                idle: IDLE,
                max_rate: 0,
            };
            match download::fetch(&self.link, &d, &progress).await {
                Ok(()) => self.fetched.inc(),
                Err(FetchError::Mismatch(e)) => {
                    // The parent's copy is not the manifest's: nothing below may get it.
                    self.report(&id, DestState::Failed, Some(e.clone())).await;
                    return Err(e);
                }
                Err(e) => return Err(e.to_string()),
            }
            tracing::info!(release = %id, size, "release fetched and checked");
        }
        if mine {
            match self.apply_own(&file).await {
                Ok(n) => {
                    tracing::info!(release = %id, rules = n, "config release applied: new rules in force");
                    self.report(&id, DestState::Applied, None).await;
                }
                Err(why) => {
                    tracing::warn!(release = %id, reason = %why, "config release refused; the rules in force stay");
                    self.report(&id, DestState::Failed, Some(why)).await;
                }
            }
            if below.is_empty() {
                let _ = tokio::fs::remove_file(&file).await;
                return Ok(());
            }
        }
        let routed = self.backchannel.route(&below);
        let mut record = self.cached(&id).unwrap_or(Cached {
            size: signed.manifest.size,
            children: Vec::new(),
            waiting: Vec::new(),
            settled: None,
        });
        record.settled = None;
        for c in routed.copies.keys() {
            if !record.children.contains(c) {
                record.children.push(c.clone());
            }
        }
        for dest in routed.copies.values().flatten() {
            if !record.waiting.contains(dest) {
                record.waiting.push(dest.clone());
            }
        }
        put_async(
            &self.kv,
            vec![(
                format!("{PREFIX}{id}"),
                serde_json::to_vec(&record).unwrap_or_default(),
            )],
        )
        .await
        .map_err(|e| e.to_string())?;
        let push = self.backchannel.copies(&header, r.content.clone(), &routed);
        let offered = self
            .backchannel
            .queues()
            .offer(push, None)
            .await
            .map_err(|e| e.to_string())?;
        self.backchannel.queued(&offered);
        self.report(&id, DestState::Cached, None).await;
        Ok(())
    }

    /// Removes the cached copy of `id` (and its record).
    async fn remove(&self, id: &MessageId) {
        let _ = tokio::fs::remove_file(self.dir.join(format!("{id}.bin"))).await;
        let _ = tokio::fs::remove_file(self.dir.join(format!("{id}.part"))).await;
        if let Err(e) =
            rsnet_common::store::delete_async(&self.kv, vec![format!("{PREFIX}{id}")]).await
        {
            tracing::warn!(release = %id, error = %e, "cached release record not removed");
        }
    }

    /// Release `id` was cancelled: its copy goes, and offers of it are dropped.
    pub async fn cancelled(&self, id: MessageId) {
        if let Err(e) = put_async(&self.kv, vec![(format!("{CANCELLED}{id}"), Vec::new())]).await {
            tracing::warn!(release = %id, error = %e, "cancellation not recorded");
        }
        self.remove(&id).await;
        tracing::info!(release = %id, "release cancelled; cached copy removed");
    }

    /// Destinations below reported final states: once none of a release's
    /// is waiting, its copy is kept `keep_s` more, then goes ([`Self::sweep`]).
    async fn settled(&self, done: Vec<(MessageId, ComponentId)>) {
        let _one = self.settle.lock().await;
        for (id, dest) in done {
            let Some(mut c) = self.cached(&id) else {
                continue;
            };
            let before = c.waiting.len();
            c.waiting.retain(|d| *d != dest);
            if c.waiting.len() == before {
                continue;
            }
            if c.waiting.is_empty() {
                c.settled = Some(rsnet_common::model::Timestamp::now().0);
            }
            if let Err(e) = put_async(
                &self.kv,
                vec![(
                    format!("{PREFIX}{id}"),
                    serde_json::to_vec(&c).unwrap_or_default(),
                )],
            )
            .await
            {
                tracing::warn!(release = %id, error = %e, "cached release record not saved");
            }
        }
    }

    async fn report(&self, id: &MessageId, state: DestState, reason: Option<String>) {
        let m = Report {
            release: id.to_string(),
            state,
            bytes: None,
            reason,
        }
        .message(&self.me);
        if let Err(e) = self.outbox.push(&[m]).await {
            tracing::warn!(release = %id, error = %e, "release report not spooled");
        }
    }

    /// `GET /rs/v1/releases/ID/file` from a child.
    pub async fn serve(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let Some(id) = release::id_of_path(req.uri().path()) else {
            return error(StatusCode::NOT_FOUND, "not a release file path");
        };
        let Some(who) = peer.identity.as_ref() else {
            return error(StatusCode::FORBIDDEN, "no client certificate");
        };
        let Some(c) = self.cached(&id) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("release {id} is not held here"),
            );
        };
        if !c.children.contains(&who.id) {
            tracing::warn!(release = %id, peer = %who.id, "release file asked for by a child it was not offered to");
            return error(
                StatusCode::FORBIDDEN,
                format!("release {id} was not offered to {}", who.id),
            );
        }
        download::serve(
            &self.dir.join(format!("{id}.bin")),
            c.size,
            req.headers(),
            &self.served,
        )
        .await
    }
}

/// The MLM's pipeline stage that watches release reports pass upward (and
/// passes everything on): a destination's final state frees its place in
/// the cache ([`ReleaseCache`]).
pub struct ReleaseWatch(pub Arc<ReleaseCache>);

impl rsnet_common::pipeline::Stage for ReleaseWatch {
    fn name(&self) -> &'static str {
        "release-watch"
    }

    fn judge<'a>(
        &'a self,
        _ex: &'a rsnet_common::pipeline::Exchange,
        items: Vec<rsnet_common::envelope::Item>,
    ) -> rsnet_common::pipeline::StageFuture<'a> {
        Box::pin(async move {
            let done: Vec<(MessageId, ComponentId)> = items
                .iter()
                .filter(|i| i.header.class == release::CLASS)
                .filter_map(|i| {
                    let r = Report::of(&i.content().ok()?)?;
                    let origin = i.header.source()?.origin.clone();
                    r.state
                        .is_final()
                        .then(|| Some((r.release.parse().ok()?, origin)))?
                })
                .collect();
            if !done.is_empty() {
                self.0.settled(done).await;
            }
            rsnet_common::pipeline::Judged {
                forward: items,
                decided: Vec::new(),
            }
        })
    }
}
