//! Durable named queues with leases: what a parent holds for each child, and
//! what a proxy holds for its integrators.
//!
//! ```text
//! offer ──► GroupCommit ──► QueueStore (fsync) ──► memory ──► wake waiters
//! take(queue)  : in precedence-then-age order, skipping leased entries;
//!                leases what it returns for `lease`, drops expired ones
//! ack(queue, ids): removes (durably) what the receiver confirmed
//! ```
//!
//! The whole queue lives in memory (bounded by `capacity_bytes`); the store
//! only makes each change durable and gives it back at start, when every
//! lease is forgotten and everything unacknowledged is sent again. Receivers
//! drop repeated IDs, so a resend is harmless; a lost reply loses nothing.
//!
//! Receivers record what they took from their own parent with a *seen mark*
//! ([`RECEIVED`]): a message resent after its ack was lost is recognised and
//! acknowledged again without being queued twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::id::MessageId;
use crate::model::Timestamp;
use crate::store::{GroupCommit, QueueStore, QueueWrite, SpoolKey, SpoolRecord, StoreError};

/// The pseudo-queue under which a node marks what it received from its
/// parent (not a valid component ID, so it cannot clash with a queue name).
pub const RECEIVED: &str = "^received";
/// The pseudo-queue holding control actions that were received (their
/// received mark is durable) but whose result is not yet spooled; what is
/// left there at start is carried out then.
pub const CONTROL: &str = "^control";

/// True for a pseudo-queue name ([`RECEIVED`], [`CONTROL`]), which is never
/// a destination.
pub fn is_pseudo(queue: &str) -> bool {
    queue.starts_with('^')
}

/// One message offered by [`Queues::offer_many`].
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// Entries to queue, each to its named queue.
    pub push: Vec<(String, SpoolRecord)>,
    /// The message ID to mark as received from the parent, if it came from there.
    pub received: Option<MessageId>,
}

/// How queues behave.
#[derive(Debug, Clone)]
pub struct QueuesConfig {
    /// Bytes all queues together may hold; an offer beyond fails with
    /// [`StoreError::Full`] (and is not acknowledged, so the sender keeps it).
    pub capacity_bytes: u64,
    /// How long a taken entry waits for its ack before it is sent again.
    pub lease: Duration,
    /// How long a received message ID is remembered for dropping resends.
    pub remember: Duration,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            capacity_bytes: 256 << 20,
            lease: Duration::from_secs(30),
            remember: Duration::from_secs(24 * 3600),
        }
    }
}

/// What [`Queues::offer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued (durably) this many new entries.
    Queued(usize),
    /// The received ID was seen before; nothing queued.
    Duplicate,
}

/// What [`Queues::take`] returned.
#[derive(Debug, Default)]
pub struct Taken {
    /// Entries to deliver, in order, now leased.
    pub records: Vec<SpoolRecord>,
    /// For each record, the index (in the queues asked) of its queue.
    pub from: Vec<usize>,
    /// IDs that expired in the queue and were dropped.
    pub expired: Vec<MessageId>,
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

struct Slot {
    record: SpoolRecord,
    lease_until: Option<Instant>,
}

#[derive(Default)]
struct Queue {
    entries: BTreeMap<SpoolKey, Slot>,
    by_id: HashMap<MessageId, SpoolKey>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    seen: HashMap<MessageId, Timestamp>,
    bytes: u64,
    waiters: HashMap<String, Arc<Notify>>,
}

impl State {
    fn insert(&mut self, queue: String, key: SpoolKey, record: SpoolRecord) {
        self.bytes += record.size();
        let q = self.queues.entry(queue).or_default();
        q.by_id.insert(record.id, key);
        q.entries.insert(
            key,
            Slot {
                record,
                lease_until: None,
            },
        );
    }

    fn remove(&mut self, queue: &str, id: &MessageId) -> Option<SpoolKey> {
        let q = self.queues.get_mut(queue)?;
        let key = q.by_id.remove(id)?;
        if let Some(slot) = q.entries.remove(&key) {
            self.bytes -= slot.record.size();
        }
        if q.entries.is_empty() {
            self.queues.remove(queue);
        }
        Some(key)
    }
}

/// Durable named queues; see the module docs.
pub struct Queues {
    cfg: QueuesConfig,
    store: Arc<dyn QueueStore>,
    st: Mutex<State>,
    writer: GroupCommit<QueueWrite, Result<Vec<SpoolKey>, StoreError>>,
    /// Offers are serialised so the duplicate check and the insert agree.
    offering: tokio::sync::Mutex<()>,
    any: Notify,
    version: std::sync::atomic::AtomicU64,
    commits: Arc<std::sync::atomic::AtomicU64>,
}

impl Queues {
    /// Loads everything from `store` and starts the writer.
    ///
    /// # Errors
    /// If the store cannot be read or the writer thread cannot start.
    pub fn open(store: Arc<dyn QueueStore>, cfg: QueuesConfig) -> crate::Result<Arc<Queues>> {
        let (queued, seen) = store.load(Timestamp::now())?;
        let mut st = State::default();
        for q in queued {
            st.insert(q.queue, q.key, q.record);
        }
        for (q, id, until) in seen {
            if q == RECEIVED {
                st.seen.insert(id, until);
            }
        }
        let s = store.clone();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = commits.clone();
        let writer = GroupCommit::spawn("queue-writer", move |ws: Vec<QueueWrite>| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sizes: Vec<usize> = ws.iter().map(|w| w.push.len()).collect();
            let mut all = QueueWrite::default();
            for w in ws {
                all.push.extend(w.push);
                all.remove.extend(w.remove);
                all.mark.extend(w.mark);
            }
            #[allow(clippy::disallowed_methods)] // on the queue writer thread
            match s.write(all) {
                Ok(mut keys) => sizes
                    .into_iter()
                    .map(|n| Ok(keys.drain(..n).collect()))
                    .collect(),
                Err(e) => sizes.iter().map(|_| Err(e.clone())).collect(),
            }
        })?;
        let queues = Arc::new(Queues {
            cfg,
            store,
            st: Mutex::new(st),
            writer,
            offering: tokio::sync::Mutex::new(()),
            any: Notify::new(),
            version: std::sync::atomic::AtomicU64::new(0),
            commits,
        });
        let weak = Arc::downgrade(&queues);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(q) = weak.upgrade() else { return };
                let now = Timestamp::now();
                q.lock().seen.retain(|_, until| *until > now);
                let s = q.store.clone();
                drop(q);
                #[allow(clippy::disallowed_methods)] // in spawn_blocking
                let pruned = tokio::task::spawn_blocking(move || s.prune_seen(now)).await;
                if let Ok(Err(e)) = pruned {
                    tracing::warn!(error = %e, "pruning seen marks failed");
                }
            }
        });
        Ok(queues)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True if `id` was received (and marked) before.
    pub fn was_received(&self, id: &MessageId) -> bool {
        self.lock().seen.contains_key(id)
    }

    /// Queues `push` durably. With `received`, also marks that message ID
    /// as received in the same commit, and does nothing if it already was.
    /// An entry whose ID is already in its queue is skipped.
    ///
    /// # Errors
    /// [`StoreError::Full`] if the entries do not fit (nothing is queued);
    /// store failures.
    ///
    /// # Durability
    /// Returns after fsync.
    pub async fn offer(
        &self,
        push: Vec<(String, SpoolRecord)>,
        received: Option<MessageId>,
    ) -> Result<Offered, StoreError> {
        self.offer_many(vec![Offer { push, received }])
            .await
            .pop()
            .unwrap_or(Ok(Offered::Queued(0)))
    }

    /// [`Queues::offer`] for many messages in **one** durable commit (a whole
    /// reply from the parent): one answer per offer, in order. Offers are
    /// taken while they fit the capacity; one that does not fit fails with
    /// [`StoreError::Full`] and those after it are still tried. A received
    /// ID seen before, or earlier in the same call, is [`Offered::Duplicate`].
    ///
    /// # Durability
    /// Returns after fsync; every `Queued` answer (and its received mark) is durable.
    pub async fn offer_many(&self, offers: Vec<Offer>) -> Vec<Result<Offered, StoreError>> {
        let _one = self.offering.lock().await;
        let until = Timestamp::now().after(self.cfg.remember);
        let mut w = QueueWrite::default();
        let mut answers: Vec<Option<Result<Offered, StoreError>>> =
            Vec::with_capacity(offers.len());
        // Per accepted offer: its pushes' range in `w.push` and its received ID.
        let mut taken: Vec<(usize, std::ops::Range<usize>, Option<MessageId>)> = Vec::new();
        {
            let st = self.lock();
            let mut bytes = st.bytes;
            let mut marked = HashSet::new();
            let mut here = HashSet::new();
            for (i, Offer { push, received }) in offers.into_iter().enumerate() {
                if received.is_some_and(|id| st.seen.contains_key(&id) || !marked.insert(id)) {
                    answers.push(Some(Ok(Offered::Duplicate)));
                    continue;
                }
                let mut mine = Vec::with_capacity(push.len());
                let mut size = 0u64;
                for (q, r) in push {
                    let dup = st
                        .queues
                        .get(&q)
                        .is_some_and(|x| x.by_id.contains_key(&r.id));
                    if dup || here.contains(&(q.clone(), r.id)) {
                        continue;
                    }
                    size += r.size();
                    mine.push((q, r));
                }
                if bytes + size > self.cfg.capacity_bytes {
                    if let Some(id) = received {
                        marked.remove(&id);
                    }
                    answers.push(Some(Err(StoreError::Full {
                        needed: size,
                        free: self.cfg.capacity_bytes.saturating_sub(bytes),
                        capacity: self.cfg.capacity_bytes,
                    })));
                    continue;
                }
                bytes += size;
                for (q, r) in &mine {
                    here.insert((q.clone(), r.id));
                }
                let start = w.push.len();
                w.push.extend(mine);
                if let Some(id) = received {
                    w.mark.push((RECEIVED.to_string(), id, until));
                }
                taken.push((i, start..w.push.len(), received));
                answers.push(None);
            }
        }
        if !w.is_empty() {
            let pushed = w.push.clone();
            match self.writer.submit(w).await.and_then(|r| r) {
                Ok(keys) => {
                    let mut wake = Vec::new();
                    {
                        let mut st = self.lock();
                        for (_, _, received) in &taken {
                            if let Some(id) = received {
                                st.seen.insert(*id, until);
                            }
                        }
                        for ((q, r), k) in pushed.into_iter().zip(keys) {
                            if let Some(n) = st.waiters.get(&q) {
                                wake.push(n.clone());
                            }
                            st.insert(q, k, r);
                        }
                    }
                    for n in wake {
                        n.notify_waiters();
                    }
                    self.version
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    self.any.notify_waiters();
                }
                Err(e) => {
                    for (i, _, _) in &taken {
                        answers[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for (i, range, _) in taken {
            if answers[i].is_none() {
                answers[i] = Some(Ok(Offered::Queued(range.len())));
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Ok(Offered::Queued(0))))
            .collect()
    }

    /// Durable commits made so far (each one transaction and one fsync).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Exposes [`Queues::commits`] as `rsnet_queue_commits_total`.
    pub fn register_commits(&self, metrics: &crate::metrics::Registry) {
        let c = self.commits.clone();
        metrics.gauge(
            "rsnet_queue_commits_total",
            "durable commits (transaction + fsync) of the back-channel queues or inbox",
            move || c.load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    }

    /// Leases entries of `queue` for delivery, in precedence-then-age order,
    /// skipping those already leased, up to `max_bytes` (at least one entry)
    /// and `max_items`. Expired entries are dropped and reported.
    pub async fn take(&self, queue: &str, max_bytes: usize, max_items: usize) -> Taken {
        self.take_from(&[queue], max_bytes, max_items).await
    }

    /// [`Queues::take`] over several queues (their entries interleaved by
    /// precedence, then age).
    pub async fn take_from(&self, queues: &[&str], max_bytes: usize, max_items: usize) -> Taken {
        let (now, wall) = (Instant::now(), Timestamp::now());
        let mut out = Taken::default();
        let mut gone = Vec::new();
        {
            let mut st = self.lock();
            let mut candidates: Vec<(SpoolKey, usize)> = Vec::new();
            for (i, q) in queues.iter().enumerate() {
                if let Some(x) = st.queues.get(*q) {
                    // Entries are in order within a queue: no more than
                    // `max_items` of each can make the cut.
                    let due = x
                        .entries
                        .iter()
                        .filter(|(_, slot)| slot.lease_until.is_none_or(|t| t <= now))
                        .take(max_items);
                    candidates.extend(due.map(|(k, _)| (*k, i)));
                }
            }
            candidates.sort_unstable();
            let mut bytes = 0usize;
            for (k, qi) in candidates {
                let q = queues[qi];
                if out.records.len() >= max_items {
                    break;
                }
                let Some(slot) = st.queues.get_mut(q).and_then(|x| x.entries.get_mut(&k)) else {
                    continue;
                };
                if slot.record.expiry.is_some_and(|e| e <= wall) {
                    let id = slot.record.id;
                    out.expired.push(id);
                    st.remove(q, &id);
                    gone.push((q.to_string(), k));
                    continue;
                }
                let size = slot.record.size() as usize;
                if !out.records.is_empty() && bytes + size > max_bytes {
                    break;
                }
                bytes += size;
                slot.lease_until = Some(now + self.cfg.lease);
                out.records.push(slot.record.clone());
                out.from.push(qi);
            }
        }
        if !gone.is_empty() {
            let w = QueueWrite {
                remove: gone,
                ..Default::default()
            };
            if let Err(e) = self.writer.submit(w).await.and_then(|r| r) {
                tracing::warn!(error = %e, "removing expired entries failed; retried at next start");
            }
        }
        out
    }

    /// Removes acknowledged entries of `queue`; unknown IDs are ignored.
    /// Returns the IDs that were removed.
    ///
    /// # Durability
    /// Returns after fsync. Entries leave memory at once, so a concurrent
    /// `take` does not send them again.
    pub async fn ack(&self, queue: &str, ids: &[MessageId]) -> Vec<MessageId> {
        let mut w = QueueWrite::default();
        let mut done = Vec::new();
        {
            let mut st = self.lock();
            for id in ids {
                if let Some(k) = st.remove(queue, id) {
                    w.remove.push((queue.to_string(), k));
                    done.push(*id);
                }
            }
        }
        if !w.is_empty() {
            if let Err(e) = self.writer.submit(w).await.and_then(|r| r) {
                tracing::warn!(error = %e, "recording acks failed; those entries are sent again after restart");
            }
        }
        done
    }

    /// True if `queue` has an entry that is not leased.
    pub fn has_ready(&self, queue: &str) -> bool {
        let now = Instant::now();
        self.lock().queues.get(queue).is_some_and(|q| {
            q.entries
                .values()
                .any(|s| s.lease_until.is_none_or(|t| t <= now))
        })
    }

    /// When the first lease in `queue` ends, if any entry is leased.
    fn next_lease_end(&self, queue: &str) -> Option<Instant> {
        self.lock()
            .queues
            .get(queue)?
            .entries
            .values()
            .filter_map(|s| s.lease_until)
            .min()
    }

    /// Waits until something is queued for `queue`, a lease in it ends (its
    /// entry is due again), or `until` passes. Returns at once if an
    /// unleased entry is already there.
    pub async fn wait(&self, queue: &str, until: Instant) {
        let n = self
            .lock()
            .waiters
            .entry(queue.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        let notified = n.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.has_ready(queue) {
            return;
        }
        let until = self.next_lease_end(queue).map_or(until, |t| t.min(until));
        let _ = tokio::time::timeout_at(until.into(), notified).await;
    }

    /// A counter that grows with every offer (see [`Queues::wait_any`]).
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until something was offered since [`Queues::version`] returned
    /// `since`, a lease anywhere ends, or `until` passes; the caller then
    /// looks at its queues again.
    pub async fn wait_any(&self, since: u64, until: Instant) {
        let notified = self.any.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.version() != since {
            return;
        }
        let lease_end = {
            let st = self.lock();
            st.queues
                .values()
                .flat_map(|q| q.entries.values().filter_map(|s| s.lease_until))
                .min()
        };
        let until = lease_end.map_or(until, |t| t.min(until));
        let _ = tokio::time::timeout_at(until.into(), notified).await;
    }

    /// Names of the queues holding entries (pseudo-queues left out).
    pub fn names(&self) -> Vec<String> {
        self.lock()
            .queues
            .keys()
            .filter(|q| !is_pseudo(q))
            .cloned()
            .collect()
    }

    /// Counters over all queues.
    pub fn stats(&self) -> QueueStats {
        let now = Instant::now();
        let st = self.lock();
        let mut s = QueueStats {
            bytes: st.bytes,
            queues: st.queues.len() as u64,
            ..Default::default()
        };
        for q in st.queues.values() {
            s.messages += q.entries.len() as u64;
            s.leased += q
                .entries
                .values()
                .filter(|e| e.lease_until.is_some_and(|t| t > now))
                .count() as u64;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open as open_store, StoreConfig};
    use bytes::Bytes;

    fn rec(precedence: u8, expiry: Option<Timestamp>) -> SpoolRecord {
        SpoolRecord {
            id: MessageId::new(),
            precedence,
            persistent: true,
            expiry,
            header: Bytes::from_static(b"<header/>"),
            content: Bytes::from_static(b"<event/>"),
        }
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rsnet-queues-{}", MessageId::new()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cfg(lease: Duration) -> QueuesConfig {
        QueuesConfig {
            capacity_bytes: 1 << 20,
            lease,
            remember: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn order_lease_ack_and_restart() {
        let dir = tmp();
        let store = open_store(&StoreConfig::default(), &dir).unwrap();
        let q = Queues::open(store.queues().unwrap(), cfg(Duration::from_secs(60))).unwrap();
        let (low, high, gone) = (
            rec(1, None),
            rec(8, None),
            rec(9, Some(Timestamp(1))), // expired long ago
        );
        let offered = q
            .offer(
                vec![
                    ("c".into(), low.clone()),
                    ("c".into(), high.clone()),
                    ("c".into(), gone.clone()),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(offered, Offered::Queued(3));
        let t = q.take("c", 1 << 20, 10).await;
        assert_eq!(t.expired, vec![gone.id]);
        let ids: Vec<_> = t.records.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![high.id, low.id], "precedence first");
        assert!(q.take("c", 1 << 20, 10).await.records.is_empty(), "leased");
        assert_eq!(q.ack("c", &[high.id]).await, vec![high.id]);
        drop(q);

        // A fresh view loads only what is durable: leases are gone, and
        // what was not acked comes again.
        let q = Queues::open(store.queues().unwrap(), cfg(Duration::from_secs(60))).unwrap();
        let ids: Vec<_> = q
            .take("c", 1 << 20, 10)
            .await
            .records
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![low.id]);
    }

    #[tokio::test]
    async fn lease_expiry_resends_and_received_marks_dedupe() {
        let dir = tmp();
        let store = open_store(&StoreConfig::default(), &dir).unwrap();
        let q = Queues::open(store.queues().unwrap(), cfg(Duration::ZERO)).unwrap();
        let r = rec(4, None);
        let id = r.id;
        assert_eq!(
            q.offer(vec![("c".into(), r.clone())], Some(id))
                .await
                .unwrap(),
            Offered::Queued(1)
        );
        assert_eq!(
            q.offer(vec![("c".into(), r.clone())], Some(id))
                .await
                .unwrap(),
            Offered::Duplicate
        );
        // Zero lease: taken again at once, as after a lost reply.
        assert_eq!(q.take("c", 1 << 20, 10).await.records.len(), 1);
        assert_eq!(q.take("c", 1 << 20, 10).await.records.len(), 1);
        q.ack("c", &[id]).await;
        drop(q);
        let q = Queues::open(store.queues().unwrap(), cfg(Duration::ZERO)).unwrap();
        assert!(q.was_received(&id), "mark survives restart");
        assert_eq!(q.stats().messages, 0);
    }

    #[tokio::test]
    async fn full_and_wait() {
        let dir = tmp();
        let store = open_store(&StoreConfig::default(), &dir).unwrap();
        let mut c = cfg(Duration::from_secs(60));
        c.capacity_bytes = 200;
        let q = Queues::open(store.queues().unwrap(), c).unwrap();
        let big = SpoolRecord {
            content: Bytes::from(vec![b'x'; 300]),
            ..rec(4, None)
        };
        assert!(matches!(
            q.offer(vec![("c".into(), big)], None).await,
            Err(StoreError::Full { .. })
        ));
        let start = Instant::now();
        q.wait("c", start + Duration::from_millis(50)).await;
        assert!(start.elapsed() >= Duration::from_millis(50));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            q2.wait("c", Instant::now() + Duration::from_secs(30)).await;
        });
        tokio::task::yield_now().await;
        q.offer(vec![("c".into(), rec(4, None))], None)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the offer")
            .unwrap();
    }
}
