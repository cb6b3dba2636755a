//! Every component the appserver has heard of, where it sits, what it
//! runs, and whether it is still heard.
//!
//! Learned from each stored message: the origin and every hop in its routing
//! list are components; each one's parent path is the hops above it. The
//! version comes from the source of what a node originates itself
//! ([`Message::originated`](rsnet_common::Message::originated)), the role,
//! the heartbeat interval and the status tree from its heartbeats
//! ([`StatusTree`]). The map lives in memory and is persisted (key
//! `component/ID`) in the same transaction as the messages that changed it,
//! so it survives restarts.
//!
//! # Liveness
//!
//! A component that sends heartbeats is judged by the interval it
//! promised: once nothing from or through it has been stored for `missed`
//! intervals it is [`Liveness::Stale`], and it is [`Liveness::Alive`] again
//! as soon as it is heard. [`Topology::judge`] finds those changes;
//! [`crate::liveness`] stores each as an event in the commit that records
//! it. A component that never sent a heartbeat (a support instance) is not
//! judged.

use std::collections::HashMap;

use rsnet_common::heartbeat::{self, StatusTree};
use rsnet_common::id::ComponentId;
use rsnet_common::model::{Content, Header, Timestamp};
use serde::{Deserialize, Serialize};

/// Key prefix in the KV state.
pub const PREFIX: &str = "component/";
/// A `last_seen` change alone is persisted at most this often (ms).
const PERSIST_EVERY_MS: u64 = 30_000;

/// Whether a component that promised heartbeats is still heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Heard within its allowance.
    Alive,
    /// Silent for more than `missed` heartbeat intervals.
    Stale,
}

impl Liveness {
    /// `alive` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Stale => "stale",
        }
    }
}

/// What is known of one component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Component {
    /// Its ID.
    pub id: String,
    /// The hops above it, nearest first (the last is the appserver's child).
    pub parent_path: Vec<String>,
    /// Last time a message from or through it was stored.
    pub last_seen: String,
    /// Last heartbeat it sent.
    pub last_heartbeat: Option<String>,
    /// `proxy`, `mlm` or `appserver`, once it said (in a heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its software version, once it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether it is heard; none for a component that never promised heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Liveness>,
    /// Since when it has been as `liveness` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_since: Option<String>,
    /// The status tree of its last heartbeat that read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusTree>,
    /// `last_seen` in ms, for judging.
    #[serde(skip)]
    seen_ms: u64,
    #[serde(skip)]
    persisted_ms: u64,
}

impl Component {
    fn new(id: &ComponentId, ts: String) -> Component {
        Component {
            id: id.to_string(),
            parent_path: Vec::new(),
            last_seen: ts,
            last_heartbeat: None,
            role: None,
            version: None,
            liveness: None,
            liveness_since: None,
            status: None,
            seen_ms: 0,
            persisted_ms: 0,
        }
    }

    /// Seconds between the heartbeats it promised (0: none promised).
    pub fn interval_s(&self) -> u64 {
        self.status.as_ref().map_or(0, |s| s.interval_s)
    }
}

/// A change of a component's liveness, found by [`Topology::judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The component.
    pub id: ComponentId,
    /// What it is now.
    pub to: Liveness,
    /// How long it had been silent when judged (ms; for `Alive`, how long it
    /// had been stale).
    pub silent_ms: u64,
    /// The heartbeat interval it promised (s).
    pub interval_s: u64,
    /// The component as it is now, to persist with the change.
    pub record: (String, Vec<u8>),
    /// Since when it had been as it was, for [`Topology::undo`].
    was_since: Option<String>,
}

/// The topology map.
pub struct Topology {
    map: HashMap<ComponentId, Component>,
    /// This appserver ([`Topology::set_self`]): never judged.
    me: Option<ComponentId>,
    /// When this appserver started (ms): nobody is judged silent for the
    /// time it was down itself.
    started_ms: u64,
}

impl Topology {
    /// Loads persisted components; `now` is the start of this run.
    pub fn load(pairs: Vec<(String, Vec<u8>)>, now: Timestamp) -> Self {
        let mut map = HashMap::new();
        for (k, v) in pairs {
            let Some(id) = k
                .strip_prefix(PREFIX)
                .and_then(|s| s.parse::<ComponentId>().ok())
            else {
                continue;
            };
            if let Ok(mut c) = serde_json::from_slice::<Component>(&v) {
                c.seen_ms = Timestamp::parse_rfc3339(&c.last_seen).map_or(0, |t| t.0);
                c.persisted_ms = c.seen_ms;
                map.insert(id, c);
            }
        }
        Topology {
            map,
            me: None,
            started_ms: now.0,
        }
    }

    /// Records this appserver itself: the top of the tree, always alive
    /// (kept in memory only: it is written anew at every start).
    pub fn set_self(&mut self, me: &ComponentId, now: Timestamp) {
        self.me = Some(me.clone());
        let ts = now.to_rfc3339();
        let c = self
            .map
            .entry(me.clone())
            .or_insert_with(|| Component::new(me, ts.clone()));
        c.parent_path.clear();
        c.last_seen = ts.clone();
        c.seen_ms = now.0;
        c.role = Some("appserver".into());
        c.version = Some(rsnet_common::VERSION.to_string());
        c.liveness = Some(Liveness::Alive);
        c.liveness_since = Some(ts);
    }

    fn touch(&mut self, id: &ComponentId, path: Vec<String>, now: Timestamp) -> &mut Component {
        let ts = now.to_rfc3339();
        let c = self
            .map
            .entry(id.clone())
            .or_insert_with(|| Component::new(id, ts.clone()));
        if c.parent_path != path {
            c.parent_path = path;
            c.persisted_ms = 0;
        }
        c.last_seen = ts;
        c.seen_ms = now.0;
        c
    }

    fn persist(c: &mut Component, now: Timestamp, force: bool, out: &mut Vec<(String, Vec<u8>)>) {
        if force || c.persisted_ms == 0 || now.0 >= c.persisted_ms + PERSIST_EVERY_MS {
            c.persisted_ms = now.0.max(1);
            if let Ok(v) = serde_json::to_vec(c) {
                out.push((format!("{PREFIX}{}", c.id), v));
            }
        }
    }

    /// Records what a stored message tells about the tree: its `header`
    /// (who sent it, through whom, which version) and, for a heartbeat,
    /// its `content` (the status tree). Returns KV writes to persist in
    /// the message's commit.
    pub fn learn(
        &mut self,
        header: &Header,
        content: &Content,
        now: Timestamp,
        out: &mut Vec<(String, Vec<u8>)>,
    ) {
        let Some(src) = header.source() else { return };
        let hops: Vec<String> = header.routing.iter().map(|h| h.id.to_string()).collect();
        for (i, hop) in header.routing.iter().enumerate() {
            if hop.id != src.origin {
                let c = self.touch(&hop.id, hops[i + 1..].to_vec(), now);
                Self::persist(c, now, false, out);
            }
        }
        let path: Vec<String> = hops
            .into_iter()
            .filter(|h| *h != src.origin.as_str())
            .collect();
        let hb = header.class == heartbeat::CLASS
            && header.subclass.as_deref() == Some(heartbeat::HEARTBEAT);
        let c = self.touch(&src.origin, path, now);
        let mut force = false;
        if let Some(v) = &src.version {
            if c.version.as_ref() != Some(v) {
                c.version = Some(v.clone());
                force = true;
            }
        }
        if hb {
            let ts = now.to_rfc3339();
            c.last_heartbeat = Some(ts.clone());
            force = true;
            match StatusTree::of(content) {
                // A tree about another component is not this one's.
                Some(Ok(tree)) if tree.id == src.origin => {
                    // Only this appserver is the appserver: a node that
                    // says it is one is taken for no role at all.
                    c.role = ["proxy", "mlm"]
                        .contains(&tree.role.as_str())
                        .then(|| tree.role.clone());
                    if tree.interval_s > 0 && c.liveness.is_none() {
                        c.liveness = Some(Liveness::Alive);
                        c.liveness_since = Some(ts);
                    }
                    c.status = Some(tree);
                }
                Some(Ok(tree)) => {
                    tracing::warn!(from = %src.origin, about = %tree.id, "status tree about another component ignored");
                }
                Some(Err(e)) => {
                    tracing::warn!(from = %src.origin, error = %e, "status tree does not read; kept the last one");
                }
                None => {}
            }
        }
        Self::persist(c, now, force, out);
    }

    /// The liveness changes due at `now`: components silent for more than
    /// `missed` of their heartbeat intervals turn stale, stale ones heard
    /// since turn alive. The changes are made here (the caller stores
    /// them); [`Topology::undo`] takes one back if that fails.
    pub fn judge(&mut self, now: Timestamp, missed: u32) -> Vec<Change> {
        let mut changes = Vec::new();
        for (id, c) in &mut self.map {
            let interval_s = c.interval_s();
            let (Some(state), true) = (c.liveness, interval_s > 0) else {
                continue;
            };
            if self.me.as_ref() == Some(id) {
                continue;
            }
            let since_ms = c
                .liveness_since
                .as_deref()
                .and_then(Timestamp::parse_rfc3339)
                .map_or(0, |t| t.0);
            let heard_ms = c.seen_ms.max(self.started_ms);
            let allowance_ms = interval_s
                .saturating_mul(1000)
                .saturating_mul(u64::from(missed));
            let silent_ms = now.0.saturating_sub(heard_ms);
            let (to, silent_ms) = match state {
                Liveness::Alive if silent_ms > allowance_ms => (Liveness::Stale, silent_ms),
                Liveness::Stale if c.seen_ms > since_ms => {
                    (Liveness::Alive, c.seen_ms.saturating_sub(since_ms))
                }
                _ => continue,
            };
            c.liveness = Some(to);
            let was_since = c.liveness_since.replace(now.to_rfc3339());
            c.persisted_ms = now.0.max(1);
            let Ok(v) = serde_json::to_vec(c) else {
                continue;
            };
            changes.push(Change {
                id: id.clone(),
                to,
                silent_ms,
                interval_s,
                record: (format!("{PREFIX}{id}"), v),
                was_since,
            });
        }
        changes.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        changes
    }

    /// Takes back a change [`Topology::judge`] made, whose commit failed:
    /// it is found again at the next judgement.
    pub fn undo(&mut self, change: &Change) {
        if let Some(c) = self.map.get_mut(&change.id) {
            c.liveness = Some(match change.to {
                Liveness::Alive => Liveness::Stale,
                Liveness::Stale => Liveness::Alive,
            });
            c.liveness_since = change.was_since.clone();
        }
    }

    /// How many components are stale now.
    pub fn stale(&self) -> usize {
        self.map
            .values()
            .filter(|c| c.liveness == Some(Liveness::Stale))
            .count()
    }

    /// All components, sorted by ID.
    pub fn list(&self) -> Vec<Component> {
        let mut v: Vec<Component> = self.map.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsnet_common::model::Message;

    fn heartbeat(id: &str, via: &str, interval_s: u64) -> Message {
        let id: ComponentId = id.parse().unwrap();
        heartbeat::StatusTree::new(id.clone(), "proxy", 1, interval_s)
            .heartbeat()
            .with_hop(&id)
            .with_hop(&via.parse().unwrap())
    }

    fn learn(t: &mut Topology, m: &Message, at: u64) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        t.learn(&m.header, &m.content, Timestamp(at), &mut out);
        out
    }

    #[test]
    fn a_heartbeat_teaches_role_version_interval_and_tree() {
        let mut t = Topology::load(vec![], Timestamp(0));
        let out = learn(&mut t, &heartbeat("acme.p1", "acme.mlm1", 10), 1_000);
        let list = t.list();
        let p1 = list.iter().find(|c| c.id == "acme.p1").unwrap();
        assert_eq!(p1.role.as_deref(), Some("proxy"));
        assert_eq!(p1.version.as_deref(), Some(rsnet_common::VERSION));
        assert_eq!(p1.liveness, Some(Liveness::Alive));
        assert_eq!(p1.interval_s(), 10);
        assert_eq!(p1.parent_path, vec!["acme.mlm1".to_string()]);
        assert!(out.iter().any(|(k, _)| k == "component/acme.p1"));
        // The MLM on the path is known but not judged: it promised nothing yet.
        let mlm = list.iter().find(|c| c.id == "acme.mlm1").unwrap();
        assert_eq!(mlm.liveness, None);
    }

    #[test]
    fn silence_past_the_allowance_is_one_stale_change_and_hearing_again_one_recovery() {
        let mut t = Topology::load(vec![], Timestamp(0));
        learn(&mut t, &heartbeat("acme.p1", "acme.mlm1", 10), 1_000);
        assert!(
            t.judge(Timestamp(21_000), 2).is_empty(),
            "within 2 intervals"
        );
        let c = t.judge(Timestamp(21_001), 2);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].id.as_str(), c[0].to), ("acme.p1", Liveness::Stale));
        assert_eq!(c[0].silent_ms, 20_001);
        assert!(t.judge(Timestamp(40_000), 2).is_empty(), "reported once");
        learn(&mut t, &heartbeat("acme.p1", "acme.mlm1", 10), 50_000);
        let c = t.judge(Timestamp(50_100), 2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].to, Liveness::Alive);
        assert!(t.judge(Timestamp(50_200), 2).is_empty());
    }

    #[test]
    fn a_restart_keeps_states_and_judges_nobody_for_its_own_downtime() {
        let mut t = Topology::load(vec![], Timestamp(0));
        learn(&mut t, &heartbeat("acme.p1", "acme.mlm1", 10), 1_000);
        learn(&mut t, &heartbeat("acme.p2", "acme.mlm1", 10), 1_000);
        let c = t.judge(Timestamp(30_000), 2);
        assert_eq!(c.len(), 2);
        // p2 came back before the appserver went down.
        learn(&mut t, &heartbeat("acme.p2", "acme.mlm1", 10), 31_000);
        let mut saved: Vec<_> = t
            .judge(Timestamp(31_500), 2)
            .into_iter()
            .map(|c| c.record)
            .collect();
        saved.push(c[0].record.clone());
        // Down for an hour; back up: p1 still stale (no new event), p2 has
        // its allowance from the restart.
        let start = 3_600_000;
        let mut t = Topology::load(saved, Timestamp(start));
        assert!(t.judge(Timestamp(start + 20_000), 2).is_empty());
        let c = t.judge(Timestamp(start + 20_001), 2);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].id.as_str(), c[0].to), ("acme.p2", Liveness::Stale));
    }

    #[test]
    fn a_failed_commit_is_undone_and_found_again() {
        let mut t = Topology::load(vec![], Timestamp(0));
        learn(&mut t, &heartbeat("acme.p1", "acme.mlm1", 1), 1_000);
        let c = t.judge(Timestamp(5_000), 2);
        t.undo(&c[0]);
        assert_eq!(t.judge(Timestamp(5_100), 2).len(), 1);
    }

    #[test]
    fn a_node_that_says_it_is_the_appserver_is_still_judged() {
        let mut t = Topology::load(vec![], Timestamp(0));
        t.set_self(&"provider.app".parse().unwrap(), Timestamp(0));
        let id: ComponentId = "acme.p1".parse().unwrap();
        let liar = heartbeat::StatusTree::new(id.clone(), "appserver", 1, 10)
            .heartbeat()
            .with_hop(&id);
        learn(&mut t, &liar, 1_000);
        let list = t.list();
        let p1 = list.iter().find(|c| c.id == "acme.p1").unwrap();
        assert_eq!(p1.role, None);
        let roots: Vec<_> = list
            .iter()
            .filter(|c| c.role.as_deref() == Some("appserver"))
            .collect();
        assert_eq!(roots.len(), 1, "{roots:?}");
        let c = t.judge(Timestamp(30_000), 2);
        assert_eq!(c.len(), 1, "the liar goes stale, the appserver never does");
        assert_eq!(c[0].id.as_str(), "acme.p1");
    }

    #[test]
    fn a_tree_about_another_component_teaches_nothing() {
        let mut t = Topology::load(vec![], Timestamp(0));
        let mut m = heartbeat("acme.p2", "acme.mlm1", 10);
        if let rsnet_common::model::Direction::Source(s) = &mut m.header.direction {
            s.origin = "acme.p1".parse().unwrap();
        }
        learn(&mut t, &m, 1_000);
        let p1 = t.list().into_iter().find(|c| c.id == "acme.p1").unwrap();
        assert_eq!((p1.status, p1.liveness), (None, None));
    }
}
