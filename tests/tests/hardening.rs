//! End-to-end: an MLM under abuse by a leaked proxy key. Many connections
//! with large bodies at once stay within the MLM's memory budget for bodies
//! (reserved before a byte is read; what does not fit is refused with 503
//! and a retry-after), and a well-behaved proxy's traffic keeps flowing.
//! 1,000 slowloris connections (cut at the handshake timeout, and opened
//! again) and a flood of malformed envelopes over keep-alive connections
//! leave a good proxy most of its rate, and the MLM's memory bounded.

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

/// The tests here measure an MLM under load: one at a time, so that one's
/// flood is not the other's baseline.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident memory now and at its peak, in bytes, of process `pid`.
fn rss(pid: u32) -> (u64, u64) {
    let pid = pid.to_string();
    (
        rsnet_tests::memory_bytes(&pid, "VmRSS"),
        rsnet_tests::memory_bytes(&pid, "VmHWM"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_eight_large_bodies_at_once_stay_in_the_budget_and_good_traffic_flows() {
    let _one = ONE_AT_A_TIME.lock().await;
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

/// `n` alarms through the good proxy at `addr` (batches of 100, one after
/// the other), and the time until the appserver stored them all.
async fn move_alarms(
    op: &rsnet_common::client::Target,
    addr: std::net::SocketAddr,
    tag: &str,
    n: usize,
) -> Duration {
    let t0 = std::time::Instant::now();
    for b in 0..n / 100 {
        let batch: Vec<Value> = (0..100)
            .map(|i| json!({ "kind": "alarm", "class": "alarm", "subclass": tag, "severity": "minor", "text": format!("{b}.{i}") }))
            .collect();
        send(addr, &batch).await.unwrap();
    }
    wait_for(&format!("{n} {tag} alarms stored"), LONG, || async {
        (stored(op, &format!("subclass={tag}")).await.ok()?.len() >= n).then_some(())
    })
    .await;
    t0.elapsed()
}

/// One keep-alive TLS connection with a leaked proxy key, posting
/// malformed envelopes back to back until `stop`; returns how many were
/// answered, and with which statuses outside 4xx.
async fn malformed_flood(
    at: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<u16>) {
    use std::sync::atomic::Ordering;
    let (mut answered, mut odd) = (0u64, Vec::new());
    let bodies: [(&str, &[u8]); 4] = [
        ("multipart/related; boundary=b", b"--b\r\nContent-Type: application/xml\r\n\r\n<control><<<\r\n--b--\r\n"),
        ("multipart/related; boundary=b", b"not multipart at all"),
        ("application/json", b"{}"),
        ("multipart/related; boundary=b", b"--b\r\nContent-Type: application/xml\r\n\r\n<control/>\r\n--b\r\nContent-Type: application/xml\r\n\r\n<header><id>zz</id></header>\r\n--b--\r\n"),
    ];
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = tokio::net::TcpStream::connect(at).await else {
            continue;
        };
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let Ok(tls) = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
        else {
            continue;
        };
        let Ok((mut send, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let (ct, body) = bodies[i % bodies.len()];
            i += 1;
            let req = http::Request::post("/rs/v1/exchange")
                .header("host", at.to_string())
                .header("content-type", ct)
                .body(http_body_util::Full::new(Bytes::from_static(body)))
                .unwrap();
            if send.ready().await.is_err() {
                break;
            }
            match send.send_request(req).await {
                Ok(r) => {
                    answered += 1;
                    if !r.status().is_client_error() {
                        odd.push(r.status().as_u16());
                    }
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                }
                Err(_) => break,
            }
        }
    }
    (answered, odd)
}

/// A slowloris connection: a TLS record header, then one byte a second,
/// opened again whenever the MLM closes it; `open` counts those open now.
async fn slowloris(
    at: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(at).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        open.fetch_add(1, Ordering::Relaxed);
        // A ClientHello record that claims 512 bytes and never brings them.
        let mut ok = tcp
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .is_ok();
        while ok && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ok = tcp.write_all(&[0]).await.is_ok();
        }
        open.fetch_sub(1, Ordering::Relaxed);
        if !ok {
            closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_slow_connections_and_a_malformed_flood_leave_a_good_proxy_most_of_its_rate() {
    let _one = ONE_AT_A_TIME.lock().await;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = tokio::task::block_in_place(|| Tree::start(&tempdir("hardening-abuse"), &spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    tree.remove_on_drop = true;
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    let at = tree.nodes[mlm].addr.unwrap();
    let pid = tree.nodes[mlm].pid().unwrap();
    let p1 = tree.nodes[tree.index("acme.p1").unwrap()].addr.unwrap();
    const N: usize = 2000;

    // The good proxy's rate (alarms stored per second, in rounds of N),
    // alone and then under attack for longer than the MLM's handshake
    // timeout, so that the slow connections are cut and come back.
    move_alarms(&op, p1, "warmup", 200).await;
    let rate = |rounds: usize, took: Duration| (rounds * N) as f64 / took.as_secs_f64();
    let mut alone = Duration::ZERO;
    for r in 0..3 {
        alone += move_alarms(&op, p1, &format!("alone{r}"), N).await;
    }
    let alone = rate(3, alone);
    let (_, before) = rss(pid);

    // 1,000 slow connections, and a flood of malformed envelopes over four
    // keep-alive connections of one leaked proxy key.
    let stop = Arc::new(AtomicBool::new(false));
    let (open, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let slow: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(slowloris(at, open.clone(), closed.clone(), stop.clone())))
        .collect();
    let leaked = RawChild::new(&tree, "acme.p9", Role::Proxy, at);
    let rsnet_common::client::Target::Tls { config, .. } = leaked.target.clone() else {
        unreachable!()
    };
    let flood: Vec<_> = (0..4)
        .map(|_| tokio::spawn(malformed_flood(at, config.clone(), stop.clone())))
        .collect();
    wait_for("1,000 slow connections open", LONG, || async {
        (open.load(Ordering::Relaxed) >= 1000).then_some(())
    })
    .await;
    let t0 = std::time::Instant::now();
    let mut rounds = 0;
    while t0.elapsed() < rsnet_common::limits::HANDSHAKE_TIMEOUT + Duration::from_secs(3) {
        move_alarms(&op, p1, &format!("attacked{rounds}"), N).await;
        rounds += 1;
    }
    let attacked = rate(rounds, t0.elapsed());
    let (_, peak) = rss(pid);
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for f in flood {
        let (n, odd) = f.await.unwrap();
        assert!(
            odd.is_empty(),
            "malformed envelopes answered outside 4xx: {odd:?}"
        );
        answered += n;
    }
    for s in slow {
        s.abort();
    }
    let ratio = attacked / alone;
    eprintln!(
        "good proxy: {alone:.0} alarms/s alone, {attacked:.0} alarms/s under attack ({:.0} %); \
         malformed envelopes answered meanwhile: {answered}; slow connections closed by the MLM: {}; \
         MLM resident peak {} MiB before the attack, {} MiB during it",
        ratio * 100.0,
        closed.load(Ordering::Relaxed),
        before >> 20,
        peak >> 20
    );
    assert!(answered > 0, "the flood never got an answer");
    // The MLM cut the slow handshakes (they came back and were cut again).
    assert!(
        closed.load(Ordering::Relaxed) >= 500,
        "slow connections cut: {}",
        closed.load(Ordering::Relaxed)
    );
    assert!(
        ratio >= 0.5,
        "the good proxy kept {:.0} % of its rate",
        ratio * 100.0
    );
    assert!(
        peak < 256 << 20,
        "MLM peak resident memory {} MiB",
        peak >> 20
    );
    tree.shutdown();
}

/// POSTs `body` to the exchange path as `attacker` with extra `headers`;
/// the status, the `Accept-Encoding` answered and the body.
async fn post_coded(
    attacker: &RawChild,
    ct: &str,
    body: Bytes,
    headers: &[(&str, String)],
) -> (http::StatusCode, String, Bytes) {
    use http_body_util::BodyExt;
    let r = rsnet_common::client::send(
        &attacker.target,
        Method::POST,
        "/rs/v1/exchange",
        Some((ct, body)),
        headers,
    )
    .await
    .expect("exchange");
    let status = r.status();
    let accept = r
        .headers()
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let b = r
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, accept, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_that_lie_about_their_size_or_are_not_zstd_are_refused_and_honest_ones_travel(
) {
    use rsnet_common::envelope::encoding::{compress, DECODED_LENGTH};
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = tokio::task::block_in_place(|| Tree::start(&tempdir("hardening-zstd"), &spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    tree.remove_on_drop = true;
    let op = tree.operator_target().unwrap();
    let mlm = tree.index("acme.mlm1").unwrap();
    let attacker = RawChild::new(&tree, "acme.p9", Role::Proxy, tree.nodes[mlm].addr.unwrap());
    let alarm = |text: &str| {
        Message::forward(
            attacker.id.clone(),
            "alarm",
            Some("zstd"),
            Content::Alarm(Alarm {
                severity: Severity::Major,
                state: AlarmState::Raised,
                support_instance: None,
                text: text.into(),
                data: None,
            }),
        )
        .with_hop(&attacker.id)
    };
    let zstd = |n: usize| {
        vec![
            ("content-encoding", "zstd".to_string()),
            (DECODED_LENGTH, n.to_string()),
        ]
    };

    // An encoding it does not read: 415, naming the one it does.
    let m = alarm("brotli");
    let mut w = EnvelopeWriter::new();
    w.message(&m);
    let (ct, body) = w.finish();
    let (s, accept, _) = post_coded(
        &attacker,
        &ct,
        body.clone(),
        &[("content-encoding", "br".into())],
    )
    .await;
    assert_eq!(s, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(accept, "zstd");

    // Not zstd at all: 400.
    let (s, _, _) = post_coded(&attacker, &ct, body.clone(), &zstd(body.len())).await;
    assert_eq!(s, http::StatusCode::BAD_REQUEST);

    // A bomb that declares 4 KiB and decodes to 15 MiB: refused at the
    // declared size (413), before it is held.
    let mut w = EnvelopeWriter::new();
    let mut big = alarm("");
    big.content = Content::Alarm(Alarm {
        severity: Severity::Major,
        state: AlarmState::Raised,
        support_instance: None,
        text: "a".repeat(60 * 1024),
        data: None,
    });
    for _ in 0..250 {
        let mut b = big.clone();
        b.header.id = rsnet_common::id::MessageId::new();
        w.message(&b);
    }
    let (bct, bbody) = w.finish();
    assert!(bbody.len() > 14 << 20);
    let bomb = compress(&bbody).unwrap();
    assert!(bomb.len() < 64 * 1024, "{} bytes compressed", bomb.len());
    let (s, _, _) = post_coded(&attacker, &bct, bomb.clone(), &zstd(4096)).await;
    assert_eq!(s, http::StatusCode::PAYLOAD_TOO_LARGE);
    // Declaring more than any envelope may hold is refused before a byte is read.
    let (s, _, _) = post_coded(&attacker, &bct, bomb, &zstd(17 << 20)).await;
    assert_eq!(s, http::StatusCode::PAYLOAD_TOO_LARGE);

    // An honest compressed POST travels (its short reply is not worth
    // compressing and comes as it is).
    let m = alarm("honest and compressed");
    let mut w = EnvelopeWriter::new();
    w.message(&m);
    let (ct, body) = w.finish();
    let mut headers = zstd(body.len());
    headers.push(("accept-encoding", "zstd".into()));
    let (s, accept, reply) = post_coded(&attacker, &ct, compress(&body).unwrap(), &headers).await;
    assert_eq!(
        s,
        http::StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(accept, "zstd");
    assert!(
        String::from_utf8_lossy(&reply).contains(&format!("<accepted>{}", m.header.id)),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    wait_for("the honest alarm stored", LONG, || async {
        let all = stored(&op, "subclass=zstd").await.ok()?;
        let ids: Vec<&str> = all.iter().filter_map(|m| m["id"].as_str()).collect();
        (ids == [m.header.id.to_string().as_str()]).then_some(())
    })
    .await;
}

/// A long-poll's wait holds no request-body memory: children waiting by the
/// thousand must not fill the budget that bodies in flight need (each held
/// poll used to keep at least 1 KiB of it, so 65,536 waiting children filled
/// the default 64 MiB, and 16,384 of one identity its share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_waiting_in_long_polls_hold_no_body_memory() {
    const WAITING: usize = 24;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = tokio::task::block_in_place(|| Tree::start(&tempdir("hardening-polls"), &spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    tree.remove_on_drop = true;
    let mlm = tree.index("acme.mlm1").unwrap();
    let at = tree.nodes[mlm].addr.unwrap();
    let node = tree.node_target(mlm).unwrap();
    let mut polls = Vec::new();
    for i in 0..WAITING {
        let mut child = RawChild::new(&tree, &format!("acme.w{i}"), Role::Proxy, at);
        polls.push(tokio::spawn(
            async move { child.exchange(&[], 30_000).await },
        ));
    }
    wait_for("every child's long-poll held at the MLM", LONG, || async {
        let n = rsnet_demo::metric(&node, "rsnet_backchannel_long_polls")
            .await
            .ok()?;
        (n >= WAITING as f64).then_some(())
    })
    .await;
    let held = rsnet_demo::metric(&node, "rsnet_body_budget_held_bytes")
        .await
        .expect("metric");
    assert_eq!(
        held, 0.0,
        "{WAITING} waiting long-polls hold {held} bytes of the body budget"
    );
    for p in polls {
        p.abort();
    }
}
