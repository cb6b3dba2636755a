//! Which child each ID is reachable through (DESIGN.md §5).
//!
//! An ID says who, never where, so a parent learns routes from what its
//! children send: the authenticated child itself, the origin of every
//! forward message and every hop in its routing list are reachable through
//! that child. The latest word wins, so a proxy that moves to another MLM
//! is re-routed as soon as it is heard there. Routes are persisted (key
//! `route/ID` in the node's KV state) so queued messages can be routed
//! after a restart, before the children speak again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::envelope::Item;
use crate::id::ComponentId;
use crate::store::KvStore;

/// KV key prefix.
pub const PREFIX: &str = "route/";

/// The route table of one parent node.
pub struct Routes {
    me: ComponentId,
    map: RwLock<HashMap<ComponentId, ComponentId>>,
    kv: Arc<dyn KvStore>,
}

impl Routes {
    /// Loads the persisted routes of node `me`.
    ///
    /// # Errors
    /// If the KV state cannot be read.
    pub fn open(me: ComponentId, kv: Arc<dyn KvStore>) -> crate::store::Result<Routes> {
        let mut map = HashMap::new();
        for (k, v) in kv.list(PREFIX)? {
            let id = k.strip_prefix(PREFIX).and_then(|s| s.parse().ok());
            let via = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
            if let (Some(id), Some(via)) = (id, via) {
                map.insert(id, via);
            }
        }
        Ok(Routes {
            me,
            map: RwLock::new(map),
            kv,
        })
    }

    /// Learns from a POST by `child` carrying `items`; persists what changed
    /// (in the background: a route lost in a crash is learned again from the
    /// child's next heartbeat).
    pub fn learn(&self, child: &ComponentId, items: &[Item]) {
        let mut heard: Vec<&ComponentId> = vec![child];
        for i in items {
            if let Some(s) = i.header.source() {
                heard.push(&s.origin);
            }
            heard.extend(i.header.routing.iter().map(|h| &h.id));
        }
        let changed: Vec<&ComponentId> = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            heard
                .into_iter()
                .filter(|id| **id != self.me && map.get(*id) != Some(child))
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        let mut pairs = Vec::with_capacity(changed.len());
        {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            for id in changed {
                if let Some(old) = map.insert(id.clone(), child.clone()) {
                    if old != *child {
                        tracing::info!(%id, from = %old, to = %child, "route moved");
                    }
                }
                pairs.push((format!("{PREFIX}{id}"), child.as_str().as_bytes().to_vec()));
            }
        }
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = kv.put(pairs) {
                tracing::warn!(error = %e, "routes not persisted; relearned from traffic");
            }
        });
    }

    /// The child `dest` is reachable through: its own route, else the route
    /// of its nearest known ancestor (`acme.p7` for `acme.p7.si12`).
    pub fn resolve(&self, dest: &ComponentId) -> Option<ComponentId> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut at = Some(dest.clone());
        while let Some(id) = at {
            if let Some(via) = map.get(&id) {
                return Some(via.clone());
            }
            at = id.parent();
        }
        None
    }
}
