//! End-to-end: an MLM's rules on real binaries. An alarm storm is folded
//! into a few aggregates, each naming the alarms it replaced, every alarm
//! in exactly one; aggregation survives kill -9 of the MLM; rules reload on
//! a change and on SIGHUP, a list with a mistake is refused while the
//! previous rules stay in force, and a modify rule rewrites what passes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rsnet_demo::{metric, send, stored, Spec, Tree};
use rsnet_tests::{ctl, tempdir, wait_for};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(120);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

fn aggregate_rule(count: u32, window_s: u64) -> String {
    format!(
        "[[rule]]\nname = \"fold-link\"\naction = \"aggregate\"\n[rule.match]\nclass = \"alarm\"\nsubclass = \"link\"\n[rule.aggregate]\nby = [\"source\", \"support_instance\"]\ncount = {count}\nwindow_s = {window_s}\n"
    )
}

fn link_alarm(i: usize, si: &str) -> Value {
    json!({ "kind": "alarm", "class": "alarm", "subclass": "link", "severity": "minor",
            "text": format!("link down {i}"), "support_instance": si })
}

/// The aggregates stored so far: (its ID, its summary).
async fn aggregates(op: &rsnet_common::client::Target) -> Vec<(String, Value)> {
    stored(op, "class=alarm&subclass=link")
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            let d = &m["content"]["data"];
            assert_eq!(
                d["mime"], "application/vnd.rsnet.aggregate+json",
                "only aggregates are stored, no storm alarm itself: {m}"
            );
            let v: Value = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
            (m["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn replaced(v: &Value) -> Vec<String> {
    v["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Each ID in `sent` is named by exactly one aggregate, and no aggregate
/// names anything else.
fn each_once(aggs: &[(String, Value)], sent: &HashSet<String>) -> Result<(), String> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (id, v) in aggs {
        let r = replaced(v);
        if v["count"].as_u64() != Some(r.len() as u64) {
            return Err(format!(
                "aggregate {id}: count {} ≠ {}",
                v["count"],
                r.len()
            ));
        }
        for x in r {
            if !sent.contains(&x) {
                return Err(format!("aggregate {id} names {x}, never sent"));
            }
            if let Some(other) = seen.insert(x.clone(), id) {
                return Err(format!("{x} is in aggregates {other} and {id}"));
            }
        }
    }
    match sent.iter().find(|x| !seen.contains_key(*x)) {
        Some(x) => Err(format!(
            "{x} is in no aggregate ({} of {} named)",
            seen.len(),
            sent.len()
        )),
        None => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_storm_of_ten_thousand_is_folded_into_a_few_aggregates_naming_each_alarm_once() {
    // One MLM with one aggregate rule, 4 proxies, 50 support instances.
    let window_s = 4;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: (1..=4).map(|i| (format!("p{i}"), Some(0))).collect(),
        heartbeat_s: 3600,
        mlm_extra: aggregate_rule(1000, window_s),
        ..Spec::demo()
    };
    let tree = start("rules-storm", &spec);
    let op = tree.operator_target().unwrap();
    let mut sent = HashSet::new();
    let sends = tree.proxies().into_iter().enumerate().map(|(k, p)| {
        let (addr, id) = (tree.nodes[p].addr.unwrap(), tree.nodes[p].id.clone());
        // Instance j of the 50 lives on proxy j % 4.
        let instances: Vec<String> = (0..50)
            .filter(|j| j % 4 == k)
            .map(|j| format!("{id}.si{j}"))
            .collect();
        async move {
            let mut ids = Vec::new();
            for round in 0..5 {
                let batch: Vec<Value> = (0..500)
                    .map(|i| link_alarm(round * 500 + i, &instances[i % instances.len()]))
                    .collect();
                ids.extend(send(addr, &batch).await.unwrap());
            }
            ids
        }
    });
    for ids in futures_util::future::join_all(sends).await {
        sent.extend(ids);
    }
    assert_eq!(sent.len(), 10_000);
    let aggs = wait_for("every storm alarm in an aggregate", LONG, || async {
        let aggs = aggregates(&op).await;
        let n: u64 = aggs.iter().map(|(_, v)| v["count"].as_u64().unwrap()).sum();
        (n >= 10_000).then_some(aggs)
    })
    .await;
    each_once(&aggs, &sent).unwrap();
    // At most 50 aggregates in any window: one per key (instance) and window.
    let mut made: Vec<u64> = Vec::new();
    for (_, v) in &aggs {
        assert_eq!(v["rule"], "fold-link");
        let first = rsnet_common::model::Timestamp::parse_rfc3339(v["first"].as_str().unwrap());
        made.push(first.unwrap().0);
    }
    made.sort();
    let w = window_s * 1000;
    for (i, t) in made.iter().enumerate() {
        let within = made[i..].iter().take_while(|x| **x < t + w).count();
        assert!(within <= 50, "{within} aggregates began within one window");
    }
    assert!(
        aggs.len() <= 200,
        "{} aggregates for 10,000 alarms",
        aggs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_survives_kill_9_of_the_mlm_without_losing_or_repeating_an_alarm() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0)), ("p2".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_uplink_extra: "exchange_timeout_ms = 3000\n".into(),
        mlm_extra: aggregate_rule(40, 1),
        ..Spec::demo()
    };
    let mut tree = start("rules-kill9", &spec);
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    let proxies: Vec<(std::net::SocketAddr, String)> = tree
        .proxies()
        .into_iter()
        .map(|p| (tree.nodes[p].addr.unwrap(), tree.nodes[p].id.clone()))
        .collect();
    let mut rng = fastrand::Rng::new();
    let mut sent = HashSet::new();
    for round in 0..6 {
        // Proxies keep sending (they spool; the MLM holds or relays) while
        // the MLM is killed at a random moment.
        let sends = proxies.iter().cloned().map(|(addr, id)| async move {
            let mut ids = Vec::new();
            for b in 0..5 {
                let batch: Vec<Value> = (0..30)
                    .map(|i| link_alarm(round * 1000 + b * 30 + i, &format!("{id}.si{}", i % 3)))
                    .collect();
                ids.extend(send(addr, &batch).await.unwrap());
                tokio::task::yield_now().await;
            }
            ids
        });
        let task = tokio::spawn(futures_util::future::join_all(sends));
        tokio::time::sleep(Duration::from_millis(rng.u64(0..400))).await;
        tokio::task::block_in_place(|| {
            tree.kill9(mlm);
            tree.restart(mlm).unwrap();
        });
        for ids in task.await.unwrap() {
            sent.extend(ids);
        }
    }
    assert_eq!(sent.len(), 6 * 2 * 150);
    let aggs = wait_for("every alarm in an aggregate", LONG, || async {
        let aggs = aggregates(&op).await;
        let n: u64 = aggs.iter().map(|(_, v)| v["count"].as_u64().unwrap()).sum();
        (n >= sent.len() as u64).then_some(aggs)
    })
    .await;
    each_once(&aggs, &sent).unwrap();
    let ids: HashSet<&String> = aggs.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), aggs.len(), "an aggregate stored twice");
}

fn write_rules(path: &Path, text: &str) {
    // Written aside and renamed, as an editor or a config push would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_change_and_on_sighup_and_a_mistake_keeps_the_previous_rules() {
    let dir = tempdir("rules-reload-file");
    let rules = dir.join("rules.toml");
    write_rules(
        &rules,
        "[[rule]]\nname = \"drop-noise\"\naction = \"filter\"\n[rule.match]\nsubclass = \"noise\"\n",
    );
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        mlm_top: format!("rules_file = {:?}\n", rules.display().to_string()),
        ..Spec::demo()
    };
    let tree = start("rules-reload", &spec);
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    let mlm_t = tree.node_target(mlm).unwrap();
    let p1 = tree.nodes[tree.index("acme.p1").unwrap()].addr.unwrap();
    let ev = |sub: &str, text: &str| json!({ "kind": "event", "class": "event", "subclass": sub, "text": text });

    // Sends noise then a marker; once the marker is stored, says whether
    // the noise was too (one POST: the proxy keeps their order).
    let noise_stored = |round: &'static str| {
        let op = op.clone();
        async move {
            let ids = send(p1, &[ev("noise", round), ev("marker", round)])
                .await
                .unwrap();
            let marker = wait_for("the marker stored", LONG, || async {
                let all = stored(&op, "class=event").await.ok()?;
                all.into_iter().find(|m| m["id"] == ids[1].as_str())
            })
            .await;
            let all = stored(&op, "subclass=noise").await.unwrap();
            (all.iter().any(|m| m["id"] == ids[0].as_str()), marker)
        }
    };
    assert!(
        !noise_stored("first").await.0,
        "the first rules filter noise"
    );

    // A mistake: refused, named, and the previous rules stay in force.
    write_rules(
        &rules,
        "[[rule]]\nname = \"drop-noise\"\naction = \"filterr\"\n",
    );
    wait_for("the bad list refused", LONG, || async {
        let n = metric(&mlm_t, "rsnet_rules_reloads_refused_total")
            .await
            .ok()?;
        (n >= 1.0).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&tree.nodes[mlm].log).unwrap();
    assert!(
        log.contains("rules.toml:1: rule[0] \\\"drop-noise\\\": action \\\"filterr\\\"")
            || log.contains("rules.toml:1: rule[0] \"drop-noise\": action \"filterr\""),
        "the log names file, line and mistake"
    );
    assert!(!noise_stored("second").await.0, "the previous rules stay");

    // A good change: noise passes now, and markers are rewritten.
    write_rules(
        &rules,
        "[[rule]]\nname = \"tag-markers\"\naction = \"modify\"\n[rule.match]\nsubclass = \"marker\"\n[rule.set]\nclass = \"checked\"\nprecedence = 9\n",
    );
    wait_for("the new list in force", LONG, || async {
        let n = metric(&mlm_t, "rsnet_rules_reloads_total").await.ok()?;
        (n >= 1.0).then_some(())
    })
    .await;
    let ids = send(p1, &[ev("noise", "third"), ev("marker", "third")])
        .await
        .unwrap();
    let m = wait_for("the rewritten marker stored", LONG, || async {
        let all = stored(&op, "class=checked").await.ok()?;
        all.into_iter().find(|m| m["id"] == ids[1].as_str())
    })
    .await;
    assert_eq!(m["qos"]["precedence"], 9, "{m}");
    wait_for("noise passes now", LONG, || async {
        let all = stored(&op, "subclass=noise").await.ok()?;
        all.iter().any(|m| m["id"] == ids[0].as_str()).then_some(())
    })
    .await;
    let hits = metric(
        &mlm_t,
        "rsnet_rule_matches_total{rule=\"tag-markers\",action=\"modify\"}",
    )
    .await
    .unwrap();
    assert_eq!(hits, 1.0);

    // SIGHUP reads the file again, changed or not.
    let before = metric(&mlm_t, "rsnet_rules_reloads_total").await.unwrap();
    let pid = tree.nodes[mlm].pid().unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_for("SIGHUP reloaded the rules", LONG, || async {
        let n = metric(&mlm_t, "rsnet_rules_reloads_total").await.ok()?;
        (n > before).then_some(())
    })
    .await;
    assert!(tree.nodes[mlm].pid().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The state of `dest` in release `id`, once it is final.
async fn final_state(op: &rsnet_common::client::Target, id: &str, dest: &str) -> Value {
    wait_for(&format!("{dest} final in {id}"), LONG, || async {
        let (_, v) = rsnet_demo::json_call(
            op,
            http::Method::GET,
            &format!("/api/v1/releases/{id}"),
            None,
        )
        .await
        .ok()?;
        let d = v["status"]["destinations"][dest].clone();
        matches!(d["state"].as_str(), Some("applied" | "failed")).then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_arrive_as_a_config_release_and_a_bad_one_fails_named_keeping_the_rules() {
    let dir = tempdir("rules-release");
    let rules = dir.join("rules.toml");
    write_rules(
        &rules,
        "[[rule]]\nname = \"drop-noise\"\naction = \"filter\"\n[rule.match]\nsubclass = \"noise\"\n",
    );
    let tree_dir = tempdir("rules-release-tree");
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        mlm_top: format!("rules_file = {:?}\n", rules.display().to_string()),
        // (The demo's MLMs have the release public key: it checks config releases.)
        ..Spec::demo()
    };
    let mut tree = tokio::task::block_in_place(|| Tree::start(&tree_dir, &spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    tree.remove_on_drop = true;
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    let mlm_t = tree.node_target(mlm).unwrap();
    let p1 = tree.nodes[tree.index("acme.p1").unwrap()].addr.unwrap();
    wait_for("the MLM known at the appserver", LONG, || async {
        let (_, v) = rsnet_demo::json_call(&op, http::Method::GET, "/api/v1/components", None)
            .await
            .ok()?;
        v["components"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == "acme.mlm1")
            .then_some(())
    })
    .await;

    // A bad rules file as a release: failed, named; the rules in force stay.
    let bad = tree.dir.join("bad-rules.toml");
    std::fs::write(&bad, "[[rule]]\nname = \"x\"\naction = \"explode\"\n").unwrap();
    let publish = |file: &Path, version: &str| {
        ctl(
            &tree,
            &[
                "releases",
                "publish",
                file.to_str().unwrap(),
                "--kind",
                "config",
                "--version",
                version,
                "--to",
                "acme.mlm1",
            ],
        )
        .trim()
        .to_string()
    };
    let id = publish(&bad, "1");
    let d = final_state(&op, &id, "acme.mlm1").await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        d["reason"].as_str().unwrap().contains("action \"explode\""),
        "the reason names the mistake: {d}"
    );
    assert!(std::fs::read_to_string(&rules)
        .unwrap()
        .contains("drop-noise"));

    // A good one: applied, written over the rules file, in force.
    let good = tree.dir.join("good-rules.toml");
    std::fs::write(
        &good,
        "[[rule]]\nname = \"drop-chatter\"\naction = \"filter\"\n[rule.match]\nsubclass = \"chatter\"\n",
    )
    .unwrap();
    let id = publish(&good, "2");
    let d = final_state(&op, &id, "acme.mlm1").await;
    assert_eq!(d["state"], "applied", "{d}");
    assert!(std::fs::read_to_string(&rules)
        .unwrap()
        .contains("drop-chatter"));
    let ev = |sub: &str| json!({ "kind": "event", "class": "event", "subclass": sub, "text": "x" });
    let ids = send(p1, &[ev("chatter"), ev("noise")]).await.unwrap();
    wait_for("noise passes now", LONG, || async {
        let all = stored(&op, "subclass=noise").await.ok()?;
        all.iter().any(|m| m["id"] == ids[1].as_str()).then_some(())
    })
    .await;
    let chatter = stored(&op, "subclass=chatter").await.unwrap();
    assert!(chatter.is_empty(), "chatter is filtered: {chatter:?}");
    let n = metric(
        &mlm_t,
        "rsnet_rule_matches_total{rule=\"drop-chatter\",action=\"filter\"}",
    )
    .await
    .unwrap();
    assert_eq!(n, 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}
