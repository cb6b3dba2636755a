//! End-to-end: the back-channel. Operator sends go down the tree in replies
//! to the children's POSTs, a group message crosses each link once per copy
//! needed below it, every destination gets it exactly once (through lost
//! replies and a killed MLM), and the delivery view follows it to
//! "processed".

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use http::{Method, StatusCode};
use rsnet_common::client::Target;
use rsnet_demo::{json_call, metric, Spec, Tree};
use rsnet_tests::{tempdir, wait_for, ConnectProxy};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

async fn api(t: &Target, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    json_call(t, method, path, body).await.expect("call")
}

/// Waits until the appserver has heard of every proxy (so routes exist).
async fn wait_topology(tree: &Tree) {
    let op = tree.operator_target().expect("operator");
    let want: HashSet<String> = tree
        .proxies()
        .iter()
        .map(|&i| tree.nodes[i].id.clone())
        .collect();
    wait_for("every proxy in the topology", LONG, || async {
        let (_, v) = api(&op, Method::GET, "/api/v1/components", None).await;
        let have: HashSet<String> = v["components"]
            .as_array()?
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect();
        want.is_subset(&have).then_some(())
    })
    .await;
}

async fn send_to(op: &Target, to: Value, extra: Value) -> String {
    let mut body = json!({ "to": to, "kind": "data", "class": "config", "payload": "max_conn=10" });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (s, v) = api(op, Method::POST, "/api/v1/messages", Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    v["id"].as_str().expect("id").to_string()
}

/// Everything a proxy's inbox holds now (leased for the caller).
async fn take(tree: &Tree, p: usize, wait_s: u64) -> Vec<Value> {
    let t = tree.node_target(p).expect("proxy");
    let (s, v) = api(
        &t,
        Method::GET,
        &format!("/v1/inbox?wait={wait_s}&limit=1000"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["messages"].as_array().cloned().unwrap_or_default()
}

/// Takes from proxy `p`'s inbox until it has at least `n` messages.
async fn take_at_least(tree: &Tree, p: usize, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} got only {got:?}",
            tree.nodes[p].id
        );
        got.extend(take(tree, p, 5).await);
    }
    got
}

async fn ack(tree: &Tree, p: usize, msgs: &[Value]) {
    let t = tree.node_target(p).expect("proxy");
    let acks: Vec<Value> = msgs
        .iter()
        .map(|m| json!({ "id": m["id"], "destination": m["destination"] }))
        .collect();
    let (s, v) = api(
        &t,
        Method::POST,
        "/v1/inbox/ack",
        Some(json!({ "acks": acks })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["acked"], json!(msgs.len()), "{v}");
}

/// Takes from proxy `p`'s inbox until message `id` arrives; asserts it came
/// once and acknowledges what was taken.
async fn receive_once(tree: &Tree, p: usize, id: &str) -> Value {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while !got.iter().any(|m: &Value| m["id"] == id) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never got {id}",
            tree.nodes[p].id
        );
        got.extend(take(tree, p, 5).await);
    }
    let copies = got.iter().filter(|m| m["id"] == id).count();
    assert_eq!(copies, 1, "{} got {id} {copies} times", tree.nodes[p].id);
    ack(tree, p, &got).await;
    got.into_iter().find(|m| m["id"] == id).expect("found")
}

async fn deliveries(op: &Target, id: &str) -> Value {
    let (s, v) = api(
        op,
        Method::GET,
        &format!("/api/v1/messages/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["delivery"].clone()
}

async fn states(op: &Target, id: &str) -> BTreeMap<String, String> {
    deliveries(op, id).await["destinations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v["state"].as_str().unwrap_or("").to_string()))
        .collect()
}

async fn wait_states(op: &Target, id: &str, want: &str, n: usize) {
    wait_for(&format!("{n} destinations {want}"), LONG, || async {
        let s = states(op, id).await;
        (s.len() == n && s.values().all(|v| v == want)).then_some(())
    })
    .await;
}

async fn counter(tree: &Tree, i: usize, name: &str) -> f64 {
    metric(&tree.node_target(i).expect("target"), name)
        .await
        .expect("metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_of_40_under_two_mlms_gets_one_copy_each_and_two_cross_the_top() {
    let proxies = (1..=40)
        .map(|n| (format!("p{n}"), Some(usize::from(n > 20))))
        .collect();
    let spec = Spec {
        proxies,
        heartbeat_s: 60,
        ..Spec::demo()
    };
    let tree = start("bc-40", &spec);
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    let members: Vec<String> = tree
        .proxies()
        .iter()
        .map(|&i| tree.nodes[i].id.clone())
        .collect();

    let (s, v) = api(
        &op,
        Method::PUT,
        "/api/v1/groups/acme-all",
        Some(json!({ "members": members })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(40));
    let (s, _) = api(
        &op,
        Method::PUT,
        "/api/v1/groups/mixed",
        Some(json!({ "members": ["acme.p1", "other.p1"] })),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "groups never span customers");

    let id = send_to(&op, json!("group:acme-all"), json!({ "precedence": 7 })).await;
    for &p in &tree.proxies() {
        let m = receive_once(&tree, p, &id).await;
        assert_eq!(m["content"]["payload"], "max_conn=10");
        assert_eq!(m["destination"], tree.nodes[p].id);
    }
    wait_states(&op, &id, "processed", 40).await;

    // The nodes' own counters: two copies crossed appserver → MLMs (one
    // each), each MLM received one, and each proxy received one.
    assert_eq!(counter(&tree, 0, "rsnet_backchannel_sent_total").await, 2.0);
    for m in [1, 2] {
        assert_eq!(
            counter(&tree, m, "rsnet_backchannel_received_total").await,
            1.0
        );
        assert_eq!(
            counter(&tree, m, "rsnet_backchannel_sent_total").await,
            20.0
        );
    }
    for &p in &tree.proxies() {
        assert_eq!(
            counter(&tree, p, "rsnet_backchannel_received_total").await,
            1.0
        );
    }
    // Nothing else is waiting anywhere.
    for &p in &tree.proxies()[..3] {
        assert!(take(&tree, p, 0).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stacked_mlms_split_per_child_and_reach_support_instances() {
    let spec = Spec {
        mlms: vec![("agg".into(), None), ("site".into(), Some(0))],
        proxies: vec![
            ("p1".into(), Some(1)),
            ("p2".into(), Some(1)),
            ("p3".into(), Some(0)),
        ],
        heartbeat_s: 60,
        ..Spec::demo()
    };
    let tree = start("bc-stack", &spec);
    // A support instance on p1, so it can be addressed.
    let p1 = tree.index("acme.p1").expect("p1");
    rsnet_demo::send(
        tree.nodes[p1].addr.expect("addr"),
        &[rsnet_demo::alarm("x", "db1")],
    )
    .await
    .expect("send");
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    wait_for("acme.p1.si1 known", LONG, || async {
        let (_, v) = api(&op, Method::GET, "/api/v1/components", None).await;
        v["components"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == "acme.p1.si1")
            .then_some(())
    })
    .await;

    let to = json!([
        "acme.p1",
        "acme.p1.si1",
        "acme.p2",
        "acme.p3",
        "acme.nowhere"
    ]);
    let id = send_to(&op, to, json!({})).await;
    // p1 holds one entry per destination (itself and its instance).
    let got = take_at_least(&tree, p1, 2).await;
    let dests: HashSet<&str> = got
        .iter()
        .filter_map(|m| m["destination"].as_str())
        .collect();
    assert_eq!(dests, HashSet::from(["acme.p1", "acme.p1.si1"]));
    let hops: Vec<&str> = got[0]["routing"]
        .as_array()
        .expect("routing")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(
        hops,
        ["provider.app", "acme.agg", "acme.site"],
        "route down the stack"
    );
    ack(&tree, p1, &got).await;
    for p in ["acme.p2", "acme.p3"] {
        receive_once(&tree, tree.index(p).expect("proxy"), &id).await;
    }
    wait_for("four processed, one failed", LONG, || async {
        let s = states(&op, &id).await;
        let processed = s.values().filter(|v| *v == "processed").count();
        (processed == 4 && s["acme.nowhere"] == "failed").then_some(())
    })
    .await;
    // One copy to agg; agg splits into site + p3; site into p1 + p2.
    let agg = tree.index("acme.agg").expect("agg");
    let site = tree.index("acme.site").expect("site");
    assert_eq!(counter(&tree, 0, "rsnet_backchannel_sent_total").await, 1.0);
    assert_eq!(
        counter(&tree, agg, "rsnet_backchannel_sent_total").await,
        2.0
    );
    assert_eq!(
        counter(&tree, site, "rsnet_backchannel_sent_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_reply_and_killed_mlm_still_deliver_exactly_once() {
    let relay = ConnectProxy::start().await;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![
            ("p1".into(), Some(0)),
            ("p2".into(), Some(0)),
            ("p3".into(), Some(0)),
        ],
        heartbeat_s: 60,
        mlm_uplink_extra: format!("http_proxy = \"http://{}\"", relay.addr),
        appserver_extra: "[backchannel]\nlease_ms = 1000\n".into(),
        mlm_extra: "[backchannel]\nlease_ms = 1000\n".into(),
        ..Spec::demo()
    };
    let mut tree = start("bc-loss", &spec);
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    let all = json!(["acme.p1", "acme.p2", "acme.p3"]);

    // 1. The reply carrying the message is lost: the appserver sent it
    //    (its counter says so) but the MLM never saw it.
    relay.black_hole(true);
    let id1 = send_to(&op, all.clone(), json!({})).await;
    wait_for("appserver sent the copy into the void", LONG, || async {
        (counter(&tree, 0, "rsnet_backchannel_sent_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        counter(&tree, 1, "rsnet_backchannel_received_total").await,
        0.0
    );
    relay.black_hole(false);
    for &p in &tree.proxies() {
        receive_once(&tree, p, &id1).await;
    }

    // 2. The MLM dies with the message somewhere between the appserver
    //    and the proxies, and comes back.
    let id2 = send_to(&op, all.clone(), json!({})).await;
    tokio::task::block_in_place(|| {
        tree.kill9(1);
        tree.restart(1)
    })
    .expect("mlm restarts");
    for &p in &tree.proxies() {
        receive_once(&tree, p, &id2).await;
    }
    wait_states(&op, &id1, "processed", 3).await;
    wait_states(&op, &id2, "processed", 3).await;
    // Resends reached the proxies at most as repeats, never as new messages.
    for &p in &tree.proxies() {
        assert_eq!(
            counter(&tree, p, "rsnet_backchannel_received_total").await,
            2.0
        );
        assert!(take(&tree, p, 0).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_proxy_gets_queue_in_priority_order_and_expired_show_expired() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 60,
        ..Spec::demo()
    };
    let mut tree = start("bc-offline", &spec);
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    let p1 = tree.index("acme.p1").expect("p1");
    assert!(
        tokio::task::block_in_place(|| tree.stop(p1, Duration::from_secs(10))),
        "proxy stops"
    );

    let low = send_to(
        &op,
        json!("acme.p1"),
        json!({ "precedence": 1, "payload": "low" }),
    )
    .await;
    let high = send_to(
        &op,
        json!("acme.p1"),
        json!({ "precedence": 9, "payload": "high" }),
    )
    .await;
    let mid = send_to(
        &op,
        json!("acme.p1"),
        json!({ "precedence": 5, "payload": "mid" }),
    )
    .await;
    let short = send_to(
        &op,
        json!("acme.p1"),
        json!({ "precedence": 9, "expiry_s": 1, "payload": "short" }),
    )
    .await;
    // While the proxy is away the copies wait at the MLM (in flight there).
    wait_for("queued copies held at the MLM", LONG, || async {
        let s = states(&op, &low).await;
        (s["acme.p1"] == "in-flight").then_some(())
    })
    .await;
    assert_eq!(
        deliveries(&op, &low).await["destinations"]["acme.p1"]["hop"],
        "acme.mlm1"
    );
    wait_for("the short-lived one expires", LONG, || async {
        (states(&op, &short).await["acme.p1"] == "expired").then_some(())
    })
    .await;

    tokio::task::block_in_place(|| tree.launch(p1)).expect("proxy restarts");
    let got = take_at_least(&tree, p1, 3).await;
    let order: Vec<&str> = got.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        order,
        [high.as_str(), mid.as_str(), low.as_str()],
        "precedence first"
    );
    ack(&tree, p1, &got).await;
    for id in [&high, &mid, &low] {
        wait_states(&op, id, "processed", 1).await;
    }
    assert_eq!(states(&op, &short).await["acme.p1"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_actions_act_and_report() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 60,
        ..Spec::demo()
    };
    let tree = start("bc-control", &spec);
    let p1 = tree.index("acme.p1").expect("p1");
    let local = tree.nodes[p1].addr.expect("addr");
    rsnet_demo::send(local, &[rsnet_demo::alarm("first", "db1")])
        .await
        .expect("send");
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    let control = |to: &str, action: &str| {
        let (op, to, action) = (op.clone(), to.to_string(), action.to_string());
        async move {
            let body = json!({ "class": "control", "subclass": action });
            send_to(&op, json!(to), body).await
        }
    };
    let result = |id: String, dest: &'static str| {
        let op = op.clone();
        async move {
            wait_for(&format!("{dest} answered"), LONG, || async {
                let d = deliveries(&op, &id).await;
                let t = d["destinations"][dest].clone();
                matches!(t["state"].as_str(), Some("processed" | "failed")).then_some(t)
            })
            .await
        }
    };

    let r = result(control("acme.p1", "ping").await, "acme.p1").await;
    assert_eq!(
        (r["state"].as_str(), r["reason"].as_str()),
        (Some("processed"), Some("pong"))
    );
    let r = result(control("acme.mlm1", "get-config").await, "acme.mlm1").await;
    assert!(
        r["reason"].as_str().unwrap_or("").contains("[uplink]"),
        "{r}"
    );
    // set-config: validated by the proxy's own loader, then saved.
    let set = |payload: &str| {
        let (op, payload) = (op.clone(), payload.to_string());
        async move {
            let body = json!({ "class": "control", "subclass": "set-config", "payload": payload });
            send_to(&op, json!("acme.p1"), body).await
        }
    };
    let r = result(set("heartbeat_interval_s = 0").await, "acme.p1").await;
    assert_eq!(r["state"], "failed", "{r}");
    let r = result(
        set("heartbeat_interval_s = 30\n[inbox]\nlease_s = 90").await,
        "acme.p1",
    )
    .await;
    assert_eq!(r["state"], "processed", "{r}");
    let saved = std::fs::read_to_string(&tree.nodes[p1].config).expect("config");
    assert!(
        saved.contains("heartbeat_interval_s = 30") && saved.contains("lease_s = 90"),
        "{saved}"
    );
    assert!(saved.contains("[uplink]"), "the rest is kept: {saved}");

    let r = result(control("acme.p1", "reboot-now").await, "acme.p1").await;
    assert_eq!(r["state"], "failed", "unknown actions fail loudly: {r}");

    // A disabled support instance is refused at the local API, until enabled.
    let r = result(
        control("acme.p1.si1", "disable-instance").await,
        "acme.p1.si1",
    )
    .await;
    assert_eq!(r["state"], "processed", "{r}");
    let refused = rsnet_demo::send(local, &[rsnet_demo::alarm("second", "db1")]).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("409")),
        "{refused:?}"
    );
    result(
        control("acme.p1.si1", "enable-instance").await,
        "acme.p1.si1",
    )
    .await;
    rsnet_demo::send(local, &[rsnet_demo::alarm("third", "db1")])
        .await
        .expect("accepted again");

    // Forwarding off: messages stay spooled (and so does the answer) until on.
    let off = control("acme.p1", "disable-forwarding").await;
    let p = tree.node_target(p1).expect("proxy");
    wait_for("forwarding off", LONG, || async {
        let (_, v) = api(&p, Method::GET, "/v1/status", None).await;
        (v["forwarding"] == "off").then_some(())
    })
    .await;
    let held = rsnet_demo::send(local, &[rsnet_demo::alarm("held", "db1")])
        .await
        .expect("spooled");
    let (_, v) = api(&p, Method::GET, "/v1/status", None).await;
    assert!(v["spool"]["messages"].as_u64().unwrap_or(0) >= 1, "{v}");
    result(control("acme.p1", "enable-forwarding").await, "acme.p1").await;
    result(off, "acme.p1").await;
    wait_for("held alarm stored", LONG, || async {
        let s = rsnet_demo::stored(&op, "class=alarm").await.ok()?;
        s.iter().any(|m| m["id"] == held[0].as_str()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_that_moves_to_another_mlm_is_rerouted() {
    let spec = Spec {
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 60,
        ..Spec::demo()
    };
    let mut tree = start("bc-move", &spec);
    let (mlm1, mlm2) = (
        tree.index("acme.mlm1").expect("mlm1"),
        tree.index("acme.mlm2").expect("mlm2"),
    );
    let p1 = tree.index("acme.p1").expect("p1");
    let op = tree.operator_target().expect("operator");
    wait_topology(&tree).await;
    let id = send_to(&op, json!("acme.p1"), json!({})).await;
    receive_once(&tree, p1, &id).await;
    assert_eq!(
        deliveries(&op, &id).await["destinations"]["acme.p1"]["via"],
        "acme.mlm1"
    );

    // Re-home p1 under mlm2 (as a failover would) and restart it.
    let url = |i: usize| {
        format!(
            "https://127.0.0.1:{}",
            tree.nodes[i].addr.expect("addr").port()
        )
    };
    let cfg = std::fs::read_to_string(&tree.nodes[p1].config).expect("config");
    let moved = cfg.replace(&url(mlm1), &url(mlm2));
    assert_ne!(cfg, moved);
    std::fs::write(&tree.nodes[p1].config, moved).expect("write");
    assert!(tokio::task::block_in_place(
        || tree.stop(p1, Duration::from_secs(10))
    ));
    tokio::task::block_in_place(|| tree.restart(p1)).expect("p1 restarts");
    // Once heard at mlm2 (its start-up notice), messages follow it there.
    wait_for("p1 heard via mlm2", LONG, || async {
        let (_, v) = api(&op, Method::GET, "/api/v1/components", None).await;
        let c = v["components"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == "acme.p1")?
            .clone();
        (c["parent_path"] == json!(["acme.mlm2"])).then_some(())
    })
    .await;
    let id = send_to(&op, json!("acme.p1"), json!({})).await;
    receive_once(&tree, p1, &id).await;
    assert_eq!(
        deliveries(&op, &id).await["destinations"]["acme.p1"]["via"],
        "acme.mlm2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_of_1000_messages_costs_the_proxy_one_commit() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        mlm_extra: "[backchannel]\nlease_ms = 1000\n".into(),
        ..Spec::demo()
    };
    let mut tree = start("bc-batch", &spec);
    let p1 = tree.index("acme.p1").expect("p1");
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    // With the proxy down, 1,000 messages wait at its MLM.
    tokio::task::block_in_place(|| tree.kill9(p1));
    let mut ids = HashSet::new();
    for i in 0..1000 {
        let extra = json!({ "payload": format!("item {i}") });
        ids.insert(send_to(&op, json!("acme.p1"), extra).await);
    }
    // The proxy's last long-poll, still held at the MLM when it died, may
    // take some copies into a reply nobody reads: wait until every such
    // lease has ended, so all 1,000 are there for the next reply.
    wait_for(
        "1000 copies queued at the MLM, none leased",
        LONG,
        || async {
            let queued = counter(&tree, 1, "rsnet_backchannel_queued_messages").await;
            let leased = counter(&tree, 1, "rsnet_backchannel_leased_messages").await;
            (queued >= 1000.0 && leased == 0.0).then_some(())
        },
    )
    .await;
    tokio::task::block_in_place(|| tree.restart(p1)).expect("restart");
    let t = tree.node_target(p1).expect("proxy");
    wait_for("1000 messages in the inbox", LONG, || async {
        let (_, v) = api(&t, Method::GET, "/v1/status", None).await;
        (v["inbox"]["messages"].as_u64()? >= 1000).then_some(())
    })
    .await;
    // They came down in one reply, and the proxy paid one commit for them.
    wait_for("1000 counted as received", LONG, || async {
        (counter(&tree, p1, "rsnet_backchannel_received_total").await >= 1000.0).then_some(())
    })
    .await;
    assert_eq!(
        counter(&tree, p1, "rsnet_backchannel_received_total").await,
        1000.0
    );
    assert_eq!(counter(&tree, p1, "rsnet_queue_commits_total").await, 1.0);
    let got = take_at_least(&tree, p1, 1000).await;
    let got: HashSet<String> = got
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_a_control_action_and_its_ack_runs_it_once() {
    let relay = ConnectProxy::start().await;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_uplink_extra: format!(
            "http_proxy = \"http://{}\"\nexchange_timeout_ms = 2000",
            relay.addr
        ),
        mlm_extra: "[backchannel]\nlease_ms = 1000\n".into(),
        ..Spec::demo()
    };
    let mut tree = start("bc-once", &spec);
    let p1 = tree.index("acme.p1").expect("p1");
    let local = tree.nodes[p1].addr.expect("addr");
    rsnet_demo::send(local, &[rsnet_demo::alarm("first", "db1")])
        .await
        .expect("send");
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    let instance_refused = || async move {
        rsnet_demo::send(local, &[rsnet_demo::alarm("probe", "db1")])
            .await
            .err()
            .is_some_and(|e| e.starts_with("409"))
    };
    assert!(!instance_refused().await);
    // From now on nothing the proxy sends reaches its MLM: its ack is lost.
    relay.black_hole_up(true);
    let id = send_to(
        &op,
        json!("acme.p1.si1"),
        json!({ "class": "control", "subclass": "disable-instance" }),
    )
    .await;
    wait_for("the action to take effect", LONG, || async {
        instance_refused().await.then_some(())
    })
    .await;
    // Killed before its ack got out; the MLM sends the message again once the proxy is back.
    tokio::task::block_in_place(|| tree.kill9(p1));
    relay.black_hole_up(false);
    tokio::task::block_in_place(|| tree.restart(p1)).expect("restart");
    wait_states(&op, &id, "processed", 1).await;
    wait_for("the MLM to have sent it again", LONG, || async {
        (counter(&tree, 1, "rsnet_backchannel_sent_total").await >= 2.0).then_some(())
    })
    .await;
    wait_for("the resend to be acknowledged", LONG, || async {
        (counter(&tree, 1, "rsnet_backchannel_acked_total").await >= 1.0).then_some(())
    })
    .await;
    // One run: one result stored, and the instance still disabled.
    let reports: Vec<Value> = rsnet_demo::stored(&op, "class=response&subclass=processed")
        .await
        .expect("stored")
        .into_iter()
        .filter(|m| m["content"]["request"] == json!(id))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(instance_refused().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_child_that_never_polls_fills_only_its_own_quota_and_its_sibling_gets_everything() {
    // Small per-child queues at the MLM: 64 KiB each.
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0)), ("p2".into(), Some(0))],
        heartbeat_s: 1,
        mlm_extra: "[backchannel]\nreply_bytes = 65536\nchild_capacity_bytes = 65536\n".into(),
        ..Spec::demo()
    };
    let mut tree = start("bc-quota", &spec);
    wait_topology(&tree).await;
    let op = tree.operator_target().unwrap();
    let (p1, p2) = (
        tree.index("acme.p1").unwrap(),
        tree.index("acme.p2").unwrap(),
    );
    let mlm = tree.index("acme.mlm1").unwrap();
    // p1 goes silent; everything sent to both is ~8 KiB a copy.
    tree.kill9(p1);
    let payload = "x".repeat(8 * 1024);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            send_to(
                &op,
                json!(["acme.p1", "acme.p2"]),
                json!({ "payload": payload }),
            )
            .await,
        );
    }
    // p2 gets all twenty, once each.
    let got = take_at_least(&tree, p2, 20).await;
    for id in &ids {
        assert_eq!(
            got.iter().filter(|m| m["id"] == id.as_str()).count(),
            1,
            "{id}"
        );
    }
    ack(&tree, p2, &got).await;
    // The later ones are not queued for p1: failed, saying where and why.
    let last = ids.last().unwrap();
    let failed = wait_for("the last message failed for p1", LONG, || async {
        let d = deliveries(&op, last).await;
        let t = d["destinations"]["acme.p1"].clone();
        (t["state"] == "failed").then_some(t)
    })
    .await;
    let why = failed["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("acme.mlm1") && why.contains("quota"),
        "{failed}"
    );
    assert!(counter(&tree, mlm, "rsnet_backchannel_over_quota_total").await >= 1.0);
    // p1's queue holds only its quota.
    let queued = counter(&tree, mlm, "rsnet_backchannel_queued_total").await;
    assert!(queued < 40.0, "copies queued at the MLM: {queued}");
}

/// What the appserver answered 202 for is durable with its record: killed
/// with SIGKILL right after a burst of sends and restarted, it still knows
/// every message's delivery record, and every copy reaches the proxy once.
/// SIGKILLs node `i`, starts it again, and answers the operator's target.
fn kill9_and_restart(tree: &mut Tree, i: usize) -> Target {
    tokio::task::block_in_place(|| {
        tree.kill9(i);
        tree.restart(i)
    })
    .expect("node restarts");
    tree.operator_target().expect("operator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_answered_before_a_kill_9_of_the_appserver_keep_their_records_and_arrive_once_and_their_reports_stay(
) {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 60,
        ..Spec::demo()
    };
    let mut tree = start("bc-app-kill", &spec);
    wait_topology(&tree).await;
    let op = tree.operator_target().expect("operator");
    let p1 = tree.index("acme.p1").expect("p1");
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(send_to(&op, json!("acme.p1"), json!({})).await);
    }
    let op = kill9_and_restart(&mut tree, 0);
    for id in &ids {
        let d = deliveries(&op, id).await;
        assert_eq!(d["id"], json!(id), "{d}");
    }
    let got = take_at_least(&tree, p1, ids.len()).await;
    let mut seen = HashSet::new();
    for m in &got {
        let id = m["id"].as_str().expect("id").to_string();
        assert!(ids.contains(&id), "a message nobody sent: {m}");
        assert!(seen.insert(id), "a copy twice: {m}");
    }
    ack(&tree, p1, &got).await;
    for id in &ids {
        wait_states(&op, id, "processed", 1).await;
    }
    // What the reports changed was written with them: another kill -9
    // keeps every record processed.
    let op = kill9_and_restart(&mut tree, 0);
    for id in &ids {
        let s = states(&op, id).await;
        assert!(
            s.len() == 1 && s.values().all(|v| v == "processed"),
            "{id}: {s:?}"
        );
    }
}
