//! Every limit a peer can push against, with the reason for its value.
//!
//! Limits on what a *peer* controls are what keep one misbehaving child from
//! exhausting a node that serves thousands. Each constant names the resource it
//! protects; change the docs in `docs/PROTOCOL.md` when you change one.
//!
//! The limits are checked against each other by the tests at the end of this
//! file: whatever a sender is allowed to put into one exchange (a batch of
//! [`MAX_BATCH_MESSAGES`], a message that passed [`crate::envelope::budget`],
//! a full ack list) must fit what every receiver accepts.

use std::time::Duration;

/// Largest exchange body a hop accepts. Senders fill envelopes by encoded
/// bytes up to [`crate::envelope::budget::ENVELOPE_BUDGET_BYTES`], which stays
/// below this by the control part's reserve. Bulk payloads never ride in an
/// exchange.
pub const MAX_ENVELOPE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest single MIME part (one header or one content). A `data` message
/// carrying more than this must go as a bulk transfer.
pub const MAX_PART_BYTES: u64 = 1024 * 1024;
/// Largest header part. Forward headers are small; a back-channel header
/// may list up to [`MAX_DESTINATIONS`] IDs (`<to>…</to>`, about 30 bytes
/// each), which is what sets this bound.
pub const MAX_HEADER_BYTES: usize = 384 * 1024;
/// Parts per envelope: two per message plus one control part.
pub const MAX_PARTS: usize = 2 * MAX_BATCH_MESSAGES + 1;
/// Messages per exchange POST (and entries in each list of a control part:
/// acks, accepted IDs, responses). Large enough for group commit to pay off;
/// small enough that a reply's control part answering every message with a
/// rejection of [`MAX_REASON_BYTES`] stays within [`MAX_PART_BYTES`].
pub const MAX_BATCH_MESSAGES: usize = 2048;
/// Routing hops a message may collect; a real tree is a handful deep. Every
/// sender reserves header room for the hops still to come (see
/// [`crate::envelope::budget`]), so this also bounds that reserve.
pub const MAX_ROUTING_HOPS: usize = 16;
/// Length of a hop's answer reason in a reply's control part; longer reasons
/// are cut (at a character boundary). Keeps a reply of
/// [`MAX_BATCH_MESSAGES`] rejections within one part.
pub const MAX_REASON_BYTES: usize = 256;
/// Element nesting depth in any XML part; our schema never exceeds 4.
pub const MAX_XML_DEPTH: usize = 8;
/// Attributes on one XML element; the richest element has 7.
pub const MAX_XML_ATTRIBUTES: usize = 16;
/// Free text (alarm text, reasons) in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Identifier length (component IDs, groups, classes).
pub const MAX_ID_BYTES: usize = 255;
/// Labels in a component ID (`acme.p7.si12` has 3).
pub const MAX_ID_LABELS: usize = 8;
/// Destinations listed in one back-channel header.
pub const MAX_DESTINATIONS: usize = 10_000;
/// Local API JSON body (one message or a small batch from an integrator).
pub const MAX_LOCAL_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Operator API JSON body.
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;
/// Route entries one child may teach its parent. A proxy needs one (its
/// support instances resolve through it); an MLM one per component below it.
/// Bounds the memory a child can make its parent spend on routes.
pub const MAX_ROUTES_PER_CHILD: usize = 100_000;

/// A TLS handshake that has not finished by then is dropped (slowloris).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this (hyper's header read timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request body must arrive within this once headers are read.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect timeout for the uplink, per attempt.
pub const DEFAULT_LINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest long-poll wait a parent grants; children may ask for less.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    //! The limits against each other, with the real encoders.
    use super::*;
    use crate::envelope::budget::{self, CONTROL_RESERVE_BYTES, ENVELOPE_BUDGET_BYTES};
    use crate::envelope::{wire, Control, EnvelopeWriter};
    use crate::id::MessageId;
    use crate::model::Response;

    #[test]
    fn a_full_ack_list_fits_the_control_reserve_and_one_part() {
        let c = Control {
            wait_ms: Some(MAX_LONG_POLL.as_millis() as u64),
            acks: (0..MAX_BATCH_MESSAGES).map(|_| MessageId::new()).collect(),
            ..Default::default()
        };
        let mut w = EnvelopeWriter::new();
        w.control(&c);
        assert!(w.byte_len() <= CONTROL_RESERVE_BYTES, "{}", w.byte_len());
        assert!((w.byte_len() as u64) < MAX_PART_BYTES);
    }

    #[test]
    fn a_reply_rejecting_every_message_fits_one_part() {
        let mut c = Control::default();
        for _ in 0..MAX_BATCH_MESSAGES {
            c.answer(Response::retry(
                MessageId::new(),
                "x".repeat(MAX_TEXT_BYTES),
                Duration::from_secs(3600),
            ));
        }
        let xml = wire::encode_control(&c);
        assert!((xml.len() as u64) < MAX_PART_BYTES, "{}", xml.len());
        let back = wire::decode_control(xml.as_bytes()).expect("decodes");
        assert_eq!(back.responses.len(), MAX_BATCH_MESSAGES);
        assert!(back.responses[0].reason.as_deref().unwrap().len() <= MAX_REASON_BYTES);
    }

    #[test]
    fn the_largest_message_that_may_enter_fits_alone_and_the_budget_fits_the_envelope() {
        // A message at the entry limit, with every hop still to come added.
        let hops = MAX_ROUTING_HOPS;
        let header = MAX_HEADER_BYTES - budget::hop_reserve(1);
        let one = budget::message_cost(header, MAX_PART_BYTES as usize, 1);
        assert!(one <= ENVELOPE_BUDGET_BYTES, "{one}");
        assert!(ENVELOPE_BUDGET_BYTES + CONTROL_RESERVE_BYTES <= MAX_ENVELOPE_BYTES as usize);
        assert!(budget::hop_reserve(hops) == budget::COMPACT_EXPANSION_BYTES);
        assert!(budget::hop_reserve(1) < MAX_HEADER_BYTES / 4);
        // Parts: a full batch plus the control part.
        assert_eq!(MAX_PARTS, 2 * MAX_BATCH_MESSAGES + 1);
        // The operator API and the local API take nothing an exchange cannot carry in one part.
        assert!(MAX_API_BODY_BYTES as u64 <= MAX_PART_BYTES);
        assert!(MAX_TEXT_BYTES < MAX_PART_BYTES as usize);
    }
}
