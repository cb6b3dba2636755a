//! The child side of the back-channel: [`BackChannelClient`].
//!
//! Every exchange a child makes (forwarder, MLM relay, long-poll, ack post)
//! goes through it, because every one of them carries back-channel state
//! both ways:
//!
//! ```text
//! outgoing(wait) ── control part: pending acks (+ wait hint) ──► Link::exchange
//!                                                                     │
//! exchange ◄── reply: answers + back-channel messages ◄───────────────┘
//!    │ Receiver::receive(all of the reply's messages)  one durable commit
//!    └ the IDs it may acknowledge join the pending acks ─► next POST
//!      (a failed exchange puts the acks it carried back, in front)
//! ```
//!
//! The [`Receiver`] is the node: the proxy's inbox, the MLM's per-child
//! queues. It acknowledges only what is durable at this node (or a repeat
//! of what was), so the parent removes a message only once nothing can lose
//! it. Pending acks are bounded ([`MAX_PENDING_ACKS`]); should they ever
//! overflow, the oldest are dropped, counted
//! (`rsnet_backchannel_acks_dropped_total`) and logged, and the parent
//! simply sends those messages again, which the receiver recognises.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::envelope::{Control, Decoded, EnvelopeWriter, Item};
use crate::id::MessageId;
use crate::limits::MAX_BATCH_MESSAGES;
use crate::link::{Link, LinkError};
use crate::metrics::{Counter, Registry};
use crate::server::Shutdown;

/// Acknowledgements pending at most (about 2.5 MiB of IDs).
pub const MAX_PENDING_ACKS: usize = 64 * 1024;

/// What a node does with the back-channel messages of one reply.
pub trait Receiver: Send + Sync + 'static {
    /// Takes every message of one reply, in one durable commit where it
    /// keeps them; returns the IDs that may be acknowledged: durable here,
    /// or repeats of what was. What is not acknowledged the parent sends
    /// again after its lease.
    fn receive(
        &self,
        items: Vec<Item>,
    ) -> Pin<Box<dyn Future<Output = Vec<MessageId>> + Send + '_>>;
}

/// An envelope being built for [`BackChannelClient::exchange`]: the control
/// part (pending acks, wait hint) is already written; add messages to
/// `writer`, in its form (the one the parent reads).
pub struct Outgoing {
    /// The envelope; add messages with `raw`, `item` or `message`.
    pub writer: EnvelopeWriter,
    acks: Vec<MessageId>,
}

/// See the module docs.
pub struct BackChannelClient {
    link: Arc<Link>,
    acks: Mutex<VecDeque<MessageId>>,
    acks_ready: tokio::sync::Notify,
    receiver: OnceLock<Arc<dyn Receiver>>,
    dropped: Counter,
}

impl BackChannelClient {
    /// The client over `link`, registering its counter.
    pub fn new(link: Arc<Link>, metrics: &Registry) -> Arc<BackChannelClient> {
        Arc::new(BackChannelClient {
            link,
            acks: Mutex::new(VecDeque::new()),
            acks_ready: tokio::sync::Notify::new(),
            receiver: OnceLock::new(),
            dropped: metrics.counter(
                "rsnet_backchannel_acks_dropped_total",
                "pending acks dropped over the bound (the parent resends those messages)",
            ),
        })
    }

    /// The link underneath.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Sets the node's [`Receiver`] (once; later calls are ignored). Until
    /// then, messages in replies are neither kept nor acknowledged.
    pub fn set_receiver(&self, r: Arc<dyn Receiver>) {
        let _ = self.receiver.set(r);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<MessageId>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an envelope: a control part with pending acks and `wait`.
    pub fn outgoing(&self, wait: Option<Duration>) -> Outgoing {
        let acks: Vec<MessageId> = {
            let mut a = self.lock();
            let n = a.len().min(MAX_BATCH_MESSAGES);
            a.drain(..n).collect()
        };
        let mut writer = EnvelopeWriter::in_form(self.link.form());
        writer.control(&Control {
            wait_ms: wait.map(|w| w.as_millis() as u64),
            acks: acks.clone(),
            ..Default::default()
        });
        Outgoing { writer, acks }
    }

    /// True if acknowledgements wait to be sent.
    pub fn has_acks(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Resolves when new acknowledgements are pending.
    pub async fn acks_ready(&self) {
        self.acks_ready.notified().await
    }

    fn keep_acks(&self, ids: Vec<MessageId>, front: bool) {
        if ids.is_empty() {
            return;
        }
        let mut a = self.lock();
        if front {
            for id in ids.into_iter().rev() {
                a.push_front(id);
            }
        } else {
            a.extend(ids);
        }
        if a.len() > MAX_PENDING_ACKS {
            let over = a.len() - MAX_PENDING_ACKS;
            a.drain(..over);
            self.dropped.add(over as u64);
            tracing::warn!(
                dropped = over,
                "pending back-channel acks over the bound; the parent will resend those messages"
            );
        }
    }

    /// Sends `out` and returns the parent's reply. The back-channel
    /// messages it carried are handed to the [`Receiver`] (in one call)
    /// before this returns, and `Decoded::items` is then empty; the acks
    /// `out` carried go back to the pending list if the exchange failed.
    ///
    /// # Errors
    /// [`LinkError`].
    ///
    /// # Cancel safety
    /// If dropped, the acks `out` carried are lost from this node's list;
    /// the parent then resends those messages after their lease, and the
    /// receiver recognises them.
    pub async fn exchange(&self, out: Outgoing, timeout: Duration) -> Result<Decoded, LinkError> {
        let Outgoing { writer, acks } = out;
        let mut d = match self.link.exchange(writer, timeout).await {
            Ok(d) => d,
            Err(e) => {
                self.keep_acks(acks, true);
                return Err(e);
            }
        };
        let items = std::mem::take(&mut d.items);
        if !items.is_empty() {
            match self.receiver.get() {
                Some(r) => {
                    let ids = r.receive(items).await;
                    if !ids.is_empty() {
                        self.keep_acks(ids, false);
                        self.acks_ready.notify_one();
                    }
                }
                None => {
                    tracing::warn!(
                        n = items.len(),
                        "back-channel messages before the node was ready; the parent resends them"
                    )
                }
            }
        }
        Ok(d)
    }

    /// The child's long-poll: keeps one empty POST with a `wait` hint
    /// outstanding at the parent, so a back-channel message queued there comes
    /// down at once, and sends acknowledgements as soon as there are some
    /// (they would otherwise wait for the held poll to return). Runs until
    /// shutdown.
    pub async fn poll_until_shutdown(
        self: Arc<Self>,
        wait: Duration,
        exchange_timeout: Duration,
        mut shutdown: Shutdown,
    ) {
        let acks = {
            let (me, mut shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = me.acks_ready() => {}
                        _ = shutdown.wait() => return,
                    }
                    while me.has_acks() {
                        if let Err(e) = me.exchange(me.outgoing(None), exchange_timeout).await {
                            tracing::debug!(error = %e, "ack post failed; acks kept for the next post");
                            break;
                        }
                    }
                }
            })
        };
        let mut backoff = crate::link::Retry::default();
        // The first failure of a run is a warning (a refused parent shows
        // even when nothing is spooled); its repeats are debug.
        let mut failing = false;
        loop {
            let out = self.outgoing(Some(wait));
            let r = tokio::select! {
                r = self.exchange(out, wait + exchange_timeout) => r,
                _ = shutdown.wait() => break,
            };
            if let Err(e) = r {
                let d = backoff.next_delay(&e);
                if failing {
                    tracing::debug!(error = %e, retry_in = ?d, "long-poll failed");
                } else {
                    tracing::warn!(error = %e, retry_in = ?d, "long-poll failed; retrying with backoff");
                }
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.wait() => break,
                }
            } else {
                if failing {
                    tracing::info!("long-poll works again");
                }
                failing = false;
                backoff.reset();
            }
        }
        acks.abort();
    }
}
