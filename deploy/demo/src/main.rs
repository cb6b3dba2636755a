//! `rsnet-demo [--dir DIR] [--once]`: a whole local tree (1 appserver,
//! 2 MLMs, 4 proxies) on embedded stores, with traffic: alarms up, a group
//! message down, an upload up, a signed release down.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use http::Method;
use rsnet_common::client::Target;
use rsnet_demo::{alarm, json_call, send, stored, Spec, Tree};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "rsnet-demo",
    version,
    about = "Run a whole local rsnet tree: 1 appserver, 2 MLMs, 4 proxies"
)]
struct Cli {
    /// Directory for certificates, configs, stores and logs (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the scenario, print a summary and exit (0 only if every message
    /// arrived exactly once and the upload and the release were checked at the far end).
    #[arg(long)]
    once: bool,
    /// Messages each proxy sends in the scenario.
    #[arg(long, default_value_t = 250)]
    messages: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rsnet-demo-{}", std::process::id())));
    if dir.join("pki").exists() {
        eprintln!(
            "rsnet-demo: {} already holds a tree; give a new --dir",
            dir.display()
        );
        return ExitCode::from(2);
    }
    println!("rsnet-demo: building a tree in {}", dir.display());
    let started = Instant::now();
    let mut tree = match tokio::task::block_in_place(|| Tree::start(&dir, &Spec::demo())) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rsnet-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for n in &tree.nodes {
        println!(
            "  {:<10} {:<14} parent {:<14} {}",
            n.role.as_str(),
            n.id,
            n.parent.as_deref().unwrap_or("-"),
            n.addr.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    println!("  started in {:.1}s", started.elapsed().as_secs_f64());
    let ok = scenario(&tree, cli.messages).await && backchannel(&tree).await && files(&tree).await;
    print_help(&tree);
    if cli.once {
        tokio::task::block_in_place(|| tree.shutdown());
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    println!("\nrunning; a trickle of alarms every 2 s. Ctrl-C to stop.");
    // SIGTERM (a supervisor, `kill`) stops the tree as Ctrl-C does, rather
    // than leaving its nodes running with nobody to stop them.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rsnet-demo: cannot watch for SIGTERM: {e}");
            tokio::task::block_in_place(|| tree.shutdown());
            return ExitCode::FAILURE;
        }
    };
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                for &p in &tree.proxies() {
                    if let Some(a) = tree.nodes[p].addr {
                        let _ = send(a, &[alarm(&format!("trickle {n}"), "web1.acme.example")]).await;
                    }
                }
                n += 1;
            }
        }
    }
    println!("stopping the tree…");
    tokio::task::block_in_place(|| tree.shutdown());
    ExitCode::SUCCESS
}

async fn scenario(tree: &Tree, per_proxy: usize) -> bool {
    let t0 = Instant::now();
    let mut sent: HashMap<String, String> = HashMap::new();
    for &p in &tree.proxies() {
        let Some(addr) = tree.nodes[p].addr else {
            return false;
        };
        let msgs: Vec<_> = (0..per_proxy)
            .map(|i| {
                alarm(
                    &format!("{} alarm {i}", tree.nodes[p].id),
                    &format!("host{}.acme.example", i % 5),
                )
            })
            .collect();
        for chunk in msgs.chunks(100) {
            match send(addr, chunk).await {
                Ok(ids) => {
                    for id in ids {
                        sent.insert(id, tree.nodes[p].id.clone());
                    }
                }
                Err(e) => {
                    eprintln!("send to {}: {e}", tree.nodes[p].id);
                    return false;
                }
            }
        }
    }
    println!(
        "\nsent {} alarms through {} proxies; waiting for the appserver…",
        sent.len(),
        tree.proxies().len()
    );
    let Ok(op) = tree.operator_target() else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = stored(&op, "class=alarm&subclass=demo")
            .await
            .unwrap_or_default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &all {
            if let Some(id) = m["id"].as_str() {
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
        let arrived = sent.keys().filter(|id| seen.contains_key(*id)).count();
        let dupes = seen.values().filter(|&&c| c > 1).count();
        if arrived == sent.len() || Instant::now() > deadline {
            let ok = arrived == sent.len() && dupes == 0 && all.len() == sent.len();
            println!(
                "summary: sent {}, stored {}, arrived {}, duplicates {}, in {:.2}s: {}",
                sent.len(),
                all.len(),
                arrived,
                dupes,
                t0.elapsed().as_secs_f64(),
                if ok {
                    "every message arrived exactly once"
                } else {
                    "FAILED"
                }
            );
            return ok;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one message to a group of every proxy and follows it to
/// "processed" (each proxy's inbox, acknowledged as an integrator would).
async fn backchannel(tree: &Tree) -> bool {
    let t0 = Instant::now();
    let Ok(op) = tree.operator_target() else {
        return false;
    };
    let members: Vec<String> = tree
        .proxies()
        .iter()
        .map(|&p| tree.nodes[p].id.clone())
        .collect();
    let call = |m: Method, path: String, body: Value| {
        let op = op.clone();
        async move {
            let body = (!body.is_null()).then_some(body);
            match json_call(&op, m, &path, body).await? {
                (s, v) if s.is_success() => Ok(v),
                (s, v) => Err(format!("{s}: {v}")),
            }
        }
    };
    let sent = async {
        call(
            Method::PUT,
            "/api/v1/groups/demo-all".into(),
            json!({ "members": members }),
        )
        .await?;
        let v = call(
            Method::POST,
            "/api/v1/messages".into(),
            json!({ "to": "group:demo-all", "kind": "data", "class": "config", "payload": "log_level=debug" }),
        )
        .await?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or("no id".to_string())
    };
    let id = match sent.await {
        Ok(id) => id,
        Err(e) => {
            eprintln!("back-channel send: {e}");
            return false;
        }
    };
    for &p in &tree.proxies() {
        let Some(addr) = tree.nodes[p].addr else {
            return false;
        };
        let local = Target::Plain(addr);
        let msgs = json_call(&local, Method::GET, "/v1/inbox?wait=10", None)
            .await
            .map(|(_, v)| v)
            .unwrap_or_default();
        let Some(m) = msgs["messages"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["id"] == id.as_str()))
        else {
            eprintln!("{} did not get the group message", tree.nodes[p].id);
            return false;
        };
        let ack = json!({ "acks": [{ "id": id, "destination": m["destination"] }] });
        let _ = json_call(&local, Method::POST, "/v1/inbox/ack", Some(ack)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = call(
            Method::GET,
            format!("/api/v1/messages/{id}/deliveries"),
            Value::Null,
        )
        .await;
        let done = v
            .as_ref()
            .ok()
            .and_then(|v| v["summary"]["processed"].as_u64())
            .unwrap_or(0);
        if done as usize == members.len() || Instant::now() > deadline {
            let ok = done as usize == members.len();
            println!(
                "back-channel: group message {id} to {} proxies, processed {done}, in {:.2}s: {}",
                members.len(),
                t0.elapsed().as_secs_f64(),
                if ok {
                    "every proxy got it once"
                } else {
                    "FAILED"
                }
            );
            return ok;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A file up (an upload from the first proxy) and a file down (a release
/// to every proxy), each followed until the other end checked it.
async fn files(tree: &Tree) -> bool {
    let t0 = Instant::now();
    let (Ok(op), Some(&first)) = (tree.operator_target(), tree.proxies().first()) else {
        return false;
    };
    let Some(addr) = tree.nodes[first].addr else {
        return false;
    };
    let local = Target::Plain(addr);
    let file: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let up = rsnet_common::client::call(
        &local,
        Method::POST,
        "/v1/bulk?class=explorer&name=explorer.tgz",
        Some(("application/octet-stream", file.clone().into())),
    )
    .await;
    let id = match up
        .ok()
        .and_then(|(_, b)| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["id"].as_str().map(str::to_string))
    {
        Some(id) => id,
        None => {
            eprintln!("upload: the proxy did not take the file");
            return false;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let upload_ok = loop {
        let v = json_call(&local, Method::GET, &format!("/v1/bulk/{id}"), None)
            .await
            .map(|(_, v)| v)
            .unwrap_or_default();
        if v["state"] == "done" || v["state"] == "failed" || Instant::now() > deadline {
            break v["state"] == "done";
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "upload: 4 MB from {} stored at the appserver (hash checked) in {:.2}s: {}",
        tree.nodes[first].id,
        t0.elapsed().as_secs_f64(),
        if upload_ok { "ok" } else { "FAILED" }
    );
    let t1 = Instant::now();
    let release = rsnet_common::client::call(
        &op,
        Method::POST,
        "/api/v1/releases?kind=config&item=demo-config&version=1&to=group:demo-all",
        Some(("application/octet-stream", file.into())),
    )
    .await;
    let rid = match release
        .ok()
        .and_then(|(_, b)| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["manifest"]["id"].as_str().map(str::to_string))
    {
        Some(id) => id,
        None => {
            eprintln!("release: not published");
            return false;
        }
    };
    let n = tree.proxies().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let d = json_call(&op, Method::GET, &format!("/api/v1/releases/{rid}"), None)
            .await
            .ok()
            .and_then(|(_, v)| v["status"]["counts"]["delivered"].as_u64())
            .unwrap_or(0);
        if d == n || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "release: {rid} (4 MB, signed) to {n} proxies, delivered {delivered} (signature and hash checked by each), in {:.2}s: {}",
        t1.elapsed().as_secs_f64(),
        if delivered == n { "ok" } else { "FAILED" }
    );
    upload_ok && delivered == n
}

fn print_help(tree: &Tree) {
    let d = tree.dir.display();
    println!("\nwhere to look:");
    println!(
        "  {d}/tree.json          every node, its config, addresses, pid; the operator credential"
    );
    println!("  {d}/logs/              one log per node");
    if let Some(p) = tree.proxies().first() {
        println!(
            "  rsnet-proxy send --config {} alarm --text hello --si db1",
            tree.nodes[*p].config.display()
        );
        println!(
            "  rsnet-proxy inbox --config {} --wait 30 --ack",
            tree.nodes[*p].config.display()
        );
        println!(
            "  rsnet-proxy bulk --config {} FILE --class core",
            tree.nodes[*p].config.display()
        );
    }
    println!("  rsnet-ctl --tree {d}/tree.json components --tree");
    println!("  rsnet-ctl --tree {d}/tree.json messages --class alarm --limit 5");
    println!("  rsnet-ctl --tree {d}/tree.json watch");
    println!(
        "  rsnet-ctl --tree {d}/tree.json send --to group:demo-all --class config --payload x=1"
    );
    println!("  rsnet-ctl --tree {d}/tree.json deliveries MESSAGE-ID");
    println!("  rsnet-ctl --tree {d}/tree.json uploads");
    println!("  rsnet-ctl --tree {d}/tree.json releases publish FILE --kind config --version 2 --to group:demo-all --stage 25%");
    println!("  rsnet-ctl --tree {d}/tree.json releases show RELEASE-ID");
    if let Some(a) = tree.nodes.first().and_then(|n| n.addr) {
        println!(
            "the admin page: https://127.0.0.1:{}/ (a browser holding the operator certificate: {d}/pki/issued/provider.operator.pem and .key)",
            a.port()
        );
    }
}
