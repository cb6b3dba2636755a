//! Counters and gauges, rendered as Prometheus text at `/metrics`.
//!
//! Deliberately tiny: a node registers named counters once at start and
//! bumps them with relaxed atomics on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing counter.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// The shared cell, for code that counts as bytes stream
    /// ([`crate::bulk::file_body`]).
    pub fn cell(&self) -> Arc<AtomicU64> {
        self.0.clone()
    }
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;

/// All metrics of one node.
#[derive(Default, Clone)]
pub struct Registry {
    counters: Arc<Mutex<Vec<(String, String, Counter)>>>,
    gauges: Arc<Mutex<Vec<(String, String, GaugeFn)>>>,
}

impl Registry {
    /// Registers (or returns the existing) counter `name`.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let Ok(mut v) = self.counters.lock() else {
            return Counter::default();
        };
        if let Some((_, _, c)) = v.iter().find(|(n, _, _)| n == name) {
            return c.clone();
        }
        let c = Counter::default();
        v.push((name.to_string(), help.to_string(), c.clone()));
        c
    }

    /// Registers a gauge read at render time.
    pub fn gauge(&self, name: &str, help: &str, f: impl Fn() -> f64 + Send + Sync + 'static) {
        if let Ok(mut v) = self.gauges.lock() {
            v.push((name.to_string(), help.to_string(), Box::new(f)));
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Ok(v) = self.counters.lock() {
            for (n, h, c) in v.iter() {
                let _ = writeln!(s, "# HELP {n} {h}\n# TYPE {n} counter\n{n} {}", c.get());
            }
        }
        if let Ok(v) = self.gauges.lock() {
            for (n, h, f) in v.iter() {
                let _ = writeln!(s, "# HELP {n} {h}\n# TYPE {n} gauge\n{n} {}", f());
            }
        }
        s
    }
}
