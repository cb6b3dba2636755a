//! What an MLM does with back-channel messages from its parent: route each
//! destination to the child it is reachable through and queue one copy per
//! child (so a group message is split again here and, at the last MLM,
//! duplicated once per proxy). Acknowledged upward only once queued durably;
//! a resend of a message already taken is recognised and acknowledged again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rsnet_common::backchannel::BackChannel;
use rsnet_common::envelope::Item;
use rsnet_common::id::MessageId;
use rsnet_common::link::Downlink;
use rsnet_common::metrics::Counter;
use rsnet_common::model::{Direction, Timestamp};

/// The MLM's [`Downlink`].
pub struct Relay {
    /// Queues and routes toward the children.
    pub backchannel: Arc<BackChannel>,
    /// Back-channel messages received from the parent (new ones only).
    pub received: Counter,
}

impl Relay {
    async fn one(&self, item: Item) -> Option<MessageId> {
        let id = item.header.id;
        let Direction::Destination(d) = &item.header.direction else {
            tracing::warn!(message = %id, "parent sent a forward message down; dropped");
            return Some(id);
        };
        if self.backchannel.queues().was_received(&id) {
            return Some(id);
        }
        if item.header.qos.expired(Timestamp::now()) {
            tracing::warn!(message = %id, "back-channel message arrived expired; dropped");
            return Some(id);
        }
        let routed = self.backchannel.route(&d.ids);
        match self
            .backchannel
            .dispatch(&item.header, item.content.clone(), &routed, Some(id))
            .await
        {
            Ok(rsnet_common::backchannel::Offered::Queued(_)) => {
                self.received.inc();
                Some(id)
            }
            Ok(rsnet_common::backchannel::Offered::Duplicate) => Some(id),
            Err(e) => {
                tracing::warn!(message = %id, error = %e, "back-channel message not queued; parent resends it");
                None
            }
        }
    }
}

impl Downlink for Relay {
    fn deliver(
        &self,
        items: Vec<Item>,
    ) -> Pin<Box<dyn Future<Output = Vec<MessageId>> + Send + '_>> {
        Box::pin(async move {
            let mut acks = Vec::with_capacity(items.len());
            for item in items {
                acks.extend(self.one(item).await);
            }
            acks
        })
    }
}
