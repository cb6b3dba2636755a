//! The Mosquitto peer: an edge broker bridged to a core broker over mutual
//! TLS, QoS 1 end to end, persistence on at both (Debian's mosquitto).
//!
//! Publishers post QoS 1 to the edge (each PUBLISH answered by a PUBACK);
//! a QoS 1 subscriber on the core counts arrivals. Throughput is messages
//! arrived at the core per second; latency is publish → arrival at the core.
//! The MQTT 3.1.1 client here is the few packets the run needs, no more.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::peer::*;

const TOPIC: &str = "bench/alarms";

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    varint(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn str16(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

async fn read_packet(r: &mut BufReader<OwnedReadHalf>) -> std::io::Result<(u8, Vec<u8>)> {
    let first = r.read_u8().await?;
    let (mut len, mut mul) = (0usize, 1usize);
    loop {
        let b = r.read_u8().await?;
        len += (b & 0x7f) as usize * mul;
        mul *= 128;
        if b & 0x80 == 0 || mul > 128 * 128 * 128 {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((first, body))
}

async fn connect(
    port: u16,
    id: &str,
) -> std::io::Result<(BufReader<OwnedReadHalf>, BufWriter<OwnedWriteHalf>)> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
    let mut body = Vec::new();
    str16("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 0]); // level 4, clean session, no keep-alive
    str16(id, &mut body);
    w.write_all(&packet(0x10, &body)).await?;
    w.flush().await?;
    let (t, b) = read_packet(&mut r).await?;
    if t >> 4 != 2 || b.get(1) != Some(&0) {
        return Err(std::io::Error::other(format!("CONNACK refused: {b:?}")));
    }
    Ok((r, w))
}

fn publish(pid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + 20);
    str16(TOPIC, &mut body);
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// A QoS 1 subscriber: PUBACKs each arrival, records its latency.
async fn subscribe(
    port: u16,
    epoch: Instant,
    arrived: Arc<AtomicU64>,
    lat: Arc<Mutex<Option<Vec<Duration>>>>,
) -> tokio::task::JoinHandle<()> {
    let (mut r, mut w) = connect(port, "bench-sub").await.expect("sub connect");
    let mut body = vec![0, 1];
    str16("bench/#", &mut body);
    body.push(1);
    w.write_all(&packet(0x82, &body)).await.expect("subscribe");
    w.flush().await.expect("subscribe");
    let (t, _) = read_packet(&mut r).await.expect("suback");
    assert_eq!(t >> 4, 9, "SUBACK expected");
    tokio::spawn(async move {
        while let Ok((t, b)) = read_packet(&mut r).await {
            if t >> 4 != 3 {
                continue;
            }
            let qos = (t >> 1) & 3;
            let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
            let mut at = 2 + tl;
            if qos > 0 {
                w.write_all(&[0x40, 2, b[at], b[at + 1]]).await.ok();
                at += 2;
            }
            if let (Some(l), Ok(mut g)) = (latency_of(epoch, &b[at..]), lat.lock()) {
                if let Some(v) = g.as_mut() {
                    v.push(l);
                }
            }
            arrived.fetch_add(1, Ordering::Relaxed);
            if r.buffer().is_empty() {
                w.flush().await.ok();
            }
        }
    })
}

/// A publisher with up to `window` unacknowledged PUBLISHes.
async fn publisher(port: u16, id: String, window: usize, epoch: Instant, until: Instant) -> usize {
    let (mut r, mut w) = connect(port, &id).await.expect("pub connect");
    let slots = Arc::new(Semaphore::new(window));
    let s2 = slots.clone();
    let acks = tokio::spawn(async move {
        while let Ok((t, _)) = read_packet(&mut r).await {
            if t >> 4 == 4 {
                s2.add_permits(1);
            }
        }
    });
    let mut sent = 0usize;
    let mut pid: u16 = 0;
    while Instant::now() < until {
        let Ok(p) = slots.acquire().await else { break };
        p.forget();
        pid = pid.wrapping_add(1).max(1);
        w.write_all(&publish(pid, &payload(epoch)))
            .await
            .expect("publish");
        sent += 1;
        if slots.available_permits() == 0 {
            w.flush().await.expect("flush");
        }
    }
    w.flush().await.ok();
    // Wait for the outstanding acks, then close.
    let _ = slots.acquire_many(window as u32).await;
    drop(w);
    acks.abort();
    sent
}

/// Runs the Mosquitto chain and measures it.
pub async fn run(dir: &Path, clients: usize, secs: u64, rate: usize, lat_secs: u64) -> Figures {
    let tls = peer_tls(dir);
    let (edge_port, core_port, core_tls) = (free_port(), free_port(), free_port());
    for d in ["edge", "core"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let common =
        "user root\npersistence true\nallow_anonymous true\nmax_queued_messages 10000000\n";
    let core = format!(
        "{common}persistence_location {}/\nlistener {core_port} 127.0.0.1\nlistener {core_tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        dir.join("core").display(),
        tls.ca.display(),
        tls.server.0.display(),
        tls.server.1.display()
    );
    let edge = format!(
        "{common}persistence_location {}/\nlistener {edge_port} 127.0.0.1\nconnection core\naddress 127.0.0.1:{core_tls}\ntopic bench/# out 1\ncleansession false\nbridge_cafile {}\nbridge_certfile {}\nbridge_keyfile {}\n",
        dir.join("edge").display(),
        tls.ca.display(),
        tls.client.0.display(),
        tls.client.1.display()
    );
    let bin = "/usr/sbin/mosquitto";
    let _core = serve(bin, dir, "core", &core, core_port);
    let _edge = serve(bin, dir, "edge", &edge, edge_port);

    let epoch = Instant::now();
    let arrived = Arc::new(AtomicU64::new(0));
    let lat: Arc<Mutex<Option<Vec<Duration>>>> = Arc::default();
    let _sub = subscribe(core_port, epoch, arrived.clone(), lat.clone()).await;
    // The bridge connects asynchronously: wait until a probe crosses it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "mosquitto bridge did not connect"
        );
        publisher(
            edge_port,
            "probe".into(),
            1,
            epoch,
            Instant::now() + Duration::from_millis(1),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Throughput, and the CPU both brokers spend on it.
    let cpu = CpuMeter::start(vec![_core.pid(), _edge.pid()]);
    let start = arrived.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let pubs: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(publisher(
                edge_port,
                format!("bench-{c}"),
                200,
                epoch,
                until,
            ))
        })
        .collect();
    let mut sent = 0;
    for p in pubs {
        sent += p.await.expect("publisher");
    }
    let drain = Instant::now() + Duration::from_secs(60);
    while arrived.load(Ordering::Relaxed) - start < sent as u64 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = arrived.load(Ordering::Relaxed) - start;
    let throughput = got as f64 / t0.elapsed().as_secs_f64();
    let cpu_us = cpu.us_per(got as f64);

    // Latency at a fixed offered load.
    *lat.lock().expect("lat") = Some(Vec::new());
    let before = arrived.load(Ordering::Relaxed);
    let (mut r, mut w) = connect(edge_port, "bench-lat").await.expect("connect");
    let acks = tokio::spawn(async move { while read_packet(&mut r).await.is_ok() {} });
    let (mut tick, per_tick) = ticker(rate);
    let end = Instant::now() + Duration::from_secs(lat_secs);
    let (mut offered, mut pid) = (0usize, 0u16);
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            pid = pid.wrapping_add(1).max(1);
            w.write_all(&publish(pid, &payload(epoch)))
                .await
                .expect("publish");
        }
        w.flush().await.expect("flush");
        offered += per_tick;
    }
    let drain = Instant::now() + Duration::from_secs(10);
    while arrived.load(Ordering::Relaxed) - before < offered as u64 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acks.abort();
    let mut l = lat.lock().expect("lat").take().unwrap_or_default();
    l.sort();
    Figures {
        name: "Mosquitto 2.0 bridge (edge → core, TLS, QoS 1, persistence)",
        throughput,
        cpu_us,
        p50: quantile(&l, 0.5),
        p99: quantile(&l, 0.99),
        p999: quantile(&l, 0.999),
        samples: l.len(),
        offered,
    }
}
