//! Config pieces shared by the nodes, and the loader.
//!
//! Each node has one TOML file (`--config FILE`). Every section is
//! `deny_unknown_fields`, so a typo is an error naming the key and line,
//! never a silently ignored setting. Each field's doc gives its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::link::ForwardProxy;

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// Every problem found, one per line.
    pub reason: String,
}

impl ConfigError {
    /// `Ok` if validation found no problem, else one error listing them all.
    ///
    /// # Errors
    /// When `errors` is not empty.
    pub fn check(path: &Path, errors: Vec<String>) -> Result<(), ConfigError> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                path: path.to_path_buf(),
                reason: errors.join("; "),
            })
        }
    }
}

/// Reads and parses a TOML config file.
///
/// # Errors
/// Unreadable file, TOML syntax, unknown or missing keys (with line numbers).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    parse(path, &read(path)?)
}

/// Reads a config file's text.
///
/// # Errors
/// An unreadable file, or one larger than 1 MiB (no config is).
pub fn read(path: &Path) -> Result<String, ConfigError> {
    let err = |reason: String| ConfigError {
        path: path.to_path_buf(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "{len} bytes; a config is at most {MAX_CONFIG_BYTES}"
        )));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

/// Largest config file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Parses the TOML `text` of the config file at `path` (named in errors).
///
/// # Errors
/// TOML syntax, unknown or missing keys (with line numbers).
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `[uplink]`: how a child reaches its parent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Parent URLs, `https://host:port`, primary first then failovers. Required.
    pub parents: Vec<String>,
    /// HTTP forward proxy (`http://host:port`); default: `HTTPS_PROXY` from the environment.
    #[serde(default)]
    pub http_proxy: Option<String>,
    /// Hosts that bypass the proxy (comma-separated); default: `NO_PROXY`.
    #[serde(default)]
    pub no_proxy: Option<String>,
    /// Messages per exchange POST. Default 1024.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Exchange POSTs in flight at once. Default 4.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Timeout of one exchange, in milliseconds. Default 30000.
    #[serde(default = "default_exchange_timeout_ms")]
    pub exchange_timeout_ms: u64,
    /// Long-poll wait hint, in milliseconds: how long the parent may hold
    /// an empty POST until a back-channel message is queued. Default 25000.
    #[serde(default = "default_poll_wait_ms")]
    pub poll_wait_ms: u64,
    /// Compress exchanges on this link (zstd, where the parent takes it).
    /// Default: on at a proxy (customer links are slow), off at an MLM
    /// (its link is in the data centre, and CPU there is what is short).
    #[serde(default)]
    pub compress: Option<bool>,
}

fn default_poll_wait_ms() -> u64 {
    25_000
}

fn default_max_batch() -> usize {
    1024
}
fn default_max_inflight() -> usize {
    4
}
fn default_exchange_timeout_ms() -> u64 {
    30_000
}

impl UplinkConfig {
    /// Checks ranges; returns every problem.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.parents.is_empty() {
            errors.push("uplink.parents: at least one parent URL is required".into());
        }
        if self.max_batch == 0 || self.max_batch > crate::limits::MAX_BATCH_MESSAGES {
            errors.push(format!(
                "uplink.max_batch: must be 1..={}",
                crate::limits::MAX_BATCH_MESSAGES
            ));
        }
        if self.max_inflight == 0 || self.max_inflight > 64 {
            errors.push("uplink.max_inflight: must be 1..=64".into());
        }
        if self.exchange_timeout_ms < 100 {
            errors.push("uplink.exchange_timeout_ms: must be at least 100".into());
        }
        if let Err(e) = self.proxy() {
            errors.push(format!("uplink.http_proxy: {e}"));
        }
        if self.poll_wait_ms < 100
            || self.poll_wait_ms > crate::limits::MAX_LONG_POLL.as_millis() as u64
        {
            errors.push(format!(
                "uplink.poll_wait_ms: must be 100..={}",
                crate::limits::MAX_LONG_POLL.as_millis()
            ));
        }
    }

    /// The long-poll wait hint.
    pub fn poll_wait(&self) -> Duration {
        Duration::from_millis(self.poll_wait_ms)
    }

    /// The forward proxy to use, from config or environment.
    ///
    /// # Errors
    /// A malformed proxy URL.
    pub fn proxy(&self) -> Result<Option<ForwardProxy>, String> {
        match &self.http_proxy {
            Some(u) => ForwardProxy::parse(u, self.no_proxy.as_deref().unwrap_or("")).map(Some),
            None => ForwardProxy::from_env().transpose(),
        }
    }

    /// The exchange timeout.
    pub fn exchange_timeout(&self) -> Duration {
        Duration::from_millis(self.exchange_timeout_ms)
    }

    /// The forwarding settings this section describes.
    pub fn forward_config(&self) -> crate::forward::ForwardConfig {
        crate::forward::ForwardConfig {
            max_batch: self.max_batch,
            max_inflight: self.max_inflight,
            exchange_timeout: self.exchange_timeout(),
        }
    }
}

/// `[backchannel]`: how a parent (appserver, MLM) queues for its children.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackChannelSection {
    /// Longest a long-poll is held, in milliseconds. Default 30000.
    pub max_wait_ms: u64,
    /// How long a delivered message waits for its ack before it is sent
    /// again, in milliseconds. Default 30000.
    pub lease_ms: u64,
    /// Bytes all back-channel queues may hold. Default 256 MiB.
    pub capacity_bytes: u64,
    /// Bytes the queue of one child may hold: a child that never polls
    /// fills its own share, not its siblings'. Default 32 MiB.
    pub child_capacity_bytes: u64,
    /// Bytes of back-channel messages per reply. Default 4 MiB.
    pub reply_bytes: usize,
    /// How long received message IDs are remembered to drop resends, in
    /// seconds. Default 86400.
    pub remember_s: u64,
}

impl Default for BackChannelSection {
    /// The defaults of [`crate::backchannel::BackChannelConfig`], in config units.
    fn default() -> Self {
        let c = crate::backchannel::BackChannelConfig::default();
        BackChannelSection {
            max_wait_ms: c.max_wait.as_millis() as u64,
            lease_ms: c.queues.lease.as_millis() as u64,
            capacity_bytes: c.queues.capacity_bytes,
            child_capacity_bytes: c.queues.queue_capacity_bytes,
            reply_bytes: c.reply_bytes,
            remember_s: c.queues.remember.as_secs(),
        }
    }
}

impl BackChannelSection {
    /// Checks ranges; returns every problem.
    pub fn validate(&self, errors: &mut Vec<String>) {
        let max = crate::limits::MAX_LONG_POLL.as_millis() as u64;
        if self.max_wait_ms > max {
            errors.push(format!("backchannel.max_wait_ms: must be at most {max}"));
        }
        if self.lease_ms < 100 {
            errors.push("backchannel.lease_ms: must be at least 100".into());
        }
        if self.capacity_bytes < 1 << 20 {
            errors.push("backchannel.capacity_bytes: must be at least 1 MiB".into());
        }
        // One child's queue must take a whole reply's worth.
        let least = (self.reply_bytes as u64).max(64 << 10);
        if self.child_capacity_bytes < least || self.child_capacity_bytes > self.capacity_bytes {
            errors.push(format!(
                "backchannel.child_capacity_bytes: must be {least}..=capacity_bytes ({})",
                self.capacity_bytes
            ));
        }
        let env = crate::limits::MAX_ENVELOPE_BYTES as usize / 2;
        if self.reply_bytes < 4096 || self.reply_bytes > env {
            errors.push(format!("backchannel.reply_bytes: must be 4096..={env}"));
        }
        if self.remember_s < 60 {
            errors.push("backchannel.remember_s: must be at least 60".into());
        }
    }

    /// The settings this section describes.
    pub fn config(&self) -> crate::backchannel::BackChannelConfig {
        crate::backchannel::BackChannelConfig {
            max_wait: Duration::from_millis(self.max_wait_ms),
            reply_bytes: self.reply_bytes,
            queues: crate::backchannel::QueuesConfig {
                capacity_bytes: self.capacity_bytes,
                queue_capacity_bytes: self.child_capacity_bytes,
                lease: Duration::from_millis(self.lease_ms),
                remember: Duration::from_secs(self.remember_s),
            },
        }
    }
}

/// Default heartbeat interval in seconds.
pub fn default_heartbeat_secs() -> u64 {
    60
}

/// Default listen address of the TLS nodes (appserver, MLM).
pub fn default_listen() -> String {
    "0.0.0.0:8443".into()
}

/// `[limits]` of a parent (MLM, appserver): what one peer identity, and all
/// peers together, may hold there at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParentLimits {
    /// Open connections from one peer identity. Default 64.
    pub max_connections_per_peer: usize,
    /// Bytes of request bodies held in memory at once, all peers together
    /// (one peer may hold a quarter). Default 64 MiB; at least 16 MiB.
    pub max_body_memory_bytes: u64,
}

impl Default for ParentLimits {
    fn default() -> Self {
        ParentLimits {
            max_connections_per_peer: 64,
            max_body_memory_bytes: crate::memory::DEFAULT_BODY_MEMORY,
        }
    }
}

impl ParentLimits {
    /// Adds every problem to `errors`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_connections_per_peer == 0 {
            errors.push("limits.max_connections_per_peer: must be at least 1".into());
        }
        if self.max_body_memory_bytes < crate::limits::MAX_ENVELOPE_BYTES {
            errors.push(format!(
                "limits.max_body_memory_bytes: at least {} (one whole envelope)",
                crate::limits::MAX_ENVELOPE_BYTES
            ));
        }
    }

    /// The listener's caps with `max_connections` in all.
    pub fn connections(&self, max_connections: usize) -> crate::server::ConnLimits {
        crate::server::ConnLimits {
            max_connections,
            per_peer: self.max_connections_per_peer,
        }
    }
}

/// Default cap on open connections of the TLS nodes.
pub fn default_max_connections() -> usize {
    crate::server::DEFAULT_MAX_CONNECTIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let u: UplinkConfig = toml::from_str(r#"parents = ["https://mlm:8443"]"#).unwrap();
        assert_eq!(
            (u.max_batch, u.max_inflight, u.exchange_timeout_ms),
            (1024, 4, 30_000)
        );
        let mut errs = Vec::new();
        u.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let e = toml::from_str::<UplinkConfig>("parents = []\nmax_bach = 3").unwrap_err();
        assert!(e.to_string().contains("max_bach"), "{e}");
        let u: UplinkConfig = toml::from_str("parents = []\nmax_batch = 0").unwrap();
        let mut errs = Vec::new();
        u.validate(&mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
