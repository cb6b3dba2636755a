//! End-to-end: publishing a release. The operator uploads a file; the
//! appserver streams it to disk, signs its manifest with the release key
//! (apart from the TLS CA) and serves the signed manifest, which verifies
//! under `release.pub` and names the file's real size and hash.
//! (Distribution down the tree is not built yet.)

use bytes::Bytes;
use http::{Method, StatusCode};
use rsnet_common::client::call;
use rsnet_common::release::{ReleaseKind, ReleasePublicKey, SignedManifest};
use rsnet_demo::{Spec, Tree};
use rsnet_tests::tempdir;
use sha2::{Digest, Sha256};

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

/// The signed manifest `GET /api/v1/releases/ID` returns.
async fn manifest_of(op: &rsnet_common::client::Target, id: &str) -> SignedManifest {
    let (s, b) = call(op, Method::GET, &format!("/api/v1/releases/{id}"), None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    serde_json::from_value(
        serde_json::json!({ "manifest": v["manifest"], "signature": v["signature"] }),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_release_has_a_manifest_signed_with_the_release_key() {
    let spec = Spec {
        mlms: vec![],
        proxies: vec![],
        release_max_bytes: Some(8 << 20),
        ..Spec::demo()
    };
    let mut tree = start("release", &spec);
    let op = tree.operator_target().unwrap();
    let file: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let want: String = Sha256::digest(&file)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let publish = |q: &str, body: Vec<u8>| {
        let (op, path) = (op.clone(), format!("/api/v1/releases?{q}"));
        async move {
            call(
                &op,
                Method::POST,
                &path,
                Some(("application/octet-stream", Bytes::from(body))),
            )
            .await
            .expect("operator API answers")
        }
    };
    // An unknown group is refused before the file is taken.
    let (s, b) = publish(
        "kind=software&version=1&to=group:acme-solaris",
        b"x".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&b));
    let (s, _) = rsnet_demo::json_call(
        &op,
        Method::PUT,
        "/api/v1/groups/acme-solaris",
        Some(serde_json::json!({ "members": ["acme.p7", "acme.p8"] })),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK);
    let (s, b) = publish(
        "kind=software&version=2.4.1&to=group:acme-solaris&to=acme.p7",
        file.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let signed: SignedManifest = serde_json::from_slice(&b).unwrap();
    let public = ReleasePublicKey::load(&tree.pki.release_pub()).unwrap();
    let m = public.verify(&signed).expect("signed with the release key");
    assert_eq!(
        (m.kind, m.version.as_str(), m.size),
        (ReleaseKind::Software, "2.4.1", file.len() as u64)
    );
    assert_eq!(m.sha256, want);
    assert_eq!(m.target, ["group:acme-solaris", "acme.p7"]);
    assert_eq!(m.item, "software", "one item per kind unless named");
    // The file on disk is the upload, and the manifest reads back (also after a restart).
    let on_disk = tree.nodes[0]
        .data_dir
        .join("releases")
        .join(format!("{}.bin", m.id));
    assert_eq!(std::fs::read(&on_disk).unwrap(), file);
    assert_eq!(manifest_of(&op, &m.id).await, signed);
    let (s, b) = call(&op, Method::GET, "/api/v1/releases", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains(&m.id));
    tokio::task::block_in_place(|| {
        tree.kill9(0);
        tree.restart(0)
    })
    .expect("appserver back on its port");
    assert_eq!(manifest_of(&op, &m.id).await, signed);
    // Refused with a reason, and nothing half-written left behind.
    for (q, status, needle) in [
        (
            "kind=firmware&version=1&to=acme.p7",
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        ("kind=config&to=acme.p7", StatusCode::BAD_REQUEST, "version"),
        (
            "kind=config&version=1&to=../../etc",
            StatusCode::BAD_REQUEST,
            "target[0]",
        ),
        ("kind=config&version=1", StatusCode::BAD_REQUEST, "target"),
    ] {
        let (s, b) = publish(q, b"x".to_vec()).await;
        assert_eq!(s, status, "{q}: {}", String::from_utf8_lossy(&b));
        assert!(
            String::from_utf8_lossy(&b).contains(needle),
            "{q}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    let (s, b) = publish("kind=config&version=1&to=acme.p7", vec![0u8; 9 << 20]).await;
    assert_eq!(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (s, _) = call(&op, Method::GET, "/api/v1/releases/nope", None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
    let leftovers: Vec<_> = std::fs::read_dir(tree.nodes[0].data_dir.join("releases"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
