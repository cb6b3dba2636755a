//! The expiry stage: the first of the modules at every parent (DESIGN.md
//! §3, [`crate::qos`]). A forward message whose expiry has passed is
//! dropped (answered `accepted`, so the child lets it go) and never passed
//! on or stored; the drop is reported upward.
//!
//! Where the report goes depends on the node: an MLM spools it in its own
//! outbox ([`Notify::Spool`], durable, sent upward like its heartbeats);
//! the appserver hands it to its terminal stage in the same batch
//! ([`Notify::Inline`]), which stores it.

use std::sync::Arc;

use crate::envelope::Item;
use crate::forward::Outbox;
use crate::id::ComponentId;
use crate::metrics::Counter;
use crate::model::Direction;
use crate::qos::{self, Expired};

use super::{Exchange, Judged, Stage, StageFuture, Verdict};

/// Where expiry reports go.
pub enum Notify {
    /// Into this node's spool (an MLM).
    Spool(Arc<Outbox>),
    /// On to the terminal stage with the batch (the appserver).
    Inline,
}

/// See the module docs.
pub struct Expiry {
    /// This node (the reports' origin).
    pub me: ComponentId,
    /// Where reports go.
    pub notify: Notify,
    /// Messages dropped as expired.
    pub dropped: Counter,
}

impl Stage for Expiry {
    fn name(&self) -> &'static str {
        "expiry"
    }

    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(async move {
            let mut out = Judged {
                forward: Vec::with_capacity(items.len()),
                decided: Vec::new(),
            };
            let mut gone = Vec::new();
            for item in items {
                let forward = matches!(item.header.direction, Direction::Source(_));
                if forward && item.header.qos.expired(ex.received) {
                    tracing::info!(message = %item.header.id, class = %item.header.class, "message arrived expired; dropped");
                    gone.push(Expired::of(&item.header));
                    out.decided.push((item.header.id, Verdict::Drop));
                } else {
                    out.forward.push(item);
                }
            }
            if gone.is_empty() {
                return out;
            }
            self.dropped.add(gone.len() as u64);
            let reports = qos::reports(&self.me, &gone);
            match &self.notify {
                Notify::Spool(outbox) => {
                    if let Err(e) = outbox.push(&reports).await {
                        tracing::warn!(error = %e, n = gone.len(), "expiry report not spooled");
                    }
                }
                Notify::Inline => out.forward.extend(reports.iter().map(Item::new)),
            }
            out
        })
    }
}
