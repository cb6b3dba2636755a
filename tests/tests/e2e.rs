//! End-to-end: real binaries on loopback, real certificates, checked as a user would.
//!
//! Binaries are found next to the test executable's directory (build them
//! first: `cargo build --bins`, which `tests/run.sh` does).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rsnet_common::client::{call, Target};
use rsnet_common::envelope::{wire, EnvelopeWriter};
use rsnet_common::model::*;
use rsnet_common::tls::{Role, TlsPaths};
use rsnet_common::MessageId;
use rsnet_demo::{alarm, send, stored, Spec, Tree};
use rsnet_tests::{tempdir, wait_for, Sse};
use serde_json::Value;

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t =
        Tree::start(&tempdir(tag), spec).unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

/// Counts stored alarms of subclass `sub` by message ID.
async fn census(op: &Target, sub: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in stored(op, &format!("subclass={sub}"))
        .await
        .unwrap_or_default()
    {
        *seen
            .entry(m["id"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    seen
}

async fn wait_all_stored(
    op: &Target,
    sub: &str,
    ids: &HashSet<String>,
    timeout: Duration,
) -> HashMap<String, usize> {
    wait_for(
        &format!("{} messages of {sub} to be stored", ids.len()),
        timeout,
        || async {
            let seen = census(op, sub).await;
            ids.iter().all(|i| seen.contains_key(i)).then_some(seen)
        },
    )
    .await
}

fn assert_exactly_once(seen: &HashMap<String, usize>, acked: &HashSet<String>) {
    let missing: Vec<_> = acked.iter().filter(|i| !seen.contains_key(*i)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let dupes: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dupes.is_empty(), "messages stored twice: {dupes:?}");
    let unknown: Vec<_> = seen.keys().filter(|i| !acked.contains(*i)).collect();
    // Messages sent but not acknowledged (a proxy killed mid-request) may or may not arrive; anything else is a bug.
    assert!(
        unknown.len() <= 2000,
        "unexpected extra messages: {}",
        unknown.len()
    );
}

fn alarms(tag: &str, proxy: &str, n: usize, sub: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut a = alarm(&format!("{tag} {proxy} {i}"), &format!("host{}", i % 7));
            a["subclass"] = Value::from(sub);
            a
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_proxies_through_two_mlms_arrive_exactly_once() {
    let tree = tokio::task::block_in_place(|| start("once", &Spec::demo()));
    let op = tree.operator_target().unwrap();
    const PER_PROXY: usize = 5_000;
    let mut tasks = Vec::new();
    for p in tree.proxies() {
        let (addr, id) = (tree.nodes[p].addr.unwrap(), tree.nodes[p].id.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for chunk in alarms("once", &id, PER_PROXY, "bulkonce").chunks(500) {
                ids.extend(send(addr, chunk).await.expect("local API accepts"));
            }
            ids
        }));
    }
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 4 * PER_PROXY);
    let seen = wait_all_stored(&op, "bulkonce", &acked, Duration::from_secs(120)).await;
    assert_exactly_once(&seen, &acked);
    assert_eq!(seen.len(), acked.len());

    // The stored messages carry the whole path, and the topology knows it.
    let one = stored(&op, "subclass=bulkonce&source=acme.p3")
        .await
        .unwrap();
    let hops: Vec<&str> = one[0]["routing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(hops, ["acme.p3", "acme.mlm2", "provider.app"]);
    let (_, b) = call(&op, Method::GET, "/api/v1/components", None)
        .await
        .unwrap();
    let comps: Value = serde_json::from_slice(&b).unwrap();
    let p3 = comps["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "acme.p3")
        .expect("acme.p3 known");
    assert_eq!(p3["parent_path"], serde_json::json!(["acme.mlm2"]));
    assert!(
        p3["last_heartbeat"].is_string(),
        "proxy heartbeat recorded: {p3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_each_tier_loses_nothing_acknowledged_and_stores_nothing_twice() {
    let mut spec = Spec::demo();
    spec.proxy_uplink_extra = "exchange_timeout_ms = 3000".into();
    let tree = Arc::new(Mutex::new(tokio::task::block_in_place(|| {
        start("crash", &spec)
    })));
    let (op, proxies) = {
        let t = tree.lock().unwrap();
        (t.operator_target().unwrap(), t.proxies())
    };
    let acked = Arc::new(Mutex::new(HashSet::new()));
    // Senders: keep posting small batches; record what was acknowledged (202).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for p in proxies.clone() {
        let (tree, acked, stop) = (tree.clone(), acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (addr, id) = {
                    let t = tree.lock().unwrap();
                    (t.nodes[p].addr, t.nodes[p].id.clone())
                };
                let batch = alarms(&format!("crash{n}"), &id, 50, "crash");
                n += 1;
                match send(addr.unwrap(), &batch).await {
                    Ok(ids) => acked.lock().unwrap().extend(ids),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await, // proxy down: not acknowledged
                }
            }
        }));
    }
    // Kill -9 a proxy, an MLM and the appserver, each at a random moment, and bring it back.
    let mut rng = fastrand::Rng::new();
    for victim in [proxies[rng.usize(0..proxies.len())], 1 + rng.usize(0..2), 0] {
        let before = acked.lock().unwrap().len();
        wait_for("traffic before the kill", Duration::from_secs(30), || {
            let a = acked.clone();
            async move { (a.lock().unwrap().len() > before + 200).then_some(()) }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await; // the random moment
        let mut t = tree.lock().unwrap();
        tokio::task::block_in_place(|| {
            t.kill9(victim);
            t.restart(victim).expect("restart after kill -9");
        });
    }
    let target = acked.lock().unwrap().len() + 500;
    wait_for(
        "traffic after the last restart",
        Duration::from_secs(30),
        || {
            let a = acked.clone();
            async move { (a.lock().unwrap().len() > target).then_some(()) }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let seen = wait_all_stored(&op, "crash", &acked, Duration::from_secs(120)).await;
    assert_exactly_once(&seen, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appserver_down_for_20s_proxies_spool_then_drain() {
    let mut tree = tokio::task::block_in_place(|| start("down", &Spec::demo()));
    let op = tree.operator_target().unwrap();
    tokio::task::block_in_place(|| tree.kill9(0));
    let started = std::time::Instant::now();
    let mut acked = HashSet::new();
    for p in tree.proxies() {
        let a = tree.nodes[p].addr.unwrap();
        acked.extend(
            send(a, &alarms("down", &tree.nodes[p].id, 300, "down"))
                .await
                .expect("spooled while the top is down"),
        );
    }
    // Every proxy holds its messages.
    for p in tree.proxies() {
        let a = tree.nodes[p].addr.unwrap();
        let (_, b) = call(&Target::Plain(a), Method::GET, "/v1/status", None)
            .await
            .unwrap();
        let s: Value = serde_json::from_slice(&b).unwrap();
        assert!(
            s["spool"]["messages"].as_u64().unwrap() >= 300,
            "spool: {s}"
        );
    }
    // The outage lasts 20 s (a scenario length, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(started.elapsed())).await;
    tokio::task::block_in_place(|| tree.restart(0)).unwrap();
    let seen = wait_all_stored(&op, "down", &acked, Duration::from_secs(60)).await;
    assert_exactly_once(&seen, &acked);
    for p in tree.proxies() {
        let a = tree.nodes[p].addr.unwrap();
        wait_for("spool drained", Duration::from_secs(30), || async move {
            let (_, b) = call(&Target::Plain(a), Method::GET, "/v1/status", None)
                .await
                .ok()?;
            let s: Value = serde_json::from_slice(&b).ok()?;
            (s["spool"]["messages"].as_u64()? == 0).then_some(())
        })
        .await;
    }
}

fn proxy_tls(tree: &Tree, id: &str) -> TlsPaths {
    let f = tree.pki.issue(id, Role::Proxy, &[], &[]).unwrap();
    TlsPaths {
        ca: tree.pki.ca(),
        cert: f.cert,
        key: f.key,
        crl: None,
    }
}

fn tls_target(tree: &Tree, t: &TlsPaths) -> Target {
    let a = tree.nodes[0].addr.unwrap();
    Target::Tls {
        base: format!("https://127.0.0.1:{}", a.port()),
        config: Arc::new(rsnet_common::tls::client_config(t).unwrap()),
    }
}

async fn exchange(
    t: &Target,
    ct: &str,
    body: impl Into<Bytes>,
) -> Result<(StatusCode, Bytes), String> {
    call(t, Method::POST, "/rs/v1/exchange", Some((ct, body.into()))).await
}

fn event_from(origin: &str) -> Message {
    Message::forward(
        origin.parse().unwrap(),
        "event",
        Some("badinput"),
        Content::Event(Event {
            support_instance: None,
            text: "x".into(),
            data: None,
        }),
    )
}

/// Answers in a reply envelope, by request ID.
async fn answers(ct_body: (StatusCode, Bytes)) -> HashMap<String, Response> {
    let (status, body) = ct_body;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let boundary = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("--")
        .to_string();
    let d = rsnet_common::envelope::decode_bytes(
        &format!("multipart/related; boundary={boundary}"),
        body,
    )
    .await
    .unwrap();
    d.control
        .answers()
        .into_iter()
        .map(|(id, r)| (id.to_string(), r))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_clear_errors_and_nothing_stored_is_lost() {
    let tree = tokio::task::block_in_place(|| {
        start(
            "bad",
            &Spec {
                proxies: vec![("p1".into(), Some(0))],
                ..Spec::demo()
            },
        )
    });
    let op = tree.operator_target().unwrap();
    let p1 = tree.nodes[tree.proxies()[0]].addr.unwrap();
    let before: HashSet<String> = send(p1, &alarms("bad", "acme.p1", 20, "badinput"))
        .await
        .unwrap()
        .into_iter()
        .collect();
    wait_all_stored(&op, "badinput", &before, Duration::from_secs(30)).await;

    let me = proxy_tls(&tree, "acme.p9");
    let t = tls_target(&tree, &me);
    // Whole-envelope errors.
    assert_eq!(
        exchange(&t, "application/json", "{}").await.unwrap().0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        exchange(&t, "multipart/related; boundary=x", "garbage")
            .await
            .unwrap()
            .0,
        StatusCode::BAD_REQUEST
    );
    let big = format!(
        "--x\r\nContent-ID: <{}.header>\r\n\r\n{}\r\n--x--\r\n",
        MessageId::new(),
        "a".repeat(2 << 20)
    );
    assert_eq!(
        exchange(&t, "multipart/related; boundary=x", big)
            .await
            .unwrap()
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let mut many = String::new();
    for _ in 0..5000 {
        let m = event_from("acme.p9");
        many.push_str(&format!("--x\r\nContent-ID: <{id}.header>\r\n\r\n{h}\r\n--x\r\nContent-ID: <{id}.content>\r\n\r\n<event/>\r\n", id = m.header.id, h = wire::encode_header(&m.header)));
    }
    many.push_str("--x--\r\n");
    assert_eq!(
        exchange(&t, "multipart/related; boundary=x", many)
            .await
            .unwrap()
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Per-message errors: malformed XML, unknown content kind, spoofed source; the good one is stored.
    let (good, spoof, badxml, unknown) = (
        event_from("acme.p9"),
        event_from("acme.p1"),
        event_from("acme.p9"),
        event_from("acme.p9"),
    );
    let mut w = EnvelopeWriter::new();
    w.message(&good).message(&spoof);
    w.raw(
        &badxml.header.id,
        wire::encode_header(&badxml.header).as_bytes(),
        b"<event><text>unclosed</event>",
    );
    let h = wire::encode_header(&unknown.header).replace("content=\"event\"", "content=\"poem\"");
    w.raw(&unknown.header.id, h.as_bytes(), b"<poem/>");
    let (ct, body) = w.finish();
    let a = answers(exchange(&t, &ct, body).await.unwrap()).await;
    assert_eq!(a[&good.header.id.to_string()].status, Status::Accepted);
    for (m, needle) in [
        (&spoof, "outside the subtree"),
        (&badxml, "malformed XML"),
        (&unknown, "unknown content kind"),
    ] {
        let r = &a[&m.header.id.to_string()];
        assert_eq!(r.status, Status::Rejected);
        assert!(
            r.reason.as_deref().unwrap_or("").contains(needle),
            "{:?}",
            r.reason
        );
        assert!(
            r.retry_after.is_none(),
            "a permanent rejection has no retry-after"
        );
    }

    // No client certificate: the appserver (which signs for enrolling
    // nodes) lets the TLS session in, and serves it enrollment only.
    let anon = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut r = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        r.add(rustls::pki_types::CertificateDer::from_pem_file(tree.pki.ca()).unwrap())
            .unwrap();
        r
    })
    .with_no_client_auth();
    let anon_t = Target::Tls {
        base: format!("https://127.0.0.1:{}", tree.nodes[0].addr.unwrap().port()),
        config: Arc::new(anon),
    };
    match exchange(&anon_t, &ct, "").await {
        Err(_) => panic!("the appserver lets clients without a certificate enroll"),
        Ok((status, body)) => {
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "no client certificate must be refused"
            );
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("a client certificate is needed"), "{body}");
        }
    }

    // A revoked certificate is refused once the CRL is rewritten, without a restart.
    assert!(exchange(&t, "application/json", "{}").await.is_ok());
    tree.pki.revoke("acme.p9").unwrap();
    wait_for(
        "the revocation to take effect",
        Duration::from_secs(15),
        || {
            let t = t.clone();
            async move {
                exchange(&t, "application/json", "{}")
                    .await
                    .is_err()
                    .then_some(())
            }
        },
    )
    .await;

    // Others are still served, and what was stored before is all there.
    let after: HashSet<String> = send(p1, &alarms("bad2", "acme.p1", 5, "badinput"))
        .await
        .unwrap()
        .into_iter()
        .collect();
    let seen = wait_all_stored(&op, "badinput", &after, Duration::from_secs(30)).await;
    assert!(before.iter().all(|i| seen.contains_key(i)));
    assert!(seen.contains_key(&good.header.id.to_string()));
    assert!(!seen.contains_key(&spoof.header.id.to_string()));
}

fn event_id(data: &str) -> String {
    let v: Value = serde_json::from_str(data).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_from_last_event_id_without_gaps_or_repeats() {
    let tree = tokio::task::block_in_place(|| {
        start(
            "sse",
            &Spec {
                proxies: vec![("p1".into(), Some(0))],
                ..Spec::demo()
            },
        )
    });
    let op = tree.operator_target().unwrap();
    let p1 = tree.nodes[tree.proxies()[0]].addr.unwrap();
    let first: Vec<String> = send(p1, &alarms("sse", "acme.p1", 30, "sse"))
        .await
        .unwrap();

    // Read 10 events, go away, and resume from the last one handled.
    let got1 = Sse::open(&op, "subclass=sse", None).await.events(10).await;
    let last = got1.last().unwrap().0;
    let rest: Vec<String> = send(p1, &alarms("sse2", "acme.p1", 20, "sse"))
        .await
        .unwrap();
    let got2 = Sse::open(&op, "subclass=sse", Some(last))
        .await
        .events(40)
        .await;
    let all: Vec<String> = got1.iter().chain(&got2).map(|(_, d)| event_id(d)).collect();
    let expected: Vec<String> = first.into_iter().chain(rest).collect();
    assert_eq!(all.len(), 50);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        50,
        "an event was repeated"
    );
    assert_eq!(
        all.iter().collect::<HashSet<_>>(),
        expected.iter().collect::<HashSet<_>>(),
        "an event was skipped"
    );
}

/// A subscriber that listens as messages arrive is served from the
/// appserver's feed (each message rendered once, at ingest); one that
/// comes later reads them back from the store. Both must read the very
/// same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_and_a_late_one_read_the_same_events() {
    let tree = tokio::task::block_in_place(|| {
        start(
            "feed",
            &Spec {
                proxies: vec![("p1".into(), Some(0))],
                heartbeat_s: 3600,
                ..Spec::demo()
            },
        )
    });
    let op = tree.operator_target().unwrap();
    let app = tree.node_target(0).unwrap();
    let p1 = tree.nodes[tree.proxies()[0]].addr.unwrap();
    let sent_from = |from: &'static str| {
        let app = app.clone();
        async move {
            rsnet_demo::metric(
                &app,
                &format!("rsnet_stream_events_total{{from=\"{from}\"}}"),
            )
            .await
            .unwrap()
        }
    };

    // Stored while nobody listens: in the store only.
    let early: HashSet<String> = send(p1, &alarms("early", "acme.p1", 5, "feed"))
        .await
        .unwrap()
        .into_iter()
        .collect();
    wait_all_stored(&op, "feed", &early, Duration::from_secs(30)).await;
    let (_, b) = call(&op, Method::GET, "/api/v1/messages?limit=1", None)
        .await
        .unwrap();
    let after = serde_json::from_slice::<Value>(&b).unwrap()["last"]
        .as_u64()
        .unwrap();

    let mut live = Sse::open(&op, &format!("subclass=feed&after={after}"), None).await;
    let (feed0, store0) = (sent_from("feed").await, sent_from("store").await);
    let mut sent: HashSet<String> = HashSet::new();
    for k in 0..2 {
        sent.extend(
            send(p1, &alarms(&format!("live{k}"), "acme.p1", 20, "feed"))
                .await
                .unwrap(),
        );
    }
    let live_events = live.events(40).await;
    let ids: HashSet<String> = live_events.iter().map(|(_, d)| event_id(d)).collect();
    assert_eq!(
        ids, sent,
        "the live subscriber read what was sent, once each"
    );
    let (feed1, store1) = (sent_from("feed").await, sent_from("store").await);
    assert_eq!(
        (feed1 - feed0) + (store1 - store0),
        40.0,
        "each event counted once, by where it came from"
    );
    assert!(
        feed1 - feed0 >= 1.0,
        "the live subscriber was served from the feed"
    );

    // From the start: the early five, then the same 40, byte for byte.
    let mut late = Sse::open(&op, "subclass=feed", None).await;
    let late_events = late.events(45).await;
    assert!(
        sent_from("store").await - store1 >= 45.0,
        "the late subscriber read the store"
    );
    let early_read: HashSet<String> = late_events[..5].iter().map(|(_, d)| event_id(d)).collect();
    assert_eq!(early_read, early);
    assert_eq!(late_events[5..], live_events[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_instance_ids_are_stable_across_restarts_and_full_spool_says_507() {
    let mut spec = Spec {
        mlms: vec![],
        proxies: vec![("p1".into(), None)],
        ..Spec::demo()
    };
    spec.heartbeat_s = 3600;
    let mut tree = tokio::task::block_in_place(|| start("si", &spec));
    let p = tree.proxies()[0];
    let op = tree.operator_target().unwrap();
    let ids: HashSet<String> = send(
        tree.nodes[p].addr.unwrap(),
        &[alarm("a", "db1.acme"), alarm("b", "web1.acme")],
    )
    .await
    .unwrap()
    .into_iter()
    .collect();
    wait_all_stored(&op, "demo", &ids, Duration::from_secs(30)).await;
    tokio::task::block_in_place(|| {
        tree.stop(p, Duration::from_secs(10));
        tree.restart(p).unwrap();
    });
    let id2: HashSet<String> = send(tree.nodes[p].addr.unwrap(), &[alarm("c", "web1.acme")])
        .await
        .unwrap()
        .into_iter()
        .collect();
    wait_all_stored(&op, "demo", &id2, Duration::from_secs(30)).await;
    let all = stored(&op, "source=acme.p1&class=alarm").await.unwrap();
    let si = |text: &str| {
        all.iter()
            .find(|m| m["content"]["text"] == text)
            .map(|m| m["source"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(si("a"), "acme.p1.si1");
    assert_eq!(si("b"), "acme.p1.si2");
    assert_eq!(si("c"), "acme.p1.si2", "same key, same ID after restart");
    // A clean stop sends a shutdown notice, a start a cold-start notice.
    let notices = stored(&op, "source=acme.p1&class=infrastructure")
        .await
        .unwrap();
    let subs: Vec<&str> = notices
        .iter()
        .filter_map(|m| m["subclass"].as_str())
        .collect();
    assert!(
        subs.contains(&"shutdown") && subs.iter().filter(|s| **s == "cold-start").count() == 2,
        "{subs:?}"
    );

    // Parent down and a tiny spool: the integrator gets 507, and bad input 400.
    let cfg = std::fs::read_to_string(&tree.nodes[p].config).unwrap();
    std::fs::write(
        &tree.nodes[p].config,
        cfg.replacen(
            "heartbeat_interval_s",
            "spool_capacity_bytes = 1048576\nheartbeat_interval_s",
            1,
        ),
    )
    .unwrap();
    tokio::task::block_in_place(|| {
        tree.kill9(0);
        tree.kill9(p);
        tree.restart(p).unwrap();
    });
    let a = tree.nodes[p].addr.unwrap();
    let big = serde_json::json!({"kind": "data", "payload": "x".repeat(200_000)});
    let mut status = StatusCode::ACCEPTED;
    for _ in 0..20 {
        let (s, _) = call(
            &Target::Plain(a),
            Method::POST,
            "/v1/messages",
            Some(("application/json", big.to_string().into())),
        )
        .await
        .unwrap();
        status = s;
        if s != StatusCode::ACCEPTED {
            break;
        }
    }
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    let (s, b) = call(
        &Target::Plain(a),
        Method::POST,
        "/v1/messages",
        Some((
            "application/json",
            r#"{"kind":"alarm","severity":"bad"}"#.into(),
        )),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&b).contains("severity"),
        "{}",
        String::from_utf8_lossy(&b)
    );
}
