//! Back-channel benchmarks (issue 3), on a tree appserver → MLM → proxy:
//!
//! 1. Latency from the operator's `POST /api/v1/messages` to the message's
//!    arrival at an integrator long-polling the proxy's inbox: two hops
//!    down, with the MLM and the proxy long-polling their parents. Twice:
//!    with a new HTTPS connection for each POST (as `rsnet-ctl send`
//!    makes), and with one connection kept open (as an operator service
//!    that sends often would); sends back to back, then paced.
//! 2. Bytes on the appserver → MLM link per group message as the group
//!    grows from 1 to 1,000 destinations behind that one MLM (support
//!    instances of one proxy), read from the appserver's own counter.
//!
//! The idle children on one MLM are `idle.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use rsnet_common::client::{call, connect, Connection, Target};
use rsnet_demo::{json_call, metric};

use crate::peer::quantile;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const LATENCY_SAMPLES: usize = 1000;
const PAYLOAD: usize = 1024;
/// The paced run's interval between sends (50 a second).
const PACE: Duration = Duration::from_millis(20);

async fn post(op: &Target, body: Value) -> String {
    let (s, v) = json_call(op, Method::POST, "/api/v1/messages", Some(body))
        .await
        .expect("post");
    assert!(s.is_success(), "{s}: {v}");
    v["id"].as_str().expect("id").to_string()
}

/// [`post`] on a kept connection.
async fn post_on(conn: &mut Connection, body: Value) -> String {
    let resp = conn
        .send_body(
            Method::POST,
            "/api/v1/messages",
            rsnet_common::http_util::full(body.to_string()),
            &[("content-type", "application/json".into())],
        )
        .await
        .expect("post");
    let s = resp.status();
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&b).unwrap_or_default();
    assert!(s.is_success(), "{s}: {v}");
    v["id"].as_str().expect("id").to_string()
}

/// Runs both; prints Markdown.
pub async fn run(dir: &std::path::Path) {
    let spec = rsnet_demo::Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        ..rsnet_demo::Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| rsnet_demo::Tree::start(dir, &spec)).expect("tree");
    let op = tree.operator_target().expect("operator");
    let p1 = tree.index("acme.p1").expect("p1");
    let local = Target::Plain(tree.nodes[p1].addr.expect("addr"));
    // Routes: wait until the appserver has heard of the proxy.
    loop {
        let (_, b) = call(&op, Method::GET, "/api/v1/components", None)
            .await
            .expect("components");
        if String::from_utf8_lossy(&b).contains("\"acme.p1\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ---- 1. latency, operator POST → integrator's long-poll returns it
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let l2 = local.clone();
    let integrator = tokio::spawn(async move {
        loop {
            let Ok((_, b)) = call(&l2, Method::GET, "/v1/inbox?wait=10&limit=1000", None).await
            else {
                continue;
            };
            let now = Instant::now();
            let v: Value = serde_json::from_slice(&b).unwrap_or_default();
            let msgs = v["messages"].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() {
                continue;
            }
            let acks: Vec<Value> = msgs
                .iter()
                .map(|m| json!({ "id": m["id"], "destination": m["destination"] }))
                .collect();
            for m in &msgs {
                let _ = tx.send((m["id"].as_str().unwrap_or("").to_string(), now));
            }
            let body = json!({ "acks": acks }).to_string();
            let _ = call(
                &l2,
                Method::POST,
                "/v1/inbox/ack",
                Some(("application/json", body.into())),
            )
            .await;
        }
    });
    let payload = "x".repeat(PAYLOAD);
    let message = json!({ "to": "acme.p1", "kind": "data", "class": "bench", "payload": payload });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("### Back-channel latency (operator POST → proxy inbox, two hops, long-poll)\n");
    println!("| the operator's connection | sends | samples | payload | p50 | p99 | max | the POST answered, p50 / p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut early: HashMap<String, Instant> = HashMap::new();
    let mut kept = None;
    // Back to back: each send as soon as the one before arrived (and the
    // appserver is still writing what it taught: the MLM's ack, the
    // destination's reports). Paced: one send every PACE.
    for (per_post, paced) in [(true, false), (false, false), (false, true)] {
        if !per_post && kept.is_none() {
            // Opened now: the appserver closes a connection left idle.
            kept = Some(connect(&op).await.expect("operator connection"));
        }
        let mut pace = tokio::time::interval(PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lat = Vec::with_capacity(LATENCY_SAMPLES);
        // The operator's own request (the connection if new, the
        // appserver's store and fsync) apart from the two hops down.
        let mut answered = Vec::with_capacity(LATENCY_SAMPLES);
        for _ in 0..LATENCY_SAMPLES {
            if paced {
                pace.tick().await;
            }
            let t0 = Instant::now();
            let id = match kept.as_mut() {
                None => post(&op, message.clone()).await,
                Some(conn) => post_on(conn, message.clone()).await,
            };
            answered.push(t0.elapsed());
            let arrived = loop {
                if let Some(t) = early.remove(&id) {
                    break t;
                }
                let (got, t) = rx.recv().await.expect("integrator");
                if got == id {
                    break t;
                }
                early.insert(got, t);
            };
            lat.push(arrived - t0);
        }
        lat.sort();
        answered.sort();
        println!(
            "| {} | {} | {LATENCY_SAMPLES} | {PAYLOAD} B | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} / {:.2} ms |",
            if per_post { "new for each POST" } else { "kept open" },
            if paced { format!("one every {} ms", PACE.as_millis()) } else { "back to back".into() },
            ms(quantile(&lat, 0.50)),
            ms(quantile(&lat, 0.99)),
            lat.last().map_or(0.0, |d| ms(*d)),
            ms(quantile(&answered, 0.50)),
            ms(quantile(&answered, 0.99)),
        );
    }
    println!();
    integrator.abort();

    // ---- 2. bytes per group message on the appserver → MLM link
    println!("### Bytes on the appserver → MLM link per group message ({PAYLOAD} B payload)\n");
    println!("| destinations | copies on the link | bytes on the link | bytes per destination beyond the first |");
    println!("|---|---|---|---|");
    let mut first = 0.0;
    for n in [1usize, 10, 100, 1000] {
        let members: Vec<String> = (1..=n).map(|i| format!("acme.p1.si{i}")).collect();
        let path = format!("/api/v1/groups/bench-{n}");
        let body = json!({ "members": members }).to_string();
        let (s, _) = call(
            &op,
            Method::PUT,
            &path,
            Some(("application/json", body.into())),
        )
        .await
        .expect("group");
        assert!(s.is_success());
        let (c0, b0) = (
            metric(&op, "rsnet_backchannel_sent_total")
                .await
                .expect("m"),
            metric(&op, "rsnet_backchannel_sent_bytes_total")
                .await
                .expect("m"),
        );
        post(&op, json!({ "to": format!("group:bench-{n}"), "kind": "data", "class": "bench", "payload": payload })).await;
        let (mut c1, mut b1) = (c0, b0);
        while c1 <= c0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c1 = metric(&op, "rsnet_backchannel_sent_total")
                .await
                .expect("m");
            b1 = metric(&op, "rsnet_backchannel_sent_bytes_total")
                .await
                .expect("m");
        }
        let bytes = b1 - b0;
        if n == 1 {
            first = bytes;
        }
        let per = if n > 1 {
            format!("{:.1}", (bytes - first) / (n - 1) as f64)
        } else {
            "-".into()
        };
        println!("| {n} | {} | {bytes:.0} | {per} |", c1 - c0);
    }
    println!();
}
