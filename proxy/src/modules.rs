//! Integration modules: what integrators register, so that the status tree
//! the proxy sends in its heartbeats is the real one (DESIGN.md §3: proxy →
//! integration modules → support instances).
//!
//! An integrator registers its module by name (`PUT /v1/modules/NAME`),
//! with its version and the keys of the support instances it reports on;
//! the proxy allocates the module an ID under its own (`ID.mN`, kept when
//! the module registers again to change its version or instances, and
//! across restarts; a module deregistered and registered anew gets a new
//! one) and each key its support-instance
//! ID, as a message naming that key would. `DELETE /v1/modules/NAME`
//! deregisters it; its instances stay known (messages may still name them)
//! and fall back under the `local-api` module of the tree, which holds
//! every instance no registered module claims. Every registration is
//! durable before it is answered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rsnet_common::heartbeat::{
    InstanceStatus, ModuleStatus, MAX_FIELD_BYTES, MAX_INSTANCES, MAX_MODULES,
};
use rsnet_common::id::ComponentId;
use rsnet_common::store::{delete_async, put_async, KvStore, StoreError};
use serde::{Deserialize, Serialize};

use crate::instances::Instances;

const PREFIX: &str = "module/";
const NEXT: &str = "module-next";
/// The pseudo-module of instances no registered module claims.
pub const LOCAL_API: &str = "local-api";
/// Most support instances one module may list.
pub const MAX_MODULE_INSTANCES: usize = 1_000;
/// Longest module name.
pub const MAX_NAME_BYTES: usize = 63;

/// A registered module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// The integrator's name for it (`[a-z0-9-]`, 1..=63 bytes).
    pub name: String,
    /// Its ID, allocated by this proxy.
    pub id: ComponentId,
    /// Its software version, if the integrator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The keys of its support instances.
    pub instances: Vec<String>,
}

/// What an integrator sends to register a module.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Its software version.
    #[serde(default)]
    pub version: Option<String>,
    /// The keys of its support instances (as messages name them in
    /// `support_instance`).
    #[serde(default)]
    pub instances: Vec<String>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The input is wrong; the text names the field.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The registry.
pub struct Modules {
    me: ComponentId,
    kv: Arc<dyn KvStore>,
    instances: Arc<Instances>,
    map: Mutex<BTreeMap<String, Module>>,
    /// Registrations are one at a time: two never get one number.
    changing: tokio::sync::Mutex<()>,
}

impl Modules {
    /// Loads the registered modules.
    ///
    /// # Errors
    /// Store failures.
    pub fn load(
        me: ComponentId,
        kv: Arc<dyn KvStore>,
        instances: Arc<Instances>,
    ) -> Result<Modules, StoreError> {
        let map = kv
            .list(PREFIX)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<Module>(&v).ok())
            .map(|m| (m.name.clone(), m))
            .collect();
        Ok(Modules {
            me,
            kv,
            instances,
            map: Mutex::new(map),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Module>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or replaces) module `name`; durable when it answers.
    ///
    /// # Errors
    /// [`Refused::Invalid`] naming the field, or a store failure.
    pub async fn register(&self, name: &str, r: Registration) -> Result<Module, Refused> {
        let bad = |s: String| Err(Refused::Invalid(s));
        if name.is_empty()
            || name.len() > MAX_NAME_BYTES
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad(format!(
                "module name {name:?}: 1-{MAX_NAME_BYTES} of a-z, 0-9 and -"
            ));
        }
        if name == LOCAL_API {
            return bad(format!("module name {LOCAL_API:?} is the proxy's own"));
        }
        if let Some(v) = &r.version {
            if v.is_empty() || v.len() > MAX_FIELD_BYTES || v.chars().any(char::is_control) {
                return bad(format!(
                    "version: 1-{MAX_FIELD_BYTES} bytes without control characters"
                ));
            }
        }
        let keys: BTreeSet<String> = r.instances.into_iter().collect();
        if keys.len() > MAX_MODULE_INSTANCES {
            return bad(format!(
                "instances: {} keys, at most {MAX_MODULE_INSTANCES}",
                keys.len()
            ));
        }
        let _one = self.changing.lock().await;
        let existing = self.lock().get(name).cloned();
        if existing.is_none() && self.lock().len() + 1 >= MAX_MODULES {
            return bad(format!(
                "{} modules registered: at most {}",
                self.lock().len(),
                MAX_MODULES - 1
            ));
        }
        // Each key gets its support-instance ID now (allocated as a
        // message naming it would), so the tree can name it.
        for k in &keys {
            self.instances
                .id_for(k)
                .await
                .map_err(|e| Refused::Invalid(format!("instances: {k:?}: {e}")))?;
        }
        let (id, next) = match existing {
            Some(m) => (m.id, None),
            None => {
                let n = self
                    .kv
                    .get(NEXT)?
                    .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
                    .unwrap_or(1);
                let id = format!("{}.m{n}", self.me)
                    .parse::<ComponentId>()
                    .map_err(|e| Refused::Invalid(format!("module ID: {e}")))?;
                (id, Some(n + 1))
            }
        };
        let m = Module {
            name: name.to_string(),
            id,
            version: r.version,
            instances: keys.into_iter().collect(),
        };
        let mut writes = vec![(
            format!("{PREFIX}{name}"),
            serde_json::to_vec(&m).map_err(|e| Refused::Invalid(e.to_string()))?,
        )];
        if let Some(n) = next {
            writes.push((NEXT.to_string(), n.to_string().into_bytes()));
        }
        put_async(&self.kv, writes).await?;
        self.lock().insert(name.to_string(), m.clone());
        Ok(m)
    }

    /// Deregisters module `name`; false if it was not registered.
    ///
    /// # Errors
    /// Store failures.
    pub async fn deregister(&self, name: &str) -> Result<bool, StoreError> {
        let _one = self.changing.lock().await;
        if !self.lock().contains_key(name) {
            return Ok(false);
        }
        delete_async(&self.kv, vec![format!("{PREFIX}{name}")]).await?;
        self.lock().remove(name);
        Ok(true)
    }

    /// Every registered module.
    pub fn list(&self) -> Vec<Module> {
        self.lock().values().cloned().collect()
    }

    /// The modules of the status tree: each registered one with its
    /// instances, then `local-api` with every instance none claims; at most
    /// [`MAX_INSTANCES`] instances in all (the appserver reads no more).
    pub fn status(&self) -> Vec<ModuleStatus> {
        let all: BTreeMap<String, InstanceStatus> = self
            .instances
            .list()
            .into_iter()
            .map(|i| (i.key.clone(), i))
            .collect();
        let mut left = MAX_INSTANCES;
        let mut claimed = BTreeSet::new();
        let mut out = Vec::new();
        for m in self.lock().values() {
            let instances: Vec<InstanceStatus> = m
                .instances
                .iter()
                .filter_map(|k| all.get(k).cloned())
                .take(left)
                .collect();
            left -= instances.len();
            claimed.extend(m.instances.iter().map(String::as_str).map(str::to_string));
            out.push(ModuleStatus {
                name: m.name.clone(),
                id: Some(m.id.clone()),
                version: m.version.clone(),
                instances,
            });
        }
        let rest: Vec<InstanceStatus> = all
            .into_iter()
            .filter(|(k, _)| !claimed.contains(k))
            .map(|(_, i)| i)
            .take(left)
            .collect();
        out.push(ModuleStatus {
            name: LOCAL_API.into(),
            id: None,
            version: None,
            instances: rest,
        });
        out
    }
}
