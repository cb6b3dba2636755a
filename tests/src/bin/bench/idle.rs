//! Idle children on one MLM (issue 3, issue 13): as many children as this
//! machine lets two processes hold, each with its own mTLS connection and a
//! long-poll outstanding on it (simulated in this process, one `Link`
//! each). Reports the MLM's RSS and CPU at rest, per child, and what that
//! makes of 100,000 children.
//!
//! The count is 100,000 or what the open-file limit allows (the bench and
//! the MLM each need one descriptor per child), whichever is lower;
//! `RSNET_BENCH_IDLE_CHILDREN` sets it lower still.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsnet_common::backchannel::BackChannelClient;
use rsnet_common::link::Link;
use rsnet_common::metrics::Registry;

use crate::peer::child_tls;

/// The goal.
const GOAL_CHILDREN: usize = 100_000;
/// Descriptors kept back for everything else in either process.
const SPARE_FDS: usize = 1_000;

/// This process's open-file limit (its children inherit it).
fn nofile_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("Max open files"))?;
            l.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

/// Runs it; prints Markdown.
pub async fn run(dir: &std::path::Path) {
    let limit = nofile_limit();
    let most = GOAL_CHILDREN.min(limit.saturating_sub(SPARE_FDS));
    let mut children = most;
    if let Some(n) = std::env::var("RSNET_BENCH_IDLE_CHILDREN")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        children = children.min(n);
    }
    // The children share one certificate: the MLM lets that identity hold
    // them all.
    let spec = rsnet_demo::Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![],
        heartbeat_s: 3600,
        mlm_top: format!("max_connections = {}\n", children + 100),
        mlm_extra: format!("[limits]\nmax_connections_per_peer = {}\n", children + 100),
        ..rsnet_demo::Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| rsnet_demo::Tree::start(dir, &spec)).expect("tree");
    let mlm = tree.index("acme.mlm1").expect("mlm");
    let pid = tree.nodes[mlm].pid().expect("pid");
    let rss_before = rsnet_tests::memory_bytes(&pid.to_string(), "VmRSS") / 1024;
    let tls = child_tls(&tree, "acme.bench");
    let url = format!(
        "https://127.0.0.1:{}",
        tree.nodes[mlm].addr.expect("addr").port()
    );
    let polls = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut kids = Vec::with_capacity(children);
    for _ in 0..children {
        let link = BackChannelClient::new(
            Link::new(std::slice::from_ref(&url), tls.clone(), None).expect("link"),
            &Registry::default(),
        );
        let (polls, gate) = (polls.clone(), gate.clone());
        kids.push(tokio::spawn(async move {
            let wait = Duration::from_secs(25);
            // Connect (mTLS) with one immediate exchange, a few hundred at a
            // time; then keep a long-poll outstanding on that connection.
            let permit = gate.acquire_owned().await;
            if link
                .exchange(link.outgoing(None), Duration::from_secs(60))
                .await
                .is_ok()
            {
                polls.fetch_add(1, Ordering::SeqCst);
            }
            drop(permit);
            loop {
                let _ = link
                    .exchange(link.outgoing(Some(wait)), wait + Duration::from_secs(30))
                    .await;
            }
        }));
    }
    let deadline = Duration::from_secs(60 + children as u64 / 100);
    while polls.load(Ordering::SeqCst) < children && t0.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = t0.elapsed();
    let connected = polls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (meter, at0) = (crate::peer::CpuMeter::start(vec![pid]), Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let cpu = meter.secs() / at0.elapsed().as_secs_f64() * 100.0;
    let rss = rsnet_tests::memory_bytes(&pid.to_string(), "VmRSS") / 1024;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let per_child = rss.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    let projected = (rss_before as f64 + per_child * GOAL_CHILDREN as f64) / 1024.0 / 1024.0;
    println!("### One MLM holding {connected} idle long-polling children (mTLS)\n");
    if most < GOAL_CHILDREN {
        println!(
            "This machine's open-file limit ({limit}) caps a run at {most} children; \
             the last column carries the per-child figure to {GOAL_CHILDREN}.\n"
        );
    }
    println!("| children polling | open file descriptors (MLM) | ramp-up | MLM RSS before | MLM RSS at rest | per child | MLM CPU at rest | RSS at {GOAL_CHILDREN} children, projected |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {connected} | {open} | {:.1} s | {:.1} MiB | {:.1} MiB | {per_child:.1} KiB | {cpu:.1} % of one core | {projected:.2} GiB |",
        ramp.as_secs_f64(),
        rss_before as f64 / 1024.0,
        rss as f64 / 1024.0,
    );
    for k in kids {
        k.abort();
    }
}
