//! The admin page in a real browser: headless Chromium (Debian's, set up
//! by `tests/browser-setup.sh`, which `tests/run.sh` runs) loads `/` of a
//! running demo tree with the operator's client certificate, shows all 7
//! nodes with their versions, and turns a proxy killed during the test
//! stale without a reload. The browser is driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`: fd 3 in, fd 4 out,
//! NUL-separated JSON), so nothing beyond std is needed to talk to it. The
//! screenshots are written to the test's temporary directory
//! (`CARGO_TARGET_TMPDIR`); `docs/admin-page.png` is one of them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use base64::Engine;
use rsnet_demo::{json_call, Spec, Tree};
use rsnet_tests::tempdir;
use serde_json::{json, Value};

/// Chromium, driven over its DevTools pipe.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next: u64,
    session: Option<String>,
}

impl Browser {
    /// Starts headless Chromium with `home` as its home (where its NSS
    /// database, with the operator's certificate, lives).
    fn start(home: &Path) -> Browser {
        let chromium = which("chromium").unwrap_or_else(|| {
            panic!("chromium not found: run tests/browser-setup.sh (tests/run.sh does)")
        });
        // fd 3 is what Chromium reads, fd 4 what it writes.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {} --headless=new --no-sandbox --disable-gpu --no-first-run \
                 --user-data-dir={} --window-size=1280,1400 --remote-debugging-pipe \
                 3<&0 4>&1 </dev/null >/dev/null 2>{}",
                chromium.display(),
                home.join("profile").display(),
                home.join("chromium.log").display()
            ))
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let to = child.stdin.take().expect("fd 3");
        let out = child.stdout.take().expect("fd 4");
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            for msg in BufReader::new(out).split(0).map_while(Result::ok) {
                if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Browser {
            child,
            to,
            from,
            next: 0,
            session: None,
        }
    }

    /// One DevTools call: its result, or the browser's error.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let mut m = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = &self.session {
            m["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.to.write_all(&bytes).map_err(|e| e.to_string())?;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .map_err(|_| format!("no answer to {method} in 30 s"))?;
            if v["id"] == self.next {
                return match v.get("error") {
                    Some(e) => Err(format!("{method}: {e}")),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Opens a page at `url` and attaches to it.
    fn open(&mut self, url: &str) {
        let t = self
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .expect("a page");
        let s = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": t["targetId"], "flatten": true }),
            )
            .expect("attached");
        self.session = s["sessionId"].as_str().map(str::to_string);
        self.call("Page.enable", json!({})).expect("Page.enable");
        self.call("Page.navigate", json!({ "url": url }))
            .expect("navigated");
    }

    /// The value of `expression` in the page.
    fn eval(&mut self, expression: &str) -> Value {
        self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )
        .map(|r| r["result"]["value"].clone())
        .unwrap_or(Value::Null)
    }

    /// Evaluates `expression` until `done` holds (every 200 ms, up to `timeout`).
    fn wait(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let v = self.eval(expression);
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "{what}: not within {timeout:?}; last {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the page, written to `to`.
    fn screenshot(&mut self, to: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or(""))
            .expect("base64 PNG");
        std::fs::write(to, png).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An NSS database under `home` holding the operator's certificate and key,
/// and the tree's CA as trusted for TLS servers.
fn nss_with_operator(home: &Path, tree: &Tree) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb dir");
    let sql = format!("sql:{}", db.display());
    let p12 = home.join("operator.p12");
    run(Command::new("certutil").args(["-d", &sql, "-N", "--empty-password"]));
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:", "-in"])
        .arg(&tree.operator.cert)
        .arg("-inkey")
        .arg(&tree.operator.key)
        .arg("-out")
        .arg(&p12));
    run(Command::new("pk12util")
        .args(["-d", &sql, "-W", "", "-i"])
        .arg(&p12));
    run(Command::new("certutil")
        .args(["-d", &sql, "-A", "-t", "C,,", "-n", "rsnet-ca", "-i"])
        .arg(&tree.operator.ca));
}

/// `[[id, liveness, version]]` of every node the page's tree shows.
const NODES: &str = "JSON.stringify(Array.from(document.querySelectorAll('#tree [data-node]')).map(e => \
    [e.dataset.node, e.dataset.liveness, (e.querySelector(':scope > .version') || {}).textContent || '']))";

fn nodes(v: &Value) -> Vec<(String, String, String)> {
    serde_json::from_str::<Vec<(String, String, String)>>(v.as_str().unwrap_or("[]"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_the_live_tree_and_a_killed_proxy_turns_stale_without_a_reload() {
    let dir = tempdir("admin-page");
    let mut tree = tokio::task::block_in_place(|| {
        Tree::start(
            &dir,
            &Spec {
                heartbeat_s: 2,
                ..Spec::demo()
            },
        )
    })
    .expect("the demo tree starts");
    tree.remove_on_drop = true;
    let op = tree.operator_target().expect("operator target");
    // Every node has reported once before the page is loaded.
    rsnet_tests::wait_for("7 nodes alive", Duration::from_secs(30), || async {
        let (_, v) = json_call(&op, http::Method::GET, "/api/v1/components", None)
            .await
            .ok()?;
        let alive = v["components"]
            .as_array()?
            .iter()
            .filter(|c| c["liveness"] == "alive")
            .count();
        (alive == 7).then_some(())
    })
    .await;
    let url = format!(
        "https://127.0.0.1:{}/",
        tree.nodes[0].addr.expect("the appserver's address").port()
    );
    let home = dir.join("browser");
    std::fs::create_dir_all(&home).expect("browser home");
    nss_with_operator(&home, &tree);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let version = rsnet_common::VERSION;

    let p3 = tree.index("acme.p3").expect("acme.p3");
    tokio::task::block_in_place(|| {
        let mut b = Browser::start(&home);
        b.open(&url);
        // All 7 nodes, each with this build's version, alive.
        let shown = b.wait("7 nodes on the page", NODES, Duration::from_secs(30), |v| {
            nodes(v).len() == 7
        });
        let shown = nodes(&shown);
        for id in [
            "provider.app",
            "acme.mlm1",
            "acme.mlm2",
            "acme.p1",
            "acme.p2",
            "acme.p3",
            "acme.p4",
        ] {
            let n = shown
                .iter()
                .find(|n| n.0 == id)
                .unwrap_or_else(|| panic!("{id} not on the page: {shown:?}"));
            assert_eq!((n.1.as_str(), n.2.as_str()), ("alive", version), "{id}");
        }
        // The script follows the stream: the badge says so, and the
        // recent messages arrived.
        b.wait(
            "the page live",
            "document.querySelector('#live').textContent",
            Duration::from_secs(15),
            |v| v == "live",
        );
        b.wait(
            "recent messages in the table",
            "document.querySelectorAll('#messages tbody tr').length",
            Duration::from_secs(15),
            |v| v.as_u64().unwrap_or(0) > 0,
        );
        b.screenshot(&shots.join("admin-page-alive.png"));

        // A proxy killed: stale on the same page, with no reload (a
        // reload would drop the mark).
        b.eval("window.rsnetMark = 'kept'");
        tree.kill9(p3);
        let liveness = "document.querySelector('#tree [data-node=\"acme.p3\"]').dataset.liveness";
        b.wait(
            "acme.p3 stale on the page",
            liveness,
            Duration::from_secs(30),
            |v| v == "stale",
        );
        assert_eq!(b.eval("window.rsnetMark"), "kept", "the page was reloaded");
        let others = nodes(&b.eval(NODES));
        assert!(
            others
                .iter()
                .filter(|n| n.0 != "acme.p3")
                .all(|n| n.1 == "alive"),
            "{others:?}"
        );
        b.wait(
            "the stale event in the recent messages",
            "Array.from(document.querySelectorAll('#messages tbody tr.stale')).map(r => r.textContent).join(' ')",
            Duration::from_secs(15),
            |v| v.as_str().is_some_and(|t| t.contains("acme.p3 is stale")),
        );
        b.screenshot(&shots.join("admin-page.png"));
        eprintln!("screenshots in {}", shots.display());
    });
}
