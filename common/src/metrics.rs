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
/// One counter series: name, labels (`{k="v",…}` or empty), help, the counter.
type Series = (String, String, String, Counter);

/// All metrics of one node.
#[derive(Default, Clone)]
pub struct Registry {
    /// In registration order.
    counters: Arc<Mutex<Vec<Series>>>,
    gauges: Arc<Mutex<Vec<(String, String, GaugeFn)>>>,
}

impl Registry {
    /// Registers (or returns the existing) counter `name`.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_with(name, &[], help)
    }

    /// Registers (or returns the existing) counter `name` with `labels`
    /// (one series of a family, such as one rule's hits). Label values are
    /// escaped as the exposition format asks.
    pub fn counter_with(&self, name: &str, labels: &[(&str, &str)], help: &str) -> Counter {
        let mut l = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(l, "{}{k}=\"{v}\"", if i == 0 { "{" } else { "," });
        }
        if !l.is_empty() {
            l.push('}');
        }
        let Ok(mut v) = self.counters.lock() else {
            return Counter::default();
        };
        if let Some((_, _, _, c)) = v.iter().find(|(n, ls, _, _)| n == name && *ls == l) {
            return c.clone();
        }
        let c = Counter::default();
        v.push((name.to_string(), l, help.to_string(), c.clone()));
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
            let mut done = std::collections::HashSet::new();
            for (n, _, h, _) in v.iter() {
                if !done.insert(n.as_str()) {
                    continue;
                }
                let _ = writeln!(s, "# HELP {n} {h}\n# TYPE {n} counter");
                for (_, l, _, c) in v.iter().filter(|e| e.0 == *n) {
                    let _ = writeln!(s, "{n}{l} {}", c.get());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_rendered_once_with_one_line_per_series() {
        let r = Registry::default();
        r.counter_with("x_total", &[("rule", "a")], "h").inc();
        r.counter("y_total", "h2");
        r.counter_with("x_total", &[("rule", "b\"q")], "h").add(2);
        r.counter_with("x_total", &[("rule", "a")], "h").inc();
        let s = r.render();
        assert_eq!(s.matches("# TYPE x_total counter").count(), 1, "{s}");
        assert!(s.contains("x_total{rule=\"a\"} 2\n"), "{s}");
        assert!(s.contains("x_total{rule=\"b\\\"q\"} 2\n"), "{s}");
        assert!(s.contains("y_total 0\n"), "{s}");
    }
}
