//! End-to-end: the uplink in the shapes customers run it. Stacked MLMs, a
//! secondary parent taking over when the primary dies, and a customer's
//! HTTP forward proxy (CONNECT) between a proxy and its MLM.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use rsnet_common::client::{call, Target};
use rsnet_demo::{alarm, send, stored, Spec, Tree};
use rsnet_tests::{tempdir, wait_for, ConnectProxy};
use serde_json::Value;

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t =
        Tree::start(&tempdir(tag), spec).unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

fn alarms(n: usize, sub: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut a = alarm(&format!("{sub} {i}"), "host1");
            a["subclass"] = Value::from(sub);
            a
        })
        .collect()
}

/// Sends `n` alarms through proxy `p` and waits until each is stored once;
/// returns the stored messages.
async fn send_and_wait(tree: &Tree, p: usize, n: usize, sub: &str) -> Vec<Value> {
    let op = tree.operator_target().expect("operator");
    let addr = tree.nodes[p].addr.expect("proxy addr");
    let acked: HashSet<String> = send(addr, &alarms(n, sub))
        .await
        .expect("local API accepts")
        .into_iter()
        .collect();
    assert_eq!(acked.len(), n);
    let got = wait_for(
        &format!("{n} alarms of {sub} stored"),
        Duration::from_secs(60),
        || async {
            let s = stored(&op, &format!("subclass={sub}"))
                .await
                .unwrap_or_default();
            (s.len() >= n).then_some(s)
        },
    )
    .await;
    let ids: Vec<String> = got
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_string())
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a message was stored twice");
    assert_eq!(unique, acked, "stored exactly the acknowledged messages");
    got
}

fn hops(m: &Value) -> Vec<String> {
    m["routing"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| h["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn components(op: &Target) -> Vec<Value> {
    let (_, b) = call(op, Method::GET, "/api/v1/components", None)
        .await
        .expect("components");
    serde_json::from_slice::<Value>(&b).expect("json")["components"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_mlms_relay_with_the_whole_path() {
    // A customer MLM under an aggregation MLM under the appserver.
    let spec = Spec {
        mlms: vec![("agg".into(), None), ("site".into(), Some(0))],
        proxies: vec![("p1".into(), Some(1))],
        ..Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| start("stacked", &spec));
    let p1 = tree.proxies()[0];
    let got = send_and_wait(&tree, p1, 300, "stacked").await;
    for m in &got {
        assert_eq!(
            hops(m),
            ["acme.p1", "acme.site", "acme.agg", "provider.app"],
            "{m}"
        );
    }
    let op = tree.operator_target().expect("operator");
    let comps = wait_for(
        "the topology to know acme.p1 behind both MLMs",
        Duration::from_secs(20),
        || async {
            let c = components(&op).await;
            c.iter()
                .find(|c| c["id"] == "acme.p1")
                .filter(|c| c["parent_path"].as_array().is_some_and(|p| p.len() == 2))
                .cloned()
        },
    )
    .await;
    let path: HashSet<&str> = comps["parent_path"]
        .as_array()
        .expect("path")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(path, HashSet::from(["acme.agg", "acme.site"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_fails_over_to_its_secondary_parent() {
    let spec = Spec {
        proxies: vec![("p1".into(), Some(0))],
        ..Spec::demo()
    };
    let mut tree = tokio::task::block_in_place(|| start("failover", &spec));
    let (mlm1, mlm2) = (
        tree.index("acme.mlm1").expect("mlm1"),
        tree.index("acme.mlm2").expect("mlm2"),
    );
    let p1 = tree.proxies()[0];
    let url = |i: usize| {
        format!(
            "https://127.0.0.1:{}",
            tree.nodes[i].addr.expect("addr").port()
        )
    };
    let (primary, secondary) = (url(mlm1), url(mlm2));
    // Give p1 both parents, primary first, and restart it.
    let cfg = std::fs::read_to_string(&tree.nodes[p1].config).expect("config");
    let two = cfg.replace(
        &format!("parents = [\"{primary}\"]"),
        &format!("parents = [\"{primary}\", \"{secondary}\"]"),
    );
    assert_ne!(cfg, two, "config has the parents line");
    std::fs::write(&tree.nodes[p1].config, two).expect("write config");
    assert!(tree.stop(p1, Duration::from_secs(10)), "p1 stops");
    tokio::task::block_in_place(|| tree.restart(p1)).expect("p1 restarts");

    // While the primary is up, traffic goes through it.
    let before = send_and_wait(&tree, p1, 50, "fo-before").await;
    assert!(before
        .iter()
        .all(|m| hops(m).contains(&"acme.mlm1".to_string())));

    // The primary dies: the proxy moves to the secondary, loses nothing.
    tree.kill9(mlm1);
    let after = send_and_wait(&tree, p1, 200, "fo-after").await;
    assert!(
        after
            .iter()
            .all(|m| hops(m) == ["acme.p1", "acme.mlm2", "provider.app"]),
        "all via the secondary: {:?}",
        after.iter().map(hops).collect::<HashSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reaches_its_mlm_through_a_connect_forward_proxy() {
    let relay = ConnectProxy::start().await;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        proxy_uplink_extra: format!("http_proxy = \"http://{}\"", relay.addr),
        ..Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| start("connect", &spec));
    let got = send_and_wait(&tree, tree.proxies()[0], 200, "via-connect").await;
    assert!(got
        .iter()
        .all(|m| hops(m) == ["acme.p1", "acme.mlm1", "provider.app"]));
    assert!(
        relay.tunnels.load(Ordering::SeqCst) >= 1,
        "the uplink went through the forward proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_link_is_used_within_seconds_however_long_it_was_down() {
    let relay = ConnectProxy::start().await;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_uplink_extra: format!("http_proxy = \"http://{}\"", relay.addr),
        ..Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| start("heal", &spec));
    let op = tree.operator_target().unwrap();
    let p1 = tree.nodes[tree.proxies()[0]].addr.unwrap();
    relay.down(true);
    let ids = rsnet_demo::send(p1, &[rsnet_demo::alarm("during the outage", "db1")])
        .await
        .unwrap();
    // The outage lasts 12 s, a scenario length (not a synchronisation): the
    // proxy's retries have backed off by then. Once the link is up, its next
    // try is at most link::CUT_RETRY_MAX away (the cap itself is unit-tested
    // in link.rs).
    tokio::time::sleep(Duration::from_secs(12)).await;
    relay.down(false);
    let healed = std::time::Instant::now();
    wait_for(
        "the alarm stored after the heal",
        Duration::from_secs(60),
        || async {
            let all = rsnet_demo::stored(&op, "subclass=demo").await.ok()?;
            all.iter().any(|m| m["id"] == ids[0].as_str()).then_some(())
        },
    )
    .await;
    let took = healed.elapsed();
    eprintln!("first delivery {took:?} after the link healed");
    assert!(
        took < rsnet_common::link::CUT_RETRY_MAX + Duration::from_secs(3),
        "the healed link was used only after {took:?}"
    );
}

/// Sends `n` alarms of varied text through a proxy whose uplink runs
/// through a counting relay (`compress` set or left at its default);
/// returns the bytes the relay carried upward and the texts as stored.
async fn upward_bytes(tag: &str, compress: Option<bool>, n: usize) -> (u64, usize, Vec<Value>) {
    let relay = ConnectProxy::start().await;
    let mut extra = format!("http_proxy = \"http://{}\"", relay.addr);
    if let Some(c) = compress {
        extra.push_str(&format!("\ncompress = {c}"));
    }
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_uplink_extra: extra,
        ..Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| start(tag, &spec));
    // The first exchange teaches the proxy whether its parent reads zstd.
    send_and_wait(&tree, tree.proxies()[0], 1, &format!("{tag}-first")).await;
    let before = relay.bytes_up.load(Ordering::SeqCst);
    let op = tree.operator_target().expect("operator");
    let addr = tree.nodes[tree.proxies()[0]].addr.expect("proxy addr");
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{i:05} interface eth{} on host db-{:02} went down at 03:{:02}:{:02}; \
                 probable cause: link flap on switch port {}; previous state up for {} s; \
                 ticket INC-{} opened by rule net-{}",
                i % 8,
                i % 37,
                i % 60,
                (i * 7) % 60,
                i % 48,
                1000 + i * 13,
                40_000 + i,
                i % 5
            )
        })
        .collect();
    let payload: usize = texts.iter().map(String::len).sum();
    let msgs: Vec<Value> = texts
        .iter()
        .map(|t| {
            let mut a = alarm(t, "host1");
            a["subclass"] = Value::from(tag);
            a
        })
        .collect();
    let acked = send(addr, &msgs).await.expect("local API accepts");
    assert_eq!(acked.len(), n);
    let got = wait_for(
        &format!("{n} alarms stored"),
        Duration::from_secs(60),
        || async {
            let s = stored(&op, &format!("subclass={tag}"))
                .await
                .unwrap_or_default();
            (s.len() >= n).then_some(s)
        },
    )
    .await;
    (relay.bytes_up.load(Ordering::SeqCst) - before, payload, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_compresses_its_uplink_by_default_and_not_when_told_not_to_and_its_envelopes_are_compact(
) {
    let n = 300;
    let (zipped, payload, got) = upward_bytes("zstd", None, n).await;
    let (plain, _, got_plain) = upward_bytes("plain", Some(false), n).await;
    eprintln!("{n} alarms, {payload} bytes of text: {zipped} bytes up compressed, {plain} plain");
    for stored in [&got, &got_plain] {
        assert_eq!(stored.len(), n, "each stored once");
        let mut texts: Vec<&str> = stored
            .iter()
            .map(|m| m["content"]["text"].as_str().unwrap_or(""))
            .collect();
        texts.sort();
        assert!(
            texts[0].starts_with("00000 interface eth0 on host db-00"),
            "{}",
            texts[0]
        );
    }
    assert!(
        plain > payload as u64,
        "uncompressed: every text travels as it is"
    );
    // The MLM advertises the compact form, so after the first exchange the
    // proxy sends one part a message with a compact header: under 350
    // bytes a message besides the text (the full form takes about 490).
    let overhead = (plain - payload as u64) / n as u64;
    assert!(
        overhead < 350,
        "{overhead} bytes a message besides the text"
    );
    assert!(
        zipped * 3 < payload as u64,
        "compressed: {zipped} bytes up for {payload} bytes of alarm text"
    );
}
