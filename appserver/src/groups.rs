//! Named groups of destinations (`group:NAME`, DESIGN.md §2, §6).
//!
//! A group is a list of component or support-instance IDs of one customer
//! (groups never span customers), kept in the KV state under `group/NAME`.
//! The appserver expands a group when a message is sent to it; membership
//! changes affect only later messages.

use std::sync::Arc;

use rsnet_common::id::{ComponentId, GroupName};
use rsnet_common::limits::MAX_DESTINATIONS;
use rsnet_common::store::{KvStore, StoreError};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// KV key prefix.
pub const PREFIX: &str = "group/";

/// A group as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// `group:NAME`.
    pub name: String,
    /// The customer all members belong to.
    pub customer: String,
    /// Members, sorted, without repeats.
    pub members: Vec<String>,
}

/// The group table.
pub struct Groups {
    kv: Arc<dyn KvStore>,
}

impl Groups {
    /// Over the node's KV state.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Groups { kv }
    }

    /// Creates or replaces a group.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad member; store failures.
    pub async fn put(&self, name: &GroupName, members: &[String]) -> Result<Group, Error> {
        if members.is_empty() {
            return Err(Error::Invalid(
                "members: a group needs at least one member".into(),
            ));
        }
        if members.len() > MAX_DESTINATIONS {
            return Err(Error::Invalid(format!(
                "members: more than {MAX_DESTINATIONS}"
            )));
        }
        let mut ids: Vec<ComponentId> = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let id: ComponentId = m
                .parse()
                .map_err(|e| Error::Invalid(format!("members[{i}]: {m:?}: {e}")))?;
            if !id.as_str().contains('.') {
                return Err(Error::Invalid(format!(
                    "members[{i}]: {m:?} is a customer, not a component"
                )));
            }
            ids.push(id);
        }
        let customer = ids[0].customer().to_string();
        if let Some(other) = ids.iter().find(|i| i.customer() != customer) {
            return Err(Error::Invalid(format!(
                "members: {other} belongs to customer {}, not {customer}: groups never span customers",
                other.customer()
            )));
        }
        let mut members: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        members.sort();
        members.dedup();
        let g = Group {
            name: name.to_string(),
            customer,
            members,
        };
        let v = serde_json::to_vec(&g).map_err(|e| Error::Invalid(e.to_string()))?;
        rsnet_common::store::put_async(&self.kv, vec![(key(name), v)]).await?;
        Ok(g)
    }

    /// The group, if it exists.
    ///
    /// # Errors
    /// Store failures.
    pub fn get(&self, name: &GroupName) -> Result<Option<Group>, StoreError> {
        Ok(self
            .kv
            .get(&key(name))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Deletes a group; true if it existed.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete(&self, name: &GroupName) -> Result<bool, StoreError> {
        let existed = self.kv.get(&key(name))?.is_some();
        if existed {
            rsnet_common::store::delete_async(&self.kv, vec![key(name)]).await?;
        }
        Ok(existed)
    }

    /// Every group, by name.
    ///
    /// # Errors
    /// Store failures.
    pub fn list(&self) -> Result<Vec<Group>, StoreError> {
        Ok(self
            .kv
            .list(PREFIX)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }
}

fn key(name: &GroupName) -> String {
    format!("{PREFIX}{}", name.name())
}
