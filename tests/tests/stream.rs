//! Streamed bodies: a request and a response of any length cross a real
//! mTLS uplink without either end holding them whole (what bulk transfers
//! ride on). One test in its own binary, so the memory it measures is its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use rsnet_certs::Pki;
use rsnet_common::http_util::{stream_body, Body};
use rsnet_common::link::Link;
use rsnet_common::tls::{ReloadingServerConfig, Role, TlsPaths};
use rsnet_tests::tempdir;
use sha2::{Digest, Sha256};

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 2048; // 128 MiB each way

fn chunk(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; CHUNK])
}

fn generated() -> Body {
    let s = futures_util::stream::iter(0..CHUNKS)
        .map(|i| Ok::<_, std::io::Error>(Frame::data(chunk(i))));
    BodyExt::boxed(http_body_util::StreamBody::new(s))
}

fn expected_sha() -> Vec<u8> {
    let mut h = Sha256::new();
    for i in 0..CHUNKS {
        h.update(chunk(i));
    }
    h.finalize().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_of_any_length_crosses_the_link_with_bounded_memory() {
    let dir = tempdir("stream");
    let pki = Pki::init(&dir.join("pki"), Some("acme")).unwrap();
    let paths = |id: &str, role| {
        let f = pki.issue(id, role, &[], &[]).unwrap();
        TlsPaths {
            ca: pki.ca(),
            cert: f.cert,
            key: f.key,
            crl: None,
        }
    };
    let (server_tls, client_tls) = (paths("acme.mlm1", Role::Mlm), paths("acme.p1", Role::Proxy));
    let want = expected_sha();

    // The receiving side: hashes the request as it streams in, then streams a body back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, shutdown) = rsnet_common::server::Shutdown::new();
    let handler = |req: http::Request<hyper::body::Incoming>, _peer| async move {
        let mut body = std::pin::pin!(stream_body(req.into_body(), Duration::from_secs(10)));
        let (mut n, mut h) = (0u64, Sha256::new());
        while let Some(c) = body.next().await {
            match c {
                Ok(c) => {
                    n += c.len() as u64;
                    h.update(&c);
                }
                Err(e) => return rsnet_common::http_util::error(StatusCode::BAD_REQUEST, e),
            }
        }
        http::Response::builder()
            .status(StatusCode::OK)
            .header("x-received", n.to_string())
            .header("x-sha256", hex(&h.finalize()))
            .body(generated())
            .unwrap()
    };
    rsnet_common::server::serve(
        listener,
        Some(ReloadingServerConfig::start(server_tls).unwrap()),
        8,
        handler,
        shutdown,
    );

    let link = Link::new(
        &[format!("https://127.0.0.1:{}", addr.port())],
        rsnet_common::tls::client_config(&client_tls).unwrap(),
        None,
    )
    .unwrap();
    // Resident memory, sampled while the transfer runs.
    let base = rsnet_tests::memory_bytes("self", "VmRSS");
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(
                    rsnet_tests::memory_bytes("self", "VmRSS"),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let resp = link
        .stream(
            Method::PUT,
            "/rs/v1/bulk/test",
            &[("content-type", "application/octet-stream".into())],
            generated(),
            Duration::from_secs(10),
        )
        .await
        .expect("streamed request");
    assert_eq!(resp.status(), StatusCode::OK);
    let total = (CHUNK * CHUNKS) as u64;
    assert_eq!(resp.headers()["x-received"], total.to_string().as_str());
    assert_eq!(resp.headers()["x-sha256"], hex(&want).as_str());
    let mut down = std::pin::pin!(stream_body(resp.into_body(), Duration::from_secs(10)));
    let (mut n, mut h) = (0u64, Sha256::new());
    while let Some(c) = down.next().await {
        let c = c.expect("response chunk");
        n += c.len() as u64;
        h.update(&c);
    }
    sampler.abort();
    assert_eq!(n, total);
    assert_eq!(h.finalize().to_vec(), want);
    let grew = peak.load(Ordering::Relaxed).saturating_sub(base);
    assert!(
        grew < 64 << 20,
        "resident memory grew by {} MiB while 256 MiB crossed the link",
        grew >> 20
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
