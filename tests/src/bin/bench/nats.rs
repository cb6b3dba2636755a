//! The NATS peer, in two setups (Debian's nats-server), each a leaf node
//! (edge) connected over mutual TLS to a hub:
//!
//! * [`run`], hub-acked: the hub holds a JetStream stream with file
//!   storage. Publishers post to the leaf with a reply inbox; the hub's
//!   JetStream stores the message and answers with a publish ack, which
//!   crosses the leaf back. Throughput is acks per second; latency is
//!   publish → ack (stored at the hub).
//! * [`run_edge`], edge-stored (rsnet's guarantee at the edge): the leaf
//!   runs JetStream too (domain `edge`) with a file stream `EDGE` that
//!   acks the publisher from its own store, and the hub's stream `HUB`
//!   sources `EDGE` across the leaf connection. Throughput is messages in
//!   `HUB` per second, until the hub holds all acked ones; latency is
//!   publish → the edge's ack (not arrival at the hub: see [`run_edge`]).
//!
//! The client here speaks only the few protocol lines the run needs
//! (INFO, CONNECT, PING/PONG, SUB, PUB, MSG).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::peer::*;

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: BufWriter<OwnedWriteHalf>,
}

/// One `MSG`: its subject and payload.
struct Msg {
    subject: String,
    payload: Vec<u8>,
}

async fn connect(port: u16) -> std::io::Result<Conn> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    let mut c = Conn {
        r: BufReader::new(r),
        w: BufWriter::new(w),
    };
    let mut info = String::new();
    c.r.read_line(&mut info).await?;
    c.w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"name\":\"bench\"}\r\nPING\r\n")
        .await?;
    c.w.flush().await?;
    loop {
        let mut l = String::new();
        if c.r.read_line(&mut l).await? == 0 {
            return Err(std::io::Error::other("closed during CONNECT"));
        }
        if l.starts_with("PONG") {
            return Ok(c);
        }
        if l.starts_with("-ERR") {
            return Err(std::io::Error::other(l));
        }
    }
}

/// Reads `MSG`s until the connection closes. Server PINGs are left
/// unanswered: the server sends one every 2 minutes, and a run's
/// connections live for seconds.
fn reader(
    mut r: BufReader<OwnedReadHalf>,
    out: mpsc::UnboundedSender<Msg>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) => return,
                Err(_) => return,
                Ok(_) => {}
            }
            let parts: Vec<&str> = line.split_ascii_whitespace().collect();
            match parts.first().copied() {
                Some(verb @ ("MSG" | "HMSG")) => {
                    // HMSG: headers first (their length is the next-to-last field).
                    let num = |k: usize| {
                        parts
                            .get(parts.len().wrapping_sub(k))?
                            .parse::<usize>()
                            .ok()
                    };
                    let (Some(n), hdr) = (num(1), if verb == "HMSG" { num(2) } else { Some(0) })
                    else {
                        return;
                    };
                    let Some(hdr) = hdr.filter(|h| *h <= n) else {
                        return;
                    };
                    let mut payload = vec![0; n + 2];
                    if r.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    payload.truncate(n);
                    payload.drain(..hdr);
                    let subject = parts.get(1).unwrap_or(&"").to_string();
                    if out.send(Msg { subject, payload }).is_err() {
                        return;
                    }
                }
                Some("-ERR") => eprintln!("nats: {line}"),
                _ => {}
            }
        }
    })
}

/// A connection split into a writer and a stream of messages on `inbox.>`.
async fn open(port: u16, inbox: &str) -> (BufWriter<OwnedWriteHalf>, mpsc::UnboundedReceiver<Msg>) {
    let mut c = connect(port).await.expect("nats connect");
    c.w.write_all(format!("SUB {inbox}.> 1\r\n").as_bytes())
        .await
        .expect("sub");
    c.w.flush().await.expect("flush");
    let (tx, rx) = mpsc::unbounded_channel();
    reader(c.r, tx);
    (c.w, rx)
}

async fn pub_msg(
    w: &mut BufWriter<OwnedWriteHalf>,
    subject: &str,
    reply: &str,
    payload: &[u8],
) -> std::io::Result<()> {
    w.write_all(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes())
        .await?;
    w.write_all(payload).await?;
    w.write_all(b"\r\n").await
}

/// Sends a request and waits for its reply.
async fn request(port: u16, subject: &str, body: &str) -> String {
    let (mut w, mut rx) = open(port, "_INBOX.setup").await;
    pub_msg(&mut w, subject, "_INBOX.setup.1", body.as_bytes())
        .await
        .expect("pub");
    w.flush().await.expect("flush");
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(m)) => String::from_utf8_lossy(&m.payload).into_owned(),
        _ => String::new(),
    }
}

/// A publisher with up to `window` unacknowledged messages; returns
/// (stored: acked by JetStream, failed: answered with an error or never).
async fn publisher(
    port: u16,
    c: usize,
    window: usize,
    epoch: Instant,
    until: Instant,
) -> (usize, usize) {
    let inbox = format!("_INBOX.c{c}");
    let (mut w, mut rx) = open(port, &inbox).await;
    let slots = Arc::new(Semaphore::new(window));
    let s2 = slots.clone();
    let stored = Arc::new(AtomicUsize::new(0));
    let st = stored.clone();
    let acks = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if m.payload.windows(5).any(|x| x == b"\"seq\"") {
                st.fetch_add(1, Ordering::Relaxed);
            }
            s2.add_permits(1);
        }
    });
    let mut seq = 0u64;
    while Instant::now() < until {
        let Ok(p) = slots.acquire().await else { break };
        p.forget();
        seq += 1;
        pub_msg(
            &mut w,
            "bench.alarms",
            &format!("{inbox}.{seq}"),
            &payload(epoch),
        )
        .await
        .expect("publish");
        if slots.available_permits() == 0 {
            w.flush().await.expect("flush");
        }
    }
    w.flush().await.ok();
    let _ = tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(window as u32)).await;
    acks.abort();
    let stored = stored.load(Ordering::Relaxed);
    (stored, seq as usize - stored)
}

/// Runs the leaf + hub pair and measures it.
pub async fn run(dir: &Path, clients: usize, secs: u64, rate: usize, lat_secs: u64) -> Figures {
    let (hub_port, edge_port, servers) = start_pair(dir, false);
    let created = request(
        hub_port,
        "$JS.API.STREAM.CREATE.BENCH",
        r#"{"name":"BENCH","subjects":["bench.>"],"storage":"file","retention":"limits","discard":"old"}"#,
    )
    .await;
    assert!(created.contains("\"config\""), "stream create: {created}");
    // The leaf connects asynchronously: wait until a publish is acked through it.
    let epoch = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _) = publisher(
            edge_port,
            999,
            1,
            epoch,
            Instant::now() + Duration::from_millis(1),
        )
        .await;
        if ok > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nats leaf did not connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Throughput, and the CPU both servers spend on it.
    let cpu = CpuMeter::start(servers.iter().map(Proc::pid).collect());
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let pubs: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(publisher(edge_port, c, 200, epoch, until)))
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for p in pubs {
        let (o, f) = p.await.expect("publisher");
        ok += o;
        failed += f;
    }
    let throughput = ok as f64 / t0.elapsed().as_secs_f64();
    let cpu_us = cpu.us_per(ok as f64);
    if failed > 0 {
        eprintln!("nats: {failed} publishes not acked");
    }

    // Latency at a fixed offered load.
    let (mut l, offered) = ack_latency(edge_port, "_INBOX.lat", rate, lat_secs, epoch).await;
    l.sort();
    Figures {
        name: "NATS 2.9 leaf → hub (TLS, JetStream file storage, publish acks)",
        throughput,
        cpu_us,
        p50: quantile(&l, 0.5),
        p99: quantile(&l, 0.99),
        p999: quantile(&l, 0.999),
        samples: l.len(),
        offered,
    }
}

/// Starts a hub with JetStream and a leaf (edge) connected to it over
/// mutual TLS, the edge with JetStream of its own if `edge_js` (domains
/// `hub` and `edge` then); returns the hub's and the edge's client ports.
fn start_pair(dir: &Path, edge_js: bool) -> (u16, u16, [Proc; 2]) {
    let tls = peer_tls(dir);
    let (hub_port, leaf_listen, edge_port) = (free_port(), free_port(), free_port());
    let (hub_domain, edge_js) = match edge_js {
        true => (
            ", domain: hub",
            format!(
                "jetstream {{ store_dir: \"{}\", domain: edge }}\n",
                dir.join("edge-js").display()
            ),
        ),
        false => ("", String::new()),
    };
    let hub = format!(
        "listen: \"127.0.0.1:{hub_port}\"\njetstream {{ store_dir: \"{}\"{hub_domain} }}\nleafnodes {{\n  listen: \"127.0.0.1:{leaf_listen}\"\n  tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\n}}\n",
        dir.join("hub-js").display(),
        tls.server.0.display(),
        tls.server.1.display(),
        tls.ca.display()
    );
    let edge = format!(
        "listen: \"127.0.0.1:{edge_port}\"\n{edge_js}leafnodes {{\n  remotes: [ {{ url: \"tls://127.0.0.1:{leaf_listen}\", tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\" }} }} ]\n}}\n",
        tls.client.0.display(),
        tls.client.1.display(),
        tls.ca.display()
    );
    let bin = "/usr/sbin/nats-server";
    let hub = serve(bin, dir, "hub", &hub, hub_port);
    let edge = serve(bin, dir, "edge", &edge, edge_port);
    (hub_port, edge_port, [hub, edge])
}

/// Messages in a stream, asked of the server at `port`.
async fn stream_messages(port: u16, stream: &str) -> u64 {
    let info = request(port, &format!("$JS.API.STREAM.INFO.{stream}"), "").await;
    serde_json::from_str::<serde_json::Value>(&info)
        .ok()
        .and_then(|v| v["state"]["messages"].as_u64())
        .unwrap_or(0)
}

/// The edge-stored setup (module docs): a stream on the leaf, sourced into
/// a stream on the hub.
pub async fn run_edge(
    dir: &Path,
    clients: usize,
    secs: u64,
    rate: usize,
    lat_secs: u64,
) -> Figures {
    let (hub_port, edge_port, servers) = start_pair(dir, true);
    let created = request(
        edge_port,
        "$JS.API.STREAM.CREATE.EDGE",
        r#"{"name":"EDGE","subjects":["bench.>"],"storage":"file","retention":"limits","discard":"old"}"#,
    )
    .await;
    assert!(
        created.contains("\"config\""),
        "edge stream create: {created}"
    );
    // The hub's stream has no subjects of its own: it holds what it sources.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let created = request(
            hub_port,
            "$JS.API.STREAM.CREATE.HUB",
            r#"{"name":"HUB","storage":"file","retention":"limits","discard":"old","sources":[{"name":"EDGE","external":{"api":"$JS.edge.API"}}]}"#,
        )
        .await;
        if created.contains("\"config\"") {
            break;
        }
        assert!(Instant::now() < deadline, "hub stream create: {created}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm up until a message published at the edge is in the hub.
    let epoch = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stream_messages(hub_port, "HUB").await == 0 {
        publisher(
            edge_port,
            999,
            1,
            epoch,
            Instant::now() + Duration::from_millis(1),
        )
        .await;
        assert!(
            Instant::now() < deadline,
            "nats: the hub never sourced from the edge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = stream_messages(hub_port, "HUB").await;

    // Throughput: publish (acked by the edge) for `secs`, then until the
    // hub has it all; and the CPU both servers spend on it.
    let cpu = CpuMeter::start(servers.iter().map(Proc::pid).collect());
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let pubs: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(publisher(edge_port, c, 200, epoch, until)))
        .collect();
    let mut ok = 0;
    for p in pubs {
        ok += p.await.expect("publisher").0;
    }
    let edge_secs = t0.elapsed().as_secs_f64();
    let target = base + ok as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let mut at_hub = stream_messages(hub_port, "HUB").await;
    while at_hub < target && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        at_hub = stream_messages(hub_port, "HUB").await;
    }
    let stored_secs = t0.elapsed().as_secs_f64();
    let throughput = (at_hub - base) as f64 / stored_secs;
    let cpu_us = cpu.us_per((at_hub - base) as f64);
    eprintln!(
        "nats edge: {ok} msgs acked by the edge in {edge_secs:.1} s, {} in the hub after {stored_secs:.1} s",
        at_hub - base
    );

    // Latency: publish → the edge's ack (stored in its file stream). A push
    // consumer on the hub's sourced stream delivered nothing to this
    // client in 2.9.10 (not pursued), so arrival at the hub is not timed.
    let (mut l, offered) = ack_latency(edge_port, "_INBOX.edgelat", rate, lat_secs, epoch).await;
    l.sort();
    Figures {
        name: "NATS 2.9 leaf JetStream → sourced into hub JetStream (TLS, file storage, acks from the edge's store)",
        throughput,
        cpu_us,
        p50: quantile(&l, 0.5),
        p99: quantile(&l, 0.99),
        p999: quantile(&l, 0.999),
        samples: l.len(),
        offered,
    }
}

/// Publishes at a fixed `rate` to the server at `port` for `secs`, each
/// with a reply subject under `inbox`; returns publish → ack times (unsorted)
/// and the number offered.
async fn ack_latency(
    port: u16,
    inbox: &str,
    rate: usize,
    secs: u64,
    epoch: Instant,
) -> (Vec<Duration>, usize) {
    let (mut w, mut rx) = open(port, inbox).await;
    let collect = tokio::spawn(async move {
        let mut l = Vec::new();
        // Ends two seconds after the last ack (the load runs until then).
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            // The reply subject carries the index; the send time is in `sent_at`.
            l.push((m.subject, Instant::now()));
        }
        l
    });
    let (mut tick, per_tick) = ticker(rate);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent_at = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let now = Instant::now();
        for _ in 0..per_tick {
            let i = sent_at.len();
            sent_at.push(now);
            pub_msg(
                &mut w,
                "bench.alarms",
                &format!("{inbox}.{i}"),
                &payload(epoch),
            )
            .await
            .expect("publish");
        }
        w.flush().await.expect("flush");
    }
    let offered = sent_at.len();
    let got = collect.await.unwrap_or_default();
    drop(w);
    let l = got
        .into_iter()
        .filter_map(|(s, at)| {
            let i: usize = s.rsplit('.').next()?.parse().ok()?;
            Some(at - *sent_at.get(i)?)
        })
        .collect();
    (l, offered)
}
