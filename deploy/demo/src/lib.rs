//! Builds and drives a whole local rsnet tree of real processes.
//!
//! Used by `rsnet-demo` and by the end-to-end tests, so both exercise the
//! same binaries, certificates and configs a user would. A [`Tree`] owns a
//! directory:
//!
//! ```text
//! DIR/pki/            CA, CRL, issued certificates (operator.pem/.key for rsnet-ctl)
//! DIR/ID/config.toml  one config per node; DIR/ID/data/ its store; DIR/logs/ID.log
//! DIR/tree.json       every node: id, role, parent, config, addresses, pid
//! ```
//!
//! Every listener binds port 0 at its first start (so trees run side by side
//! without clashing); addresses are read from each node's ready file, and
//! the port is then written into the node's config file, so a node restarted
//! from its own config comes back at the same address and its children
//! reconnect.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsnet_certs::Pki;
use rsnet_common::client::Target;
use rsnet_common::tls::{Role, TlsPaths};
use serde_json::json;

/// How long a node may take to write its ready file.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Customer ID (first label of every ID).
    pub customer: String,
    /// MLMs: (label, index of the parent MLM or None for the appserver).
    pub mlms: Vec<(String, Option<usize>)>,
    /// Proxies: (label, index of the parent MLM, or None for the appserver).
    pub proxies: Vec<(String, Option<usize>)>,
    /// Heartbeat interval of proxies and MLMs.
    pub heartbeat_s: u64,
    /// Extra `[uplink]` lines for proxies (e.g. exchange timeouts).
    pub proxy_uplink_extra: String,
    /// Extra `[uplink]` lines for MLMs (e.g. a forward proxy).
    pub mlm_uplink_extra: String,
    /// Extra sections for every proxy (e.g. `[bulk]`).
    pub proxy_extra: String,
    /// Extra `[releases]` lines for proxies (the section holds the public key).
    pub proxy_releases_extra: String,
    /// Extra sections for every MLM (e.g. `[backchannel]`).
    pub mlm_extra: String,
    /// Extra top-level lines for every MLM, before any section (e.g. `rules_file`).
    pub mlm_top: String,
    /// Extra `[releases]` lines for MLMs (the section holds the public key).
    pub mlm_releases_extra: String,
    /// Extra sections for the appserver (e.g. `[backchannel]`).
    pub appserver_extra: String,
    /// `[releases] max_bytes` of the appserver (default: the appserver's own).
    pub release_max_bytes: Option<u64>,
}

impl Spec {
    /// The demo's tree: 1 appserver, 2 MLMs, 4 proxies (two per MLM).
    pub fn demo() -> Spec {
        Spec {
            customer: "acme".into(),
            mlms: vec![("mlm1".into(), None), ("mlm2".into(), None)],
            proxies: vec![
                ("p1".into(), Some(0)),
                ("p2".into(), Some(0)),
                ("p3".into(), Some(1)),
                ("p4".into(), Some(1)),
            ],
            heartbeat_s: 10,
            proxy_uplink_extra: String::new(),
            proxy_extra: String::new(),
            proxy_releases_extra: String::new(),
            mlm_uplink_extra: String::new(),
            mlm_extra: String::new(),
            mlm_top: String::new(),
            mlm_releases_extra: String::new(),
            appserver_extra: String::new(),
            release_max_bytes: None,
        }
    }
}

/// One node process.
pub struct Node {
    /// Component ID.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Parent node's ID (None for the appserver).
    pub parent: Option<String>,
    /// Its config file.
    pub config: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Bound address: exchange (appserver, MLM) or local API (proxy).
    pub addr: Option<SocketAddr>,
    child: Option<Child>,
}

impl Node {
    /// The running process's ID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running tree.
pub struct Tree {
    /// Its directory.
    pub dir: PathBuf,
    /// The PKI.
    pub pki: Pki,
    /// All nodes: appserver first, then MLMs, then proxies.
    pub nodes: Vec<Node>,
    /// Operator credential for rsnet-ctl / the operator API.
    pub operator: TlsPaths,
    /// Remove `dir` when the tree is dropped (unless a thread is
    /// panicking: a failed test keeps its logs). Tests set it; the demo
    /// keeps its directory.
    pub remove_on_drop: bool,
    bin_dir: PathBuf,
}

/// Finds the directory holding the rsnet binaries: `RSNET_BIN_DIR`, or next
/// to (or one above) the running executable (target/debug, target/debug/deps).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("RSNET_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut d = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        if d.join("rsnet-appserver").exists() {
            return d;
        }
        d = d.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    exe.parent().map(Path::to_path_buf).unwrap_or_default()
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn tls_toml(t: &TlsPaths) -> String {
    format!(
        "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\ncrl = {:?}\n",
        t.ca,
        t.cert,
        t.key,
        t.crl.clone().unwrap_or_default()
    )
}

impl Tree {
    /// Creates certificates and configs in `dir` and starts every node,
    /// parents first, waiting until each is listening.
    ///
    /// # Errors
    /// Certificate, file or start-up failures (the log path is named).
    pub fn start(dir: &Path, spec: &Spec) -> Result<Tree, Error> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let pki = Pki::init(&dir.join("pki"), Some(&spec.customer))?;
        let tls_for = |id: &str, role: Role| -> Result<TlsPaths, Error> {
            let f = pki.issue(id, role, &[], &[])?;
            Ok(TlsPaths {
                ca: pki.ca(),
                cert: f.cert,
                key: f.key,
                crl: Some(pki.crl()),
            })
        };
        // The demo's operator may do everything (`--perm admin`).
        let f = pki.issue_with(
            "provider.operator",
            Role::Operator,
            &[],
            &[],
            &["admin".to_string()],
            &[],
        )?;
        let operator = TlsPaths {
            ca: pki.ca(),
            cert: f.cert,
            key: f.key,
            crl: Some(pki.crl()),
        };
        let mut tree = Tree {
            dir: dir.to_path_buf(),
            operator,
            nodes: Vec::new(),
            remove_on_drop: false,
            bin_dir: bin_dir(),
            pki: Pki::open(&dir.join("pki"))?,
        };

        let app_id = "provider.app".to_string();
        let t = tls_for(&app_id, Role::Appserver)?;
        let releases = format!(
            "[releases]\nkey = {:?}\n{}",
            tree.pki.release_key(),
            spec.release_max_bytes
                .map(|n| format!("max_bytes = {n}\n"))
                .unwrap_or_default()
        );
        // The appserver signs for nodes that enroll with a token.
        let enrollment = format!("[enrollment]\npki_dir = {:?}\n", dir.join("pki"));
        tree.add(app_id.clone(), Role::Appserver, None, |data| {
            format!(
                "data_dir = {data:?}\nlisten = \"127.0.0.1:0\"\n{}\n{releases}\n{enrollment}\n{}\n",
                tls_toml(&t),
                spec.appserver_extra
            )
        })?;
        tree.launch(0)?;

        let mlm_ids: Vec<String> = spec
            .mlms
            .iter()
            .map(|(l, _)| format!("{}.{l}", spec.customer))
            .collect();
        for (i, (_, parent)) in spec.mlms.iter().enumerate() {
            let parent_id = parent
                .map(|p| mlm_ids[p].clone())
                .unwrap_or_else(|| app_id.clone());
            let url = tree.url_of(&parent_id)?;
            let t = tls_for(&mlm_ids[i], Role::Mlm)?;
            let hb = spec.heartbeat_s;
            let (up, extra, top) = (&spec.mlm_uplink_extra, &spec.mlm_extra, &spec.mlm_top);
            // `[releases]` last (the release public key checks releases and
            // sealed control actions), so a test may append keys to it.
            let (public, rel) = (tree.pki.release_pub(), &spec.mlm_releases_extra);
            tree.add(mlm_ids[i].clone(), Role::Mlm, Some(parent_id), |data| {
                format!("data_dir = {data:?}\nlisten = \"127.0.0.1:0\"\nheartbeat_interval_s = {hb}\n{top}\n{}\n[uplink]\nparents = [\"{url}\"]\n{up}\n{extra}\n[releases]\npublic_key = {public:?}\n{rel}\n", tls_toml(&t))
            })?;
            let n = tree.nodes.len() - 1;
            tree.launch(n)?;
        }
        for (label, parent) in &spec.proxies {
            let parent_id = parent
                .map(|p| mlm_ids[p].clone())
                .unwrap_or_else(|| app_id.clone());
            let url = tree.url_of(&parent_id)?;
            tree.add_proxy(spec, label, &parent_id, &url)?;
        }
        // Proxies do not depend on each other: start them all, then wait.
        let first = 1 + spec.mlms.len();
        for i in first..tree.nodes.len() {
            tree.spawn(i)?;
        }
        for i in first..tree.nodes.len() {
            tree.wait_ready(i)?;
        }
        tree.write_tree_json()?;
        Ok(tree)
    }

    /// Adds (does not start) proxy `CUSTOMER.label` under the parent at `url`
    /// (named `parent_id` in `tree.json`); returns its index. Start it with
    /// [`Tree::launch`].
    ///
    /// # Errors
    /// Certificate or file failures.
    pub fn add_proxy(
        &mut self,
        spec: &Spec,
        label: &str,
        parent_id: &str,
        url: &str,
    ) -> Result<usize, Error> {
        let id = format!("{}.{label}", spec.customer);
        let f = self.pki.issue(&id, Role::Proxy, &[], &[])?;
        let t = TlsPaths {
            ca: self.pki.ca(),
            cert: f.cert,
            key: f.key,
            crl: Some(self.pki.crl()),
        };
        let (hb, extra) = (spec.heartbeat_s, spec.proxy_uplink_extra.clone());
        let (sections, rel) = (&spec.proxy_extra, &spec.proxy_releases_extra);
        let public = self.pki.release_pub();
        // `[releases]` last, so a test may append keys to it.
        self.add(id, Role::Proxy, Some(parent_id.to_string()), |data| {
            format!(
                "data_dir = {data:?}\nheartbeat_interval_s = {hb}\n[local_api]\nlisten = \"127.0.0.1:0\"\n{}\n[uplink]\nparents = [\"{url}\"]\n{extra}\n{sections}\n[releases]\npublic_key = {public:?}\n{rel}\n",
                tls_toml(&t)
            )
        })?;
        Ok(self.nodes.len() - 1)
    }

    fn add(
        &mut self,
        id: String,
        role: Role,
        parent: Option<String>,
        config: impl FnOnce(&Path) -> String,
    ) -> Result<(), Error> {
        let home = self.dir.join(&id);
        let data_dir = home.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let cfg = home.join("config.toml");
        std::fs::write(&cfg, config(&data_dir))?;
        let log = self.dir.join("logs").join(format!("{id}.log"));
        self.nodes.push(Node {
            id,
            role,
            parent,
            config: cfg,
            data_dir,
            log,
            addr: None,
            child: None,
        });
        Ok(())
    }

    /// Takes in a node configured elsewhere (an enrolled one, with the
    /// config its `enroll` wrote); returns its index. Start it with
    /// [`Tree::launch`].
    pub fn adopt(
        &mut self,
        id: &str,
        role: Role,
        parent: &str,
        config: PathBuf,
        data_dir: PathBuf,
    ) -> usize {
        let log = self.dir.join("logs").join(format!("{id}.log"));
        self.nodes.push(Node {
            id: id.to_string(),
            role,
            parent: Some(parent.to_string()),
            config,
            data_dir,
            log,
            addr: None,
            child: None,
        });
        self.nodes.len() - 1
    }

    /// The `https://` URL children use to reach node `id`.
    ///
    /// # Errors
    /// If there is no such node or it does not listen.
    pub fn url(&self, id: &str) -> Result<String, Error> {
        self.url_of(id)
    }

    /// Index of the node with `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn url_of(&self, id: &str) -> Result<String, Error> {
        let n = &self.nodes[self.index(id).ok_or("unknown parent")?];
        let a = n.addr.ok_or("parent has no address")?;
        Ok(format!("https://127.0.0.1:{}", a.port()))
    }

    fn spawn(&mut self, i: usize) -> Result<(), Error> {
        let n = &mut self.nodes[i];
        let bin = match n.role {
            Role::Appserver => "rsnet-appserver",
            Role::Mlm => "rsnet-mlm",
            _ => "rsnet-proxy",
        };
        let path = self.bin_dir.join(bin);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut cmd = Command::new(&path);
        if n.role == Role::Proxy {
            cmd.arg("run");
        }
        cmd.arg("--config")
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Never route test traffic through a proxy inherited from the environment.
        for v in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        n.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, i: usize) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let n = &mut self.nodes[i];
            let pid = n.pid().ok_or("not started")?;
            if let Some(r) = rsnet_common::ready::read(&n.data_dir) {
                if r.pid == pid {
                    n.addr = r.listen.values().next().copied();
                    return pin_port(n);
                }
            }
            if let Some(st) = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!(
                    "{} exited during start-up ({st}); see {}",
                    n.id,
                    n.log.display()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready within {START_TIMEOUT:?}; see {}",
                    n.id,
                    n.log.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `i` and waits until it listens.
    ///
    /// # Errors
    /// Start-up failure.
    pub fn launch(&mut self, i: usize) -> Result<(), Error> {
        self.spawn(i)?;
        self.wait_ready(i)
    }

    /// Kills node `i` with SIGKILL (no clean-up at all) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops node `i` with SIGTERM and waits up to `timeout` for it to exit.
    pub fn stop(&mut self, i: usize, timeout: Duration) -> bool {
        let Some(mut c) = self.nodes[i].child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Restarts node `i` from its config file, which holds the port it was
    /// given at its first start (so its children reconnect). A node still
    /// running is stopped first (SIGTERM, up to 10 s); one that was killed
    /// or stopped is just started.
    ///
    /// # Errors
    /// Start-up failure.
    pub fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.stop(i, Duration::from_secs(10));
        self.launch(i)
    }

    /// Indices of the proxies.
    pub fn proxies(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].role == Role::Proxy)
            .collect()
    }

    /// Node `i`'s own listener: the exchange listener of the appserver or
    /// an MLM (operator certificate), or a proxy's local API. Every one
    /// serves `/metrics`.
    ///
    /// # Errors
    /// Not running; TLS material problems.
    pub fn node_target(&self, i: usize) -> Result<Target, Error> {
        let n = &self.nodes[i];
        let a = n.addr.ok_or("node not running")?;
        Ok(match n.role {
            Role::Proxy => Target::Plain(a),
            _ => Target::Tls {
                base: format!("https://127.0.0.1:{}", a.port()),
                config: Arc::new(rsnet_common::tls::client_config(&self.operator)?),
            },
        })
    }

    /// The operator API target (appserver, operator certificate).
    ///
    /// # Errors
    /// TLS material problems.
    pub fn operator_target(&self) -> Result<Target, Error> {
        let a = self.nodes[0].addr.ok_or("appserver not running")?;
        Ok(Target::Tls {
            base: format!("https://127.0.0.1:{}", a.port()),
            config: Arc::new(rsnet_common::tls::client_config(&self.operator)?),
        })
    }

    /// Writes `DIR/tree.json` (see the crate docs).
    ///
    /// # Errors
    /// I/O.
    pub fn write_tree_json(&self) -> Result<(), Error> {
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id, "role": n.role.as_str(), "parent": n.parent,
                    "config": n.config, "data_dir": n.data_dir, "log": n.log,
                    "listen": n.addr.map(|a| a.to_string()), "pid": n.pid(),
                    "url": match n.role { Role::Proxy => n.addr.map(|a| format!("http://{a}")), _ => n.addr.map(|a| format!("https://127.0.0.1:{}", a.port())) },
                })
            })
            .collect();
        let app = self.nodes[0]
            .addr
            .map(|a| format!("https://127.0.0.1:{}", a.port()));
        let v = json!({
            "dir": self.dir,
            "nodes": nodes,
            "operator": { "url": app, "ca": self.operator.ca, "cert": self.operator.cert, "key": self.operator.key },
        });
        std::fs::write(self.dir.join("tree.json"), serde_json::to_vec_pretty(&v)?)?;
        Ok(())
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period), children first.
    pub fn shutdown(&mut self) {
        for i in (0..self.nodes.len()).rev() {
            self.stop(i, Duration::from_secs(5));
        }
    }
}

/// Writes the port node `n` was given at its first start into its config
/// file, so the node restarted from that file (by the demo, a test, or a
/// user) comes back at the same address and its children find it.
fn pin_port(n: &Node) -> Result<(), Error> {
    let Some(a) = n.addr else { return Ok(()) };
    let cfg = std::fs::read_to_string(&n.config)?;
    let pinned = cfg.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{}\"", a.port()),
    );
    if pinned != cfg {
        std::fs::write(&n.config, pinned)?;
    }
    Ok(())
}

impl Drop for Tree {
    fn drop(&mut self) {
        for i in (0..self.nodes.len()).rev() {
            self.kill9(i);
        }
        if self.remove_on_drop && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends messages to proxy `addr`'s local API; returns their IDs.
///
/// # Errors
/// Transport errors or a non-202 answer (with its body).
pub async fn send(addr: SocketAddr, messages: &[serde_json::Value]) -> Result<Vec<String>, String> {
    send_body(addr, json!({ "messages": messages }).to_string().into()).await
}

/// [`send`] of a body already written as the local API's JSON.
///
/// # Errors
/// As [`send`].
pub async fn send_body(addr: SocketAddr, body: bytes::Bytes) -> Result<Vec<String>, String> {
    let (status, b) = rsnet_common::client::call(
        &Target::Plain(addr),
        http::Method::POST,
        "/v1/messages",
        Some(("application/json", body)),
    )
    .await?;
    if status != http::StatusCode::ACCEPTED {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&b)));
    }
    let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
    Ok(v["ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_string))
        .collect())
}

/// Every stored message matching `query` (e.g. `class=alarm`), paging through the operator API.
///
/// # Errors
/// Transport or HTTP errors.
pub async fn stored(op: &Target, query: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let path = format!(
            "/api/v1/messages?limit=1000&after={after}{}{query}",
            if query.is_empty() { "" } else { "&" }
        );
        let (status, b) = rsnet_common::client::call(op, http::Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&b)));
        }
        let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
        let page = v["messages"].as_array().cloned().unwrap_or_default();
        let next = v["next"].as_u64().unwrap_or(after);
        out.extend(page);
        if next == after {
            return Ok(out);
        }
        after = next;
    }
}

/// One JSON call to the operator API or a local API: `body` is sent as
/// JSON; the answer's status and JSON body (or `{"raw": text}` if it is not JSON).
///
/// # Errors
/// Transport errors.
pub async fn json_call(
    target: &Target,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(http::StatusCode, serde_json::Value), String> {
    let body = body.map(|b| ("application/json", bytes::Bytes::from(b.to_string())));
    let (s, b) = rsnet_common::client::call(target, method, path, body).await?;
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&b) }));
    Ok((s, v))
}

/// The value of counter or gauge `name` on `target`'s `/metrics` (0 if absent).
///
/// # Errors
/// Transport or HTTP errors.
pub async fn metric(target: &Target, name: &str) -> Result<f64, String> {
    let (status, b) =
        rsnet_common::client::call(target, http::Method::GET, "/metrics", None).await?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&b)));
    }
    let text = String::from_utf8_lossy(&b);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0))
}

/// A test alarm payload for the local API.
pub fn alarm(text: &str, si: &str) -> serde_json::Value {
    json!({ "kind": "alarm", "class": "alarm", "subclass": "demo", "severity": "major", "text": text, "support_instance": si })
}
