//! The sending side of every node that originates messages: [`Outbox`]
//! (durable, group-committed spool front), [`Forwarder`] (spool → parent),
//! [`deliver`] (a batch to the parent with no poison batch) and
//! [`DeadLetters`] (what the parent rejected for good).
//!
//! ```text
//! integrator ─► Outbox::push ─► GroupCommit ─► Spool (fsync) ─► 202
//!                                                 │
//!                       Forwarder: peek ◄─────────┘ (skips what is in flight)
//!                           │  up to max_inflight batches of max_batch
//!                           ▼
//!                      deliver: envelopes cut by bytes, a refused envelope
//!                           │   halved until the refused message stands alone
//!                           │ accepted                  → remove (fsync)
//!                           │ rejected for good         → dead letter, remove
//!                           │ rejected with retry-after → keep, pause
//!                           └ link error                → keep, back off
//! ```
//!
//! A message leaves the spool only once the parent has answered for it, so
//! a crash at any point resends (never loses) it; the appserver drops the
//! duplicate by message ID.

mod dead_letters;
mod deliver;
mod forwarder;
pub mod outage;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::backchannel::BackChannelClient;
use crate::envelope::wire;
use crate::id::MessageId;
use crate::link::Link;
use crate::metrics::Registry;
use crate::model::Message;
use crate::server::Shutdown;
use crate::store::{
    ClientKey, GroupCommit, KvStore, Pushed, Spool, SpoolKey, SpoolRecord, StoreError,
};

pub use dead_letters::{DeadLetter, DeadLetterView, DeadLetters, MAX_DEAD_LETTERS};
pub use deliver::{deliver, Delivery, Parcel, Unsent};
pub use forwarder::{ForwardConfig, Forwarder};

type PushResult = Result<Vec<Result<Pushed, StoreError>>, StoreError>;

/// Encodes a message as a spool record, its header compact (written out
/// in full for a parent that does not read that: [`deliver`]).
pub fn record(m: &Message) -> SpoolRecord {
    SpoolRecord {
        id: m.header.id,
        precedence: m.header.qos.precedence,
        persistent: m.header.qos.persistence,
        expiry: m.header.qos.expiry,
        header: Bytes::from(wire::encode_header_compact(&m.header)),
        content: Bytes::from(wire::encode_content(&m.content)),
    }
}

/// One request to the spool writer.
enum SpoolOp {
    Push(Vec<(SpoolRecord, Option<ClientKey>)>),
    Remove(Vec<SpoolKey>),
}

/// The durable front of a spool: pushes and removals, group-committed
/// together (one transaction and one fsync for everything waiting).
pub struct Outbox {
    spool: Arc<dyn Spool>,
    writes: GroupCommit<SpoolOp, PushResult>,
    wake: Notify,
}

impl Outbox {
    /// Wraps a spool, starting its writer thread.
    ///
    /// # Errors
    /// If a thread cannot be started.
    pub fn new(spool: Arc<dyn Spool>) -> std::io::Result<Arc<Outbox>> {
        let s = spool.clone();
        let writes = GroupCommit::spawn("spool-writer", move |ops: Vec<SpoolOp>| {
            let mut records = Vec::new();
            let mut remove = Vec::new();
            let mut sizes = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    SpoolOp::Push(r) => {
                        sizes.push(r.len());
                        records.extend(r);
                    }
                    SpoolOp::Remove(k) => {
                        sizes.push(0);
                        remove.extend(k);
                    }
                }
            }
            #[allow(clippy::disallowed_methods)] // on the spool writer thread
            match s.write_keyed(records, &remove, crate::model::Timestamp::now()) {
                Ok(mut all) => sizes
                    .into_iter()
                    .map(|n| Ok(all.drain(..n).collect()))
                    .collect(),
                Err(e) => sizes.iter().map(|_| Err(e.clone())).collect(),
            }
        })?;
        Ok(Arc::new(Outbox {
            spool,
            writes,
            wake: Notify::new(),
        }))
    }

    /// Spools messages; each succeeds or fails on its own (full spool).
    ///
    /// # Durability
    /// Returns after fsync: an `Ok` message survives kill -9.
    ///
    /// # Cancel safety
    /// If dropped, the messages may or may not be spooled.
    pub async fn push(
        &self,
        msgs: &[Message],
    ) -> Result<Vec<Result<MessageId, StoreError>>, StoreError> {
        let r = self
            .push_keyed(msgs.iter().map(|m| (record(m), None)).collect())
            .await?;
        Ok(r.into_iter()
            .zip(msgs)
            .map(|(r, m)| r.map(|_| m.header.id))
            .collect())
    }

    /// [`Outbox::push`] for messages already encoded with [`record`], each
    /// optionally under a [`ClientKey`]: a key seen before (and not past its
    /// window) is answered [`Pushed::Repeat`] with the first message's ID,
    /// and that record is not spooled.
    ///
    /// # Durability
    /// Returns after fsync, with each new key committed with its record.
    ///
    /// # Cancel safety
    /// If dropped, the messages may or may not be spooled; a resend with
    /// the same keys finds out which.
    pub async fn push_keyed(
        &self,
        recs: Vec<(SpoolRecord, Option<ClientKey>)>,
    ) -> Result<Vec<Result<Pushed, StoreError>>, StoreError> {
        let r = self.writes.submit(SpoolOp::Push(recs)).await??;
        self.wake.notify_one();
        Ok(r)
    }

    /// The spool underneath.
    pub fn spool(&self) -> &Arc<dyn Spool> {
        &self.spool
    }
}

/// How long a stopping node keeps trying to deliver its shutdown notice.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// The life of a sending node after start-up, shared by proxy and MLM:
/// spools a heartbeat (`tree()`) every `interval` until `shutdown`, then
/// stops `forwarder_task`, spools a shutdown notice and gives a short-lived
/// forwarder [`SHUTDOWN_DRAIN`] to deliver it (and anything else spooled). What
/// is not delivered by then stays spooled for the next start.
pub async fn heartbeat_until_shutdown(
    forwarder: Arc<Forwarder>,
    tree: impl Fn() -> crate::heartbeat::StatusTree,
    interval: Duration,
    forwarder_task: tokio::task::JoinHandle<()>,
    mut shutdown: Shutdown,
) {
    let outbox = forwarder.outbox().clone();
    let mut tick = tokio::time::interval(interval);
    let me = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = outbox.push(&[tree().heartbeat()]).await {
                    tracing::warn!(error = %e, "heartbeat not spooled");
                }
            }
            _ = shutdown.wait() => break tree(),
        }
    };
    forwarder_task.abort();
    let notice = crate::heartbeat::notice(
        &me.id,
        crate::heartbeat::SHUTDOWN,
        &format!("{} stopping", me.role),
    );
    if let Err(e) = outbox.push(&[notice]).await {
        tracing::warn!(error = %e, "shutdown notice not spooled");
    }
    let (_keep, drain) = Shutdown::new();
    let cfg = ForwardConfig {
        max_batch: 1024,
        max_inflight: 1,
        exchange_timeout: SHUTDOWN_DRAIN,
    };
    let task = tokio::spawn(forwarder.with_config(cfg).run(drain));
    let _ = tokio::time::timeout(SHUTDOWN_DRAIN, async {
        while outbox.spool().stats().messages > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    task.abort();
}

/// Everything a sending node (proxy, MLM) needs to move its own messages
/// upward: the link to its parent, its spool behind an [`Outbox`], and a
/// [`Forwarder`] ready to run. Built once from the `[uplink]` section.
pub struct Sender {
    /// The link to the parent, with the back-channel state riding on it.
    pub uplink: Arc<BackChannelClient>,
    /// The durable spool front.
    pub outbox: Arc<Outbox>,
    /// The forwarder (not yet running).
    pub forwarder: Arc<Forwarder>,
    /// The forwarding settings, for other users of the link (the MLM relay).
    pub config: ForwardConfig,
}

impl Sender {
    /// Builds the link, outbox and forwarder over `spool` (dead letters in
    /// `kv`), registering the spool gauges and forwarder counters in `metrics`.
    ///
    /// # Errors
    /// Bad TLS material, parent URLs or proxy settings; a writer thread that cannot start.
    pub fn new(
        uplink: &crate::config::UplinkConfig,
        tls: &crate::tls::TlsPaths,
        spool: Arc<dyn Spool>,
        kv: Arc<dyn KvStore>,
        metrics: &Registry,
    ) -> crate::Result<Sender> {
        let link = Link::new(
            &uplink.parents,
            crate::tls::client_config(tls)?,
            uplink.proxy()?,
        )?;
        link.set_revocations(crate::tls::Revocations::watch(tls.crl.clone()));
        let own = crate::tls::own_identity(tls)?;
        link.set_compress(
            uplink
                .compress
                .unwrap_or(own.role == crate::tls::Role::Proxy),
        );
        link.set_me(own.id);
        link.reload_tls(tls.clone());
        let s = spool.clone();
        metrics.gauge("rsnet_spool_messages", "messages in the spool", move || {
            s.stats().messages as f64
        });
        let s = spool.clone();
        metrics.gauge("rsnet_spool_bytes", "bytes in the spool", move || {
            s.stats().bytes as f64
        });
        let s = spool.clone();
        metrics.gauge(
            "rsnet_spool_capacity_bytes",
            "bytes the spool may hold",
            move || s.stats().capacity as f64,
        );
        let outbox = Outbox::new(spool)?;
        let client = BackChannelClient::new(link, metrics);
        let config = uplink.forward_config();
        let dead = DeadLetters::open(kv, metrics)?;
        let me = crate::tls::own_identity(tls)?.id;
        let forwarder = Forwarder::new(
            me,
            outbox.clone(),
            client.clone(),
            dead,
            config.clone(),
            metrics,
        );
        Ok(Sender {
            uplink: client,
            outbox,
            forwarder,
            config,
        })
    }
}
