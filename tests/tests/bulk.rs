//! End-to-end: uploads (bulk transfers upward) through a real MLM.
//!
//! * A 200 MB file sent with `rsnet-proxy bulk` arrives with its hash while
//!   the MLM's resident memory stays under 64 MB (read from `/proc`).
//! * An upload cut off half way (the MLM killed with SIGKILL) resumes from
//!   the offset the appserver holds, and completes.
//! * A hostile child: a wrong hash, a reused token, an expired token and a
//!   token used by another proxy (through the MLM, and straight at the
//!   appserver with a forged origin) are each refused.
//! * A request the appserver denies for now stays with the proxy and is
//!   asked again until granted; one an MLM on the way denies for good (its
//!   own limit) fails with the reason and never reaches the appserver.
//! * kill -9 of every tier at random moments of an upload: stored exactly once.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use http::{Method, StatusCode};
use rsnet_common::bulk;
use rsnet_common::client::{send as http_send, Target};
use rsnet_common::http_util::stream_body;
use rsnet_common::model::*;
use rsnet_common::tls::Role;
use rsnet_demo::{json_call, metric, Spec, Tree};
use rsnet_tests::{ctl, tempdir, wait_for, RawChild};
use serde_json::Value;
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(120);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

fn one_mlm(proxies: &[&str]) -> Spec {
    Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: proxies.iter().map(|p| (p.to_string(), Some(0))).collect(),
        ..Spec::demo()
    }
}

/// Writes `size` bytes of a pattern that differs per file; its SHA-256.
fn write_file(path: &Path, size: usize, seed: u8) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed)
        .collect();
    let mut left = size;
    let mut n = 0u32;
    while left > 0 {
        let mut b = block[..left.min(block.len())].to_vec();
        b[0] = (n % 251) as u8; // no two blocks alike
        f.write_all(&b).unwrap();
        h.update(&b);
        left -= b.len();
        n += 1;
    }
    f.flush().unwrap();
    bulk::hex(&h.finalize())
}

/// The appserver's record of the upload a proxy's upload became.
async fn stored_upload(op: &Target, id: &str) -> Value {
    let (s, v) = json_call(op, Method::GET, &format!("/api/v1/uploads/{id}"), None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// SHA-256 of an upload's file as operators download it.
async fn downloaded_sha(op: &Target, id: &str) -> (u64, String) {
    let r = http_send(
        op,
        Method::GET,
        &format!("/api/v1/uploads/{id}/file"),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = std::pin::pin!(stream_body(r.into_body(), Duration::from_secs(30)));
    let (mut n, mut h) = (0u64, Sha256::new());
    while let Some(c) = body.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        h.update(&c);
    }
    (n, bulk::hex(&h.finalize()))
}

async fn proxy_upload(tree: &Tree, p: usize, id: &str) -> Value {
    let (s, v) = json_call(
        &tree.node_target(p).unwrap(),
        Method::GET,
        &format!("/v1/bulk/{id}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn upload_done(tree: &Tree, p: usize, id: &str) -> Value {
    wait_for("the upload to be done", LONG, || async {
        let v = proxy_upload(tree, p, id).await;
        assert_ne!(v["state"], "failed", "{v}");
        (v["state"] == "done").then_some(v)
    })
    .await
}

/// Hands `path` to proxy `p`'s local API; the upload's ID.
async fn post_file(tree: &Tree, p: usize, path: &Path, class: &str) -> String {
    post_keyed(tree, p, path, class, None).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// [`post_file`] with an `Idempotency-Key`; the answer.
async fn post_keyed(tree: &Tree, p: usize, path: &Path, class: &str, key: Option<&str>) -> Value {
    let body = bulk::file_body(path, 0, Default::default(), 0)
        .await
        .unwrap();
    let extra: Vec<(&str, String)> = key
        .map(|k| ("idempotency-key", k.to_string()))
        .into_iter()
        .collect();
    let r = rsnet_common::client::send_body(
        &tree.node_target(p).unwrap(),
        Method::POST,
        &format!("/v1/bulk?class={class}&name=f.bin"),
        body,
        &extra,
    )
    .await
    .unwrap();
    let s = r.status();
    let b = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap()
}

fn peak_rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_through_an_mlm_arrives_whole_and_the_mlm_stays_small() {
    let mut tree = start("bulk-big", &one_mlm(&["p1"]));
    let op = tree.operator_target().unwrap();
    let (mlm, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    let size = 200_000_000usize;
    let file = tree.dir.join("core.200m");
    let want = write_file(&file, size, 7);

    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(rsnet_demo::bin_dir().join("rsnet-proxy"))
            .arg("bulk")
            .arg("--config")
            .arg(&tree.nodes[p1].config)
            .arg(&file)
            .args(["--class", "core"])
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rsnet-proxy bulk failed: {stderr}");
    // Not a terminal: plain progress lines, the last one "done".
    assert!(stderr.lines().any(|l| l.contains(" done ")), "{stderr}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let v = proxy_upload(&tree, p1, &id).await;
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["sent"], size as u64);
    assert!(
        !tree.nodes[p1]
            .data_dir
            .join(format!("bulk/{id}.bin"))
            .exists(),
        "the proxy's copy is removed once stored"
    );
    let up = v["request"].as_str().unwrap().to_string();
    let u = stored_upload(&op, &up).await;
    assert_eq!(u["state"], "stored", "{u}");
    assert_eq!(u["source"], "acme.p1");
    assert_eq!(u["class"], "core");
    assert_eq!(u["size"], size as u64);
    assert_eq!(u["sha256"], want.as_str());
    assert_eq!(downloaded_sha(&op, &up).await, (size as u64, want));
    // The request is also a stored message, for service modules.
    let m = rsnet_demo::stored(&op, "class=bulk").await.unwrap();
    assert!(m.iter().any(|m| m["id"] == up.as_str()), "{m:?}");

    let relayed = metric(
        &tree.node_target(mlm).unwrap(),
        "rsnet_bulk_relayed_bytes_total",
    )
    .await
    .unwrap();
    assert_eq!(relayed as usize, size, "every byte went through the MLM");
    let peak = peak_rss_bytes(tree.nodes[mlm].pid().unwrap());
    assert!(peak > 0, "peak RSS readable");
    eprintln!("MLM peak resident memory: {} MiB", peak >> 20);
    assert!(
        peak < 64 << 20,
        "the MLM's peak resident memory was {} MiB",
        peak >> 20
    );
    std::fs::remove_file(&file).ok();
    tree.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_half_way_resumes_where_it_was_and_completes() {
    let spec = Spec {
        // 40 MB at 8 MB/s: about 5 seconds, long enough to cut in the middle.
        proxy_extra:
            "[bulk]\nmax_rate_bytes_s = 8000000\nretry_base_ms = 100\nretry_max_ms = 500\n".into(),
        ..one_mlm(&["p1"])
    };
    let mut tree = start("bulk-resume", &spec);
    let op = tree.operator_target().unwrap();
    let (mlm, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    let size = 40_000_000u64;
    let file = tree.dir.join("explorer.tgz");
    let want = write_file(&file, size as usize, 3);
    let id = post_file(&tree, p1, &file, "explorer").await;
    let up = proxy_upload(&tree, p1, &id).await["request"]
        .as_str()
        .unwrap()
        .to_string();
    // Cut it off once the appserver holds a quarter to three quarters of it.
    let held = wait_for("a part of the upload at the appserver", LONG, || async {
        let (s, v) = json_call(&op, Method::GET, &format!("/api/v1/uploads/{up}"), None)
            .await
            .unwrap();
        let r = v["received"].as_u64().unwrap_or(0);
        (s == StatusCode::OK && r >= size / 4).then_some(r)
    })
    .await;
    assert!(held < size * 3 / 4, "the transfer was not slowed: {held}");
    tree.kill9(mlm);
    tokio::task::block_in_place(|| tree.restart(mlm)).unwrap();

    let v = upload_done(&tree, p1, &id).await;
    let resumed: Vec<u64> = v["resumed_from"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        resumed.iter().any(|&o| o >= size / 4 && o < size),
        "resumed from the offset held, not from 0: {v}"
    );
    assert_eq!(v["requests"], 1, "the same grant: {v}");
    let received = metric(&op, "rsnet_bulk_received_bytes_total")
        .await
        .unwrap() as u64;
    assert!(
        received >= size && received < size + size / 2,
        "the appserver received {received} bytes for a {size}-byte file"
    );
    let u = stored_upload(&op, &up).await;
    assert_eq!(u["state"], "stored", "{u}");
    // Operators list and download it with rsnet-ctl (the hash is checked there too).
    let list = tokio::task::block_in_place(|| ctl(&tree, &["uploads", "--source", "acme.p1"]));
    assert!(
        list.lines()
            .any(|l| l.contains(&up) && l.contains("stored")),
        "{list}"
    );
    let copy = tree.dir.join("downloaded");
    tokio::task::block_in_place(|| ctl(&tree, &["uploads", &up, "--out", copy.to_str().unwrap()]));
    let got = bulk::hex(&Sha256::digest(std::fs::read(&copy).unwrap()));
    assert_eq!(got, want);
    tree.shutdown();
}

fn sha(b: &[u8]) -> String {
    bulk::hex(&Sha256::digest(b))
}

fn granted_path(b: &BulkResponse) -> String {
    assert!(b.granted, "{b:?}");
    let path = b.url.clone().unwrap();
    assert_eq!(
        Some(path.as_str()),
        b.token
            .as_deref()
            .map(|t| format!("{}{t}", bulk::BULK_PREFIX))
            .as_deref()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_transfers_are_refused_wrong_hash_reused_expired_and_foreign_tokens() {
    let spec = Spec {
        appserver_extra: "[uploads]\ngrant_ttl_s = 5\n".into(),
        ..one_mlm(&[])
    };
    let mut tree = start("bulk-hostile", &spec);
    let mlm = tree.nodes[tree.index("acme.mlm1").unwrap()].addr.unwrap();
    let app = tree.nodes[0].addr.unwrap();
    let mut p8 = RawChild::new(&tree, "acme.p8", Role::Proxy, mlm);
    let p9 = RawChild::new(&tree, "acme.p9", Role::Proxy, mlm);
    let p9_direct = RawChild::new(&tree, "acme.p9", Role::Proxy, app);
    let data = vec![42u8; 100_000];

    // A grant that will expire, taken first; checked last.
    let expiring = granted_path(&p8.request(10, &sha(&[1; 10])).await);

    // Another proxy's token: refused through the MLM, and straight at the
    // appserver, even with a forged origin header.
    let path = granted_path(&p8.request(data.len() as u64, &sha(&data)).await);
    let (s, why) = p9.put(&path, 0, data.clone(), &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{why}");
    assert!(why.contains("another source"), "{why}");
    assert_eq!(p9.head(&path).await.0, StatusCode::FORBIDDEN);
    let forged = [(bulk::ORIGIN, "acme.p8".to_string())];
    let (s, why) = p9_direct.put(&path, 0, data.clone(), &forged).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{why}");
    assert!(why.contains("outside the subtree"), "{why}");
    // An MLM of another customer cannot vouch for acme's proxies either.
    let globex = RawChild::new(&tree, "globex.mlm1", Role::Mlm, app);
    let (s, why) = globex.put(&path, 0, data.clone(), &forged).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{why}");

    // The owner: a wrong offset is corrected, then the upload completes.
    let (s, why) = p8.put(&path, 5, data.clone(), &[]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{why}");
    let (s, why) = p8.put(&path, 0, data[..40_000].to_vec(), &[]).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{why}");
    assert_eq!(p8.head(&path).await, (StatusCode::OK, Some(40_000)));
    let (s, why) = p8.put(&path, 40_000, data[40_000..].to_vec(), &[]).await;
    assert_eq!(s, StatusCode::CREATED, "{why}");
    // Reused: refused.
    let (s, why) = p8.put(&path, 0, data.clone(), &[]).await;
    assert_eq!(s, StatusCode::GONE, "{why}");
    assert!(why.contains("already used"), "{why}");

    // A wrong hash: refused, and the upload is discarded.
    let path = granted_path(&p8.request(data.len() as u64, &sha(b"something else")).await);
    let (s, why) = p8.put(&path, 0, data.clone(), &[]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    assert_eq!(p8.head(&path).await.0, StatusCode::GONE);
    // More bytes than granted: refused, discarded.
    let path = granted_path(&p8.request(10, &sha(&data[..10])).await);
    let (s, why) = p8.put(&path, 0, data[..20_000].to_vec(), &[]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{why}");
    // The smallest upload: zero bytes, stored at once.
    let path = granted_path(&p8.request(0, &sha(b"")).await);
    let (s, why) = p8.put(&path, 0, Vec::new(), &[]).await;
    assert_eq!(s, StatusCode::CREATED, "{why}");
    // Tokens nobody granted, and paths that are no token.
    let fake = format!("{}{}", bulk::BULK_PREFIX, "ab".repeat(32));
    assert_eq!(p8.head(&fake).await.0, StatusCode::NOT_FOUND);
    for bad in ["/rs/v1/bulk/../../etc/passwd", "/rs/v1/bulk/XYZ"] {
        assert_eq!(p8.head(bad).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Expired: refused once its time is past.
    wait_for("the first grant to expire", LONG, || async {
        let (s, _) = p8.head(&expiring).await;
        assert!(s == StatusCode::OK || s == StatusCode::GONE, "{s}");
        (s == StatusCode::GONE).then_some(())
    })
    .await;
    let (s, why) = p8.put(&expiring, 0, vec![1; 10], &[]).await;
    assert_eq!(s, StatusCode::GONE, "{why}");
    assert!(why.contains("expired"), "{why}");

    let op = tree.operator_target().unwrap();
    let (_, v) = json_call(&op, Method::GET, "/api/v1/uploads?source=acme.p8", None)
        .await
        .unwrap();
    let states: Vec<&str> = v["uploads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["state"].as_str())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "stored").count(), 2, "{v}");
    assert_eq!(states.iter().filter(|s| **s == "failed").count(), 3, "{v}");
    assert!(
        !v.to_string().contains(&expiring[bulk::BULK_PREFIX.len()..]),
        "tokens are never shown"
    );
    tree.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_denied_for_now_is_asked_again_until_granted_and_one_denied_for_good_fails() {
    let spec = Spec {
        appserver_extra:
            "[uploads]\nmax_bytes = 8000000\nmax_pending_bytes = 8000000\nretry_after_s = 1\n"
                .into(),
        // 5 MB at 4 MB/s: the first upload is under way long enough.
        proxy_extra: "[bulk]\nmax_rate_bytes_s = 4000000\n".into(),
        // The MLM has a say too: nothing over 8.5 MB goes through it.
        mlm_extra: "[bulk]\nmax_bytes = 8500000\n".into(),
        ..one_mlm(&["p1"])
    };
    let mut tree = start("bulk-denied", &spec);
    let op = tree.operator_target().unwrap();
    let p1 = tree.index("acme.p1").unwrap();
    let (a, b, c) = (
        tree.dir.join("a.bin"),
        tree.dir.join("b.bin"),
        tree.dir.join("c.bin"),
    );
    let (sha_a, sha_b) = (write_file(&a, 5_000_000, 1), write_file(&b, 5_000_000, 2));
    write_file(&c, 9_000_000, 3);

    let first = post_keyed(&tree, p1, &a, "log", Some("job-17")).await;
    let ida = first["id"].as_str().unwrap().to_string();
    // The integrator's resend after a lost answer: the same upload, not a second.
    let again = post_keyed(&tree, p1, &a, "log", Some("job-17")).await;
    assert_eq!(
        (again["id"].as_str(), &again["repeated"]),
        (Some(ida.as_str()), &Value::Bool(true))
    );
    wait_for("the first upload to be granted", LONG, || async {
        let v = proxy_upload(&tree, p1, &ida).await;
        (v["state"] == "granted" || v["state"] == "done").then_some(())
    })
    .await;
    // 5 MB more would pass the appserver's 8 MB of uploads under way.
    let idb = post_file(&tree, p1, &b, "log").await;
    let denied = wait_for("the second upload to be denied for now", LONG, || async {
        let v = proxy_upload(&tree, p1, &idb).await;
        assert_ne!(v["state"], "failed", "{v}");
        (v["state"] == "denied").then_some(v)
    })
    .await;
    assert!(
        denied["reason"]
            .as_str()
            .unwrap_or("")
            .contains("under way"),
        "{denied}"
    );
    assert!(denied["next_at"].is_string(), "{denied}");
    // Larger than the appserver takes at all: denied for good.
    let idc = post_file(&tree, p1, &c, "log").await;
    let failed = wait_for("the third upload to fail", LONG, || async {
        let v = proxy_upload(&tree, p1, &idc).await;
        (v["state"] == "failed").then_some(v)
    })
    .await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("more than"),
        "{failed}"
    );
    assert!(!tree.nodes[p1]
        .data_dir
        .join(format!("bulk/{idc}.bin"))
        .exists());

    let va = upload_done(&tree, p1, &ida).await;
    let vb = upload_done(&tree, p1, &idb).await;
    assert!(vb["requests"].as_u64().unwrap() >= 2, "asked again: {vb}");
    for (v, sha) in [(va, sha_a), (vb, sha_b)] {
        let u = stored_upload(&op, v["request"].as_str().unwrap()).await;
        assert_eq!(u["state"], "stored", "{u}");
        assert_eq!(u["sha256"], sha.as_str());
    }
    // The appserver denied the second at least once (the third, 9 MB, was
    // denied by the MLM's own 8.5 MB limit before it got there); how often
    // depends on how long the first takes, so no more is asserted.
    let denials = metric(&op, "rsnet_bulk_denied_total").await.unwrap();
    assert!(denials >= 1.0, "{denials}");
    tree.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_every_tier_at_random_moments_of_an_upload_stores_it_exactly_once() {
    let spec = Spec {
        // 30 MB at 10 MB/s: three seconds to cut into.
        proxy_extra: "[bulk]\nmax_rate_bytes_s = 10000000\nretry_base_ms = 100\nretry_max_ms = 400\nanswer_timeout_s = 5\n"
            .into(),
        ..one_mlm(&["p1"])
    };
    let mut tree = start("bulk-kill9", &spec);
    let op = tree.operator_target().unwrap();
    let (mlm, p1) = (
        tree.index("acme.mlm1").unwrap(),
        tree.index("acme.p1").unwrap(),
    );
    let size = 30_000_000u64;
    let file = tree.dir.join("core.kill9");
    let want = write_file(&file, size as usize, 9);
    let id = post_file(&tree, p1, &file, "core").await;
    let up = proxy_upload(&tree, p1, &id).await["request"]
        .as_str()
        .unwrap()
        .to_string();
    // Each tier once, in a random order, each when the appserver holds a
    // random share of the file beyond what it held before.
    let mut order = vec![0, mlm, p1];
    fastrand::shuffle(&mut order);
    let mut at = 0u64;
    for victim in order {
        at += size / 5 + fastrand::u64(0..size / 10);
        let got = wait_for("the upload to move on", LONG, || async {
            let (_, v) = json_call(&op, Method::GET, "/api/v1/uploads?source=acme.p1", None)
                .await
                .ok()?;
            let u = v["uploads"].as_array()?.first()?.clone();
            let r = u["received"].as_u64().unwrap_or(0);
            (r >= at || u["state"] == "stored").then_some(u)
        })
        .await;
        if got["state"] == "stored" {
            break;
        }
        eprintln!(
            "kill -9 {} at {} bytes",
            tree.nodes[victim].id, got["received"]
        );
        tokio::task::block_in_place(|| {
            tree.kill9(victim);
            tree.restart(victim)
        })
        .unwrap();
    }
    let v = upload_done(&tree, p1, &id).await;
    assert!(!v["resumed_from"].as_array().unwrap().is_empty(), "{v}");
    let (_, list) = json_call(&op, Method::GET, "/api/v1/uploads?source=acme.p1", None)
        .await
        .unwrap();
    let stored: Vec<&Value> = list["uploads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["state"] == "stored")
        .collect();
    assert_eq!(stored.len(), 1, "stored exactly once: {list}");
    assert_eq!(stored[0]["id"], up.as_str());
    assert_eq!(downloaded_sha(&op, &up).await, (size, want));
    tree.shutdown();
}
