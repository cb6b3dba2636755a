//! The back-channel (DESIGN.md §5–6): everything that flows down the tree.
//!
//! ```text
//!  parent (appserver, MLM)                          child (MLM, proxy)
//!  dispatch(msg, destinations)
//!    └ Routes: destination → child
//!    └ one copy per child, carrying the
//!      destinations behind it ─► Queues[child]
//!  child POSTs (forward batch, or an empty
//!  long-poll with a wait hint) ──────────────────►  (parent holds a poll until
//!  reply_for(child): take + lease ◄───────────────   something is queued)
//!  reply carries the copies ─────────────────────►  BackChannelClient hands a
//!                                                    whole reply to its Receiver
//!                                                    (one durable commit), then
//!  inbound(child, acks): remove ◄────────────────── acks them in its next POST
//! ```
//!
//! [`BackChannel`] is the parent side, shared by the appserver and every
//! MLM: the appserver dispatches what operators send; an MLM dispatches
//! what its parent delivered, splitting it again per child, so a group
//! message crosses each link once per copy needed below it (multicast).
//! It sits beside the exchange pipeline ([`crate::pipeline`]): it sees every
//! screened POST ([`BackChannel::inbound`]) and adds its messages to every
//! reply ([`BackChannel::reply_for`]).
//! The child side is [`BackChannelClient`]: every exchange of a child goes
//! through it, carrying its acks up and its reply's messages to the node's
//! [`Receiver`] in one durable commit.

pub mod client;
pub mod queues;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::envelope::{wire, Item};
use crate::id::{ComponentId, MessageId};
use crate::limits::{MAX_BATCH_MESSAGES, MAX_LONG_POLL};
use crate::metrics::{Counter, Registry};
use crate::model::{Destination, Direction, Header, Hop, Timestamp};
use crate::store::{KvStore, QueueStore, SpoolRecord, StoreError};
pub use client::{BackChannelClient, Outgoing, Receiver};
pub use queues::{Offer, Offered, QueueStats, Queues, QueuesConfig, Taken};
pub use routes::Routes;

/// How a parent runs its back-channel.
#[derive(Debug, Clone)]
pub struct BackChannelConfig {
    /// Longest a parent holds a long-poll, whatever the child asks.
    pub max_wait: Duration,
    /// Bytes of back-channel messages one reply carries (at least one message).
    pub reply_bytes: usize,
    /// Queue capacity, lease and dedupe memory.
    pub queues: QueuesConfig,
}

impl Default for BackChannelConfig {
    fn default() -> Self {
        BackChannelConfig {
            max_wait: Duration::from_secs(30),
            reply_bytes: 4 << 20,
            queues: QueuesConfig::default(),
        }
    }
}

/// Told what happens to queued copies (the appserver's delivery view).
pub trait Observer: Send + Sync + 'static {
    /// `child` acknowledged these messages: they are now held at `child`.
    fn acked(&self, child: &ComponentId, ids: &[MessageId]);
    /// These expired in `child`'s queue before delivery.
    fn expired(&self, child: &ComponentId, ids: &[MessageId]);
}

/// Where a message's destinations go: one copy per child with its subset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// Child → the destinations behind it.
    pub copies: BTreeMap<ComponentId, Vec<ComponentId>>,
    /// Destinations no known route leads to.
    pub unroutable: Vec<ComponentId>,
}

struct Counters {
    queued: Counter,
    sent: Counter,
    sent_bytes: Counter,
    acked: Counter,
    expired: Counter,
    unroutable: Counter,
    over_quota: Counter,
}

/// The parent side of the back-channel; see the module docs.
pub struct BackChannel {
    me: ComponentId,
    queues: Arc<Queues>,
    routes: Routes,
    cfg: BackChannelConfig,
    counters: Counters,
    /// Long-polls being held now.
    holding: Arc<std::sync::atomic::AtomicU64>,
    observer: Option<Arc<dyn Observer>>,
}

impl BackChannel {
    /// Opens the queues and routes of node `me`.
    ///
    /// # Errors
    /// Store failures.
    pub fn open(
        me: ComponentId,
        store: Arc<dyn QueueStore>,
        kv: Arc<dyn KvStore>,
        cfg: BackChannelConfig,
        metrics: &Registry,
        observer: Option<Arc<dyn Observer>>,
    ) -> crate::Result<Arc<BackChannel>> {
        let queues = Queues::open(store, cfg.queues.clone())?;
        let routes = Routes::open(me.clone(), kv)?;
        let c = |n: &str, h: &str| metrics.counter(&format!("rsnet_backchannel_{n}_total"), h);
        let counters = Counters {
            queued: c("queued", "copies queued for children"),
            sent: c(
                "sent",
                "copies put in replies to children (resends included)",
            ),
            sent_bytes: c(
                "sent_bytes",
                "header and content bytes of the copies put in replies",
            ),
            acked: c("acked", "copies children acknowledged"),
            expired: c("expired", "copies that expired in a queue"),
            unroutable: c("unroutable", "destinations with no known route"),
            over_quota: c(
                "over_quota",
                "copies not queued: their child's queue was at its child_capacity_bytes",
            ),
        };
        queues.register_commits(metrics);
        let holding = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = holding.clone();
        metrics.gauge(
            "rsnet_backchannel_long_polls",
            "children's long-polls held now, waiting for something to send them",
            move || h.load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        let q = queues.clone();
        metrics.gauge(
            "rsnet_backchannel_queued_messages",
            "copies waiting in back-channel queues",
            move || q.stats().messages as f64,
        );
        let q = queues.clone();
        metrics.gauge(
            "rsnet_backchannel_queued_bytes",
            "bytes of the copies waiting in back-channel queues",
            move || q.stats().bytes as f64,
        );
        let q = queues.clone();
        metrics.gauge(
            "rsnet_backchannel_leased_messages",
            "copies sent in a reply and waiting for the child's ack (sent again when the lease ends)",
            move || q.stats().leased as f64,
        );
        Ok(Arc::new(BackChannel {
            me,
            queues,
            routes,
            cfg,
            counters,
            holding,
            observer,
        }))
    }

    /// The queues underneath.
    pub fn queues(&self) -> &Arc<Queues> {
        &self.queues
    }

    /// The route table.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// What a child's POST tells the back-channel: routes learned from its
    /// screened `items` (returned as state to persist with the exchange, see
    /// [`Routes::learn`]) and the `acks` it sent, which remove those copies
    /// from its queue.
    pub async fn inbound(
        &self,
        child: &ComponentId,
        acks: &[MessageId],
        items: &[Item],
    ) -> Vec<(String, Vec<u8>)> {
        let learned = self.routes.learn(child, items);
        if !acks.is_empty() {
            let done = self.queues.ack(child.as_str(), acks).await;
            self.counters.acked.add(done.len() as u64);
            if let (Some(o), false) = (&self.observer, done.is_empty()) {
                o.acked(child, &done);
            }
        }
        learned
    }

    /// The back-channel messages for `child`'s reply. With a `wait` hint and
    /// nothing else to answer (`busy` false), holds until something is
    /// queued for it or the wait (capped by config) ends.
    pub async fn reply_for(
        &self,
        child: &ComponentId,
        wait: Option<Duration>,
        busy: bool,
    ) -> Vec<SpoolRecord> {
        if let (Some(w), false) = (wait, busy) {
            let w = w.min(self.cfg.max_wait).min(MAX_LONG_POLL);
            struct Held<'a>(&'a std::sync::atomic::AtomicU64);
            impl Drop for Held<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.holding
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _held = Held(&self.holding);
            self.queues.wait(child.as_str(), Instant::now() + w).await;
        }
        let Taken {
            records, expired, ..
        } = self
            .queues
            .take(child.as_str(), self.cfg.reply_bytes, MAX_BATCH_MESSAGES)
            .await;
        if !expired.is_empty() {
            for id in &expired {
                tracing::warn!(message = %id, %child, "back-channel message expired in the queue; dropped");
            }
            self.counters.expired.add(expired.len() as u64);
            if let Some(o) = &self.observer {
                o.expired(child, &expired);
            }
        }
        self.counters.sent.add(records.len() as u64);
        self.counters.sent_bytes.add(
            records
                .iter()
                .map(|r| (r.header.len() + r.content.len()) as u64)
                .sum(),
        );
        records
    }

    /// Splits `dests` by the child each is reachable through.
    pub fn route(&self, dests: &[ComponentId]) -> Routed {
        let mut r = Routed::default();
        for d in dests {
            match self.routes.resolve(d) {
                Some(via) => r.copies.entry(via).or_default().push(d.clone()),
                None => r.unroutable.push(d.clone()),
            }
        }
        r
    }

    /// Queues one copy of a back-channel message per child, each carrying
    /// the destinations behind that child and this node's routing hop; the
    /// content bytes are shared, not copied. With `received`, the message
    /// came from this node's parent: a repeat is recognised
    /// ([`Offered::Duplicate`]) and nothing is queued twice.
    ///
    /// # Errors
    /// Queue full or store failure: nothing was queued.
    pub async fn dispatch(
        &self,
        header: &Header,
        content: Bytes,
        routed: &Routed,
        received: Option<MessageId>,
    ) -> Result<Offered, StoreError> {
        self.offer_copies(header, content, routed, received, Vec::new())
            .await
    }

    /// [`BackChannel::dispatch`] of a message this node originates, with
    /// `record` (key-value pairs of its state) written in the same commit
    /// as the copies, whether or not they fit: the record is durable before
    /// any copy can be acknowledged, and a crash leaves both or neither.
    ///
    /// # Errors
    /// As [`BackChannel::dispatch`]; on a store failure the record is not
    /// written either.
    pub async fn dispatch_recorded(
        &self,
        header: &Header,
        content: Bytes,
        routed: &Routed,
        record: Vec<(String, Vec<u8>)>,
    ) -> Result<Offered, StoreError> {
        self.offer_copies(header, content, routed, None, record)
            .await
    }

    /// The copies of a message, and `state` with them, in one commit.
    async fn offer_copies(
        &self,
        header: &Header,
        content: Bytes,
        routed: &Routed,
        received: Option<MessageId>,
        state: Vec<(String, Vec<u8>)>,
    ) -> Result<Offered, StoreError> {
        let push = self.copies(header, content, routed);
        let r = self.queues.offer_with_state(push, received, state).await?;
        self.queued(&r);
        Ok(r)
    }

    /// Counts what an offer of [`BackChannel::copies`] queued, and what it
    /// left out for children at their quota.
    pub fn queued(&self, r: &Offered) {
        self.counters.queued.add(r.queued() as u64);
        self.counters.over_quota.add(r.over_quota().len() as u64);
    }

    /// Why a copy for `child` was not queued, for reports and delivery views.
    pub fn over_quota_reason(&self, child: &str) -> String {
        format!(
            "not queued at {}: the queue for {child} is at its quota ({} bytes; the child does not take what is sent)",
            self.me, self.cfg.queues.queue_capacity_bytes
        )
    }

    /// The reports an MLM sends up for a message whose copies for the
    /// `over` children were not queued: a rejected `response` for each
    /// final destination behind them (in the MLM's scope), so that the
    /// appserver's delivery view says where and why it stopped.
    pub fn over_quota_reports(
        &self,
        id: MessageId,
        routed: &Routed,
        over: &[String],
    ) -> Vec<crate::Message> {
        let mut out = Vec::new();
        for (child, dests) in &routed.copies {
            if !over.iter().any(|o| o == child.as_str()) {
                continue;
            }
            let reason = self.over_quota_reason(child.as_str());
            tracing::warn!(message = %id, %child, "back-channel copy not queued: the child's queue is at its quota");
            out.extend(dests.iter().map(|d| {
                crate::Message::response(
                    d,
                    crate::model::DELIVERED,
                    crate::model::Response::rejected(id, reason.clone()),
                    &self.me,
                )
            }));
        }
        out
    }

    /// The copies [`BackChannel::dispatch`] would queue, one per child with
    /// the destinations behind it and this node's hop, for a caller that
    /// offers many messages in one commit ([`Queues::offer_many`], then
    /// [`BackChannel::queued`]).
    pub fn copies(
        &self,
        header: &Header,
        content: Bytes,
        routed: &Routed,
    ) -> Vec<(String, SpoolRecord)> {
        if !routed.unroutable.is_empty() {
            self.counters.unroutable.add(routed.unroutable.len() as u64);
            tracing::warn!(message = %header.id, unroutable = ?routed.unroutable, "no route to some destinations");
        }
        let group = match &header.direction {
            Direction::Destination(d) => d.group.clone(),
            Direction::Source(_) => None,
        };
        let now = Timestamp::now();
        let mut push = Vec::with_capacity(routed.copies.len());
        for (child, ids) in &routed.copies {
            let mut h = header.clone();
            h.direction = Direction::Destination(Destination {
                ids: ids.clone(),
                group: group.clone(),
            });
            h.routing.push(Hop {
                id: self.me.clone(),
                time: now,
            });
            push.push((
                child.to_string(),
                SpoolRecord {
                    id: h.id,
                    precedence: h.qos.precedence,
                    persistent: h.qos.persistence,
                    expiry: h.qos.expiry,
                    header: Bytes::from(wire::encode_header(&h)),
                    content: content.clone(),
                },
            ));
        }
        push
    }
}

/// The first look every receiver takes at a back-channel message from its
/// parent: its destinations if it is to be acted on, or `None` if it is
/// only to be acknowledged (not a back-channel message, a repeat of one
/// already taken, or expired on the way; each logged).
pub fn screen<'a>(queues: &Queues, item: &'a Item) -> Option<&'a Destination> {
    let id = item.header.id;
    let Direction::Destination(d) = &item.header.direction else {
        tracing::warn!(message = %id, "parent sent a forward message down; dropped");
        return None;
    };
    if queues.was_received(&id) {
        return None;
    }
    if item.header.qos.expired(Timestamp::now()) {
        tracing::warn!(message = %id, "back-channel message arrived expired; dropped");
        return None;
    }
    Some(d)
}
