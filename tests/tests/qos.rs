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
use rsnet_tests::{tempdir, wait_for, RawChild};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);

fn start(tag: &str, spec: &Spec) -> Tree {
    tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"))
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
        let (_, v) = json_call(
            &tree.node_target(p1).unwrap(),
            Method::GET,
            "/v1/status",
            None,
        )
        .await
        .ok()?;
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
