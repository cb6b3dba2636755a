//! A slow customer WAN: four proxies share one 1 Mbit/s link to their MLM,
//! 150 ms each way (a user-space relay, [`rsnet_tests::ConnectProxy`]:
//! this kernel has no netem). Reported, with compression on (the proxies'
//! default) and off:
//!
//! * wire bytes per message on that link (TLS records both ways, the
//!   handshakes and long-polls included; IP and TCP headers not), against
//!   the 512-byte alarm text;
//! * the time to move 2,000 alarms (500 posted at each proxy at once) from
//!   the first POST until the appserver stored the last;
//! * after a 30 s outage of the link (every connection cut, new ones
//!   refused), the time from the heal to the first message stored, and to
//!   the last of the 40 held meanwhile;
//! * a group message from the operator to the four proxies: the time until
//!   the last proxy has it in its inbox.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rsnet_common::client::Target;
use rsnet_demo::{send, Spec, Tree};
use rsnet_tests::ConnectProxy;
use serde_json::{json, Value};

const RATE_BITS: u64 = 1_000_000;
const DELAY: Duration = Duration::from_millis(150);
const ALARMS: usize = 2_000;
const PROXIES: usize = 4;
const OUTAGE: Duration = Duration::from_secs(30);

/// A 512-byte alarm text as monitoring produces it: varied words, numbers,
/// host and interface names (not one repeated character, which would
/// flatter compression).
pub fn realistic_text(i: usize, rng: &mut fastrand::Rng) -> String {
    const WHAT: &[&str] = &[
        "Interface GigabitEthernet0/{n} changed state to down",
        "CPU utilisation {n}% exceeds threshold 90% for 300 s",
        "Filesystem /var/lib/pgsql is {n}% full (threshold 85%)",
        "Service nginx.service entered failed state, exit code {n}",
        "BGP neighbour 10.{n}.4.1 session dropped: hold timer expired",
        "Disk /dev/sdb reports {n} reallocated sectors (SMART 5)",
        "Memory usage {n}% on node, swap in use 2.1 GiB",
        "Backup job nightly-full ended with status WARNING after {n} min",
        "Certificate for api.example.net expires in {n} days",
        "Ping loss {n}% to gateway 192.168.{n}.254 over 5 minutes",
    ];
    const HOSTS: &[&str] = &[
        "db-prod-07",
        "web-fra-12",
        "edge-rtr-03",
        "k8s-node-41",
        "mail-02",
        "nas-backup-1",
        "fw-core-a",
        "app-ber-19",
    ];
    const MORE: &[&str] = &[
        "Probable cause: link flap on the upstream switch port.",
        "Action: check the cabling and the peer device's logs.",
        "Correlated with a change window scheduled by the customer.",
        "Previous occurrence cleared automatically after 4 minutes.",
        "Escalation policy: page the on-call engineer after 15 minutes.",
        "Ticket INC-{n} was opened by the monitoring rule.",
        "Threshold profile: production-critical, evaluated every 60 s.",
        "Seen by collector col-{n} in region eu-central.",
    ];
    // Each alarm carries what real ones do and compression cannot guess:
    // a time to the millisecond, a 64-bit event ID, addresses and counters.
    let mut s = format!(
        "{i:08} 2026-12-01T{:02}:{:02}:{:02}.{:03}Z event={:016x} src=10.{}.{}.{} ",
        rng.u32(0..24),
        rng.u32(0..60),
        rng.u32(0..60),
        rng.u32(0..1000),
        rng.u64(..),
        rng.u8(..),
        rng.u8(..),
        rng.u8(1..255),
    );
    while s.len() < 512 {
        let host = HOSTS[rng.usize(..HOSTS.len())];
        let what = WHAT[rng.usize(..WHAT.len())].replace("{n}", &rng.u32(1..100).to_string());
        let more =
            MORE[rng.usize(..MORE.len())].replace("{n}", &rng.u32(10_000..99_999).to_string());
        s.push_str(&format!(
            "{host}: {what}. {more} value={:.3} ",
            rng.f64() * 1000.0
        ));
    }
    let mut cut = 512;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

fn alarm(text: String) -> Value {
    json!({ "kind": "alarm", "class": "alarm", "subclass": "wan", "severity": "major", "text": text })
}

async fn wait_stored(op: &Target, target: u64, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while crate::last_seq(op).await < target {
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(t0.elapsed())
}

struct Figures {
    bytes_per_msg: f64,
    move_secs: f64,
    heal_first: Option<Duration>,
    heal_all: Option<Duration>,
    group: Option<Duration>,
}

async fn one(dir: &std::path::Path, compress: bool, outage: bool) -> Figures {
    let relay = ConnectProxy::start_wan(RATE_BITS, DELAY).await;
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: (1..=PROXIES).map(|i| (format!("p{i}"), Some(0))).collect(),
        heartbeat_s: 3600,
        proxy_uplink_extra: format!(
            "http_proxy = \"http://{}\"\ncompress = {compress}",
            relay.addr
        ),
        ..Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| Tree::start(dir, &spec)).expect("tree");
    let op = tree.operator_target().expect("operator");
    let proxies: Vec<_> = tree
        .proxies()
        .into_iter()
        .map(|i| tree.nodes[i].addr.expect("proxy addr"))
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);

    // Warm up: one alarm from each proxy, so links are up (and have
    // negotiated compression) before counting.
    let base = crate::last_seq(&op).await;
    for p in &proxies {
        send(*p, &[alarm(realistic_text(0, &mut rng))])
            .await
            .expect("send");
    }
    wait_stored(&op, base + PROXIES as u64, Duration::from_secs(60))
        .await
        .expect("warm-up stored");

    // ---- 2,000 alarms, 500 posted at each proxy at once.
    let base = crate::last_seq(&op).await;
    let (up0, down0) = (
        relay.bytes_up.load(Ordering::Relaxed),
        relay.bytes_down.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let per = ALARMS / PROXIES;
    let mut posts = Vec::new();
    for (k, p) in proxies.iter().enumerate() {
        let batch: Vec<Value> = (0..per)
            .map(|i| alarm(realistic_text(k * per + i, &mut rng)))
            .collect();
        let p = *p;
        posts.push(tokio::spawn(async move {
            for chunk in batch.chunks(50) {
                send(p, chunk).await.expect("send");
            }
        }));
    }
    for t in posts {
        t.await.expect("poster");
    }
    wait_stored(&op, base + ALARMS as u64, Duration::from_secs(300))
        .await
        .expect("2,000 alarms stored");
    let move_secs = t0.elapsed().as_secs_f64();
    let wire = relay.bytes_up.load(Ordering::Relaxed) - up0
        + relay.bytes_down.load(Ordering::Relaxed)
        - down0;
    let bytes_per_msg = wire as f64 / ALARMS as f64;

    // ---- a group message to the four proxies (the default group of the customer's proxies).
    let group = group_latency(&tree, &op).await;

    // ---- an outage of 30 s, 10 alarms held at each proxy meanwhile.
    let (mut heal_first, mut heal_all) = (None, None);
    if outage {
        relay.down(true);
        let base = crate::last_seq(&op).await;
        for p in &proxies {
            let batch: Vec<Value> = (0..10)
                .map(|i| alarm(realistic_text(i, &mut rng)))
                .collect();
            send(*p, &batch).await.expect("send during the outage");
        }
        // The outage is the scenario, not a wait for a condition.
        tokio::time::sleep(OUTAGE).await;
        relay.down(false);
        let healed = Instant::now();
        heal_first = wait_stored(&op, base + 1, Duration::from_secs(120)).await;
        heal_all = wait_stored(&op, base + 10 * PROXIES as u64, Duration::from_secs(120))
            .await
            .map(|_| healed.elapsed());
    }
    drop(tree);
    Figures {
        bytes_per_msg,
        move_secs,
        heal_first,
        heal_all,
        group,
    }
}

/// Operator → group of every proxy; until the last of them has it.
async fn group_latency(tree: &Tree, op: &Target) -> Option<Duration> {
    let ids: Vec<String> = tree
        .proxies()
        .into_iter()
        .map(|i| tree.nodes[i].id.clone())
        .collect();
    let members = json!({ "members": ids }).to_string();
    let (st, _) = rsnet_common::client::call(
        op,
        http::Method::PUT,
        "/api/v1/groups/wan",
        Some(("application/json", members.into())),
    )
    .await
    .ok()?;
    if !st.is_success() {
        eprintln!("wan: group not made: {st}");
        return None;
    }
    let body = json!({ "to": "group:wan", "kind": "data", "class": "config", "payload": "group message over the WAN" });
    let t0 = Instant::now();
    let (st, b) = rsnet_common::client::call(
        op,
        http::Method::POST,
        "/api/v1/messages",
        Some(("application/json", body.to_string().into())),
    )
    .await
    .ok()?;
    if !st.is_success() {
        eprintln!(
            "wan: group message refused: {st} {}",
            String::from_utf8_lossy(&b)
        );
        return None;
    }
    let id = serde_json::from_slice::<Value>(&b).ok()?["id"]
        .as_str()?
        .to_string();
    let proxies: Vec<_> = tree
        .proxies()
        .into_iter()
        .map(|i| tree.nodes[i].addr.expect("proxy addr"))
        .collect();
    let mut pending = proxies;
    while !pending.is_empty() {
        if t0.elapsed() > Duration::from_secs(30) {
            return None;
        }
        let mut left = Vec::new();
        for p in pending {
            let (_, b) =
                rsnet_common::client::call(&Target::Plain(p), http::Method::GET, "/v1/inbox", None)
                    .await
                    .ok()?;
            if !String::from_utf8_lossy(&b).contains(&id) {
                left.push(p);
            }
        }
        pending = left;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(t0.elapsed())
}

pub async fn run(dir: &std::path::Path) {
    let on = one(&dir.join("on"), true, true).await;
    let off = one(&dir.join("off"), false, false).await;
    let ms =
        |d: Option<Duration>| d.map_or("—".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!("WAN link: {PROXIES} proxies share {} Mbit/s, {} ms each way; {ALARMS} alarms of 512 bytes of realistic text", RATE_BITS / 1_000_000, DELAY.as_millis());
    println!();
    println!("| compression | wire bytes per message | ÷ 512-byte payload | {ALARMS} alarms moved in | group message to {PROXIES} proxies | heal → first stored | heal → all 40 stored |");
    println!("|---|---|---|---|---|---|---|");
    for (name, f) in [("zstd (default)", &on), ("off", &off)] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.1} s | {} | {} | {} |",
            f.bytes_per_msg,
            f.bytes_per_msg / 512.0,
            f.move_secs,
            ms(f.group),
            ms(f.heal_first),
            ms(f.heal_all),
        );
    }
}
