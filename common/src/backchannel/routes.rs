//! Which child each ID is reachable through (DESIGN.md §5).
//!
//! An ID says who, never where, so a parent learns routes from what its
//! children send: the authenticated child itself, the origin of every
//! forward message and every hop in its routing list are reachable through
//! that child. Only screened traffic is learned from
//! ([`crate::pipeline::Screen`] has checked every origin and hop against the
//! child's certificate), so a child can only claim IDs inside its own subtree.
//! The latest word wins, so a proxy that moves to another MLM is re-routed
//! as soon as it is heard there.
//!
//! An entry is made only where resolution does not already give the child
//! (support instances resolve through their proxy), and one child may hold
//! at most [`MAX_ROUTES_PER_CHILD`] entries: beyond that, new IDs are not
//! learned (counted and logged), so no child can make its parent's table
//! grow without bound.
//!
//! Routes are persisted (key `route/ID` in the node's KV state) so queued
//! messages can be routed after a restart, before the children speak again.
//! [`Routes::learn`] returns the changed entries; the caller commits them with
//! the exchange that taught them (the appserver in the same transaction as
//! the stored messages, an MLM before it answers the child).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::envelope::Item;
use crate::id::ComponentId;
use crate::limits::MAX_ROUTES_PER_CHILD;
use crate::store::KvStore;

/// KV key prefix.
pub const PREFIX: &str = "route/";

#[derive(Default)]
struct Table {
    via: HashMap<ComponentId, ComponentId>,
    per_child: HashMap<ComponentId, usize>,
}

impl Table {
    fn resolve(&self, dest: &ComponentId) -> Option<&ComponentId> {
        if let Some(v) = self.via.get(dest) {
            return Some(v);
        }
        let mut at = dest.parent();
        while let Some(id) = at {
            if let Some(v) = self.via.get(&id) {
                return Some(v);
            }
            at = id.parent();
        }
        None
    }

    /// Sets `id → child`; false if the child is at its cap.
    fn set(&mut self, id: &ComponentId, child: &ComponentId, cap: usize) -> bool {
        if self.per_child.get(child).copied().unwrap_or(0) >= cap {
            return false;
        }
        *self.per_child.entry(child.clone()).or_default() += 1;
        if let Some(old) = self.via.insert(id.clone(), child.clone()) {
            if let Some(n) = self.per_child.get_mut(&old) {
                *n = n.saturating_sub(1);
            }
            tracing::info!(%id, from = %old, to = %child, "route moved");
        }
        true
    }
}

/// The route table of one parent node.
pub struct Routes {
    me: ComponentId,
    table: RwLock<Table>,
    cap: usize,
    refused: AtomicU64,
}

impl Routes {
    /// Loads the persisted routes of node `me`.
    ///
    /// # Errors
    /// If the KV state cannot be read.
    pub fn open(me: ComponentId, kv: Arc<dyn KvStore>) -> crate::store::Result<Routes> {
        Self::open_capped(me, kv, MAX_ROUTES_PER_CHILD)
    }

    fn open_capped(
        me: ComponentId,
        kv: Arc<dyn KvStore>,
        cap: usize,
    ) -> crate::store::Result<Routes> {
        let mut t = Table::default();
        for (k, v) in kv.list(PREFIX)? {
            let id = k.strip_prefix(PREFIX).and_then(|s| s.parse().ok());
            let via = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
            if let (Some(id), Some(via)) = (id, via) {
                t.set(&id, &via, cap);
            }
        }
        Ok(Routes {
            me,
            table: RwLock::new(t),
            cap,
            refused: AtomicU64::new(0),
        })
    }

    /// Learns from screened `items` of a POST by `child`; returns the
    /// changed entries as KV pairs for the caller to commit.
    pub fn learn(&self, child: &ComponentId, items: &[Item]) -> Vec<(String, Vec<u8>)> {
        let mut heard: Vec<&ComponentId> = vec![child];
        for i in items {
            if let Some(s) = i.header.source() {
                heard.push(&s.origin);
            }
            heard.extend(i.header.routing.iter().map(|h| &h.id));
        }
        let new: Vec<&ComponentId> = {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            heard
                .into_iter()
                .filter(|id| **id != self.me && t.resolve(id) != Some(child))
                .collect()
        };
        if new.is_empty() {
            return Vec::new();
        }
        let mut pairs = Vec::with_capacity(new.len());
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        for id in new {
            if t.resolve(id) == Some(child) {
                continue; // a repeat within this batch
            }
            if t.set(id, child, self.cap) {
                pairs.push((format!("{PREFIX}{id}"), child.as_str().as_bytes().to_vec()));
            } else if self
                .refused
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
            {
                tracing::warn!(%child, %id, cap = self.cap, "child holds the most routes allowed; not learned");
            }
        }
        pairs
    }

    /// IDs not learned because their child was at its cap, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The child `dest` is reachable through: its own route, else the route
    /// of its nearest known ancestor (`acme.p7` for `acme.p7.si12`).
    pub fn resolve(&self, dest: &ComponentId) -> Option<ComponentId> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.resolve(dest).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::envelope::test_item as item;

    fn id(s: &str) -> ComponentId {
        s.parse().unwrap()
    }

    struct NoKv;
    impl KvStore for NoKv {
        fn get(&self, _: &str) -> crate::store::Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn list(&self, _: &str) -> crate::store::Result<Vec<(String, Vec<u8>)>> {
            Ok(Vec::new())
        }
        fn commit(&self, _: Vec<(String, Vec<u8>)>, _: &[String]) -> crate::store::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn support_instances_need_no_entry_and_a_move_is_one_change() {
        let r = Routes::open(id("provider.app"), Arc::new(NoKv)).unwrap();
        let (mlm1, mlm2) = (id("acme.mlm1"), id("acme.mlm2"));
        let changed = r.learn(
            &mlm1,
            &[
                item("acme.p1.si3", &["acme.p1", "acme.mlm1"]),
                item("acme.p1", &["acme.p1", "acme.mlm1"]),
            ],
        );
        let keys: Vec<&str> = changed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["route/acme.mlm1", "route/acme.p1.si3", "route/acme.p1"]
        );
        // Nothing new the second time.
        assert!(r
            .learn(&mlm1, &[item("acme.p1.si3", &["acme.p1", "acme.mlm1"])])
            .is_empty());
        assert_eq!(r.resolve(&id("acme.p1.si9")), Some(mlm1.clone()));
        // The proxy moves: its entry follows.
        let moved = r.learn(&mlm2, &[item("acme.p1", &["acme.p1", "acme.mlm2"])]);
        assert!(moved
            .iter()
            .any(|(k, v)| k == "route/acme.p1" && v == b"acme.mlm2"));
        assert_eq!(r.resolve(&id("acme.p1")), Some(mlm2));
    }

    #[test]
    fn a_child_cannot_grow_the_table_past_its_cap() {
        let r = Routes::open_capped(id("provider.app"), Arc::new(NoKv), 10).unwrap();
        let mlm = id("acme.mlm1");
        let items: Vec<Item> = (0..50).map(|i| item(&format!("acme.p{i}"), &[])).collect();
        let changed = r.learn(&mlm, &items);
        assert_eq!(changed.len(), 10);
        assert_eq!(r.refused(), 41);
        // Another child still learns.
        assert_eq!(r.learn(&id("acme.mlm2"), &[]).len(), 1);
    }
}
