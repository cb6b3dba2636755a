//! The throttle stage (DESIGN.md §8): how much may pass a parent, and when.
//!
//! * **Rates** (`governor`): messages/s and bytes/s, overall and per child,
//!   each with a short burst. A message over a rate is answered "rejected,
//!   retry after" the time the limiter names (at least 100 ms), and so is
//!   every message after it in the same POST, so that the sender, which
//!   holds what is deferred and everything no more important
//!   ([`crate::forward`]), keeps its precedence order.
//! * **Windows**: a class (`bulk`, say) let through only between two times
//!   of day (UTC); outside, its messages are deferred until the window
//!   opens, and other classes flow.
//! * **Free disk** ([`crate::disk`]): below `min_free_disk_bytes` under the
//!   node's data directory, every forward message is deferred.
//! * **Concurrent bulk transfers**: while `max_bulk_transfers` uploads
//!   pass this node, further bulk requests are deferred (alarms flow).
//!
//! A sender runs the same rates and windows on itself ([`Throttle::admit`]):
//! what they hold back stays in its spool instead of being sent.
//!
//! Every decision is counted by reason in `/metrics`. The clock of the
//! windows is injected ([`Throttle::with_clock`]) so tests need no wall clock.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::envelope::Item;
use crate::id::ComponentId;
use crate::metrics::{Counter, Registry};
use crate::model::Direction;

use super::{Exchange, Judged, Stage, StageFuture, Verdict};

/// The shortest retry-after a throttle hands out.
const MIN_RETRY: Duration = Duration::from_millis(100);
/// Bytes counted for a message's header (the content is counted exactly).
const HEADER_ALLOWANCE: usize = 256;
/// A byte limiter always admits one whole message.
const MIN_BYTE_BURST: u32 = 2 << 20;

/// Default `min_free_disk_bytes`: 64 MiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 << 20;
/// What a sender is told to wait while free disk is below the floor.
const DISK_RETRY: Duration = Duration::from_secs(5);
/// What a bulk request is told to wait while the transfer cap is reached.
const BULK_RETRY: Duration = Duration::from_secs(10);

/// `[throttle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Messages per second, all children together.
    pub messages_per_s: Option<u32>,
    /// Bytes per second, all children together.
    pub bytes_per_s: Option<u32>,
    /// Messages per second, per child.
    pub child_messages_per_s: Option<u32>,
    /// Bytes per second, per child.
    pub child_bytes_per_s: Option<u32>,
    /// The burst each rate allows, as milliseconds of it. Default 100.
    pub burst_ms: Option<u32>,
    /// Time-of-day windows per class.
    pub window: Vec<WindowConfig>,
    /// Free bytes that must stay on the disk of the data directory; below,
    /// forward messages are deferred (at a proxy: refused to integrators).
    /// Default 64 MiB; 0 turns it off.
    pub min_free_disk_bytes: u64,
    /// Uploads passing this node at once; past it, bulk requests are
    /// deferred. Default: no cap here (an MLM's `[bulk] max_transfers`
    /// still refuses transfers past its own cap).
    pub max_bulk_transfers: Option<usize>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            messages_per_s: None,
            bytes_per_s: None,
            child_messages_per_s: None,
            child_bytes_per_s: None,
            burst_ms: None,
            window: Vec::new(),
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK,
            max_bulk_transfers: None,
        }
    }
}

/// `[[throttle.window]]`: `class` passes only from `from` to `to` (UTC, `HH:MM`;
/// a window may wrap midnight: 22:00 to 06:00).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The class it concerns.
    pub class: String,
    /// Opens at.
    pub from: String,
    /// Closes at.
    pub to: String,
}

fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

impl ThrottleConfig {
    /// Checks a sender's own `[throttle]` (a proxy's): the per-child limits
    /// and the bulk cap are a parent's. Adds every problem to `errors`.
    pub fn validate_sender(&self, errors: &mut Vec<String>) {
        self.validate(errors);
        for (k, set) in [
            ("child_messages_per_s", self.child_messages_per_s.is_some()),
            ("child_bytes_per_s", self.child_bytes_per_s.is_some()),
            ("max_bulk_transfers", self.max_bulk_transfers.is_some()),
        ] {
            if set {
                errors.push(format!(
                    "throttle.{k}: applies at a parent (an MLM), not at a proxy"
                ));
            }
        }
    }

    /// Adds every problem to `errors`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        for (k, v) in [
            ("messages_per_s", self.messages_per_s),
            ("bytes_per_s", self.bytes_per_s),
            ("child_messages_per_s", self.child_messages_per_s),
            ("child_bytes_per_s", self.child_bytes_per_s),
            ("burst_ms", self.burst_ms),
        ] {
            if v == Some(0) {
                errors.push(format!(
                    "throttle.{k}: must be at least 1 (leave it out for no limit)"
                ));
            }
        }
        if self.max_bulk_transfers == Some(0) {
            errors.push(
                "throttle.max_bulk_transfers: must be at least 1 (leave it out for no cap)".into(),
            );
        }
        for (i, w) in self.window.iter().enumerate() {
            if !crate::model::valid_class(&w.class) {
                errors.push(format!("throttle.window[{i}].class: not a class label"));
            }
            for (k, v) in [("from", &w.from), ("to", &w.to)] {
                if minutes(v).is_none() {
                    errors.push(format!("throttle.window[{i}].{k}: {v:?} is not HH:MM"));
                }
            }
        }
    }
}

struct Window {
    class: String,
    from: u32,
    to: u32,
    text: String,
}

impl Window {
    fn open(&self, now: u32) -> bool {
        if self.from <= self.to {
            (self.from..self.to).contains(&now)
        } else {
            now >= self.from || now < self.to
        }
    }
    /// Minutes from `now` until it opens.
    fn until_open(&self, now: u32) -> u32 {
        (self.from + 24 * 60 - now) % (24 * 60)
    }
}

/// Minutes since midnight, UTC.
pub type DayClock = Arc<dyn Fn() -> u32 + Send + Sync>;

fn wall_minutes() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs / 60) % (24 * 60)) as u32
}

struct Counters {
    passed: Counter,
    rate: Counter,
    window: Counter,
    disk: Counter,
    bulk: Counter,
}

/// How many uploads pass this node now (an MLM's [`crate::bulk`] relay).
pub type BulkProbe = Arc<dyn Fn() -> usize + Send + Sync>;

/// What [`Throttle::admit`] lets a sender send now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Per entry, in order: may it go now?
    pub send: Vec<bool>,
    /// Entries held for a window, with how long until it opens.
    pub parked: Vec<(usize, Duration)>,
    /// When nothing may go: how long a rate says to wait.
    pub wait: Option<Duration>,
}

/// See the module docs.
pub struct Throttle {
    me: ComponentId,
    messages: Option<(DefaultDirectRateLimiter, u32)>,
    bytes: Option<(DefaultDirectRateLimiter, u32)>,
    child_messages: Option<(DefaultKeyedRateLimiter<ComponentId>, u32)>,
    child_bytes: Option<(DefaultKeyedRateLimiter<ComponentId>, u32)>,
    windows: Vec<Window>,
    clock: DayClock,
    /// The limiters' clock, made once: making one reads CPUID, which in a
    /// VM traps to the hypervisor (4 % of an MLM's CPU when it was made
    /// per message).
    rate_clock: DefaultClock,
    counters: Counters,
    min_free: u64,
    disk: Option<crate::disk::DiskFloor>,
    bulk: Option<(usize, BulkProbe)>,
    max_bulk: Option<usize>,
}

fn quota(per_s: u32, burst_ms: u32, min_burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_s)?;
    let burst = (u64::from(per_s) * u64::from(burst_ms) / 1000).max(u64::from(min_burst));
    let burst = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX))?;
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Throttle {
    /// A throttle at node `me` (validated `cfg`), windows on the wall clock.
    pub fn new(me: ComponentId, cfg: &ThrottleConfig, metrics: &Registry) -> Throttle {
        Self::with_clock(me, cfg, metrics, Arc::new(wall_minutes))
    }

    /// [`Throttle::new`] with the windows' clock given.
    pub fn with_clock(
        me: ComponentId,
        cfg: &ThrottleConfig,
        metrics: &Registry,
        clock: DayClock,
    ) -> Throttle {
        let b = cfg.burst_ms.unwrap_or(100);
        let direct = |r: Option<u32>, min: u32| {
            r.and_then(|r| quota(r, b, min).map(|q| (RateLimiter::direct(q), r)))
        };
        let keyed = |r: Option<u32>, min: u32| {
            r.and_then(|r| quota(r, b, min).map(|q| (RateLimiter::keyed(q), r)))
        };
        let c = |n: &str, h: &str| metrics.counter(n, h);
        Throttle {
            me,
            messages: direct(cfg.messages_per_s, 1),
            bytes: direct(cfg.bytes_per_s, MIN_BYTE_BURST),
            child_messages: keyed(cfg.child_messages_per_s, 1),
            child_bytes: keyed(cfg.child_bytes_per_s, MIN_BYTE_BURST),
            windows: cfg
                .window
                .iter()
                .filter_map(|w| {
                    Some(Window {
                        class: w.class.clone(),
                        from: minutes(&w.from)?,
                        to: minutes(&w.to)?,
                        text: format!("{} to {} UTC", w.from, w.to),
                    })
                })
                .collect(),
            clock,
            rate_clock: DefaultClock::default(),
            counters: Counters {
                passed: c(
                    "rsnet_throttle_passed_total",
                    "messages the throttle let through",
                ),
                rate: c(
                    "rsnet_throttle_deferred_rate_total",
                    "messages deferred for a rate (messages or bytes, overall or per child)",
                ),
                window: c(
                    "rsnet_throttle_deferred_window_total",
                    "messages deferred until their class's time window opens",
                ),
                disk: c(
                    "rsnet_throttle_deferred_disk_total",
                    "messages deferred while free disk was below the floor",
                ),
                bulk: c(
                    "rsnet_throttle_deferred_bulk_total",
                    "bulk requests deferred while the cap on concurrent transfers was reached",
                ),
            },
            min_free: cfg.min_free_disk_bytes,
            disk: None,
            bulk: None,
            max_bulk: cfg.max_bulk_transfers,
        }
    }

    /// Watches free disk under `dir` against the configured floor.
    pub fn on_disk(self, dir: &std::path::Path) -> Throttle {
        let floor = crate::disk::DiskFloor::new(dir, self.min_free);
        self.with_disk(floor)
    }

    /// Watches free disk with `floor` (tests inject a probe).
    pub fn with_disk(mut self, floor: crate::disk::DiskFloor) -> Throttle {
        if floor.floor() > 0 {
            self.disk = Some(floor);
        }
        self
    }

    /// Counts the uploads passing this node with `probe`, against the
    /// configured cap.
    pub fn with_bulk(mut self, probe: BulkProbe) -> Throttle {
        if let Some(max) = self.max_bulk {
            self.bulk = Some((max, probe));
        }
        self
    }

    /// Free disk below the floor: the reason, if so.
    fn disk_low(&self) -> Option<String> {
        let d = self.disk.as_ref()?;
        let free = d.below()?;
        Some(format!(
            "throttled at {}: free disk {} MiB is below the floor of {} MiB",
            self.me,
            free >> 20,
            d.floor() >> 20
        ))
    }

    /// True if [`Throttle::admit`] looks at classes (some window is set).
    pub fn has_windows(&self) -> bool {
        !self.windows.is_empty()
    }

    /// A sender's own throttle on what it is about to send, in send order:
    /// each entry is its class (if known) and size. An entry whose class's
    /// window is closed waits (parked) and the others may still go; the
    /// first entry over a rate, and every one after it, waits.
    pub fn admit(&self, entries: &[(Option<&str>, usize)]) -> Admitted {
        let me = self.me.clone();
        let now = (self.clock)();
        let mut out = Admitted {
            send: vec![false; entries.len()],
            ..Admitted::default()
        };
        for (i, (class, size)) in entries.iter().enumerate() {
            if let Some(w) =
                class.and_then(|c| self.windows.iter().find(|w| w.class == c && !w.open(now)))
            {
                self.counters.window.inc();
                let after = Duration::from_secs(u64::from(w.until_open(now)) * 60).max(MIN_RETRY);
                out.parked.push((i, after));
                continue;
            }
            let size = u32::try_from(size + HEADER_ALLOWANCE).unwrap_or(u32::MAX);
            if let Some((after, _)) = self.over_rate(&me, size) {
                self.counters.rate.add((entries.len() - i) as u64);
                out.wait = Some(after);
                break;
            }
            self.counters.passed.inc();
            out.send[i] = true;
        }
        out
    }

    /// The wait a rate imposes on a message of `size` bytes from `child`, if any.
    fn over_rate(&self, child: &ComponentId, size: u32) -> Option<(Duration, String)> {
        let n = NonZeroU32::new(size.max(1))?;
        let wait =
            |e: governor::NotUntil<_>| e.wait_time_from(self.rate_clock.now()).max(MIN_RETRY);
        if let Some((l, r)) = &self.messages {
            if let Err(e) = l.check() {
                return Some((wait(e), format!("{r} messages/s")));
            }
        }
        if let Some((l, r)) = &self.child_messages {
            if let Err(e) = l.check_key(child) {
                return Some((wait(e), format!("{r} messages/s from {child}")));
            }
        }
        if let Some((l, r)) = &self.bytes {
            // (Err: larger than the burst, which always admits one message.)
            if let Ok(Err(e)) = l.check_n(n) {
                return Some((wait(e), format!("{r} bytes/s")));
            }
        }
        if let Some((l, r)) = &self.child_bytes {
            if let Ok(Err(e)) = l.check_key_n(child, n) {
                return Some((wait(e), format!("{r} bytes/s from {child}")));
            }
        }
        None
    }
}

impl Stage for Throttle {
    fn name(&self) -> &'static str {
        "throttle"
    }

    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        let now = (self.clock)();
        let mut out = Judged {
            forward: Vec::with_capacity(items.len()),
            decided: Vec::new(),
        };
        let mut rest: Option<(Duration, String)> = None;
        let disk = self.disk_low();
        let bulk_full = self.bulk.as_ref().and_then(|(max, probe)| {
            let n = probe();
            (n >= *max).then(|| {
                format!(
                    "throttled at {}: {n} bulk transfers in progress (at most {max})",
                    self.me
                )
            })
        });
        for item in items {
            if !matches!(item.header.direction, Direction::Source(_)) {
                out.forward.push(item);
                continue;
            }
            if let Some(why) = &disk {
                self.counters.disk.inc();
                out.decided
                    .push((item.header.id, Verdict::defer(why.clone(), DISK_RETRY)));
                continue;
            }
            if let Some(why) = bulk_full
                .as_ref()
                .filter(|_| item.header.kind == crate::model::ContentKind::BulkRequest)
            {
                self.counters.bulk.inc();
                out.decided
                    .push((item.header.id, Verdict::defer(why.clone(), BULK_RETRY)));
                continue;
            }
            if let Some(w) = self
                .windows
                .iter()
                .find(|w| w.class == item.header.class && !w.open(now))
            {
                self.counters.window.inc();
                let after = Duration::from_secs(u64::from(w.until_open(now)) * 60).max(MIN_RETRY);
                out.decided.push((
                    item.header.id,
                    Verdict::defer_class(
                        format!(
                            "throttled at {}: class {} passes only from {}",
                            self.me, w.class, w.text
                        ),
                        after,
                        &w.class,
                    ),
                ));
                continue;
            }
            if rest.is_none() {
                // Content bytes and an allowance for the header (not encoded here).
                let size = u32::try_from(item.content.len() + HEADER_ALLOWANCE).unwrap_or(u32::MAX);
                rest = self.over_rate(&ex.peer.id, size);
            }
            match &rest {
                Some((after, what)) => {
                    self.counters.rate.inc();
                    out.decided.push((
                        item.header.id,
                        Verdict::defer(format!("throttled at {}: {what}", self.me), *after),
                    ));
                }
                None => {
                    self.counters.passed.inc();
                    out.forward.push(item);
                }
            }
        }
        Box::pin(async move { out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::test_item as item;
    use crate::model::Timestamp;
    use crate::tls::{Identity, Role};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ex(child: &str) -> Exchange {
        Exchange {
            peer: Identity {
                id: child.parse().unwrap(),
                role: Role::Proxy,
                scopes: vec![],
                perms: vec![],
                classes: vec![],
            },
            received: Timestamp::now(),
            persist: Vec::new(),
        }
    }

    fn cfg(toml_text: &str) -> ThrottleConfig {
        let c: ThrottleConfig = toml::from_str(toml_text).unwrap();
        let mut errors = Vec::new();
        c.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c
    }

    fn deferred(j: &Judged) -> Vec<String> {
        j.decided
            .iter()
            .map(|(_, v)| match v {
                Verdict::Defer { reason, .. } => reason.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_rate_passes_its_burst_then_defers_the_rest_of_the_post() {
        let t = Throttle::new(
            "acme.mlm1".parse().unwrap(),
            &cfg("messages_per_s = 10\nburst_ms = 300\n"),
            &Registry::default(),
        );
        let items: Vec<Item> = (0..10).map(|_| item("acme.p1", &["acme.p1"])).collect();
        let j = t.judge(&ex("acme.p1"), items).await;
        assert_eq!(j.forward.len(), 3, "a 300 ms burst of 10/s");
        let why = deferred(&j);
        assert_eq!(why.len(), 7);
        assert!(why[0].contains("10 messages/s"), "{why:?}");
        assert!(j.decided.iter().all(
            |(_, v)| matches!(v, Verdict::Defer { retry_after, .. } if *retry_after >= MIN_RETRY)
        ));
    }

    #[tokio::test]
    async fn a_per_child_rate_holds_one_child_and_not_another() {
        let t = Throttle::new(
            "acme.mlm1".parse().unwrap(),
            &cfg("child_messages_per_s = 10\nburst_ms = 200\n"),
            &Registry::default(),
        );
        let j1 = t
            .judge(
                &ex("acme.p1"),
                (0..5).map(|_| item("acme.p1", &["acme.p1"])).collect(),
            )
            .await;
        let j2 = t
            .judge(
                &ex("acme.p2"),
                (0..2).map(|_| item("acme.p2", &["acme.p2"])).collect(),
            )
            .await;
        assert_eq!((j1.forward.len(), j2.forward.len()), (2, 2));
        assert!(deferred(&j1)[0].contains("from acme.p1"));
    }

    #[tokio::test]
    async fn a_byte_rate_counts_bytes() {
        let t = Throttle::new(
            "acme.mlm1".parse().unwrap(),
            &cfg("bytes_per_s = 1000\n"),
            &Registry::default(),
        );
        // The byte burst admits at least one whole message (2 MiB), then waits.
        let mut big = item("acme.p1", &["acme.p1"]);
        big.content = bytes::Bytes::from(vec![b'x'; 1_500_000]);
        let j = t.judge(&ex("acme.p1"), vec![big.clone(), big]).await;
        assert_eq!(j.forward.len(), 1);
        assert!(deferred(&j)[0].contains("1000 bytes/s"));
    }

    #[tokio::test]
    async fn a_window_holds_its_class_outside_it_and_lets_others_flow() {
        let now = Arc::new(AtomicU32::new(12 * 60)); // 12:00
        let n = now.clone();
        let t = Throttle::with_clock(
            "acme.mlm1".parse().unwrap(),
            &cfg("[[window]]\nclass = \"bulk\"\nfrom = \"22:00\"\nto = \"06:00\"\n"),
            &Registry::default(),
            Arc::new(move || n.load(Ordering::Relaxed)),
        );
        let mut bulk = item("acme.p1", &["acme.p1"]);
        bulk.header.class = "bulk".into();
        let alarm = item("acme.p1", &["acme.p1"]);
        let j = t.judge(&ex("acme.p1"), vec![bulk.clone(), alarm]).await;
        assert_eq!(j.forward.len(), 1, "the alarm flows");
        match &j.decided[0].1 {
            Verdict::Defer {
                reason,
                retry_after,
                class,
            } => {
                assert!(reason.contains("22:00 to 06:00"), "{reason}");
                assert_eq!(class.as_deref(), Some("bulk"), "only bulk is held back");
                assert_eq!(*retry_after, Duration::from_secs(10 * 3600), "until 22:00");
            }
            other => panic!("{other:?}"),
        }
        for open_at in [22 * 60, 23 * 60 + 59, 0, 5 * 60 + 59] {
            now.store(open_at, Ordering::Relaxed);
            let j = t.judge(&ex("acme.p1"), vec![bulk.clone()]).await;
            assert_eq!(j.forward.len(), 1, "open at minute {open_at}");
        }
        now.store(6 * 60, Ordering::Relaxed);
        assert_eq!(
            t.judge(&ex("acme.p1"), vec![bulk]).await.forward.len(),
            0,
            "closed at 06:00"
        );
    }

    #[tokio::test]
    async fn free_disk_below_the_floor_defers_everything_and_above_it_nothing() {
        let free = Arc::new(std::sync::atomic::AtomicU64::new(10 << 20));
        let f = free.clone();
        let t = Throttle::new(
            "acme.mlm1".parse().unwrap(),
            &cfg("min_free_disk_bytes = 67108864\n"),
            &Registry::default(),
        )
        .with_disk(crate::disk::DiskFloor::with_probe(
            64 << 20,
            Arc::new(move || Ok(f.load(Ordering::Relaxed))),
        ));
        let j = t
            .judge(&ex("acme.p1"), vec![item("acme.p1", &["acme.p1"])])
            .await;
        assert_eq!(j.forward.len(), 0);
        assert!(deferred(&j)[0].contains("free disk 10 MiB is below the floor of 64 MiB"));
        // A fresh throttle reads again (a reading lasts a second).
        free.store(100 << 20, Ordering::Relaxed);
        let f = free.clone();
        let t = Throttle::new("acme.mlm1".parse().unwrap(), &cfg(""), &Registry::default())
            .with_disk(crate::disk::DiskFloor::with_probe(
                64 << 20,
                Arc::new(move || Ok(f.load(Ordering::Relaxed))),
            ));
        let j = t
            .judge(&ex("acme.p1"), vec![item("acme.p1", &["acme.p1"])])
            .await;
        assert_eq!(j.forward.len(), 1);
    }

    #[tokio::test]
    async fn the_bulk_cap_defers_bulk_requests_and_nothing_else() {
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(2));
        let a = active.clone();
        let t = Throttle::new(
            "acme.mlm1".parse().unwrap(),
            &cfg("max_bulk_transfers = 2\n"),
            &Registry::default(),
        )
        .with_bulk(Arc::new(move || a.load(Ordering::Relaxed)));
        let mut req = item("acme.p1", &["acme.p1"]);
        req.header.kind = crate::model::ContentKind::BulkRequest;
        let alarm = item("acme.p1", &["acme.p1"]);
        let j = t.judge(&ex("acme.p1"), vec![req.clone(), alarm]).await;
        assert_eq!(j.forward.len(), 1, "the alarm flows");
        assert!(deferred(&j)[0].contains("2 bulk transfers in progress (at most 2)"));
        active.store(1, Ordering::Relaxed);
        assert_eq!(t.judge(&ex("acme.p1"), vec![req]).await.forward.len(), 1);
    }

    #[test]
    fn a_sender_parks_a_closed_window_and_stops_at_its_rate() {
        let t = Throttle::with_clock(
            "acme.p1".parse().unwrap(),
            &cfg("messages_per_s = 10\nburst_ms = 300\n[[window]]\nclass = \"bulk\"\nfrom = \"22:00\"\nto = \"06:00\"\n"),
            &Registry::default(),
            Arc::new(|| 12 * 60),
        );
        let entries: Vec<(Option<&str>, usize)> = vec![
            (Some("alarm"), 100),
            (Some("bulk"), 100),
            (Some("alarm"), 100),
            (Some("alarm"), 100),
            (Some("alarm"), 100),
        ];
        let a = t.admit(&entries);
        assert_eq!(a.send, vec![true, false, true, true, false], "{a:?}");
        assert_eq!(a.parked, vec![(1, Duration::from_secs(10 * 3600))]);
        assert!(a.wait.is_some_and(|w| w >= MIN_RETRY));
        let mut e = Vec::new();
        cfg("child_messages_per_s = 1\nmax_bulk_transfers = 3\n").validate_sender(&mut e);
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn bad_throttle_settings_are_named() {
        let c: ThrottleConfig = toml::from_str(
            "messages_per_s = 0\n[[window]]\nclass = \"Bulk\"\nfrom = \"25:00\"\nto = \"6\"\n",
        )
        .unwrap();
        let mut e = Vec::new();
        c.validate(&mut e);
        let all = e.join("\n");
        for needle in [
            "messages_per_s",
            "window[0].class",
            "window[0].from",
            "window[0].to",
        ] {
            assert!(all.contains(needle), "{all}");
        }
    }
}
