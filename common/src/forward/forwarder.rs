//! The [`Forwarder`]: spool → parent, until every message is answered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::backchannel::BackChannelClient;
use crate::metrics::{Counter, Registry};
use crate::model::{Status, Timestamp};
use crate::server::Shutdown;
use crate::store::{SpoolKey, SpoolRecord};

use super::dead_letters::DeadLetters;
use super::deliver::{deliver, Parcel};
use super::{Outbox, SpoolOp};

/// How long an idle forwarder waits before looking at the spool again even
/// without a wake-up (covers expiry and retry-after pauses).
const IDLE_TICK: Duration = Duration::from_millis(500);

/// Forwarder settings.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Messages per envelope (envelopes are also cut by bytes).
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
    pruned: Counter,
    link_errors: Counter,
}

impl Counters {
    fn new(metrics: &Registry) -> Counters {
        let c = |n: &str, h: &str| metrics.counter(&format!("rsnet_forward_{n}_total"), h);
        Counters {
            sent: c("sent", "messages sent to the parent (including resends)"),
            accepted: c("accepted", "messages the parent accepted"),
            rejected: c(
                "rejected",
                "messages the parent rejected for good (kept as dead letters)",
            ),
            deferred: c("deferred", "messages the parent asked to retry later"),
            expired: c("expired", "messages dropped from the spool as expired"),
            pruned: c(
                "pruned",
                "messages evicted from the full spool and reported",
            ),
            link_errors: c("link_errors", "exchanges that failed on the link"),
        }
    }
}

struct State {
    inflight: HashSet<SpoolKey>,
    /// After a link error: nothing is sent until then.
    pause_until: Option<Instant>,
    /// After "retry after" answers: messages of this precedence or lower
    /// wait until then; more important ones keep flowing.
    holds: Vec<(u8, Instant)>,
    /// Held for a closed window (this sender's own throttle, or a parent's
    /// answer scoped to a class), until it opens.
    parked: HashMap<SpoolKey, Instant>,
    /// Classes a parent deferred by class (`retry-class`): until when, and why.
    class_holds: HashMap<String, (Instant, String)>,
    backoff: crate::link::Retry,
}

/// Moves spooled messages to the parent.
///
/// ```text
/// peek (precedence, then age; skips what is in flight)
///   └ deliver: envelopes cut by bytes and count ─► Link
///        accepted                  → remove (fsync)
///        rejected for good         → dead letter (fsync), then remove
///        rejected with retry-after → keep, pause
///        link error                → keep, back off
/// ```
pub struct Forwarder {
    /// This node: the origin of its expiry reports.
    me: crate::id::ComponentId,
    outbox: Arc<Outbox>,
    uplink: Arc<BackChannelClient>,
    dead: Arc<DeadLetters>,
    cfg: ForwardConfig,
    counters: Counters,
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    enabled: AtomicBool,
    /// This sender's own throttle (a proxy's `[throttle]`), if it has one.
    throttle: OnceLock<Arc<crate::pipeline::throttle::Throttle>>,
}

impl Forwarder {
    /// A forwarder for `outbox` over `uplink`, registering its metrics.
    pub fn new(
        me: crate::id::ComponentId,
        outbox: Arc<Outbox>,
        uplink: Arc<BackChannelClient>,
        dead: Arc<DeadLetters>,
        cfg: ForwardConfig,
        metrics: &Registry,
    ) -> Arc<Self> {
        Arc::new(Forwarder {
            me,
            slots: Arc::new(Semaphore::new(cfg.max_inflight)),
            outbox,
            uplink,
            dead,
            cfg,
            counters: Counters::new(metrics),
            state: Mutex::new(State {
                inflight: HashSet::new(),
                pause_until: None,
                holds: Vec::new(),
                parked: HashMap::new(),
                class_holds: HashMap::new(),
                backoff: crate::link::Retry::default(),
            }),
            enabled: AtomicBool::new(true),
            throttle: OnceLock::new(),
        })
    }

    /// Classes held back because a parent deferred them by class (a closed
    /// window, a class the certificate does not allow): (class, seconds
    /// left, the parent's reason).
    pub fn parked_classes(&self) -> Vec<(String, u64, String)> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut v: Vec<_> = s
            .class_holds
            .iter()
            .filter(|(_, (u, _))| *u > now)
            .map(|(c, (u, why))| (c.clone(), u.duration_since(now).as_secs(), why.clone()))
            .collect();
        v.sort();
        v
    }

    /// Gives this sender its own throttle: what its rates and windows hold
    /// back stays spooled (set once; later calls are ignored).
    pub fn set_throttle(&self, t: Arc<crate::pipeline::throttle::Throttle>) {
        let _ = self.throttle.set(t);
    }

    /// Applies this sender's own throttle to `entries` (in send order):
    /// returns those that may go now, or how long to wait if none may.
    fn throttled(
        &self,
        entries: Vec<(SpoolKey, SpoolRecord)>,
    ) -> (Vec<(SpoolKey, SpoolRecord)>, Option<Duration>) {
        let holds: HashMap<String, Instant> = self
            .state
            .lock()
            .map(|mut s| {
                let now = Instant::now();
                s.class_holds.retain(|_, (until, _)| *until > now);
                s.class_holds
                    .iter()
                    .map(|(c, (u, _))| (c.clone(), *u))
                    .collect()
            })
            .unwrap_or_default();
        let t = self.throttle.get();
        if t.is_none() && holds.is_empty() {
            return (entries, None);
        }
        let want_class = !holds.is_empty() || t.is_some_and(|t| t.has_windows());
        let classes: Vec<Option<String>> = entries
            .iter()
            .map(|(_, r)| {
                want_class
                    .then(|| crate::envelope::wire::decode_header(&r.header).ok())
                    .flatten()
                    .map(|h| h.class)
            })
            .collect();
        // A parent deferred these classes: they wait, the others go on.
        let (entries, classes): (Vec<_>, Vec<_>) = if holds.is_empty() {
            (entries, classes)
        } else {
            let mut keep = (Vec::new(), Vec::new());
            let mut parked = Vec::new();
            for (e, c) in entries.into_iter().zip(classes) {
                match c.as_ref().and_then(|c| holds.get(c)) {
                    Some(until) => parked.push((e.0, *until)),
                    None => {
                        keep.0.push(e);
                        keep.1.push(c);
                    }
                }
            }
            if let Ok(mut s) = self.state.lock() {
                s.parked.extend(parked);
            }
            keep
        };
        let Some(t) = t else {
            let wait = entries.is_empty().then_some(IDLE_TICK);
            return (entries, wait);
        };
        let asks: Vec<(Option<&str>, usize)> = entries
            .iter()
            .zip(&classes)
            .map(|((_, r), c)| (c.as_deref(), r.header.len() + r.content.len()))
            .collect();
        let a = t.admit(&asks);
        if !a.parked.is_empty() {
            if let Ok(mut s) = self.state.lock() {
                let now = Instant::now();
                for (i, after) in &a.parked {
                    s.parked.insert(entries[*i].0, now + *after);
                }
            }
        }
        let go: Vec<_> = entries
            .into_iter()
            .zip(a.send)
            .filter_map(|(e, ok)| ok.then_some(e))
            .collect();
        let wait = if go.is_empty() {
            Some(a.wait.unwrap_or(IDLE_TICK))
        } else {
            None
        };
        (go, wait)
    }

    /// A second forwarder over the same spool, link and dead letters with
    /// other settings and its own counters (the shutdown drain).
    pub fn with_config(&self, cfg: ForwardConfig) -> Arc<Forwarder> {
        Forwarder::new(
            self.me.clone(),
            self.outbox.clone(),
            self.uplink.clone(),
            self.dead.clone(),
            cfg,
            &Registry::default(),
        )
    }

    /// Spools the report of messages that expired in the spool
    /// ([`crate::qos`]); only their IDs are left to name.
    async fn report_expired(&self, ids: &[crate::id::MessageId]) {
        let gone: Vec<crate::qos::Expired> = ids
            .iter()
            .map(|id| crate::qos::Expired {
                id: *id,
                class: "unknown".into(),
                subclass: None,
                origin: None,
                expiry: None,
            })
            .collect();
        let reports = crate::qos::reports(&self.me, &gone);
        if let Err(e) = self.outbox.push(&reports).await {
            tracing::warn!(error = %e, "expiry report not spooled");
        }
    }

    /// Spools the report of messages the spool evicted to make room.
    async fn report_pruned(&self) {
        let gone: Vec<crate::qos::Expired> = self
            .outbox
            .spool
            .take_evicted()
            .iter()
            .filter_map(|h| crate::envelope::wire::decode_header(h).ok())
            .map(|h| crate::qos::Expired::of(&h))
            .collect();
        if gone.is_empty() {
            return;
        }
        self.counters.pruned.add(gone.len() as u64);
        let reports = crate::qos::pruned(&self.me, &gone);
        // A report the full spool cannot take is itself lost: logged.
        if let Err(e) = self.outbox.push(&reports).await {
            tracing::warn!(error = %e, n = gone.len(), "pruning report not spooled");
        }
    }

    /// The dead letters this forwarder records.
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead
    }

    /// The spool front it drains.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
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
                .map(|mut s| {
                    let now = Instant::now();
                    s.parked.retain(|_, until| *until > now);
                    let mut skip = s.inflight.clone();
                    skip.extend(s.parked.keys().copied());
                    skip
                })
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
            if !peeked.expired.is_empty() {
                self.report_expired(&peeked.expired).await;
            }
            self.report_pruned().await;
            let mut peeked = peeked;
            let held_below = self.held_precedence();
            if let Some((p, until)) = held_below {
                // Entries come in precedence order: the held ones are the tail.
                let before = peeked.entries.len();
                peeked.entries.retain(|(_, r)| r.precedence > p);
                if peeked.entries.is_empty() && before > 0 {
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => {},
                        _ = self.outbox.wake.notified() => {},
                        _ = shutdown.wait() => return,
                    }
                    continue;
                }
            }
            if peeked.entries.is_empty() {
                drop(permit);
                if self.idle(&mut shutdown).await {
                    return;
                }
                continue;
            }
            let (entries, wait) = self.throttled(peeked.entries);
            peeked.entries = entries;
            if let Some(wait) = wait {
                // This sender's own throttle: the rest stays spooled.
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {},
                    _ = shutdown.wait() => return,
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
        // Spool records do not say how many hops they hold: reserve for all.
        let parcels: Vec<Parcel> = entries
            .iter()
            .map(|(_, r)| Parcel::new(r.id, r.header.clone(), r.content.clone(), 0))
            .collect();
        self.counters.sent.add(entries.len() as u64);
        let delivery = deliver(
            &self.uplink,
            &parcels,
            self.cfg.max_batch,
            self.cfg.exchange_timeout,
        )
        .await;
        if let Some(unsent) = &delivery.error {
            self.counters.link_errors.inc();
            let delay = self
                .state
                .lock()
                .map(|mut s| s.backoff.next_delay(&unsent.error))
                .unwrap_or(IDLE_TICK);
            tracing::warn!(error = %unsent.error, retry_in = ?delay, n = unsent.parcels.len(), "exchange failed; messages stay spooled");
            self.pause(delay);
        } else if let Ok(mut s) = self.state.lock() {
            s.backoff.reset();
        }
        let mut done = Vec::new();
        let mut dead = Vec::new();
        let mut retry_after: Option<Duration> = None;
        let mut by_class: Vec<(SpoolKey, String, Duration, String)> = Vec::new();
        for (k, r) in &entries {
            match delivery.answers.get(&r.id) {
                Some(a) if a.status == Status::Accepted => {
                    self.counters.accepted.inc();
                    done.push(*k);
                }
                Some(a) if a.retry_after.is_none() => {
                    let reason = a.reason.as_deref().unwrap_or("");
                    tracing::warn!(message = %r.id, reason, "parent rejected the message for good; kept as a dead letter");
                    dead.push(DeadLetters::letter(
                        r.id,
                        &r.header,
                        r.header.len() + r.content.len(),
                        reason,
                    ));
                    done.push(*k);
                }
                Some(a) => {
                    self.counters.deferred.inc();
                    match (&a.retry_class, a.retry_after) {
                        (Some(c), Some(d)) => {
                            by_class.push((*k, c.clone(), d, a.reason.clone().unwrap_or_default()))
                        }
                        _ => retry_after = retry_after.max(a.retry_after),
                    }
                }
                None => {}
            }
        }
        if !by_class.is_empty() {
            // Deferred for a class's window: that class waits, nothing else.
            if let Ok(mut s) = self.state.lock() {
                let now = Instant::now();
                for (k, c, d, why) in by_class {
                    let until = now + d;
                    s.parked.insert(k, until);
                    let h = s.class_holds.entry(c).or_insert((until, why.clone()));
                    *h = (h.0.max(until), why);
                }
            }
        }
        if let Some(d) = retry_after {
            // Only what the answer concerns waits: the deferred messages and
            // everything no more important than them.
            let p = entries
                .iter()
                .filter(|(_, r)| {
                    delivery.answers.get(&r.id).is_some_and(|a| {
                        a.status != Status::Accepted
                            && a.retry_after.is_some()
                            && a.retry_class.is_none()
                    })
                })
                .map(|(_, r)| r.precedence)
                .max()
                .unwrap_or(u8::MAX);
            self.hold(p, d);
        }
        let n_dead = dead.len();
        match self.dead.record(dead).await {
            Ok(()) => self.counters.rejected.add(n_dead as u64),
            Err(e) => {
                // Not recorded: keep them spooled; they are sent (and rejected) again.
                tracing::error!(error = %e, "dead letters not recorded; messages stay spooled");
                let rejected: HashSet<_> = entries
                    .iter()
                    .filter(|(_, r)| {
                        delivery.answers.get(&r.id).is_some_and(|a| {
                            a.status != Status::Accepted && a.retry_after.is_none()
                        })
                    })
                    .map(|(k, _)| *k)
                    .collect();
                done.retain(|k| !rejected.contains(k));
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

    /// Holds messages of precedence `p` or lower for `d`.
    fn hold(&self, p: u8, d: Duration) {
        if let Ok(mut s) = self.state.lock() {
            let until = Instant::now() + d;
            s.holds.push((p, until));
        }
    }

    /// The highest precedence held now (everything at or below it waits),
    /// and until when the soonest such hold lasts.
    fn held_precedence(&self) -> Option<(u8, Instant)> {
        let mut s = self.state.lock().ok()?;
        let now = Instant::now();
        s.holds.retain(|(_, t)| *t > now);
        let p = s.holds.iter().map(|(p, _)| *p).max()?;
        let until = s
            .holds
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, t)| *t)
            .min()?;
        Some((p, until))
    }

    fn pause(&self, d: Duration) {
        if let Ok(mut s) = self.state.lock() {
            let until = Instant::now() + d;
            s.pause_until = Some(s.pause_until.map_or(until, |p| p.max(until)));
        }
    }
}
