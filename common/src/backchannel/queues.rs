//! Durable named queues with leases: what a parent holds for each child, and
//! what a proxy holds for its integrators.
//!
//! ```text
//! offer ──► GroupCommit ──► QueueStore::commit (fsync) ──► wake waiters
//! take(queue)  : QueueStore::lease, in precedence-then-age order, skipping
//!                leased entries; leases what it returns for `lease`, and
//!                removes expired ones
//! ack(queue, ids): removes (durably) what the receiver confirmed
//! ```
//!
//! Everything that makes these queues queues (sequence numbers, leases,
//! received marks) is the store's contract ([`QueueStore`]), so a backend
//! shared by a farm serves the same logic. This layer adds what only one
//! process can do: group commit (concurrent offers and acks share one
//! fsync) and waking the long-polls and integrators that wait on a queue.
//!
//! Receivers record what they took from their own parent with a *received
//! mark*: a message resent after its ack was lost is recognised and
//! acknowledged again without being queued twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::id::MessageId;
use crate::model::Timestamp;
pub use crate::store::{is_pseudo, Offered, QueueStats};
use crate::store::{GroupCommit, QueueOp, QueueOutcome, QueueStore, SpoolRecord, StoreError};

/// The pseudo-queue holding control actions that were received (their
/// received mark is durable) but whose result is not yet spooled; what is
/// left there at start is carried out then.
pub const CONTROL: &str = "^control";

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
    /// Bytes one queue (one child, one destination) may hold; its entries
    /// beyond are left out of an offer ([`Offered::Partly`]) while the
    /// other queues' are taken.
    pub queue_capacity_bytes: u64,
    /// How long a taken entry waits for its ack before it is sent again.
    pub lease: Duration,
    /// How long a received message ID is remembered for dropping resends.
    pub remember: Duration,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            capacity_bytes: 256 << 20,
            queue_capacity_bytes: 32 << 20,
            lease: Duration::from_secs(30),
            remember: Duration::from_secs(24 * 3600),
        }
    }
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

type Commit = Result<Vec<QueueOutcome>, StoreError>;

/// Durable named queues; see the module docs.
pub struct Queues {
    cfg: QueuesConfig,
    store: Arc<dyn QueueStore>,
    writer: GroupCommit<Vec<QueueOp>, Commit>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    any: Notify,
    version: std::sync::atomic::AtomicU64,
    commits: Arc<std::sync::atomic::AtomicU64>,
}

/// When wall-clock time `t` comes, as an [`Instant`] (now if it is past).
fn instant_of(t: Timestamp) -> Instant {
    Instant::now() + Duration::from_millis(t.0.saturating_sub(Timestamp::now().0))
}

impl Queues {
    /// Opens the queues over `store` and starts the writer.
    ///
    /// # Errors
    /// If the writer thread cannot start.
    pub fn open(store: Arc<dyn QueueStore>, cfg: QueuesConfig) -> crate::Result<Arc<Queues>> {
        let s = store.clone();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = commits.clone();
        let writer = GroupCommit::spawn("queue-writer", move |batches: Vec<Vec<QueueOp>>| {
            let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
            let all: Vec<QueueOp> = batches.into_iter().flatten().collect();
            #[allow(clippy::disallowed_methods)] // on the queue writer thread
            match s.commit(all, Timestamp::now()) {
                Ok(mut outs) => {
                    // Count the commits that wrote: repeats and empty acks write nothing.
                    let wrote = outs.iter().any(|o| match o {
                        QueueOutcome::Offered(Ok(o)) => o.queued() > 0,
                        QueueOutcome::Acked(ids) => !ids.is_empty(),
                        QueueOutcome::Removed | QueueOutcome::Stated => true,
                        QueueOutcome::Offered(_) => false,
                    });
                    if wrote {
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    sizes
                        .into_iter()
                        .map(|n| Ok(outs.drain(..n).collect()))
                        .collect()
                }
                Err(e) => sizes.iter().map(|_| Err(e.clone())).collect(),
            }
        })?;
        let queues = Arc::new(Queues {
            cfg,
            store,
            writer,
            waiters: Mutex::new(HashMap::new()),
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
                let s = q.store.clone();
                drop(q);
                #[allow(clippy::disallowed_methods)] // in spawn_blocking
                let pruned =
                    tokio::task::spawn_blocking(move || s.prune_seen(Timestamp::now())).await;
                if let Ok(Err(e)) = pruned {
                    tracing::warn!(error = %e, "pruning seen marks failed");
                }
            }
        });
        Ok(queues)
    }

    async fn commit(&self, ops: Vec<QueueOp>) -> Commit {
        self.writer.submit(ops).await?
    }

    /// True if `id` was received (and marked) before.
    pub fn was_received(&self, id: &MessageId) -> bool {
        self.store.was_received(id, Timestamp::now())
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
        self.offer_with_state(push, received, Vec::new()).await
    }

    /// [`Queues::offer`], with `state` (key-value pairs, as
    /// [`crate::store::KvStore::put`] takes them) written in the same
    /// commit, whether or not the entries fit: a record of the message that
    /// is durable exactly when its entries are.
    ///
    /// # Errors
    /// As [`Queues::offer`]; on a store failure neither is written.
    ///
    /// # Durability
    /// Returns after fsync.
    pub async fn offer_with_state(
        &self,
        push: Vec<(String, SpoolRecord)>,
        received: Option<MessageId>,
        state: Vec<(String, Vec<u8>)>,
    ) -> Result<Offered, StoreError> {
        self.offer_ops(vec![Offer { push, received }], state)
            .await
            .pop()
            .unwrap_or(Ok(Offered::Queued(0)))
    }

    /// [`Queues::offer`] for many messages in **one** durable commit (a whole
    /// reply from the parent): one answer per offer, in order. An offer that
    /// does not fit the capacity fails with [`StoreError::Full`]; those after
    /// it are still tried. A received ID seen before, or earlier in the same
    /// call, is [`Offered::Duplicate`].
    ///
    /// # Durability
    /// Returns after fsync; every `Queued` answer (and its received mark) is durable.
    pub async fn offer_many(&self, offers: Vec<Offer>) -> Vec<Result<Offered, StoreError>> {
        self.offer_ops(offers, Vec::new()).await
    }

    /// The offers, and `state` if there is any, in one commit.
    async fn offer_ops(
        &self,
        offers: Vec<Offer>,
        state: Vec<(String, Vec<u8>)>,
    ) -> Vec<Result<Offered, StoreError>> {
        let until = Timestamp::now().after(self.cfg.remember);
        let mut touched: Vec<String> = offers
            .iter()
            .flat_map(|o| o.push.iter().map(|(q, _)| q.clone()))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let n = offers.len();
        let mut ops: Vec<QueueOp> = offers
            .into_iter()
            .map(|o| QueueOp::Offer {
                push: o.push,
                received: o.received.map(|id| (id, until)),
                capacity: self.cfg.capacity_bytes,
                queue_capacity: self.cfg.queue_capacity_bytes,
            })
            .collect();
        if !state.is_empty() {
            ops.push(QueueOp::State(state));
        }
        let outcomes = match self.commit(ops).await {
            Ok(o) => o,
            Err(e) => return (0..n).map(|_| Err(e.clone())).collect(),
        };
        let answers: Vec<Result<Offered, StoreError>> = outcomes
            .into_iter()
            .filter(|o| !matches!(o, QueueOutcome::Stated))
            .map(|o| match o {
                QueueOutcome::Offered(r) => r,
                other => Err(StoreError::Backend(format!("unexpected outcome {other:?}"))),
            })
            .collect();
        if answers
            .iter()
            .any(|a| a.as_ref().is_ok_and(|o| o.queued() > 0))
        {
            self.wake(&touched);
        }
        answers
    }

    fn wake(&self, queues: &[String]) {
        let wake: Vec<Arc<Notify>> = {
            let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            queues.iter().filter_map(|q| w.get(q).cloned()).collect()
        };
        for n in wake {
            n.notify_waiters();
        }
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.any.notify_waiters();
    }

    /// Durable commits that wrote something, so far (each one transaction and one fsync).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Exposes [`Queues::commits`] as `rsnet_queue_commits_total`.
    pub fn register_commits(&self, metrics: &crate::metrics::Registry) {
        let c = self.commits.clone();
        metrics.counter_fn(
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
        let now = Timestamp::now();
        let leased =
            match self
                .store
                .lease(queues, max_bytes, max_items, now, now.after(self.cfg.lease))
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "queue lease failed");
                    return Taken::default();
                }
            };
        let expired: Vec<MessageId> = leased.expired.iter().map(|(_, _, id)| *id).collect();
        if !leased.expired.is_empty() {
            let gone = leased.expired.into_iter().map(|(q, k, _)| (q, k)).collect();
            if let Err(e) = self.commit(vec![QueueOp::Remove(gone)]).await {
                tracing::warn!(error = %e, "removing expired entries failed; retried at next start");
            }
        }
        Taken {
            records: leased.records,
            from: leased.from,
            expired,
        }
    }

    /// Removes acknowledged entries of `queue`; unknown IDs are ignored.
    /// Returns the IDs that were removed.
    ///
    /// # Durability
    /// Returns after fsync. Entries are no longer handed out from the call
    /// on, so a concurrent `take` does not send them again.
    pub async fn ack(&self, queue: &str, ids: &[MessageId]) -> Vec<MessageId> {
        let op = QueueOp::Ack {
            queue: queue.to_string(),
            ids: ids.to_vec(),
        };
        match self.commit(vec![op]).await {
            Ok(mut o) => match o.pop() {
                Some(QueueOutcome::Acked(done)) => done,
                _ => Vec::new(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "recording acks failed; those entries are sent again after restart");
                Vec::new()
            }
        }
    }

    /// True if `queue` has an entry that is not leased.
    pub fn has_ready(&self, queue: &str) -> bool {
        self.store.readiness(Some(queue), Timestamp::now()).ready
    }

    /// Waits until something is queued for `queue`, a lease in it ends (its
    /// entry is due again), or `until` passes. Returns at once if an
    /// unleased entry is already there.
    pub async fn wait(&self, queue: &str, until: Instant) {
        let n = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        let notified = n.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let r = self.store.readiness(Some(queue), Timestamp::now());
        if r.ready {
            return;
        }
        let until = r.next_lease_end.map_or(until, |t| instant_of(t).min(until));
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
        let r = self.store.readiness(None, Timestamp::now());
        let until = r.next_lease_end.map_or(until, |t| instant_of(t).min(until));
        let _ = tokio::time::timeout_at(until.into(), notified).await;
    }

    /// Names of the queues holding entries (pseudo-queues left out).
    pub fn names(&self) -> Vec<String> {
        self.store.names()
    }

    /// Counters over all queues.
    pub fn stats(&self) -> QueueStats {
        self.store.stats(Timestamp::now())
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
            queue_capacity_bytes: 1 << 20,
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
