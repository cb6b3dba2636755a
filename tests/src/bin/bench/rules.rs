//! Relay throughput with 20 active rules at the MLM against none (issue
//! 11): the same 512-byte alarm load as the forward-path figure, through
//! proxy → MLM → appserver, once with an MLM without rules and once with 20
//! rules that every alarm is checked against (header fields, severities,
//! text and support instances, so its content is decoded) and the last of
//! which modifies it. Runs alternate, twice each, in one run; the figures
//! are the stored rate and the MLM's CPU per message (from /proc).

use rsnet_demo::{Spec, Tree};

use crate::peer::cpu_secs;

const SECS: u64 = 8;
const ROUNDS: usize = 2;

/// 19 rules that look at every alarm and match none, then one that
/// modifies every alarm (its precedence, a header field).
pub fn twenty_rules() -> String {
    let mut s = String::new();
    for i in 0..6 {
        s += &format!("[[rule]]\nname = \"drop-sub-{i}\"\naction = \"filter\"\n[rule.match]\nclass = \"alarm\"\nsubclass = \"noise-{i}\"\n\n");
    }
    for i in 0..5 {
        s += &format!("[[rule]]\nname = \"quiet-{i}\"\naction = \"filter\"\n[rule.match]\nsubclass = \"bench\"\nseverity = [\"clear\", \"info\"]\nsource = \"acme.q{i}*\"\n\n");
    }
    for i in 0..4 {
        s += &format!("[[rule]]\nname = \"text-{i}\"\naction = \"filter\"\n[rule.match]\nclass = \"alarm\"\ntext = \"flap-{i}\"\n\n");
    }
    for i in 0..4 {
        s += &format!("[[rule]]\nname = \"instance-{i}\"\naction = \"modify\"\n[rule.match]\nsupport_instance = \"acme.other{i}*\"\n[rule.set]\nprecedence = 1\n\n");
    }
    s += "[[rule]]\nname = \"raise-bench\"\naction = \"modify\"\n[rule.match]\nclass = \"alarm\"\nsubclass = \"bench\"\n[rule.set]\nprecedence = 6\n";
    s
}

struct Row {
    rules: &'static str,
    rate: f64,
    mlm_us: f64,
    /// CPU per message of the proxy, MLM and appserver.
    per_node_us: [f64; 3],
}

pub async fn run(dir: &std::path::Path) {
    let twenty = twenty_rules();
    let mut rows = Vec::new();
    for round in 0..ROUNDS {
        for (name, extra) in [("none", String::new()), ("20 rules", twenty.clone())] {
            let spec = Spec {
                mlms: vec![("mlm1".into(), None)],
                proxies: vec![("p1".into(), Some(0))],
                heartbeat_s: 3600,
                mlm_extra: extra,
                ..Spec::demo()
            };
            let d = dir.join(format!("{round}-{}", name.replace(' ', "-")));
            let tree = tokio::task::block_in_place(|| Tree::start(&d, &spec)).expect("tree");
            let mlm = tree.index("acme.mlm1").expect("mlm");
            let pids = ["acme.p1", "acme.mlm1", "provider.app"].map(|id| {
                let i = tree.index(id).expect("node");
                tree.nodes[i].pid().expect("pid")
            });
            let cpu0 = pids.map(cpu_secs);
            let (n, _, stored_secs) = crate::throughput(&tree, SECS).await;
            let mut per_node_us = [0.0; 3];
            for (k, pid) in pids.iter().enumerate() {
                per_node_us[k] = (cpu_secs(*pid) - cpu0[k]) * 1e6 / n as f64;
            }
            if name != "none" {
                let hits = rsnet_demo::metric(
                    &tree.node_target(mlm).expect("mlm"),
                    "rsnet_rule_matches_total{rule=\"raise-bench\",action=\"modify\"}",
                )
                .await
                .unwrap_or(0.0);
                assert!(
                    hits >= n as f64,
                    "the rules were not applied: {hits} of {n}"
                );
            }
            rows.push(Row {
                rules: name,
                rate: n as f64 / stored_secs,
                mlm_us: per_node_us[1],
                per_node_us,
            });
            drop(tree);
        }
    }
    let mean = |name: &str, f: &dyn Fn(&Row) -> f64| {
        let v: Vec<f64> = rows.iter().filter(|r| r.rules == name).map(f).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    println!(
        "| rules at the MLM | run | stored (msg/s) | MLM CPU per message | proxy / MLM / appserver CPU per message |"
    );
    println!("|---|---|---|---|---|");
    for (i, r) in rows.iter().enumerate() {
        let [p, m, a] = r.per_node_us;
        println!(
            "| {} | {} | {:.0} | {:.1} µs | {p:.1} / {m:.1} / {a:.1} µs |",
            r.rules,
            i / 2 + 1,
            r.rate,
            r.mlm_us
        );
    }
    let (r0, r20) = (mean("none", &|r| r.rate), mean("20 rules", &|r| r.rate));
    let (c0, c20) = (mean("none", &|r| r.mlm_us), mean("20 rules", &|r| r.mlm_us));
    println!(
        "\nWith 20 rules ÷ without, throughput: **{:.2}×** (goal ≥ 0.8×); MLM CPU per message: {:.2}×",
        r20 / r0.max(1.0),
        c20 / c0.max(1e-9)
    );
}
