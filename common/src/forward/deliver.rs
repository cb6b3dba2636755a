//! [`deliver`]: a batch of messages to the parent, whatever its size, with
//! no poison batch.
//!
//! The batch is cut into envelopes by [`budget::split`]. If the parent
//! refuses an envelope as a whole with a 4xx (too large, malformed: sending
//! the same bytes again would fail again), the envelope is halved and each
//! half sent, until the message it cannot take stands alone; that one is
//! answered "rejected for good" with the parent's reason, and everything
//! else goes on. A transport failure (or 408/429/5xx) leaves the rest of the
//! batch unanswered: the caller keeps it and tries again later.
//!
//! Used by the [`super::Forwarder`] (spool → parent) and the MLM relay
//! (children's batches → parent).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::backchannel::BackChannelClient;
use crate::envelope::{budget, wire, Form};
use crate::id::MessageId;
use crate::link::LinkError;
use crate::model::Response;

/// A message ready to send: its ID and encoded parts, and what it costs in an envelope.
#[derive(Debug, Clone)]
pub struct Parcel {
    /// Message ID.
    pub id: MessageId,
    /// Header XML, compact or full ([`wire::encode_header_compact`]).
    pub header: Bytes,
    /// Content XML.
    pub content: Bytes,
    cost: usize,
}

impl Parcel {
    /// A parcel of a message that has collected `hops` routing hops.
    pub fn new(id: MessageId, header: Bytes, content: Bytes, hops: usize) -> Parcel {
        let cost = budget::message_cost(header.len(), content.len(), hops);
        Parcel {
            id,
            header,
            content,
            cost,
        }
    }
}

/// What the parent said about a delivered batch.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Answers by message; a message missing here was not answered.
    pub answers: HashMap<MessageId, Response>,
    /// Envelopes sent.
    pub posts: usize,
    /// The failure that left messages unanswered, with those messages.
    pub error: Option<Unsent>,
}

/// A batch cut short: the link failure, and every parcel it left
/// unanswered, handed back (nothing is cloned away or dropped).
#[derive(Debug)]
pub struct Unsent {
    /// What failed.
    pub error: LinkError,
    /// The parcels without an answer, in order.
    pub parcels: Vec<Parcel>,
}

/// Sends `parcels` in envelopes of at most `max_batch` messages within the
/// byte budget, each within `timeout`. See the module docs.
///
/// # Cancel safety
/// If dropped, some envelopes may have reached the parent; their messages
/// are unanswered for the caller, who sends them again (the appserver drops
/// repeats).
pub async fn deliver(
    uplink: &BackChannelClient,
    parcels: &[Parcel],
    max_batch: usize,
    timeout: Duration,
) -> Delivery {
    let mut d = Delivery::default();
    let mut at = 0;
    let mut failed = None;
    for n in budget::split(parcels.iter().map(|p| p.cost), max_batch) {
        if let Err(e) = send(uplink, &parcels[at..at + n], timeout, &mut d).await {
            failed = Some(e); // the parent is unreachable: the rest waits too
            break;
        }
        at += n;
    }
    d.error = failed.map(|error| Unsent {
        error,
        parcels: parcels
            .iter()
            .filter(|p| !d.answers.contains_key(&p.id))
            .cloned()
            .collect(),
    });
    d
}

async fn send(
    uplink: &BackChannelClient,
    parcels: &[Parcel],
    timeout: Duration,
    d: &mut Delivery,
) -> Result<(), LinkError> {
    // Halving is iterative (a stack of ranges), not recursive: at most
    // 2·log2(n) extra posts find one refused message.
    let mut todo = vec![parcels];
    while let Some(batch) = todo.pop() {
        let mut out = uplink.outgoing(None);
        let full = out.writer.form() == Form::Full;
        let payload = batch.iter().map(|p| p.header.len() + p.content.len()).sum();
        out.writer.reserve_for(batch.len(), payload);
        for p in batch {
            // Parcels are compact; a parent that does not read that gets them spelled out.
            let header = if full {
                wire::full_header(&p.header)
            } else {
                p.header.clone()
            };
            out.writer.raw(&p.id, &header, &p.content);
        }
        d.posts += 1;
        match uplink.exchange(out, timeout).await {
            Ok(reply) => d
                .answers
                .extend(reply.control.answers_for(batch.iter().map(|p| p.id))),
            Err(e) if e.is_permanent() && batch.len() > 1 => {
                let (a, b) = batch.split_at(batch.len() / 2);
                tracing::info!(error = %e, n = batch.len(), "parent refused an envelope; sending it in halves");
                todo.push(b);
                todo.push(a);
            }
            Err(e) if e.is_permanent() => {
                let p = &batch[0];
                d.answers.insert(
                    p.id,
                    Response::rejected(p.id, format!("parent refused the message: {}", e.kind)),
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
