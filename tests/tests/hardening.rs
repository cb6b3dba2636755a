//! End-to-end: an MLM under abuse by a leaked proxy key. Many connections
//! with large bodies at once stay within the MLM's memory budget for bodies
//! (reserved before a byte is read; what does not fit is refused with 503
//! and a retry-after), and a well-behaved proxy's traffic keeps flowing.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use rsnet_common::client::call;
use rsnet_common::envelope::{Control, EnvelopeWriter};
use rsnet_common::model::*;
use rsnet_common::tls::Role;
use rsnet_common::Message;
use rsnet_demo::{send, stored, Spec, Tree};
use rsnet_tests::{tempdir, wait_for, RawChild};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(120);

/// Resident memory now and at its peak, in bytes, of process `pid`.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_eight_large_bodies_at_once_stay_in_the_budget_and_good_traffic_flows() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = tokio::task::block_in_place(|| Tree::start(&tempdir("hardening-memory"), &spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    tree.remove_on_drop = true;
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    let pid = tree.nodes[mlm].pid().unwrap();
    let (_, before) = rss(pid);

    // One leaked proxy key; a body of 15 messages of 0.9 MiB (each inside
    // every per-part and per-envelope limit), already expired so nothing
    // of it is stored.
    let attacker = RawChild::new(&tree, "acme.p9", Role::Proxy, tree.nodes[mlm].addr.unwrap());
    let mut w = EnvelopeWriter::new();
    w.control(&Control::default());
    for _ in 0..15 {
        let mut m = Message::forward(
            attacker.id.clone(),
            "data",
            Some("flood"),
            Content::Data(Data {
                mime: "application/octet-stream".into(),
                encoding: Encoding::Text,
                payload: Bytes::from(vec![b'x'; 900 * 1024]),
            }),
        );
        m.header.qos.expiry = Some(Timestamp(1));
        w.message(&m);
    }
    let (ct, body) = w.finish();
    assert!(body.len() > 13 << 20, "{} bytes", body.len());
    let flood: Vec<_> = (0..48)
        .map(|_| {
            let (t, ct, body) = (attacker.target.clone(), ct.clone(), body.clone());
            tokio::spawn(async move {
                call(&t, Method::POST, "/rs/v1/exchange", Some((&ct, body)))
                    .await
                    .map(|(s, _)| s.as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();

    // Meanwhile a well-behaved proxy sends 100 alarms.
    let p1 = tree.nodes[tree.index("acme.p1").unwrap()].addr.unwrap();
    let alarms: Vec<Value> = (0..100)
        .map(|i| json!({ "kind": "alarm", "class": "alarm", "subclass": "good", "severity": "major", "text": format!("{i}") }))
        .collect();
    let ids = send(p1, &alarms).await.unwrap();
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.unwrap());
    }
    wait_for("the good proxy's alarms stored", LONG, || async {
        let all = stored(&op, "subclass=good").await.ok()?;
        ids.iter()
            .all(|id| all.iter().any(|m| m["id"] == id.as_str()))
            .then_some(())
    })
    .await;
    let (now, peak) = rss(pid);
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    eprintln!(
        "48 bodies of 13.5 MiB: {ok} taken, {busy} refused (503); MLM resident {} MiB before, {} MiB peak, {} MiB after",
        before >> 20,
        peak >> 20,
        now >> 20
    );
    assert_eq!(ok + busy, 48, "every flood request answered: {statuses:?}");
    // (Without the budget, [limits] max_body_memory_bytes = 4 GiB, the same
    // flood peaks at about 410 MiB here; with the default 64 MiB, ~40 MiB.)
    assert!(
        peak < 256 << 20,
        "MLM peak resident memory {} MiB",
        peak >> 20
    );
    let refused = rsnet_demo::metric(
        &tree.node_target(mlm).unwrap(),
        "rsnet_body_budget_refused_total",
    )
    .await
    .unwrap();
    assert_eq!(refused as usize, busy);
    tree.shutdown();
}
