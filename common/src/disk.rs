//! Free disk space, and the floor below which a node stops taking work
//! that needs its disk (DESIGN.md §8: a throttle input).
//!
//! Reading `statvfs` costs a system call, so [`DiskFloor`] reads it at most
//! once per [`REFRESH`] and answers from that reading in between.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one reading of free space is used.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Bytes available to this (unprivileged) process on the file system
/// holding `path`.
///
/// # Errors
/// If the file system cannot be asked.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Reads free bytes (the real one is [`free_bytes`] on a path; tests inject theirs).
pub type Probe = Arc<dyn Fn() -> std::io::Result<u64> + Send + Sync>;

/// A floor of free disk space under a node's data directory.
pub struct DiskFloor {
    floor: u64,
    probe: Probe,
    last: Mutex<Option<(Instant, u64)>>,
}

impl DiskFloor {
    /// At least `floor` bytes must stay free on the file system of `dir`.
    pub fn new(dir: &Path, floor: u64) -> DiskFloor {
        let dir: PathBuf = dir.to_path_buf();
        Self::with_probe(floor, Arc::new(move || free_bytes(&dir)))
    }

    /// [`DiskFloor::new`] with free space read by `probe`.
    pub fn with_probe(floor: u64, probe: Probe) -> DiskFloor {
        DiskFloor {
            floor,
            probe,
            last: Mutex::new(None),
        }
    }

    /// The floor in bytes.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Free bytes now (from a reading at most [`REFRESH`] old). A failed
    /// reading counts as plenty: a node never stops for a probe it cannot make.
    pub fn free(&self) -> u64 {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return u64::MAX;
        };
        if let Some((at, free)) = *last {
            if now.duration_since(at) < REFRESH {
                return free;
            }
        }
        let free = match (self.probe)() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "free disk space unknown");
                u64::MAX
            }
        };
        *last = Some((now, free));
        free
    }

    /// `Some(free)` while free space is below the floor.
    pub fn below(&self) -> Option<u64> {
        let free = self.free();
        (free < self.floor).then_some(free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_probe_reads_this_file_system() {
        let free = free_bytes(&std::env::temp_dir()).unwrap();
        assert!(free > 0);
        let f = DiskFloor::new(&std::env::temp_dir(), u64::MAX);
        assert!(f.below().is_some());
        assert!(DiskFloor::new(&std::env::temp_dir(), 0).below().is_none());
    }

    #[test]
    fn a_reading_is_reused_for_a_while_and_a_failed_one_never_stops_the_node() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let f = DiskFloor::with_probe(
            100,
            Arc::new(move || {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(50)
            }),
        );
        assert_eq!(f.below(), Some(50));
        assert_eq!(f.below(), Some(50));
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        let broken = DiskFloor::with_probe(100, Arc::new(|| Err(std::io::Error::other("no"))));
        assert_eq!(broken.below(), None);
    }
}
