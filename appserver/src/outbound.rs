//! Back-channel messages operators send (`POST /api/v1/messages`).
//!
//! The appserver is where every back-channel message starts: it expands
//! groups, routes each final destination to the child it is reachable
//! through, starts the delivery record, then queues one copy per child
//! ([`BackChannel::dispatch`]); the children take it from there.

use std::sync::Arc;

use bytes::Bytes;
use rsnet_common::backchannel::BackChannel;
use rsnet_common::envelope::budget;
use rsnet_common::envelope::wire;
use rsnet_common::id::{ComponentId, GroupName, MessageId};
use rsnet_common::json::MessageInput;
use rsnet_common::limits::MAX_DESTINATIONS;
use rsnet_common::model::{Destination, Direction, Header, Timestamp};

use crate::deliveries::{Deliveries, Delivery, Event};
use crate::groups::Groups;

use crate::error::Error;

/// Sends operator messages down the tree.
pub struct Outbound {
    /// The appserver's back-channel.
    pub backchannel: Arc<BackChannel>,
    /// Group table.
    pub groups: Arc<Groups>,
    /// Delivery records.
    pub deliveries: Arc<Deliveries>,
    /// The release key, which seals control actions ([`rsnet_common::seal`]);
    /// without it control actions are refused.
    pub control_key: Option<Arc<rsnet_common::release::ReleaseKey>>,
}

impl Outbound {
    /// Expands `to` (IDs and `group:NAME`s) into final destinations, sorted,
    /// without repeats; also returns the group if exactly one was named.
    ///
    /// # Errors
    /// A bad ID, an unknown group, too many destinations.
    pub fn expand(&self, to: &[String]) -> Result<(Vec<ComponentId>, Option<GroupName>), Error> {
        if to.is_empty() {
            return Err(Error::Invalid("to: names no destination".into()));
        }
        let mut dests = Vec::new();
        let mut groups = Vec::new();
        for (i, t) in to.iter().enumerate() {
            if t.starts_with("group:") {
                let g: GroupName = t
                    .parse()
                    .map_err(|e| Error::Invalid(format!("to[{i}]: {e}")))?;
                let found = self
                    .groups
                    .get(&g)?
                    .ok_or_else(|| Error::NoGroup(t.clone()))?;
                for m in found.members {
                    if let Ok(id) = m.parse() {
                        dests.push(id);
                    }
                }
                groups.push(g);
            } else {
                dests.push(
                    t.parse()
                        .map_err(|e| Error::Invalid(format!("to[{i}]: {t:?}: {e}")))?,
                );
            }
        }
        dests.sort();
        dests.dedup();
        if dests.len() > MAX_DESTINATIONS {
            return Err(Error::Invalid(format!(
                "to: {} destinations, more than {MAX_DESTINATIONS}",
                dests.len()
            )));
        }
        let group = (groups.len() == 1).then(|| groups.remove(0));
        Ok((dests, group))
    }

    /// Sends one message to `to`; returns its delivery record.
    ///
    /// # Errors
    /// [`Error`]; on a store error nothing was queued.
    pub async fn send(&self, to: Vec<String>, input: &MessageInput) -> Result<Delivery, Error> {
        let (dests, group) = self.expand(&to)?;
        let built = input.build(0, None).map_err(Error::Invalid)?;
        let created = Timestamp::now();
        let mut qos = built.qos;
        qos.expiry = input.expires_in().map(|d| created.after(d));
        let header = Header {
            id: MessageId::new(),
            class: built.class,
            subclass: built.subclass,
            kind: built.content.kind(),
            created,
            direction: Direction::Destination(Destination {
                ids: dests.clone(),
                group,
            }),
            qos,
            routing: Vec::new(),
        };
        let mut header = header;
        let content = if header.class == rsnet_common::control::CLASS {
            // Sealed for exactly these destinations: no MLM can make one up,
            // change it, or hand it to another node.
            let Some(key) = &self.control_key else {
                return Err(Error::Invalid(
                    "control actions are signed with the release key, and this appserver has none ([releases] key)".into(),
                ));
            };
            let sealed = rsnet_common::seal::seal(key, &mut header, &built.content, &dests)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            Bytes::from(wire::encode_content(&sealed))
        } else {
            Bytes::from(wire::encode_content(&built.content))
        };
        // Refused now, or it travels: a copy too large for a reply's part
        // would make every reply to that child undecodable.
        budget::check(wire::encode_header(&header).len(), content.len(), 0)?;
        let routed = self.backchannel.route(&dests);
        let record = Delivery::new(&header, to, &routed.copies, &routed.unroutable);
        // The record is written in the commit that queues the copies: it is
        // durable before any copy can be acknowledged, with one fsync.
        let staged = self.deliveries.staged(Event::Sent(record.clone()));
        let dispatched = self
            .backchannel
            .dispatch_recorded(&header, content, &routed, staged)
            .await;
        if let Ok(o) = &dispatched {
            // Children at their quota: their destinations fail, with why;
            // the other children's copies are queued.
            let events: Vec<Event> = o
                .over_quota()
                .iter()
                .filter_map(|child| {
                    Some(Event::NotQueuedVia {
                        id: header.id,
                        child: child.parse().ok()?,
                        reason: self.backchannel.over_quota_reason(child),
                    })
                })
                .collect();
            if !events.is_empty() {
                if let Err(e) = self.deliveries.apply(events).await {
                    tracing::warn!(error = %e, "delivery state not persisted");
                }
            }
        }
        if let Err(e) = dispatched {
            let failed = Event::NotQueued {
                id: header.id,
                reason: format!("not queued: {e}"),
            };
            if let Err(e) = self.deliveries.apply(vec![failed]).await {
                tracing::warn!(error = %e, "delivery state not persisted");
            }
            return Err(e.into());
        }
        Ok(record)
    }
}
