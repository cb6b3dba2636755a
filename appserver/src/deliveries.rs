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
//! Records live in memory and in the KV state (`delivery/ID`, JSON). One
//! writer persists them: it is handed message IDs and writes each record as
//! it is *then*, so concurrent changes can never land out of order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rsnet_common::backchannel::Observer;
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::model::{Header, Response, Status, Timestamp, DELIVERED};
use rsnet_common::store::{GroupCommit, KvStore, StoreError};
use serde::{Deserialize, Serialize};

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

/// All tracked deliveries.
pub struct Deliveries {
    map: Map,
    writer: GroupCommit<Vec<MessageId>, Result<(), StoreError>>,
}

impl Deliveries {
    /// Loads the records and starts their writer.
    ///
    /// # Errors
    /// Store failures; a writer thread that cannot start.
    pub fn open(
        kv: Arc<dyn KvStore>,
    ) -> Result<Arc<Deliveries>, Box<dyn std::error::Error + Send + Sync>> {
        let mut m = HashMap::new();
        for (k, v) in kv.list(PREFIX)? {
            let id = k
                .strip_prefix(PREFIX)
                .and_then(|s| s.parse::<MessageId>().ok());
            if let (Some(id), Ok(d)) = (id, serde_json::from_slice::<Delivery>(&v)) {
                m.insert(id, d);
            }
        }
        let map: Map = Arc::new(Mutex::new(m));
        let m2 = map.clone();
        let writer = GroupCommit::spawn("delivery-writer", move |reqs: Vec<Vec<MessageId>>| {
            let ids: HashSet<MessageId> = reqs.iter().flatten().copied().collect();
            let pairs: Vec<(String, Vec<u8>)> = {
                let map = m2.lock().unwrap_or_else(|p| p.into_inner());
                ids.iter()
                    .filter_map(|id| {
                        let d = map.get(id)?;
                        Some((format!("{PREFIX}{id}"), serde_json::to_vec(d).ok()?))
                    })
                    .collect()
            };
            #[allow(clippy::disallowed_methods)] // on the delivery writer thread
            let r = kv.put(pairs);
            reqs.iter().map(|_| r.clone()).collect()
        })?;
        Ok(Arc::new(Deliveries { map, writer }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Delivery>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new message.
    ///
    /// # Durability
    /// Returns after fsync.
    pub async fn track(&self, id: MessageId, d: Delivery) -> Result<(), StoreError> {
        self.lock().insert(id, d);
        self.persist(vec![id]).await
    }

    /// Writes the current records of `ids`.
    ///
    /// # Durability
    /// Returns after fsync.
    pub async fn persist(&self, ids: Vec<MessageId>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.writer.submit(ids).await?
    }

    /// The record of `id` as seen now.
    pub fn get(&self, id: &MessageId) -> Option<Delivery> {
        self.lock().get(id).map(|d| d.view(Timestamp::now()))
    }

    /// Applies a `response` from `origin` about a tracked message; returns
    /// true if a record changed (the caller persists it).
    pub fn respond(&self, origin: &ComponentId, subclass: Option<&str>, r: &Response) -> bool {
        let mut map = self.lock();
        let Some(d) = map.get_mut(&r.request) else {
            return false;
        };
        let Some(t) = d.destinations.get_mut(origin.as_str()) else {
            return false;
        };
        let next = match (subclass, r.status) {
            (Some(DELIVERED), Status::Accepted) => State::Delivered,
            (_, Status::Accepted) => State::Processed,
            (_, Status::Rejected) => State::Failed,
        };
        if t.state.is_final() || next.rank() < t.state.rank() {
            return false;
        }
        t.state = next;
        t.hop = None;
        t.at = Timestamp::now().to_rfc3339();
        t.reason = r.reason.clone();
        if r.correlation.is_some() {
            t.correlation = r.correlation.clone();
        }
        true
    }

    /// Marks every destination of `id` failed (the message could not be queued).
    pub async fn fail(&self, id: &MessageId, reason: &str) {
        if let Some(d) = self.lock().get_mut(id) {
            let at = Timestamp::now().to_rfc3339();
            for t in d.destinations.values_mut() {
                t.state = State::Failed;
                t.reason = Some(reason.to_string());
                t.at = at.clone();
            }
        }
        if let Err(e) = self.persist(vec![*id]).await {
            tracing::warn!(error = %e, "delivery state not persisted");
        }
    }

    fn on_child(&self, child: &ComponentId, ids: &[MessageId], to: State) {
        let now = Timestamp::now().to_rfc3339();
        let mut changed = Vec::new();
        {
            let mut map = self.lock();
            for id in ids {
                let Some(d) = map.get_mut(id) else { continue };
                for t in d.destinations.values_mut() {
                    if t.via.as_deref() == Some(child.as_str())
                        && t.state.rank() < State::Delivered.rank()
                    {
                        t.state = to;
                        t.hop = (to == State::InFlight).then(|| child.to_string());
                        t.at = now.clone();
                    }
                }
                changed.push(*id);
            }
        }
        if changed.is_empty() {
            return;
        }
        let writer = self.writer.clone();
        tokio::spawn(async move {
            if let Err(e) = writer.submit(changed).await.and_then(|r| r) {
                tracing::warn!(error = %e, "delivery state not persisted");
            }
        });
    }
}

impl Observer for Deliveries {
    fn acked(&self, child: &ComponentId, ids: &[MessageId]) {
        self.on_child(child, ids, State::InFlight);
    }
    fn expired(&self, child: &ComponentId, ids: &[MessageId]) {
        self.on_child(child, ids, State::Expired);
    }
}
