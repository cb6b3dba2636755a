//! Dead letters: messages a parent rejected for good.
//!
//! A sender never resends what its parent rejected without a retry-after
//! (invalid, not allowed, too large to travel): that would stall everything
//! behind it. It leaves the spool, and a record of it stays here, durable
//! (key `dead/MSGID` in the node's KV state) so an operator can see what was
//! given up and why: `rsnet-proxy status`, `GET /v1/status`, and the
//! `rsnet_forward_dead_letters_total` counter. The newest
//! [`MAX_DEAD_LETTERS`] are kept; older records are pruned.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::id::MessageId;
use crate::metrics::{Counter, Registry};
use crate::model::Timestamp;
use crate::store::{KvStore, StoreError};

/// KV key prefix.
pub const PREFIX: &str = "dead/";
/// Dead letters kept; the oldest beyond this are pruned.
pub const MAX_DEAD_LETTERS: usize = 1000;

/// One message given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its message ID.
    pub id: String,
    /// Its class (and subclass), if its header could be read.
    pub class: Option<String>,
    /// Its subclass.
    pub subclass: Option<String>,
    /// Encoded bytes (header and content).
    pub bytes: u64,
    /// The parent's reason.
    pub reason: String,
    /// When it was given up (RFC 3339).
    pub at: String,
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    /// Dead letters held.
    pub count: usize,
    /// The newest first, at most 20.
    pub recent: Vec<DeadLetter>,
}

/// A node's dead letters.
pub struct DeadLetters {
    kv: Arc<dyn KvStore>,
    held: Mutex<BTreeMap<(String, String), DeadLetter>>,
    counter: Counter,
}

impl DeadLetters {
    /// Loads what is held, registering the counter.
    ///
    /// # Errors
    /// If the KV state cannot be read.
    pub fn open(kv: Arc<dyn KvStore>, metrics: &Registry) -> Result<Arc<DeadLetters>, StoreError> {
        let mut held = BTreeMap::new();
        for (_, v) in kv.list(PREFIX)? {
            if let Ok(d) = serde_json::from_slice::<DeadLetter>(&v) {
                held.insert((d.at.clone(), d.id.clone()), d);
            }
        }
        Ok(Arc::new(DeadLetters {
            kv,
            held: Mutex::new(held),
            counter: metrics.counter(
                "rsnet_forward_dead_letters_total",
                "messages the parent rejected for good (removed from the spool, kept as dead letters)",
            ),
        }))
    }

    /// A dead letter for message `id` with `reason`.
    pub fn letter(id: MessageId, header: &[u8], bytes: usize, reason: &str) -> DeadLetter {
        let h = crate::envelope::wire::decode_header(header).ok();
        DeadLetter {
            id: id.to_string(),
            class: h.as_ref().map(|h| h.class.clone()),
            subclass: h.and_then(|h| h.subclass),
            bytes: bytes as u64,
            reason: reason.to_string(),
            at: Timestamp::now().to_rfc3339(),
        }
    }

    /// Records `letters` durably (and prunes the oldest beyond
    /// [`MAX_DEAD_LETTERS`]); runs the commit off the async workers.
    ///
    /// # Errors
    /// The store failed: the caller keeps the messages spooled.
    pub async fn record(&self, letters: Vec<DeadLetter>) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let (put, prune) = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let mut put = Vec::with_capacity(letters.len());
            for d in &letters {
                let v = serde_json::to_vec(d).map_err(|e| StoreError::Backend(e.to_string()))?;
                put.push((format!("{PREFIX}{}", d.id), v));
                held.insert((d.at.clone(), d.id.clone()), d.clone());
            }
            let mut prune = Vec::new();
            while held.len() > MAX_DEAD_LETTERS {
                if let Some(((_, id), _)) = held.pop_first() {
                    prune.push(format!("{PREFIX}{id}"));
                }
            }
            (put, prune)
        };
        let kv = self.kv.clone();
        #[allow(clippy::disallowed_methods)] // in spawn_blocking
        tokio::task::spawn_blocking(move || {
            kv.put(put)?;
            if prune.is_empty() {
                Ok(())
            } else {
                kv.delete(&prune)
            }
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        self.counter.add(letters.len() as u64);
        Ok(())
    }

    /// The count and the newest 20.
    pub fn view(&self) -> DeadLetterView {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        DeadLetterView {
            count: held.len(),
            recent: held.values().rev().take(20).cloned().collect(),
        }
    }
}
