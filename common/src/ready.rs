//! The ready file: how a node reports the addresses it actually bound.
//!
//! Nodes may bind port 0 (tests, the demo). Once every listener is bound, a
//! node writes `DATA_DIR/ready.json` atomically: `{"pid": …, "listen": {"exchange":
//! "127.0.0.1:40211", …}}`. Whoever started it waits for a file whose `pid` is
//! the child's. The file is removed at start, so a stale one is never read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Contents of `ready.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// The node's process ID.
    pub pid: u32,
    /// Listener name → bound address.
    pub listen: BTreeMap<String, SocketAddr>,
}

/// The path of the ready file in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("ready.json")
}

/// Removes a stale ready file.
pub fn clear(data_dir: &Path) {
    let _ = std::fs::remove_file(path(data_dir));
}

/// Writes the ready file atomically.
///
/// # Errors
/// I/O errors.
pub fn write(data_dir: &Path, listen: BTreeMap<String, SocketAddr>) -> std::io::Result<()> {
    let r = Ready {
        pid: std::process::id(),
        listen,
    };
    let tmp = data_dir.join("ready.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&r)?)?;
    std::fs::rename(tmp, path(data_dir))
}

/// Reads the ready file, if present and complete.
pub fn read(data_dir: &Path) -> Option<Ready> {
    serde_json::from_slice(&std::fs::read(path(data_dir)).ok()?).ok()
}
