//! Every component the appserver has heard of, and where it sits.
//!
//! Learned from each stored message: the origin and every hop in its routing
//! list are components; each one's parent path is the hops above it. The map
//! lives in memory and is persisted (key `component/ID`) in the same
//! transaction as the messages that changed it, so it survives restarts.

use std::collections::HashMap;

use rsnet_common::heartbeat;
use rsnet_common::id::ComponentId;
use rsnet_common::model::{Header, Timestamp};
use serde::{Deserialize, Serialize};

/// Key prefix in the KV state.
pub const PREFIX: &str = "component/";
/// A `last_seen` change alone is persisted at most this often (ms).
const PERSIST_EVERY_MS: u64 = 30_000;

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
    #[serde(skip)]
    persisted_ms: u64,
}

/// The topology map.
#[derive(Default)]
pub struct Topology {
    map: HashMap<ComponentId, Component>,
}

impl Topology {
    /// Loads persisted components.
    pub fn load(pairs: Vec<(String, Vec<u8>)>) -> Self {
        let mut map = HashMap::new();
        for (k, v) in pairs {
            let Some(id) = k
                .strip_prefix(PREFIX)
                .and_then(|s| s.parse::<ComponentId>().ok())
            else {
                continue;
            };
            if let Ok(c) = serde_json::from_slice::<Component>(&v) {
                map.insert(id, c);
            }
        }
        Topology { map }
    }

    fn touch(
        &mut self,
        id: &ComponentId,
        path: Vec<String>,
        now: Timestamp,
        heartbeat: bool,
        out: &mut Vec<(String, Vec<u8>)>,
    ) {
        let ts = now.to_rfc3339();
        let c = self.map.entry(id.clone()).or_insert_with(|| Component {
            id: id.to_string(),
            parent_path: Vec::new(),
            last_seen: ts.clone(),
            last_heartbeat: None,
            persisted_ms: 0,
        });
        let changed = c.parent_path != path
            || heartbeat
            || c.persisted_ms == 0
            || now.0 >= c.persisted_ms + PERSIST_EVERY_MS;
        c.parent_path = path;
        c.last_seen = ts.clone();
        if heartbeat {
            c.last_heartbeat = Some(ts);
        }
        if changed {
            c.persisted_ms = now.0;
            if let Ok(v) = serde_json::to_vec(c) {
                out.push((format!("{PREFIX}{id}"), v));
            }
        }
    }

    /// Records what `header` tells about the tree; returns KV writes to persist.
    pub fn learn(&mut self, header: &Header, now: Timestamp, out: &mut Vec<(String, Vec<u8>)>) {
        let Some(src) = header.source() else { return };
        let hops: Vec<String> = header.routing.iter().map(|h| h.id.to_string()).collect();
        for (i, hop) in header.routing.iter().enumerate() {
            if hop.id != src.origin {
                self.touch(&hop.id, hops[i + 1..].to_vec(), now, false, out);
            }
        }
        let path: Vec<String> = hops
            .into_iter()
            .filter(|h| *h != src.origin.as_str())
            .collect();
        let hb = header.class == heartbeat::CLASS
            && header.subclass.as_deref() == Some(heartbeat::HEARTBEAT);
        self.touch(&src.origin, path, now, hb, out);
    }

    /// All components, sorted by ID.
    pub fn list(&self) -> Vec<Component> {
        let mut v: Vec<Component> = self.map.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}
