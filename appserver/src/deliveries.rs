//! Where each back-channel message is, per final destination.
//!
//! ```text
//! queued ──(child acked)──► in-flight (hop = that child)
//!    │                           │
//!    │          response subclass "delivered" from the destination
//!    │                           ▼
//!    │                       delivered ──(response "processed")──► processed | failed
//!    └──(expired in a queue, or expiry passed while not yet delivered)──► expired
//! ```
//!
//! The appserver sees its own queues (queued, acknowledged by which child)
//! and the `response` messages each final destination sends upward (its
//! proxy reports "delivered" when the message is in the inbox and
//! "processed"/"failed" when the integrator acknowledges it). A destination
//! with no route is `failed` at once.
//!
//! [`Deliveries`] is the one owner of these records. Everything that moves a
//! destination along reaches it as an [`Event`] through one method,
//! [`Deliveries::apply`]: the operator send ([`Event::Sent`],
//! [`Event::NotQueued`]), the back-channel queues (as an
//! [`Observer`]: [`Event::Acked`], [`Event::Expired`]) and the forward-path
//! ingest ([`Event::Reported`], from the destinations' `response` messages).
//!
//! Records live in memory ([`Records`]) and in the KV state (`delivery/ID`,
//! JSON). The appserver's one store writer ([`crate::writer`]) persists
//! them: it is handed message IDs and writes each record as it is *then*,
//! so concurrent changes can never land out of order. A report changes its
//! record in the commit that stores the report ([`Deliveries::apply_in_memory`]
//! and [`crate::writer::Batch::deliveries`]); the queues' events get a
//! commit of their own. The one
//! exception is a new record ([`Deliveries::staged`]): it is written in the
//! commit that queues the message's copies
//! ([`rsnet_common::backchannel::BackChannel::dispatch_recorded`]), so the
//! operator's answer waits for one fsync, not two, and a crash leaves the
//! record and the copies both or neither. Nothing else can change that
//! record before that commit: every other event comes from a queued copy
//! or from what was done with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rsnet_common::backchannel::Observer;
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::model::{Header, Response, Status, Timestamp, DELIVERED};
use rsnet_common::store::{KvStore, StoreError};
use serde::{Deserialize, Serialize};

use crate::writer::{Batch, StoreWriter};

/// KV key prefix.
pub const PREFIX: &str = "delivery/";

/// A destination's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// In the appserver's queue for the child on its route.
    Queued,
    /// Acknowledged by a hop below the appserver (see `hop`).
    InFlight,
    /// In the destination's proxy inbox.
    Delivered,
    /// The destination processed it.
    Processed,
    /// Not deliverable (no route), or the destination reported failure.
    Failed,
    /// Its expiry passed before it was delivered.
    Expired,
}

impl State {
    fn is_final(self) -> bool {
        matches!(self, State::Processed | State::Failed | State::Expired)
    }
    fn rank(self) -> u8 {
        match self {
            State::Queued => 0,
            State::InFlight => 1,
            State::Delivered => 2,
            State::Processed | State::Failed | State::Expired => 3,
        }
    }
}

/// One destination of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Where it is.
    pub state: State,
    /// The appserver's child on its route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// For `in-flight`: the hop that holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
    /// When the state last changed (RFC 3339).
    pub at: String,
    /// Why, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The destination's own ID for the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<String>,
}

/// One back-channel message and its destinations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Message ID.
    pub id: String,
    /// How the operator addressed it (IDs and/or `group:NAME`).
    pub to: Vec<String>,
    /// Class.
    pub class: String,
    /// Subclass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subclass: Option<String>,
    /// Created (RFC 3339).
    pub created: String,
    /// Expiry (ms since the epoch), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry_ms: Option<u64>,
    /// Per final destination.
    pub destinations: BTreeMap<String, Target>,
}

impl Delivery {
    /// A new record: routed destinations queued, unroutable ones failed.
    pub fn new(
        h: &Header,
        to: Vec<String>,
        routed: &BTreeMap<ComponentId, Vec<ComponentId>>,
        unroutable: &[ComponentId],
    ) -> Delivery {
        let at = Timestamp::now().to_rfc3339();
        let mut destinations = BTreeMap::new();
        for (via, ids) in routed {
            for d in ids {
                destinations.insert(
                    d.to_string(),
                    Target {
                        state: State::Queued,
                        via: Some(via.to_string()),
                        hop: None,
                        at: at.clone(),
                        reason: None,
                        correlation: None,
                    },
                );
            }
        }
        for d in unroutable {
            destinations.insert(
                d.to_string(),
                Target {
                    state: State::Failed,
                    via: None,
                    hop: None,
                    at: at.clone(),
                    reason: Some("no route: never heard from it or anything above it".into()),
                    correlation: None,
                },
            );
        }
        Delivery {
            id: h.id.to_string(),
            to,
            class: h.class.clone(),
            subclass: h.subclass.clone(),
            created: h.created.to_rfc3339(),
            expiry_ms: h.qos.expiry.map(|t| t.0),
            destinations,
        }
    }

    /// The record as seen at `now`: a destination not yet delivered whose
    /// message has expired shows as expired.
    pub fn view(&self, now: Timestamp) -> Delivery {
        let mut d = self.clone();
        if self.expiry_ms.is_some_and(|e| e <= now.0) {
            for t in d.destinations.values_mut() {
                if t.state.rank() < State::Delivered.rank() {
                    t.state = State::Expired;
                }
            }
        }
        d
    }

    /// Counts per state, for summaries.
    pub fn summary(&self) -> BTreeMap<State, usize> {
        let mut m = BTreeMap::new();
        for t in self.destinations.values() {
            *m.entry(t.state).or_insert(0) += 1;
        }
        m
    }
}

type Map = Arc<Mutex<HashMap<MessageId, Delivery>>>;

/// The records themselves, in memory: shared by [`Deliveries`], which
/// changes them, and the store writer, which writes each as it is when
/// its commit is made ([`Records::pairs`]).
#[derive(Clone)]
pub struct Records(Map);

impl Records {
    /// The records kept in the store.
    ///
    /// # Errors
    /// Store failures.
    pub fn load(kv: &dyn KvStore) -> rsnet_common::Result<Records> {
        let mut m = HashMap::new();
        for (k, v) in kv.list(PREFIX)? {
            let id = k
                .strip_prefix(PREFIX)
                .and_then(|s| s.parse::<MessageId>().ok());
            if let (Some(id), Ok(d)) = (id, serde_json::from_slice::<Delivery>(&v)) {
                m.insert(id, d);
            }
        }
        Ok(Records(Arc::new(Mutex::new(m))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Delivery>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The KV pairs to write for `ids`, as their records are now.
    pub fn pairs(&self, ids: &[MessageId]) -> Vec<(String, Vec<u8>)> {
        let ids: HashSet<&MessageId> = ids.iter().collect();
        let map = self.lock();
        ids.into_iter().filter_map(|id| stored(&map, id)).collect()
    }
}

/// All tracked deliveries.
pub struct Deliveries {
    records: Records,
    writer: StoreWriter,
}

impl Deliveries {
    /// Deliveries over `records`, written by `writer` (which must have
    /// been started over the same records).
    pub fn new(records: Records, writer: StoreWriter) -> Arc<Deliveries> {
        Arc::new(Deliveries { records, writer })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Delivery>> {
        self.records.lock()
    }

    /// Applies `events` in order and persists every record they changed.
    ///
    /// # Durability
    /// Returns after fsync.
    ///
    /// # Errors
    /// Store failures (the records changed in memory; they are written again
    /// with their next change).
    pub async fn apply(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let changed = self.apply_in_memory(events);
        self.persist(changed).await
    }

    /// Applies `events` in order in memory only, and answers the records
    /// they changed: for the store writer to write in the caller's own
    /// commit ([`crate::writer::Batch::deliveries`]).
    pub fn apply_in_memory(&self, events: Vec<Event>) -> Vec<MessageId> {
        if events.is_empty() {
            return Vec::new();
        }
        let mut map = self.lock();
        let now = Timestamp::now().to_rfc3339();
        let mut changed: Vec<MessageId> = events
            .into_iter()
            .flat_map(|e| apply_one(&mut map, e, &now))
            .collect();
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Applies `event` in memory only, and answers what to write for it:
    /// for a caller that writes the pairs in its own commit (the module
    /// docs), not through this writer.
    pub fn staged(&self, event: Event) -> Vec<(String, Vec<u8>)> {
        let mut map = self.lock();
        let now = Timestamp::now().to_rfc3339();
        let ids = apply_one(&mut map, event, &now);
        ids.iter().filter_map(|id| stored(&map, id)).collect()
    }

    /// Writes the current records of `ids`, in a commit of their own.
    pub async fn persist(&self, ids: Vec<MessageId>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.writer.store(Batch::records(ids)).await.map(|_| ())
    }

    /// The record of `id` as seen now.
    pub fn get(&self, id: &MessageId) -> Option<Delivery> {
        self.lock().get(id).map(|d| d.view(Timestamp::now()))
    }

    /// The newest `n` records (by message ID, which is time-ordered) as
    /// seen now, each with only the destinations `visible` admits; a
    /// record left with none is not counted.
    pub fn recent(&self, n: usize, visible: impl Fn(&str) -> bool) -> Vec<Delivery> {
        let now = Timestamp::now();
        let map = self.lock();
        let mut ids: Vec<&MessageId> = map.keys().collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter()
            .filter_map(|id| map.get(id))
            .filter_map(|d| {
                let mut d = d.view(now);
                d.destinations.retain(|k, _| visible(k));
                d.to.retain(|t| visible(t));
                (!d.destinations.is_empty()).then_some(d)
            })
            .take(n)
            .collect()
    }

    /// Applies events from a sync caller (the queue observer) in the background.
    fn apply_later(self: &Arc<Self>, events: Vec<Event>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.apply(events).await {
                tracing::warn!(error = %e, "delivery state not persisted");
            }
        });
    }
}

/// What happened to a back-channel message; see the module docs.
#[derive(Debug, Clone)]
pub enum Event {
    /// An operator sent it: its new record.
    Sent(Delivery),
    /// It could not be queued: every destination fails with `reason`.
    NotQueued {
        /// The message.
        id: MessageId,
        /// Why.
        reason: String,
    },
    /// The copy for `child` could not be queued (its queue is at its
    /// quota): the destinations behind it fail with `reason`.
    NotQueuedVia {
        /// The message.
        id: MessageId,
        /// The appserver's child.
        child: ComponentId,
        /// Why.
        reason: String,
    },
    /// `child` acknowledged these copies: they are held below it.
    Acked {
        /// The appserver's child.
        child: ComponentId,
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// These copies expired in `child`'s queue.
    Expired {
        /// The appserver's child.
        child: ComponentId,
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// A final destination reported on a message (a `response` it sent up).
    Reported {
        /// The destination (the response's source).
        origin: ComponentId,
        /// `delivered`, or anything else for processed/failed.
        stage: Option<String>,
        /// The report.
        response: Response,
    },
}

/// Applies one event; returns the IDs whose record changed.
/// The KV pair that stores the record of `id`, if there is one.
fn stored(map: &HashMap<MessageId, Delivery>, id: &MessageId) -> Option<(String, Vec<u8>)> {
    let d = map.get(id)?;
    Some((format!("{PREFIX}{id}"), serde_json::to_vec(d).ok()?))
}

fn apply_one(map: &mut HashMap<MessageId, Delivery>, e: Event, now: &str) -> Vec<MessageId> {
    match e {
        Event::Sent(d) => match d.id.parse::<MessageId>() {
            Ok(id) => {
                map.insert(id, d);
                vec![id]
            }
            Err(_) => Vec::new(),
        },
        Event::NotQueued { id, reason } => {
            let Some(d) = map.get_mut(&id) else {
                return Vec::new();
            };
            for t in d.destinations.values_mut() {
                t.state = State::Failed;
                t.reason = Some(reason.clone());
                t.at = now.to_string();
            }
            vec![id]
        }
        Event::NotQueuedVia { id, child, reason } => {
            let Some(d) = map.get_mut(&id) else {
                return Vec::new();
            };
            for t in d.destinations.values_mut() {
                if t.via.as_deref() == Some(child.as_str()) && !t.state.is_final() {
                    t.state = State::Failed;
                    t.reason = Some(reason.clone());
                    t.at = now.to_string();
                }
            }
            vec![id]
        }
        Event::Acked { child, ids } => on_child(map, &child, ids, State::InFlight, now),
        Event::Expired { child, ids } => on_child(map, &child, ids, State::Expired, now),
        Event::Reported {
            origin,
            stage,
            response: r,
        } => {
            let Some(d) = map.get_mut(&r.request) else {
                return Vec::new();
            };
            let Some(t) = d.destinations.get_mut(origin.as_str()) else {
                return Vec::new();
            };
            let next = match (stage.as_deref(), r.status) {
                (Some(DELIVERED), Status::Accepted) => State::Delivered,
                (_, Status::Accepted) => State::Processed,
                (_, Status::Rejected) => State::Failed,
            };
            if t.state.is_final() || next.rank() < t.state.rank() {
                return Vec::new();
            }
            t.state = next;
            t.hop = None;
            t.at = now.to_string();
            t.reason = r.reason.clone();
            if r.correlation.is_some() {
                t.correlation = r.correlation.clone();
            }
            vec![r.request]
        }
    }
}

fn on_child(
    map: &mut HashMap<MessageId, Delivery>,
    child: &ComponentId,
    ids: Vec<MessageId>,
    to: State,
    now: &str,
) -> Vec<MessageId> {
    let mut changed = Vec::new();
    for id in ids {
        let Some(d) = map.get_mut(&id) else { continue };
        for t in d.destinations.values_mut() {
            if t.via.as_deref() == Some(child.as_str()) && t.state.rank() < State::Delivered.rank()
            {
                t.state = to;
                t.hop = (to == State::InFlight).then(|| child.to_string());
                t.at = now.to_string();
            }
        }
        changed.push(id);
    }
    changed
}

/// The back-channel queues' view, turned into events.
pub struct QueueEvents(pub Arc<Deliveries>);

impl Observer for QueueEvents {
    fn acked(&self, child: &ComponentId, ids: &[MessageId]) {
        self.0.apply_later(vec![Event::Acked {
            child: child.clone(),
            ids: ids.to_vec(),
        }]);
    }
    fn expired(&self, child: &ComponentId, ids: &[MessageId]) {
        self.0.apply_later(vec![Event::Expired {
            child: child.clone(),
            ids: ids.to_vec(),
        }]);
    }
}
