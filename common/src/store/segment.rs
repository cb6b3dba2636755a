//! The [`Spool`] as append-only segment files (`DIR/spool/*.seg`).
//!
//! A spool's life is short and simple: a message is pushed, sent, and
//! removed once the parent answered for it. A B-tree (redb) writes every
//! message into a page, copies pages on each commit and writes again to
//! delete it; here a message is written once, as part of its commit's
//! frame, and leaves by a ten-byte removal mark. A segment all of whose
//! messages have left is deleted whole. The order of sending (precedence,
//! then age) lives in memory, rebuilt from the files at open.
//!
//! # On-disk format
//!
//! A segment is named by its number (`0000000000000001.seg`, ascending) and
//! holds frames. One commit is one frame, appended and then `fdatasync`ed:
//!
//! ```text
//! frame   = magic "RSP1" | payload length u32 | CRC-32 of payload u32 | payload
//! payload = op*
//! op      = 0x01 floor   seq u64             first frame of every segment: seqs below were used
//!         | 0x02 put     rank u8, seq u64, flags u8 (1 = persistent), expiry u64 (0 = none),
//!                        id [16], header length u32, content length u32, header, content
//!         | 0x03 remove  rank u8, seq u64
//!         | 0x04 key     length u8, key, id [16], until u64 (ms)
//! ```
//!
//! Integers are big-endian. Within a frame, ops apply in order: a commit's
//! removals (and evictions) come before the puts that follow them.
//!
//! # Invariants and recovery
//!
//! * A commit returns only after its frame is on disk; a frame is whole
//!   (its CRC matches) or was never acknowledged. Opening replays every
//!   segment in order; a torn frame at the end of the **last** segment (the
//!   one being written when the process died) is cut off. A bad frame
//!   anywhere else is corruption, and opening fails with its file and
//!   offset rather than guess.
//! * Segments are deleted from the oldest on, and only when nothing in them
//!   is live: a removal mark in a kept segment can thus only name a message
//!   of a kept or deleted segment, never resurrect one. The deletion itself
//!   is done by a sweeper thread after the retiring frame is durable (an
//!   unlink of a full segment took 12–20 ms here, and held every commit
//!   behind it); a crash before it leaves files that replay finds dead.
//!   Even off the writer's thread, one unlink of a whole segment stalled
//!   the writer's next fdatasync for as long (the file system's journal),
//!   so the sweeper renames a segment aside (`N.dead`, deleted unread at
//!   open), cuts it down 1 MiB at a time and then unlinks it.
//! * A segment pinned by a few long-lived messages (held by a throttle, say)
//!   would keep every later segment alive. When the dead bytes on disk
//!   outweigh the live ones and pass four segments' worth, and the oldest
//!   segment is less than a quarter live, each commit copies up to
//!   [`RELOCATE_BYTES`] of its messages forward under their own keys (a
//!   later put of the same key replaces the earlier one on replay), until
//!   it can go. A backlog drained in order is never copied.
//! * A client key is written with its message; when its segment is deleted
//!   and the key is still within its window, the key is copied forward in
//!   that same commit first.
//! * A new entry is invisible to [`Spool::peek`] until its frame is durable,
//!   so nothing is sent upward that a crash could take back.
//! * Entries that [`Spool::peek`] finds expired leave the index at once;
//!   their removal marks ride with the next commit (a crash before that
//!   brings them back, to expire again).
//!
//! Message bodies are kept in memory up to [`CACHE_BYTES`] (what is about to
//! be sent usually is); others are read back from their segment.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::*;
use crate::model::MAX_PRECEDENCE;

const MAGIC: [u8; 4] = *b"RSP1";
const FRAME_HEADER: usize = 12;
/// A segment is closed and a new one started once it holds this much.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Message bodies kept in memory at most; the rest are read from disk.
pub const CACHE_BYTES: u64 = 32 << 20;
/// Bytes of messages copied out of a mostly dead oldest segment per commit.
pub const RELOCATE_BYTES: u64 = 4 << 20;
/// Segments' worth of dead bytes kept before a mostly dead oldest segment
/// is compacted (and only while the dead outweigh the live).
const COMPACT_AFTER_SEGMENTS: usize = 4;
/// Client keys copied forward per commit at most.
const KEYS_CARRIED: usize = 4096;
/// Expired client keys forgotten per commit at most.
const KEYS_PRUNED: usize = 256;
/// Reads of neighbouring bodies are joined across gaps up to this (the
/// next put's fixed part, a few removal marks)…
const READ_GAP: u64 = 256;
/// …into runs of at most this.
const READ_RUN: u64 = 1 << 20;
/// Evicted messages remembered for their report.
const MAX_EVICTED_KEPT: usize = 10_000;

const OP_FLOOR: u8 = 1;
const OP_PUT: u8 = 2;
const OP_REMOVE: u8 = 3;
const OP_KEY: u8 = 4;
/// Bytes of a put before its header.
const PUT_FIXED: usize = 1 + 1 + 8 + 1 + 8 + 16 + 4 + 4;
/// Bytes of a removal mark.
const REMOVE_BYTES: usize = 1 + 1 + 8;

fn io_err(what: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", what.display()))
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| StoreError::Closed)
}

/// Where an entry's bytes are, and what the index needs of it.
struct Entry {
    seg: u64,
    /// File offset of the header; the content follows it.
    at: u64,
    hlen: u32,
    clen: u32,
    id: MessageId,
    persistent: bool,
    expiry: Option<Timestamp>,
    /// Written but not yet durable: not to be sent.
    pending: bool,
    /// Header and content, when kept in memory.
    body: Option<(Bytes, Bytes)>,
}

impl Entry {
    /// The entry of `r`, put at `at` in segment `seg`.
    fn of(
        r: &SpoolRecord,
        seg: u64,
        at: u64,
        pending: bool,
        body: Option<(Bytes, Bytes)>,
    ) -> Entry {
        Entry {
            seg,
            at,
            hlen: r.header.len() as u32,
            clen: r.content.len() as u32,
            id: r.id,
            persistent: r.persistent,
            expiry: r.expiry,
            pending,
            body,
        }
    }

    fn size(&self) -> u64 {
        self.hlen as u64 + self.clen as u64 + SPOOL_RECORD_OVERHEAD as u64
    }
}

struct Segment {
    file: Arc<File>,
    len: u64,
    live: u64,
    live_bytes: u64,
    /// Keys put here (some since removed or moved on): what compaction
    /// looks through.
    puts: Vec<SpoolKey>,
}

impl Segment {
    fn new(file: Arc<File>, len: u64) -> Segment {
        Segment {
            file,
            len,
            live: 0,
            live_bytes: 0,
            puts: Vec::new(),
        }
    }
}

struct KeyEntry {
    id: MessageId,
    until: Timestamp,
    /// The segment its latest copy is in.
    seg: u64,
}

#[derive(Default)]
struct Index {
    capacity: u64,
    entries: BTreeMap<SpoolKey, Entry>,
    segs: BTreeMap<u64, Segment>,
    keys: HashMap<String, KeyEntry>,
    key_expiry: BTreeSet<(u64, String)>,
    bytes: u64,
    next_seq: u64,
    evicted: u64,
    expired: u64,
    cached: u64,
    evicted_headers: VecDeque<Bytes>,
    /// Removal marks of expired entries, for the next commit's frame.
    unwritten_removals: Vec<SpoolKey>,
}

impl Index {
    fn insert(&mut self, key: SpoolKey, e: Entry) {
        // A relocated copy replaces the first (on replay too).
        self.take(key);
        if let Some(s) = self.segs.get_mut(&e.seg) {
            s.live += 1;
            s.live_bytes += e.size();
            s.puts.push(key);
        }
        self.bytes += e.size();
        if e.body.is_some() {
            self.cached += e.hlen as u64 + e.clen as u64;
        }
        self.entries.insert(key, e);
    }

    fn take(&mut self, key: SpoolKey) -> Option<Entry> {
        let e = self.entries.remove(&key)?;
        if let Some(s) = self.segs.get_mut(&e.seg) {
            s.live -= 1;
            s.live_bytes -= e.size();
        }
        self.bytes -= e.size();
        if e.body.is_some() {
            self.cached -= e.hlen as u64 + e.clen as u64;
        }
        Some(e)
    }

    fn key_lookup(&self, key: &str, now: Timestamp) -> Option<MessageId> {
        self.keys.get(key).filter(|k| k.until > now).map(|k| k.id)
    }

    fn key_insert(&mut self, key: String, k: KeyEntry) -> Option<KeyEntry> {
        self.key_expiry.insert((k.until.0, key.clone()));
        self.keys.insert(key, k)
    }

    fn prune_keys(&mut self, now: Timestamp) {
        for _ in 0..KEYS_PRUNED {
            let Some((until, key)) = self.key_expiry.first().cloned() else {
                return;
            };
            if until > now.0 {
                return;
            }
            self.key_expiry.pop_first();
            if self.keys.get(&key).is_some_and(|k| k.until.0 <= now.0) {
                self.keys.remove(&key);
            }
        }
    }

    /// The header and content of an entry: from memory or its segment.
    fn read(&self, e: &Entry) -> Result<(Bytes, Bytes)> {
        if let Some(b) = &e.body {
            return Ok(b.clone());
        }
        let seg = self
            .segs
            .get(&e.seg)
            .ok_or_else(|| StoreError::Backend(format!("spool segment {} is gone", e.seg)))?;
        read_body(&seg.file, e.at, e.hlen, e.clen)
    }
}

fn read_body(file: &File, at: u64, hlen: u32, clen: u32) -> Result<(Bytes, Bytes)> {
    let mut buf = vec![0u8; hlen as usize + clen as usize];
    file.read_exact_at(&mut buf, at)
        .map_err(|e| StoreError::Backend(format!("spool read: {e}")))?;
    let all = Bytes::from(buf);
    Ok((all.slice(..hlen as usize), all.slice(hlen as usize..)))
}

/// The segment being written.
struct Log {
    active: u64,
    file: Arc<File>,
    len: u64,
    /// Set when a failed write could not be taken back: the file's end is
    /// unknown, so nothing more is written until the spool is reopened.
    broken: Option<String>,
}

/// One commit's frame, as it is built.
struct Frame {
    buf: Vec<u8>,
    /// File offset the frame will start at.
    base: u64,
}

impl Frame {
    /// A frame to be written at `base`, with room for about `size` bytes.
    fn new(base: u64, size: usize) -> Frame {
        let mut buf = Vec::with_capacity(FRAME_HEADER + size.max(64));
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        Frame { buf, base }
    }

    fn is_empty(&self) -> bool {
        self.buf.len() == FRAME_HEADER
    }

    fn floor(&mut self, seq: u64) {
        self.buf.push(OP_FLOOR);
        self.buf.extend_from_slice(&seq.to_be_bytes());
    }

    /// Appends a put; returns the file offset its header will have.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        key: SpoolKey,
        id: &MessageId,
        persistent: bool,
        expiry: Option<Timestamp>,
        header: &[u8],
        content: &[u8],
    ) -> u64 {
        let b = &mut self.buf;
        b.reserve(PUT_FIXED + header.len() + content.len());
        b.push(OP_PUT);
        b.push(key.rank);
        b.extend_from_slice(&key.seq.to_be_bytes());
        b.push(persistent as u8);
        b.extend_from_slice(&expiry.map(|t| t.0).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(&(header.len() as u32).to_be_bytes());
        b.extend_from_slice(&(content.len() as u32).to_be_bytes());
        let at = self.base + b.len() as u64;
        b.extend_from_slice(header);
        b.extend_from_slice(content);
        at
    }

    fn remove(&mut self, key: SpoolKey) {
        self.buf.push(OP_REMOVE);
        self.buf.push(key.rank);
        self.buf.extend_from_slice(&key.seq.to_be_bytes());
    }

    fn key(&mut self, key: &str, id: &MessageId, until: Timestamp) {
        self.buf.push(OP_KEY);
        self.buf.push(key.len() as u8);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(id.as_bytes());
        self.buf.extend_from_slice(&until.0.to_be_bytes());
    }

    /// The finished bytes: header filled in.
    fn seal(mut self) -> Vec<u8> {
        let len = (self.buf.len() - FRAME_HEADER) as u32;
        let crc = crc32fast::hash(&self.buf[FRAME_HEADER..]);
        self.buf[..4].copy_from_slice(&MAGIC);
        self.buf[4..8].copy_from_slice(&len.to_be_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

/// What a commit changed in the index, to take back if its write fails.
#[derive(Default)]
struct Undo {
    added: Vec<SpoolKey>,
    removed: Vec<(SpoolKey, Entry)>,
    keys: Vec<(String, Option<KeyEntry>)>,
    /// Relocated entries: key, old segment and offset.
    moved: Vec<(SpoolKey, u64, u64)>,
    /// Client keys copied forward: key and the segment of their old copy.
    carried: Vec<(String, u64)>,
    unwritten_removals: Vec<SpoolKey>,
    next_seq: u64,
    evicted: u64,
    evicted_headers: usize,
}

/// [`Spool`] on append-only segment files; see the module docs.
pub struct SegmentSpool {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Held by the one writer of a commit while it writes and syncs; the
    /// index is locked only to plan and to finish, so `peek` and `stats`
    /// never wait for an fsync.
    log: Mutex<Log>,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
    /// Deletes spent segments; before `_lock`, so that it is done (joined)
    /// before another opener may take the directory.
    sweeper: Sweeper,
    _lock: File,
}

/// Deletes spent segments on a thread of its own, oldest first, so that
/// a commit does not wait for the file system to free them: after a
/// backlog drains, one commit may retire dozens of 16 MiB segments.
///
/// What is handed over is already spent (the frame that retired it is
/// durable), so a crash before the deletion leaves a file that replay
/// finds all dead, as a crash between the frame and an inline deletion
/// always could; the order keeps the invariant that only the oldest
/// segments go. Dropping the sweeper waits for what it was given.
struct Sweeper {
    tx: Option<std::sync::mpsc::Sender<Sweep>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the sweeper is asked to do, in order.
enum Sweep {
    Delete(PathBuf),
    /// Answer once everything before it is done (tests).
    #[cfg(test)]
    Flush(std::sync::mpsc::Sender<()>),
}

impl Sweeper {
    fn start() -> Sweeper {
        let (tx, rx) = std::sync::mpsc::channel::<Sweep>();
        let thread = std::thread::Builder::new()
            .name("spool-sweeper".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Sweep::Delete(path) => delete_segment(&path),
                        #[cfg(test)]
                        Sweep::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        match thread {
            Ok(t) => Sweeper {
                tx: Some(tx),
                thread: Some(t),
            },
            Err(e) => {
                tracing::warn!(error = %e, "spool: no sweeper thread; spent segments are deleted as commits retire them");
                Sweeper {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    fn delete(&self, path: PathBuf) {
        let unsent = match &self.tx {
            Some(tx) => tx.send(Sweep::Delete(path)).err().map(|e| e.0),
            None => Some(Sweep::Delete(path)),
        };
        if let Some(Sweep::Delete(path)) = unsent {
            delete_segment(&path);
        }
    }

    /// Waits until everything handed over is deleted.
    #[cfg(test)]
    fn wait(&self) {
        let (done, answer) = std::sync::mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Sweep::Flush(done)).is_ok() {
                let _ = answer.recv();
            }
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes a spent segment is cut down by in one step ([`delete_segment`]).
const CUT_STEP: u64 = 1 << 20;

/// Deletes a spent segment without stalling the writer's commits.
///
/// Unlinking a whole 16 MiB segment frees all its blocks in one journal
/// handle, and an fdatasync of the active segment that comes meanwhile
/// waits for it: 20–25 ms here, every 16 MiB, at the writer's p99.9. So the
/// segment is first renamed aside (`N.dead`: from then on it is gone for
/// replay, and [`SegmentSpool::open`] deletes such a file unread), then cut
/// down a step at a time, each a short handle, and unlinked.
fn delete_segment(path: &Path) {
    let dead = path.with_extension("dead");
    let aside = std::fs::rename(path, &dead)
        .and_then(|()| path.parent().map_or(Ok(()), |d| File::open(d)?.sync_all()));
    let gone = match aside {
        Ok(()) => {
            // Best effort: the unlink that follows frees whatever is left.
            let _ = cut_down(&dead);
            std::fs::remove_file(&dead)
        }
        Err(_) if dead.exists() => std::fs::remove_file(&dead),
        Err(_) => std::fs::remove_file(path),
    };
    if let Err(e) = gone {
        tracing::warn!(segment = %path.display(), error = %e, "spool: cannot delete a spent segment");
    }
}

/// Shortens `path` to at most [`CUT_STEP`] bytes, a step at a time.
fn cut_down(path: &Path) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    let mut len = f.metadata()?.len();
    while len > CUT_STEP {
        len -= CUT_STEP;
        f.set_len(len)?;
    }
    Ok(())
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.seg"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Why a segment's frames stopped.
enum Stop {
    /// The file ended cleanly after the last frame.
    End,
    /// A frame at this offset is incomplete or does not match its CRC.
    Torn(u64, &'static str),
}

/// `rsnet_spool_fsync_duration_seconds`: each commit's fdatasync.
fn fsync_times() -> &'static crate::metrics::Histogram {
    static TIMES: std::sync::LazyLock<crate::metrics::Histogram> = std::sync::LazyLock::new(|| {
        crate::metrics::process().histogram_with(
            "rsnet_spool_fsync_duration_seconds",
            &[],
            "time of the fdatasync that makes one spool commit durable",
        )
    });
    &TIMES
}

impl SegmentSpool {
    /// Opens (or creates) the spool in `dir`, replaying its segments.
    ///
    /// # Errors
    /// The directory cannot be made or locked (another process has it), a
    /// segment cannot be read, or a segment other than the last is corrupt.
    pub fn open(dir: &Path, capacity: u64) -> Result<SegmentSpool> {
        Self::open_sized(dir, capacity, SEGMENT_BYTES)
    }

    /// [`SegmentSpool::open`] with segments closed at `segment_bytes`.
    ///
    /// # Errors
    /// As [`SegmentSpool::open`].
    pub fn open_sized(dir: &Path, capacity: u64, segment_bytes: u64) -> Result<SegmentSpool> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        lock_file.try_lock().map_err(|e| {
            StoreError::Backend(format!(
                "{}: the spool is in use by another process ({e})",
                dir.display()
            ))
        })?;
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.ends_with(".dead") {
                    // Spent, and being deleted when the process stopped.
                    if let Err(err) = std::fs::remove_file(e.path()) {
                        tracing::warn!(segment = %e.path().display(), error = %err, "spool: cannot delete a spent segment");
                    }
                    return None;
                }
                let n = name.strip_suffix(".seg")?;
                (n.len() == 16).then(|| u64::from_str_radix(n, 16).ok())?
            })
            .collect();
        numbers.sort_unstable();
        let mut ix = Index {
            capacity,
            next_seq: 1,
            ..Default::default()
        };
        let last = numbers.last().copied();
        for &n in &numbers {
            let path = seg_path(dir, n);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            let file = Arc::new(file);
            ix.segs.insert(n, Segment::new(file.clone(), 0));
            let (end, stop) = replay(&file, n, &mut ix).map_err(|e| io_err(&path, e))?;
            match stop {
                Stop::End => {}
                Stop::Torn(at, why) if Some(n) == last => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = at,
                        reason = why,
                        "spool: cutting off a frame torn by a crash (never acknowledged)"
                    );
                    file.set_len(at).map_err(|e| io_err(&path, e))?;
                    file.sync_all().map_err(|e| io_err(&path, e))?;
                }
                Stop::Torn(at, why) => {
                    return Err(StoreError::Backend(format!(
                        "{}: corrupt spool segment at offset {at} ({why}); it is not the last, so this is not a torn write",
                        path.display()
                    )));
                }
            }
            if let Some(s) = ix.segs.get_mut(&n) {
                s.len = end;
            }
        }
        let log = match last {
            Some(n) => {
                let s = &ix.segs[&n];
                Log {
                    active: n,
                    file: s.file.clone(),
                    len: s.len,
                    broken: None,
                }
            }
            None => {
                let (file, len) = create_segment(dir, 1, ix.next_seq)?;
                ix.segs.insert(1, Segment::new(file.clone(), len));
                Log {
                    active: 1,
                    file,
                    len,
                    broken: None,
                }
            }
        };
        Ok(SegmentSpool {
            dir: dir.to_path_buf(),
            index: Mutex::new(ix),
            log: Mutex::new(log),
            segment_bytes,
            sweeper: Sweeper::start(),
            _lock: lock_file,
        })
    }

    /// Waits until the spent segments retired so far are deleted (they are
    /// deleted off the commit path: [`Sweeper`]).
    #[cfg(test)]
    pub(crate) fn swept(&self) {
        self.sweeper.wait();
    }

    /// Takes entries with their keys (and client keys) from another spool
    /// in one durable commit: how the embedded backend moves a spool kept
    /// by an older version into segments. An entry already here under the
    /// same key is replaced, so a move cut short by a crash can be redone.
    ///
    /// # Errors
    /// The write failed; nothing of it is kept.
    pub fn import(
        &self,
        entries: Vec<(SpoolKey, SpoolRecord)>,
        keys: Vec<(String, MessageId, Timestamp)>,
        next_seq: u64,
    ) -> Result<()> {
        let mut log = lock(&self.log)?;
        let size = entries
            .iter()
            .map(|(_, r)| PUT_FIXED + r.header.len() + r.content.len())
            .sum::<usize>()
            + keys.len() * (1 + 1 + MAX_CLIENT_KEY_BYTES + 16 + 8);
        let mut frame = Frame::new(log.len, size + 9);
        let mut added = Vec::new();
        {
            let mut ix = lock(&self.index)?;
            let floor = entries
                .iter()
                .map(|(k, _)| k.seq + 1)
                .max()
                .unwrap_or(0)
                .max(next_seq)
                .max(ix.next_seq);
            frame.floor(floor);
            for (k, r) in &entries {
                let at = frame.put(*k, &r.id, r.persistent, r.expiry, &r.header, &r.content);
                added.push((*k, at));
            }
            for (key, id, until) in &keys {
                if key.len() <= MAX_CLIENT_KEY_BYTES {
                    frame.key(key, id, *until);
                }
            }
            ix.next_seq = floor;
        }
        let active = log.active;
        self.append(&mut log, frame)?;
        let mut ix = lock(&self.index)?;
        for ((k, r), (_, at)) in entries.into_iter().zip(added) {
            ix.insert(k, Entry::of(&r, active, at, false, None));
        }
        for (key, id, until) in keys {
            if key.len() <= MAX_CLIENT_KEY_BYTES {
                ix.key_insert(
                    key,
                    KeyEntry {
                        id,
                        until,
                        seg: active,
                    },
                );
            }
        }
        if let Some(s) = ix.segs.get_mut(&active) {
            s.len = log.len;
        }
        Ok(())
    }

    /// Writes a sealed frame at the end of the active segment and syncs it;
    /// on failure cuts the file back to where it was.
    fn append(&self, log: &mut Log, frame: Frame) -> Result<()> {
        if let Some(why) = &log.broken {
            return Err(StoreError::Backend(format!(
                "spool unusable until restart: {why}"
            )));
        }
        let bytes = frame.seal();
        let path = seg_path(&self.dir, log.active);
        let res = log.file.write_all_at(&bytes, log.len).and_then(|()| {
            let t = std::time::Instant::now();
            let r = log.file.sync_data();
            fsync_times().observe(t.elapsed());
            r
        });
        match res {
            Ok(()) => {
                log.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(t) = log
                    .file
                    .set_len(log.len)
                    .and_then(|()| log.file.sync_data())
                {
                    log.broken = Some(format!("{}: {e}; then {t}", path.display()));
                }
                Err(io_err(&path, e))
            }
        }
    }

    /// Starts a new segment once the active one is full. A failure leaves
    /// the active one in use (tried again after the next commit).
    fn rotate(&self, log: &mut Log) {
        if log.len < self.segment_bytes || log.broken.is_some() {
            return;
        }
        let next = log.active + 1;
        let floor = match self.index.lock() {
            Ok(ix) => ix.next_seq,
            Err(_) => return,
        };
        match create_segment(&self.dir, next, floor) {
            Ok((file, len)) => {
                if let Ok(mut ix) = self.index.lock() {
                    ix.segs.insert(next, Segment::new(file.clone(), len));
                }
                *log = Log {
                    active: next,
                    file,
                    len,
                    broken: None,
                };
            }
            Err(e) => tracing::warn!(error = %e, "spool: cannot start a new segment; writing on"),
        }
    }

    /// Plans the retirement of the oldest segments into `frame`: copies
    /// client keys (and, from a mostly dead segment, messages) forward.
    /// Returns the segments to delete once the frame is durable.
    fn plan_retirement(
        ix: &mut Index,
        active: u64,
        segment_bytes: u64,
        frame: &mut Frame,
        undo: &mut Undo,
        now: Timestamp,
    ) -> Result<Vec<u64>> {
        let mut retire = Vec::new();
        let mut keys_left = KEYS_CARRIED;
        // Dead bytes on disk: copying live messages forward is worth it only
        // when they keep a lot of them (more than a few segments' worth and
        // more than is live). A backlog draining in order never qualifies.
        let (on_disk, live_total) = ix
            .segs
            .values()
            .fold((0, 0), |(d, l), s| (d + s.len, l + s.live_bytes));
        let dead = on_disk.saturating_sub(live_total);
        let wasteful = dead > COMPACT_AFTER_SEGMENTS as u64 * segment_bytes && dead > live_total;
        let mut after = 0;
        while let Some((&n, seg)) = ix.segs.range(after..active).next() {
            after = n + 1;
            if seg.live > 0 {
                let worth = wasteful && seg.live_bytes * 4 < seg.len;
                if !worth {
                    break;
                }
                let keys = seg.puts.clone();
                let mut budget = RELOCATE_BYTES;
                for k in keys {
                    let Some(e) = ix.entries.get(&k) else {
                        continue;
                    };
                    if e.pending || e.seg != n {
                        continue;
                    }
                    let size = e.size();
                    if size > budget && budget < RELOCATE_BYTES {
                        break;
                    }
                    budget = budget.saturating_sub(size);
                    let (h, c) = ix.read(e)?;
                    let at = frame.put(k, &e.id, e.persistent, e.expiry, &h, &c);
                    let Some(mut e) = ix.take(k) else { continue };
                    undo.moved.push((k, e.seg, e.at));
                    e.seg = active;
                    e.at = at;
                    e.body = Some((h, c));
                    ix.insert(k, e);
                }
                if ix.segs.get(&n).is_some_and(|s| s.live > 0) {
                    break;
                }
            }
            // A scan of every key per spent segment: cheap while keys
            // number in the tens of thousands.
            let carried: Vec<String> = ix
                .keys
                .iter()
                .filter(|(_, k)| k.seg == n && k.until > now)
                .map(|(key, _)| key.clone())
                .collect();
            if carried.len() > keys_left {
                break;
            }
            keys_left -= carried.len();
            for key in carried {
                if let Some(k) = ix.keys.get_mut(&key) {
                    frame.key(&key, &k.id, k.until);
                    k.seg = active;
                    undo.carried.push((key, n));
                }
            }
            retire.push(n);
        }
        Ok(retire)
    }

    fn undo(ix: &mut Index, undo: Undo) {
        for k in undo.added.iter().rev() {
            ix.take(*k);
        }
        for (k, old_seg, old_at) in undo.moved.into_iter().rev() {
            if let Some(mut e) = ix.take(k) {
                e.seg = old_seg;
                e.at = old_at;
                ix.insert(k, e);
            }
        }
        for (k, e) in undo.removed.into_iter().rev() {
            ix.insert(k, e);
        }
        for (key, prev) in undo.keys.into_iter().rev() {
            match prev {
                Some(p) => {
                    ix.keys.insert(key, p);
                }
                None => {
                    ix.keys.remove(&key);
                }
            }
        }
        for (key, seg) in undo.carried {
            // Carried forward into the lost frame: the old copy stands.
            if let Some(k) = ix.keys.get_mut(&key) {
                k.seg = seg;
            }
        }
        ix.unwritten_removals.extend(undo.unwritten_removals);
        ix.next_seq = undo.next_seq;
        ix.evicted = undo.evicted;
        let keep = ix.evicted_headers.len().min(undo.evicted_headers);
        ix.evicted_headers.truncate(keep);
    }
}

/// Makes segment `n` with its floor frame, durable with its directory entry.
fn create_segment(dir: &Path, n: u64, floor: u64) -> Result<(Arc<File>, u64)> {
    let path = seg_path(dir, n);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    let mut frame = Frame::new(0, 9);
    frame.floor(floor);
    let bytes = frame.seal();
    file.write_all_at(&bytes, 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    Ok((Arc::new(file), bytes.len() as u64))
}

/// Replays one segment's frames into the index. Returns where its last
/// whole frame ends and why reading stopped.
fn replay(file: &File, seg: u64, ix: &mut Index) -> std::io::Result<(u64, Stop)> {
    let len = file.metadata()?.len();
    let mut at = 0u64;
    let mut head = [0u8; FRAME_HEADER];
    loop {
        if at == len {
            return Ok((at, Stop::End));
        }
        if len - at < FRAME_HEADER as u64 {
            return Ok((at, Stop::Torn(at, "short frame header")));
        }
        file.read_exact_at(&mut head, at)?;
        if head[..4] != MAGIC {
            return Ok((at, Stop::Torn(at, "bad magic")));
        }
        let plen = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as u64;
        let crc = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        if plen > len - at - FRAME_HEADER as u64 {
            return Ok((at, Stop::Torn(at, "frame runs past the end")));
        }
        let mut payload = vec![0u8; plen as usize];
        file.read_exact_at(&mut payload, at + FRAME_HEADER as u64)?;
        if crc32fast::hash(&payload) != crc {
            return Ok((at, Stop::Torn(at, "CRC mismatch")));
        }
        let base = at + FRAME_HEADER as u64;
        if let Err(why) = apply(&payload, base, seg, ix) {
            // The CRC matched: this frame was written whole, so it is not a
            // torn write but a format this build does not know, or damage.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame at offset {at}: {why}"),
            ));
        }
        at = base + plen;
    }
}

/// Applies one frame's ops; `base` is the file offset of the payload.
fn apply(p: &[u8], base: u64, seg: u64, ix: &mut Index) -> std::result::Result<(), &'static str> {
    let mut r = Reader { p, at: 0 };
    while r.at < p.len() {
        match r.u8()? {
            OP_FLOOR => {
                let s = r.u64()?;
                ix.next_seq = ix.next_seq.max(s);
            }
            OP_PUT => {
                let key = SpoolKey {
                    rank: r.u8()?,
                    seq: r.u64()?,
                };
                if key.rank > MAX_PRECEDENCE {
                    return Err("put: rank out of range");
                }
                let persistent = r.u8()? & 1 == 1;
                let expiry = r.u64()?;
                let id = MessageId::from_bytes(r.array()?);
                let hlen = r.u32()?;
                let clen = r.u32()?;
                let at = base + r.at as u64;
                let header = r.take(hlen as usize)?;
                let content = r.take(clen as usize)?;
                let body = (ix.cached + hlen as u64 + clen as u64 <= CACHE_BYTES).then(|| {
                    (
                        Bytes::copy_from_slice(header),
                        Bytes::copy_from_slice(content),
                    )
                });
                ix.next_seq = ix.next_seq.max(key.seq.saturating_add(1));
                ix.insert(
                    key,
                    Entry {
                        seg,
                        at,
                        hlen,
                        clen,
                        id,
                        persistent,
                        expiry: (expiry != 0).then_some(Timestamp(expiry)),
                        pending: false,
                        body,
                    },
                );
            }
            OP_REMOVE => {
                let key = SpoolKey {
                    rank: r.u8()?,
                    seq: r.u64()?,
                };
                ix.take(key);
            }
            OP_KEY => {
                let klen = r.u8()? as usize;
                let key = std::str::from_utf8(r.take(klen)?).map_err(|_| "key: not UTF-8")?;
                let id = MessageId::from_bytes(r.array()?);
                let until = Timestamp(r.u64()?);
                ix.key_insert(key.to_string(), KeyEntry { id, until, seg });
            }
            _ => return Err("unknown op"),
        }
    }
    Ok(())
}

struct Reader<'a> {
    p: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let s = self.p.get(self.at..end).ok_or("op runs past the frame")?;
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], &'static str> {
        self.take(N)?.try_into().map_err(|_| "short field")
    }
    fn u8(&mut self) -> std::result::Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, &'static str> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

impl Spool for SegmentSpool {
    fn write_keyed(
        &self,
        records: Vec<(SpoolRecord, Option<ClientKey>)>,
        remove: &[SpoolKey],
        now: Timestamp,
    ) -> Result<Vec<Result<Pushed>>> {
        if records.is_empty() && remove.is_empty() {
            return Ok(Vec::new());
        }
        let mut log = lock(&self.log)?;
        let active = log.active;
        let size = records
            .iter()
            .map(|(r, k)| {
                PUT_FIXED
                    + r.header.len()
                    + r.content.len()
                    + k.as_ref().map_or(0, |k| 1 + 1 + k.key.len() + 16 + 8)
            })
            .sum::<usize>()
            + remove.len() * REMOVE_BYTES;
        let mut frame = Frame::new(log.len, size);
        let mut out = Vec::with_capacity(records.len());
        let mut undo = Undo::default();
        let mut gone = 0u64;
        let retire = {
            let mut ix = lock(&self.index)?;
            undo.next_seq = ix.next_seq;
            undo.evicted = ix.evicted;
            undo.evicted_headers = ix.evicted_headers.len();
            ix.prune_keys(now);
            for k in std::mem::take(&mut ix.unwritten_removals) {
                frame.remove(k);
                undo.unwritten_removals.push(k);
            }
            for k in remove {
                if let Some(e) = ix.take(*k) {
                    frame.remove(*k);
                    undo.removed.push((*k, e));
                }
            }
            for (r, key) in records {
                if let Some(k) = &key {
                    if k.key.len() > MAX_CLIENT_KEY_BYTES {
                        out.push(Err(StoreError::Backend(format!(
                            "client key of {} bytes; at most {MAX_CLIENT_KEY_BYTES}",
                            k.key.len()
                        ))));
                        continue;
                    }
                    if let Some(first) = ix.key_lookup(&k.key, now) {
                        out.push(Ok(Pushed::Repeat(first)));
                        continue;
                    }
                }
                let size = r.size();
                let rank = MAX_PRECEDENCE - r.precedence.min(MAX_PRECEDENCE);
                if ix.bytes + size > ix.capacity {
                    // Evict non-persistent messages of lower precedence (or
                    // equal, for a persistent newcomer), lowest and oldest first.
                    let need = ix.bytes + size - ix.capacity;
                    let mut victims = Vec::new();
                    let mut freed = 0u64;
                    let lowest_first = (rank + 1..=MAX_PRECEDENCE)
                        .rev()
                        .chain(r.persistent.then_some(rank));
                    'scan: for vrank in lowest_first {
                        let range = SpoolKey {
                            rank: vrank,
                            seq: 0,
                        }..=SpoolKey {
                            rank: vrank,
                            seq: u64::MAX,
                        };
                        for (k, e) in ix.entries.range(range) {
                            if !e.persistent && !e.pending {
                                victims.push(*k);
                                freed += e.size();
                                if freed >= need {
                                    break 'scan;
                                }
                            }
                        }
                    }
                    if freed < need {
                        out.push(Err(StoreError::Full {
                            needed: size,
                            free: ix.capacity.saturating_sub(ix.bytes),
                            capacity: ix.capacity,
                        }));
                        continue;
                    }
                    for k in victims {
                        let header = ix.entries.get(&k).and_then(|e| ix.read(e).ok());
                        if let Some(e) = ix.take(k) {
                            frame.remove(k);
                            undo.removed.push((k, e));
                            ix.evicted += 1;
                            gone += 1;
                            if let Some((h, _)) = header {
                                if ix.evicted_headers.len() >= MAX_EVICTED_KEPT {
                                    ix.evicted_headers.pop_front();
                                    undo.evicted_headers = undo.evicted_headers.saturating_sub(1);
                                }
                                ix.evicted_headers.push_back(h);
                            }
                        }
                    }
                }
                let sk = SpoolKey {
                    rank,
                    seq: ix.next_seq,
                };
                ix.next_seq += 1;
                let at = frame.put(sk, &r.id, r.persistent, r.expiry, &r.header, &r.content);
                let body_len = (r.header.len() + r.content.len()) as u64;
                let body = (ix.cached + body_len <= CACHE_BYTES)
                    .then(|| (r.header.clone(), r.content.clone()));
                if let Some(k) = key {
                    frame.key(&k.key, &r.id, k.until);
                    let prev = ix.key_insert(
                        k.key.clone(),
                        KeyEntry {
                            id: r.id,
                            until: k.until,
                            seg: active,
                        },
                    );
                    undo.keys.push((k.key, prev));
                }
                ix.insert(sk, Entry::of(&r, active, at, true, body));
                undo.added.push(sk);
                out.push(Ok(Pushed::New(sk)));
            }
            match Self::plan_retirement(
                &mut ix,
                active,
                self.segment_bytes,
                &mut frame,
                &mut undo,
                now,
            ) {
                Ok(r) => r,
                Err(e) => {
                    Self::undo(&mut ix, undo);
                    return Err(e);
                }
            }
        };
        if frame.is_empty() && retire.is_empty() {
            return Ok(out);
        }
        if let Err(e) = self.append(&mut log, frame) {
            if let Ok(mut ix) = self.index.lock() {
                Self::undo(&mut ix, undo);
            }
            return Err(e);
        }
        {
            let mut ix = lock(&self.index)?;
            for k in &undo.added {
                if let Some(e) = ix.entries.get_mut(k) {
                    e.pending = false;
                }
            }
            if let Some(s) = ix.segs.get_mut(&active) {
                s.len = log.len;
            }
            // Moved entries keep their bodies in memory only within the cache's bound.
            for (k, _, _) in &undo.moved {
                if ix.cached > CACHE_BYTES {
                    if let Some(e) = ix.entries.get_mut(k) {
                        if e.body.take().is_some() {
                            let n = e.hlen as u64 + e.clen as u64;
                            ix.cached -= n;
                        }
                    }
                }
            }
            for n in &retire {
                ix.segs.remove(n);
            }
        }
        for n in retire {
            self.sweeper.delete(seg_path(&self.dir, n));
        }
        self.rotate(&mut log);
        if gone > 0 {
            tracing::warn!(
                evicted = gone,
                "spool full: evicted non-persistent messages of lower precedence"
            );
        }
        Ok(out)
    }

    fn peek(&self, limit: usize, skip: &HashSet<SpoolKey>, now: Timestamp) -> Result<Peeked> {
        let mut out = Peeked::default();
        let mut unread = Vec::new();
        {
            let mut ix = lock(&self.index)?;
            let mut expired = Vec::new();
            for (k, e) in &ix.entries {
                if out.entries.len() >= limit {
                    break;
                }
                if e.pending || skip.contains(k) {
                    continue;
                }
                if e.expiry.is_some_and(|t| t <= now) {
                    expired.push(*k);
                    continue;
                }
                let record = |header, content| SpoolRecord {
                    id: e.id,
                    precedence: MAX_PRECEDENCE.saturating_sub(k.rank),
                    persistent: e.persistent,
                    expiry: e.expiry,
                    header,
                    content,
                };
                match &e.body {
                    Some((h, c)) => out.entries.push((*k, record(h.clone(), c.clone()))),
                    None => {
                        let file = ix.segs.get(&e.seg).map(|s| s.file.clone());
                        let Some(file) = file else {
                            return Err(StoreError::Backend(format!(
                                "spool segment {} is gone",
                                e.seg
                            )));
                        };
                        let slot = out.entries.len();
                        out.entries.push((*k, record(Bytes::new(), Bytes::new())));
                        unread.push((slot, file, e.at, e.hlen, e.clen));
                    }
                }
            }
            for k in expired {
                if let Some(e) = ix.take(k) {
                    out.expired.push(e.id);
                    ix.expired += 1;
                    ix.unwritten_removals.push(k);
                }
            }
        }
        // Read what is not in memory without holding the index, neighbours
        // in one read: entries in send order usually sit in file order.
        let mut i = 0;
        while i < unread.len() {
            let (_, file, start, _, _) = &unread[i];
            let mut end = i + 1;
            let mut until = unread[i].2 + unread[i].3 as u64 + unread[i].4 as u64;
            while let Some((_, f, at, h, c)) = unread.get(end) {
                let near = Arc::ptr_eq(f, file)
                    && *at >= until
                    && *at - until <= READ_GAP
                    && *at + (*h as u64 + *c as u64) - start <= READ_RUN;
                if !near {
                    break;
                }
                until = *at + *h as u64 + *c as u64;
                end += 1;
            }
            let mut buf = vec![0u8; (until - start) as usize];
            file.read_exact_at(&mut buf, *start)
                .map_err(|e| StoreError::Backend(format!("spool read: {e}")))?;
            let run = Bytes::from(buf);
            for (slot, _, at, h, c) in &unread[i..end] {
                let off = (*at - *start) as usize;
                let (h, c) = (*h as usize, *c as usize);
                if let Some((_, r)) = out.entries.get_mut(*slot) {
                    r.header = run.slice(off..off + h);
                    r.content = run.slice(off + h..off + h + c);
                }
            }
            i = end;
        }
        Ok(out)
    }

    fn take_evicted(&self) -> Vec<Bytes> {
        self.index
            .lock()
            .map(|mut ix| ix.evicted_headers.drain(..).collect())
            .unwrap_or_default()
    }

    fn stats(&self) -> SpoolStats {
        match self.index.lock() {
            Ok(ix) => SpoolStats {
                messages: ix.entries.len() as u64,
                bytes: ix.bytes,
                capacity: ix.capacity,
                evicted: ix.evicted,
                expired: ix.expired,
            },
            Err(_) => SpoolStats::default(),
        }
    }
}
