//! The operators' audit log (DESIGN.md §9): every operator action, who did
//! it, when, and how it ended, appended to `DATA/audit.log`, one JSON
//! object per line, written and fsynced before the answer goes out.
//!
//! An action is any operator call that is not a read (`GET`), plus file
//! downloads (`GET /api/v1/uploads/ID/file`), and every call refused for a
//! missing permission or scope. The file is only ever appended to; `GET
//! /api/v1/audit?limit=N` (permission `admin`) and `rsnet-ctl audit` read
//! its last entries.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rsnet_common::model::Timestamp;
use rsnet_common::tls::Identity;
use serde::{Deserialize, Serialize};

/// One entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// When (RFC 3339).
    pub at: String,
    /// The operator (its certificate's ID).
    pub who: String,
    /// Its customer scopes, if it is limited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// `POST`, `PUT`, `DELETE`, `GET`.
    pub method: String,
    /// The path and query.
    pub what: String,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// The most entries one read returns.
pub const MAX_READ: usize = 10_000;

/// See the module docs.
pub struct Audit {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl Audit {
    /// Opens (or creates) `DATA/audit.log` for appending.
    ///
    /// # Errors
    /// If the file cannot be opened.
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<Audit> {
        let path = data_dir.join("audit.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Audit {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// True if a call of `method` on `path` is an action to record (a
    /// refusal is recorded whatever it was).
    pub fn records(method: &http::Method, path: &str) -> bool {
        method != http::Method::GET
            || (path.starts_with("/api/v1/uploads/") && path.ends_with("/file"))
    }

    /// Appends one entry (fsync). A failure is logged: the action has
    /// happened either way.
    pub async fn record(&self, op: &Identity, method: &http::Method, what: &str, status: u16) {
        let e = Entry {
            at: Timestamp::now().to_rfc3339(),
            who: op.id.to_string(),
            scopes: op.scopes.iter().map(|s| s.to_string()).collect(),
            method: method.to_string(),
            what: what.chars().take(2048).collect(),
            status,
        };
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        let file = self.file.clone();
        let r = tokio::task::spawn_blocking(move || {
            let f = file.lock().unwrap_or_else(|p| p.into_inner());
            (&*f).write_all(&line)?;
            f.sync_data()
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit entry not written"),
            Err(e) => tracing::error!(error = %e, "audit entry not written"),
        }
    }

    /// The last `limit` entries, oldest first.
    ///
    /// # Errors
    /// If the file cannot be read.
    pub async fn last(&self, limit: usize) -> std::io::Result<Vec<Entry>> {
        let path = self.path.clone();
        let limit = limit.clamp(1, MAX_READ);
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let mut ring = std::collections::VecDeque::with_capacity(limit);
            for line in std::io::BufReader::new(f).lines() {
                let Ok(e) = serde_json::from_str::<Entry>(&line?) else {
                    continue;
                };
                if ring.len() == limit {
                    ring.pop_front();
                }
                ring.push_back(e);
            }
            Ok(ring.into_iter().collect())
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
