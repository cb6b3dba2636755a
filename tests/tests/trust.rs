//! End-to-end: trust that is scoped and revocable. A proxy revoked while it
//! holds a keep-alive connection to its MLM is refused on that same
//! connection at its next request, within seconds; a revoked MLM, or one
//! whose scopes do not cover the child, is refused by the child; a class
//! the proxy's certificate does not allow is parked while the others flow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rsnet_common::envelope::{Control, EnvelopeWriter};
use rsnet_common::link::Link;
use rsnet_common::model::*;
use rsnet_common::tls::{Role, TlsPaths};
use rsnet_common::Message;
use rsnet_demo::{send, stored, Spec, Tree};
use rsnet_tests::{proxy_status, tempdir, wait_for};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

fn revoke(tree: &Tree, id: &str) {
    let out = std::process::Command::new(rsnet_demo::bin_dir().join("rsnet-certs"))
        .args(["revoke", "--dir"])
        .arg(tree.dir.join("pki"))
        .args(["--id", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn event(from: &rsnet_common::id::ComponentId, text: &str) -> Message {
    Message::forward(
        from.clone(),
        "event",
        Some("revocation"),
        Content::Event(Event {
            support_instance: None,
            text: text.into(),
            data: None,
        }),
    )
    .with_hop(from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_proxy_is_cut_off_on_the_connection_it_holds_within_seconds() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = start("revoke-proxy", &spec);
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    // A child that keeps one connection open (its own Link, which is not
    // told of the CRL: only the MLM's check can stop it).
    let f = tree.pki.issue("acme.p7", Role::Proxy, &[], &[]).unwrap();
    let tls = rsnet_common::tls::client_config(&TlsPaths {
        ca: tree.pki.ca(),
        cert: f.cert,
        key: f.key,
        crl: None,
    })
    .unwrap();
    let url = format!("https://127.0.0.1:{}", tree.nodes[mlm].addr.unwrap().port());
    let link: Arc<Link> = Link::new(&[url], tls, None).unwrap();
    let me: rsnet_common::id::ComponentId = "acme.p7".parse().unwrap();
    let exchange = |text: String| {
        let (link, me) = (link.clone(), me.clone());
        async move {
            let mut w = EnvelopeWriter::new();
            w.control(&Control::default());
            let m = event(&me, &text);
            w.message(&m);
            link.exchange(w, Duration::from_secs(10))
                .await
                .map(|_| m.header.id.to_string())
        }
    };
    let first = exchange("before".into()).await.expect("accepted before");
    wait_for("the first event stored", LONG, || async {
        let all = stored(&op, "subclass=revocation").await.ok()?;
        all.iter().any(|m| m["id"] == first.as_str()).then_some(())
    })
    .await;

    // A long-poll it holds open: it must end at the revocation, not at its wait.
    let held = {
        let link = link.clone();
        tokio::spawn(async move {
            let mut w = EnvelopeWriter::new();
            w.control(&Control {
                wait_ms: Some(30_000),
                ..Control::default()
            });
            let r = link.exchange(w, Duration::from_secs(45)).await;
            (r.map(|_| ()), Instant::now())
        })
    };
    wait_for("the long-poll held at the MLM", LONG, || async {
        let v = rsnet_demo::metric(&tree.node_target(mlm).ok()?, "rsnet_backchannel_long_polls")
            .await
            .ok()?;
        (v >= 1.0).then_some(())
    })
    .await;
    revoke(&tree, "acme.p7");
    let t0 = Instant::now();
    // It keeps sending, on its open connection; within seconds it is refused.
    let mut i = 0;
    let refused = wait_for("the revoked proxy refused", LONG, || {
        i += 1;
        let e = exchange(format!("after {i}"));
        async move { e.await.err() }
    })
    .await;
    let took = t0.elapsed();
    eprintln!("refused {took:?} after the revocation: {refused}");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    // Nothing it sends now is stored.
    assert!(exchange("later".into()).await.is_err());
    let (r, ended) = held.await.unwrap();
    let e = r.expect_err("the held long-poll must be refused");
    let took = ended.duration_since(t0);
    eprintln!("held long-poll ended {took:?} after the revocation: {e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    assert!(
        took < Duration::from_secs(5),
        "long-poll ended after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_mlm_is_refused_by_its_children() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = start("revoke-mlm", &spec);
    let op = tree.operator_target().unwrap();
    let p1 = tree.index("acme.p1").unwrap();
    let addr = tree.nodes[p1].addr.unwrap();
    let ev =
        |t: &str| json!({ "kind": "event", "class": "event", "subclass": "revocation", "text": t });
    let ids = send(addr, &[ev("before")]).await.unwrap();
    wait_for("stored before", LONG, || async {
        let all = stored(&op, "subclass=revocation").await.ok()?;
        all.iter().any(|m| m["id"] == ids[0].as_str()).then_some(())
    })
    .await;
    revoke(&tree, "acme.mlm1");
    // The proxy keeps sending; it refuses its parent once the CRL names it.
    let log = tree.nodes[p1].log.clone();
    let mut n = 0;
    wait_for("the proxy refuses its revoked parent", LONG, || {
        n += 1;
        let text = format!("after {n}");
        let log = log.clone();
        async move {
            send(addr, &[ev(&text)]).await.ok()?;
            let l = std::fs::read_to_string(&log).ok()?;
            l.contains("acme.mlm1's certificate is revoked")
                .then_some(())
        }
    })
    .await;
    let st = proxy_status(&tree, p1).await.unwrap();
    assert!(
        st["spool"]["messages"].as_u64().unwrap() >= 1,
        "what it could not send stays spooled: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_refuses_a_parent_whose_scope_does_not_cover_it() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("scope-parent", &spec);
    let op = tree.operator_target().unwrap();
    let (mlm, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    let addr = tree.nodes[p1].addr.unwrap();
    let ev = |t: &str| json!({ "kind": "event", "class": "event", "subclass": "scope", "text": t });
    let ids = send(addr, &[ev("before")]).await.unwrap();
    wait_for("stored before", LONG, || async {
        let all = stored(&op, "subclass=scope").await.ok()?;
        all.iter().any(|m| m["id"] == ids[0].as_str()).then_some(())
    })
    .await;
    // The MLM now holds a certificate for customer beta only (a provider
    // MLM of another customer, or a stolen one): acme.p1 must not use it.
    tree.pki
        .issue("acme.mlm1", Role::Mlm, &[], &["beta".to_string()])
        .unwrap();
    tokio::task::block_in_place(|| {
        tree.stop(mlm, Duration::from_secs(10));
        tree.restart(mlm)
    })
    .unwrap();
    let log = tree.nodes[p1].log.clone();
    let later = send(addr, &[ev("after")]).await.unwrap();
    wait_for("the proxy refuses the parent", LONG, || {
        let log = log.clone();
        async move {
            let l = std::fs::read_to_string(&log).ok()?;
            l.contains("acme.mlm1's scopes (beta) do not cover acme.p1")
                .then_some(())
        }
    })
    .await;
    let st = proxy_status(&tree, p1).await.unwrap();
    assert!(st["spool"]["messages"].as_u64().unwrap() >= 1, "{st}");
    let all = stored(&op, "subclass=scope").await.unwrap();
    assert!(!all.iter().any(|m| m["id"] == later[0].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_outside_the_certificate_is_parked_while_the_others_flow() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("class-perm", &spec);
    let op = tree.operator_target().unwrap();
    let p1 = tree.index("acme.p1").unwrap();
    // acme.p1 may send alarms only (and the protocol's own classes).
    tokio::task::block_in_place(|| tree.stop(p1, Duration::from_secs(10)));
    tree.pki
        .issue_with(
            "acme.p1",
            Role::Proxy,
            &[],
            &[],
            &[],
            &["alarm".to_string()],
        )
        .unwrap();
    tokio::task::block_in_place(|| tree.restart(p1)).unwrap();
    let addr = tree.nodes[p1].addr.unwrap();
    let ids = send(
        addr,
        &[
            json!({ "kind": "event", "class": "event", "subclass": "perm", "text": "not allowed" }),
            json!({ "kind": "alarm", "class": "alarm", "subclass": "perm", "severity": "major", "text": "allowed" }),
        ],
    )
    .await
    .unwrap();
    wait_for("the alarm stored", LONG, || async {
        let all = stored(&op, "subclass=perm").await.ok()?;
        all.iter().any(|m| m["id"] == ids[1].as_str()).then_some(())
    })
    .await;
    // The event is parked at the proxy, with the reason, and never stored.
    let st = wait_for("the event's class parked", LONG, || async {
        let st = proxy_status(&tree, p1).await?;
        (st["parked"][0]["class"] == "event").then_some(st)
    })
    .await;
    let why = st["parked"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains("class event is not allowed for acme.p1") && why.contains("alarm"),
        "{st}"
    );
    assert!(st["spool"]["messages"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["dead_letters"]["count"].as_u64().unwrap_or(0), 0, "{st}");
    let all = stored(&op, "subclass=perm").await.unwrap();
    assert!(!all.iter().any(|m| m["id"] == ids[0].as_str()));
    // More alarms keep flowing while the event waits.
    let more = send(
        addr,
        &[json!({ "kind": "alarm", "class": "alarm", "subclass": "perm", "severity": "minor", "text": "still" })],
    )
    .await
    .unwrap();
    wait_for("the next alarm stored", LONG, || async {
        let all = stored(&op, "subclass=perm").await.ok()?;
        all.iter()
            .any(|m| m["id"] == more[0].as_str())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_without_a_restart() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = start("renew", &spec);
    let op = tree.operator_target().unwrap();
    let p1 = tree.index("acme.p1").unwrap();
    let addr = tree.nodes[p1].addr.unwrap();
    let pid = tree.nodes[p1].pid();
    let ev = |t: &str| json!({ "kind": "event", "class": "event", "subclass": "renew", "text": t });
    let ids = send(addr, &[ev("old certificate")]).await.unwrap();
    wait_for("stored under the old certificate", LONG, || async {
        let all = stored(&op, "subclass=renew").await.ok()?;
        all.iter().any(|m| m["id"] == ids[0].as_str()).then_some(())
    })
    .await;
    // Renewed in place (the same files), now for alarms only: the running
    // proxy picks it up and the MLM sees the new certificate.
    tree.pki
        .issue_with(
            "acme.p1",
            Role::Proxy,
            &[],
            &[],
            &[],
            &["alarm".to_string()],
        )
        .unwrap();
    wait_for(
        "the proxy presents the renewed certificate",
        LONG,
        || async {
            send(addr, &[ev("new certificate")]).await.ok()?;
            let st = proxy_status(&tree, p1).await?;
            (st["parked"][0]["class"] == "event").then_some(())
        },
    )
    .await;
    assert_eq!(tree.nodes[p1].pid(), pid, "no restart");
    let log = std::fs::read_to_string(&tree.nodes[p1].log).unwrap();
    assert!(log.contains("own certificate renewed"), "the proxy says so");
}

/// A control action `action` for `to`, as a hostile MLM would hand it down.
fn control_for(to: &str, action: &str) -> Message {
    use rsnet_common::model::{Destination, Direction};
    let mut m = Message::forward(
        "acme.evil".parse().unwrap(),
        rsnet_common::control::CLASS,
        Some(action),
        Content::Data(Data {
            mime: "text/plain".into(),
            encoding: Encoding::Text,
            payload: bytes::Bytes::new(),
        }),
    );
    m.header.direction = Direction::Destination(Destination {
        ids: vec![to.parse().unwrap()],
        group: None,
    });
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_action_is_carried_out_only_as_the_appserver_sealed_it() {
    let spec = Spec {
        mlms: vec![],
        proxies: vec![],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("trust-sealed-control", &spec);
    // A compromised MLM above two proxies.
    let f = tree.pki.issue("acme.evil", Role::Mlm, &[], &[]).unwrap();
    let fake = rsnet_tests::FakeParent::start(
        TlsPaths {
            ca: tree.pki.ca(),
            cert: f.cert,
            key: f.key,
            crl: None,
        },
        Vec::new(),
    )
    .await;
    let url = format!("https://127.0.0.1:{}", fake.addr.port());
    let mut idx = Vec::new();
    for p in ["p1", "p2"] {
        let i = tokio::task::block_in_place(|| {
            let i = tree.add_proxy(&spec, p, "acme.evil", &url)?;
            tree.launch(i).map(|_| i)
        })
        .unwrap();
        idx.push(i);
    }
    let answer = |from: &'static str, id: rsnet_common::id::MessageId| {
        let fake = &fake;
        async move {
            wait_for(&format!("{from}'s answer to {id}"), LONG, || async {
                let r = fake.responses.lock().unwrap().clone();
                r.into_iter()
                    .find(|(o, r)| o == from && r.request == id)
                    .map(|(_, r)| r)
            })
            .await
        }
    };
    let forwarding = |i: usize| {
        let tree = &tree;
        async move { proxy_status(tree, i).await.unwrap()["forwarding"].clone() }
    };
    // 1. Made up by the MLM: refused, and nothing changes.
    let made_up = control_for("acme.p1", "disable-forwarding");
    fake.offer("acme.p1", &made_up);
    let r = answer("acme.p1", made_up.header.id).await;
    assert_eq!(r.status, Status::Rejected, "{r:?}");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("not signed by the appserver"),
        "{r:?}"
    );
    assert_eq!(forwarding(idx[0]).await, "on");
    // 2. Sealed by the appserver for acme.p1, handed to acme.p2: refused.
    let key = rsnet_common::release::ReleaseKey::load(&tree.pki.release_key()).unwrap();
    let mut genuine = control_for("acme.p1", "disable-forwarding");
    let original = genuine.content.clone();
    let sealed = rsnet_common::seal::seal(
        &key,
        &mut genuine.header,
        &original,
        &["acme.p1".parse().unwrap()],
    )
    .unwrap();
    genuine.content = sealed;
    let mut replayed = genuine.clone();
    replayed.header.direction =
        rsnet_common::model::Direction::Destination(rsnet_common::model::Destination {
            ids: vec!["acme.p2".parse().unwrap()],
            group: None,
        });
    fake.offer("acme.p2", &replayed);
    let r = answer("acme.p2", replayed.header.id).await;
    assert_eq!(r.status, Status::Rejected, "{r:?}");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("did not address it to acme.p2"),
        "{r:?}"
    );
    assert_eq!(forwarding(idx[1]).await, "on");
    // 3. Changed on the way (another action under the same seal): refused.
    let mut changed = genuine.clone();
    changed.header.subclass = Some("enable-forwarding".into());
    changed.header.id = rsnet_common::id::MessageId::new();
    fake.offer("acme.p1", &changed);
    let r = answer("acme.p1", changed.header.id).await;
    assert_eq!(r.status, Status::Rejected, "{r:?}");
    // 4. As sealed, to whom it was sealed for: carried out (and its report
    // waits in the spool, as forwarding is off now).
    fake.offer("acme.p1", &genuine);
    wait_for("acme.p1 to stop forwarding", LONG, || async {
        (forwarding(idx[0]).await == "off").then_some(())
    })
    .await;
}
