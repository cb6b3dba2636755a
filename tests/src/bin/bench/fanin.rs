//! Fan-in: `CHILDREN` simulated proxies, each with its own certificate and
//! its own mTLS connection (as the idle-children run makes them), each
//! sending a steady trickle of 512-byte alarms, one per exchange, through
//! one MLM to the appserver. The total rate steps up; for each step the
//! run reports p50/p99 from the child's send to the message's arrival on
//! the appserver's stream, and the MLM's CPU per message. The figure is
//! the highest step whose p99 stays within `P99_GOAL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsnet_common::envelope::EnvelopeWriter;
use rsnet_common::link::Link;
use rsnet_common::model::{Alarm, AlarmState, Content, Message, Severity};

use crate::peer::quantile;

const CHILDREN: usize = 1_000;
const STEP_SECS: u64 = 10;
/// Messages per second per child, step by step.
const STEPS: &[f64] = &[5.0, 10.0, 20.0, 30.0];
const P99_GOAL: Duration = Duration::from_millis(50);

struct Step {
    per_child: f64,
    sent: usize,
    stored: usize,
    p50: Duration,
    p99: Duration,
    mlm_cpu_us: f64,
    upstream_posts: u64,
}

/// The MLM's count of envelopes sent upstream, from its `/metrics`.
async fn upstream_posts(mlm: &rsnet_common::client::Target) -> u64 {
    let Ok((_, b)) = rsnet_common::client::call(mlm, http::Method::GET, "/metrics", None).await
    else {
        return 0;
    };
    String::from_utf8_lossy(&b)
        .lines()
        .find_map(|l| l.strip_prefix("rsnet_relay_upstream_posts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn run(dir: &std::path::Path) {
    let tree = crate::two_hop_tree(dir);
    let op = tree.operator_target().expect("operator");
    let mlm = tree.index("acme.mlm1").expect("mlm");
    let pid = tree.nodes[mlm].pid().expect("pid");
    let url = format!(
        "https://127.0.0.1:{}",
        tree.nodes[mlm].addr.expect("addr").port()
    );
    let mlm_metrics = rsnet_common::client::Target::Tls {
        base: url.clone(),
        config: Arc::new(crate::peer::child_tls(&tree, "acme.fmetrics")),
    };
    // One certificate and one connection per child.
    let t0 = Instant::now();
    let mut links = Vec::with_capacity(CHILDREN);
    for i in 0..CHILDREN {
        let id = format!("acme.f{i}");
        let tls = crate::peer::child_tls(&tree, &id);
        let link = Link::new(std::slice::from_ref(&url), tls, None).expect("link");
        links.push((
            id.parse::<rsnet_common::id::ComponentId>().expect("id"),
            link,
        ));
    }
    // Connect every child (mTLS handshake, one empty exchange) before timing.
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut connecting = Vec::new();
    for (_, link) in &links {
        let (link, gate) = (link.clone(), gate.clone());
        connecting.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await;
            link.exchange(EnvelopeWriter::new(), Duration::from_secs(60))
                .await
                .is_ok()
        }));
    }
    let mut connected = 0;
    for c in connecting {
        connected += usize::from(c.await.unwrap_or(false));
    }
    eprintln!(
        "fan-in: {CHILDREN} children made and {connected} connected in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let mut steps = Vec::new();
    for &per_child in STEPS {
        let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let (reader, lat) = crate::follow_stream(&op, "fanin", sent_at.clone()).await;
        let base = crate::last_seq(&op).await;
        let posts_before = upstream_posts(&mlm_metrics).await;
        let meter = crate::peer::CpuMeter::start(vec![pid]);
        let end = Instant::now() + Duration::from_secs(STEP_SECS);
        let every = Duration::from_secs_f64(1.0 / per_child);
        let mut kids = Vec::new();
        for (k, (id, link)) in links.iter().enumerate() {
            let (id, link, sent_at) = (id.clone(), link.clone(), sent_at.clone());
            // Spread the children's phases over one interval.
            let phase = every.mul_f64(k as f64 / CHILDREN as f64);
            kids.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sent = 0usize;
                while Instant::now() < end {
                    tick.tick().await;
                    let m = Message::forward(
                        id.clone(),
                        "alarm",
                        Some("fanin"),
                        Content::Alarm(Alarm {
                            severity: Severity::Major,
                            state: AlarmState::Raised,
                            support_instance: None,
                            text: format!("{sent:08} {}", "x".repeat(503)),
                            data: None,
                        }),
                    )
                    .with_hop(&id);
                    let mut w = EnvelopeWriter::new();
                    w.message(&m);
                    let t = Instant::now();
                    if let Ok(mut g) = sent_at.lock() {
                        g.insert(m.header.id.to_string(), t);
                    }
                    if link.exchange(w, Duration::from_secs(30)).await.is_ok() {
                        sent += 1;
                    }
                }
                sent
            }));
        }
        let mut sent = 0;
        for k in kids {
            sent += k.await.unwrap_or(0);
        }
        // Until the appserver holds what was accepted (it answers only once stored).
        let until = Instant::now() + Duration::from_secs(30);
        while crate::last_seq(&op).await < base + sent as u64 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stored = (crate::last_seq(&op).await - base) as usize;
        let mlm_cpu_us = meter.us_per(stored as f64);
        let upstream_posts = upstream_posts(&mlm_metrics)
            .await
            .saturating_sub(posts_before);
        let wait_until = Instant::now() + Duration::from_secs(5);
        while lat.lock().expect("lat").len() < stored && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reader.abort();
        let mut l = lat.lock().expect("lat").clone();
        l.sort();
        steps.push(Step {
            per_child,
            sent,
            stored,
            p50: quantile(&l, 0.5),
            p99: quantile(&l, 0.99),
            mlm_cpu_us,
            upstream_posts,
        });
    }
    println!("### Fan-in: {CHILDREN} children (own certificate and mTLS connection each) → one MLM → appserver\n");
    println!("| per child | offered total | stored | stored per second | p50 send → stream | p99 | MLM CPU per message | messages per upstream exchange |");
    println!("|---|---|---|---|---|---|---|---|");
    for s in &steps {
        println!(
            "| {} msg/s | {:.0} msg/s | {} of {} | {:.0} | {:.2} ms | {:.2} ms | {:.1} µs | {:.1} |",
            s.per_child,
            s.per_child * CHILDREN as f64,
            s.stored,
            s.sent,
            s.stored as f64 / STEP_SECS as f64,
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.mlm_cpu_us,
            s.stored as f64 / s.upstream_posts.max(1) as f64,
        );
    }
    let best = steps
        .iter()
        .filter(|s| s.p99 <= P99_GOAL && s.stored + s.stored / 100 >= s.sent)
        .map(|s| s.per_child * CHILDREN as f64)
        .fold(0.0, f64::max);
    println!(
        "\nHighest total rate with p99 ≤ {} ms: {best:.0} msg/s.",
        P99_GOAL.as_millis()
    );
}
