//! rsnet-common: everything the three tiers share.
//!
//! * [`id`], [`model`]: identifiers and the message model (DESIGN.md §2–3).
//! * [`random`]: OS randomness, pooled per thread (IDs, MIME boundaries).
//! * [`envelope`]: the `multipart/related` exchange format and its XML parts.
//! * [`store`]: durable embedded storage (redb) behind narrow traits.
//! * [`tls`]: certificates, identities from certificates, mTLS configs, CRLs.
//! * [`server`]: the HTTPS/HTTP accept loop every node runs.
//! * [`process`]: the node binaries' allocator and process set-up.
//! * [`link`]: the uplink client (failover, backoff, HTTP CONNECT proxies).
//! * [`forward`]: the spool-to-parent loop of every sender.
//! * [`pipeline`]: a parent's handling of a child's POST, as stages.
//! * [`heartbeat`]: status trees and lifecycle notices.
//! * [`qos`]: expiry reports (messages dropped as expired on the way).
//! * [`release`]: release manifests, signed with the release key.
//! * [`bulk`]: the upward bulk-transfer protocol (tokens, origins, file bodies).
//! * [`download`]: files down the tree, with ranges (serve, fetch with resume and checks).
//! * [`tree`]: the component tree's drawing order, for every view of it.
// One function holds unsafe code (a prctl in `process::no_huge_pages`); nothing else may.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod backchannel;
pub mod bulk;
pub mod client;
pub mod config;
pub mod control;
pub mod disk;
pub mod download;
pub mod enroll;
pub mod envelope;
pub mod error;
pub mod forward;
pub mod fuzzing;
pub mod heartbeat;
pub mod http_util;
pub mod id;
pub mod json;
pub mod lean_h1;
pub mod limits;
pub mod link;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod process;
pub mod qos;
pub mod random;
pub mod ready;
pub mod release;
pub mod seal;
pub mod server;
pub mod store;
pub mod tls;
pub mod tree;

pub use error::{Error, Result};

/// This build's software version: in the source of every message a node
/// originates (heartbeats, notices, reports) and in its status tree.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use id::{ComponentId, GroupName, MessageId};
pub use model::{Content, Header, Message};

/// Sets up `tracing` from `RUST_LOG` (default `info`), logging to stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
