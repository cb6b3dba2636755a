//! Release fan-out (`RSNET_BENCH_ONLY=release`): one release to `PROXIES`
//! simulated proxies under `MLMS` real MLMs.
//!
//! Each simulated proxy is a hand-driven child (`RawChild`, its own proxy
//! certificate) under one of the MLMs: it says hello (so routes exist),
//! long-polls for the offer, checks the manifest's signature under
//! `release.pub`, downloads the file from its MLM (hashing it on the way),
//! checks size and SHA-256, and reports `delivered`. The clock runs from
//! the publish to the appserver's release view showing every destination
//! delivered; the appserver's own counters say how many bytes it served.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use http::Method;
use rsnet_common::bulk;
use rsnet_common::client::{call, send as http_send};
use rsnet_common::http_util::stream_body;
use rsnet_common::model::{Content, Event};
use rsnet_common::release::{self, DestState, ReleasePublicKey, Report};
use rsnet_common::tls::Role;
use rsnet_common::Message;
use rsnet_demo::{json_call, metric, Spec, Tree};
use rsnet_tests::RawChild;
use serde_json::json;
use sha2::{Digest, Sha256};

const MLMS: usize = 10;
const PROXIES: usize = 1000;
const SIZE: usize = 2 << 20;

async fn simulated(mut child: RawChild, key: Arc<ReleasePublicKey>) -> Duration {
    let hello = Message::forward(
        child.id.clone(),
        "event",
        None,
        Content::Event(Event {
            support_instance: None,
            text: "hello".into(),
            data: None,
        }),
    )
    .with_hop(&child.id);
    child.exchange(&[hello], 0).await;
    let (id, signed) = loop {
        let d = child.exchange(&[], 25_000).await;
        if let Some(o) = d
            .items
            .iter()
            .filter(|i| release::is_offer(&i.header))
            .find_map(|i| release::offer_of(&i.content().ok()?).ok())
        {
            break o;
        }
    };
    let t = Instant::now();
    let m = key.verify(&signed).expect("signature").clone();
    let r = http_send(
        &child.target,
        Method::GET,
        &release::file_path(&id),
        None,
        &[],
    )
    .await
    .expect("download");
    assert!(r.status().is_success(), "download: {}", r.status());
    let mut body = std::pin::pin!(stream_body(r.into_body(), Duration::from_secs(60)));
    let (mut n, mut h) = (0u64, Sha256::new());
    while let Some(c) = body.next().await {
        let c = c.expect("download body");
        n += c.len() as u64;
        h.update(&c);
    }
    m.check_file(n, &bulk::hex(&h.finalize()))
        .expect("file matches");
    let took = t.elapsed();
    let report = Report {
        release: id.to_string(),
        state: DestState::Delivered,
        bytes: None,
        reason: None,
    }
    .message(&child.id);
    child.exchange(&[report], 0).await;
    took
}

pub async fn run(dir: &Path) {
    let spec = Spec {
        mlms: (1..=MLMS).map(|i| (format!("mlm{i}"), None)).collect(),
        proxies: vec![],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| Tree::start(dir, &spec)).expect("tree");
    let op = tree.operator_target().expect("operator");
    let key = Arc::new(ReleasePublicKey::load(&tree.pki.release_pub()).expect("release.pub"));
    let mlms: Vec<_> = (1..=MLMS)
        .map(|i| {
            tree.nodes[tree.index(&format!("acme.mlm{i}")).expect("mlm")]
                .addr
                .expect("addr")
        })
        .collect();
    let ids: Vec<String> = (0..PROXIES).map(|i| format!("acme.s{i}")).collect();
    let t_certs = Instant::now();
    let children: Vec<RawChild> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| RawChild::new(&tree, id, Role::Proxy, mlms[i % MLMS]))
        .collect();
    eprintln!(
        "release: {PROXIES} certificates in {:.1} s",
        t_certs.elapsed().as_secs_f64()
    );
    let tasks: Vec<_> = children
        .into_iter()
        .map(|c| tokio::spawn(simulated(c, key.clone())))
        .collect();
    // Every simulated proxy known at the appserver before publishing.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = json_call(&op, Method::GET, "/api/v1/components", None)
            .await
            .expect("components");
        let n = v["components"].as_array().map_or(0, |c| {
            c.iter()
                .filter(|c| c["id"].as_str().is_some_and(|s| s.starts_with("acme.s")))
                .count()
        });
        if n == PROXIES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} simulated proxies known"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = json_call(
        &op,
        Method::PUT,
        "/api/v1/groups/fleet",
        Some(json!({ "members": ids })),
    )
    .await
    .expect("group");
    assert!(s.is_success());
    let file: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let t0 = Instant::now();
    let (s, b) = call(
        &op,
        Method::POST,
        "/api/v1/releases?kind=software&version=bench&to=group:fleet",
        Some(("application/octet-stream", file.into())),
    )
    .await
    .expect("publish");
    assert!(s.is_success(), "{}", String::from_utf8_lossy(&b));
    let id = serde_json::from_slice::<serde_json::Value>(&b).expect("manifest")["manifest"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut downloads = Vec::new();
    for t in tasks {
        downloads.push(t.await.expect("simulated proxy"));
    }
    let fetched = t0.elapsed();
    loop {
        let (_, v) = json_call(&op, Method::GET, &format!("/api/v1/releases/{id}"), None)
            .await
            .expect("status");
        if v["status"]["counts"]["delivered"].as_u64() == Some(PROXIES as u64) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "not all delivered: {}",
            v["status"]["counts"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = t0.elapsed();
    let served = metric(&op, "rsnet_release_served_bytes_total")
        .await
        .unwrap_or(0.0) as u64;
    let serves = metric(&op, "rsnet_release_serves_total")
        .await
        .unwrap_or(0.0) as u64;
    let mut mlm_served = 0u64;
    for i in 1..=MLMS {
        let t = tree
            .node_target(tree.index(&format!("acme.mlm{i}")).expect("mlm"))
            .expect("target");
        mlm_served += metric(&t, "rsnet_release_served_bytes_total")
            .await
            .unwrap_or(0.0) as u64;
    }
    downloads.sort();
    let p50 = downloads[downloads.len() / 2];
    let max = downloads[downloads.len() - 1];
    println!(
        "| release | proxies | MLMs | publish → every proxy checked it | → appserver view: all delivered | appserver bytes served | ÷ file size | requests | MLMs' bytes served | download p50 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} MiB | {PROXIES} | {MLMS} | {:.1} s | {:.1} s | {served} | {:.1} | {serves} | {mlm_served} ({:.0} × file) | {:.2} s / {:.2} s |",
        SIZE >> 20,
        fetched.as_secs_f64(),
        all.as_secs_f64(),
        served as f64 / SIZE as f64,
        mlm_served as f64 / SIZE as f64,
        p50.as_secs_f64(),
        max.as_secs_f64(),
    );
    drop(tree);
}
