//! The relay: the MLM's terminal stage, synchronous and coalescing.
//!
//! Each child POST that reaches this stage gets the MLM's routing hop on
//! every message, is checked once more against the envelope budget (a
//! message that cannot travel further is rejected for good, so it can never
//! poison an upstream batch), and is handed to the relay task. Whenever one
//! of its `max_inflight` upstream slots is free, that task takes the first
//! waiting batch plus every other batch already queued (up to `max_batch`
//! messages) and [`deliver`]s them upward, cutting envelopes by bytes; while
//! every slot is busy, the children's batches wait and then leave together.
//! Each child hears the parent's answers for its own messages. Whatever the
//! parent did not answer, or could not be reached for, is answered
//! "rejected, retry after": the child keeps it spooled, so backpressure
//! reaches the edge and the MLM holds nothing.
//!
//! Routes the exchange taught ([`Exchange::persist`]) are committed before
//! the child is answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rsnet_common::backchannel::BackChannelClient;
use rsnet_common::envelope::{budget, Item};
use rsnet_common::forward::{deliver, ForwardConfig, Parcel};
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::{Hop, Response, Status};
use rsnet_common::pipeline::{Exchange, Judged, Stage, StageFuture, Verdict};
use rsnet_common::store::KvStore;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// What a child is told to wait when the parent cannot be reached.
pub const PARENT_DOWN_RETRY: Duration = Duration::from_secs(1);
/// Child batches waiting for the relay before `forward` waits too.
const QUEUE_DEPTH: usize = 1024;

struct Job {
    parcels: Vec<Parcel>,
    reply: oneshot::Sender<HashMap<MessageId, Response>>,
}

/// Handle to the relay task, and the MLM's terminal stage.
#[derive(Clone)]
pub struct Relay {
    me: ComponentId,
    tx: mpsc::Sender<Job>,
    kv: Arc<dyn KvStore>,
    counters: Arc<Counters>,
}

struct Counters {
    upstream_posts: Counter,
    relayed: Counter,
    deferred: Counter,
    too_large: Counter,
}

impl Relay {
    /// Starts the relay of MLM `me` over `uplink`; learned routes go to `kv`.
    pub fn start(
        me: ComponentId,
        uplink: Arc<BackChannelClient>,
        kv: Arc<dyn KvStore>,
        cfg: ForwardConfig,
        metrics: &Registry,
    ) -> Relay {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let counters = Arc::new(Counters {
            upstream_posts: metrics.counter(
                "rsnet_relay_upstream_posts_total",
                "envelopes sent upstream by the relay",
            ),
            relayed: metrics.counter(
                "rsnet_relay_accepted_total",
                "child messages the parent accepted",
            ),
            deferred: metrics.counter(
                "rsnet_relay_deferred_total",
                "child messages answered retry-after",
            ),
            too_large: metrics.counter(
                "rsnet_relay_too_large_total",
                "child messages rejected because they could not travel further",
            ),
        });
        tokio::spawn(run(rx, uplink, cfg, counters.clone()));
        Relay {
            me,
            tx,
            kv,
            counters,
        }
    }

    /// Stamps this MLM's hop on `item`'s header (put into the received bytes
    /// where they allow it), or says why it cannot travel on.
    fn parcel(&self, item: Item, hop: &Hop) -> Result<Parcel, (MessageId, Verdict)> {
        let id = item.header.id;
        let header = item.header_with_hop(hop);
        let hops = item.header.routing.len() + 1;
        if let Err(e) = budget::check(header.len(), item.content.len(), hops) {
            self.counters.too_large.inc();
            return Err((id, Verdict::reject(format!("cannot travel further: {e}"))));
        }
        Ok(Parcel::new(id, header, item.content, hops))
    }

    /// Relays parcels; returns the parent's answers by message.
    async fn forward(&self, parcels: Vec<Parcel>) -> HashMap<MessageId, Response> {
        if parcels.is_empty() {
            return HashMap::new();
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job { parcels, reply }).await.is_ok() {
            if let Ok(r) = rx.await {
                return r;
            }
        }
        HashMap::new()
    }

    async fn persist(&self, pairs: Vec<(String, Vec<u8>)>) {
        if pairs.is_empty() {
            return;
        }
        if let Err(e) = rsnet_common::store::put_async(&self.kv, pairs).await {
            tracing::warn!(error = %e, "routes not persisted; relearned from traffic");
        }
    }
}

impl Stage for Relay {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(async move {
            let hop = Hop {
                id: self.me.clone(),
                time: ex.received,
            };
            let mut decided = Vec::new();
            let mut parcels = Vec::with_capacity(items.len());
            for item in items {
                match self.parcel(item, &hop) {
                    Ok(p) => parcels.push(p),
                    Err(d) => decided.push(d),
                }
            }
            let ids: Vec<MessageId> = parcels.iter().map(|p| p.id).collect();
            let (mut answers, ()) =
                tokio::join!(self.forward(parcels), self.persist(ex.persist.clone()));
            for id in ids {
                let v = match answers.remove(&id) {
                    Some(r) => {
                        match (r.status, r.retry_after) {
                            (Status::Accepted, _) => self.counters.relayed.inc(),
                            (_, Some(_)) => self.counters.deferred.inc(),
                            _ => {}
                        }
                        Verdict::from_answer(r)
                    }
                    None => {
                        self.counters.deferred.inc();
                        Verdict::defer("parent did not answer for this message", PARENT_DOWN_RETRY)
                    }
                };
                decided.push((id, v));
            }
            Judged {
                forward: Vec::new(),
                decided,
            }
        })
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    uplink: Arc<BackChannelClient>,
    cfg: ForwardConfig,
    c: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_inflight));
    loop {
        // A free slot first, then the batch: while every slot is busy, the
        // children's batches pile up in the queue and leave as one envelope
        // (one upstream exchange, one commit at the parent) instead of
        // one each.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut n = first.parcels.len();
        let mut jobs = vec![first];
        while n < cfg.max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.parcels.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let (uplink, c, cfg) = (uplink.clone(), c.clone(), cfg.clone());
        tokio::spawn(async move {
            send(jobs, &uplink, &cfg, &c).await;
            drop(permit);
        });
    }
}

async fn send(jobs: Vec<Job>, uplink: &BackChannelClient, cfg: &ForwardConfig, c: &Counters) {
    let all: Vec<Parcel> = jobs
        .iter()
        .flat_map(|j| j.parcels.iter().cloned())
        .collect();
    let mut d = deliver(uplink, &all, cfg.max_batch, cfg.exchange_timeout).await;
    c.upstream_posts.add(d.posts as u64);
    // What the parent could not be reached for is handed back: "retry after".
    if let Some(unsent) = d.error.take() {
        tracing::warn!(error = %unsent.error, n = unsent.parcels.len(), "relay: parent unreachable; children will retry");
        let why = format!("parent unreachable: {}", unsent.error.kind);
        for p in unsent.parcels {
            d.answers
                .insert(p.id, Response::retry(p.id, why.clone(), PARENT_DOWN_RETRY));
        }
    }
    for j in jobs {
        let mut mine: HashMap<MessageId, Response> = HashMap::with_capacity(j.parcels.len());
        for p in &j.parcels {
            let r = d.answers.remove(&p.id).unwrap_or_else(|| {
                Response::retry(
                    p.id,
                    "parent did not answer for this message",
                    PARENT_DOWN_RETRY,
                )
            });
            mine.insert(p.id, r);
        }
        let _ = j.reply.send(mine);
    }
}
