//! Every node's `/metrics`, as Prometheus and an on-call engineer read it:
//! the page follows the exposition format and Prometheus's naming rules
//! (checked here by [`lint`]; also by `promtool check metrics` where it is
//! installed), and covers the spool, the queues, exchanges by answer, link
//! errors, TLS handshakes and commit (fsync) latency.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use rsnet_common::client::{call, Target};
use rsnet_demo::{alarm, send};
use rsnet_tests::{small_tree, wait_for};

/// One family as the page declares it.
#[derive(Default, Debug)]
struct Family {
    kind: String,
    help: bool,
    /// Sample name and labels → value.
    samples: Vec<(String, String, f64)>,
}

/// Reads a page into families, with everything wrong with it.
fn parse(page: &str) -> (BTreeMap<String, Family>, Vec<String>) {
    let mut fams: BTreeMap<String, Family> = BTreeMap::new();
    let mut bad = Vec::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let f = fams.entry(name.to_string()).or_default();
            if f.help {
                bad.push(format!("{name}: HELP twice"));
            }
            f.help = !text.trim().is_empty();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let f = fams.entry(name.to_string()).or_default();
            if !f.kind.is_empty() {
                bad.push(format!("{name}: TYPE twice"));
            }
            f.kind = kind.to_string();
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or((line, ""));
            let (name, labels) = match series.find('{') {
                Some(i) if series.ends_with('}') => (&series[..i], &series[i..]),
                Some(_) => {
                    bad.push(format!("{line}: unbalanced labels"));
                    continue;
                }
                None => (series, ""),
            };
            let Ok(v) = value.parse::<f64>() else {
                bad.push(format!("{line}: value is not a number"));
                continue;
            };
            // A histogram's samples belong to its family.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    (fams.get(base).map(|f| f.kind.as_str()) == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            match fams.get_mut(family) {
                Some(f) if !f.kind.is_empty() => {
                    f.samples.push((name.to_string(), labels.to_string(), v))
                }
                _ => bad.push(format!("{name}: a sample before its TYPE")),
            }
        }
    }
    (fams, bad)
}

/// Prometheus's rules for names and types (what `promtool check metrics`
/// lints, and the exposition format's own): a problem per line.
fn lint(page: &str) -> Vec<String> {
    let (fams, mut bad) = parse(page);
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_lowercase() || f == '_')
            && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '_')
    };
    // Units are base units, spelled out (promtool: "use base unit").
    let abbreviated = [
        "ms",
        "msec",
        "millis",
        "milliseconds",
        "us",
        "usec",
        "micros",
        "microseconds",
        "ns",
        "nanoseconds",
        "minutes",
        "hours",
        "days",
        "kb",
        "mb",
        "gb",
        "kib",
        "mib",
        "gib",
        "secs",
    ];
    for (n, f) in &fams {
        if !name_ok(n) {
            bad.push(format!("{n}: not snake_case ASCII"));
        }
        if !n.starts_with("rsnet_") {
            bad.push(format!("{n}: not under the rsnet_ prefix"));
        }
        if n.split('_').any(|w| abbreviated.contains(&w)) {
            bad.push(format!("{n}: a unit other than seconds or bytes"));
        }
        if !f.help {
            bad.push(format!("{n}: no HELP"));
        }
        if f.samples.is_empty() {
            bad.push(format!("{n}: declared without samples"));
        }
        match f.kind.as_str() {
            "counter" => {
                if !n.ends_with("_total") {
                    bad.push(format!("{n}: a counter's name must end in _total"));
                }
                if f.samples.iter().any(|(s, _, v)| s != n || *v < 0.0) {
                    bad.push(format!(
                        "{n}: counter samples must be the family's, non-negative"
                    ));
                }
            }
            "gauge" => {
                for suffix in ["_total", "_count", "_sum", "_bucket"] {
                    if n.ends_with(suffix) {
                        bad.push(format!("{n}: a gauge must not end in {suffix}"));
                    }
                }
            }
            "histogram" => {
                if !(n.ends_with("_seconds") || n.ends_with("_bytes")) {
                    bad.push(format!("{n}: a histogram's name ends in its unit"));
                }
                // Per series (labels without `le`): cumulative buckets,
                // +Inf equal to _count, a _sum.
                let mut series: HashMap<String, HistogramSeries> = HashMap::new();
                for (s, labels, v) in &f.samples {
                    let (le, rest) = split_le(labels);
                    let e = series.entry(rest).or_default();
                    if s.ends_with("_bucket") {
                        match le.as_deref().map(|l| {
                            if l == "+Inf" {
                                Ok(f64::INFINITY)
                            } else {
                                l.parse::<f64>()
                            }
                        }) {
                            Some(Ok(b)) => e.0.push((b, *v)),
                            _ => bad.push(format!("{n}: bucket without a numeric le")),
                        }
                    } else if s.ends_with("_count") {
                        e.1 = Some(*v);
                    } else if s.ends_with("_sum") {
                        e.2 = true;
                    } else {
                        bad.push(format!("{n}: sample {s} in a histogram"));
                    }
                }
                for (labels, (buckets, count, sum)) in series {
                    let cumulative = buckets
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
                    let inf = buckets.last().filter(|b| b.0.is_infinite()).map(|b| b.1);
                    if !cumulative || inf.is_none() || inf != count || !sum {
                        bad.push(format!(
                            "{n}{labels}: buckets must rise to +Inf = _count, with a _sum"
                        ));
                    }
                }
            }
            other => bad.push(format!("{n}: TYPE {other:?}")),
        }
    }
    bad
}

/// One histogram series as read: (bound, cumulative count) per bucket,
/// its `_count`, whether it has a `_sum`.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>, bool);

/// A label set without its `le`: (le, the rest).
fn split_le(labels: &str) -> (Option<String>, String) {
    let inner = labels.trim_start_matches('{').trim_end_matches('}');
    let mut le = None;
    let rest: Vec<&str> = inner
        .split(',')
        .filter(|p| {
            if let Some(v) = p.strip_prefix("le=") {
                le = Some(v.trim_matches('"').to_string());
                false
            } else {
                !p.is_empty()
            }
        })
        .collect();
    (le, rest.join(","))
}

#[test]
fn the_lint_finds_what_prometheus_would_refuse() {
    let good = "# HELP rsnet_a_total a\n# TYPE rsnet_a_total counter\nrsnet_a_total{x=\"1\"} 3\n\
        # HELP rsnet_d_seconds d\n# TYPE rsnet_d_seconds histogram\n\
        rsnet_d_seconds_bucket{le=\"0.1\"} 1\nrsnet_d_seconds_bucket{le=\"+Inf\"} 2\n\
        rsnet_d_seconds_sum 0.3\nrsnet_d_seconds_count 2\n";
    assert_eq!(lint(good), Vec::<String>::new());
    for (page, why) in [
        (
            "# HELP rsnet_a a\n# TYPE rsnet_a counter\nrsnet_a 1\n",
            "_total",
        ),
        (
            "# HELP rsnet_a_total a\n# TYPE rsnet_a_total gauge\nrsnet_a_total 1\n",
            "gauge",
        ),
        ("# TYPE rsnet_a_total counter\nrsnet_a_total 1\n", "no HELP"),
        (
            "# HELP rsnet_lat_ms a\n# TYPE rsnet_lat_ms gauge\nrsnet_lat_ms 1\n",
            "unit",
        ),
        (
            "# HELP rsnet_Ab a\n# TYPE rsnet_Ab gauge\nrsnet_Ab 1\n",
            "snake_case",
        ),
        ("rsnet_x 1\n", "before its TYPE"),
        (
            "# HELP rsnet_d_seconds d\n# TYPE rsnet_d_seconds histogram\n\
             rsnet_d_seconds_bucket{le=\"0.1\"} 3\nrsnet_d_seconds_bucket{le=\"+Inf\"} 2\n\
             rsnet_d_seconds_sum 1\nrsnet_d_seconds_count 2\n",
            "rise",
        ),
        (
            "# HELP rsnet_d d\n# TYPE rsnet_d histogram\nrsnet_d_bucket{le=\"+Inf\"} 1\n\
             rsnet_d_sum 1\nrsnet_d_count 1\n",
            "unit",
        ),
    ] {
        let found = lint(page);
        assert!(
            found.iter().any(|b| b.contains(why)),
            "{why}: {found:?} for\n{page}"
        );
    }
}

async fn page(t: &Target) -> String {
    let (status, body) = call(t, http::Method::GET, "/metrics", None)
        .await
        .expect("GET /metrics");
    assert!(status.is_success(), "{status}");
    String::from_utf8(body.to_vec()).expect("UTF-8")
}

/// The value of series `name` + `labels` (exactly as written) on `page`.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_metrics_follow_prometheus_rules_and_cover_what_on_call_needs() {
    let tree = small_tree("metrics", 1);
    let (app, mlm, proxy) = (
        tree.index("provider.app").expect("the appserver"),
        tree.index("acme.mlm1").expect("mlm1"),
        tree.index("acme.p1").expect("p1"),
    );
    let p1 = tree.nodes[proxy].addr.expect("p1's local API");
    let msgs: Vec<_> = (0..20).map(|i| alarm(&format!("m{i}"), "db1")).collect();
    send(p1, &msgs).await.expect("alarms accepted");
    let targets: Vec<(&str, Target)> = [("appserver", app), ("mlm", mlm), ("proxy", proxy)]
        .into_iter()
        .map(|(n, i)| (n, tree.node_target(i).expect("target")))
        .collect();
    // Once the alarms went all the way up, every page has what it must.
    let pages = wait_for(
        "the alarms counted on every node",
        Duration::from_secs(30),
        || async {
            let mut pages = HashMap::new();
            for (n, t) in &targets {
                pages.insert(*n, page(t).await);
            }
            let stored = value(&pages["appserver"], "rsnet_store_stored_total").unwrap_or(0.0);
            (stored >= 20.0).then_some(pages)
        },
    )
    .await;
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok();
    for (node, p) in &pages {
        let bad = lint(p);
        assert!(bad.is_empty(), "{node}'s /metrics:\n{}", bad.join("\n"));
        if promtool {
            assert_promtool_passes(node, p);
        }
        // Every node: commit latency, TLS handshakes.
        let commits = value(
            p,
            "rsnet_store_commit_duration_seconds_count{store=\"redb\"}",
        );
        assert!(
            commits.is_some_and(|n| n > 0.0),
            "{node}: redb commit latency\n{p}"
        );
        for result in ["ok", "failed", "timeout"] {
            if *node != "proxy" {
                let s =
                    format!("rsnet_tls_handshakes_total{{side=\"server\",result=\"{result}\"}}");
                assert!(value(p, &s).is_some(), "{node}: {s}");
            }
        }
    }
    // The senders: spool, fsync latency, link errors, client handshakes.
    for node in ["mlm", "proxy"] {
        let p = &pages[node];
        for g in [
            "rsnet_spool_messages",
            "rsnet_spool_bytes",
            "rsnet_spool_capacity_bytes",
        ] {
            assert!(value(p, g).is_some(), "{node}: {g}");
        }
        assert!(value(p, "rsnet_spool_capacity_bytes").unwrap_or(0.0) > 0.0);
        assert!(
            value(p, "rsnet_spool_fsync_duration_seconds_count").is_some_and(|n| n > 0.0),
            "{node}: spool fsync latency"
        );
        assert!(
            value(p, "rsnet_link_errors_total{kind=\"connect\"}").is_some(),
            "{node}"
        );
        assert!(
            value(
                p,
                "rsnet_tls_handshakes_total{side=\"client\",result=\"ok\"}"
            )
            .is_some_and(|n| n >= 1.0),
            "{node}: client handshakes"
        );
    }
    // The dashboard and the alert rules in deploy/ name only what the
    // nodes export (a renamed metric breaks this, not a pager at night).
    let exported: std::collections::HashSet<String> = pages
        .values()
        .flat_map(|p| parse(p).0.into_keys())
        .collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = root.join("deploy/prometheus/rsnet-alerts.yml");
    let dashboard = root.join("deploy/grafana/rsnet-dashboard.json");
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard).expect("dashboard"))
            .expect("the dashboard is JSON");
    let exprs: Vec<String> = board["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let text = format!(
        "{}\n{}",
        std::fs::read_to_string(&rules).expect("alert rules"),
        exprs.join("\n")
    );
    for name in metric_names(&text) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
            .unwrap_or(&name);
        assert!(
            exported.contains(family),
            "{name} (in deploy/) is not exported by any node"
        );
    }
    for alert in [
        "RsnetComponentStale",
        "RsnetSpoolGrowing",
        "RsnetDeadLetters",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
    if promtool {
        let out = std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The parents: their queues and every exchange by answer.
    for node in ["mlm", "appserver"] {
        let p = &pages[node];
        for g in [
            "rsnet_backchannel_queued_messages",
            "rsnet_backchannel_queued_bytes",
        ] {
            assert!(value(p, g).is_some(), "{node}: {g}");
        }
        assert!(
            value(p, "rsnet_exchange_messages_total{answer=\"accepted\"}").unwrap_or(0.0) >= 20.0,
            "{node}: accepted messages"
        );
        assert!(value(p, "rsnet_exchange_messages_total{answer=\"deferred\"}").is_some());
        assert!(value(p, "rsnet_exchanges_total{status=\"200\"}").unwrap_or(0.0) >= 1.0);
        assert!(
            value(
                p,
                "rsnet_tls_handshakes_total{side=\"server\",result=\"ok\"}"
            )
            .is_some_and(|n| n >= 1.0),
            "{node}: server handshakes"
        );
    }
}

/// Every `rsnet_…` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rsnet_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.insert(name);
    }
    out
}

/// `promtool check metrics` (Prometheus's own linter) on `page`.
fn assert_promtool_passes(node: &str, page: &str) {
    use std::io::Write;
    let mut c = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    if let Some(mut i) = c.stdin.take() {
        i.write_all(page.as_bytes()).expect("promtool's input");
    }
    let out = c.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics on {node}'s page: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
