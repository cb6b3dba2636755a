//! End-to-end: the demo's own binary. Stopped with SIGTERM, as a supervisor
//! or `kill` stops it, it stops every node of its tree instead of leaving
//! them running with nobody to stop them.

use std::process::{Command, Stdio};
use std::time::Duration;

use rsnet_tests::{tempdir, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// True while `pid` is a live process (not gone, not a zombie).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_running_demo_and_every_node_of_its_tree() {
    let dir = tempdir("demo-term");
    let out = std::fs::File::create(dir.join("demo.out")).expect("output file");
    let mut demo = Command::new(rsnet_demo::bin_dir().join("rsnet-demo"))
        .arg("--dir")
        .arg(dir.join("tree"))
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .expect("rsnet-demo starts");
    wait_for("the demo's scenario to finish", LONG, || async {
        let o = std::fs::read_to_string(dir.join("demo.out")).unwrap_or_default();
        o.contains("\nrunning;").then_some(())
    })
    .await;
    let tree: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("tree").join("tree.json")).expect("tree.json"),
    )
    .expect("tree.json is JSON");
    let pids: Vec<u64> = tree["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 7, "{tree}");
    assert!(pids.iter().all(|p| alive(*p)), "every node runs: {pids:?}");

    let term = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = wait_for("the demo to exit", LONG, || {
        let s = demo.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    let left: Vec<u64> = pids.iter().copied().filter(|p| alive(*p)).collect();
    // A failing run leaves no nodes behind either.
    for p in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    assert!(status.success(), "the demo exits 0 on SIGTERM: {status}");
    assert!(left.is_empty(), "nodes left running: {left:?}");
}
