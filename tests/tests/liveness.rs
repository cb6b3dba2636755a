//! Liveness and versions, as an operator sees them: a proxy killed with
//! SIGKILL is reported stale on the stream within three heartbeat
//! intervals and recovered once it runs again; every node's version, role
//! and status tree are in the topology.

use std::time::{Duration, Instant};

use rsnet_demo::{json_call, Spec, Tree};
use rsnet_tests::{small_tree, tempdir, wait_for, Sse};
use serde_json::Value;

const HEARTBEAT_S: u64 = 2;

/// The next stream event of `subclass` about `component`, skipping others.
async fn next_about(sse: &mut Sse, component: &str) -> Value {
    loop {
        for (_, data) in sse.events(1).await {
            let v: Value = serde_json::from_str(&data).expect("event JSON");
            let about = v["content"]["data"]["payload"]
                .as_str()
                .and_then(|p| serde_json::from_str::<Value>(p).ok());
            if about.as_ref().and_then(|a| a["component"].as_str()) == Some(component) {
                return v;
            }
        }
    }
}

async fn components(tree: &Tree) -> Vec<Value> {
    let op = tree.operator_target().expect("operator target");
    json_call(&op, http::Method::GET, "/api/v1/components", None)
        .await
        .ok()
        .and_then(|(_, v)| v["components"].as_array().cloned())
        .unwrap_or_default()
}

fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|c| c["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_is_reported_stale_within_three_intervals_and_recovered_on_restart() {
    let mut tree = tokio::task::block_in_place(|| {
        Tree::start(
            &tempdir("liveness"),
            &Spec {
                mlms: vec![("mlm1".into(), None)],
                proxies: vec![("p1".into(), Some(0)), ("p2".into(), Some(0))],
                heartbeat_s: HEARTBEAT_S,
                ..Spec::demo()
            },
        )
    })
    .expect("tree starts");
    tree.remove_on_drop = true;
    let op = tree.operator_target().expect("operator target");
    let version = rsnet_common::VERSION;

    // Every node is known with its role, version and status tree.
    let list = wait_for(
        "every node alive with its version",
        Duration::from_secs(30),
        || async {
            let list = components(&tree).await;
            ["acme.p1", "acme.p2", "acme.mlm1"]
                .iter()
                .all(|id| {
                    find(&list, id).is_some_and(|c| {
                        c["liveness"] == "alive"
                            && c["version"] == version
                            && c["status"].is_object()
                    })
                })
                .then_some(list)
        },
    )
    .await;
    let p1 = find(&list, "acme.p1").unwrap();
    assert_eq!(p1["role"], "proxy");
    assert_eq!(p1["parent_path"], serde_json::json!(["acme.mlm1"]));
    assert_eq!(p1["status"]["interval_s"], HEARTBEAT_S);
    assert!(
        p1["status"]["spool"]["capacity"].as_u64().unwrap_or(0) > 0,
        "{p1}"
    );
    let mlm = find(&list, "acme.mlm1").unwrap();
    assert_eq!(mlm["role"], "mlm");
    assert!(mlm["status"]["queues"].is_object(), "{mlm}");
    let app = list
        .iter()
        .find(|c| c["role"] == "appserver")
        .expect("the appserver lists itself");
    assert_eq!(
        (&app["version"], &app["liveness"]),
        (&Value::from(version), &Value::from("alive"))
    );

    // The operator's CLI draws the tree: the proxies under their MLM.
    let drawn = rsnet_tests::ctl(&tree, &["components", "--tree"]);
    let line = |id: &str| {
        drawn
            .lines()
            .find(|l| l.contains(&format!("{id}  ")))
            .unwrap_or_else(|| panic!("{id} in\n{drawn}"))
            .to_string()
    };
    assert!(
        line("acme.mlm1").starts_with("└─ acme.mlm1  mlm  "),
        "{drawn}"
    );
    for p in ["acme.p1", "acme.p2"] {
        let l = line(p);
        assert!(
            l.starts_with("   ├─ ") || l.starts_with("   └─ "),
            "{drawn}"
        );
        assert!(
            l.contains(&format!("proxy  {version}  alive  spool ")),
            "{drawn}"
        );
    }
    // And follows the stream, a line per message (from the last message
    // stored now, so that what the kill brings cannot be missed).
    let (_, page) = json_call(&op, http::Method::GET, "/api/v1/messages?limit=1", None)
        .await
        .expect("messages");
    let last = page["last"]
        .as_u64()
        .expect("the last sequence number")
        .to_string();
    let mut watch = std::process::Command::new(rsnet_demo::bin_dir().join("rsnet-ctl"))
        .arg("--tree")
        .arg(tree.dir.join("tree.json"))
        .args(["watch", "--subclass", "stale", "--after", &last])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("rsnet-ctl watch");
    let watched = {
        let out = watch.stdout.take().expect("watch's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        rx
    };

    // Killed without a word: stale on the stream within three intervals.
    let mut sse = Sse::open(&op, "class=infrastructure&subclass=stale", None).await;
    let p1_index = tree.index("acme.p1").unwrap();
    let killed = Instant::now();
    tree.kill9(p1_index);
    let stale = tokio::time::timeout(
        Duration::from_secs(6 * HEARTBEAT_S),
        next_about(&mut sse, "acme.p1"),
    )
    .await
    .expect("a stale event for acme.p1");
    let took = killed.elapsed();
    eprintln!("stale reported {took:?} after the kill");
    assert!(
        took <= Duration::from_secs(3 * HEARTBEAT_S),
        "stale reported {took:?} after the kill (heartbeat every {HEARTBEAT_S} s)"
    );
    assert_eq!(stale["class"], "infrastructure");
    assert_eq!(stale["subclass"], "stale");
    assert!(
        stale["content"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("acme.p1"),
        "{stale}"
    );
    let line = watched
        .recv_timeout(Duration::from_secs(10))
        .expect("a line from rsnet-ctl watch");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        line.contains("infrastructure/stale") && line.contains("acme.p1 is stale"),
        "{line}"
    );
    let list = components(&tree).await;
    assert_eq!(find(&list, "acme.p1").unwrap()["liveness"], "stale");
    let drawn = rsnet_tests::ctl(&tree, &["components", "--tree"]);
    assert!(
        drawn.contains("acme.p1  proxy  ") && drawn.contains("  STALE since "),
        "{drawn}"
    );
    assert_eq!(find(&list, "acme.p2").unwrap()["liveness"], "alive");

    // The appserver killed with SIGKILL meanwhile: the change it stored
    // stands (no second stale event at its restart, p1 still stale).
    tokio::task::block_in_place(|| {
        tree.kill9(0);
        tree.restart(0)
    })
    .expect("the appserver restarts");
    wait_for(
        "acme.p1 still stale after the appserver's restart",
        Duration::from_secs(10),
        || async {
            let list = components(&tree).await;
            (find(&list, "acme.p1")?["liveness"] == "stale").then_some(())
        },
    )
    .await;

    // Back: recovered on the stream, alive in the topology.
    let mut sse = Sse::open(&op, "class=infrastructure&subclass=recovered", None).await;
    tokio::task::block_in_place(|| tree.restart(p1_index)).expect("p1 restarts");
    let recovered = tokio::time::timeout(Duration::from_secs(30), next_about(&mut sse, "acme.p1"))
        .await
        .expect("a recovered event for acme.p1");
    assert_eq!(recovered["subclass"], "recovered");
    wait_for("acme.p1 alive again", Duration::from_secs(10), || async {
        let list = components(&tree).await;
        (find(&list, "acme.p1")?["liveness"] == "alive").then_some(())
    })
    .await;
    // One stale and one recovered event, not one per tick nor one per
    // start of the appserver.
    for sub in ["stale", "recovered"] {
        let all = rsnet_demo::stored(&op, &format!("class=infrastructure&subclass={sub}"))
            .await
            .expect("stored events");
        let about_p1 = all
            .iter()
            .filter(|m| {
                m["content"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("acme.p1 "))
            })
            .count();
        assert_eq!(about_p1, 1, "{sub}: {all:?}");
    }
}

/// The modules of `id`'s status tree at the appserver: name → (ID,
/// version, instance keys).
async fn modules_of(tree: &Tree, id: &str) -> Vec<(String, Value, Value, Vec<String>)> {
    let list = components(tree).await;
    let Some(c) = find(&list, id) else {
        return Vec::new();
    };
    c["status"]["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mut keys: Vec<String> = m["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["key"].as_str().map(str::to_string))
                .collect();
            keys.sort();
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["id"].clone(),
                m["version"].clone(),
                keys,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrators_module_is_in_the_status_tree_until_it_is_deregistered() {
    let mut tree = small_tree("modules", 1);
    let p1 = tree.index("acme.p1").expect("p1");
    let local = rsnet_common::client::Target::Plain(tree.nodes[p1].addr.expect("local API"));
    let put = |name: &str, body: Value| {
        let (local, path) = (local.clone(), format!("/v1/modules/{name}"));
        async move {
            json_call(&local, http::Method::PUT, &path, Some(body))
                .await
                .expect("PUT")
        }
    };
    // What an integrator gets wrong is refused, naming it.
    for (name, body, why) in [
        ("Nagios", serde_json::json!({}), "module name"),
        ("local-api", serde_json::json!({}), "the proxy's own"),
        (
            "nagios",
            serde_json::json!({ "version": "4\n4" }),
            "version",
        ),
        (
            "nagios",
            serde_json::json!({ "color": "blue" }),
            "unknown field",
        ),
        (
            "nagios",
            serde_json::json!({ "instances": (0..1001).map(|i| format!("h{i}")).collect::<Vec<_>>() }),
            "at most 1000",
        ),
        (
            "nagios",
            serde_json::json!({ "instances": [""] }),
            "instances",
        ),
    ] {
        let (s, v) = put(name, body).await;
        assert_eq!(s, http::StatusCode::BAD_REQUEST, "{name}: {v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    for raw in ["", "{", "[]", "null", "{\"instances\": \"db1\"}"] {
        let (s, b) = rsnet_common::client::call(
            &local,
            http::Method::PUT,
            "/v1/modules/nagios",
            Some(("application/json", bytes::Bytes::from(raw))),
        )
        .await
        .expect("PUT");
        assert_eq!(s, http::StatusCode::BAD_REQUEST, "{raw:?}: {b:?}");
    }
    let (s, v) = put(
        "nagios",
        serde_json::json!({ "version": "4.4.1", "instances": ["db1.acme", "web1.acme"] }),
    )
    .await;
    assert_eq!(s, http::StatusCode::OK, "{v}");
    assert_eq!(v["id"], "acme.p1.m1");
    // A message about a host no module claims: under local-api.
    rsnet_demo::send(
        tree.nodes[p1].addr.expect("local API"),
        &[rsnet_demo::alarm("loose", "other-host")],
    )
    .await
    .expect("alarm accepted");
    let want = vec![
        (
            "nagios".to_string(),
            Value::from("acme.p1.m1"),
            Value::from("4.4.1"),
            vec!["db1.acme".to_string(), "web1.acme".to_string()],
        ),
        (
            "local-api".to_string(),
            Value::Null,
            Value::Null,
            vec!["other-host".to_string()],
        ),
    ];
    wait_for(
        "the module in the appserver's topology",
        Duration::from_secs(30),
        || async { (modules_of(&tree, "acme.p1").await == want).then_some(()) },
    )
    .await;

    // Registered again: same ID, new version; kept across a restart.
    let (s, v) = put(
        "nagios",
        serde_json::json!({ "version": "4.5", "instances": ["db1.acme"] }),
    )
    .await;
    assert_eq!(
        (s, &v["id"]),
        (http::StatusCode::OK, &Value::from("acme.p1.m1")),
        "{v}"
    );
    tokio::task::block_in_place(|| {
        assert!(tree.stop(p1, Duration::from_secs(10)), "p1 stops");
        tree.restart(p1)
    })
    .expect("p1 restarts");
    let local = rsnet_common::client::Target::Plain(tree.nodes[p1].addr.expect("local API"));
    let (s, v) = json_call(&local, http::Method::GET, "/v1/modules/nagios", None)
        .await
        .expect("GET");
    assert_eq!(
        (s, &v["version"]),
        (http::StatusCode::OK, &Value::from("4.5")),
        "{v}"
    );

    // Deregistered: gone from the tree, its instances back under local-api.
    let (s, v) = json_call(&local, http::Method::DELETE, "/v1/modules/nagios", None)
        .await
        .expect("DELETE");
    assert_eq!(s, http::StatusCode::OK, "{v}");
    let (s, _) = json_call(&local, http::Method::DELETE, "/v1/modules/nagios", None)
        .await
        .expect("DELETE");
    assert_eq!(s, http::StatusCode::NOT_FOUND);
    let want = vec![(
        "local-api".to_string(),
        Value::Null,
        Value::Null,
        vec![
            "db1.acme".to_string(),
            "other-host".to_string(),
            "web1.acme".to_string(),
        ],
    )];
    wait_for(
        "the module gone from the topology",
        Duration::from_secs(30),
        || async { (modules_of(&tree, "acme.p1").await == want).then_some(()) },
    )
    .await;

    // At most 255 modules: the 256th is refused, registering one again is not.
    let empty = || Some(serde_json::json!({}));
    for i in 0..255 {
        let path = format!("/v1/modules/m{i}");
        let (s, v) = json_call(&local, http::Method::PUT, &path, empty())
            .await
            .expect("PUT");
        assert_eq!(s, http::StatusCode::OK, "m{i}: {v}");
    }
    let (s, v) = json_call(&local, http::Method::PUT, "/v1/modules/one-more", empty())
        .await
        .expect("PUT");
    assert_eq!(s, http::StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("at most 255"), "{v}");
    let (s, _) = json_call(&local, http::Method::PUT, "/v1/modules/m7", empty())
        .await
        .expect("PUT");
    assert_eq!(s, http::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlm_reports_how_long_its_parent_was_out_of_reach_and_what_it_held_back() {
    let mut tree = small_tree("outage", 1);
    wait_for("the tree up", Duration::from_secs(30), || async {
        let list = components(&tree).await;
        (find(&list, "acme.p1")?["liveness"] == "alive").then_some(())
    })
    .await;
    let mlm = tree
        .node_target(tree.index("acme.mlm1").expect("mlm1"))
        .expect("mlm1");
    let p1 = tree.nodes[tree.index("acme.p1").expect("p1")]
        .addr
        .expect("p1");

    // The appserver gone: the MLM answers its child "retry after".
    tree.kill9(0);
    let killed = Instant::now();
    let alarms: Vec<Value> = (0..20)
        .map(|i| rsnet_demo::alarm(&format!("held {i}"), "db1"))
        .collect();
    let ids = rsnet_demo::send(p1, &alarms)
        .await
        .expect("spooled at the proxy");
    // An outage is reported from 5 s on.
    wait_for(
        "alarms held back for more than 5 s",
        Duration::from_secs(30),
        || async {
            let held = rsnet_demo::metric(&mlm, "rsnet_relay_deferred_total")
                .await
                .ok()?;
            (held >= 20.0 && killed.elapsed() > Duration::from_secs(6)).then_some(())
        },
    )
    .await;
    tokio::task::block_in_place(|| tree.restart(0)).expect("the appserver restarts");
    let op = tree.operator_target().expect("operator");
    let report = wait_for(
        "the MLM's outage report",
        Duration::from_secs(30),
        || async {
            let got = rsnet_demo::stored(&op, "subclass=parent-restored")
                .await
                .ok()?;
            got.into_iter().find(|m| m["source"] == "acme.mlm1")
        },
    )
    .await;
    assert_eq!(report["class"], "infrastructure");
    assert_eq!(report["version"], rsnet_common::VERSION);
    let data: Value = serde_json::from_str(
        report["content"]["data"]["payload"]
            .as_str()
            .expect("JSON data"),
    )
    .expect("JSON");
    let down = data["down_ms"].as_u64().unwrap_or(0);
    assert!((5_000..60_000).contains(&down), "{data}");
    assert!(
        data["deferred_messages"].as_u64().unwrap_or(0) >= 20,
        "{data}"
    );
    let text = report["content"]["text"].as_str().unwrap_or("");
    assert!(
        text.contains("out of reach for") && text.contains("deferred"),
        "{text}"
    );
    // Its child's parent (the MLM) answered all along: nothing to report.
    let all = rsnet_demo::stored(&op, "subclass=parent-restored")
        .await
        .expect("stored");
    assert!(all.iter().all(|m| m["source"] != "acme.p1"), "{all:?}");
    // And what was held back arrives.
    wait_for(
        "the held alarms stored",
        Duration::from_secs(30),
        || async {
            let got = rsnet_demo::stored(&op, "class=alarm").await.ok()?;
            ids.iter()
                .all(|id| got.iter().any(|m| m["id"] == id.as_str()))
                .then_some(())
        },
    )
    .await;
}
