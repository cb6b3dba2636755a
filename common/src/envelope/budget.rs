//! The envelope budget: what fits in one exchange, counted in encoded bytes.
//!
//! Receivers enforce [`MAX_ENVELOPE_BYTES`], [`MAX_PART_BYTES`],
//! [`MAX_HEADER_BYTES`] and [`MAX_ROUTING_HOPS`] (see [`crate::limits`]).
//! A sender that overshot any of them would have its whole POST refused, and
//! would resend the same refused bytes forever: a poison batch. So every
//! sender works to this budget instead:
//!
//! * **A message enters only if it can reach the top** ([`check`]): its
//!   content fits one part, and its header still fits one header part once
//!   every hop it may yet collect has added itself, and written in the
//!   full form if it is compact ([`hop_reserve`]). The
//!   proxy's local API refuses anything else at once (413).
//! * **Envelopes are filled by bytes** ([`Budget`]): each message costs its
//!   encoded header and content, its part framing, and the header room
//!   reserved for hops still to come ([`message_cost`]); an envelope takes
//!   messages while they fit [`ENVELOPE_BUDGET_BYTES`], and always at least one.
//!
//! Because each hop's own `<hop/>` is at most [`MAX_HOP_BYTES`], a message
//! that passed [`check`] at its first hop passes it at every later one; a
//! relay re-checks anyway, since its child may not be an rsnet sender.

use crate::limits::{
    MAX_ENVELOPE_BYTES, MAX_HEADER_BYTES, MAX_ID_BYTES, MAX_PART_BYTES, MAX_ROUTING_HOPS,
};

/// Framing around one part: boundary line, `Content-Type`, `Content-ID`
/// (message ID and role) and the line breaks. The writer's real framing is
/// about 137 bytes; a test holds it below this.
pub const PART_FRAMING_BYTES: usize = 160;
/// The most one routing hop adds to a header: `<hop id=".." time=".."/>`
/// with the longest ID and timestamp, plus the `<routing>` wrapper the first
/// hop brings.
pub const MAX_HOP_BYTES: usize = 20 + MAX_ID_BYTES + 32 + 19;
/// Room kept in every envelope for its control part (a full ack list and a
/// wait hint) and the closing boundary.
pub const CONTROL_RESERVE_BYTES: usize = 128 * 1024;
/// What the messages of one envelope may cost together.
pub const ENVELOPE_BUDGET_BYTES: usize = MAX_ENVELOPE_BYTES as usize - CONTROL_RESERVE_BYTES;

/// The most a compact header grows when written in the full form (for a
/// parent that does not read the compact one): `created`, `content` with
/// the longest kind name, the `<source>` with the longest origin, and a
/// `time` on every hop.
pub const COMPACT_EXPANSION_BYTES: usize = 40 + 24 + 20 + MAX_ID_BYTES + 32 * MAX_ROUTING_HOPS;

/// Header room for the hops a message carrying `hops` may still collect,
/// and for writing it in the full form ([`COMPACT_EXPANSION_BYTES`]).
pub fn hop_reserve(hops: usize) -> usize {
    MAX_ROUTING_HOPS.saturating_sub(hops) * MAX_HOP_BYTES + COMPACT_EXPANSION_BYTES
}

/// What a message costs in an envelope: encoded header and content, their
/// framing, and the hop reserve.
pub fn message_cost(header_len: usize, content_len: usize, hops: usize) -> usize {
    2 * PART_FRAMING_BYTES + header_len + content_len + hop_reserve(hops)
}

/// Why a message can never travel in an exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooLarge {
    /// The content is larger than one part.
    #[error("content is {size} bytes; an exchange part carries at most {limit}")]
    Content {
        /// Encoded content bytes.
        size: usize,
        /// [`MAX_PART_BYTES`].
        limit: u64,
    },
    /// The header, with room for the hops still to come, is larger than a header part.
    #[error("header is {size} bytes and needs {reserve} more for routing hops; a header part carries at most {limit}")]
    Header {
        /// Encoded header bytes.
        size: usize,
        /// [`hop_reserve`] for its hops.
        reserve: usize,
        /// [`MAX_HEADER_BYTES`].
        limit: usize,
    },
    /// More routing hops than a message may collect.
    #[error("{hops} routing hops; a message collects at most {limit}")]
    Hops {
        /// Hops it has.
        hops: usize,
        /// [`MAX_ROUTING_HOPS`].
        limit: usize,
    },
}

/// Whether a message with these encoded sizes can reach the top of any tree.
///
/// # Errors
/// [`TooLarge`] naming the limit it breaks.
pub fn check(header_len: usize, content_len: usize, hops: usize) -> Result<(), TooLarge> {
    if hops > MAX_ROUTING_HOPS {
        return Err(TooLarge::Hops {
            hops,
            limit: MAX_ROUTING_HOPS,
        });
    }
    if content_len as u64 > MAX_PART_BYTES {
        return Err(TooLarge::Content {
            size: content_len,
            limit: MAX_PART_BYTES,
        });
    }
    let reserve = hop_reserve(hops);
    if header_len + reserve > MAX_HEADER_BYTES {
        return Err(TooLarge::Header {
            size: header_len,
            reserve,
            limit: MAX_HEADER_BYTES,
        });
    }
    Ok(())
}

/// Fills one envelope: messages are taken while their [`message_cost`]
/// fits the byte budget and the count limit; the first is always taken (it
/// passed [`check`], so it fits alone).
#[derive(Debug, Clone)]
pub struct Budget {
    bytes: usize,
    count: usize,
    max_count: usize,
}

impl Budget {
    /// An empty envelope taking at most `max_count` messages.
    pub fn new(max_count: usize) -> Budget {
        Budget {
            bytes: 0,
            count: 0,
            max_count: max_count.max(1),
        }
    }

    /// Takes a message costing `cost` if it fits; false means "start the next envelope".
    pub fn take(&mut self, cost: usize) -> bool {
        let fits = self.count == 0
            || (self.count < self.max_count && self.bytes + cost <= ENVELOPE_BUDGET_BYTES);
        if fits {
            self.bytes += cost;
            self.count += 1;
        }
        fits
    }

    /// Messages taken.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Splits `costs` (in order) into consecutive envelopes; returns each one's length.
pub fn split(costs: impl IntoIterator<Item = usize>, max_count: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut b = Budget::new(max_count);
    for c in costs {
        if !b.take(c) {
            out.push(b.count());
            b = Budget::new(max_count);
            b.take(c);
        }
    }
    if b.count() > 0 {
        out.push(b.count());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{wire, EnvelopeWriter};
    use crate::id::ComponentId;
    use crate::model::{Content, Event, Hop, Message, Timestamp};

    fn long_id() -> ComponentId {
        let label = "a".repeat(31);
        vec![label; 8].join(".")[..MAX_ID_BYTES]
            .trim_end_matches('.')
            .parse()
            .unwrap()
    }

    #[test]
    fn framing_and_hops_stay_within_their_allowances() {
        let m = Message::forward(
            "acme.p1".parse().unwrap(),
            "event",
            None,
            Content::Event(Event {
                support_instance: None,
                text: "x".into(),
                data: None,
            }),
        );
        let (h, c) = (
            wire::encode_header(&m.header),
            wire::encode_content(&m.content),
        );
        let mut w = EnvelopeWriter::new();
        w.raw(&m.header.id, h.as_bytes(), c.as_bytes());
        assert!(w.byte_len() <= message_cost(h.len(), c.len(), MAX_ROUTING_HOPS));
        // Each hop adds at most MAX_HOP_BYTES, the first one included.
        let mut header = m.header.clone();
        let mut before = wire::encode_header(&header).len();
        for _ in 0..MAX_ROUTING_HOPS {
            header.routing.push(Hop {
                id: long_id(),
                time: Timestamp::MAX,
            });
            let after = wire::encode_header(&header).len();
            assert!(after - before <= MAX_HOP_BYTES, "{}", after - before);
            before = after;
        }
    }

    #[test]
    fn check_names_the_limit() {
        assert!(check(500, 500, 1).is_ok());
        assert!(matches!(
            check(500, MAX_PART_BYTES as usize + 1, 1),
            Err(TooLarge::Content { .. })
        ));
        assert!(matches!(
            check(MAX_HEADER_BYTES - hop_reserve(1) + 1, 10, 1),
            Err(TooLarge::Header { .. })
        ));
        assert!(check(MAX_HEADER_BYTES - hop_reserve(1), 10, 1).is_ok());
        assert!(matches!(
            check(10, 10, MAX_ROUTING_HOPS + 1),
            Err(TooLarge::Hops { .. })
        ));
    }

    #[test]
    fn envelopes_fill_by_bytes_and_count() {
        // 1,024 messages of 20 KiB do not fit one envelope.
        let cost = message_cost(400, 20 * 1024, 1);
        let parts = split(std::iter::repeat_n(cost, 1024), 1024);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().sum::<usize>(), 1024);
        assert!(parts.iter().all(|n| n * cost <= ENVELOPE_BUDGET_BYTES));
        // Small ones fill by count.
        assert_eq!(split(std::iter::repeat_n(100, 10), 4), vec![4, 4, 2]);
        // One huge message still goes, alone.
        assert_eq!(split([ENVELOPE_BUDGET_BYTES + 1, 5], 10), vec![1, 1]);
    }
}
