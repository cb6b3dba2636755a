//! The embedded backend: one redb file per node (`DIR/store.redb`), and
//! the spool beside it in segment files (`DIR/spool/`, [`super::segment`]).
//!
//! # On-disk layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `spool` | `(rank u8, seq u64)` | `persistent u8, expiry u64 (0 = none), id [16], hlen u32, header, content`: left by older versions, moved into segments at open ([`RedbStore::move_spool_into`]) |
//! | `client_keys`, `client_key_expiry` | key; `(until, key)` | the old spool's client keys, moved with it |
//! | `spool_meta` | `"next_seq"` | `u64` (the old spool's) |
//! | `message_runs` | first `seq u64` of the run | `count u32`, then per message `len u32` and [`encode_stored`] |
//! | `messages` | `seq u64` | [`encode_stored`]: left by older versions, moved into runs at open ([`RedbStore::move_messages_into_runs`]) |
//! | `message_ids` | `id [16]` | `seq u64` |
//! | `state` | `&str` | bytes |
//! | `queue` | `(queue &str, rank u8, seq u64)` | as `spool` |
//! | `queue_seen` | `(queue &str, id [16])` | seen until, ms |
//! | `spool_meta` | `"queue_next_seq"` | `u64` |
//!
//! # Message runs
//!
//! The appserver stores what one group commit brings as one row, a *run* of
//! messages with consecutive sequence numbers, keyed by the first. One
//! B-tree insert per commit instead of one per message: a row per message
//! made redb's copy-on-write of branch pages the largest cost of ingest. A
//! run holds at most [`RUN_BYTES`] (a larger commit makes several runs), so
//! a scan that starts inside a run reads a bounded row. Message IDs stay
//! one row each in `message_ids`, which exactly-once storage looks up.
//!
//! # Invariants and recovery
//!
//! Every write is one redb transaction committed with `Durability::Immediate`
//! (fdatasync), so after kill -9 the file holds exactly the committed
//! transactions. The last message sequence number is read from the last
//! run at open. Sequence numbers are dense from 1 and nothing is deleted,
//! so the message count is the last sequence number: no counter to keep.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ::redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use bytes::Bytes;

use super::queue_index::{Pending, Planned, QueueIndex};
use super::segment::SegmentSpool;
use super::*;
use crate::model::MAX_PRECEDENCE;

const SPOOL: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("spool");
const SPOOL_META: TableDefinition<&str, u64> = TableDefinition::new("spool_meta");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const MESSAGE_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("message_runs");
/// The most a run of messages holds (a single larger message makes a run
/// of its own). Small enough that a run's buffer and redb's page for it
/// come from the allocator's cache: runs of 1 MiB spent most of their time
/// in page faults on fresh memory.
pub(crate) const RUN_BYTES: usize = 64 << 10;
/// Old `messages` rows moved into runs per transaction at open.
const MOVE_CHUNK: usize = 4096;
const MESSAGE_IDS: TableDefinition<&[u8], u64> = TableDefinition::new("message_ids");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const QUEUE: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("queue");
const QUEUE_SEEN: TableDefinition<(&str, &[u8]), u64> = TableDefinition::new("queue_seen");
const QUEUE_NEXT_SEQ: &str = "queue_next_seq";
/// Client key → message ID (16 bytes) and until (8 bytes, ms).
const CLIENT_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("client_keys");
/// (until, key): the order in which client keys are forgotten.
const CLIENT_KEY_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("client_key_expiry");

/// Fixed part of an encoded spool value (flags, expiry, id, header length).
const SPOOL_VALUE_FIXED: usize = 1 + 8 + 16 + 4;

fn be<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Commits `w` durably, timed in `rsnet_store_commit_duration_seconds`.
fn commit(w: ::redb::WriteTransaction) -> Result<()> {
    static TIMES: std::sync::LazyLock<crate::metrics::Histogram> = std::sync::LazyLock::new(|| {
        crate::metrics::process().histogram_with(
            "rsnet_store_commit_duration_seconds",
            &[("store", "redb")],
            "time to make one commit of the node's redb store durable (page writes and fdatasync)",
        )
    });
    let t = std::time::Instant::now();
    let r = w.commit().map_err(be);
    TIMES.observe(t.elapsed());
    r
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt record: {what}"))
}

/// Creates every table (a no-op for those that exist), in one commit.
fn init_tables(db: &Database) -> Result<()> {
    let w = db.begin_write().map_err(be)?;
    {
        w.open_table(SPOOL).map_err(be)?;
        w.open_table(SPOOL_META).map_err(be)?;
        w.open_table(MESSAGES).map_err(be)?;
        w.open_table(MESSAGE_RUNS).map_err(be)?;
        w.open_table(MESSAGE_IDS).map_err(be)?;
        w.open_table(STATE).map_err(be)?;
        w.open_table(QUEUE).map_err(be)?;
        w.open_table(QUEUE_SEEN).map_err(be)?;
        w.open_table(CLIENT_KEYS).map_err(be)?;
        w.open_table(CLIENT_KEY_EXPIRY).map_err(be)?;
    }
    commit(w)?;
    Ok(())
}

/// An open store directory; hands out the spool, message store and KV views.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    dir: std::path::PathBuf,
}

impl RedbStore {
    /// Opens (or creates) `dir/store.redb`.
    ///
    /// # Errors
    /// If the directory cannot be created or the file is not a redb database.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        if !path.exists() {
            // A new store is made under another name and renamed into place,
            // so a crash while the file is being initialised never leaves a
            // half-made `store.redb` that cannot be opened again.
            let tmp = dir.join("store.redb.new");
            let _ = std::fs::remove_file(&tmp);
            let db = Database::create(&tmp)
                .map_err(|e| StoreError::Backend(format!("{}: {e}", tmp.display())))?;
            init_tables(&db)?;
            drop(db);
            std::fs::rename(&tmp, &path)
                .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let db = Database::create(&path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        init_tables(&db)?;
        Ok(RedbStore {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
        })
    }

    /// Moves a spool kept here by an older version (the `spool` table and
    /// its client keys) into the segment spool, then empties those tables.
    /// The segments are durable before the tables are emptied; a crash in
    /// between moves the same entries again under the same keys, which the
    /// segment spool takes as replacements, not as new messages.
    ///
    /// # Errors
    /// If the tables cannot be read or emptied, or the segments written.
    fn move_spool_into(&self, seg: &SegmentSpool) -> Result<()> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(SPOOL).map_err(be)?;
        let k = r.open_table(CLIENT_KEYS).map_err(be)?;
        if t.is_empty().map_err(be)? && k.is_empty().map_err(be)? {
            return Ok(());
        }
        let mut entries = Vec::new();
        for e in t.iter().map_err(be)? {
            let (key, v) = e.map_err(be)?;
            let (rank, seq) = key.value();
            entries.push((SpoolKey { rank, seq }, decode_spool(rank, v.value())?));
        }
        let now = Timestamp::now();
        let mut keys = Vec::new();
        for e in k.iter().map_err(be)? {
            let (key, v) = e.map_err(be)?;
            let v = v.value();
            let (Some(id), Some(until)) = (v.get(..16), v.get(16..24)) else {
                return Err(corrupt("client key value"));
            };
            let id: [u8; 16] = id.try_into().map_err(|_| corrupt("client key id"))?;
            let until: [u8; 8] = until.try_into().map_err(|_| corrupt("client key until"))?;
            let until = Timestamp(u64::from_be_bytes(until));
            if until > now {
                keys.push((key.value().to_string(), MessageId::from_bytes(id), until));
            }
        }
        let m = r.open_table(SPOOL_META).map_err(be)?;
        let next_seq = m
            .get("next_seq")
            .map_err(be)?
            .map(|v| v.value())
            .unwrap_or(1);
        drop((t, k, m, r));
        let moved = entries.len();
        seg.import(entries, keys, next_seq)?;
        let w = self.db.begin_write().map_err(be)?;
        w.delete_table(SPOOL).map_err(be)?;
        w.delete_table(CLIENT_KEYS).map_err(be)?;
        w.delete_table(CLIENT_KEY_EXPIRY).map_err(be)?;
        w.open_table(SPOOL).map_err(be)?;
        w.open_table(CLIENT_KEYS).map_err(be)?;
        w.open_table(CLIENT_KEY_EXPIRY).map_err(be)?;
        commit(w)?;
        tracing::info!(
            messages = moved,
            "spool moved from the redb file into segments"
        );
        Ok(())
    }

    /// Moves messages kept one row each by an older version (the
    /// `messages` table) into runs, [`MOVE_CHUNK`] rows per transaction:
    /// each transaction writes the runs and removes the rows it moved, so a
    /// crash part-way leaves every message in exactly one of the two tables.
    ///
    /// # Errors
    /// If the tables cannot be read or written, or a row does not decode.
    fn move_messages_into_runs(&self) -> Result<()> {
        let mut moved = 0u64;
        loop {
            let w = self.db.begin_write().map_err(be)?;
            let n = {
                let mut old = w.open_table(MESSAGES).map_err(be)?;
                let mut rows = Vec::new();
                for e in old.iter().map_err(be)?.take(MOVE_CHUNK) {
                    let (k, v) = e.map_err(be)?;
                    // Decoded to check, so that a bad row stops the move by name.
                    decode_stored(v.value())?;
                    rows.push((k.value(), v.value().to_vec()));
                }
                if rows.is_empty() {
                    break;
                }
                let mut runs = w.open_table(MESSAGE_RUNS).map_err(be)?;
                let mut run = Run::default();
                for (seq, rec) in &rows {
                    if !run.takes(*seq, rec.len()) {
                        run.write(&mut runs)?;
                    }
                    run.push(*seq, rec);
                }
                run.write(&mut runs)?;
                for (seq, _) in &rows {
                    old.remove(*seq).map_err(be)?;
                }
                rows.len() as u64
            };
            commit(w)?;
            moved += n;
        }
        if moved > 0 {
            tracing::info!(messages = moved, "messages moved from rows into runs");
        }
        Ok(())
    }

    /// The message-store view.
    ///
    /// # Errors
    /// If the old rows cannot be moved or the last run cannot be read.
    fn redb_messages(&self) -> Result<RedbMessages> {
        self.move_messages_into_runs()?;
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(MESSAGE_RUNS).map_err(be)?;
        let last = match t.last().map_err(be)? {
            Some((k, v)) => k.value() + u64::from(run_count(v.value())?) - 1,
            None => 0,
        };
        Ok(RedbMessages {
            db: self.db.clone(),
            last: AtomicU64::new(last),
        })
    }

    /// The key/value view.
    fn redb_kv(&self) -> RedbKv {
        RedbKv {
            db: self.db.clone(),
        }
    }

    /// The named-queues view.
    ///
    /// # Errors
    /// If the sequence counter cannot be read.
    fn redb_queues(&self) -> Result<RedbQueues> {
        let r = self.db.begin_read().map_err(be)?;
        let m = r.open_table(SPOOL_META).map_err(be)?;
        let next = m
            .get(QUEUE_NEXT_SEQ)
            .map_err(be)?
            .map(|v| v.value())
            .unwrap_or(1);
        Ok(RedbQueues {
            index: Mutex::new(RedbQueues::load(&self.db, Timestamp::now())?),
            db: self.db.clone(),
            next_seq: Mutex::new(next),
            committing: Mutex::new(()),
        })
    }
}

impl Backend for RedbStore {
    fn spool(&self, capacity: u64) -> Result<Arc<dyn Spool>> {
        let seg = SegmentSpool::open(&self.dir.join("spool"), capacity)?;
        self.move_spool_into(&seg)?;
        Ok(Arc::new(seg))
    }
    fn messages(&self) -> Result<Arc<dyn MessageStore>> {
        Ok(Arc::new(self.redb_messages()?))
    }
    fn kv(&self) -> Arc<dyn KvStore> {
        Arc::new(self.redb_kv())
    }
    fn queues(&self) -> Result<Arc<dyn QueueStore>> {
        Ok(Arc::new(self.redb_queues()?))
    }
}

// ---------------------------------------------------------------- spool records

fn encode_spool(r: &SpoolRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(SPOOL_VALUE_FIXED + r.header.len() + r.content.len());
    v.push(r.persistent as u8);
    v.extend_from_slice(&r.expiry.map(|t| t.0).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(r.id.as_bytes());
    v.extend_from_slice(&(r.header.len() as u32).to_be_bytes());
    v.extend_from_slice(&r.header);
    v.extend_from_slice(&r.content);
    v
}

fn spool_expiry(v: &[u8]) -> Option<Timestamp> {
    let e = u64::from_be_bytes(v.get(1..9)?.try_into().ok()?);
    (e != 0).then_some(Timestamp(e))
}

fn decode_spool(rank: u8, v: &[u8]) -> Result<SpoolRecord> {
    if v.len() < SPOOL_VALUE_FIXED {
        return Err(corrupt("spool value too short"));
    }
    let id: [u8; 16] = v[9..25].try_into().map_err(|_| corrupt("spool id"))?;
    let hlen =
        u32::from_be_bytes(v[25..29].try_into().map_err(|_| corrupt("spool hlen"))?) as usize;
    let rest = &v[SPOOL_VALUE_FIXED..];
    if rest.len() < hlen {
        return Err(corrupt("spool header length"));
    }
    Ok(SpoolRecord {
        id: MessageId::from_bytes(id),
        precedence: MAX_PRECEDENCE.saturating_sub(rank),
        persistent: v[0] != 0,
        expiry: spool_expiry(v),
        header: Bytes::copy_from_slice(&rest[..hlen]),
        content: Bytes::copy_from_slice(&rest[hlen..]),
    })
}

// ---------------------------------------------------------------- messages

/// [`MessageStore`] on redb, in runs (see "Message runs" above).
pub struct RedbMessages {
    db: Arc<Database>,
    last: AtomicU64,
}

/// The number of messages in a run's value.
fn run_count(v: &[u8]) -> Result<u32> {
    let n = Cursor(v).u32()?;
    if n == 0 {
        return Err(corrupt("empty run"));
    }
    Ok(n)
}

/// A run being built: consecutive sequence numbers from `first`.
#[derive(Default)]
struct Run {
    first: u64,
    count: u32,
    buf: Vec<u8>,
}

impl Run {
    /// Whether a record of `len` bytes with sequence number `seq` may join:
    /// it follows the last and the run stays within [`RUN_BYTES`].
    fn takes(&self, seq: u64, len: usize) -> bool {
        self.count == 0
            || (seq == self.first + u64::from(self.count)
                && self.buf.len() + 4 + len <= RUN_BYTES
                && self.count < u32::MAX)
    }

    fn push(&mut self, seq: u64, rec: &[u8]) {
        if self.count == 0 {
            self.first = seq;
            self.buf.clear();
            self.buf.reserve(RUN_BYTES.max(4 + 4 + rec.len()));
            self.buf.extend_from_slice(&[0; 4]);
        }
        self.count += 1;
        self.buf
            .extend_from_slice(&(rec.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(rec);
    }

    /// Inserts the run (if any) and starts a new one.
    fn write(&mut self, t: &mut ::redb::Table<u64, &[u8]>) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        self.buf[..4].copy_from_slice(&self.count.to_be_bytes());
        t.insert(self.first, self.buf.as_slice()).map_err(be)?;
        self.count = 0;
        Ok(())
    }
}

struct Cursor<'a>(&'a [u8]);
impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("message record truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| corrupt("u64"))?,
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| corrupt("u32"))?,
        ))
    }
    fn str8(&mut self) -> Result<&'a str> {
        let n = self.take(1)?[0] as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| corrupt("utf8"))
    }
}

/// Encodes a stored message: `created u64, received u64, kind u8, id [16],
/// source (u8 len + bytes), class (u8 len + bytes), subclass (u8 len + bytes,
/// 0 = none), hlen u32, header, content`. The index fields come first so a
/// filtered scan never parses XML.
#[cfg(test)]
fn encode_stored(m: &StoredMessage) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + m.header.len() + m.content.len());
    encode_stored_into(m, &mut v);
    v
}

/// [`encode_stored`], appended to `v`.
fn encode_stored_into(m: &StoredMessage, v: &mut Vec<u8>) {
    v.reserve(64 + m.header.len() + m.content.len());
    v.extend_from_slice(&m.created.0.to_be_bytes());
    v.extend_from_slice(&m.received.0.to_be_bytes());
    v.push(m.kind as u8);
    v.extend_from_slice(m.id.as_bytes());
    for s in [
        m.source.as_str(),
        m.class.as_str(),
        m.subclass.as_deref().unwrap_or(""),
    ] {
        let b = &s.as_bytes()[..s.len().min(255)];
        v.push(b.len() as u8);
        v.extend_from_slice(b);
    }
    v.extend_from_slice(&(m.header.len() as u32).to_be_bytes());
    v.extend_from_slice(&m.header);
    v.extend_from_slice(&m.content);
}

fn decode_stored(v: &[u8]) -> Result<StoredMessage> {
    let mut c = Cursor(v);
    let created = Timestamp(c.u64()?);
    let received = Timestamp(c.u64()?);
    let kind = *ContentKind::ALL
        .get(c.take(1)?[0] as usize)
        .ok_or_else(|| corrupt("kind"))?;
    let id = MessageId::from_bytes(c.take(16)?.try_into().map_err(|_| corrupt("id"))?);
    let source = c.str8()?.parse().map_err(|_| corrupt("source"))?;
    let class = c.str8()?.to_string();
    let sub = c.str8()?;
    let subclass = (!sub.is_empty()).then(|| sub.to_string());
    let hlen = c.u32()? as usize;
    let header = Bytes::copy_from_slice(c.take(hlen)?);
    let content = Bytes::copy_from_slice(c.0);
    Ok(StoredMessage {
        id,
        source,
        class,
        subclass,
        kind,
        created,
        received,
        header,
        content,
    })
}

impl MessageStore for RedbMessages {
    fn append(
        &self,
        messages: Vec<StoredMessage>,
        state: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Appended>> {
        let w = self.db.begin_write().map_err(be)?;
        let mut out = Vec::with_capacity(messages.len());
        let mut last = self.last.load(Ordering::Acquire);
        {
            let mut runs = w.open_table(MESSAGE_RUNS).map_err(be)?;
            let mut ids = w.open_table(MESSAGE_IDS).map_err(be)?;
            let mut run = Run::default();
            let mut rec = Vec::new();
            for m in &messages {
                let id = m.id.as_bytes().as_slice();
                // One look into the index per message: the insert answers
                // whether the ID was there, and a repeat (rare) puts its
                // first sequence number back.
                let seen = ids.insert(id, last + 1).map_err(be)?.map(|g| g.value());
                if let Some(first) = seen {
                    ids.insert(id, first).map_err(be)?;
                    out.push(Appended::Duplicate(first));
                    continue;
                }
                last += 1;
                rec.clear();
                encode_stored_into(m, &mut rec);
                if !run.takes(last, rec.len()) {
                    run.write(&mut runs)?;
                }
                run.push(last, &rec);
                out.push(Appended::Stored(last));
            }
            run.write(&mut runs)?;
            let mut s = w.open_table(STATE).map_err(be)?;
            for (k, v) in &state {
                s.insert(k.as_str(), v.as_slice()).map_err(be)?;
            }
        }
        commit(w)?;
        self.last.store(last, Ordering::Release);
        Ok(out)
    }

    fn scan(
        &self,
        after: u64,
        limit: usize,
        scan_limit: usize,
        filter: &MessageFilter,
    ) -> Result<(Vec<(u64, StoredMessage)>, u64)> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(MESSAGE_RUNS).map_err(be)?;
        let next = after.saturating_add(1);
        // The run holding `next`, if one does: the last that starts at or before it.
        let from = match t.range(..=next).map_err(be)?.next_back() {
            Some(e) => e.map_err(be)?.0.value(),
            None => next,
        };
        let mut out = Vec::new();
        let mut cursor = after;
        let mut scanned = 0usize;
        'runs: for e in t.range(from..).map_err(be)? {
            let (k, v) = e.map_err(be)?;
            let mut c = Cursor(v.value());
            let count = c.u32()?;
            let first = k.value();
            for seq in first..first.saturating_add(u64::from(count)) {
                let len = c.u32()? as usize;
                let rec = c.take(len)?;
                if seq < next {
                    continue;
                }
                if out.len() >= limit || scanned >= scan_limit {
                    break 'runs;
                }
                scanned += 1;
                cursor = seq;
                let m = decode_stored(rec)?;
                if filter.matches(&m) {
                    out.push((seq, m));
                }
            }
            if !c.0.is_empty() {
                return Err(corrupt("run longer than its count"));
            }
        }
        Ok((out, cursor))
    }

    fn last_seq(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    fn count(&self) -> Result<u64> {
        // Dense from 1, never deleted (see "Invariants and recovery").
        Ok(self.last.load(Ordering::Acquire))
    }
}

// ---------------------------------------------------------------- kv

/// [`KvStore`] on redb.
pub struct RedbKv {
    db: Arc<Database>,
}

impl KvStore for RedbKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(STATE).map_err(be)?;
        Ok(t.get(key).map_err(be)?.map(|v| v.value().to_vec()))
    }

    fn commit(&self, put: Vec<(String, Vec<u8>)>, delete: &[String]) -> Result<()> {
        let w = self.db.begin_write().map_err(be)?;
        {
            let mut t = w.open_table(STATE).map_err(be)?;
            for k in delete {
                t.remove(k.as_str()).map_err(be)?;
            }
            for (k, v) in &put {
                t.insert(k.as_str(), v.as_slice()).map_err(be)?;
            }
        }
        commit(w)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(STATE).map_err(be)?;
        let mut out = Vec::new();
        for e in t.range(prefix..).map_err(be)? {
            let (k, v) = e.map_err(be)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- queues

/// [`QueueStore`] on redb: records and received marks in tables, the
/// working set (leases included) in a [`QueueIndex`] in memory.
pub struct RedbQueues {
    db: Arc<Database>,
    next_seq: Mutex<u64>,
    index: Mutex<QueueIndex>,
    /// Commits one at a time, so each plans against what the last one left.
    committing: Mutex<()>,
}

/// The pseudo-queue name under which received marks are kept.
const RECEIVED: &str = "^received";

impl RedbQueues {
    fn index(&self) -> std::sync::MutexGuard<'_, QueueIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every record and every mark valid at `now` into a fresh index.
    fn load(db: &Database, now: Timestamp) -> Result<QueueIndex> {
        let r = db.begin_read().map_err(be)?;
        let t = r.open_table(QUEUE).map_err(be)?;
        let mut index = QueueIndex::default();
        for e in t.iter().map_err(be)? {
            let (k, v) = e.map_err(be)?;
            let (q, rank, seq) = k.value();
            index.insert(
                q.to_string(),
                SpoolKey { rank, seq },
                decode_spool(rank, v.value())?,
            );
        }
        let s = r.open_table(QUEUE_SEEN).map_err(be)?;
        for e in s.iter().map_err(be)? {
            let (k, v) = e.map_err(be)?;
            let (_, id) = k.value();
            let until = Timestamp(v.value());
            if until > now {
                let id: [u8; 16] = id.try_into().map_err(|_| corrupt("seen id"))?;
                index.mark(MessageId::from_bytes(id), until);
            }
        }
        Ok(index)
    }

    /// Writes pushes, removals, marks and state in one transaction; the
    /// pushes' keys.
    fn write(
        &self,
        push: &[(String, SpoolRecord)],
        remove: &[(String, SpoolKey)],
        mark: &[(MessageId, Timestamp)],
        state: &[(String, Vec<u8>)],
    ) -> Result<Vec<SpoolKey>> {
        if push.is_empty() && remove.is_empty() && mark.is_empty() && state.is_empty() {
            return Ok(Vec::new());
        }
        let mut next = self.next_seq.lock().map_err(|_| StoreError::Closed)?;
        let mut seq = *next;
        let mut keys = Vec::with_capacity(push.len());
        let w = self.db.begin_write().map_err(be)?;
        {
            let mut t = w.open_table(QUEUE).map_err(be)?;
            let mut seen = w.open_table(QUEUE_SEEN).map_err(be)?;
            for (q, k) in remove {
                t.remove((q.as_str(), k.rank, k.seq)).map_err(be)?;
            }
            for (id, until) in mark {
                seen.insert((RECEIVED, id.as_bytes().as_slice()), until.0)
                    .map_err(be)?;
            }
            for (q, r) in push {
                let rank = MAX_PRECEDENCE - r.precedence.min(MAX_PRECEDENCE);
                t.insert((q.as_str(), rank, seq), encode_spool(r).as_slice())
                    .map_err(be)?;
                keys.push(SpoolKey { rank, seq });
                seq += 1;
            }
            if seq != *next {
                let mut m = w.open_table(SPOOL_META).map_err(be)?;
                m.insert(QUEUE_NEXT_SEQ, seq).map_err(be)?;
            }
            if !state.is_empty() {
                let mut s = w.open_table(STATE).map_err(be)?;
                for (k, v) in state {
                    s.insert(k.as_str(), v.as_slice()).map_err(be)?;
                }
            }
        }
        commit(w)?;
        *next = seq;
        Ok(keys)
    }
}

impl QueueStore for RedbQueues {
    fn commit(&self, ops: Vec<QueueOp>, now: Timestamp) -> Result<Vec<QueueOutcome>> {
        let _one = self.committing.lock().map_err(|_| StoreError::Closed)?;
        let mut outcomes = Vec::with_capacity(ops.len());
        let (mut push, mut remove, mut mark) = (Vec::new(), Vec::new(), Vec::new());
        let mut state: Vec<(String, Vec<u8>)> = Vec::new();
        // Per offer that will be written: its outcome slot and its pushes.
        let mut offers: Vec<(usize, std::ops::Range<usize>, Vec<String>)> = Vec::new();
        {
            let mut index = self.index();
            let mut pending = Pending::default();
            for op in ops {
                match op {
                    QueueOp::Offer {
                        push: p,
                        received,
                        capacity,
                        queue_capacity,
                    } => match index.plan(
                        p,
                        received.map(|r| r.0),
                        capacity,
                        queue_capacity,
                        now,
                        &mut pending,
                    ) {
                        Planned::Duplicate => {
                            outcomes.push(QueueOutcome::Offered(Ok(Offered::Duplicate)))
                        }
                        Planned::Full(e) => outcomes.push(QueueOutcome::Offered(Err(e))),
                        Planned::Write(mine, over) => {
                            let start = push.len();
                            push.extend(mine);
                            mark.extend(received);
                            offers.push((outcomes.len(), start..push.len(), over));
                            outcomes.push(QueueOutcome::Offered(Ok(Offered::Queued(0))));
                        }
                    },
                    QueueOp::Ack { queue, ids } => {
                        // Out of the working set at once: never handed out again.
                        let mut done = Vec::new();
                        for id in ids {
                            if let Some(k) = index.remove(&queue, &id) {
                                remove.push((queue.clone(), k));
                                done.push(id);
                            }
                        }
                        outcomes.push(QueueOutcome::Acked(done));
                    }
                    QueueOp::Remove(keys) => {
                        for (q, k) in &keys {
                            index.remove_key(q, k);
                        }
                        remove.extend(keys);
                        outcomes.push(QueueOutcome::Removed);
                    }
                    QueueOp::State(pairs) => {
                        state.extend(pairs);
                        outcomes.push(QueueOutcome::Stated);
                    }
                }
            }
        }
        let keys = self.write(&push, &remove, &mark, &state)?;
        let mut index = self.index();
        for (id, until) in mark {
            index.mark(id, until);
        }
        for (slot, range, over_quota) in offers {
            outcomes[slot] = QueueOutcome::Offered(Ok(if over_quota.is_empty() {
                Offered::Queued(range.len())
            } else {
                Offered::Partly {
                    queued: range.len(),
                    over_quota,
                }
            }));
        }
        for ((q, r), k) in push.into_iter().zip(keys) {
            index.insert(q, k, r);
        }
        Ok(outcomes)
    }

    fn lease(
        &self,
        queues: &[&str],
        max_bytes: usize,
        max_items: usize,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Leased> {
        Ok(self.index().lease(queues, max_bytes, max_items, now, until))
    }

    fn was_received(&self, id: &MessageId, now: Timestamp) -> bool {
        self.index().was_received(id, now)
    }

    fn readiness(&self, queue: Option<&str>, now: Timestamp) -> Readiness {
        self.index().readiness(queue, now)
    }

    fn names(&self) -> Vec<String> {
        self.index().names()
    }

    fn stats(&self, now: Timestamp) -> QueueStats {
        self.index().stats(now)
    }

    fn prune_seen(&self, now: Timestamp) -> Result<usize> {
        self.index().forget_seen(now);
        let w = self.db.begin_write().map_err(be)?;
        let n = {
            let mut s = w.open_table(QUEUE_SEEN).map_err(be)?;
            let before = s.len().map_err(be)?;
            s.retain(|_, until| until > now.0).map_err(be)?;
            before - s.len().map_err(be)?
        };
        commit(w)?;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]
    use super::*;

    /// A spool an older version kept in the redb file moves into segments
    /// at open: every entry in its order, the client keys with them, once.
    #[test]
    fn a_spool_left_in_the_redb_file_by_an_older_version_moves_into_segments_once() {
        let dir = super::super::conformance::tmp();
        let now = Timestamp::now();
        let recs: Vec<SpoolRecord> = (0..5u8)
            .map(|i| SpoolRecord {
                id: MessageId::new(),
                precedence: i % 2 * 5,
                persistent: true,
                expiry: None,
                header: Bytes::from_static(b"<header/>"),
                content: Bytes::from(vec![b'a' + i; 10]),
            })
            .collect();
        {
            // What an older version left: rows in `spool`, a client key, its counter.
            let store = RedbStore::open(&dir).unwrap();
            let w = store.db.begin_write().unwrap();
            {
                let mut t = w.open_table(SPOOL).unwrap();
                for (seq, r) in recs.iter().enumerate() {
                    let rank = MAX_PRECEDENCE - r.precedence;
                    t.insert((rank, seq as u64 + 1), encode_spool(r).as_slice())
                        .unwrap();
                }
                let mut k = w.open_table(CLIENT_KEYS).unwrap();
                let mut v = recs[0].id.as_bytes().to_vec();
                v.extend_from_slice(&(now.0 + 3_600_000).to_be_bytes());
                k.insert("order-7", v.as_slice()).unwrap();
                let mut m = w.open_table(SPOOL_META).unwrap();
                m.insert("next_seq", 6).unwrap();
            }
            w.commit().unwrap();
        }
        let order = |s: &Arc<dyn Spool>| -> Vec<MessageId> {
            s.peek(100, &HashSet::new(), Timestamp::now())
                .unwrap()
                .entries
                .into_iter()
                .map(|(_, r)| r.id)
                .collect()
        };
        let mut expect: Vec<&SpoolRecord> = recs.iter().collect();
        expect.sort_by_key(|r| std::cmp::Reverse(r.precedence));
        let expect: Vec<MessageId> = expect.into_iter().map(|r| r.id).collect();
        for _ in 0..2 {
            let store = RedbStore::open(&dir).unwrap();
            let s = store.spool(1 << 20).unwrap();
            assert_eq!(order(&s), expect);
            assert_eq!(s.stats().messages, 5);
            // The key came along; new entries sort after the moved ones.
            let r = s
                .write_keyed(
                    vec![(
                        recs[1].clone(),
                        Some(ClientKey {
                            key: "order-7".into(),
                            until: now.after(std::time::Duration::from_secs(60)),
                        }),
                    )],
                    &[],
                    now,
                )
                .unwrap();
            assert_eq!(r[0].as_ref().unwrap(), &Pushed::Repeat(recs[0].id));
            let r = store.db.begin_read().unwrap();
            assert!(
                r.open_table(SPOOL).unwrap().is_empty().unwrap(),
                "moved, not copied"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Messages an older version kept one row each move into runs at open,
    /// in chunks, keeping their sequence numbers, count and exactly-once
    /// index; storing goes on after them.
    #[test]
    fn messages_left_one_row_each_by_an_older_version_move_into_runs() {
        let dir = super::super::conformance::tmp();
        let msg = |i: usize| StoredMessage {
            id: MessageId::new(),
            source: "acme.p1".parse().unwrap(),
            class: "alarm".into(),
            subclass: None,
            kind: crate::model::ContentKind::Alarm,
            created: Timestamp(1_000 + i as u64),
            received: Timestamp(2_000 + i as u64),
            header: Bytes::from_static(b"<header/>"),
            content: Bytes::from(format!("<alarm>{i}</alarm>")),
        };
        // More than one chunk's worth, as an older version wrote them.
        let old: Vec<StoredMessage> = (0..MOVE_CHUNK + 10).map(msg).collect();
        {
            let store = RedbStore::open(&dir).unwrap();
            let w = store.db.begin_write().unwrap();
            {
                let mut t = w.open_table(MESSAGES).unwrap();
                let mut ids = w.open_table(MESSAGE_IDS).unwrap();
                for (i, m) in old.iter().enumerate() {
                    t.insert(i as u64 + 1, encode_stored(m).as_slice()).unwrap();
                    ids.insert(m.id.as_bytes().as_slice(), i as u64 + 1)
                        .unwrap();
                }
            }
            w.commit().unwrap();
        }
        let n = old.len() as u64;
        for round in 0..2u64 {
            let store = RedbStore::open(&dir).unwrap();
            let m = store.messages().unwrap();
            assert_eq!(m.last_seq(), n + round);
            assert_eq!(m.count().unwrap(), n + round);
            let (got, _) = m
                .scan(0, usize::MAX, usize::MAX, &MessageFilter::default())
                .unwrap();
            assert_eq!(got.len() as u64, n + round);
            for (seq, x) in got.iter().take(old.len()) {
                assert_eq!(x, &old[*seq as usize - 1]);
            }
            // An old message's ID is still known; a new one follows the old.
            assert_eq!(
                m.append(vec![old[7].clone()], vec![]).unwrap(),
                [Appended::Duplicate(8)]
            );
            assert_eq!(
                m.append(vec![msg(0)], vec![]).unwrap(),
                [Appended::Stored(n + round + 1)]
            );
            let r = store.db.begin_read().unwrap();
            assert!(
                r.open_table(MESSAGES).unwrap().is_empty().unwrap(),
                "moved, not copied"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
