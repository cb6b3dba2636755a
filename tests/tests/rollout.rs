//! End-to-end: distributing releases down the tree.
//!
//! * A 50 MB release to 20 proxies under 2 MLMs: the appserver serves the
//!   file exactly twice (once per MLM, by its own counters), every proxy
//!   holds it with the right hash, the release view shows 20 delivered, and
//!   the MLMs drop their copies once everyone below has it.
//! * Staged: a failing canary halts the rest until an operator resumes;
//!   pinning the fleet back to an earlier release rolls every proxy back
//!   to its kept previous version; a cancelled release goes no further and
//!   the MLM drops its copy at once. Every change is recorded with who and when.
//! * Through stacked MLMs: fetched once per level; an upload relayed by both.
//! * kill -9 of the MLM and of a proxy mid-download: every copy delivered, checked.
//! * A proxy without room rejects it, its reason shows in the release view,
//!   and once it has room it takes it (retried, not lost); an integrator
//!   reports it applied.
//! * A compromised MLM (`FakeParent`) that rewrites the manifest, or serves
//!   another file behind the genuine one, is refused by every proxy below
//!   it, and nothing of it is kept.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use rsnet_common::bulk;
use rsnet_common::client::Target;
use rsnet_demo::{json_call, metric, Spec, Tree};
use rsnet_tests::{ctl, tempdir, wait_for};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(180);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

fn write_file(path: &Path, size: usize) -> String {
    let data: Vec<u8> = (0..size)
        .map(|i| (i % 253) as u8 ^ (i >> 16) as u8)
        .collect();
    std::fs::write(path, &data).unwrap();
    bulk::hex(&Sha256::digest(&data))
}

/// Waits until the appserver has heard from every proxy (routes to them exist).
async fn all_known(tree: &Tree, op: &Target) {
    let want: Vec<String> = tree
        .proxies()
        .iter()
        .map(|&i| tree.nodes[i].id.clone())
        .collect();
    wait_for("every proxy to be known at the appserver", LONG, || async {
        let (_, v) = json_call(op, Method::GET, "/api/v1/components", None)
            .await
            .ok()?;
        let seen: Vec<&str> = v["components"]
            .as_array()?
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        want.iter()
            .all(|w| seen.contains(&w.as_str()))
            .then_some(())
    })
    .await;
}

async fn status(op: &Target, id: &str) -> Value {
    let (s, v) = json_call(op, Method::GET, &format!("/api/v1/releases/{id}"), None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    v["status"].clone()
}

async fn counts_reach(op: &Target, id: &str, state: &str, n: u64) -> Value {
    wait_for(&format!("{n} destinations {state}"), LONG, || async {
        let s = status(op, id).await;
        (s["counts"][state].as_u64() == Some(n)).then_some(s)
    })
    .await
}

async fn group(op: &Target, name: &str, members: &[String]) {
    let (s, v) = json_call(
        op,
        Method::PUT,
        &format!("/api/v1/groups/{name}"),
        Some(json!({ "members": members })),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn held(tree: &Tree, p: usize) -> Value {
    let (s, v) = json_call(
        &tree.node_target(p).unwrap(),
        Method::GET,
        "/v1/releases",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_release_to_20_proxies_under_2_mlms_is_served_twice_by_the_appserver() {
    let spec = Spec {
        proxies: (1..=20)
            .map(|i| (format!("p{i}"), Some(usize::from(i > 10))))
            .collect(),
        heartbeat_s: 3600,
        mlm_releases_extra: "keep_s = 0\n".into(),
        ..Spec::demo()
    };
    let tree = start("rollout-20", &spec);
    let op = tree.operator_target().unwrap();
    all_known(&tree, &op).await;
    let members: Vec<String> = tree
        .proxies()
        .iter()
        .map(|&i| tree.nodes[i].id.clone())
        .collect();
    group(&op, "fleet", &members).await;
    let size = 50_000_000;
    let file = tree.dir.join("agent-2.0.pkg");
    let want = write_file(&file, size);

    let id = ctl(
        &tree,
        &[
            "releases",
            "publish",
            file.to_str().unwrap(),
            "--kind",
            "software",
            "--version",
            "2.0",
            "--to",
            "group:fleet",
        ],
    )
    .trim()
    .to_string();
    let s = counts_reach(&op, &id, "delivered", 20).await;
    assert_eq!(s["destinations"].as_object().unwrap().len(), 20, "{s}");
    for m in ["acme.mlm1", "acme.mlm2"] {
        assert_eq!(s["mlms"][m]["state"], "cached", "{s}");
    }
    // Exactly twice: once per MLM.
    assert_eq!(
        metric(&op, "rsnet_release_serves_total").await.unwrap(),
        2.0
    );
    assert_eq!(
        metric(&op, "rsnet_release_served_bytes_total")
            .await
            .unwrap() as usize,
        2 * size
    );
    for m in ["acme.mlm1", "acme.mlm2"] {
        let t = tree.node_target(tree.index(m).unwrap()).unwrap();
        assert_eq!(
            metric(&t, "rsnet_release_fetched_total").await.unwrap(),
            1.0,
            "{m}"
        );
        assert_eq!(
            metric(&t, "rsnet_release_served_bytes_total")
                .await
                .unwrap() as usize,
            10 * size,
            "{m} served its 10 proxies"
        );
    }
    // Every proxy holds it, checked.
    for p in tree.proxies() {
        let v = held(&tree, p).await;
        let cur = &v["items"][0]["current"];
        assert_eq!(cur["manifest"]["id"], id.as_str(), "{v}");
        assert_eq!(cur["state"], "delivered");
        let path = cur["path"].as_str().unwrap();
        assert_eq!(
            bulk::hex(&Sha256::digest(std::fs::read(path).unwrap())),
            want
        );
    }
    let list = ctl(&tree, &["releases"]);
    assert!(list.contains(&id), "{list}");
    // Every destination below has it: each MLM drops its copy (keep_s = 0).
    for m in ["acme.mlm1", "acme.mlm2"] {
        let f = tree.nodes[tree.index(m).unwrap()]
            .data_dir
            .join("releases")
            .join(format!("{id}.bin"));
        wait_for(&format!("{m} to drop its copy"), LONG, || async {
            (!f.exists()).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_room_rejects_a_release_with_its_reason_then_takes_it_once_it_has_room() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0)), ("p2".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("rollout-full", &spec);
    let op = tree.operator_target().unwrap();
    let p2 = tree.index("acme.p2").unwrap();
    // The disk is "full": p2 may keep 1000 bytes of releases. (`[releases]`
    // is the last section of a demo proxy's config.)
    let cfg = tree.nodes[p2].config.clone();
    let original = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{original}capacity_bytes = 1000\n")).unwrap();
    tokio::task::block_in_place(|| {
        tree.stop(p2, Duration::from_secs(10));
        tree.restart(p2)
    })
    .unwrap();
    all_known(&tree, &op).await;
    let file = tree.dir.join("site.cfg");
    let want = write_file(&file, 1_000_000);
    let id = ctl(
        &tree,
        &[
            "releases",
            "publish",
            file.to_str().unwrap(),
            "--kind",
            "config",
            "--version",
            "7",
            "--to",
            "acme.p1",
            "--to",
            "acme.p2",
        ],
    )
    .trim()
    .to_string();
    let s = wait_for("p1 delivered, p2 rejected", LONG, || async {
        let s = status(&op, &id).await;
        let d = &s["destinations"];
        (d["acme.p1"]["state"] == "delivered" && d["acme.p2"]["state"] == "rejected").then_some(s)
    })
    .await;
    let why = s["destinations"]["acme.p2"]["reason"].as_str().unwrap();
    assert!(why.contains("not enough room"), "{s}");
    assert_eq!(s["counts"], json!({ "delivered": 1, "rejected": 1 }), "{s}");
    // The admin page shows the same, stage and destinations, with the reason.
    let (code, page) = rsnet_common::client::call(&op, http::Method::GET, "/", None)
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page);
    assert_eq!(code, http::StatusCode::OK);
    let at = page
        .find(&format!(r#"data-release="{id}""#))
        .unwrap_or_else(|| panic!("release {id} on the page: {page}"));
    let release = &page[at..page[at..].find("</details>").map_or(page.len(), |e| at + e)];
    for want in [
        "1 delivered",
        "1 rejected",
        r#"<span class="badge rejected">rejected</span>"#,
        "not enough room",
    ] {
        assert!(release.contains(want), "{want} in {release}");
    }
    assert!(held(&tree, p2).await["items"]
        .as_array()
        .unwrap()
        .is_empty());

    // Room again: the offer it kept is taken up at its next start.
    std::fs::write(&cfg, original).unwrap();
    tokio::task::block_in_place(|| {
        tree.stop(p2, Duration::from_secs(10));
        tree.restart(p2)
    })
    .unwrap();
    counts_reach(&op, &id, "delivered", 2).await;
    let cur = held(&tree, p2).await["items"][0]["current"].clone();
    assert_eq!(cur["manifest"]["item"], "config");
    let path = cur["path"].as_str().unwrap();
    assert_eq!(
        bulk::hex(&Sha256::digest(std::fs::read(path).unwrap())),
        want
    );

    // The integrator on p1 applies it.
    let p1 = tree.index("acme.p1").unwrap();
    let (s, v) = json_call(
        &tree.node_target(p1).unwrap(),
        Method::POST,
        &format!("/v1/releases/{id}/applied"),
        Some(json!({ "reason": "restarted the agent" })),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let s = wait_for("p1 applied", LONG, || async {
        let s = status(&op, &id).await;
        (s["destinations"]["acme.p1"]["state"] == "applied").then_some(s)
    })
    .await;
    let counts: BTreeMap<String, u64> = serde_json::from_value(s["counts"].clone()).unwrap();
    assert_eq!(
        counts,
        BTreeMap::from([("applied".into(), 1), ("delivered".into(), 1)])
    );
    tree.shutdown();
}

/// A back-channel offer of `signed` for `to`, as an MLM would pass it on.
fn offer_for(to: &str, signed: &rsnet_common::release::SignedManifest) -> rsnet_common::Message {
    use rsnet_common::model::{Destination, Direction};
    let mut m = rsnet_common::Message::forward(
        "acme.evil".parse().unwrap(),
        rsnet_common::release::CLASS,
        Some(rsnet_common::release::OFFER),
        rsnet_common::release::offer_content(signed),
    );
    m.header.direction = Direction::Destination(Destination {
        ids: vec![to.parse().unwrap()],
        group: None,
    });
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlm_that_tampers_with_a_release_is_refused_by_every_proxy() {
    use rsnet_common::release::{DestState, SignedManifest};
    use rsnet_common::tls::{Role, TlsPaths};
    let spec = Spec {
        mlms: vec![],
        proxies: vec![],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("rollout-tamper", &spec);
    // A genuine release, signed by the appserver.
    let genuine = tree.dir.join("agent-3.0.pkg");
    write_file(&genuine, 200_000);
    let out = ctl(
        &tree,
        &[
            "--json",
            "releases",
            "publish",
            genuine.to_str().unwrap(),
            "--kind",
            "software",
            "--version",
            "3.0",
            "--to",
            "acme.p1",
        ],
    );
    let signed: SignedManifest = serde_json::from_str(&out).unwrap();
    // What the compromised MLM serves instead, of the same size.
    let mut evil: Vec<u8> = b"#!/bin/sh\nrm -rf /\n".repeat(20_000);
    evil.truncate(200_000);
    let f = tree.pki.issue("acme.evil", Role::Mlm, &[], &[]).unwrap();
    let fake = rsnet_tests::FakeParent::start(
        TlsPaths {
            ca: tree.pki.ca(),
            cert: f.cert,
            key: f.key,
            crl: None,
        },
        evil.clone(),
    )
    .await;
    let url = format!("https://127.0.0.1:{}", fake.addr.port());
    let mut proxies = Vec::new();
    for p in ["p1", "p2", "p3"] {
        let i = tokio::task::block_in_place(|| {
            let i = tree.add_proxy(&spec, p, "acme.evil", &url)?;
            tree.launch(i).map(|_| i)
        })
        .unwrap();
        proxies.push((format!("acme.{p}"), i));
    }
    // 1. The manifest rewritten to name the substitute file: the signature breaks.
    let mut rewritten = signed.clone();
    rewritten.manifest.size = evil.len() as u64;
    rewritten.manifest.sha256 = bulk::hex(&Sha256::digest(&evil));
    // 2. The genuine manifest, with the substitute file behind it.
    for (id, _) in &proxies {
        fake.offer(id, &offer_for(id, &rewritten));
    }
    let failed = |why: &'static str| {
        let fake = &fake;
        let proxies = &proxies;
        let signed = &signed;
        async move {
            wait_for(&format!("every proxy to refuse ({why})"), LONG, || async {
                let r = fake.reports.lock().unwrap().clone();
                let all = proxies.iter().all(|(id, _)| {
                    r.iter().any(|(o, rep)| {
                        o == id
                            && rep.release == signed.manifest.id
                            && rep.state == DestState::Failed
                            && rep.reason.as_deref().unwrap_or("").contains(why)
                    })
                });
                all.then_some(())
            })
            .await
        }
    };
    failed("signature").await;
    for (id, _) in &proxies {
        fake.offer(id, &offer_for(id, &signed));
    }
    failed("sha256").await;
    let reports = fake.reports.lock().unwrap().clone();
    assert!(
        !reports.iter().any(|(_, r)| r.state == DestState::Delivered),
        "nothing tampered is ever reported delivered: {reports:?}"
    );
    for (_, i) in &proxies {
        let v = held(&tree, *i).await;
        assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
        let dir = tree.nodes[*i].data_dir.join("releases");
        let leftovers: Vec<_> = walk(&dir);
        assert!(leftovers.is_empty(), "nothing of it kept: {leftovers:?}");
    }
    tree.shutdown();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn proxy_post(tree: &Tree, p: usize, path: &str) {
    let (s, v) = json_call(
        &tree.node_target(p).unwrap(),
        Method::POST,
        path,
        Some(json!({})),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn current_of(tree: &Tree, p: usize) -> (Option<String>, Option<String>) {
    let v = held(tree, p).await;
    let item = &v["items"][0];
    (
        item["current"]["manifest"]["id"]
            .as_str()
            .map(str::to_string),
        item["previous"]["manifest"]["id"]
            .as_str()
            .map(str::to_string),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_the_rest_until_resumed_and_a_group_is_pinned_back_to_an_earlier_release(
) {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: (1..=4).map(|i| (format!("p{i}"), Some(0))).collect(),
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = start("rollout-stages", &spec);
    let op = tree.operator_target().unwrap();
    all_known(&tree, &op).await;
    let p: Vec<usize> = (1..=4)
        .map(|i| tree.index(&format!("acme.p{i}")).unwrap())
        .collect();
    let ids: Vec<String> = (1..=4).map(|i| format!("acme.p{i}")).collect();
    group(&op, "fleet", &ids).await;
    group(&op, "canary", &ids[..2]).await;
    let v1 = tree.dir.join("agent-1.pkg");
    write_file(&v1, 300_000);

    // Stage 1 the canary, then the rest; success is "applied"; no failure allowed.
    let r1 = ctl(
        &tree,
        &[
            "releases",
            "publish",
            v1.to_str().unwrap(),
            "--kind",
            "software",
            "--item",
            "agent",
            "--version",
            "1",
            "--to",
            "group:fleet",
            "--stage",
            "group:canary",
            "--advance",
            "applied",
        ],
    )
    .trim()
    .to_string();
    counts_reach(&op, &r1, "delivered", 2).await;
    assert_eq!(
        status(&op, &r1).await["counts"]["queued"],
        2,
        "the rest waits"
    );
    // One canary applies it, the other fails to: the release halts.
    proxy_post(&tree, p[0], &format!("/v1/releases/{r1}/applied")).await;
    proxy_post(&tree, p[1], &format!("/v1/releases/{r1}/failed")).await;
    let s = wait_for("the release to halt", LONG, || async {
        let s = status(&op, &r1).await;
        (s["rollout"]["state"] == "halted").then_some(s)
    })
    .await;
    let why = s["rollout"]["history"].as_array().unwrap().last().unwrap()["detail"].to_string();
    assert!(why.contains("1 of 2 failed"), "{s}");
    for i in [2, 3] {
        assert_eq!(s["destinations"][&ids[i]]["state"], "queued", "{s}");
        assert!(
            held(&tree, p[i]).await["items"]
                .as_array()
                .unwrap()
                .is_empty(),
            "never offered"
        );
    }
    let shown = ctl(&tree, &["releases", "show", &r1]);
    assert!(
        shown.contains("halted") && shown.contains("group:canary"),
        "{shown}"
    );

    // The operator resumes: the rest gets it.
    ctl(&tree, &["releases", "resume", &r1]);
    wait_for("the rest to have it", LONG, || async {
        let s = status(&op, &r1).await;
        let d = &s["destinations"];
        (d[&ids[2]]["state"] == "delivered" && d[&ids[3]]["state"] == "delivered").then_some(())
    })
    .await;
    let s = status(&op, &r1).await;
    let history: Vec<(String, String)> = s["rollout"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["action"].as_str().unwrap().into(),
                h["by"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        history.contains(&("halted".into(), "rsnet".into())),
        "{history:?}"
    );
    assert!(
        history.contains(&("resumed".into(), "provider.operator".into())),
        "{history:?}"
    );

    // Version 2 everywhere, then the fleet pinned back to version 1 (rollback):
    // every proxy makes its kept previous version current again.
    let v2 = tree.dir.join("agent-2.pkg");
    write_file(&v2, 310_000);
    let r2 = ctl(
        &tree,
        &[
            "releases",
            "publish",
            v2.to_str().unwrap(),
            "--kind",
            "software",
            "--item",
            "agent",
            "--version",
            "2",
            "--to",
            "group:fleet",
        ],
    )
    .trim()
    .to_string();
    counts_reach(&op, &r2, "delivered", 4).await;
    for &i in &p {
        assert_eq!(
            current_of(&tree, i).await,
            (Some(r2.clone()), Some(r1.clone()))
        );
    }
    ctl(&tree, &["releases", "pin", &r1, "--to", "group:fleet"]);
    wait_for("every proxy back on version 1", LONG, || async {
        for &i in &p {
            if current_of(&tree, i).await != (Some(r1.clone()), Some(r2.clone())) {
                return None;
            }
        }
        Some(())
    })
    .await;
    counts_reach(&op, &r1, "delivered", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_release_goes_no_further_and_the_mlm_drops_its_copy() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: (1..=3).map(|i| (format!("p{i}"), Some(0))).collect(),
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = start("rollout-cancel", &spec);
    let op = tree.operator_target().unwrap();
    all_known(&tree, &op).await;
    let ids: Vec<String> = (1..=3).map(|i| format!("acme.p{i}")).collect();
    group(&op, "fleet", &ids).await;
    let f = tree.dir.join("cfg.tgz");
    write_file(&f, 100_000);
    let r = ctl(
        &tree,
        &[
            "releases",
            "publish",
            f.to_str().unwrap(),
            "--kind",
            "config",
            "--version",
            "9",
            "--to",
            "group:fleet",
            "--stage",
            "acme.p1",
            "--advance",
            "applied",
        ],
    )
    .trim()
    .to_string();
    counts_reach(&op, &r, "delivered", 1).await;
    let mlm = &tree.nodes[tree.index("acme.mlm1").unwrap()];
    let cached = mlm.data_dir.join("releases").join(format!("{r}.bin"));
    assert!(
        cached.exists(),
        "the MLM holds its copy while p1 has not applied it"
    );
    ctl(&tree, &["releases", "cancel", &r]);
    let s = status(&op, &r).await;
    assert_eq!(s["rollout"]["state"], "cancelled", "{s}");
    let last = s["rollout"]["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["action"].as_str(), last["by"].as_str()),
        (Some("cancelled"), Some("provider.operator"))
    );
    wait_for("the MLM to drop its copy", LONG, || async {
        (!cached.exists()).then_some(())
    })
    .await;
    // Resuming a cancelled release is refused; the rest never got it.
    let (code, _) = json_call(
        &op,
        Method::POST,
        &format!("/api/v1/releases/{r}/resume"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, StatusCode::CONFLICT);
    let s = status(&op, &r).await;
    assert_eq!(s["destinations"]["acme.p2"]["state"], "queued", "{s}");
    assert_eq!(s["destinations"]["acme.p3"]["state"], "queued", "{s}");
}

fn part_len(tree: &Tree, p: usize, id: &str) -> u64 {
    std::fs::metadata(
        tree.nodes[p]
            .data_dir
            .join("releases")
            .join(format!("{id}.part")),
    )
    .map(|m| m.len())
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_mlm_and_a_proxy_mid_download_still_delivers_every_copy_checked() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0)), ("p2".into(), Some(0))],
        heartbeat_s: 3600,
        // Offers taken again 2 s after a failed attempt; downloads at 10 MB/s.
        proxy_extra: "[inbox]\nlease_s = 2\n".into(),
        proxy_releases_extra: "max_rate_bytes_s = 10000000\n".into(),
        ..Spec::demo()
    };
    let mut tree = start("rollout-kill9", &spec);
    let op = tree.operator_target().unwrap();
    all_known(&tree, &op).await;
    let (mlm, p1, p2) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
        tree.index("acme.p2").unwrap(),
    );
    let size = 30_000_000u64;
    let file = tree.dir.join("big.pkg");
    let want = write_file(&file, size as usize);
    let id = ctl(
        &tree,
        &[
            "releases",
            "publish",
            file.to_str().unwrap(),
            "--kind",
            "software",
            "--version",
            "5",
            "--to",
            "acme.p1",
            "--to",
            "acme.p2",
        ],
    )
    .trim()
    .to_string();
    let cut = size / 5 + fastrand::u64(0..size / 5);
    wait_for("p1 part way", LONG, || async {
        (part_len(&tree, p1, &id) >= cut).then_some(())
    })
    .await;
    eprintln!(
        "kill -9 acme.mlm1 with p1 at {} bytes",
        part_len(&tree, p1, &id)
    );
    tokio::task::block_in_place(|| {
        tree.kill9(mlm);
        tree.restart(mlm)
    })
    .unwrap();
    let cut = size / 2 + fastrand::u64(0..size / 5);
    wait_for("p2 further", LONG, || async {
        (part_len(&tree, p2, &id) >= cut).then_some(())
    })
    .await;
    eprintln!("kill -9 acme.p2 at {} bytes", part_len(&tree, p2, &id));
    tokio::task::block_in_place(|| {
        tree.kill9(p2);
        tree.restart(p2)
    })
    .unwrap();
    counts_reach(&op, &id, "delivered", 2).await;
    for p in [p1, p2] {
        let cur = held(&tree, p).await["items"][0]["current"].clone();
        let path = cur["path"].as_str().unwrap();
        assert_eq!(
            bulk::hex(&Sha256::digest(std::fs::read(path).unwrap())),
            want
        );
    }
    // The MLM had the file whole before it offered it: served once from above.
    assert_eq!(
        metric(&op, "rsnet_release_serves_total").await.unwrap(),
        1.0
    );
    // Resumed, not restarted: the restarted MLM served less than two whole copies.
    let after = metric(
        &tree.node_target(mlm).unwrap(),
        "rsnet_release_served_bytes_total",
    )
    .await
    .unwrap() as u64;
    assert!(
        after < 2 * size - size / 5,
        "the MLM served {after} bytes after its restart"
    );
    tree.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_stacked_mlms_a_release_is_fetched_once_per_level_and_an_upload_relayed_twice() {
    let spec = Spec {
        // appserver ← mlm1 ← mlm2 ← p1, p2
        mlms: vec![("mlm1".into(), None), ("mlm2".into(), Some(0))],
        proxies: vec![("p1".into(), Some(1)), ("p2".into(), Some(1))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = start("rollout-stacked", &spec);
    let op = tree.operator_target().unwrap();
    all_known(&tree, &op).await;
    let (m1, m2, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.mlm2").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    let size = 2_000_000;
    let file = tree.dir.join("stacked.pkg");
    let want = write_file(&file, size);
    let id = ctl(
        &tree,
        &[
            "releases",
            "publish",
            file.to_str().unwrap(),
            "--kind",
            "software",
            "--version",
            "1",
            "--to",
            "acme.p1",
            "--to",
            "acme.p2",
        ],
    )
    .trim()
    .to_string();
    let s = counts_reach(&op, &id, "delivered", 2).await;
    assert_eq!(s["mlms"]["acme.mlm1"]["state"], "cached", "{s}");
    assert_eq!(s["mlms"]["acme.mlm2"]["state"], "cached", "{s}");
    let served = |i: usize| {
        let t = tree.node_target(i).unwrap();
        async move {
            metric(&t, "rsnet_release_served_bytes_total")
                .await
                .unwrap() as usize
        }
    };
    assert_eq!(served(0).await, size, "the appserver served mlm1 once");
    assert_eq!(served(m1).await, size, "mlm1 served mlm2 once");
    assert_eq!(served(m2).await, 2 * size, "mlm2 served its two proxies");
    for p in tree.proxies() {
        let cur = held(&tree, p).await["items"][0]["current"].clone();
        let path = cur["path"].as_str().unwrap();
        assert_eq!(
            bulk::hex(&Sha256::digest(std::fs::read(path).unwrap())),
            want
        );
    }
    // Up: each MLM vouches for the origin below it.
    let up = tree.dir.join("core.up");
    let up_sha = write_file(&up, 3_000_000);
    let out = std::process::Command::new(rsnet_demo::bin_dir().join("rsnet-proxy"))
        .arg("bulk")
        .arg("--config")
        .arg(&tree.nodes[p1].config)
        .arg(&up)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, v) = json_call(&op, Method::GET, "/api/v1/uploads?source=acme.p1", None)
        .await
        .unwrap();
    let u = &v["uploads"][0];
    assert_eq!(
        (u["state"].as_str(), u["sha256"].as_str()),
        (Some("stored"), Some(up_sha.as_str())),
        "{v}"
    );
    for m in [m1, m2] {
        let t = tree.node_target(m).unwrap();
        assert_eq!(
            metric(&t, "rsnet_bulk_relayed_bytes_total").await.unwrap(),
            3_000_000.0
        );
    }
}
