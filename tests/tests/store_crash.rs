//! writer_killed_at_random_moments_never_loses_an_acknowledged_record:
//! a separate process appends to the embedded store and reports each durable
//! commit; it is killed with SIGKILL at random moments, and after every kill
//! the reopened store must hold every record it reported, each once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rsnet_common::store::MessageFilter;
use rsnet_common::store::{open, StoreConfig};

#[test]
fn writer_killed_at_random_moments_never_loses_an_acknowledged_record() {
    let dir = rsnet_tests::tempdir("store-crash");
    let bin = env!("CARGO_BIN_EXE_store-writer");
    let mut rng = fastrand::Rng::new();
    let mut acked = 0u64;
    for round in 0..25 {
        let mut child = Command::new(bin)
            .arg(&dir)
            .arg(acked.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line
                    .strip_prefix("acked ")
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    last = Some(n);
                }
            }
            last
        });
        // The random moment: the writer runs for 5-80 ms, mid-commit or not.
        std::thread::sleep(Duration::from_millis(rng.u64(5..80)));
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        if let Some(n) = reader.join().expect("reader") {
            acked = acked.max(n);
        }
        let store = open(&StoreConfig::default(), &dir)
            .unwrap_or_else(|e| panic!("round {round}: store does not reopen: {e}"));
        let m = store.messages().expect("messages");
        let count = m.count().expect("count");
        assert!(
            count >= acked,
            "round {round}: {acked} acknowledged, only {count} stored"
        );
        // Each record once, in order: `created` is the writer's sequence number.
        let (all, _) = m
            .scan(0, usize::MAX, usize::MAX, &MessageFilter::default())
            .expect("scan");
        for (i, (_, rec)) in all.iter().enumerate() {
            assert_eq!(
                rec.created.0, i as u64,
                "round {round}: record {i} out of sequence (lost or duplicated)"
            );
        }
        // The next writer continues after what is stored (acked or not).
        acked = count;
    }
    assert!(acked > 0, "the writer never committed");
    let _ = std::fs::remove_dir_all(dir);
}
