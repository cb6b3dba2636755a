//! End-to-end: QoS at every hop. A message that expired on its way is
//! never stored at the appserver, and its expiry is reported (an
//! `infrastructure`/`expired` event naming it) by whichever node dropped
//! it: the MLM, the appserver's door, or the proxy's own spool.

use std::time::Duration;

use http::Method;
use rsnet_common::model::*;
use rsnet_common::tls::Role;
use rsnet_common::Message;
use rsnet_demo::{json_call, send, stored, Spec, Tree};
use rsnet_tests::{proxy_status, tempdir, wait_for, RawChild};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

fn event(from: &RawChild, text: &str, expired: bool) -> Message {
    let mut m = Message::forward(
        from.id.clone(),
        "event",
        Some("qos-test"),
        Content::Event(Event {
            support_instance: None,
            text: text.into(),
            data: None,
        }),
    )
    .with_hop(&from.id);
    if expired {
        m.header.qos.expiry = Some(Timestamp(m.header.created.0.saturating_sub(1000)));
    }
    m
}

/// The expiry reports stored so far: (reporter, IDs named).
async fn reports(op: &rsnet_common::client::Target) -> Vec<(String, Vec<String>)> {
    stored(op, "class=infrastructure&subclass=expired")
        .await
        .unwrap()
        .iter()
        .map(|m| {
            let payload: Value = m["content"]["data"]["payload"]
                .as_str()
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or_default();
            let ids = payload["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["id"].as_str().map(str::to_string))
                .collect();
            (m["source"].as_str().unwrap_or("").to_string(), ids)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_never_stored_and_its_expiry_is_reported_where_it_was_dropped() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        proxy_uplink_extra: "exchange_timeout_ms = 2000".into(),
        ..Spec::demo()
    };
    let mut tree = start("qos-expiry", &spec);
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    let p1 = tree.index("acme.p1").unwrap();

    // Through the MLM, and straight at the appserver.
    let mut via_mlm = RawChild::new(&tree, "acme.p8", Role::Proxy, tree.nodes[mlm].addr.unwrap());
    let mut direct = RawChild::new(&tree, "acme.p9", Role::Proxy, tree.nodes[0].addr.unwrap());
    let mut expired_ids = Vec::new();
    let mut fresh_ids = Vec::new();
    for (child, reporter) in [(&mut via_mlm, "acme.mlm1"), (&mut direct, "provider.app")] {
        let (old, new) = (
            event(child, "too late", true),
            event(child, "in time", false),
        );
        let d = child.exchange(&[old.clone(), new.clone()], 0).await;
        let a = d.control.answers();
        // Both answered accepted: the child lets the expired one go.
        assert_eq!(a[&old.header.id].status, Status::Accepted, "{a:?}");
        assert_eq!(a[&new.header.id].status, Status::Accepted, "{a:?}");
        expired_ids.push((old.header.id.to_string(), reporter));
        fresh_ids.push(new.header.id.to_string());
    }
    // The proxy's own spool: the MLM is down while the alarm's minute passes.
    tokio::task::block_in_place(|| tree.stop(mlm, Duration::from_secs(10)));
    let ids = send(
        tree.nodes[p1].addr.unwrap(),
        &[json!({ "kind": "alarm", "text": "short-lived", "severity": "minor", "expiry_s": 1 })],
    )
    .await
    .unwrap();
    let p1_expired = ids[0].clone();
    wait_for("the alarm to expire in p1's spool", LONG, || async {
        let v = proxy_status(&tree, p1).await?;
        (v["spool"]["expired"].as_u64()? >= 1).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| tree.restart(mlm)).unwrap();
    expired_ids.push((p1_expired.clone(), "acme.p1"));

    let got = wait_for("every expiry reported", LONG, || async {
        let r = reports(&op).await;
        expired_ids
            .iter()
            .all(|(id, by)| r.iter().any(|(src, ids)| src == by && ids.contains(id)))
            .then_some(r)
    })
    .await;
    assert!(!got.is_empty());
    for id in &fresh_ids {
        wait_for("the fresh message stored", LONG, || async {
            let all = stored(&op, "subclass=qos-test").await.ok()?;
            all.iter().any(|m| m["id"] == id.as_str()).then_some(())
        })
        .await;
    }
    let all = stored(&op, "").await.unwrap();
    for (id, _) in &expired_ids {
        assert!(
            !all.iter().any(|m| m["id"] == id.as_str()),
            "expired message {id} was stored"
        );
    }
    tree.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlm_limited_to_n_messages_a_second_makes_proxies_spool_and_passes_everything_in_order()
{
    const RATE: f64 = 100.0;
    const PER_PROXY: usize = 100;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: (1..=4).map(|i| (format!("p{i}"), Some(0))).collect(),
        heartbeat_s: 3600,
        mlm_extra: "[throttle]\nmessages_per_s = 100\nburst_ms = 100\n".into(),
        ..Spec::demo()
    };
    let mut tree = start("qos-throttle", &spec);
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    // Everything spooled first (the MLM is down), in mixed precedence.
    tokio::task::block_in_place(|| tree.stop(mlm, Duration::from_secs(10)));
    for p in tree.proxies() {
        let batch: Vec<Value> = (0..PER_PROXY)
            .map(|i| {
                json!({ "kind": "alarm", "class": "alarm", "subclass": "storm", "severity": "minor",
                        "text": format!("{i}"), "precedence": (i * 7 % 10) as u8 })
            })
            .collect();
        send(tree.nodes[p].addr.unwrap(), &batch).await.unwrap();
    }
    tokio::task::block_in_place(|| tree.restart(mlm)).unwrap();
    let all = wait_for("every alarm stored", LONG, || async {
        let all = stored(&op, "subclass=storm").await.ok()?;
        (all.len() >= 4 * PER_PROXY).then_some(all)
    })
    .await;
    assert_eq!(all.len(), 4 * PER_PROXY, "each stored once");
    // The rate, from the store's own receive times (after the first burst).
    let mut at: Vec<u64> = all
        .iter()
        .filter_map(|m| Timestamp::parse_rfc3339(m["received"].as_str()?).map(|t| t.0))
        .collect();
    at.sort();
    let burst = (RATE / 10.0) as usize;
    let span_s = (at[at.len() - 1] - at[burst]) as f64 / 1000.0;
    let rate = (at.len() - 1 - burst) as f64 / span_s;
    eprintln!(
        "{} alarms at {rate:.1}/s through a {RATE}/s throttle",
        at.len()
    );
    assert!(
        rate <= RATE * 1.1,
        "{rate:.1} messages/s through a {RATE}/s throttle"
    );
    assert!(
        rate >= RATE * 0.5,
        "{rate:.1} messages/s: the throttle starves the tree"
    );
    // Within each proxy, in precedence order (highest first).
    for p in tree.proxies() {
        let id = &tree.nodes[p].id;
        let prec: Vec<u64> = all
            .iter()
            .filter(|m| m["source"] == id.as_str())
            .map(|m| m["qos"]["precedence"].as_u64().expect("precedence"))
            .collect();
        assert_eq!(prec.len(), PER_PROXY);
        assert!(
            prec.iter().any(|&p| p != prec[0]),
            "mixed precedences: {prec:?}"
        );
        assert!(prec.windows(2).all(|w| w[0] >= w[1]), "{id}: {prec:?}");
    }
    let deferred = rsnet_demo::metric(
        &tree.node_target(mlm).unwrap(),
        "rsnet_throttle_deferred_rate_total",
    )
    .await
    .unwrap();
    assert!(deferred > 0.0, "the throttle deferred some");
    tree.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_and_other_classes_keep_flowing_while_a_bulk_upload_waits_for_its_window() {
    // A window for class `bulk` that is closed now: it opens in two hours.
    let now = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60)
        % 1440;
    let hhmm = |m: u64| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        mlm_extra: format!(
            "[[throttle.window]]\nclass = \"bulk\"\nfrom = \"{}\"\nto = \"{}\"\n",
            hhmm(now + 120),
            hhmm(now + 180)
        ),
        ..Spec::demo()
    };
    let tree = start("qos-window", &spec);
    let op = tree.operator_target().unwrap();
    let (mlm, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    let addr = tree.nodes[p1].addr.unwrap();
    let (s, v) = rsnet_common::client::call(
        &rsnet_common::client::Target::Plain(addr),
        Method::POST,
        "/v1/bulk?class=core&name=core.1",
        Some(("application/octet-stream", vec![7u8; 100_000].into())),
    )
    .await
    .unwrap();
    assert_eq!(
        s,
        http::StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&v)
    );
    let upload: Value = serde_json::from_slice(&v).unwrap();
    wait_for("the bulk request held at the MLM", LONG, || async {
        let n = rsnet_demo::metric(
            &tree.node_target(mlm).unwrap(),
            "rsnet_throttle_deferred_window_total",
        )
        .await
        .ok()?;
        (n >= 1.0).then_some(())
    })
    .await;
    // A burst of critical alarms and ordinary ones: all arrive while bulk waits.
    let burst: Vec<Value> = (0..100)
        .map(|i| {
            json!({ "kind": "alarm", "class": "alarm", "subclass": "burst", "severity": "critical",
                    "text": format!("{i}"), "precedence": if i % 2 == 0 { 9 } else { 4 } })
        })
        .collect();
    send(addr, &burst).await.unwrap();
    // And messages no more important than the bulk request (precedence 0
    // and 2, as bulk is): the deferral names class `bulk`, so they flow too.
    let low: Vec<Value> = (0..20)
        .map(|i| {
            json!({ "kind": "event", "class": "event", "subclass": "low", "text": format!("{i}"),
                    "precedence": if i % 2 == 0 { 0 } else { 2 } })
        })
        .collect();
    send(addr, &low).await.unwrap();
    wait_for("the burst stored", LONG, || async {
        let all = stored(&op, "subclass=burst").await.ok()?;
        (all.len() == 100).then_some(())
    })
    .await;
    wait_for("the low-precedence events stored", LONG, || async {
        let all = stored(&op, "subclass=low").await.ok()?;
        (all.len() == 20).then_some(())
    })
    .await;
    let (_, u) = json_call(
        &tree.node_target(p1).unwrap(),
        Method::GET,
        &format!("/v1/bulk/{}", upload["id"].as_str().unwrap()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        u["state"], "requested",
        "the upload waits for its window: {u}"
    );
    let requests = stored(&op, "class=bulk").await.unwrap();
    assert!(
        requests.is_empty(),
        "the request did not pass the MLM: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_pruned_from_a_full_spool_is_reported_and_never_stored() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_uplink_extra: "exchange_timeout_ms = 2000".into(),
        ..Spec::demo()
    };
    let mut tree = start("qos-pruned", &spec);
    let op = tree.operator_target().unwrap();
    let (mlm, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    // A 1 MiB spool, and the MLM down while it fills.
    let cfg = tree.nodes[p1].config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("spool_capacity_bytes = 1048576\n{text}")).unwrap();
    tokio::task::block_in_place(|| {
        tree.stop(mlm, Duration::from_secs(10));
        tree.stop(p1, Duration::from_secs(10));
        tree.restart(p1)
    })
    .unwrap();
    let addr = tree.nodes[p1].addr.unwrap();
    let filler = |persistent: bool, precedence: u8, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({ "kind": "event", "class": "event", "subclass": if persistent { "keep" } else { "spare" },
                        "text": format!("{i} {}", "x".repeat(60_000)), "persistent": persistent,
                        "precedence": precedence })
            })
            .collect()
    };
    // Non-persistent, low precedence: what may be pruned.
    let spare = send(addr, &filler(false, 1, 10)).await.unwrap();
    // Important ones, until the spare ones had to make room.
    for _ in 0..4 {
        let _ = send(addr, &filler(true, 8, 2)).await;
    }
    let pruned = wait_for("some spare messages pruned", LONG, || async {
        let v = proxy_status(&tree, p1).await?;
        let n = v["spool"]["evicted"].as_u64()?;
        (n >= 1).then_some(n)
    })
    .await;
    tokio::task::block_in_place(|| tree.restart(mlm)).unwrap();
    let named = wait_for("the pruning reported", LONG, || async {
        let r: Vec<String> = stored(&op, "class=infrastructure&subclass=pruned")
            .await
            .ok()?
            .iter()
            .filter(|m| m["source"] == "acme.p1")
            .flat_map(|m| {
                let p: Value = m["content"]["data"]["payload"]
                    .as_str()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                p["messages"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|x| x["id"].as_str().map(str::to_string))
            })
            .collect();
        (r.len() as u64 >= pruned).then_some(r)
    })
    .await;
    assert!(
        named.iter().all(|id| spare.contains(id)),
        "only spare ones pruned: {named:?}"
    );
    let spares = stored(&op, "subclass=spare").await.unwrap();
    for id in &named {
        assert!(
            !spares.iter().any(|m| m["id"] == id.as_str()),
            "pruned {id} was stored"
        );
    }
    tree.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlm_filter_rule_drops_the_noise_it_names_and_passes_the_rest() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        mlm_extra: "[[rule]]\nname = \"drop-noise\"\naction = \"filter\"\n[rule.match]\nclass = \"alarm\"\nsubclass = \"noise\"\nseverity = [\"info\", \"clear\"]\n".into(),
        ..Spec::demo()
    };
    let tree = start("qos-rules", &spec);
    let op = tree.operator_target().unwrap();
    let (mlm, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    let msgs: Vec<Value> = (0..30)
        .map(|i| {
            let (sub, sev) = match i % 3 {
                0 => ("noise", "info"),  // filtered
                1 => ("noise", "major"), // a real problem in a noisy subclass: kept
                _ => ("disk", "info"),   // another subclass: kept
            };
            json!({ "kind": "alarm", "class": "alarm", "subclass": sub, "severity": sev, "text": format!("{i}") })
        })
        .collect();
    let ids = send(tree.nodes[p1].addr.unwrap(), &msgs).await.unwrap();
    let kept: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, id)| id)
        .collect();
    let all = wait_for("the kept alarms stored", LONG, || async {
        let all = stored(&op, "class=alarm").await.ok()?;
        kept.iter()
            .all(|id| all.iter().any(|m| m["id"] == id.as_str()))
            .then_some(all)
    })
    .await;
    assert_eq!(all.len(), 20, "only the 10 filtered ones are missing");
    // Filtered ones were answered accepted: the proxy's spool drains.
    wait_for("the proxy's spool empty", LONG, || async {
        let v = proxy_status(&tree, p1).await?;
        (v["spool"]["messages"].as_u64()? == 0).then_some(())
    })
    .await;
    let n = rsnet_demo::metric(
        &tree.node_target(mlm).unwrap(),
        "rsnet_rules_filtered_total",
    )
    .await
    .unwrap();
    assert_eq!(n, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_filter_rule_keeps_noise_on_the_host() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_extra: "[[rule]]\nname = \"local-noise\"\naction = \"filter\"\n[rule.match]\nsubclass = \"noise\"\n".into(),
        ..Spec::demo()
    };
    let tree = start("qos-proxy-rules", &spec);
    let op = tree.operator_target().unwrap();
    let p1 = tree.index("acme.p1").unwrap();
    let msgs: Vec<Value> = (0..6)
        .map(|i| {
            json!({ "kind": "alarm", "class": "alarm", "subclass": if i % 2 == 0 { "noise" } else { "disk" },
                    "severity": "minor", "text": format!("{i}") })
        })
        .collect();
    let (s, v) = json_call(
        &tree.node_target(p1).unwrap(),
        Method::POST,
        "/v1/messages",
        Some(json!({ "messages": msgs })),
    )
    .await
    .unwrap();
    assert_eq!(s, http::StatusCode::ACCEPTED, "{v}");
    let ids: Vec<String> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 6, "every message answered, in order: {v}");
    assert_eq!(v["filtered"], json!([0, 2, 4]), "{v}");
    wait_for("the kept alarms stored", LONG, || async {
        let all = stored(&op, "subclass=disk").await.ok()?;
        (all.len() == 3).then_some(())
    })
    .await;
    let all = stored(&op, "class=alarm").await.unwrap();
    for i in [0, 2, 4] {
        assert!(
            !all.iter().any(|m| m["id"] == ids[i].as_str()),
            "noise {i} left the host"
        );
    }
    for i in [1, 3, 5] {
        assert!(
            all.iter().any(|m| m["id"] == ids[i].as_str()),
            "alarm {i} stored under its answered ID"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_s_own_throttle_keeps_messages_spooled_and_sends_them_at_its_rate() {
    const RATE: u64 = 20;
    const N: usize = 60;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_extra: format!("[throttle]\nmessages_per_s = {RATE}\nburst_ms = 100\n"),
        ..Spec::demo()
    };
    let tree = start("qos-sender-throttle", &spec);
    let op = tree.operator_target().unwrap();
    let p1 = tree.index("acme.p1").unwrap();
    let batch: Vec<Value> = (0..N)
        .map(|i| json!({ "kind": "event", "class": "event", "subclass": "paced", "text": format!("{i}") }))
        .collect();
    send(tree.nodes[p1].addr.unwrap(), &batch).await.unwrap();
    let all = wait_for("every event stored", LONG, || async {
        let all = stored(&op, "subclass=paced").await.ok()?;
        (all.len() >= N).then_some(all)
    })
    .await;
    assert_eq!(all.len(), N, "each stored once");
    let mut at: Vec<u64> = all
        .iter()
        .filter_map(|m| Timestamp::parse_rfc3339(m["received"].as_str()?).map(|t| t.0))
        .collect();
    at.sort();
    // After a burst of 2, no faster than the rate (a slow machine only
    // spreads them further).
    let span_ms = at[N - 1] - at[0];
    let least_ms = (N as u64 - 2) * 1000 / RATE;
    assert!(
        span_ms * 10 >= least_ms * 9,
        "{N} events over {span_ms} ms through a {RATE}/s sender throttle"
    );
    let held = rsnet_demo::metric(
        &tree.node_target(p1).unwrap(),
        "rsnet_throttle_deferred_rate_total",
    )
    .await
    .unwrap();
    assert!(held > 0.0, "the proxy's throttle held some back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_disk_floor_a_proxy_refuses_and_an_mlm_defers_until_there_is_room() {
    // A floor no disk can meet (1 EiB): the proxy refuses its integrator at
    // once, with a reason.
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0)), ("p2".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("qos-disk-floor", &spec);
    let op = tree.operator_target().unwrap();
    let (mlm, p1, p2) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
        tree.index("acme.p2").unwrap(),
    );
    let floor = "[throttle]\nmin_free_disk_bytes = 1152921504606846976\n";
    let set_floor = |tree: &mut Tree, i: usize, on: bool| {
        let path = tree.nodes[i].config.clone();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = if on {
            format!("{text}\n{floor}")
        } else {
            text.replace(floor, "")
        };
        std::fs::write(&path, text).unwrap();
        tokio::task::block_in_place(|| tree.restart(i)).unwrap();
    };
    tokio::task::block_in_place(|| tree.stop(p1, Duration::from_secs(10)));
    set_floor(&mut tree, p1, true);
    let ev =
        |t: &str| json!({ "kind": "event", "class": "event", "subclass": "disk-floor", "text": t });
    let (s, v) = json_call(
        &tree.node_target(p1).unwrap(),
        Method::POST,
        "/v1/messages",
        Some(json!({ "messages": [ev("refused")] })),
    )
    .await
    .unwrap();
    assert_eq!(s, http::StatusCode::INSUFFICIENT_STORAGE, "{v}");
    let why = v.to_string();
    assert!(
        why.contains("below the floor") && why.contains("min_free_disk_bytes"),
        "{why}"
    );

    // At the MLM the same floor defers what passes: p2 keeps its messages
    // spooled, and they go once the MLM has room again.
    tokio::task::block_in_place(|| tree.stop(mlm, Duration::from_secs(10)));
    set_floor(&mut tree, mlm, true);
    let ids = send(tree.nodes[p2].addr.unwrap(), &[ev("a"), ev("b")])
        .await
        .unwrap();
    let mlm_t = tree.node_target(mlm).unwrap();
    wait_for("the MLM defers for disk", LONG, || async {
        let n = rsnet_demo::metric(&mlm_t, "rsnet_throttle_deferred_disk_total")
            .await
            .ok()?;
        (n >= 2.0).then_some(())
    })
    .await;
    let st = proxy_status(&tree, p2).await.unwrap();
    assert!(
        st["spool"]["messages"].as_u64().unwrap() >= 2,
        "held at the proxy: {st}"
    );
    assert!(stored(&op, "subclass=disk-floor").await.unwrap().is_empty());
    tokio::task::block_in_place(|| tree.stop(mlm, Duration::from_secs(10)));
    set_floor(&mut tree, mlm, false);
    wait_for("both stored once there is room", LONG, || async {
        let all = stored(&op, "subclass=disk-floor").await.ok()?;
        ids.iter()
            .all(|id| all.iter().any(|m| m["id"] == id.as_str()))
            .then_some(())
    })
    .await;
    tree.shutdown();
}
