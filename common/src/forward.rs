//! The sending side of every node that originates messages: [`Outbox`]
//! (durable, group-committed spool front) and [`Forwarder`] (spool → parent).
//!
//! ```text
//! integrator ─► Outbox::push ─► GroupCommit ─► Spool (fsync) ─► 202
//!                                                 │
//!                       Forwarder: peek ◄─────────┘ (skips what is in flight)
//!                           │  up to max_inflight envelopes of max_batch
//!                           ▼
//!                      Link::exchange ─► per-message responses
//!                           │ accepted / rejected for good → remove (fsync)
//!                           │ rejected with retry-after    → keep, pause
//!                           └ link error                   → keep, back off
//! ```
//!
//! A message leaves the spool only once the parent has answered for it, so
//! a crash at any point resends (never loses) it; the appserver drops the
//! duplicate by message ID.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::envelope::wire;
use crate::id::MessageId;
use crate::link::{Backoff, Link};
use crate::metrics::{Counter, Registry};
use crate::model::{Message, Status, Timestamp};
use crate::server::Shutdown;
use crate::store::{GroupCommit, Spool, SpoolKey, SpoolRecord, StoreError};

/// How long an idle forwarder waits before looking at the spool again even
/// without a wake-up (covers expiry and retry-after pauses).
const IDLE_TICK: Duration = Duration::from_millis(500);

type PushResult = Result<Vec<Result<SpoolKey, StoreError>>, StoreError>;

/// Encodes a message as a spool record.
pub fn record(m: &Message) -> SpoolRecord {
    SpoolRecord {
        id: m.header.id,
        precedence: m.header.qos.precedence,
        persistent: m.header.qos.persistence,
        expiry: m.header.qos.expiry,
        header: Bytes::from(wire::encode_header(&m.header)),
        content: Bytes::from(wire::encode_content(&m.content)),
    }
}

/// One request to the spool writer.
enum SpoolOp {
    Push(Vec<SpoolRecord>),
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
            match s.write(records, &remove) {
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
        let recs: Vec<SpoolRecord> = msgs.iter().map(record).collect();
        let r = self.writes.submit(SpoolOp::Push(recs)).await??;
        self.wake.notify_one();
        Ok(r.into_iter()
            .zip(msgs)
            .map(|(r, m)| r.map(|_| m.header.id))
            .collect())
    }

    /// The spool underneath.
    pub fn spool(&self) -> &Arc<dyn Spool> {
        &self.spool
    }
}

/// Forwarder settings.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Messages per envelope.
    pub max_batch: usize,
    /// Envelopes in flight.
    pub max_inflight: usize,
    /// Timeout of one exchange.
    pub exchange_timeout: Duration,
}

struct Counters {
    sent: Counter,
    accepted: Counter,
    rejected: Counter,
    deferred: Counter,
    expired: Counter,
    link_errors: Counter,
}

struct State {
    inflight: HashSet<SpoolKey>,
    pause_until: Option<Instant>,
    backoff: Backoff,
}

/// Moves spooled messages to the parent.
pub struct Forwarder {
    outbox: Arc<Outbox>,
    link: Arc<Link>,
    cfg: ForwardConfig,
    counters: Counters,
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    enabled: AtomicBool,
}

impl Forwarder {
    /// A forwarder for `outbox` over `link`, registering its metrics.
    pub fn new(
        outbox: Arc<Outbox>,
        link: Arc<Link>,
        cfg: ForwardConfig,
        metrics: &Registry,
    ) -> Arc<Self> {
        let c = |n: &str, h: &str| metrics.counter(&format!("rsnet_forward_{n}_total"), h);
        let counters = Counters {
            sent: c("sent", "messages sent to the parent (including resends)"),
            accepted: c("accepted", "messages the parent accepted"),
            rejected: c(
                "rejected",
                "messages the parent rejected for good (dropped)",
            ),
            deferred: c("deferred", "messages the parent asked to retry later"),
            expired: c("expired", "messages dropped from the spool as expired"),
            link_errors: c("link_errors", "exchanges that failed on the link"),
        };
        Arc::new(Forwarder {
            slots: Arc::new(Semaphore::new(cfg.max_inflight)),
            outbox,
            link,
            cfg,
            counters,
            state: Mutex::new(State {
                inflight: HashSet::new(),
                pause_until: None,
                backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            }),
            enabled: AtomicBool::new(true),
        })
    }

    /// Stops (false) or resumes (true) sending; the spool keeps taking
    /// messages either way. An operator's control action.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        self.outbox.wake.notify_one();
    }

    /// True unless sending was stopped.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Runs until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            if shutdown.is_triggered() {
                return;
            }
            if !self.is_enabled() {
                if self.idle(&mut shutdown).await {
                    return;
                }
                continue;
            }
            let pause = self
                .state
                .lock()
                .ok()
                .and_then(|s| s.pause_until)
                .filter(|t| *t > Instant::now());
            if let Some(until) = pause {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {},
                    _ = shutdown.wait() => return,
                }
                continue;
            }
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let skip = self
                .state
                .lock()
                .map(|s| s.inflight.clone())
                .unwrap_or_default();
            let peeked = match self
                .outbox
                .spool
                .peek(self.cfg.max_batch, &skip, Timestamp::now())
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "spool read failed");
                    drop(permit);
                    tokio::time::sleep(IDLE_TICK).await;
                    continue;
                }
            };
            for id in &peeked.expired {
                tracing::warn!(message = %id, "message expired in the spool; dropped");
            }
            self.counters.expired.add(peeked.expired.len() as u64);
            if peeked.entries.is_empty() {
                drop(permit);
                if self.idle(&mut shutdown).await {
                    return;
                }
                continue;
            }
            if let Ok(mut s) = self.state.lock() {
                s.inflight.extend(peeked.entries.iter().map(|(k, _)| *k));
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.send(peeked.entries).await;
                drop(permit);
            });
        }
    }

    /// Waits for a wake-up or [`IDLE_TICK`]; true if shutdown came first.
    async fn idle(&self, shutdown: &mut Shutdown) -> bool {
        tokio::select! {
            _ = self.outbox.wake.notified() => false,
            _ = tokio::time::sleep(IDLE_TICK) => false,
            _ = shutdown.wait() => true,
        }
    }

    async fn send(&self, entries: Vec<(SpoolKey, SpoolRecord)>) {
        let mut out = self.link.outgoing(None);
        for (_, r) in &entries {
            out.writer.raw(&r.id, &r.header, &r.content);
        }
        self.counters.sent.add(entries.len() as u64);
        let reply = self.link.exchange(out, self.cfg.exchange_timeout).await;
        let mut done = Vec::new();
        match reply {
            Err(e) => {
                self.counters.link_errors.inc();
                let delay = self
                    .state
                    .lock()
                    .map(|mut s| s.backoff.next_delay())
                    .unwrap_or(IDLE_TICK);
                tracing::warn!(error = %e, retry_in = ?delay, n = entries.len(), "exchange failed; messages stay spooled");
                self.pause(delay);
            }
            Ok(decoded) => {
                if let Ok(mut s) = self.state.lock() {
                    s.backoff.reset();
                }
                let answers = decoded.control.answers();
                let mut retry_after: Option<Duration> = None;
                for (k, r) in &entries {
                    match answers.get(&r.id) {
                        Some(a) if a.status == Status::Accepted => {
                            self.counters.accepted.inc();
                            done.push(*k);
                        }
                        Some(a) if a.retry_after.is_none() => {
                            self.counters.rejected.inc();
                            tracing::warn!(message = %r.id, reason = a.reason.as_deref().unwrap_or(""), "parent rejected the message for good; dropped");
                            done.push(*k);
                        }
                        Some(a) => {
                            self.counters.deferred.inc();
                            retry_after = retry_after.max(a.retry_after);
                        }
                        None => self.counters.deferred.inc(),
                    }
                }
                if let Some(d) = retry_after {
                    self.pause(d);
                }
            }
        }
        if !done.is_empty() {
            let removed = self.outbox.writes.submit(SpoolOp::Remove(done)).await;
            if let Err(e) = removed.and_then(|r| r) {
                tracing::error!(error = %e, "spool remove failed; messages will be resent");
            }
        }
        if let Ok(mut s) = self.state.lock() {
            for (k, _) in &entries {
                s.inflight.remove(k);
            }
        }
        self.outbox.wake.notify_one();
    }

    fn pause(&self, d: Duration) {
        if let Ok(mut s) = self.state.lock() {
            let until = Instant::now() + d;
            s.pause_until = Some(s.pause_until.map_or(until, |p| p.max(until)));
        }
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
    outbox: Arc<Outbox>,
    link: Arc<Link>,
    tree: impl Fn() -> crate::heartbeat::StatusTree,
    interval: Duration,
    forwarder_task: tokio::task::JoinHandle<()>,
    mut shutdown: Shutdown,
) {
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
    let task =
        tokio::spawn(Forwarder::new(outbox.clone(), link, cfg, &Registry::default()).run(drain));
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
    /// The link to the parent.
    pub link: Arc<Link>,
    /// The durable spool front.
    pub outbox: Arc<Outbox>,
    /// The forwarder (not yet running).
    pub forwarder: Arc<Forwarder>,
    /// The forwarding settings, for other users of the link (the MLM relay).
    pub config: ForwardConfig,
}

impl Sender {
    /// Builds the link, outbox and forwarder over `spool`, registering the
    /// spool gauges and forwarder counters in `metrics`.
    ///
    /// # Errors
    /// Bad TLS material, parent URLs or proxy settings; a writer thread that cannot start.
    pub fn new(
        uplink: &crate::config::UplinkConfig,
        tls: &crate::tls::TlsPaths,
        spool: Arc<dyn Spool>,
        metrics: &Registry,
    ) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
        let link = Link::new(
            &uplink.parents,
            crate::tls::client_config(tls)?,
            uplink.proxy()?,
        )?;
        let s = spool.clone();
        metrics.gauge("rsnet_spool_messages", "messages in the spool", move || {
            s.stats().messages as f64
        });
        let s = spool.clone();
        metrics.gauge("rsnet_spool_bytes", "bytes in the spool", move || {
            s.stats().bytes as f64
        });
        let outbox = Outbox::new(spool)?;
        let config = uplink.forward_config();
        let forwarder = Forwarder::new(outbox.clone(), link.clone(), config.clone(), metrics);
        Ok(Sender {
            link,
            outbox,
            forwarder,
            config,
        })
    }
}
