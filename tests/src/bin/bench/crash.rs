//! Kill -9 at the maximum rate: the throughput run's load (`CLIENTS`
//! integrators posting batches of `BATCH` 512-byte alarms as fast as the
//! proxy answers), each message with a client key, while the proxy, the
//! MLM and the appserver are each killed with SIGKILL twice, at random
//! moments, and started again. An integrator whose POST got no answer
//! sends the same batch again, with the same keys, until it is answered
//! (as `rsnet-proxy send` does). At the end every message sent must be
//! stored exactly once: none lost, none twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsnet_demo::{send, stored};
use serde_json::{json, Value};

use crate::{last_seq, two_hop_tree, BATCH, CLIENTS};

/// Kills of each tier.
const KILLS_PER_TIER: usize = 2;
/// Load between two kills: a random time in this range, in ms.
const BETWEEN_MS: std::ops::Range<u64> = 1_000..3_000;

fn keyed_alarm(key: &str) -> Value {
    let text = format!("{key} {}", "x".repeat(511 - key.len()));
    json!({ "kind": "alarm", "class": "alarm", "subclass": "crash", "severity": "major", "text": text, "key": key })
}

pub async fn run(dir: &std::path::Path) {
    let tree = Arc::new(Mutex::new(two_hop_tree(dir)));
    let (op, proxy_addr, tiers) = {
        let t = tree.lock().expect("tree");
        let idx = |id: &str| t.index(id).unwrap_or_else(|| panic!("{id} in the tree"));
        (
            t.operator_target().expect("operator"),
            t.nodes[t.proxies()[0]].addr.expect("proxy addr"),
            [
                ("proxy", idx("acme.p1")),
                ("MLM", idx("acme.mlm1")),
                ("appserver", idx("provider.app")),
            ],
        )
    };
    let base = last_seq(&op).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, resent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (stop, acked, resent) = (stop.clone(), acked.clone(), resent.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Value> = (n..n + BATCH)
                    .map(|i| keyed_alarm(&format!("c{c}-{i}")))
                    .collect();
                // Until answered: the same keys every time.
                while send(proxy_addr, &batch).await.is_err() {
                    resent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked.fetch_add(BATCH, Ordering::Relaxed);
                n += BATCH;
            }
            n
        }));
    }
    let mut rng = fastrand::Rng::new();
    let mut order: Vec<(&str, usize)> = tiers
        .iter()
        .flat_map(|t| std::iter::repeat_n(*t, KILLS_PER_TIER))
        .collect();
    rng.shuffle(&mut order);
    let mut kills = Vec::new();
    for (name, i) in &order {
        tokio::time::sleep(Duration::from_millis(rng.u64(BETWEEN_MS))).await; // the random moment
        let at = acked.load(Ordering::Relaxed);
        let t = tree.clone();
        let i = *i;
        tokio::task::spawn_blocking(move || {
            let mut t = t.lock().expect("tree");
            t.kill9(i);
            t.restart(i).expect("restart after kill -9");
        })
        .await
        .expect("kill");
        kills.push(format!("{name} at {at}"));
    }
    tokio::time::sleep(Duration::from_millis(rng.u64(BETWEEN_MS))).await;
    stop.store(true, Ordering::Relaxed);
    let mut per_client = Vec::new();
    for c in clients {
        per_client.push(c.await.expect("client"));
    }
    let sent: usize = per_client.iter().sum();
    let load_secs = t0.elapsed().as_secs_f64();
    // Until the appserver holds as many as were sent (or it stops growing).
    let deadline = Instant::now() + Duration::from_secs(180);
    while last_seq(&op).await < base + sent as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for m in stored(&op, "subclass=crash").await.expect("stored") {
        let key = m["content"]["text"]
            .as_str()
            .and_then(|t| t.split(' ').next())
            .unwrap_or("")
            .to_string();
        *count.entry(key).or_default() += 1;
    }
    drop(tree);
    // Client c sent keys c{c}-0 … c{c}-(n-1), every one of them answered.
    let lost = per_client
        .iter()
        .enumerate()
        .flat_map(|(c, n)| (0..*n).map(move |i| format!("c{c}-{i}")))
        .filter(|k| !count.contains_key(k))
        .count();
    let twice = count.values().filter(|&&n| n > 1).count();
    println!("### Kill -9 at the maximum rate\n");
    println!("| sent (all answered) | kills (messages answered by then) | POSTs sent again | stored | lost | stored twice | rate while killing |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {sent} | {} | {} | {} | {lost} | {twice} | {:.0} msg/s |",
        kills.join(", "),
        resent.load(Ordering::Relaxed),
        count.values().sum::<usize>(),
        sent as f64 / load_secs
    );
}
