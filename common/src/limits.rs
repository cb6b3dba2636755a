//! Every limit a peer can push against, with the reason for its value.
//!
//! Limits on what a *peer* controls are what keep one misbehaving child from
//! exhausting a node that serves thousands. Each constant names the resource it
//! protects; change the docs in `docs/PROTOCOL.md` when you change one.

use std::time::Duration;

/// Largest exchange body a hop accepts: 2,000 messages of a few KiB plus
/// framing. Bulk payloads never ride in an exchange (they use `/rs/v1/bulk`).
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
/// Messages per exchange POST. Large enough for group commit to pay off,
/// small enough that one reply stays well under [`MAX_ENVELOPE_BYTES`].
pub const MAX_BATCH_MESSAGES: usize = 4096;
/// Routing hops a message may have collected; a real tree is a handful deep.
pub const MAX_ROUTING_HOPS: usize = 32;
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
