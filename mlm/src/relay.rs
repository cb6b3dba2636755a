//! The synchronous upward relay, with coalescing.
//!
//! Each child POST hands its items to [`Relay::forward`] and waits. One task
//! takes the first waiting batch plus every other batch already queued (up
//! to `max_batch` messages), sends them upstream as one envelope (up to
//! `max_inflight` at once), and hands each child the parent's answers for
//! its own messages. Whatever the parent did not answer, or could not be
//! reached for, is answered "rejected, retry after": the child keeps it
//! spooled, so backpressure reaches the edge and the MLM holds nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rsnet_common::envelope::Item;
use rsnet_common::forward::ForwardConfig;
use rsnet_common::link::Link;
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::Response;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// What a child is told to wait when the parent cannot be reached.
pub const PARENT_DOWN_RETRY: Duration = Duration::from_secs(1);
/// Child batches waiting for the relay before `forward` waits too.
const QUEUE_DEPTH: usize = 1024;

struct Job {
    items: Vec<Item>,
    reply: oneshot::Sender<Vec<Response>>,
}

/// Handle to the relay task.
#[derive(Clone)]
pub struct Relay {
    tx: mpsc::Sender<Job>,
}

struct Counters {
    upstream_posts: Counter,
    relayed: Counter,
    deferred: Counter,
}

impl Relay {
    /// Starts the relay over `link`.
    pub fn start(link: Arc<Link>, cfg: ForwardConfig, metrics: &Registry) -> Relay {
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
        });
        tokio::spawn(run(rx, link, cfg, counters));
        Relay { tx }
    }

    /// Relays a child's items; returns one answer per item.
    ///
    /// # Cancel safety
    /// If dropped, the items may still reach the parent; the child, which
    /// got no answer, resends them, and the appserver drops the duplicates.
    pub async fn forward(&self, items: Vec<Item>) -> Vec<Response> {
        if items.is_empty() {
            return Vec::new();
        }
        let ids: Vec<_> = items.iter().map(|i| i.header.id).collect();
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job { items, reply }).await.is_ok() {
            if let Ok(r) = rx.await {
                return r;
            }
        }
        ids.into_iter()
            .map(|id| Response::retry(id, "mlm relay unavailable", PARENT_DOWN_RETRY))
            .collect()
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, link: Arc<Link>, cfg: ForwardConfig, c: Arc<Counters>) {
    let slots = Arc::new(Semaphore::new(cfg.max_inflight));
    while let Some(first) = rx.recv().await {
        let mut n = first.items.len();
        let mut jobs = vec![first];
        while n < cfg.max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.items.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (link, c, timeout) = (link.clone(), c.clone(), cfg.exchange_timeout);
        tokio::spawn(async move {
            send(jobs, &link, timeout, &c).await;
            drop(permit);
        });
    }
}

async fn send(jobs: Vec<Job>, link: &Link, timeout: Duration, c: &Counters) {
    let mut out = link.outgoing(None);
    for j in &jobs {
        for i in &j.items {
            out.writer.item(i);
        }
    }
    c.upstream_posts.inc();
    let mut answers: HashMap<_, Response> = HashMap::new();
    let mut why = String::from("parent did not answer for this message");
    match link.exchange(out, timeout).await {
        Ok(d) => answers = d.control.answers(),
        Err(e) => {
            tracing::warn!(error = %e, "relay: parent unreachable; children will retry");
            why = format!("parent unreachable: {}", e.kind);
        }
    }
    for j in jobs {
        let out: Vec<Response> = j
            .items
            .iter()
            .map(|i| match answers.remove(&i.header.id) {
                Some(r) => {
                    if r.status == rsnet_common::model::Status::Accepted {
                        c.relayed.inc();
                    }
                    r
                }
                None => {
                    c.deferred.inc();
                    Response::retry(i.header.id, why.clone(), PARENT_DOWN_RETRY)
                }
            })
            .collect();
        let _ = j.reply.send(out);
    }
}
