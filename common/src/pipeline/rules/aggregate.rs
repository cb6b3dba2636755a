//! The `aggregate` action: many messages held, one sent (DESIGN.md §8).
//!
//! ```toml
//! [[rule]]
//! name = "fold-link-flaps"
//! action = "aggregate"
//! [rule.match]
//! class = "alarm"
//! [rule.aggregate]
//! by = ["support_instance", "subclass"]   # one aggregate per distinct key
//! count = 100                             # sent when this many are held…
//! window_s = 60                           # …or when the first is this old
//! ```
//!
//! A matching alarm or event is **held** in the MLM's durable store and its
//! sender is answered "accepted". When a key's group reaches `count`, or its
//! oldest member has waited `window_s`, one message replaces the group: the
//! first member's class, subclass and kind, the highest precedence and
//! severity held, and a `data` part (`application/vnd.rsnet.aggregate+json`)
//! with the rule, the key, the count, the first and last creation times and
//! the IDs of every message it replaced.
//!
//! # Crash safety
//!
//! Nothing held is lost and no aggregate is made twice:
//!
//! 1. Held messages are committed (fsync) before their sender hears
//!    "accepted": `agg/h/GROUP/ID`.
//! 2. A group becomes an aggregate in **one** commit that removes its
//!    members, writes the aggregate (`agg/o/ID`) and remembers every
//!    replaced ID (`agg/r/ID`). A crash leaves either the group or the
//!    aggregate, never both.
//! 3. The aggregate is spooled under a client key made of its ID, then its
//!    `agg/o` record goes. After a crash in between it is spooled again
//!    and the spool answers "repeat": it is sent once.
//!
//! A child that resends a message it was never answered for (the MLM died
//! after holding it) finds it held, or remembered as replaced for
//! [`REMEMBER`], and is answered "accepted" without a second copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::envelope::wire::{decode_header, encode_content, encode_header};
use crate::envelope::{truncate, Item};
use crate::forward::{record, Outbox};
use crate::id::{ComponentId, MessageId};
use crate::limits::MAX_TEXT_BYTES;
use crate::metrics::{Counter, Registry};
use crate::model::{
    Content, ContentKind, Data, Direction, Encoding, Hop, Message, Source, Timestamp,
};
use crate::server::Shutdown;
use crate::store::{commit_async, delete_async, ClientKey, KvStore, Pushed, StoreError};

/// How long a replaced message's ID is remembered, so that a resend of it
/// is answered without being held again.
pub const REMEMBER: Duration = Duration::from_secs(15 * 60);
/// The most messages one aggregate replaces (its ID list must fit one part).
pub const MAX_COUNT: u32 = 1000;
/// The longest window.
pub const MAX_WINDOW_S: u64 = 24 * 3600;
/// The MIME type of an aggregate's summary.
pub const MIME: &str = "application/vnd.rsnet.aggregate+json";
/// The most messages held at once by all aggregate rules of an MLM; past
/// it, further matches are deferred (the sender keeps them).
pub const MAX_HELD: usize = 100_000;
/// The most bytes (headers and contents) held at once.
pub const MAX_HELD_BYTES: u64 = 256 << 20;
/// What a sender is told to wait when the holding area is full.
pub const FULL_RETRY: Duration = Duration::from_secs(5);
/// How often the emitter looks without being woken.
const TICK: Duration = Duration::from_secs(1);

const HELD: &str = "agg/h/";
const OUT: &str = "agg/o/";
const REPLACED: &str = "agg/r/";

/// `[rule.aggregate]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The fields whose values make the key (none: one group per rule).
    #[serde(default)]
    pub by: Vec<String>,
    /// Send when this many are held. Default 100, at most [`MAX_COUNT`].
    #[serde(default = "default_count")]
    pub count: u32,
    /// Send when the oldest held has waited this long. Default 60.
    #[serde(default = "default_window")]
    pub window_s: u64,
}

fn default_count() -> u32 {
    100
}
fn default_window() -> u64 {
    60
}

impl AggregateConfig {
    pub(super) fn validate(&self, bad: &mut impl FnMut(String)) {
        for f in &self.by {
            if KeyField::parse(f).is_none() {
                bad(format!(
                    "aggregate.by: {f:?} (fields: {})",
                    super::config::key_fields()
                ));
            }
        }
        if !(2..=MAX_COUNT).contains(&self.count) {
            bad(format!("aggregate.count: 2..={MAX_COUNT}"));
        }
        if !(1..=MAX_WINDOW_S).contains(&self.window_s) {
            bad(format!("aggregate.window_s: 1..={MAX_WINDOW_S}"));
        }
    }

    pub(super) fn spec(&self) -> Spec {
        Spec {
            by: self.by.iter().filter_map(|f| KeyField::parse(f)).collect(),
            count: self.count as usize,
            window: Duration::from_secs(self.window_s),
        }
    }
}

/// An aggregate's key: (field, value) pairs in `by` order.
pub type Key = Vec<(String, String)>;

/// A field an aggregate may be keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    /// The origin.
    Source,
    /// Class.
    Class,
    /// Subclass.
    Subclass,
    /// Content kind.
    Kind,
    /// The alarm's or event's support instance.
    SupportInstance,
    /// The alarm's severity.
    Severity,
}

impl KeyField {
    /// Every field.
    pub const ALL: [KeyField; 6] = [
        KeyField::Source,
        KeyField::Class,
        KeyField::Subclass,
        KeyField::Kind,
        KeyField::SupportInstance,
        KeyField::Severity,
    ];
    /// Its name in `by`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyField::Source => "source",
            KeyField::Class => "class",
            KeyField::Subclass => "subclass",
            KeyField::Kind => "kind",
            KeyField::SupportInstance => "support_instance",
            KeyField::Severity => "severity",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A compiled `[rule.aggregate]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    by: Vec<KeyField>,
    count: usize,
    window: Duration,
}

impl Spec {
    /// The key of `item` (whose content is `content`), as (field, value) pairs.
    pub(super) fn key(&self, item: &Item, content: Option<&Content>) -> Vec<(String, String)> {
        let h = &item.header;
        let (si, sev) = match content {
            Some(Content::Alarm(a)) => (
                a.support_instance.as_ref().map(|s| s.to_string()),
                Some(severity_name(a.severity)),
            ),
            Some(Content::Event(e)) => (e.support_instance.as_ref().map(|s| s.to_string()), None),
            _ => (None, None),
        };
        self.by
            .iter()
            .map(|f| {
                let v = match f {
                    KeyField::Source => h.source().map(|s| s.origin.to_string()),
                    KeyField::Class => Some(h.class.clone()),
                    KeyField::Subclass => h.subclass.clone(),
                    KeyField::Kind => Some(h.kind.as_str().to_string()),
                    KeyField::SupportInstance => si.clone(),
                    KeyField::Severity => sev.map(str::to_string),
                };
                (f.as_str().to_string(), v.unwrap_or_default())
            })
            .collect()
    }
}

fn severity_name(s: crate::model::Severity) -> &'static str {
    use crate::model::Severity::*;
    match s {
        Clear => "clear",
        Info => "info",
        Warning => "warning",
        Minor => "minor",
        Major => "major",
        Critical => "critical",
    }
}

/// A held message as stored (`agg/h/GROUP/ID`).
#[derive(Serialize, Deserialize)]
struct HeldRecord {
    rule: String,
    key: Vec<(String, String)>,
    /// When this MLM received it (ms), which starts its group's window.
    received: u64,
    header: String,
    content: String,
}

/// An aggregate not yet spooled (`agg/o/ID`).
#[derive(Serialize, Deserialize)]
struct OutRecord {
    header: String,
    content: String,
}

struct Held {
    store_key: String,
    received: Timestamp,
    item: Item,
    /// Bytes it counts against [`MAX_HELD_BYTES`].
    size: u64,
}

/// Bytes counted for a header before it is encoded.
const HEADER_ESTIMATE: usize = 512;

struct Group {
    rule: String,
    key: Vec<(String, String)>,
    members: Vec<Held>,
}

impl Group {
    /// Due at `now`: full, past its window, or left without its rule
    /// (`spec` is `None`: a reload removed it).
    fn ripe(&self, spec: Option<&Spec>, now: Timestamp) -> bool {
        !self.members.is_empty()
            && spec.is_none_or(|s| {
                self.members.len() >= s.count
                    || self
                        .members
                        .first()
                        .is_some_and(|m| m.received.after(s.window) <= now)
            })
    }
}

#[derive(Default)]
struct State {
    groups: BTreeMap<String, Group>,
    held: HashSet<MessageId>,
    /// Bytes of the held messages (headers and contents).
    held_bytes: u64,
    replaced: HashMap<MessageId, Timestamp>,
    /// `agg/o` keys whose aggregate is not yet spooled.
    out: Vec<String>,
}

struct Counters {
    held: Counter,
    emitted: Counter,
    replaced: Counter,
    repeats: Counter,
}

/// The durable holding area of an MLM's aggregate rules: see the module docs.
pub struct Aggregator {
    me: ComponentId,
    kv: Arc<dyn KvStore>,
    outbox: Arc<Outbox>,
    state: tokio::sync::Mutex<State>,
    /// The aggregate rules in force, by name (a reload replaces it; a group
    /// whose rule is gone is sent at once).
    specs: Mutex<HashMap<String, Spec>>,
    wake: Notify,
    c: Counters,
    /// ([`MAX_HELD`], [`MAX_HELD_BYTES`]); smaller in tests.
    limits: Mutex<(usize, u64)>,
}

/// The group a (rule, key) lives in, as a store-key segment.
fn group_id(rule: &str, key: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    for (k, v) in key {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    crate::bulk::hex(&h.finalize()[..12])
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Aggregator {
    /// Opens the holding area of MLM `me` in `kv`: held groups, remembered
    /// IDs and unsent aggregates come back as they were. Aggregates go to
    /// `outbox`.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn open(
        me: ComponentId,
        kv: Arc<dyn KvStore>,
        outbox: Arc<Outbox>,
        metrics: &Registry,
    ) -> crate::store::Result<Arc<Aggregator>> {
        let mut st = State::default();
        for (k, v) in kv.list(HELD)? {
            let Ok(r) = serde_json::from_slice::<HeldRecord>(&v) else {
                tracing::error!(key = %k, "held message unreadable; left in the store");
                continue;
            };
            let Ok(header) = decode_header(r.header.as_bytes()) else {
                tracing::error!(key = %k, "held message header unreadable; left in the store");
                continue;
            };
            let gid = group_id(&r.rule, &r.key);
            st.held.insert(header.id);
            st.held_bytes += (r.header.len() + r.content.len()) as u64;
            st.groups
                .entry(gid)
                .or_insert_with(|| Group {
                    rule: r.rule.clone(),
                    key: r.key.clone(),
                    members: Vec::new(),
                })
                .members
                .push(Held {
                    store_key: k,
                    received: Timestamp(r.received),
                    size: (r.header.len() + r.content.len()) as u64,
                    item: Item::of(header, Bytes::from(r.content)),
                });
        }
        for g in st.groups.values_mut() {
            g.members.sort_by_key(|m| (m.received, m.item.header.id));
        }
        for (k, v) in kv.list(REPLACED)? {
            let id = k[REPLACED.len()..].parse::<MessageId>();
            let at = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
            if let (Ok(id), Some(at)) = (id, at) {
                st.replaced.insert(id, Timestamp(at));
            }
        }
        st.out = kv.list(OUT)?.into_iter().map(|(k, _)| k).collect();
        let held = st.held.len();
        let c = Counters {
            held: metrics.counter(
                "rsnet_aggregate_held_total",
                "messages held by aggregate rules",
            ),
            emitted: metrics.counter("rsnet_aggregate_emitted_total", "aggregates spooled upward"),
            replaced: metrics.counter(
                "rsnet_aggregate_replaced_total",
                "held messages replaced by an aggregate",
            ),
            repeats: metrics.counter(
                "rsnet_aggregate_repeats_total",
                "resends of messages already held or replaced (answered, not held again)",
            ),
        };
        if held > 0 || !st.out.is_empty() {
            tracing::info!(held, unsent = st.out.len(), "aggregation state recovered");
        }
        let a = Arc::new(Aggregator {
            me,
            kv,
            outbox,
            state: tokio::sync::Mutex::new(st),
            specs: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            c,
            limits: Mutex::new((MAX_HELD, MAX_HELD_BYTES)),
        });
        let weak = Arc::downgrade(&a);
        metrics.gauge(
            "rsnet_aggregate_holding",
            "messages held now by aggregate rules",
            move || {
                weak.upgrade()
                    .and_then(|a| a.state.try_lock().ok().map(|s| s.held.len() as f64))
                    .unwrap_or(f64::NAN)
            },
        );
        Ok(a)
    }

    /// Sets the aggregate rules in force (at start and on every reload).
    pub fn set_specs(&self, specs: HashMap<String, Spec>) {
        if let Ok(mut s) = self.specs.lock() {
            *s = specs;
        }
        self.wake.notify_one();
    }

    fn spec(&self, rule: &str) -> Option<Spec> {
        self.specs.lock().ok()?.get(rule).cloned()
    }

    /// Holds `items` (each with its rule and key) durably: `Ok` once all
    /// are held (or were already held or replaced).
    ///
    /// # Errors
    /// The holding area is full ([`MAX_HELD`], [`MAX_HELD_BYTES`]) or the
    /// store failed; nothing was held.
    pub async fn hold(
        &self,
        items: Vec<(String, Key, Item)>,
        received: Timestamp,
    ) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        let bytes: u64 = items
            .iter()
            .map(|(_, _, i)| (i.content.len() + HEADER_ESTIMATE) as u64)
            .sum();
        let (max_held, max_bytes) = self
            .limits
            .lock()
            .map_or((MAX_HELD, MAX_HELD_BYTES), |l| *l);
        if st.held.len() + items.len() > max_held || st.held_bytes + bytes > max_bytes {
            self.wake.notify_one();
            return Err(StoreError::Full {
                needed: bytes,
                free: max_bytes.saturating_sub(st.held_bytes),
                capacity: max_bytes,
            });
        }
        let mut puts = Vec::with_capacity(items.len());
        let mut fresh = Vec::with_capacity(items.len());
        let mut seen = HashSet::new();
        for (rule, key, item) in items {
            let id = item.header.id;
            if st.held.contains(&id) || st.replaced.contains_key(&id) || !seen.insert(id) {
                self.c.repeats.inc();
                continue;
            }
            let gid = group_id(&rule, &key);
            let store_key = format!("{HELD}{gid}/{id}");
            let rec = HeldRecord {
                rule: rule.clone(),
                key: key.clone(),
                received: received.0,
                header: encode_header(&item.header),
                content: String::from_utf8_lossy(&item.content).into_owned(),
            };
            let size = (rec.header.len() + rec.content.len()) as u64;
            puts.push((store_key.clone(), json(&rec)));
            fresh.push((gid, rule, key, store_key, item, size));
        }
        if puts.is_empty() {
            return Ok(());
        }
        commit_async(&self.kv, puts, Vec::new()).await?;
        let mut full = false;
        for (gid, rule, key, store_key, item, size) in fresh {
            st.held.insert(item.header.id);
            st.held_bytes += size;
            let g = st.groups.entry(gid).or_insert_with(|| Group {
                rule,
                key,
                members: Vec::new(),
            });
            g.members.push(Held {
                store_key,
                received,
                item,
                size,
            });
            self.c.held.inc();
            full |= self
                .spec(&g.rule)
                .is_none_or(|s| g.members.len() >= s.count);
        }
        drop(st);
        if full {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Sends every group that is due at `now`: full, past its window, or
    /// left without its rule. Then spools what is unsent and forgets
    /// replaced IDs older than [`REMEMBER`]. Returns the aggregates made.
    pub async fn emit_due(&self, now: Timestamp) -> usize {
        let mut made = 0;
        let mut st = self.state.lock().await;
        let gids: Vec<String> = st.groups.keys().cloned().collect();
        for gid in gids {
            // A full group is sent `count` at a time; what is left stays.
            while let Some(g) = st.groups.get(&gid) {
                let spec = self.spec(&g.rule);
                if !g.ripe(spec.as_ref(), now) {
                    break;
                }
                let take = spec.as_ref().map_or(g.members.len(), |s| s.count);
                let n = take.min(g.members.len()).min(MAX_COUNT as usize);
                let agg = self.aggregate(g, n, now);
                let out_key = format!("{OUT}{}", agg.header.id);
                let rec = OutRecord {
                    header: encode_header(&agg.header),
                    content: encode_content(&agg.content),
                };
                let members = &g.members[..n];
                let delete: Vec<String> = members.iter().map(|m| m.store_key.clone()).collect();
                let mut put = vec![(out_key.clone(), json(&rec))];
                put.extend(members.iter().map(|m| {
                    (
                        format!("{REPLACED}{}", m.item.header.id),
                        now.0.to_string().into_bytes(),
                    )
                }));
                if let Err(e) = commit_async(&self.kv, put, delete).await {
                    tracing::warn!(error = %e, "aggregate not made; tried again");
                    break;
                }
                let Some(g) = st.groups.get_mut(&gid) else {
                    break;
                };
                let gone: Vec<Held> = g.members.drain(..n).collect();
                if g.members.is_empty() {
                    st.groups.remove(&gid);
                }
                for m in gone {
                    st.held.remove(&m.item.header.id);
                    st.held_bytes = st.held_bytes.saturating_sub(m.size);
                    st.replaced.insert(m.item.header.id, now);
                }
                self.c.replaced.add(n as u64);
                st.out.push(out_key);
                made += 1;
            }
        }
        let out = std::mem::take(&mut st.out);
        let cutoff = Timestamp(now.0.saturating_sub(REMEMBER.as_millis() as u64));
        let old: Vec<MessageId> = st
            .replaced
            .iter()
            .filter(|(_, t)| **t < cutoff)
            .map(|(id, _)| *id)
            .collect();
        drop(st);
        let unsent = self.spool(out, now).await;
        let mut st = self.state.lock().await;
        st.out.extend(unsent);
        if !old.is_empty() {
            let keys = old.iter().map(|id| format!("{REPLACED}{id}")).collect();
            if delete_async(&self.kv, keys).await.is_ok() {
                for id in &old {
                    st.replaced.remove(id);
                }
            }
        }
        made
    }

    /// Spools the aggregates under `out`; returns the keys not spooled.
    async fn spool(&self, out: Vec<String>, now: Timestamp) -> Vec<String> {
        let mut unsent = Vec::new();
        for k in out {
            let rec = match self.kv.get(&k) {
                Ok(Some(v)) => serde_json::from_slice::<OutRecord>(&v).ok(),
                Ok(None) => continue,
                Err(_) => None,
            };
            let Some(msg) = rec.and_then(|r| {
                let header = decode_header(r.header.as_bytes()).ok()?;
                let content =
                    crate::envelope::wire::decode_content(r.content.as_bytes(), header.kind)
                        .ok()?;
                Some(Message { header, content })
            }) else {
                tracing::error!(key = %k, "unsent aggregate unreadable; left in the store");
                continue;
            };
            let key = ClientKey {
                key: format!("aggregate:{}", msg.header.id),
                until: now.after(Duration::from_secs(24 * 3600)),
            };
            match self
                .outbox
                .push_keyed(vec![(record(&msg), Some(key))])
                .await
            {
                Ok(r) if matches!(r.first(), Some(Ok(Pushed::New(_) | Pushed::Repeat(_)))) => {
                    if matches!(r.first(), Some(Ok(Pushed::New(_)))) {
                        self.c.emitted.inc();
                    }
                    if let Err(e) = delete_async(&self.kv, vec![k.clone()]).await {
                        tracing::warn!(error = %e, "spooled aggregate's record not removed; its resend is a repeat");
                    }
                }
                Ok(r) => {
                    let e = r.into_iter().next().and_then(Result::err);
                    tracing::warn!(error = ?e, aggregate = %msg.header.id, "aggregate not spooled yet; tried again");
                    unsent.push(k);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "aggregate not spooled yet; tried again");
                    unsent.push(k);
                }
            }
        }
        unsent
    }

    /// The message replacing the first `n` members of `g`.
    fn aggregate(&self, g: &Group, n: usize, now: Timestamp) -> Message {
        let members = &g.members[..n];
        let first = &members[0].item;
        let contents: Vec<Option<Content>> =
            members.iter().map(|m| m.item.content().ok()).collect();
        let origins: HashSet<&ComponentId> = members
            .iter()
            .filter_map(|m| m.item.header.source().map(|s| &s.origin))
            .collect();
        let origin = match origins.into_iter().collect::<Vec<_>>()[..] {
            [one] => one.clone(),
            _ => self.me.clone(),
        };
        let mut header = first.header.clone();
        header.id = MessageId::new();
        header.created = now;
        // Made by this MLM when its members came from several origins: then
        // it carries this node's version, as all it originates does.
        let version = (origin == self.me).then(|| crate::VERSION.to_string());
        header.direction = Direction::Source(Source { origin, version });
        header.qos.precedence = members
            .iter()
            .map(|m| m.item.header.qos.precedence)
            .max()
            .unwrap_or(header.qos.precedence);
        header.qos.persistence = members.iter().any(|m| m.item.header.qos.persistence);
        header.qos.expiry = None;
        header.routing.push(Hop {
            id: self.me.clone(),
            time: now,
        });
        let created: Vec<Timestamp> = members.iter().map(|m| m.item.header.created).collect();
        let summary = serde_json::json!({
            "rule": g.rule,
            "key": g.key.iter().cloned().collect::<BTreeMap<_, _>>(),
            "count": n,
            "first": created.iter().min().map(|t| t.to_rfc3339()),
            "last": created.iter().max().map(|t| t.to_rfc3339()),
            "replaced": members.iter().map(|m| m.item.header.id.to_string()).collect::<Vec<_>>(),
        });
        let data = Some(Data {
            mime: MIME.into(),
            encoding: Encoding::Text,
            payload: Bytes::from(summary.to_string()),
        });
        let text = |t: &str| {
            let mut s = format!("{t} ({n} messages aggregated by rule {})", g.rule);
            truncate(&mut s, MAX_TEXT_BYTES);
            s
        };
        let sis: HashSet<Option<&ComponentId>> = contents
            .iter()
            .map(|c| match c {
                Some(Content::Alarm(a)) => a.support_instance.as_ref(),
                Some(Content::Event(e)) => e.support_instance.as_ref(),
                _ => None,
            })
            .collect();
        let si = match sis.into_iter().collect::<Vec<_>>()[..] {
            [one] => one.cloned(),
            _ => None,
        };
        let content = match contents.first().cloned().flatten() {
            Some(Content::Alarm(mut a)) => {
                a.severity = contents
                    .iter()
                    .filter_map(|c| match c {
                        Some(Content::Alarm(a)) => Some(a.severity),
                        _ => None,
                    })
                    .max_by_key(|s| *s as u8)
                    .unwrap_or(a.severity);
                if let Some(Some(Content::Alarm(last))) = contents.last() {
                    a.state = last.state;
                }
                a.text = text(&a.text);
                a.support_instance = si;
                a.data = data;
                Content::Alarm(a)
            }
            Some(Content::Event(mut e)) => {
                e.text = text(&e.text);
                e.support_instance = si;
                e.data = data;
                Content::Event(e)
            }
            // Only alarms and events are held ([`super`]); an unreadable
            // first member still yields an event naming what it replaced.
            _ => {
                header.kind = ContentKind::Event;
                Content::Event(crate::model::Event {
                    support_instance: si,
                    text: text("aggregate"),
                    data,
                })
            }
        };
        Message { header, content }
    }

    /// Sends due aggregates until `shutdown`: at least every second, and
    /// at once when a group fills or the rules change.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            self.emit_due(Timestamp::now()).await;
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    /// Smaller limits of the holding area.
    pub fn set_limits(a: &Aggregator, max_held: usize, max_bytes: u64) {
        if let Ok(mut l) = a.limits.lock() {
            *l = (max_held, max_bytes);
        }
    }

    /// The `agg/o` record of an aggregate (to stage a crash between its
    /// spooling and its record's removal).
    pub fn out_record(m: &Message) -> Vec<u8> {
        json(&OutRecord {
            header: encode_header(&m.header),
            content: encode_content(&m.content),
        })
    }
}
