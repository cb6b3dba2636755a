//! Bulk relay throughput (`RSNET_BENCH_ONLY=bulk`): one upload of `SIZE`
//! bytes into the appserver, three ways, in alternating rounds of one run:
//!
//! * **direct**: the sender PUTs straight to the appserver;
//! * **MLM**: through `rsnet-mlm` (streamed relay, mTLS both sides);
//! * **nginx**: through Debian's nginx as a TLS reverse proxy doing the
//!   same job (client certificate checked, `proxy_request_buffering off`,
//!   its own client certificate upstream, the origin header set), so it
//!   streams too rather than spooling the body to disk first.
//!
//! The sender is a hand-driven child (`RawChild`, a proxy certificate) with
//! a generated body (no disk reads on the sending side); each transfer has
//! its own grant, and the clock runs from the PUT to the appserver's 201
//! (written, fsynced, hash checked). Then one transfer of `BIG` through the
//! MLM: its peak resident memory after it shows whether memory grows with
//! the file.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::StatusCode;
use http_body_util::BodyExt;
use rsnet_common::bulk;
use rsnet_common::client::Target;
use rsnet_common::tls::Role;
use rsnet_demo::{Spec, Tree};
use rsnet_tests::RawChild;
use sha2::{Digest, Sha256};

use crate::peer::{self, cpu_secs};

const SIZE: u64 = 256 << 20;
const BIG: u64 = 1 << 30;
const ROUNDS: usize = 5;
const CHUNK: usize = 64 * 1024;

fn chunk(i: u64) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; CHUNK])
}

fn body(size: u64) -> rsnet_common::http_util::Body {
    let n = size / CHUNK as u64;
    let s = futures_util::stream::iter(0..n)
        .map(|i| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk(i))));
    BodyExt::boxed(http_body_util::StreamBody::new(s))
}

fn sha(size: u64) -> String {
    let mut h = Sha256::new();
    for i in 0..size / CHUNK as u64 {
        h.update(chunk(i));
    }
    bulk::hex(&h.finalize())
}

fn with_base(t: &Target, base: String) -> Target {
    match t {
        Target::Tls { config, .. } => Target::Tls {
            base,
            config: config.clone(),
        },
        Target::Plain(_) => unreachable!("a child's target is TLS"),
    }
}

fn nginx_conf(dir: &Path, port: u16, app: u16, tree: &Tree) -> String {
    let f = tree
        .pki
        .issue("acme.nginx", Role::Mlm, &[], &[])
        .expect("nginx cert");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("nginx tmp");
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp};
    scgi_temp_path {tmp};
    upstream app {{ server 127.0.0.1:{app}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        client_max_body_size 0;
        client_body_buffer_size 1m;
        proxy_request_buffering off;
        proxy_buffering off;
        location /rs/v1/bulk/ {{
            proxy_pass https://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Rsnet-Origin acme.b1;
            proxy_ssl_certificate {cert};
            proxy_ssl_certificate_key {key};
            proxy_ssl_verify off;
        }}
    }}
}}
"#,
        dir = dir.display(),
        tmp = tmp.display(),
        cert = f.cert.display(),
        key = f.key.display(),
        ca = tree.pki.ca().display(),
    )
}

/// One upload through `via`; MB/s.
async fn once(child: &mut RawChild, via: &Target, size: u64, sha: &str) -> f64 {
    let grant = child.request(size, sha).await;
    assert!(grant.granted, "{grant:?}");
    let path = grant.url.expect("url");
    let t = Instant::now();
    let (s, why) = child.put_stream(via, &path, body(size)).await;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(s, StatusCode::CREATED, "{why}");
    size as f64 / secs / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(dir: &Path) {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![],
        heartbeat_s: 3600,
        appserver_extra: "[uploads]\nmax_bytes = 4294967296\n".into(),
        ..Spec::demo()
    };
    let tree = tokio::task::block_in_place(|| Tree::start(dir, &spec)).expect("tree");
    let app = tree.nodes[0].addr.expect("appserver");
    let mlm_i = tree.index("acme.mlm1").expect("mlm");
    let mlm = tree.nodes[mlm_i].addr.expect("mlm addr");
    let mut child = RawChild::new(&tree, "acme.b1", Role::Proxy, app);
    let direct = child.target.clone();
    let via_mlm = with_base(&direct, format!("https://127.0.0.1:{}", mlm.port()));
    let port = peer::free_port();
    let conf = nginx_conf(dir, port, app.port(), &tree);
    let _nginx = peer::serve("/usr/sbin/nginx", dir, "nginx", &conf, port);
    let via_nginx = with_base(&direct, format!("https://127.0.0.1:{port}"));

    let want = sha(SIZE);
    let (mut d, mut m, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        d.push(once(&mut child, &direct, SIZE, &want).await);
        m.push(once(&mut child, &via_mlm, SIZE, &want).await);
        n.push(once(&mut child, &via_nginx, SIZE, &want).await);
    }
    let pid = tree.nodes[mlm_i].pid().expect("mlm pid");
    let app_pid = tree.nodes[0].pid().expect("appserver pid");
    let rss_small = rsnet_tests::memory_bytes(&pid.to_string(), "VmHWM");
    let want_big = sha(BIG);
    let (mlm_cpu, app_cpu) = (cpu_secs(pid), cpu_secs(app_pid));
    let big = once(&mut child, &via_mlm, BIG, &want_big).await;
    let (mlm_cpu, app_cpu) = (cpu_secs(pid) - mlm_cpu, cpu_secs(app_pid) - app_cpu);
    let rss_big = rsnet_tests::memory_bytes(&pid.to_string(), "VmHWM");
    let (d, m, n) = (median(d), median(m), median(n));
    eprintln!(
        "bulk: direct {d:.0} MB/s, MLM {m:.0} MB/s, nginx {n:.0} MB/s; 1 GiB via MLM {big:.0} MB/s"
    );
    println!(
        "| path ({} MiB upload, median of {ROUNDS}) | MB/s | ÷ direct | MLM ÷ path |",
        SIZE >> 20
    );
    println!("|---|---|---|---|");
    println!(
        "| direct (sender → appserver) | {d:.0} | 1.00 | {:.2} |",
        m / d
    );
    println!(
        "| rsnet-mlm (sender → MLM → appserver) | {m:.0} | {:.2} | 1.00 |",
        m / d
    );
    println!(
        "| nginx (sender → nginx → appserver) | {n:.0} | {:.2} | {:.2} |",
        n / d,
        m / n
    );
    println!();
    println!(
        "MLM peak resident memory: {} MiB after the {} MiB uploads, {} MiB after one more of {} MiB ({big:.0} MB/s).",
        rss_small >> 20,
        SIZE >> 20,
        rss_big >> 20,
        BIG >> 20
    );
    println!(
        "CPU for that 1 GiB: MLM {mlm_cpu:.2} s, appserver {app_cpu:.2} s (the sender runs on the same 2 cores)."
    );
    drop(tree);
}
