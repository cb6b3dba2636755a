//! `rsnet-proxy run|send|inbox|bulk|status --config FILE`
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Method, StatusCode};
use rsnet_common::client::{call, Target};
use rsnet_proxy::{run, Config};
use serde_json::{json, Value};

/// See [`rsnet_common::process`].
#[global_allocator]
static ALLOCATOR: rsnet_common::process::Allocator = rsnet_common::process::Allocator {};

#[derive(Parser)]
#[command(
    name = "rsnet-proxy",
    version,
    about = "rsnet proxy: spools and forwards alarms, events and data"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start; the size of the `send` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy daemon.
    Run {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Send one message through a running proxy's local API; prints its ID.
    Send {
        /// The TOML config file (to find the local API).
        #[arg(long)]
        config: PathBuf,
        /// alarm, event or data.
        kind: String,
        /// Text of an alarm or event.
        #[arg(long)]
        text: Option<String>,
        /// Class (default: the kind).
        #[arg(long)]
        class: Option<String>,
        /// Subclass.
        #[arg(long)]
        subclass: Option<String>,
        /// The support instance's key (hostname, IP, …).
        #[arg(long = "si")]
        support_instance: Option<String>,
        /// clear, info, warning, minor, major, critical.
        #[arg(long)]
        severity: Option<String>,
        /// raised, updated, cleared.
        #[arg(long)]
        state: Option<String>,
        /// MIME type of the payload.
        #[arg(long)]
        mime: Option<String>,
        /// Payload text.
        #[arg(long)]
        payload: Option<String>,
        /// 0..=9 (default 4).
        #[arg(long)]
        precedence: Option<u8>,
        /// Expire after this many seconds.
        #[arg(long)]
        expiry_s: Option<u64>,
        /// May be evicted by more important messages when the spool is full.
        #[arg(long)]
        non_persistent: bool,
        /// Client key: a resend with the same key within the proxy's window
        /// is answered with the first message's ID and not spooled again.
        /// Default: a fresh key for this call, so its own retries are safe.
        #[arg(long)]
        key: Option<String>,
        /// Keep retrying a POST that got no answer (proxy down or
        /// restarting) for up to this many seconds, with the same key.
        #[arg(long, default_value_t = 30)]
        retry_s: u64,
    },
    /// Print back-channel messages waiting in a running proxy's inbox, one
    /// JSON object per line; with --ack, acknowledge each as processed.
    Inbox {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Wait up to this many seconds for the first message (0..=60).
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Acknowledge what was printed as processed.
        #[arg(long)]
        ack: bool,
    },
    /// Upload a file through a running proxy: it is copied into the
    /// proxy's data directory, requested, and sent up as a bulk transfer.
    /// Shows progress (a bar on a terminal, plain lines otherwise) until the
    /// appserver stored it; exits 0 then, 1 if it failed.
    Bulk {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// The file.
        path: PathBuf,
        /// What it is (`core`, `explorer`, `log`; default `file`).
        #[arg(long)]
        class: Option<String>,
        /// The name to send (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Print the upload's ID once the proxy holds the file, and return.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print a running proxy's status as JSON.
    Status {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Enroll this host as a proxy with a one-time token (`rsnet-ctl
    /// enroll`): its key is made here and never leaves it; the certificate
    /// comes back through the parent. Writes DIR/tls and a ready config.
    Enroll {
        /// Parent URL (repeatable, failover order; the first is asked).
        #[arg(long = "parent", required = true)]
        parents: Vec<String>,
        /// The token (`ID:SECRET`).
        #[arg(long)]
        token: String,
        /// The provider CA certificate (PEM), to know the parent.
        #[arg(long)]
        ca: PathBuf,
        /// Directory for TLS material and data.
        #[arg(long)]
        dir: PathBuf,
        /// The config file to write (default DIR/proxy.toml; never replaced).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The provider's CRL, as this host receives it (written into the
        /// config: a revoked parent is refused).
        #[arg(long)]
        crl: Option<PathBuf>,
        /// The local API's address in the config.
        #[arg(long, default_value = "127.0.0.1:7070")]
        local_api: String,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("rsnet-proxy: {e}");
        ExitCode::from(2)
    })
}

async fn local(
    cfg: &Config,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), String> {
    let addr = cfg
        .local_api_addr()
        .ok_or("the proxy is not running (no local API address in its data_dir)")?;
    let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
    let (status, b) = call(&Target::Plain(addr), method, path, body).await?;
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&b) }));
    Ok((status, v))
}

/// How long one local API call may take before it counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// POSTs one keyed message, retrying with the same body (so the same key)
/// while the call gets no answer, for up to `patience`. A resend of a
/// message that was spooled before its answer was lost is recognised by the
/// proxy from its key and not spooled twice.
async fn send_with_retry(
    cfg: &Config,
    message: Value,
    patience: Duration,
) -> Result<(StatusCode, Value), String> {
    let deadline = std::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(200);
    loop {
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            local(cfg, Method::POST, "/v1/messages", Some(message.clone())),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")));
        match r {
            Ok(answer) => return Ok(answer),
            Err(e) if std::time::Instant::now() + delay > deadline => return Err(e),
            Err(e) => {
                eprintln!("rsnet-proxy: {e}; retrying in {delay:?} with the same key");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    rsnet_common::process::no_huge_pages();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Enroll {
            parents,
            token,
            ca,
            dir,
            config,
            crl,
            local_api,
        } => {
            let config = config.unwrap_or_else(|| dir.join("proxy.toml"));
            let setup = rsnet_common::enroll::Setup {
                parents: &parents,
                token: &token,
                ca: &ca,
                dir: &dir,
                role: rsnet_common::tls::Role::Proxy,
                hosts: &[],
                config: &config,
                crl: crl.as_deref(),
            };
            let data = dir.join("data");
            let r = rsnet_common::enroll::setup(setup, |tls| {
                rsnet_proxy::enrolled_config(&data, &local_api, tls, &parents)
            })
            .await;
            match r {
                Ok(id) => {
                    println!("enrolled as {} ({})", id.id, config.display());
                    println!("run: rsnet-proxy run --config {}", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rsnet-proxy: enroll: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run { config } => {
            rsnet_common::server::daemon_main("rsnet-proxy", &config, Config::load, run).await
        }
        Cmd::Send {
            config,
            kind,
            text,
            class,
            subclass,
            support_instance,
            severity,
            state,
            mime,
            payload,
            precedence,
            expiry_s,
            non_persistent,
            key,
            retry_s,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut m = json!({ "kind": kind });
            let fields = [
                ("text", text),
                ("class", class),
                ("subclass", subclass),
                ("support_instance", support_instance),
                ("severity", severity),
                ("state", state),
                ("mime", mime),
                ("payload", payload),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    m[k] = json!(v);
                }
            }
            if let Some(p) = precedence {
                m["precedence"] = json!(p);
            }
            if let Some(e) = expiry_s {
                m["expiry_s"] = json!(e);
            }
            if non_persistent {
                m["persistent"] = json!(false);
            }
            m["key"] = json!(key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()));
            match send_with_retry(&cfg, m, Duration::from_secs(retry_s)).await {
                Ok((StatusCode::ACCEPTED, v)) => {
                    for id in v["ids"].as_array().into_iter().flatten() {
                        println!("{}", id.as_str().unwrap_or_default());
                    }
                    if v.get("repeated").is_some() {
                        eprintln!("rsnet-proxy: a message with this key was already spooled; that is its ID");
                    }
                    ExitCode::SUCCESS
                }
                Ok((s, v)) => {
                    eprintln!(
                        "rsnet-proxy: {s}: {}",
                        v["error"].as_str().unwrap_or(&v.to_string())
                    );
                    ExitCode::from(if s == StatusCode::INSUFFICIENT_STORAGE {
                        3
                    } else {
                        1
                    })
                }
                Err(e) => {
                    eprintln!("rsnet-proxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Inbox {
            config,
            wait,
            limit,
            ack,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let path = format!("/v1/inbox?wait={wait}&limit={limit}");
            let msgs = match local(&cfg, Method::GET, &path, None).await {
                Ok((StatusCode::OK, v)) => v["messages"].as_array().cloned().unwrap_or_default(),
                Ok((s, v)) => {
                    eprintln!("rsnet-proxy: {s}: {}", v["error"].as_str().unwrap_or(""));
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("rsnet-proxy: {e}");
                    return ExitCode::FAILURE;
                }
            };
            for m in &msgs {
                println!("{m}");
            }
            if ack && !msgs.is_empty() {
                let acks: Vec<Value> = msgs
                    .iter()
                    .map(|m| json!({ "id": m["id"], "destination": m["destination"] }))
                    .collect();
                match local(
                    &cfg,
                    Method::POST,
                    "/v1/inbox/ack",
                    Some(json!({ "acks": acks })),
                )
                .await
                {
                    Ok((StatusCode::OK, v)) => eprintln!("acknowledged {}", v["acked"]),
                    Ok((s, v)) => {
                        eprintln!(
                            "rsnet-proxy: ack: {s}: {}",
                            v["error"].as_str().unwrap_or("")
                        );
                        return ExitCode::FAILURE;
                    }
                    Err(e) => {
                        eprintln!("rsnet-proxy: ack: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Bulk {
            config,
            path,
            class,
            name,
            no_wait,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match bulk_upload(&cfg, &path, class, name, no_wait).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("rsnet-proxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match local(&cfg, Method::GET, "/v1/status", None).await {
                Ok((_, v)) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rsnet-proxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `rsnet-proxy bulk`: hands the file to the proxy, then follows the upload.
async fn bulk_upload(
    cfg: &Config,
    path: &std::path::Path,
    class: Option<String>,
    name: Option<String>,
    no_wait: bool,
) -> Result<ExitCode, String> {
    use std::io::IsTerminal;
    let addr = cfg
        .local_api_addr()
        .ok_or("the proxy is not running (no local API address in its data_dir)")?;
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let name = match name {
        Some(n) => n,
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{}: not a file name", path.display()))?,
    };
    let mut q = format!("/v1/bulk?name={}", urlencode(&name));
    if let Some(c) = &class {
        q.push_str(&format!("&class={}", urlencode(c)));
    }
    // One key for every attempt: a resend after a lost answer is answered
    // with the first upload, not copied again.
    let key = uuid::Uuid::now_v7().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut delay = Duration::from_millis(200);
    let resp = loop {
        let body = rsnet_common::bulk::file_body(path, 0, Default::default(), 0)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let r = rsnet_common::client::send_body(
            &Target::Plain(addr),
            Method::POST,
            &q,
            body,
            &[
                ("content-type", "application/octet-stream".into()),
                ("content-length", size.to_string()),
                ("idempotency-key", key.clone()),
            ],
        )
        .await;
        match r {
            Ok(r) => break r,
            Err(e) if std::time::Instant::now() + delay > deadline => return Err(e),
            Err(e) => {
                eprintln!("rsnet-proxy: {e}; retrying in {delay:?} with the same key");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    };
    let status = resp.status();
    let b = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let v: Value = serde_json::from_slice(&b).unwrap_or(json!({}));
    if status != StatusCode::ACCEPTED {
        eprintln!(
            "rsnet-proxy: {status}: {}",
            v["error"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::from(
            if status == StatusCode::INSUFFICIENT_STORAGE {
                3
            } else {
                1
            },
        ));
    }
    let id = v["id"].as_str().unwrap_or_default().to_string();
    println!("{id}");
    if no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    });
    let (mut last_line, mut last_state) = (std::time::Instant::now(), String::new());
    let started = std::time::Instant::now();
    loop {
        let (s, v) = local(cfg, Method::GET, &format!("/v1/bulk/{id}"), None).await?;
        if s != StatusCode::OK {
            return Err(format!("{s}: {}", v["error"].as_str().unwrap_or("")));
        }
        let state = v["state"].as_str().unwrap_or("").to_string();
        let sent = v["sent"].as_u64().unwrap_or(0);
        let reason = v["reason"].as_str().unwrap_or("");
        match &bar {
            Some(b) => {
                b.set_position(sent);
                b.set_message(state.clone());
            }
            None => {
                if state != last_state || last_line.elapsed() >= Duration::from_secs(5) {
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    let rate = sent as f64 / secs;
                    let eta = if rate > 0.0 && sent < size {
                        format!("{:.0}s", (size - sent) as f64 / rate)
                    } else {
                        "-".into()
                    };
                    eprintln!(
                        "{id} {state} {sent}/{size} bytes {:.1} MB/s ETA {eta}{}",
                        rate / 1e6,
                        if reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({reason})")
                        }
                    );
                    last_line = std::time::Instant::now();
                }
            }
        }
        last_state = state.clone();
        match state.as_str() {
            "done" => {
                if let Some(b) = &bar {
                    b.finish_with_message("done");
                }
                return Ok(ExitCode::SUCCESS);
            }
            "failed" => {
                if let Some(b) = &bar {
                    b.abandon_with_message("failed");
                }
                eprintln!("rsnet-proxy: upload {id} failed: {reason}");
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
