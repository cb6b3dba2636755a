//! Durable storage behind narrow traits (DESIGN.md §10).
//!
//! Node logic sees three traits and nothing of the backend:
//!
//! * [`Spool`]: a sender's outbound queue, ordered by precedence then age,
//!   bounded by bytes (proxy; any MLM that originates messages).
//! * [`MessageStore`]: the appserver's append-only store, exactly once per
//!   message ID, read back by sequence number (the SSE stream, the API).
//! * [`KvStore`]: small durable state (support-instance IDs, topology).
//! * [`QueueStore`]: named durable queues with sequence numbers, leases and
//!   received marks (back-channel queues per child, the proxy inbox).
//!
//! # Durability
//!
//! Every write method returns only after its data is on disk (redb commits
//! with `fdatasync`; the spool's segment files are `fdatasync`ed after each
//! frame). Throughput comes from group commit: [`GroupCommit`]
//! funnels concurrent callers' writes into one transaction, so one fsync
//! covers a whole burst. A caller that was answered `Ok` may tell its peer
//! "accepted"; a kill -9 at any moment loses nothing so acknowledged.
//!
//! # Backends
//!
//! A node opens its store with [`open`], from its `[store]` config section
//! ([`StoreConfig`]), and sees only the [`Backend`] trait and the four store
//! traits: no backend type appears outside this module. The one backend
//! today is the embedded [`redb`](self::redb) (`backend = "redb"`, the
//! default), whose spool is kept beside the redb file in append-only
//! segments ([`segment`](self::segment)). A PostgreSQL backend for farms is **not built yet**; it is to
//! implement the same traits and pass the same conformance suite
//! (`conformance.rs`, run per backend by `tests.rs`) unchanged.
//!
//! No commit runs on a tokio worker thread: every commit method is listed
//! in the workspace's `clippy.toml` (`disallowed-methods`), so a call from
//! async code fails CI unless it runs on a writer thread or in
//! `spawn_blocking` ([`put_async`], [`delete_async`]) and says so.

mod committer;
mod queue_index;
mod redb;
pub(crate) mod segment;

use std::path::Path;
use std::sync::Arc;

use std::collections::HashSet;

use bytes::Bytes;

use crate::id::{ComponentId, MessageId};
use crate::model::{ContentKind, Timestamp};
pub use committer::GroupCommit;

/// `[store]`: which backend holds a node's durable state.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `redb` (embedded, one file in `data_dir`; the default). `postgres`
    /// (shared by a farm) is not built yet and is refused.
    #[serde(default = "default_backend")]
    pub backend: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: default_backend(),
        }
    }
}

fn default_backend() -> String {
    "redb".into()
}

impl StoreConfig {
    /// Checks the section; returns every problem.
    pub fn validate(&self, errors: &mut Vec<String>) {
        match self.backend.as_str() {
            "redb" => {}
            "postgres" => {
                errors.push("store.backend: \"postgres\" is not built yet; use \"redb\"".into())
            }
            other => errors.push(format!(
                "store.backend: unknown backend {other:?} (expected \"redb\")"
            )),
        }
    }
}

/// An open store: hands out the views a node uses.
pub trait Backend: Send + Sync + 'static {
    /// The spool, bounded to `capacity` bytes.
    ///
    /// # Errors
    /// If its recovery scan fails.
    fn spool(&self, capacity: u64) -> Result<Arc<dyn Spool>>;
    /// The message store.
    ///
    /// # Errors
    /// If its state cannot be read.
    fn messages(&self) -> Result<Arc<dyn MessageStore>>;
    /// The key/value state.
    fn kv(&self) -> Arc<dyn KvStore>;
    /// The named queues. Call it once per store and share the result: the
    /// embedded backend builds its working set (leases included) per call,
    /// so two views of one store would not see each other's leases.
    ///
    /// # Errors
    /// If its state cannot be read.
    fn queues(&self) -> Result<Arc<dyn QueueStore>>;
}

/// Opens the backend `cfg` names, with its data under `data_dir`.
///
/// # Errors
/// An unknown or unbuilt backend; the backend's own open errors.
pub fn open(cfg: &StoreConfig, data_dir: &Path) -> Result<Arc<dyn Backend>> {
    let mut errors = Vec::new();
    cfg.validate(&mut errors);
    if !errors.is_empty() {
        return Err(StoreError::Backend(errors.join("; ")));
    }
    Ok(Arc::new(redb::RedbStore::open(data_dir)?))
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The spool cannot take the message even after evicting what the rules allow.
    #[error("spool full: {needed} bytes needed, {free} free of {capacity}")]
    Full {
        /// Bytes the message needs.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// Capacity.
        capacity: u64,
    },
    /// The backend failed (I/O, corruption). Nothing of the failed write was kept.
    #[error("store: {0}")]
    Backend(String),
    /// The store's writer is gone (the node is shutting down).
    #[error("store closed")]
    Closed,
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Position of a spool entry: precedence rank (0 = highest precedence) then sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpoolKey {
    /// `MAX_PRECEDENCE - precedence`, so higher precedence sorts first.
    pub rank: u8,
    /// Monotonic per spool, so older sorts first within a rank.
    pub seq: u64,
}

/// A message to spool: its ID, QoS and its two XML parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    /// Message ID.
    pub id: MessageId,
    /// 0..=9.
    pub precedence: u8,
    /// Survives eviction by non-persistent messages.
    pub persistent: bool,
    /// When to drop it.
    pub expiry: Option<Timestamp>,
    /// Header XML.
    pub header: Bytes,
    /// Content XML.
    pub content: Bytes,
}

impl SpoolRecord {
    /// Bytes this record counts against the spool capacity.
    pub fn size(&self) -> u64 {
        (self.header.len() + self.content.len() + SPOOL_RECORD_OVERHEAD) as u64
    }
}

/// Per-record overhead counted against capacity (key, flags, expiry, id, lengths).
pub const SPOOL_RECORD_OVERHEAD: usize = 45;

/// What [`Spool::peek`] found.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Entries to send, in order.
    pub entries: Vec<(SpoolKey, SpoolRecord)>,
    /// Expired entries that were removed (for the logged notice).
    pub expired: Vec<MessageId>,
}

/// Counters of a spool.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SpoolStats {
    /// Messages held.
    pub messages: u64,
    /// Bytes held (as counted against capacity).
    pub bytes: u64,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Messages evicted to make room since start.
    pub evicted: u64,
    /// Messages dropped as expired since start.
    pub expired: u64,
}

/// An integrator's own key for a message (the proxy's local API): a
/// resend under the same key before `until` is answered with the first
/// message's ID and not spooled again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The key (1..=[`MAX_CLIENT_KEY_BYTES`] visible ASCII bytes).
    pub key: String,
    /// Until when it is remembered.
    pub until: Timestamp,
}

/// Longest [`ClientKey::key`].
pub const MAX_CLIENT_KEY_BYTES: usize = 128;

/// What pushing one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Spooled at this key.
    New(SpoolKey),
    /// Its client key was seen before: this is the first message's ID; nothing was spooled.
    Repeat(MessageId),
}

/// A sender's durable outbound queue.
// The provided methods delegate to one another; callers are checked.
#[allow(clippy::disallowed_methods)]
pub trait Spool: Send + Sync + 'static {
    /// Stores records in one durable commit. Each record succeeds or fails on
    /// its own: when the spool is full, non-persistent messages of lower
    /// precedence (or equal, for a persistent newcomer) are evicted, oldest
    /// first; if that does not make room the record fails with
    /// [`StoreError::Full`].
    ///
    /// # Durability
    /// Returns after fsync.
    fn push(&self, records: Vec<SpoolRecord>) -> Result<Vec<Result<SpoolKey>>> {
        self.write(records, &[])
    }

    /// Removes `remove`, then pushes `records` as [`Spool::push`] does, all
    /// in one durable commit: a sender that both accepts new messages and
    /// retires delivered ones pays one fsync for both.
    ///
    /// # Durability
    /// Returns after fsync.
    fn write(
        &self,
        records: Vec<SpoolRecord>,
        remove: &[SpoolKey],
    ) -> Result<Vec<Result<SpoolKey>>> {
        let keyed = records.into_iter().map(|r| (r, None)).collect();
        Ok(self
            .write_keyed(keyed, remove, Timestamp::now())?
            .into_iter()
            .map(|r| match r? {
                Pushed::New(k) => Ok(k),
                Pushed::Repeat(id) => Err(StoreError::Backend(format!(
                    "unkeyed record answered as a repeat of {id}"
                ))),
            })
            .collect())
    }

    /// [`Spool::write`] where records may carry a [`ClientKey`]. A record
    /// whose key is remembered (from an earlier commit or earlier in this
    /// one) and not past its `until` at `now` is not spooled: its answer is
    /// [`Pushed::Repeat`] with the first message's ID. A new key is
    /// remembered in the same commit as its record, so a crash can never
    /// keep one without the other. Keys past their `until` are forgotten.
    ///
    /// # Durability
    /// Returns after fsync.
    fn write_keyed(
        &self,
        records: Vec<(SpoolRecord, Option<ClientKey>)>,
        remove: &[SpoolKey],
        now: Timestamp,
    ) -> Result<Vec<Result<Pushed>>>;

    /// Up to `limit` entries in send order, skipping `skip` (in flight).
    /// Expired entries met on the way are removed and reported.
    fn peek(&self, limit: usize, skip: &HashSet<SpoolKey>, now: Timestamp) -> Result<Peeked>;

    /// Removes entries (delivered or permanently rejected). Unknown keys are ignored.
    ///
    /// # Durability
    /// Returns after fsync.
    fn remove(&self, keys: &[SpoolKey]) -> Result<()> {
        self.write(Vec::new(), keys).map(|_| ())
    }

    /// Current counters.
    fn stats(&self) -> SpoolStats;

    /// The headers of messages evicted (to make room) since the last call,
    /// for their report ([`crate::qos`]). Kept in memory only, bounded: a
    /// restart, or more than ten thousand between two calls, loses some.
    fn take_evicted(&self) -> Vec<bytes::Bytes> {
        Vec::new()
    }
}

/// A message as the appserver stores it: index fields plus the two XML parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Message ID (unique in the store).
    pub id: MessageId,
    /// The originating component.
    pub source: ComponentId,
    /// Class.
    pub class: String,
    /// Subclass.
    pub subclass: Option<String>,
    /// Content kind.
    pub kind: ContentKind,
    /// When it was made.
    pub created: Timestamp,
    /// When the appserver stored it.
    pub received: Timestamp,
    /// Header XML.
    pub header: Bytes,
    /// Content XML.
    pub content: Bytes,
}

/// Outcome of appending one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Newly stored at this sequence number.
    Stored(u64),
    /// Stored before, at this sequence number.
    Duplicate(u64),
}

impl Appended {
    /// The sequence number either way.
    pub fn seq(self) -> u64 {
        match self {
            Appended::Stored(s) | Appended::Duplicate(s) => s,
        }
    }
}

/// Which messages a query returns.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Source is this ID or inside its subtree.
    pub source: Option<ComponentId>,
    /// Exact class.
    pub class: Option<String>,
    /// Exact subclass.
    pub subclass: Option<String>,
    /// Created at or after.
    pub since: Option<Timestamp>,
    /// Created before.
    pub until: Option<Timestamp>,
}

impl MessageFilter {
    /// True if `m` passes.
    pub fn matches(&self, m: &StoredMessage) -> bool {
        self.admits(&m.source, &m.class, m.subclass.as_deref(), m.created)
    }

    /// True if a message of this source, class, subclass and creation time
    /// passes: what [`MessageFilter::matches`] reads of a stored message.
    pub fn admits(
        &self,
        source: &ComponentId,
        class: &str,
        subclass: Option<&str>,
        created: Timestamp,
    ) -> bool {
        self.source.as_ref().is_none_or(|s| source.is_within(s))
            && self.class.as_ref().is_none_or(|c| c == class)
            && self
                .subclass
                .as_ref()
                .is_none_or(|c| Some(c.as_str()) == subclass)
            && self.since.is_none_or(|t| created >= t)
            && self.until.is_none_or(|t| created < t)
    }
}

/// The appserver's message store: exactly once per message ID.
pub trait MessageStore: Send + Sync + 'static {
    /// Appends messages not stored before, plus `state` key/values, in one
    /// durable commit. A message ID seen before (in this batch or earlier)
    /// is not stored again.
    ///
    /// # Durability
    /// Returns after fsync.
    fn append(
        &self,
        messages: Vec<StoredMessage>,
        state: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Appended>>;

    /// Messages with sequence numbers above `after` that pass `filter`, in
    /// order, at most `limit`, scanning at most `scan_limit` records. Returns
    /// them and the last sequence number scanned (resume from there).
    fn scan(
        &self,
        after: u64,
        limit: usize,
        scan_limit: usize,
        filter: &MessageFilter,
    ) -> Result<(Vec<(u64, StoredMessage)>, u64)>;

    /// The highest sequence number stored (0 if empty).
    fn last_seq(&self) -> u64;

    /// The number of messages stored.
    fn count(&self) -> Result<u64>;
}

/// True for a pseudo-queue name (it starts with `^`: the received marks, the
/// pending control actions), which is never a destination.
pub fn is_pseudo(queue: &str) -> bool {
    queue.starts_with('^')
}

/// One durable change to a [`QueueStore`]; see [`QueueStore::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    /// Queue each record of `push` in its named queue; with `received`,
    /// mark that message ID as received from the parent until the given
    /// time, in the same commit. A received ID marked before (and not past
    /// its time), or marked earlier in the same commit, makes the whole
    /// offer [`Offered::Duplicate`]; an entry whose ID is already in its
    /// queue is skipped. An offer that would take all queues past
    /// `capacity` bytes fails whole with [`StoreError::Full`]. A record that
    /// would take its own (named, not pseudo) queue past `queue_capacity`
    /// is left out, and the offer answers [`Offered::Partly`] naming that
    /// queue: one child that never polls cannot fill what its siblings share.
    Offer {
        /// Records to queue.
        push: Vec<(String, SpoolRecord)>,
        /// The message to mark received, and until when.
        received: Option<(MessageId, Timestamp)>,
        /// Bytes all queues together may hold.
        capacity: u64,
        /// Bytes one named queue may hold.
        queue_capacity: u64,
    },
    /// Removes these messages from `queue` (acknowledged); unknown IDs are ignored.
    Ack {
        /// The queue.
        queue: String,
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// Removes entries by key (expired); unknown keys are ignored.
    Remove(Vec<(String, SpoolKey)>),
    /// Puts these pairs in the node's key-value state (as
    /// [`KvStore::put`] does), in the same commit as the other ops: for a
    /// record that must be durable exactly when the entries are (the
    /// appserver's delivery record of a message and the message's copies).
    State(Vec<(String, Vec<u8>)>),
}

/// What one [`QueueOp`] did.
#[derive(Debug, Clone)]
pub enum QueueOutcome {
    /// For [`QueueOp::Offer`].
    Offered(Result<Offered>),
    /// For [`QueueOp::Ack`]: the IDs that were there and are now removed.
    Acked(Vec<MessageId>),
    /// For [`QueueOp::Remove`].
    Removed,
    /// For [`QueueOp::State`].
    Stated,
}

/// What an offer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Queued (durably) this many new entries.
    Queued(usize),
    /// Queued (durably) this many new entries, and left out the entries
    /// for these queues: each was at its `queue_capacity`.
    Partly {
        /// Entries queued.
        queued: usize,
        /// Queues that were full, sorted, once each.
        over_quota: Vec<String>,
    },
    /// The received ID was seen before; nothing queued.
    Duplicate,
}

impl Offered {
    /// Entries queued.
    pub fn queued(&self) -> usize {
        match self {
            Offered::Queued(n) | Offered::Partly { queued: n, .. } => *n,
            Offered::Duplicate => 0,
        }
    }

    /// Queues whose entries were left out (at their `queue_capacity`).
    pub fn over_quota(&self) -> &[String] {
        match self {
            Offered::Partly { over_quota, .. } => over_quota,
            _ => &[],
        }
    }
}

/// What [`QueueStore::lease`] handed out.
#[derive(Debug, Default)]
pub struct Leased {
    /// Entries to deliver, in order, now leased.
    pub records: Vec<SpoolRecord>,
    /// For each record, the index (in the queues asked) of its queue.
    pub from: Vec<usize>,
    /// Entries found expired: no longer handed out, to be removed
    /// ([`QueueOp::Remove`]) by the caller.
    pub expired: Vec<(String, SpoolKey, MessageId)>,
}

/// Counters over all queues.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QueueStats {
    /// Entries held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Non-empty queues.
    pub queues: u64,
    /// Entries currently leased.
    pub leased: u64,
}

/// Whether a queue (or any) has something to hand out, and when it next may.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// An entry is there that is not leased.
    pub ready: bool,
    /// The earliest end of a lease, if an entry is leased.
    pub next_lease_end: Option<Timestamp>,
}

/// Named durable queues (back-channel queues per child, the proxy inbox),
/// with everything that makes them a queue in the contract:
///
/// * **sequence numbers**: the store orders each queue by precedence, then
///   by a sequence number it assigns ([`SpoolKey`]), and never reuses one;
/// * **received marks**: an offer can mark the message it came from, in the
///   same commit, and a repeat is recognised ([`QueueStore::was_received`],
///   [`Offered::Duplicate`]) until the mark's time;
/// * **leases**: [`QueueStore::lease`] hands entries out and hides them
///   until the lease ends (then they are handed out again) or they are acked.
///
/// Queued records and received marks are durable. Leases need not be: the
/// embedded backend keeps them in memory, so a restart forgets them and
/// everything unacknowledged is handed out again (receivers drop repeats).
/// A backend shared by a farm keeps them where every member sees them.
pub trait QueueStore: Send + Sync + 'static {
    /// Applies `ops` in order, in one durable commit; one outcome per op.
    /// Acknowledged entries are no longer handed out from the moment this
    /// is called.
    ///
    /// # Errors
    /// Store failures: nothing of the commit is durable (entries being
    /// acknowledged may be handed out again after a restart).
    ///
    /// # Durability
    /// Returns after fsync.
    fn commit(&self, ops: Vec<QueueOp>, now: Timestamp) -> Result<Vec<QueueOutcome>>;

    /// Leases entries of `queues` that are not leased at `now`, until
    /// `until`: in precedence-then-age order across the queues, up to
    /// `max_bytes` (at least one entry) and `max_items`.
    ///
    /// # Errors
    /// Store failures.
    fn lease(
        &self,
        queues: &[&str],
        max_bytes: usize,
        max_items: usize,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Leased>;

    /// True if `id` carries a received mark valid at `now`.
    fn was_received(&self, id: &MessageId, now: Timestamp) -> bool;

    /// Whether `queue` (or, with `None`, any queue) has an entry to hand
    /// out at `now`, and when its next lease ends.
    fn readiness(&self, queue: Option<&str>, now: Timestamp) -> Readiness;

    /// Names of the queues holding entries (pseudo-queues left out).
    fn names(&self) -> Vec<String>;

    /// Counters at `now`.
    fn stats(&self, now: Timestamp) -> QueueStats;

    /// Forgets received marks that ended before `now`; returns how many.
    ///
    /// # Durability
    /// Returns after fsync.
    fn prune_seen(&self, now: Timestamp) -> Result<usize>;
}

/// [`KvStore::put`] on a blocking thread, for async code (a commit never
/// runs on a tokio worker thread; `clippy.toml` enforces it).
///
/// # Errors
/// As [`KvStore::put`].
pub async fn put_async(
    kv: &std::sync::Arc<dyn KvStore>,
    pairs: Vec<(String, Vec<u8>)>,
) -> Result<()> {
    let kv = kv.clone();
    #[allow(clippy::disallowed_methods)] // in spawn_blocking
    let r = tokio::task::spawn_blocking(move || kv.put(pairs)).await;
    r.map_err(|e| StoreError::Backend(e.to_string()))?
}

/// [`KvStore::delete`] on a blocking thread, for async code.
///
/// # Errors
/// As [`KvStore::delete`].
pub async fn delete_async(kv: &std::sync::Arc<dyn KvStore>, keys: Vec<String>) -> Result<()> {
    let kv = kv.clone();
    #[allow(clippy::disallowed_methods)] // in spawn_blocking
    let r = tokio::task::spawn_blocking(move || kv.delete(&keys)).await;
    r.map_err(|e| StoreError::Backend(e.to_string()))?
}

/// [`KvStore::commit`] on a blocking thread, for async code.
///
/// # Errors
/// As [`KvStore::commit`].
pub async fn commit_async(
    kv: &std::sync::Arc<dyn KvStore>,
    put: Vec<(String, Vec<u8>)>,
    delete: Vec<String>,
) -> Result<()> {
    let kv = kv.clone();
    #[allow(clippy::disallowed_methods)] // in spawn_blocking
    let r = tokio::task::spawn_blocking(move || kv.commit(put, &delete)).await;
    r.map_err(|e| StoreError::Backend(e.to_string()))?
}

/// Small durable key/value state.
// The provided methods delegate to `commit`; callers are checked.
#[allow(clippy::disallowed_methods)]
pub trait KvStore: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes all pairs in one durable commit.
    ///
    /// # Durability
    /// Returns after fsync.
    fn put(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.commit(pairs, &[])
    }
    /// Every pair whose key starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Removes keys in one durable commit; unknown keys are ignored.
    ///
    /// # Durability
    /// Returns after fsync.
    fn delete(&self, keys: &[String]) -> Result<()> {
        self.commit(Vec::new(), keys)
    }
    /// Removes `delete`, then writes `put`, in one durable commit: after a
    /// crash either all of it happened or none (how held messages become
    /// one aggregate, [`crate::pipeline::rules`]).
    ///
    /// # Durability
    /// Returns after fsync.
    fn commit(&self, put: Vec<(String, Vec<u8>)>, delete: &[String]) -> Result<()>;
}

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
mod tests;
