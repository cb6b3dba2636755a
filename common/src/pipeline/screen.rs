//! The screen: the first stage at every parent, and the only one that knows
//! nothing of the node it runs in.
//!
//! Every field a child sends is checked against who the child is (its
//! certificate, [`Identity`]) before anything is learned from it:
//!
//! * the message travels upward (it has a source, not destinations);
//! * its source lies inside the subtree the child may speak for
//!   ([`Identity::may_send_as`]: a proxy for itself and its support
//!   instances, an MLM for its scopes);
//! * so does **every hop in its routing list**. Routes and the topology are
//!   learned from those hops, so a hop outside the child's subtree would let
//!   one proxy pull another's back-channel traffic to itself. Such a message
//!   is rejected whole, never stripped and passed on: a sender that writes
//!   foreign hops is broken or hostile, and a rejection tells it so;
//! * its class is one the peer's certificate allows
//!   ([`Identity::may_send_class`]). A class it may not send is deferred
//!   for [`CLASS_PARKED`] with `retry-class`, naming the class: the sender
//!   parks that class and keeps the others flowing (and sends it once its
//!   certificate allows it).

use crate::envelope::Item;
use crate::model::Direction;
use crate::tls::Identity;

use super::{Exchange, Judged, Stage, StageFuture, Verdict};

/// How long a sender parks a class its certificate does not allow.
pub const CLASS_PARKED: std::time::Duration = std::time::Duration::from_secs(3600);

/// See the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Screen;

impl Screen {
    /// The verdict on one item from `peer`, or `None` to pass it on.
    pub fn check(peer: &Identity, item: &Item) -> Option<Verdict> {
        let src = match &item.header.direction {
            Direction::Destination(_) => {
                return Some(Verdict::reject("back-channel message sent upward"))
            }
            Direction::Source(s) => s,
        };
        if !peer.may_send_as(&src.origin) {
            return Some(Verdict::reject(format!(
                "source {} is outside the subtree of authenticated peer {}",
                src.origin, peer.id
            )));
        }
        if let Some(hop) = item
            .header
            .routing
            .iter()
            .find(|h| !peer.may_send_as(&h.id))
        {
            return Some(Verdict::reject(format!(
                "routing hop {} is outside the subtree of authenticated peer {}",
                hop.id, peer.id
            )));
        }
        let class = &item.header.class;
        if !peer.may_send_class(class) {
            return Some(Verdict::defer_class(
                format!(
                    "class {class} is not allowed for {} (its certificate allows: {})",
                    peer.id,
                    peer.classes.join(", ")
                ),
                CLASS_PARKED,
                class,
            ));
        }
        None
    }
}

impl Stage for Screen {
    fn name(&self) -> &'static str {
        "screen"
    }

    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        let j = Judged::each(items, |i| Self::check(&ex.peer, i));
        Box::pin(async move { j })
    }
}
