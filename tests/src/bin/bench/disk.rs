//! The disk's own floor under every durable figure: how long one
//! `fdatasync` of a small append takes on the bench's data directory.
//! rsnet's forward path has two in series (the proxy's spool, the
//! appserver's store) before a message is on the stream, so no p99 of
//! that path can be below this p99.

use std::io::Write;
use std::time::{Duration, Instant};

/// Appends of this size, each followed by `fdatasync`, one every
/// [`GAP`], for [`SECS`]: about what a group commit of a few alarms writes.
const APPEND: usize = 16 * 1024;
const GAP: Duration = Duration::from_millis(1);
const SECS: u64 = 5;

pub async fn run(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("fdatasync.bin");
    let lat = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::create(&path).expect("file");
        let chunk = vec![0x5au8; APPEND];
        let mut lat = Vec::new();
        let end = Instant::now() + Duration::from_secs(SECS);
        while Instant::now() < end {
            f.write_all(&chunk).expect("write");
            let t = Instant::now();
            f.sync_data().expect("fdatasync");
            lat.push(t.elapsed());
            std::thread::sleep(GAP);
        }
        let _ = std::fs::remove_file(&path);
        lat
    })
    .await
    .expect("disk");
    let mut l = lat;
    l.sort();
    let over = l.iter().filter(|d| **d > Duration::from_millis(3)).count();
    println!(
        "### The disk's floor: one fdatasync of a {} KiB append",
        APPEND / 1024
    );
    println!();
    println!("| samples | p50 | p90 | p99 | p99.9 | over 3 ms |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} % |",
        l.len(),
        ms(crate::peer::quantile(&l, 0.5)),
        ms(crate::peer::quantile(&l, 0.9)),
        ms(crate::peer::quantile(&l, 0.99)),
        ms(crate::peer::quantile(&l, 0.999)),
        100.0 * over as f64 / l.len().max(1) as f64,
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
