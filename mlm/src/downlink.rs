//! What an MLM does with back-channel messages from its parent: route each
//! destination to the child it is reachable through and queue one copy per
//! child (so a group message is split again here and, at the last MLM,
//! duplicated once per proxy). Acknowledged upward only once queued durably;
//! a resend of a message already taken is recognised and acknowledged again.
//! Control actions addressed to the MLM itself are carried out here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rsnet_common::backchannel::{self, BackChannel, Offered};
use rsnet_common::control::{self, Controlled};
use rsnet_common::envelope::Item;
use rsnet_common::forward::Outbox;
use rsnet_common::id::MessageId;
use rsnet_common::link::Downlink;
use rsnet_common::metrics::Counter;
use rsnet_common::model::{Message, PROCESSED};

/// The MLM's [`Downlink`].
pub struct Relay {
    /// Queues and routes toward the children.
    pub backchannel: Arc<BackChannel>,
    /// Back-channel messages received from the parent (new ones only).
    pub received: Counter,
    /// The MLM itself, for control actions addressed to it.
    pub node: Arc<dyn Controlled>,
    /// Where control results go upward.
    pub outbox: Arc<Outbox>,
}

impl Relay {
    async fn one(&self, item: Item) -> Option<MessageId> {
        let id = item.header.id;
        let Some(d) = backchannel::screen(self.backchannel.queues(), &item) else {
            return Some(id);
        };
        let me = self.node.id().clone();
        let (mine, below): (Vec<_>, Vec<_>) = d.ids.iter().cloned().partition(|x| *x == me);
        if !mine.is_empty() {
            if item.header.class == control::CLASS {
                let r = control::act(self.node.as_ref(), &me, &item).await;
                let m = Message::response(&me, PROCESSED, r, &me);
                if let Err(e) = self.outbox.push(&[m]).await {
                    tracing::warn!(error = %e, "control result not spooled");
                }
            } else {
                tracing::warn!(message = %id, "back-channel message for the MLM itself that is not a control action; dropped");
            }
        }
        let routed = self.backchannel.route(&below);
        match self
            .backchannel
            .dispatch(&item.header, item.content.clone(), &routed, Some(id))
            .await
        {
            Ok(Offered::Queued(_)) => {
                self.received.inc();
                Some(id)
            }
            Ok(Offered::Duplicate) => Some(id),
            Err(e) => {
                tracing::warn!(message = %id, error = %e, "back-channel message not queued; parent resends it");
                None
            }
        }
    }
}

impl Downlink for Relay {
    fn deliver_one(
        &self,
        item: Item,
    ) -> Pin<Box<dyn Future<Output = Option<MessageId>> + Send + '_>> {
        Box::pin(self.one(item))
    }
}
