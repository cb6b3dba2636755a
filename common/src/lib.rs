//! rsnet-common: everything the three tiers share.
//!
//! * [`id`], [`model`]: identifiers and the message model (DESIGN.md §2–3).
//! * [`envelope`]: the `multipart/related` exchange format and its XML parts.
//! * [`store`]: durable embedded storage (redb) behind narrow traits.
//! * [`tls`]: certificates, identities from certificates, mTLS configs, CRLs.
//! * [`server`]: the HTTPS/HTTP accept loop every node runs.
//! * [`link`]: the uplink client (failover, backoff, HTTP CONNECT proxies).
//! * [`forward`]: the spool-to-parent loop of every sender.
//! * [`pipeline`]: a parent's handling of a child's POST, as stages.
//! * [`heartbeat`]: status trees and lifecycle notices.
//! * [`qos`]: expiry reports (messages dropped as expired on the way).
//! * [`release`]: release manifests, signed with the release key.
//! * [`bulk`]: the upward bulk-transfer protocol (tokens, origins, file bodies).
//! * [`download`]: files down the tree, with ranges (serve, fetch with resume and checks).
// One function holds unsafe code (a prctl in `no_huge_pages`); nothing else may.
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
pub mod qos;
pub mod ready;
pub mod release;
pub mod seal;
pub mod server;
pub mod store;
pub mod tls;

pub use error::{Error, Result};

/// The memory allocator the three node binaries install as their global
/// allocator (`#[global_allocator]` in each `main.rs`).
///
/// mimalloc, not the system's: a message is allocated on one thread (a
/// connection's task) and freed on another (the store writer, the
/// forwarder), and glibc's malloc spent a third of the proxy's CPU on that
/// traffic under load (`docs/BENCHMARKS.md`, "Issue 13, session 6").
/// Libraries, tests and fuzz targets keep the system allocator.
pub type Allocator = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process; the node binaries
/// call it first thing in `main`.
///
/// The allocator asks for huge pages on its arenas, and the kernel then
/// zeroes 2 MiB on the first touch of each, again after every purge: the
/// exchange buffers and store runs that come and go with each batch made
/// page faults a tenth of the proxy's and a fifth of the appserver's CPU.
/// Without huge pages a fault zeroes the 4 KiB touched.
#[allow(unsafe_code)]
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of this process; it sets a flag the kernel reads at page-fault time.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}
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
