//! End-to-end: enrollment. An operator makes a one-time token; a new proxy
//! makes its key on its own host, enrolls through its MLM, runs on the
//! config it wrote, and its first alarm is stored; a class its enrollment
//! does not allow is parked while the others flow; its certificate is
//! renewed before it ends, with no restart; a token that is reused,
//! expired or for the wrong scope or role is refused; a revoked node
//! cannot renew and its open tokens are withdrawn. An MLM enrolls straight
//! at the appserver and takes its place in the tree.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rsnet_common::tls::{Role, TlsPaths};
use rsnet_demo::{alarm, send, stored, Spec, Tree};
use rsnet_tests::{ctl, proxy_status, tempdir, wait_for};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn start(tag: &str, spec: &Spec) -> Tree {
    let mut t = tokio::task::block_in_place(|| Tree::start(&tempdir(tag), spec))
        .unwrap_or_else(|e| panic!("tree did not start: {e}"));
    t.remove_on_drop = true;
    t
}

/// `rsnet-ctl enroll ARGS…`: the token.
fn token(tree: &Tree, args: &[&str]) -> String {
    let mut a = vec!["enroll"];
    a.extend_from_slice(args);
    let out = ctl(tree, &a);
    let t = out.lines().next().unwrap_or("").trim().to_string();
    assert!(t.contains(':'), "no token in {out:?}");
    t
}

/// `BIN enroll …` into `dir`: success and its output, or failure and its
/// standard error.
fn enroll(
    tree: &Tree,
    bin: &str,
    parent: &str,
    token: &str,
    dir: &Path,
    extra: &[&str],
) -> Result<String, String> {
    let out = Command::new(rsnet_demo::bin_dir().join(bin))
        .arg("enroll")
        .args(["--parent", parent, "--token", token, "--ca"])
        .arg(tree.pki.ca())
        .arg("--crl")
        .arg(tree.pki.crl())
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn serial_of(cert: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert).unwrap();
    rsnet_common::tls::serial_of(&der).unwrap()
}

fn enrolled(v: &serde_json::Value, id: &str) -> serde_json::Value {
    v["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_enrolls_with_a_token_sends_renews_in_place_and_is_revoked() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("enroll-proxy", &spec);
    let op = tree.operator_target().unwrap();
    let mlm_url = tree.url("acme.mlm1").unwrap();

    // The operator's token: alarms only, certificates of two minutes.
    let t = token(
        &tree,
        &[
            "--id",
            "acme.p9",
            "--class",
            "alarm",
            "--cert-valid-s",
            "120",
        ],
    );
    let home = tree.dir.join("acme.p9");
    let out = enroll(
        &tree,
        "rsnet-proxy",
        &mlm_url,
        &t,
        &home,
        &["--local-api", "127.0.0.1:0"],
    )
    .unwrap_or_else(|e| panic!("enroll: {e}"));
    assert!(out.contains("enrolled as acme.p9"), "{out}");
    // The key was made here (0600) and never reached the CA's side.
    let key = home.join("tls/key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(!tree.dir.join("pki/issued/acme.p9.key").exists());
    // The token is spent.
    let again = enroll(
        &tree,
        "rsnet-proxy",
        &mlm_url,
        &t,
        &tree.dir.join("again"),
        &[],
    )
    .unwrap_err();
    assert!(again.contains("used already"), "{again}");

    // It runs on the config it wrote (renewing early, to see it happen).
    let config = home.join("proxy.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[renewal]\nbefore_s = 110\ncheck_s = 1\n");
    std::fs::write(&config, text).unwrap();
    let p = tree.adopt(
        "acme.p9",
        Role::Proxy,
        "acme.mlm1",
        config,
        home.join("data"),
    );
    tokio::task::block_in_place(|| tree.launch(p)).unwrap();
    let pid = tree.nodes[p].pid();
    let addr = tree.nodes[p].addr.unwrap();
    let first = send(addr, &[alarm("first after enrollment", "host-1")])
        .await
        .unwrap();
    wait_for("the enrolled proxy's first alarm stored", LONG, || async {
        let all = stored(&op, "source=acme.p9").await.ok()?;
        all.iter()
            .any(|m| m["id"] == first[0].as_str())
            .then_some(())
    })
    .await;

    // An event is outside its enrollment: parked, naming the class, while
    // alarms keep flowing.
    let ev = json!({ "kind": "event", "class": "event", "text": "not enrolled for this" });
    send(addr, &[ev]).await.unwrap();
    let parked = wait_for("the event class parked", LONG, || async {
        let s = proxy_status(&tree, p).await?;
        let c = s["parked"]
            .as_array()?
            .iter()
            .find(|c| c["class"] == "event")?
            .clone();
        Some(c)
    })
    .await;
    assert!(
        parked["reason"].as_str().unwrap().contains("event"),
        "{parked}"
    );

    // An MLM on the path cannot pass on a class the enrollment does not
    // allow: the appserver checks it again, against the enrollment.
    let mut mlm = rsnet_tests::RawChild::new(
        &tree,
        "acme.mlm1",
        Role::Mlm,
        tree.nodes[tree.index("provider.app").unwrap()]
            .addr
            .unwrap(),
    );
    let p9: rsnet_common::id::ComponentId = "acme.p9".parse().unwrap();
    let mk = |class: &str, si: Option<&str>| {
        rsnet_common::Message::forward(
            si.map_or_else(|| p9.clone(), |s| p9.child(s).unwrap()),
            class,
            None,
            rsnet_common::model::Content::Event(rsnet_common::model::Event {
                support_instance: None,
                text: "relayed".into(),
                data: None,
            }),
        )
        .with_hop(&p9)
        .with_hop(&mlm.id)
    };
    let (bad, bad_si, ok) = (
        mk("event", None),
        mk("event", Some("si1")),
        mk("alarm", None),
    );
    let d = mlm
        .exchange(&[bad.clone(), bad_si.clone(), ok.clone()], 0)
        .await;
    let answers = d.control.answers();
    for m in [&bad, &bad_si] {
        let (_, r) = answers.iter().find(|(id, _)| **id == m.header.id).unwrap();
        assert_eq!(r.status, rsnet_common::model::Status::Rejected, "{r:?}");
        let why = r.reason.as_deref().unwrap_or("");
        assert!(
            why.contains("class event is not allowed for acme.p9 (its enrollment allows: alarm)"),
            "{why}"
        );
        assert_eq!(r.retry_class.as_deref(), Some("event"), "{r:?}");
    }
    let (_, r) = answers.iter().find(|(id, _)| **id == ok.header.id).unwrap();
    assert_eq!(r.status, rsnet_common::model::Status::Accepted, "{r:?}");

    // Renewal: a new certificate, installed and used, same process.
    let before = serial_of(&home.join("tls/cert.pem"));
    let enrolled_before =
        rsnet_demo::json_call(&op, http::Method::GET, "/api/v1/enrollments", None)
            .await
            .unwrap()
            .1;
    let serial0 = enrolled(&enrolled_before, "acme.p9")["serial"].clone();
    wait_for("the certificate renewed", LONG, || async {
        (serial_of(&home.join("tls/cert.pem")) != before).then_some(())
    })
    .await;
    let v = rsnet_demo::json_call(&op, http::Method::GET, "/api/v1/enrollments", None)
        .await
        .unwrap()
        .1;
    assert_ne!(enrolled(&v, "acme.p9")["serial"], serial0, "{v}");
    assert!(enrolled(&v, "acme.p9")["renewed"].is_string(), "{v}");
    assert_eq!(
        tree.nodes[p].pid(),
        pid,
        "renewal must not restart the proxy"
    );
    let after = send(addr, &[alarm("after renewal", "host-1")])
        .await
        .unwrap();
    wait_for("an alarm after the renewal stored", LONG, || async {
        let all = stored(&op, "source=acme.p9").await.ok()?;
        all.iter()
            .any(|m| m["id"] == after[0].as_str())
            .then_some(())
    })
    .await;

    // Its MLM cannot renew it on its behalf: it has not the proxy's key.
    let mlm_tls = TlsPaths {
        ca: tree.pki.ca(),
        cert: tree.dir.join("pki/issued/acme.mlm1.pem"),
        key: tree.dir.join("pki/issued/acme.mlm1.key"),
        crl: None,
    };
    let as_mlm = rsnet_common::client::Target::Tls {
        base: tree.url("provider.app").unwrap(),
        config: std::sync::Arc::new(rsnet_common::tls::client_config(&mlm_tls).unwrap()),
    };
    let id: rsnet_common::id::ComponentId = "acme.p9".parse().unwrap();
    let (_, csr) = rsnet_common::enroll::new_key_and_csr(&id).unwrap();
    let serial = rsnet_common::enroll::hex(&serial_of(&home.join("tls/cert.pem")));
    let mlm_key = std::fs::read_to_string(&mlm_tls.key).unwrap();
    let mlm_cert = std::fs::read_to_string(&mlm_tls.cert).unwrap();
    let proxy_cert = std::fs::read_to_string(home.join("tls/cert.pem")).unwrap();
    for (proof, why) in [
        (None, "a renewal carries a proof"),
        (
            Some(rsnet_common::enroll::prove(&mlm_key, &mlm_cert, &csr).unwrap()),
            "is for acme.mlm1",
        ),
        // The proxy's certificate with a signature by another key.
        (
            Some(rsnet_common::enroll::prove(&mlm_key, &proxy_cert, &csr).unwrap()),
            "does not verify",
        ),
    ] {
        let req = rsnet_common::enroll::Request {
            id: id.clone(),
            role: Role::Proxy,
            csr: csr.clone(),
            token: None,
            hosts: vec![],
            serial: Some(serial.clone()),
            proof,
        };
        let (status, body) = rsnet_common::client::call(
            &as_mlm,
            http::Method::POST,
            rsnet_common::enroll::ENROLL_PATH,
            Some(("application/json", serde_json::to_vec(&req).unwrap().into())),
        )
        .await
        .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(
            status.is_client_error() && body.contains(why),
            "{status} {body}"
        );
    }

    // Revocation through the operator API: certificates, enrollment, the
    // open token made for a re-install.
    let spare = token(&tree, &["--id", "acme.p9"]);
    let out = ctl(&tree, &["revoke", "acme.p9"]);
    assert!(
        out.contains("enrollment ended: true") && out.contains("1 token(s)"),
        "{out}"
    );
    let v = rsnet_demo::json_call(&op, http::Method::GET, "/api/v1/enrollments", None)
        .await
        .unwrap()
        .1;
    assert_eq!(enrolled(&v, "acme.p9")["revoked"], true, "{v}");
    let withdrawn = enroll(
        &tree,
        "rsnet-proxy",
        &mlm_url,
        &spare,
        &tree.dir.join("spare"),
        &[],
    )
    .unwrap_err();
    assert!(withdrawn.contains("withdrawn"), "{withdrawn}");
    // Its current key can renew no more: the MLM refuses it on sight.
    tree.kill9(p);
    let paths = TlsPaths {
        ca: home.join("tls/ca.pem"),
        cert: home.join("tls/cert.pem"),
        key,
        crl: None,
    };
    let link = rsnet_common::link::Link::new(
        std::slice::from_ref(&mlm_url),
        rsnet_common::tls::client_config(&paths).unwrap(),
        None,
    )
    .unwrap();
    let refused = wait_for("a renewal by the revoked proxy refused", LONG, || async {
        rsnet_common::enroll::renew_once(&link, &paths).await.err()
    })
    .await;
    assert!(refused.contains("revoked"), "{refused}");
    // The audit log has the token's creation and the revocation.
    let audit = ctl(&tree, &["audit"]);
    assert!(
        audit.contains("/api/v1/enrollments") && audit.contains("/api/v1/revocations"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_are_expired_mis_scoped_or_for_another_role_are_refused() {
    let spec = Spec {
        mlms: vec![("mlm1".into(), None)],
        proxies: vec![],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let tree = start("enroll-refused", &spec);
    let op = tree.operator_target().unwrap();
    let mlm_url = tree.url("acme.mlm1").unwrap();
    let dir = |n: &str| -> PathBuf { tree.dir.join(n) };

    // Another customer's token, at acme's MLM: refused there.
    let beta = token(&tree, &["--id", "beta.p1"]);
    let e = enroll(&tree, "rsnet-proxy", &mlm_url, &beta, &dir("beta"), &[]).unwrap_err();
    assert!(e.contains("does not relay enrollments for beta.p1"), "{e}");
    // A token for an MLM, used by a proxy.
    let m = token(&tree, &["--id", "acme.m9", "--role", "mlm"]);
    let e = enroll(&tree, "rsnet-proxy", &mlm_url, &m, &dir("m9"), &[]).unwrap_err();
    assert!(e.contains("as a mlm, not acme.m9 as a proxy"), "{e}");
    // A token past its time.
    let x = token(&tree, &["--id", "acme.p8", "--expires-s", "1"]);
    wait_for("the token expired", LONG, || async {
        let (_, v) = rsnet_demo::json_call(&op, http::Method::GET, "/api/v1/enrollments", None)
            .await
            .ok()?;
        v["tokens"]
            .as_array()?
            .iter()
            .any(|t| t["id"] == "acme.p8" && t["state"] == "expired")
            .then_some(())
    })
    .await;
    let e = enroll(&tree, "rsnet-proxy", &mlm_url, &x, &dir("p8"), &[]).unwrap_err();
    assert!(e.contains("expired"), "{e}");
    // A made-up token, and a token with its secret changed.
    let forged = format!("acme.p8:{}", "0".repeat(64));
    let e = enroll(&tree, "rsnet-proxy", &mlm_url, &forged, &dir("p8b"), &[]).unwrap_err();
    assert!(e.contains("unknown enrollment token"), "{e}");
    // Nothing was written for any of them.
    for n in ["beta", "m9", "p8", "p8b"] {
        assert!(!dir(n).join("tls/cert.pem").exists(), "{n}");
    }
    // Without a certificate, only enrollment is served.
    let anon = rsnet_common::client::Target::Tls {
        base: mlm_url.clone(),
        config: std::sync::Arc::new(
            rsnet_common::tls::anonymous_client_config(&tree.pki.ca()).unwrap(),
        ),
    };
    for (method, path) in [
        (http::Method::POST, "/rs/v1/exchange"),
        (http::Method::GET, "/metrics"),
    ] {
        let r = rsnet_common::client::send(&anon, method, path, None, &[])
            .await
            .unwrap();
        assert_eq!(r.status(), http::StatusCode::FORBIDDEN, "{path}");
    }
    // A certificate from another CA is refused at the handshake, even
    // where clients without one may enroll.
    let other = rsnet_certs::Pki::init(&dir("other-ca"), None).unwrap();
    let f = other.issue("acme.p1", Role::Proxy, &[], &[]).unwrap();
    let stranger = rsnet_common::client::Target::Tls {
        base: mlm_url.clone(),
        config: std::sync::Arc::new(
            rsnet_common::tls::client_config(&TlsPaths {
                ca: tree.pki.ca(),
                cert: f.cert,
                key: f.key,
                crl: None,
            })
            .unwrap(),
        ),
    };
    let r = rsnet_common::client::send(&stranger, http::Method::POST, "/rs/v1/exchange", None, &[])
        .await;
    assert!(
        r.is_err(),
        "a certificate of another CA got {:?}",
        r.map(|r| r.status())
    );
    // A reader cannot make tokens.
    let f = tree
        .pki
        .issue_with("provider.reader", Role::Operator, &[], &[], &[], &[])
        .unwrap();
    let reader = rsnet_common::client::Target::Tls {
        base: match &op {
            rsnet_common::client::Target::Tls { base, .. } => base.clone(),
            _ => unreachable!(),
        },
        config: std::sync::Arc::new(
            rsnet_common::tls::client_config(&TlsPaths {
                ca: tree.pki.ca(),
                cert: f.cert,
                key: f.key,
                crl: None,
            })
            .unwrap(),
        ),
    };
    let (s, v) = rsnet_demo::json_call(
        &reader,
        http::Method::POST,
        "/api/v1/enrollments",
        Some(json!({ "id": "acme.p7", "role": "proxy" })),
    )
    .await
    .unwrap();
    assert_eq!(s, http::StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlm_enrolls_at_the_appserver_and_relays_for_its_customer() {
    let spec = Spec {
        mlms: vec![],
        proxies: vec![],
        heartbeat_s: 3600,
        ..Spec::demo()
    };
    let mut tree = start("enroll-mlm", &spec);
    let op = tree.operator_target().unwrap();
    let app_url = tree.url("provider.app").unwrap();
    let t = token(
        &tree,
        &["--id", "acme.mlm9", "--role", "mlm", "--host", "127.0.0.1"],
    );
    let home = tree.dir.join("acme.mlm9");
    // A server name the token does not allow: refused, the token kept.
    let e = enroll(
        &tree,
        "rsnet-mlm",
        &app_url,
        &t,
        &tree.dir.join("evil"),
        &["--host", "appserver.provider.example"],
    )
    .unwrap_err();
    assert!(
        e.contains("does not allow the server name \"appserver.provider.example\""),
        "{e}"
    );
    enroll(
        &tree,
        "rsnet-mlm",
        &app_url,
        &t,
        &home,
        &["--listen", "127.0.0.1:0", "--host", "127.0.0.1"],
    )
    .unwrap_or_else(|e| panic!("enroll: {e}"));
    let m = tree.adopt(
        "acme.mlm9",
        Role::Mlm,
        "provider.app",
        home.join("mlm.toml"),
        home.join("data"),
    );
    tokio::task::block_in_place(|| tree.launch(m)).unwrap();
    // Its cold-start notice is stored: it is in the tree.
    wait_for("the enrolled MLM heard from", LONG, || async {
        let all = stored(&op, "source=acme.mlm9").await.ok()?;
        (!all.is_empty()).then_some(())
    })
    .await;
    // And a proxy enrolls through it.
    let url = tree.url("acme.mlm9").unwrap();
    let pt = token(&tree, &["--id", "acme.p5"]);
    let out = enroll(&tree, "rsnet-proxy", &url, &pt, &tree.dir.join("p1"), &[])
        .unwrap_or_else(|e| panic!("enroll through the enrolled MLM: {e}"));
    assert!(out.contains("enrolled as acme.p5"), "{out}");
    // Revoked with rsnet-certs (the CRL only): the appserver follows the
    // CRL, ends the enrollment and withdraws the open token.
    let spare = token(&tree, &["--id", "acme.p5"]);
    let out = Command::new(rsnet_demo::bin_dir().join("rsnet-certs"))
        .args(["revoke", "--dir"])
        .arg(tree.dir.join("pki"))
        .args(["--id", "acme.p5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the enrollment ended after rsnet-certs revoke",
        LONG,
        || async {
            let (_, v) = rsnet_demo::json_call(&op, http::Method::GET, "/api/v1/enrollments", None)
                .await
                .ok()?;
            let ended = enrolled(&v, "acme.p5")["revoked"] == true;
            let withdrawn = v["tokens"]
                .as_array()?
                .iter()
                .any(|t| t["id"] == "acme.p5" && t["state"] == "withdrawn");
            (ended && withdrawn).then_some(())
        },
    )
    .await;
    let e = enroll(
        &tree,
        "rsnet-proxy",
        &url,
        &spare,
        &tree.dir.join("p5b"),
        &[],
    )
    .unwrap_err();
    assert!(e.contains("withdrawn"), "{e}");
}
