//! `tests/bench.sh` (installs the peers, builds release, runs this):
//! durable end-to-end throughput and latency of 512-byte alarms through
//! rsnet (integrator → proxy → MLM → stored at the appserver) and, in the
//! same run, through two peers users would otherwise pick: a Mosquitto
//! bridge chain and a NATS leaf node with JetStream. Prints Markdown for
//! docs/BENCHMARKS.md, with ratios.
//!
//! * Throughput: `CLIENTS` concurrent integrators post batches of `BATCH`
//!   alarms to the proxy's local API as fast as it answers; the figure is
//!   messages stored per second (the appserver's sequence number over time).
//!   The peers get the same number of publishers, each with 200 messages
//!   unacknowledged at most.
//! * Latency: a fixed offered load of `RATE` msg/s (25 every 5 ms); for
//!   rsnet from the start of the POST to the message's arrival on the
//!   appserver's SSE stream (same machine, same clock).
//!
//! First the disk's own floor, one `fdatasync` ([`disk`]). Then the
//! back-channel figures ([`backchannel`]), idle children on one MLM
//! ([`idle`]), bulk relay throughput against a direct transfer and nginx
//! ([`bulk`]), and a release to 1,000 simulated proxies under 10 MLMs
//! ([`release`]), relay throughput with 20 rules at the MLM against none
//! ([`rules`]), the fan-in of 1,000 children through one MLM ([`fanin`]),
//! a slow customer WAN link with and without compression ([`wan`]), and
//! kill -9 of every tier at the maximum rate ([`crash`]).
//!
//! `RSNET_BENCH_ONLY=disk|rsnet|mosquitto|nats|nats-edge|backchannel|idle|bulk|release|rules|fanin|wan|crash`
//! runs one part (`nats` runs both NATS setups).

mod backchannel;
mod bulk;
mod crash;
mod disk;
mod fanin;
mod idle;
mod mqtt;
mod nats;
mod peer;
mod release;
mod rules;
mod wan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use rsnet_common::client::{call, send as http_send, Target};
use rsnet_demo::{send_body, Spec, Tree};
use serde_json::Value;

pub const CLIENTS: usize = 8;
pub const BATCH: usize = 200;
const THROUGHPUT_SECS: u64 = 10;
const RATE: usize = 5_000;
const LATENCY_SECS: u64 = 10;

/// `n` 512-byte alarms numbered from `first`, as the body of one POST to
/// the local API. Written as bytes, the way the NATS and MQTT publishers
/// write their protocol, so that the publisher takes as little of the
/// machine from the servers as it can (building a `serde_json::Value` per
/// alarm cost the bench process about a third of a core).
pub fn alarm_batch(first: usize, n: usize) -> Bytes {
    use std::fmt::Write as _;
    let x = "x".repeat(503);
    let mut b = String::with_capacity(16 + n * 610);
    b.push_str(r#"{"messages":["#);
    for i in first..first + n {
        if i > first {
            b.push(',');
        }
        // 512 bytes of alarm text.
        let _ = write!(
            b,
            r#"{{"kind":"alarm","class":"alarm","subclass":"bench","severity":"major","text":"{i:08} {x}"}}"#
        );
    }
    b.push_str("]}");
    Bytes::from(b)
}

pub async fn last_seq(op: &Target) -> u64 {
    let (_, b) = call(op, Method::GET, "/api/v1/messages?limit=1", None)
        .await
        .expect("api");
    serde_json::from_slice::<Value>(&b)
        .ok()
        .and_then(|v| v["last"].as_u64())
        .unwrap_or(0)
}

/// The node binaries' allocator here too: the simulated children and the
/// stream reader share the machine with the tree, and glibc's malloc was a
/// fifth of this process's CPU in the fan-in run.
#[global_allocator]
static ALLOC: rsnet_common::process::Allocator = rsnet_common::process::Allocator {};

#[tokio::main]
async fn main() {
    let root = std::env::temp_dir().join(format!("rsnet-bench-{}", std::process::id()));
    let only = std::env::var("RSNET_BENCH_ONLY").ok();
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let mut figs = Vec::new();
    if want("disk") {
        disk::run(&root.join("disk")).await;
        println!();
    }
    if want("rsnet") {
        figs.push(rsnet(&root.join("rsnet"), "").await);
        // On loopback, bandwidth is free and CPU is what is short: the
        // case `[uplink] compress = false` is for.
        figs.push(rsnet(&root.join("rsnet-plain"), "compress = false").await);
    }
    if want("mosquitto") {
        let d = root.join("mosquitto");
        std::fs::create_dir_all(&d).expect("dir");
        figs.push(mqtt::run(&d, CLIENTS, THROUGHPUT_SECS, RATE, LATENCY_SECS).await);
    }
    if want("nats") || want("nats-edge") {
        let d = root.join("nats-edge");
        std::fs::create_dir_all(&d).expect("dir");
        figs.push(nats::run_edge(&d, CLIENTS, THROUGHPUT_SECS, RATE, LATENCY_SECS).await);
    }
    if want("nats") {
        let d = root.join("nats");
        std::fs::create_dir_all(&d).expect("dir");
        figs.push(nats::run(&d, CLIENTS, THROUGHPUT_SECS, RATE, LATENCY_SECS).await);
    }
    let base = figs.first().map(|f| (f.throughput, f.p99));
    if !figs.is_empty() {
        print_table(&figs, base);
    }
    if want("backchannel") {
        println!();
        backchannel::run(&root.join("backchannel")).await;
    }
    if want("idle") {
        println!();
        idle::run(&root.join("idle")).await;
    }
    if want("bulk") {
        println!();
        bulk::run(&root.join("bulk")).await;
    }
    if want("release") {
        println!();
        release::run(&root.join("release")).await;
    }
    if want("rules") {
        println!();
        rules::run(&root.join("rules")).await;
    }
    if want("fanin") {
        println!();
        fanin::run(&root.join("fanin")).await;
    }
    if want("wan") {
        println!();
        wan::run(&root.join("wan")).await;
    }
    if want("crash") {
        println!();
        crash::run(&root.join("crash")).await;
    }
    let _ = std::fs::remove_dir_all(root);
}

fn print_table(figs: &[peer::Figures], base: Option<(f64, Duration)>) {
    println!("| system | throughput (msg/s) | server CPU per message | p50 at {RATE}/s | p99 at {RATE}/s | p99.9 | latency samples | rsnet ÷ system, throughput | system p99 ÷ rsnet p99 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in figs {
        let (rt, rp) = base.unwrap_or((f.throughput, f.p99));
        println!(
            "| {} | {:.0} | {:.1} µs | {:.2} ms | {:.2} ms | {:.2} ms | {} of {} | {:.2} | {:.2} |",
            f.name,
            f.throughput,
            f.cpu_us,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.p999.as_secs_f64() * 1e3,
            f.samples,
            f.offered,
            rt / f.throughput.max(1.0),
            f.p99.as_secs_f64() / rp.as_secs_f64().max(1e-9),
        );
    }
}

/// Where a message's time went, in milliseconds of wall clock (the
/// header's times have millisecond resolution): from the POST's start to
/// the proxy's `created`, then to each later routing hop's time, then to
/// the appserver's (its `received`), then to arrival on the stream.
pub type Legs = Vec<f64>;

/// Follows the appserver's stream of messages of `subclass` from now on;
/// for each whose ID is in `sent_at`, records the time from then to its
/// arrival. Returns the reader task and the latencies.
pub async fn follow_stream(
    op: &Target,
    subclass: &str,
    sent_at: Arc<Mutex<HashMap<String, Instant>>>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<Duration>>>) {
    let (reader, lat, _) = follow_stream_legs(op, subclass, sent_at).await;
    (reader, lat)
}

/// [`follow_stream`], with each message's [`Legs`] too.
pub async fn follow_stream_legs(
    op: &Target,
    subclass: &str,
    sent_at: Arc<Mutex<HashMap<String, Instant>>>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<Mutex<Vec<Duration>>>,
    Arc<Mutex<Vec<Legs>>>,
) {
    let lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let legs: Arc<Mutex<Vec<Legs>>> = Arc::default();
    // Instants to wall-clock milliseconds, to compare with the header's times.
    let (i0, w0) = (Instant::now(), std::time::SystemTime::now());
    let wall_ms = move |t: Instant| {
        let w = if t >= i0 {
            w0 + (t - i0)
        } else {
            w0 - (i0 - t)
        };
        w.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    let from = last_seq(op).await;
    let resp = http_send(
        op,
        Method::GET,
        &format!("/api/v1/stream?subclass={subclass}&after={from}"),
        None,
        &[],
    )
    .await
    .expect("stream");
    let (l2, g2) = (lat.clone(), legs.clone());
    let reader = tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf = String::new();
        // Events that arrived before the bench read their POST's answer
        // (which is where their IDs come from): matched once it has.
        let mut early: Vec<(String, Instant, Value)> = Vec::new();
        let mut retry = tokio::time::interval(Duration::from_millis(20));
        let record = |t: Instant, now: Instant, v: &Value| {
            l2.lock().expect("lat").push(now - t);
            g2.lock()
                .expect("legs")
                .push(legs_of(v, wall_ms(t), wall_ms(now)));
        };
        loop {
            let f = tokio::select! {
                f = body.frame() => f,
                _ = retry.tick() => {
                    if let Ok(sent) = sent_at.lock() {
                        early.retain(|(id, now, v)| match sent.get(id) {
                            Some(t) => {
                                record(*t, *now, v);
                                false
                            }
                            // Not this run's (or its POST failed): let go.
                            None => now.elapsed() < Duration::from_secs(10),
                        });
                    }
                    continue;
                }
            };
            let Some(Ok(f)) = f else { break };
            let Ok(d) = f.into_data() else { continue };
            let now = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&d));
            let mut done = 0;
            while let Some(end) = buf[done..].find("\n\n") {
                let ev = &buf[done..done + end];
                done += end + 2;
                if let Some(data) = ev.lines().find_map(|l| l.strip_prefix("data: ")) {
                    let v = serde_json::from_str::<Value>(data).unwrap_or_default();
                    let Some(id) = v["id"].as_str().map(str::to_string) else {
                        continue;
                    };
                    let t = sent_at.lock().ok().and_then(|s| s.get(&id).copied());
                    match t {
                        Some(t) => record(t, now, &v),
                        // Bounded: only this run's messages are followed.
                        None if early.len() < 100_000 => early.push((id, now, v)),
                        None => {}
                    }
                }
            }
            buf.drain(..done);
        }
    });
    (reader, lat, legs)
}

/// A streamed message's [`Legs`], given the wall-clock milliseconds of
/// its POST's start and of its arrival.
fn legs_of(v: &Value, sent: f64, arrived: f64) -> Legs {
    let ms = |x: &Value| {
        x.as_str()
            .and_then(rsnet_common::model::Timestamp::parse_rfc3339)
            .map(|t| t.0 as f64)
    };
    let mut points = vec![sent];
    points.extend(ms(&v["created"]));
    if let Some(hops) = v["routing"].as_array() {
        // The first hop is the proxy, at `created`; the last the
        // appserver, at `received`.
        points.extend(hops.iter().skip(1).filter_map(|h| ms(&h["time"])));
    }
    points.push(arrived);
    points.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Prints the median and p99 of each leg of `legs` under `names`.
pub fn print_legs(what: &str, names: &[&str], legs: &[Legs]) {
    let mut parts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut l: Vec<f64> = legs.iter().filter_map(|x| x.get(i).copied()).collect();
        if l.is_empty() {
            continue;
        }
        l.sort_by(f64::total_cmp);
        let q = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        parts.push(format!(
            "{name} {:.1} / {:.1} / {:.1}",
            q(0.5),
            q(0.99),
            q(0.999)
        ));
    }
    eprintln!(
        "{what}, by leg (ms, p50 / p99 / p99.9; header times are whole ms): {}",
        parts.join(", ")
    );
}

/// The benchmarks' tree: appserver ← acme.mlm1 ← acme.p1, heartbeats out of the way.
pub fn two_hop_tree(dir: &std::path::Path) -> Tree {
    two_hop_tree_with(dir, "")
}

/// [`two_hop_tree`] with extra `[uplink]` lines for the proxy.
pub fn two_hop_tree_with(dir: &std::path::Path, proxy_uplink: &str) -> Tree {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![("p1".into(), Some(0))],
        heartbeat_s: 3600,
        proxy_uplink_extra: proxy_uplink.into(),
        ..Spec::demo()
    };
    tokio::task::block_in_place(|| Tree::start(dir, &spec)).expect("tree")
}

/// `CLIENTS` integrators post batches of 512-byte alarms to the tree's
/// first proxy for `secs`; returns (messages accepted, seconds the proxy
/// took to accept them, seconds until the appserver stored them all).
pub async fn throughput(tree: &Tree, secs: u64) -> (usize, f64, f64) {
    let op = tree.operator_target().expect("operator");
    let proxy = tree.nodes[tree.proxies()[0]].addr.expect("proxy addr");
    let start_seq = last_seq(&op).await;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let body = alarm_batch(c * 1_000_000 + n, BATCH);
                send_body(proxy, body).await.expect("send");
                n += BATCH;
            }
            n
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.expect("client");
    }
    let accept_secs = t0.elapsed().as_secs_f64();
    // Wait for the appserver to store all of it.
    let target = start_seq + accepted as u64;
    while last_seq(&op).await < target {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (accepted, accept_secs, t0.elapsed().as_secs_f64())
}

async fn rsnet(dir: &std::path::Path, proxy_uplink: &str) -> peer::Figures {
    let tree = two_hop_tree_with(dir, proxy_uplink);
    let op = tree.operator_target().expect("operator");
    let proxy = tree.nodes[tree.proxies()[0]].addr.expect("proxy addr");

    // ---- throughput, and the CPU all three processes spend on it
    let cpu = peer::CpuMeter::start(tree.nodes.iter().filter_map(|n| n.pid()).collect());
    let (accepted, accept_secs, stored_secs) = throughput(&tree, THROUGHPUT_SECS).await;
    let throughput = accepted as f64 / stored_secs;
    let cpu_us = cpu.us_per(accepted as f64);

    // ---- latency at a fixed offered load
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (reader, lat, legs) = follow_stream_legs(&op, "bench", sent_at.clone()).await;
    let (mut tick, per_tick) = peer::ticker(RATE);
    let lat_deadline = Instant::now() + Duration::from_secs(LATENCY_SECS);
    let mut i = 0;
    let mut inflight = Vec::new();
    let mut offered = 0usize;
    while Instant::now() < lat_deadline {
        tick.tick().await;
        let body = alarm_batch(900_000_000 + i, per_tick);
        i += per_tick;
        offered += per_tick;
        let s = sent_at.clone();
        inflight.push(tokio::spawn(async move {
            let t = Instant::now();
            // IDs are known only from the answer; record the POST's start time for each.
            let ids = send_body(proxy, body).await.expect("send");
            let mut g = s.lock().expect("sent");
            for id in ids {
                g.insert(id, t);
            }
        }));
    }
    for t in inflight {
        let _ = t.await;
    }
    let wait_until = Instant::now() + Duration::from_secs(10);
    while lat.lock().expect("lat").len() < offered && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let mut l = lat.lock().expect("lat").clone();
    l.sort();
    drop(tree);
    eprintln!("rsnet: {accepted} msgs accepted by the proxy in {accept_secs:.1} s, all stored after {stored_secs:.1} s");
    print_legs(
        "rsnet latency",
        &[
            "POST → proxy's created",
            "→ MLM hop",
            "→ appserver hop",
            "→ on the stream",
        ],
        &legs.lock().expect("legs"),
    );
    peer::Figures {
        name: if proxy_uplink.is_empty() {
            "rsnet (proxy → MLM → appserver, mTLS, fsync at proxy and appserver; defaults: zstd on the proxy's uplink)"
        } else {
            "rsnet, the same with `[uplink] compress = false` at the proxy"
        },
        throughput,
        cpu_us,
        p50: peer::quantile(&l, 0.5),
        p99: peer::quantile(&l, 0.99),
        p999: peer::quantile(&l, 0.999),
        samples: l.len(),
        offered,
    }
}
