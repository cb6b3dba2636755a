//! Counters, gauges and histograms, rendered as Prometheus text at
//! `/metrics`.
//!
//! Deliberately tiny: a node registers named counters once at start and
//! bumps them with relaxed atomics on the hot path. Names follow
//! Prometheus conventions: counters end in `_total`, durations are
//! `_seconds`, sizes `_bytes` (`tests/tests/metrics.rs` checks every
//! node's page against those rules).
//!
//! What the transport and the stores see (TLS handshakes, link errors,
//! commit durations) is counted in one process-wide registry,
//! [`process`], which every node's page includes: a binary is one node,
//! and those layers are built before, and below, any node's registry.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

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

/// Upper bounds (seconds) of the buckets of a duration [`Histogram`]: from
/// 50 µs (an fdatasync on a fast disk) to 10 s.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// A distribution of durations over [`DURATION_BUCKETS`].
#[derive(Clone, Default)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Default)]
struct HistogramCells {
    /// Per bucket (not cumulative), then one past the last bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How many durations were recorded.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    fn render(&self, s: &mut String, name: &str, labels: &str) {
        // `le` joins the series' own labels.
        let with_le = |le: &str| {
            if labels.is_empty() {
                format!("{{le=\"{le}\"}}")
            } else {
                format!("{},le=\"{le}\"}}", &labels[..labels.len() - 1])
            }
        };
        let mut total = 0u64;
        for (i, b) in self.0.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            let le = DURATION_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(s, "{name}_bucket{} {total}", with_le(&le));
        }
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(s, "{name}_sum{labels} {sum}");
        let _ = writeln!(s, "{name}_count{labels} {total}");
    }
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;
/// A family read at render time: name, help, TYPE, the reader.
type ReadAtRender = (String, String, &'static str, GaugeFn);
/// One series of a family: name, labels (`{k="v",…}` or empty), help, the cell.
type Series<T> = (String, String, String, T);

/// All metrics of one node.
#[derive(Default, Clone)]
pub struct Registry {
    /// In registration order.
    counters: Arc<Mutex<Vec<Series<Counter>>>>,
    histograms: Arc<Mutex<Vec<Series<Histogram>>>>,
    /// Read at render time: name, help, TYPE (`gauge`, or `counter` for a
    /// count kept elsewhere), the reader.
    gauges: Arc<Mutex<Vec<ReadAtRender>>>,
}

/// The process-wide registry (see the module docs): every node's
/// [`Registry::render`] includes it.
pub fn process() -> &'static Registry {
    static PROCESS: LazyLock<Registry> = LazyLock::new(Registry::default);
    &PROCESS
}

/// `{k="v",…}` of `labels`, values escaped as the exposition format asks.
fn label_text(labels: &[(&str, &str)]) -> String {
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
    l
}

/// The cell of series (`name`, `labels`) in `v`, registered if new.
fn series<T: Clone + Default>(
    v: &Mutex<Vec<Series<T>>>,
    name: &str,
    labels: &[(&str, &str)],
    help: &str,
) -> T {
    let l = label_text(labels);
    let Ok(mut v) = v.lock() else {
        return T::default();
    };
    if let Some((_, _, _, c)) = v.iter().find(|(n, ls, _, _)| n == name && *ls == l) {
        return c.clone();
    }
    let c = T::default();
    v.push((name.to_string(), l, help.to_string(), c.clone()));
    c
}

/// Renders families of series `v` of `kind`, one `# HELP`/`# TYPE` each.
fn render_families<T>(
    s: &mut String,
    v: &Mutex<Vec<Series<T>>>,
    kind: &str,
    line: impl Fn(&mut String, &str, &str, &T),
) {
    let Ok(v) = v.lock() else { return };
    let mut done = std::collections::HashSet::new();
    for (n, _, h, _) in v.iter() {
        if !done.insert(n.as_str()) {
            continue;
        }
        let _ = writeln!(s, "# HELP {n} {h}\n# TYPE {n} {kind}");
        for (_, l, _, c) in v.iter().filter(|e| e.0 == *n) {
            line(s, n, l, c);
        }
    }
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
        series(&self.counters, name, labels, help)
    }

    /// Registers (or returns the existing) duration histogram `name` with
    /// `labels`; `name` ends in `_seconds`.
    pub fn histogram_with(&self, name: &str, labels: &[(&str, &str)], help: &str) -> Histogram {
        series(&self.histograms, name, labels, help)
    }

    /// Registers a gauge read at render time.
    pub fn gauge(&self, name: &str, help: &str, f: impl Fn() -> f64 + Send + Sync + 'static) {
        self.read_at_render(name, help, "gauge", Box::new(f));
    }

    /// Registers a counter kept elsewhere (it only ever rises), read at
    /// render time; `name` ends in `_total`.
    pub fn counter_fn(&self, name: &str, help: &str, f: impl Fn() -> f64 + Send + Sync + 'static) {
        self.read_at_render(name, help, "counter", Box::new(f));
    }

    fn read_at_render(&self, name: &str, help: &str, kind: &'static str, f: GaugeFn) {
        if let Ok(mut v) = self.gauges.lock() {
            v.push((name.to_string(), help.to_string(), kind, f));
        }
    }

    /// Prometheus text exposition: this registry's families, then the
    /// [`process`] registry's.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_into(&mut s);
        if !std::ptr::eq(self, process()) {
            process().render_into(&mut s);
        }
        s
    }

    fn render_into(&self, s: &mut String) {
        render_families(s, &self.counters, "counter", |s, n, l, c| {
            let _ = writeln!(s, "{n}{l} {}", c.get());
        });
        render_families(s, &self.histograms, "histogram", |s, n, l, h| {
            h.render(s, n, l);
        });
        if let Ok(v) = self.gauges.lock() {
            for (n, h, kind, f) in v.iter() {
                let _ = writeln!(s, "# HELP {n} {h}\n# TYPE {n} {kind}\n{n} {}", f());
            }
        }
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

    #[test]
    fn a_histogram_is_cumulative_with_its_sum_and_count() {
        let r = Registry::default();
        let h = r.histogram_with("x_seconds", &[("store", "a")], "h");
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = r.render();
        assert!(s.contains("# TYPE x_seconds histogram\n"), "{s}");
        assert!(
            s.contains("x_seconds_bucket{store=\"a\",le=\"0.00005\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{store=\"a\",le=\"0.005\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{store=\"a\",le=\"10\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{store=\"a\",le=\"+Inf\"} 3\n"),
            "{s}"
        );
        assert!(s.contains("x_seconds_count{store=\"a\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_sum{store=\"a\"} 60.00303\n"), "{s}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn a_node_page_includes_the_process_families_once() {
        process().counter("zz_process_only_total", "h").inc();
        let r = Registry::default();
        assert_eq!(
            r.render().matches("# TYPE zz_process_only_total").count(),
            1
        );
        assert_eq!(
            process()
                .render()
                .matches("# TYPE zz_process_only_total")
                .count(),
            1
        );
    }
}
