//! Support-instance IDs: stable, persisted, keyed by the integrator's own name.
//!
//! An integrator names the thing it reports on however it likes (hostname,
//! IP, a database SID). The proxy maps each distinct key to the next free
//! `ID.siN` once, stores the mapping durably, and returns the same ID for
//! the same key forever after, across restarts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rsnet_common::heartbeat::InstanceStatus;
use rsnet_common::id::ComponentId;
use rsnet_common::store::{delete_async, put_async, KvStore, StoreError};

const PREFIX: &str = "si/";
const NEXT: &str = "si-next";
const DISABLED: &str = "si-disabled/";
/// Longest integrator key accepted.
pub const MAX_KEY_BYTES: usize = 255;

/// The allocator.
pub struct Instances {
    me: ComponentId,
    kv: Arc<dyn KvStore>,
    map: Mutex<(HashMap<String, ComponentId>, u64)>,
    /// Allocations are one at a time, so two keys never get one number.
    allocating: tokio::sync::Mutex<()>,
    disabled: Mutex<HashSet<ComponentId>>,
}

impl Instances {
    /// Loads the persisted mapping.
    ///
    /// # Errors
    /// Store failures.
    pub fn load(me: ComponentId, kv: Arc<dyn KvStore>) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for (k, v) in kv.list(PREFIX)? {
            if let (Some(key), Ok(id)) = (
                k.strip_prefix(PREFIX),
                String::from_utf8_lossy(&v).parse::<ComponentId>(),
            ) {
                map.insert(key.to_string(), id);
            }
        }
        let next = kv
            .get(NEXT)?
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(1);
        let disabled = kv
            .list(DISABLED)?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(DISABLED)?.parse().ok())
            .collect();
        Ok(Instances {
            me,
            kv,
            map: Mutex::new((map, next)),
            allocating: tokio::sync::Mutex::new(()),
            disabled: Mutex::new(disabled),
        })
    }

    /// The ID for `key`, allocating (and persisting, with fsync) a new one if needed.
    ///
    /// # Errors
    /// A bad key (empty, too long, control characters) or a store failure.
    pub async fn id_for(&self, key: &str) -> Result<ComponentId, String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
            return Err(format!(
                "support_instance: key must be 1-{MAX_KEY_BYTES} bytes without control characters"
            ));
        }
        if let Some(id) = self.known(key) {
            return Ok(id);
        }
        let _one = self.allocating.lock().await;
        if let Some(id) = self.known(key) {
            return Ok(id);
        }
        let n = self.lock().1;
        let id = self
            .me
            .child(&format!("si{n}"))
            .map_err(|e| e.to_string())?;
        let pairs = vec![
            (format!("{PREFIX}{key}"), id.to_string().into_bytes()),
            (NEXT.into(), (n + 1).to_string().into_bytes()),
        ];
        put_async(&self.kv, pairs)
            .await
            .map_err(|e| e.to_string())?;
        let mut g = self.lock();
        g.0.insert(key.to_string(), id.clone());
        g.1 = n + 1;
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, ComponentId>, u64)> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self, key: &str) -> Option<ComponentId> {
        self.lock().0.get(key).cloned()
    }

    /// Enables or disables a known instance (a control action); durable.
    ///
    /// # Errors
    /// An unknown instance or a store failure.
    pub async fn set_enabled(&self, id: &ComponentId, on: bool) -> Result<(), String> {
        let known = self.lock().0.values().any(|x| x == id);
        if !known {
            return Err(format!("no support instance {id} on this proxy"));
        }
        let key = format!("{DISABLED}{id}");
        let r = if on {
            delete_async(&self.kv, vec![key]).await
        } else {
            put_async(&self.kv, vec![(key, Vec::new())]).await
        };
        r.map_err(|e| e.to_string())?;
        let mut d = self.disabled.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            d.remove(id);
        } else {
            d.insert(id.clone());
        }
        Ok(())
    }

    /// True unless an operator disabled the instance.
    pub fn is_enabled(&self, id: &ComponentId) -> bool {
        !self
            .disabled
            .lock()
            .map(|d| d.contains(id))
            .unwrap_or(false)
    }

    /// Every instance, for the status tree.
    pub fn list(&self) -> Vec<InstanceStatus> {
        let Ok(g) = self.map.lock() else {
            return vec![];
        };
        let mut v: Vec<InstanceStatus> =
            g.0.iter()
                .map(|(k, id)| InstanceStatus {
                    id: id.clone(),
                    key: k.clone(),
                    state: if self.is_enabled(id) {
                        "enabled"
                    } else {
                        "disabled"
                    }
                    .into(),
                })
                .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}
