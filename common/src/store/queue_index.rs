//! The embedded backend's working set of its named queues: every queued
//! record (bounded by the queues' capacity), its lease, and the received
//! marks, mirrored from what is durable so that leasing and looking up
//! never touch the disk. Rebuilt from the tables at open; leases start
//! empty then (everything unacknowledged is handed out again).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{is_pseudo, Leased, QueueStats, Readiness, SpoolKey, SpoolRecord, StoreError};
use crate::id::MessageId;
use crate::model::Timestamp;

struct Slot {
    record: SpoolRecord,
    lease_until: Option<Timestamp>,
}

#[derive(Default)]
struct Queue {
    entries: BTreeMap<SpoolKey, Slot>,
    by_id: HashMap<MessageId, SpoolKey>,
    bytes: u64,
}

impl Queue {
    fn due(&self, now: Timestamp) -> impl Iterator<Item = (&SpoolKey, &Slot)> {
        self.entries
            .iter()
            .filter(move |(_, s)| s.lease_until.is_none_or(|t| t <= now))
    }
}

/// See the module docs.
#[derive(Default)]
pub(super) struct QueueIndex {
    queues: HashMap<String, Queue>,
    seen: HashMap<MessageId, Timestamp>,
    bytes: u64,
}

/// An offer checked against the index: what to write, or why not.
pub(super) enum Planned {
    /// Write these records (and the mark); the queues named were at
    /// their capacity, their records are left out.
    Write(Vec<(String, SpoolRecord)>, Vec<String>),
    /// Already received.
    Duplicate,
    /// Over capacity.
    Full(StoreError),
}

/// What a commit in progress has already taken, so offers in one commit
/// see each other.
#[derive(Default)]
pub(super) struct Pending {
    marked: HashSet<MessageId>,
    pushed: HashSet<(String, MessageId)>,
    bytes: u64,
    per_queue: HashMap<String, u64>,
}

impl QueueIndex {
    pub(super) fn insert(&mut self, queue: String, key: SpoolKey, record: SpoolRecord) {
        self.bytes += record.size();
        let q = self.queues.entry(queue).or_default();
        q.bytes += record.size();
        q.by_id.insert(record.id, key);
        q.entries.insert(
            key,
            Slot {
                record,
                lease_until: None,
            },
        );
    }

    pub(super) fn mark(&mut self, id: MessageId, until: Timestamp) {
        self.seen.insert(id, until);
    }

    /// Removes `id` from `queue`; its key if it was there.
    pub(super) fn remove(&mut self, queue: &str, id: &MessageId) -> Option<SpoolKey> {
        let q = self.queues.get_mut(queue)?;
        let key = q.by_id.remove(id)?;
        if let Some(slot) = q.entries.remove(&key) {
            self.bytes -= slot.record.size();
            q.bytes -= slot.record.size();
        }
        if q.entries.is_empty() {
            self.queues.remove(queue);
        }
        Some(key)
    }

    /// Removes the entry at `key` in `queue`, if any.
    pub(super) fn remove_key(&mut self, queue: &str, key: &SpoolKey) {
        let id = self
            .queues
            .get(queue)
            .and_then(|q| q.entries.get(key))
            .map(|s| s.record.id);
        if let Some(id) = id {
            self.remove(queue, &id);
        }
    }

    /// Checks an offer against what is held and what `pending` already took.
    pub(super) fn plan(
        &self,
        push: Vec<(String, SpoolRecord)>,
        received: Option<MessageId>,
        capacity: u64,
        queue_capacity: u64,
        now: Timestamp,
        pending: &mut Pending,
    ) -> Planned {
        if let Some(id) = received {
            if self.was_received(&id, now) || pending.marked.contains(&id) {
                return Planned::Duplicate;
            }
        }
        let mut mine = Vec::with_capacity(push.len());
        let mut over = Vec::new();
        let mut size = 0u64;
        let mut per_queue: HashMap<&str, u64> = HashMap::new();
        for (q, r) in &push {
            let held = self
                .queues
                .get(q)
                .is_some_and(|x| x.by_id.contains_key(&r.id));
            if held || pending.pushed.contains(&(q.clone(), r.id)) {
                continue;
            }
            if !is_pseudo(q) {
                let now_held = self.queues.get(q).map_or(0, |x| x.bytes)
                    + pending.per_queue.get(q).copied().unwrap_or(0)
                    + per_queue.get(q.as_str()).copied().unwrap_or(0);
                if now_held + r.size() > queue_capacity {
                    over.push(q.clone());
                    continue;
                }
                *per_queue.entry(q).or_default() += r.size();
            }
            size += r.size();
        }
        for (q, r) in push {
            let held = self
                .queues
                .get(&q)
                .is_some_and(|x| x.by_id.contains_key(&r.id));
            if held || pending.pushed.contains(&(q.clone(), r.id)) || over.contains(&q) {
                continue;
            }
            mine.push((q, r));
        }
        over.sort_unstable();
        over.dedup();
        let used = self.bytes + pending.bytes;
        if used + size > capacity {
            return Planned::Full(StoreError::Full {
                needed: size,
                free: capacity.saturating_sub(used),
                capacity,
            });
        }
        pending.bytes += size;
        for (q, r) in &mine {
            if !is_pseudo(q) {
                *pending.per_queue.entry(q.clone()).or_default() += r.size();
            }
        }
        pending
            .pushed
            .extend(mine.iter().map(|(q, r)| (q.clone(), r.id)));
        if let Some(id) = received {
            pending.marked.insert(id);
        }
        Planned::Write(mine, over)
    }

    pub(super) fn lease(
        &mut self,
        queues: &[&str],
        max_bytes: usize,
        max_items: usize,
        now: Timestamp,
        until: Timestamp,
    ) -> Leased {
        let mut out = Leased::default();
        let mut candidates: Vec<(SpoolKey, usize)> = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            if let Some(x) = self.queues.get(*q) {
                // Entries are in order within a queue: no more than
                // `max_items` of each can make the cut.
                candidates.extend(x.due(now).take(max_items).map(|(k, _)| (*k, i)));
            }
        }
        candidates.sort_unstable();
        let mut bytes = 0usize;
        for (k, qi) in candidates {
            let q = queues[qi];
            if out.records.len() >= max_items {
                break;
            }
            let Some(slot) = self.queues.get_mut(q).and_then(|x| x.entries.get_mut(&k)) else {
                continue;
            };
            if slot.record.expiry.is_some_and(|e| e <= now) {
                let id = slot.record.id;
                out.expired.push((q.to_string(), k, id));
                self.remove(q, &id);
                continue;
            }
            let size = slot.record.size() as usize;
            if !out.records.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            slot.lease_until = Some(until);
            out.records.push(slot.record.clone());
            out.from.push(qi);
        }
        out
    }

    pub(super) fn was_received(&self, id: &MessageId, now: Timestamp) -> bool {
        self.seen.get(id).is_some_and(|until| *until > now)
    }

    pub(super) fn forget_seen(&mut self, now: Timestamp) {
        self.seen.retain(|_, until| *until > now);
    }

    pub(super) fn readiness(&self, queue: Option<&str>, now: Timestamp) -> Readiness {
        let mut r = Readiness::default();
        let mut look = |q: &Queue| {
            for s in q.entries.values() {
                match s.lease_until {
                    Some(t) if t > now => {
                        r.next_lease_end = Some(r.next_lease_end.map_or(t, |n| n.min(t)))
                    }
                    _ => r.ready = true,
                }
            }
        };
        match queue {
            Some(name) => {
                if let Some(q) = self.queues.get(name) {
                    look(q);
                }
            }
            None => self.queues.values().for_each(look),
        }
        r
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.queues
            .keys()
            .filter(|q| !is_pseudo(q))
            .cloned()
            .collect()
    }

    pub(super) fn stats(&self, now: Timestamp) -> QueueStats {
        let mut s = QueueStats {
            bytes: self.bytes,
            queues: self.queues.len() as u64,
            ..Default::default()
        };
        for q in self.queues.values() {
            s.messages += q.entries.len() as u64;
            s.leased += q
                .entries
                .values()
                .filter(|e| e.lease_until.is_some_and(|t| t > now))
                .count() as u64;
        }
        s
    }
}
