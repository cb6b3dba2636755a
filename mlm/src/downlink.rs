//! What an MLM does with back-channel messages from its parent: route each
//! destination to the child it is reachable through and queue one copy per
//! child (so a group message is split again here and, at the last MLM,
//! duplicated once per proxy). A whole reply is queued in one durable
//! commit, with a received mark per message, and acknowledged upward only
//! then; a resend of a message already taken is recognised and acknowledged
//! again. Control actions addressed to the MLM itself are committed as
//! pending in that same commit and carried out after it
//! ([`rsnet_common::control::run_pending`]). Release offers go to the
//! `^release` pseudo-queue instead, in that commit too: they are offered
//! below only once this MLM holds the file ([`crate::releases`]).
//!
//! Rules that apply to the back-channel (`applies = "back"` or `"both"`)
//! run first: a message a filter rule drops is acknowledged upward and goes
//! no further; a modified one is routed and queued as modified.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rsnet_common::backchannel::{self, BackChannel, Offer, Offered, Receiver};
use rsnet_common::control::{self, Controlled};
use rsnet_common::envelope::Item;
use rsnet_common::forward::Outbox;
use rsnet_common::id::MessageId;
use rsnet_common::metrics::Counter;
use rsnet_common::release;

/// The MLM's [`Receiver`].
pub struct Downlink {
    /// Queues and routes toward the children.
    pub backchannel: Arc<BackChannel>,
    /// Back-channel messages received from the parent (new ones only).
    pub received: Counter,
    /// The MLM itself, for control actions addressed to it.
    pub node: Arc<dyn Controlled>,
    /// Where control results go upward.
    pub outbox: Arc<Outbox>,
    /// Release offers are fetched here before they go below.
    pub releases: Arc<crate::releases::ReleaseCache>,
    /// The MLM's rules (those for the back-channel apply here).
    pub rules: Arc<rsnet_common::pipeline::rules::Rules>,
    /// Messages a back-channel rule dropped.
    pub filtered: Counter,
}

impl Downlink {
    async fn receive_all(&self, items: Vec<Item>) -> Vec<MessageId> {
        let queues = self.backchannel.queues();
        let me = self.node.id().clone();
        let mut acks = Vec::with_capacity(items.len());
        let mut offers = Vec::with_capacity(items.len());
        let mut ids = Vec::with_capacity(items.len());
        let mut releases = false;
        let mut cancels = Vec::new();
        for item in items {
            let id = item.header.id;
            if backchannel::screen(queues, &item).is_none() {
                acks.push(id);
                continue;
            }
            let Some(item) = self.rules.back(item) else {
                tracing::info!(message = %id, "back-channel message dropped by a rule");
                self.filtered.inc();
                acks.push(id);
                continue;
            };
            let item = &item;
            let Some(d) = backchannel::screen(queues, item) else {
                acks.push(id);
                continue;
            };
            let (mine, below): (Vec<_>, Vec<_>) = d.ids.iter().cloned().partition(|x| *x == me);
            let is_release = release::is_offer(&item.header);
            let routed = self.backchannel.route(&below);
            let mut push = if is_release {
                // Fetched first, offered below after (crate::releases).
                vec![(release::PENDING.to_string(), control::pending_record(item))]
            } else {
                self.backchannel
                    .copies(&item.header, item.content.clone(), &routed)
            };
            releases |= is_release;
            if release::is_cancel(&item.header) {
                // Passed on below like any message; the cached copy goes after the commit.
                if let Some(r) = item.content().ok().as_ref().and_then(release::cancel_of) {
                    cancels.push(r);
                }
            }
            let is_control = !mine.is_empty() && item.header.class == control::CLASS;
            if is_control {
                push.push((control::CONTROL.to_string(), control::pending_record(item)));
            } else if !mine.is_empty() && !is_release {
                tracing::warn!(message = %id, "back-channel message for the MLM itself that is not a control action; dropped");
            }
            offers.push(Offer {
                push,
                received: Some(id),
            });
            ids.push((id, is_control, is_release, routed));
        }
        let results = queues.offer_many(offers).await;
        let mut controls = false;
        let mut reports = Vec::new();
        for ((id, is_control, is_release, routed), r) in ids.into_iter().zip(results) {
            // Entries in pseudo-queues are not copies for children.
            let pseudo = usize::from(is_control) + usize::from(is_release);
            match r {
                Ok(o @ (Offered::Queued(_) | Offered::Partly { .. })) => {
                    let copies = Offered::Partly {
                        queued: o.queued().saturating_sub(pseudo),
                        over_quota: o.over_quota().to_vec(),
                    };
                    self.backchannel.queued(&copies);
                    // A child at its quota does not hold up its siblings:
                    // the message is taken, and its destinations behind
                    // that child are reported as not reached.
                    reports.extend(self.backchannel.over_quota_reports(
                        id,
                        &routed,
                        o.over_quota(),
                    ));
                    self.received.inc();
                    controls |= is_control;
                    acks.push(id);
                }
                Ok(Offered::Duplicate) => acks.push(id),
                Err(e) => {
                    tracing::warn!(message = %id, error = %e, "back-channel message not queued; parent resends it");
                }
            }
        }
        if !reports.is_empty() {
            if let Err(e) = self.outbox.push(&reports).await {
                tracing::warn!(error = %e, "over-quota reports not spooled");
            }
        }
        if controls {
            control::run_pending(queues, self.node.as_ref(), &self.outbox).await;
        }
        if releases {
            self.releases.wake();
        }
        for r in cancels {
            self.releases.cancelled(r).await;
        }
        acks
    }
}

impl Receiver for Downlink {
    fn receive(
        &self,
        items: Vec<Item>,
    ) -> Pin<Box<dyn Future<Output = Vec<MessageId>> + Send + '_>> {
        Box::pin(self.receive_all(items))
    }
}
