//! End-to-end: operator credentials are scoped and have roles. A
//! credential limited to customer `acme` sees none of customer `beta`'s
//! messages, components or deliveries and cannot send to them; a read-only
//! credential cannot send or release.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use rsnet_common::client::Target;
use rsnet_common::model::*;
use rsnet_common::tls::{Role, TlsPaths};
use rsnet_common::Message;
use rsnet_demo::{json_call, send, stored, Spec, Tree};
use rsnet_tests::{ctl, tempdir, wait_for, RawChild};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

fn operator(tree: &Tree, id: &str, scopes: &[&str], perms: &[&str]) -> Target {
    certified(tree, id, Role::Operator, scopes, perms)
}

/// The appserver, reached with a new certificate for `id` of `role`.
fn certified(tree: &Tree, id: &str, role: Role, scopes: &[&str], perms: &[&str]) -> Target {
    let s: Vec<String> = scopes.iter().map(|x| x.to_string()).collect();
    let p: Vec<String> = perms.iter().map(|x| x.to_string()).collect();
    let f = tree.pki.issue_with(id, role, &[], &s, &p, &[]).unwrap();
    let config = rsnet_common::tls::client_config(&TlsPaths {
        ca: tree.pki.ca(),
        cert: f.cert,
        key: f.key,
        crl: None,
    })
    .unwrap();
    Target::Tls {
        base: format!("https://127.0.0.1:{}", tree.nodes[0].addr.unwrap().port()),
        config: Arc::new(config),
    }
}

async fn get(t: &Target, path: &str) -> Value {
    let (s, v) = json_call(t, Method::GET, path, None).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{path}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_scoped_operator_sees_only_its_customer_and_a_reader_cannot_act() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = tokio::task::block_in_place(|| Tree::start(&tempdir("operators"), &spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    tree.remove_on_drop = true;
    let admin = tree.operator_target().unwrap();
    // Customer beta: an MLM of its own straight under the appserver.
    let mut beta = RawChild::new(&tree, "beta.mlm1", Role::Mlm, tree.nodes[0].addr.unwrap());
    let from: rsnet_common::id::ComponentId = "beta.p9".parse().unwrap();
    let m = Message::forward(
        from,
        "event",
        Some("scoped"),
        Content::Event(Event {
            support_instance: None,
            text: "beta's".into(),
            data: None,
        }),
    )
    .with_hop(&beta.id);
    beta.exchange(std::slice::from_ref(&m), 0).await;
    let p1 = tree.nodes[tree.index("acme.p1").unwrap()].addr.unwrap();
    let acme_ids = send(
        p1,
        &[json!({ "kind": "event", "class": "event", "subclass": "scoped", "text": "acme's" })],
    )
    .await
    .unwrap();
    wait_for("both customers' events stored", LONG, || async {
        let all = stored(&admin, "subclass=scoped").await.ok()?;
        (all.len() == 2).then_some(())
    })
    .await;

    // acme's operator (may send): only acme, everywhere it looks.
    let acme = operator(&tree, "acme.ops", &["acme"], &["send"]);
    let msgs = stored(&acme, "").await.unwrap();
    assert!(!msgs.is_empty());
    assert!(
        msgs.iter()
            .all(|m| m["source"].as_str().unwrap().starts_with("acme.")),
        "only acme's messages: {msgs:?}"
    );
    assert!(msgs.iter().any(|m| m["id"] == acme_ids[0].as_str()));
    let comps = get(&acme, "/api/v1/components").await;
    let ids: Vec<&str> = comps["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"acme.p1"), "{ids:?}");
    assert!(!ids.iter().any(|i| i.starts_with("beta.")), "{ids:?}");
    let (s, v) = json_call(
        &acme,
        Method::POST,
        "/api/v1/messages",
        Some(json!({ "to": ["beta.p9"], "kind": "data", "class": "config", "payload": "x" })),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v.to_string().contains("beta.p9"), "{v}");
    let (s, v) = json_call(
        &acme,
        Method::POST,
        "/api/v1/messages",
        Some(json!({ "to": ["acme.p1"], "kind": "data", "class": "config", "payload": "x" })),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // A message to both customers: acme's operator sees only its own destination.
    let (s, v) = json_call(
        &admin,
        Method::POST,
        "/api/v1/messages",
        Some(json!({ "to": ["acme.p1", "beta.mlm1"], "kind": "data", "class": "config", "payload": "y" })),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap();
    let d = get(&acme, &format!("/api/v1/messages/{id}/deliveries")).await;
    let dests: Vec<&String> = d["delivery"]["destinations"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(dests, ["acme.p1"], "{d}");
    let (s, _) = json_call(&acme, Method::GET, "/api/v1/releases", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "releases span customers");
    // The admin page shows acme's operator what the API does.
    let page = |t: &Target, path: &'static str| {
        let t = t.clone();
        async move {
            let r = rsnet_common::client::send(&t, Method::GET, path, None, &[])
                .await
                .unwrap();
            let s = r.status();
            if s == StatusCode::OK {
                assert_eq!(r.headers()["x-frame-options"], "DENY");
                assert_eq!(r.headers()["cache-control"], "no-store");
            }
            let b = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            (s, String::from_utf8_lossy(&b).into_owned())
        }
    };
    let (s, html) = page(&acme, "/").await;
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(html.contains(r#"data-node="acme.p1""#), "{html}");
    assert!(!html.contains("beta."), "acme's page shows beta: {html}");
    assert!(html.contains(&format!(r#"data-delivery="{id}""#)), "{html}");
    let (s, _) = page(&acme, "/node/beta.mlm1").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, html) = page(&admin, "/node/beta.mlm1").await;
    assert_eq!(s, StatusCode::OK, "{html}");
    // A certificate that is not an operator's gets no page.
    let proxy = certified(&tree, "acme.p7", Role::Proxy, &[], &[]);
    let (s, _) = page(&proxy, "/").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A read-only credential: reads everything, cannot send or release.
    let reader = operator(&tree, "provider.viewer", &[], &[]);
    let all = stored(&reader, "subclass=scoped").await.unwrap();
    assert_eq!(all.len(), 2);
    let (s, v) = json_call(
        &reader,
        Method::POST,
        "/api/v1/messages",
        Some(json!({ "to": ["acme.p1"], "kind": "data", "class": "config", "payload": "x" })),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v.to_string().contains("needs permission \\\"send\\\""),
        "{v}"
    );
    let (s, v) = json_call(
        &reader,
        Method::POST,
        "/api/v1/releases?kind=config&version=1&to=acme.p1",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v.to_string().contains("release"), "{v}");

    // Every action is in the audit log, with who, what, when and the answer;
    // only admin reads it.
    let (s, _) = json_call(&reader, Method::GET, "/api/v1/audit", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN);
    let log = ctl(&tree, &["audit", "--limit", "50"]);
    for (who, method, status) in [
        ("acme.ops", "POST", "403"),
        ("acme.ops", "POST", "202"),
        ("provider.operator", "POST", "202"),
        ("provider.viewer", "POST", "403"),
        ("provider.viewer", "GET", "403"),
    ] {
        assert!(
            log.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 5 && f[1] == who && f[2] == method && f[3] == status
            }),
            "{who} {method} {status} in:\n{log}"
        );
    }
    assert!(log.contains("/api/v1/messages"), "{log}");
    let audit = std::fs::read_to_string(tree.nodes[0].data_dir.join("audit.log")).unwrap();
    assert!(audit.lines().count() >= 6, "{audit}");
}
