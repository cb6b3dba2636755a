//! Shared helpers of the end-to-end suite (`tests/e2e.rs`).
//!
//! The tree itself comes from `rsnet_demo::Tree`, so the tests start the
//! same processes, certificates and configs as the demo.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rsnet-e2e-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
