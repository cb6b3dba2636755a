//! `rsnet-ctl`: the operator CLI over the appserver's operator API.
//!
//! Credentials come from `--tree DIR/tree.json` (as written by rsnet-demo),
//! or `--url`, `--ca`, `--cert`, `--key` (also `RSNET_URL`, `RSNET_CA`,
//! `RSNET_CERT`, `RSNET_KEY`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use http::Method;
use http_body_util::BodyExt;
use rsnet_common::client::{call, send, Target};
use rsnet_common::http_util::percent_encode;
use rsnet_common::tls::TlsPaths;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "rsnet-ctl", version, about = "Operator CLI for rsnet")]
struct Cli {
    /// tree.json of a running demo tree (supplies URL and credential);
    /// before the subcommand (`components --tree` is the tree view).
    #[arg(long)]
    tree: Option<PathBuf>,
    /// Appserver URL (https://host:port).
    #[arg(long, env = "RSNET_URL", global = true)]
    url: Option<String>,
    /// CA certificate.
    #[arg(long, env = "RSNET_CA", global = true)]
    ca: Option<PathBuf>,
    /// Operator certificate.
    #[arg(long, env = "RSNET_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Operator key.
    #[arg(long, env = "RSNET_KEY", global = true)]
    key: Option<PathBuf>,
    /// Print raw JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every component seen: liveness, role, version, parent path, last
    /// heartbeat; with --tree, as the tree they form.
    Components {
        /// Draw the tree: each component under its parent, with liveness,
        /// version and spool or queue depth.
        #[arg(long)]
        tree: bool,
    },
    /// The operators' audit log: who did what, when, and the answer
    /// (needs an `admin` operator certificate).
    Audit {
        /// The last this many entries (1..=10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Make a one-time enrollment token for a new proxy or MLM (needs an
    /// `admin` operator certificate); the token is printed once, give it
    /// to `rsnet-proxy enroll` (or `rsnet-mlm enroll`) on that host.
    /// With --list: every token's state and every enrolled component.
    Enroll {
        /// The component ID to enroll (e.g. acme.p9).
        #[arg(long, required_unless_present = "list")]
        id: Option<String>,
        /// proxy or mlm.
        #[arg(long, default_value = "proxy")]
        role: String,
        /// A message class it may send (repeatable; none: every class).
        #[arg(long = "class")]
        classes: Vec<String>,
        /// An MLM's scope (repeatable; default its customer).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A server name the MLM may ask for (repeatable; none: only
        /// localhost, 127.0.0.1, ::1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Seconds the token may wait to be used (default a day).
        #[arg(long)]
        expires_s: Option<u64>,
        /// Seconds each certificate lasts (default 365 days); it is renewed
        /// before it ends.
        #[arg(long)]
        cert_valid_s: Option<u64>,
        /// List tokens and enrolled components instead.
        #[arg(long)]
        list: bool,
    },
    /// Revoke a component (needs `admin`): its certificates (every hop
    /// refuses it within seconds), its enrollment, open tokens and upload
    /// grants.
    Revoke {
        /// The component ID.
        id: String,
    },
    /// Stored messages, oldest first.
    Messages {
        /// Source ID (includes its subtree).
        #[arg(long)]
        source: Option<String>,
        /// Class.
        #[arg(long)]
        class: Option<String>,
        /// Subclass.
        #[arg(long)]
        subclass: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Created before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (1..=1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a back-channel message to IDs and/or groups; prints its ID.
    Send {
        /// Destinations: component or support-instance IDs, `group:NAME`.
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// alarm, event or data.
        #[arg(long, default_value = "data")]
        kind: String,
        /// Class (default: the kind; `control` for control actions).
        #[arg(long)]
        class: Option<String>,
        /// Subclass (the action, for class `control`).
        #[arg(long)]
        subclass: Option<String>,
        /// Text of an alarm or event.
        #[arg(long)]
        text: Option<String>,
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
    },
    /// Groups: list all, or show, set (--members) or delete one.
    Groups {
        /// `group:NAME` or `NAME`; omit to list all.
        name: Option<String>,
        /// Replace the group's members with these IDs.
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        members: Vec<String>,
        /// Delete the group.
        #[arg(long)]
        delete: bool,
    },
    /// Where a back-channel message is, per final destination.
    Deliveries {
        /// The message ID `send` printed.
        id: String,
    },
    /// Uploads from proxies: list them, show one, or download its file.
    Uploads {
        /// An upload's ID; omit to list all.
        id: Option<String>,
        /// Only uploads from this source (and below it), when listing.
        #[arg(long)]
        source: Option<String>,
        /// Download the upload's file here (its SHA-256 is checked).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Releases: list them, show one, or publish a file.
    Releases {
        #[command(subcommand)]
        action: Option<ReleaseCmd>,
    },
    /// Follow the stream of stored messages (server-sent events), a
    /// compact line per message.
    #[command(visible_alias = "tail")]
    Watch {
        /// Class.
        #[arg(long)]
        class: Option<String>,
        /// Subclass.
        #[arg(long)]
        subclass: Option<String>,
        /// Resume after this sequence number (default: only new messages).
        #[arg(long)]
        after: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ReleaseCmd {
    /// Show one release: its rollout stage by stage, then each destination.
    Show {
        /// The release ID.
        id: String,
    },
    /// Start the next stage now (of a halted release, or one waiting).
    Resume {
        /// The release ID.
        id: String,
    },
    /// Stop a release and withdraw it from everything it was offered to.
    Cancel {
        /// The release ID.
        id: String,
    },
    /// Offer a release again to destinations (rollback to it).
    Pin {
        /// The release ID.
        id: String,
        /// `group:NAME` or component IDs.
        #[arg(long = "to", required = true)]
        to: Vec<String>,
    },
    /// Publish FILE: the appserver stores it and signs its manifest.
    Publish {
        /// The file.
        file: PathBuf,
        /// software, config or metadata.
        #[arg(long)]
        kind: String,
        /// Its version.
        #[arg(long)]
        version: String,
        /// Targets: `group:NAME` or component IDs.
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// What it updates (default: the kind); proxies keep two versions per item.
        #[arg(long)]
        item: Option<String>,
        /// Stages before the rest, in order: `group:NAME`, an ID, or `N%`.
        #[arg(long = "stage")]
        stages: Vec<String>,
        /// Percent of a stage that must succeed before the next starts (default 100).
        #[arg(long)]
        success: Option<u8>,
        /// Percent of a stage that may fail before the release halts (default 0).
        #[arg(long)]
        failure: Option<u8>,
        /// What counts as success: `delivered` (default) or `applied`.
        #[arg(long)]
        advance: Option<String>,
    },
}

fn print_release(v: &Value) {
    let m = &v["manifest"];
    let st = &v["status"];
    println!(
        "release {}  {} {} {} ({} bytes)",
        m["id"].as_str().unwrap_or(""),
        m["kind"].as_str().unwrap_or(""),
        m["item"].as_str().unwrap_or(""),
        m["version"].as_str().unwrap_or(""),
        m["size"]
    );
    let counts = |c: &Value| {
        c.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    if let Some(r) = st["rollout"].as_object() {
        println!(
            "rollout {} at stage {}; success {}% {}, failure {}%",
            r["state"].as_str().unwrap_or(""),
            r["stage"],
            r["success_pct"],
            r["success_is"].as_str().unwrap_or(""),
            r["failure_pct"]
        );
        println!("{:>5}  {:<24} {:>6}  STATES", "STAGE", "NAME", "DESTS");
        for (i, s) in r["stages"].as_array().into_iter().flatten().enumerate() {
            println!(
                "{:>5}  {:<24} {:>6}  {}",
                i + 1,
                s["name"].as_str().unwrap_or(""),
                s["destinations"],
                counts(&s["counts"])
            );
        }
        for h in r["history"].as_array().into_iter().flatten() {
            println!(
                "  {} {:<14} by {:<20} {}",
                h["at"].as_str().unwrap_or(""),
                h["action"].as_str().unwrap_or(""),
                h["by"].as_str().unwrap_or(""),
                h["detail"].as_str().unwrap_or("")
            );
        }
    }
    println!(
        "{:<28} {:<10} {:>12}  REASON",
        "DESTINATION", "STATE", "BYTES"
    );
    for (d, s) in st["destinations"].as_object().into_iter().flatten() {
        println!(
            "{:<28} {:<10} {:>12}  {}",
            d,
            s["state"].as_str().unwrap_or(""),
            s["bytes"]
                .as_u64()
                .map(|b| b.to_string())
                .unwrap_or_default(),
            s["reason"].as_str().unwrap_or("")
        );
    }
    for (d, s) in st["mlms"].as_object().into_iter().flatten() {
        println!("  via {d}: {}", s["state"].as_str().unwrap_or(""));
    }
}

fn target(cli: &Cli) -> Result<Target, String> {
    let (url, tls) = if let Some(t) = &cli.tree {
        let v: Value =
            serde_json::from_slice(&std::fs::read(t).map_err(|e| format!("{}: {e}", t.display()))?)
                .map_err(|e| format!("{}: {e}", t.display()))?;
        let op = &v["operator"];
        let p = |k: &str| {
            op[k]
                .as_str()
                .map(PathBuf::from)
                .ok_or(format!("{}: operator.{k} missing", t.display()))
        };
        let url = op["url"]
            .as_str()
            .ok_or("tree.json: operator.url missing")?
            .to_string();
        (
            url,
            TlsPaths {
                ca: p("ca")?,
                cert: p("cert")?,
                key: p("key")?,
                crl: None,
            },
        )
    } else {
        let need = |o: &Option<PathBuf>, n: &str| {
            o.clone().ok_or(format!("--{n} (or --tree) is required"))
        };
        let url = cli.url.clone().ok_or("--url (or --tree) is required")?;
        (
            url,
            TlsPaths {
                ca: need(&cli.ca, "ca")?,
                cert: need(&cli.cert, "cert")?,
                key: need(&cli.key, "key")?,
                crl: None,
            },
        )
    };
    let config = rsnet_common::tls::client_config(&tls).map_err(|e| e.to_string())?;
    Ok(Target::Tls {
        base: url,
        config: Arc::new(config),
    })
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

/// Components as the tree they form ([`rsnet_common::tree`]).
fn components_tree(list: &[Value]) -> String {
    let ids: Vec<&str> = list
        .iter()
        .map(|c| c["id"].as_str().unwrap_or(""))
        .collect();
    let parents: Vec<Option<&str>> = list
        .iter()
        .map(|c| c["parent_path"].get(0).and_then(Value::as_str))
        .collect();
    let root = list.iter().position(|c| c["role"] == "appserver");
    rsnet_common::tree::preorder(&ids, &parents, root)
        .iter()
        .map(|r| format!("{}{}\n", r.prefix(), component_line(&list[r.index])))
        .collect()
}

/// One component on one line: ID, role, version, liveness, and how full
/// its spool and queues are.
fn component_line(c: &Value) -> String {
    let mut s = c["id"].as_str().unwrap_or("").to_string();
    for f in ["role", "version"] {
        if let Some(v) = c[f].as_str() {
            s.push_str("  ");
            s.push_str(v);
        }
    }
    match c["liveness"].as_str() {
        Some("stale") => s.push_str(&format!(
            "  STALE since {}",
            c["liveness_since"].as_str().unwrap_or("?")
        )),
        Some(l) => {
            s.push_str("  ");
            s.push_str(l);
        }
        None => {}
    }
    for (what, key) in [("spool", "spool"), ("queued", "queues")] {
        let l = &c["status"][key];
        if let Some(n) = l["messages"].as_u64() {
            s.push_str(&format!(
                "  {what} {n} msgs/{} B",
                l["bytes"].as_u64().unwrap_or(0)
            ));
        }
    }
    s
}

fn summary(m: &Value) -> String {
    let c = &m["content"];
    let detail = c["text"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            c["mime"]
                .as_str()
                .map(|x| format!("[{x}, {} bytes]", c["size"]))
        })
        .unwrap_or_default();
    // One line per message, whatever the text holds.
    let mut detail: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if detail.chars().count() == 200 {
        detail.push('…');
    }
    format!(
        "{:>6}  {}  {:<18} {:<28} {:<8} {}",
        m["seq"],
        m["created"].as_str().unwrap_or(""),
        m["source"].as_str().unwrap_or(""),
        format!(
            "{}/{}",
            m["class"].as_str().unwrap_or(""),
            m["subclass"].as_str().unwrap_or("-")
        ),
        c["severity"].as_str().unwrap_or(""),
        detail
    )
}

async fn call_json(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let body = body.map(|b| ("application/json", bytes::Bytes::from(b.to_string())));
    let (status, b) = call(t, method, path, body).await?;
    let v: Value = serde_json::from_slice(&b).map_err(|e| format!("bad JSON from server: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            v["error"].as_str().unwrap_or(&v.to_string())
        ));
    }
    Ok(v)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(cli: Cli) -> Result<(), String> {
    let t = target(&cli)?;
    match &cli.cmd {
        Cmd::Enroll { list: true, .. } => {
            let v = call_json(&t, Method::GET, "/api/v1/enrollments", None).await?;
            if cli.json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<24} {:<6} {:<10} {:<26} CLASSES",
                "TOKEN FOR", "ROLE", "STATE", "EXPIRES"
            );
            for e in v["tokens"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<6} {:<10} {:<26} {}",
                    e["id"].as_str().unwrap_or(""),
                    e["role"].as_str().unwrap_or(""),
                    e["state"].as_str().unwrap_or(""),
                    e["expires"].as_str().unwrap_or(""),
                    classes_text(&e["classes"])
                );
            }
            println!();
            println!(
                "{:<24} {:<6} {:<8} {:<34} CLASSES",
                "ENROLLED", "ROLE", "REVOKED", "SERIAL"
            );
            for e in v["components"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<6} {:<8} {:<34} {}",
                    e["id"].as_str().unwrap_or(""),
                    e["role"].as_str().unwrap_or(""),
                    if e["revoked"] == true { "yes" } else { "no" },
                    e["serial"].as_str().unwrap_or(""),
                    classes_text(&e["classes"])
                );
            }
        }
        Cmd::Enroll {
            id,
            role,
            classes,
            scopes,
            hosts,
            expires_s,
            cert_valid_s,
            ..
        } => {
            let mut body = json!({ "id": id, "role": role, "classes": classes, "scopes": scopes, "hosts": hosts });
            if let Some(e) = expires_s {
                body["expires_s"] = json!(e);
            }
            if let Some(c) = cert_valid_s {
                body["cert_valid_s"] = json!(c);
            }
            let v = call_json(&t, Method::POST, "/api/v1/enrollments", Some(body)).await?;
            if cli.json {
                print_json(&v);
            } else {
                println!("{}", v["token"].as_str().unwrap_or(""));
                eprintln!(
                    "token for {} ({}), usable once until {}; it is not shown again",
                    v["id"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or(""),
                    v["expires"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Revoke { id } => {
            let v = call_json(
                &t,
                Method::POST,
                "/api/v1/revocations",
                Some(json!({ "id": id })),
            )
            .await?;
            if cli.json {
                print_json(&v);
            } else {
                println!(
                    "revoked {}: {} certificate(s), enrollment ended: {}, {} token(s) and {} upload grant(s) withdrawn",
                    id, v["certificates"], v["enrollment_ended"], v["tokens_withdrawn"], v["uploads_withdrawn"]
                );
            }
        }
        Cmd::Audit { limit } => {
            let v = call_json(
                &t,
                Method::GET,
                &format!("/api/v1/audit?limit={limit}"),
                None,
            )
            .await?;
            if cli.json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<26} {:<22} {:<7} {:>6}  WHAT",
                "AT", "WHO", "METHOD", "STATUS"
            );
            for e in v["entries"].as_array().into_iter().flatten() {
                println!(
                    "{:<26} {:<22} {:<7} {:>6}  {}",
                    e["at"].as_str().unwrap_or(""),
                    e["who"].as_str().unwrap_or(""),
                    e["method"].as_str().unwrap_or(""),
                    e["status"],
                    e["what"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Components { tree } => {
            let v = call_json(&t, Method::GET, "/api/v1/components", None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            let list = v["components"].as_array().cloned().unwrap_or_default();
            if *tree {
                print!("{}", components_tree(&list));
                return Ok(());
            }
            println!(
                "{:<22} {:<9} {:<10} {:<8} {:<30} LAST HEARTBEAT",
                "ID", "ROLE", "VERSION", "LIVENESS", "PARENT PATH"
            );
            for c in &list {
                let path: Vec<&str> = c["parent_path"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<22} {:<9} {:<10} {:<8} {:<30} {}",
                    c["id"].as_str().unwrap_or(""),
                    c["role"].as_str().unwrap_or("-"),
                    c["version"].as_str().unwrap_or("-"),
                    c["liveness"].as_str().unwrap_or("-"),
                    path.join(" > "),
                    c["last_heartbeat"].as_str().unwrap_or("-")
                );
            }
        }
        Cmd::Messages {
            source,
            class,
            subclass,
            since,
            until,
            after,
            limit,
        } => {
            let q = query(&[
                ("source", source.clone()),
                ("class", class.clone()),
                ("subclass", subclass.clone()),
                ("since", since.clone()),
                ("until", until.clone()),
                ("after", Some(after.to_string())),
                ("limit", Some(limit.to_string())),
            ]);
            let v = call_json(&t, Method::GET, &format!("/api/v1/messages?{q}"), None).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            for m in v["messages"].as_array().into_iter().flatten() {
                println!("{}", summary(m));
            }
            eprintln!("(next page: --after {})", v["next"]);
        }
        Cmd::Send {
            to,
            kind,
            class,
            subclass,
            text,
            mime,
            payload,
            precedence,
            expiry_s,
        } => {
            let mut body = json!({ "to": to, "kind": kind });
            let fields = [
                ("class", class.clone().map(Value::from)),
                ("subclass", subclass.clone().map(Value::from)),
                ("text", text.clone().map(Value::from)),
                ("mime", mime.clone().map(Value::from)),
                ("payload", payload.clone().map(Value::from)),
                ("precedence", precedence.map(Value::from)),
                ("expiry_s", expiry_s.map(Value::from)),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            if kind == "data" && payload.is_none() {
                body["payload"] = Value::from("");
            }
            let v = call_json(&t, Method::POST, "/api/v1/messages", Some(body)).await?;
            if cli.json {
                print_json(&v);
            } else {
                println!("{}", v["id"].as_str().unwrap_or(""));
                eprintln!("{} destinations: {}", v["destinations"], v["summary"]);
            }
        }
        Cmd::Groups {
            name,
            members,
            delete,
        } => {
            let Some(name) = name else {
                let v = call_json(&t, Method::GET, "/api/v1/groups", None).await?;
                if cli.json {
                    print_json(&v);
                    return Ok(());
                }
                for g in v["groups"].as_array().into_iter().flatten() {
                    let n = g["members"].as_array().map_or(0, Vec::len);
                    println!("{:<32} {:>6} members", g["name"].as_str().unwrap_or(""), n);
                }
                return Ok(());
            };
            let path = format!(
                "/api/v1/groups/{}",
                percent_encode(name.strip_prefix("group:").unwrap_or(name))
            );
            let v = if *delete {
                call_json(&t, Method::DELETE, &path, None).await?
            } else if !members.is_empty() {
                call_json(&t, Method::PUT, &path, Some(json!({ "members": members }))).await?
            } else {
                call_json(&t, Method::GET, &path, None).await?
            };
            print_json(&v);
        }
        Cmd::Deliveries { id } => {
            let v = call_json(
                &t,
                Method::GET,
                &format!("/api/v1/messages/{}/deliveries", percent_encode(id)),
                None,
            )
            .await?;
            if cli.json {
                print_json(&v);
                return Ok(());
            }
            let d = &v["delivery"];
            println!("{:<28} {:<10} {:<20} DETAIL", "DESTINATION", "STATE", "HOP");
            for (dest, st) in d["destinations"].as_object().into_iter().flatten() {
                println!(
                    "{:<28} {:<10} {:<20} {}",
                    dest,
                    st["state"].as_str().unwrap_or(""),
                    st["hop"].as_str().unwrap_or("-"),
                    st["reason"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Uploads { id, source, out } => {
            let Some(id) = id else {
                let q = query(&[("source", source.clone())]);
                let v = call_json(&t, Method::GET, &format!("/api/v1/uploads?{q}"), None).await?;
                if cli.json {
                    print_json(&v);
                    return Ok(());
                }
                println!(
                    "{:<38} {:<18} {:<10} {:<8} {:>12} {:>12}  FILE",
                    "ID", "SOURCE", "CLASS", "STATE", "SIZE", "RECEIVED"
                );
                for u in v["uploads"].as_array().into_iter().flatten() {
                    println!(
                        "{:<38} {:<18} {:<10} {:<8} {:>12} {:>12}  {}",
                        u["id"].as_str().unwrap_or(""),
                        u["source"].as_str().unwrap_or(""),
                        u["class"].as_str().unwrap_or(""),
                        u["state"].as_str().unwrap_or(""),
                        u["size"],
                        u["received"],
                        u["filename"].as_str().unwrap_or("")
                    );
                }
                return Ok(());
            };
            let path = format!("/api/v1/uploads/{}", percent_encode(id));
            match out {
                None => print_json(&call_json(&t, Method::GET, &path, None).await?),
                Some(out) => {
                    let n = download(&t, &format!("{path}/file"), out).await?;
                    eprintln!("{n} bytes written to {} (sha256 checked)", out.display());
                }
            }
        }
        Cmd::Releases { action } => match action {
            None => {
                let v = call_json(&t, Method::GET, "/api/v1/releases", None).await?;
                if cli.json {
                    print_json(&v);
                    return Ok(());
                }
                println!(
                    "{:<38} {:<9} {:<12} {:>12}  TARGET",
                    "ID", "KIND", "VERSION", "SIZE"
                );
                for r in v["releases"].as_array().into_iter().flatten() {
                    let m = &r["manifest"];
                    let to: Vec<&str> = m["target"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<38} {:<9} {:<12} {:>12}  {}",
                        m["id"].as_str().unwrap_or(""),
                        m["kind"].as_str().unwrap_or(""),
                        m["version"].as_str().unwrap_or(""),
                        m["size"],
                        to.join(",")
                    );
                }
            }
            Some(ReleaseCmd::Show { id }) => {
                let v = call_json(
                    &t,
                    Method::GET,
                    &format!("/api/v1/releases/{}", percent_encode(id)),
                    None,
                )
                .await?;
                if cli.json {
                    print_json(&v);
                } else {
                    print_release(&v);
                }
            }
            Some(ReleaseCmd::Resume { id }) | Some(ReleaseCmd::Cancel { id }) => {
                let what = if matches!(action, Some(ReleaseCmd::Resume { .. })) {
                    "resume"
                } else {
                    "cancel"
                };
                let v = call_json(
                    &t,
                    Method::POST,
                    &format!("/api/v1/releases/{}/{what}", percent_encode(id)),
                    None,
                )
                .await?;
                eprintln!("rollout {}", v["rollout"]["state"].as_str().unwrap_or(""));
            }
            Some(ReleaseCmd::Pin { id, to }) => {
                let q: Vec<String> = to
                    .iter()
                    .map(|t| format!("to={}", percent_encode(t)))
                    .collect();
                call_json(
                    &t,
                    Method::POST,
                    &format!(
                        "/api/v1/releases/{}/pin?{}",
                        percent_encode(id),
                        q.join("&")
                    ),
                    None,
                )
                .await?;
                eprintln!("pinned");
            }
            Some(ReleaseCmd::Publish {
                file,
                kind,
                version,
                to,
                item,
                stages,
                success,
                failure,
                advance,
            }) => {
                let mut q = query(&[
                    ("kind", Some(kind.clone())),
                    ("version", Some(version.clone())),
                    ("item", item.clone()),
                    ("success", success.map(|p| p.to_string())),
                    ("failure", failure.map(|p| p.to_string())),
                    ("advance", advance.clone()),
                ]);
                for t in to {
                    q.push_str(&format!("&to={}", percent_encode(t)));
                }
                for s in stages {
                    q.push_str(&format!("&stage={}", percent_encode(s)));
                }
                let size = std::fs::metadata(file)
                    .map_err(|e| format!("{}: {e}", file.display()))?
                    .len();
                let body = rsnet_common::bulk::file_body(file, 0, Default::default(), 0)
                    .await
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let resp = rsnet_common::client::send_body(
                    &t,
                    Method::POST,
                    &format!("/api/v1/releases?{q}"),
                    body,
                    &[
                        ("content-type", "application/octet-stream".into()),
                        ("content-length", size.to_string()),
                    ],
                )
                .await?;
                let status = resp.status();
                let b = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                let v: Value = serde_json::from_slice(&b).unwrap_or(json!({}));
                if !status.is_success() {
                    return Err(format!("{status}: {}", v["error"].as_str().unwrap_or("")));
                }
                if cli.json {
                    print_json(&v);
                } else {
                    println!("{}", v["manifest"]["id"].as_str().unwrap_or(""));
                }
            }
        },
        Cmd::Watch {
            class,
            subclass,
            after,
        } => {
            let after = match after {
                Some(a) => *a,
                None => call_json(&t, Method::GET, "/api/v1/messages?limit=1", None).await?["last"]
                    .as_u64()
                    .unwrap_or(0),
            };
            let q = query(&[
                ("class", class.clone()),
                ("subclass", subclass.clone()),
                ("after", Some(after.to_string())),
            ]);
            let resp = send(&t, Method::GET, &format!("/api/v1/stream?{q}"), None, &[]).await?;
            if !resp.status().is_success() {
                return Err(format!("stream: {}", resp.status()));
            }
            let mut body = resp.into_body();
            let mut buf = String::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    if let Some(d) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                        match serde_json::from_str::<Value>(d) {
                            Ok(m) if !cli.json => println!("{}", summary(&m)),
                            _ => println!("{d}"),
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Streams `path` into `out` (through `out.part`, renamed once the
/// SHA-256 the server names matches); the bytes written.
async fn download(t: &Target, path: &str, out: &std::path::Path) -> Result<u64, String> {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let resp = send(t, Method::GET, path, None, &[]).await?;
    let status = resp.status();
    let want = resp
        .headers()
        .get("x-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = resp.into_body();
    if !status.is_success() {
        let b = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let v: Value = serde_json::from_slice(&b).unwrap_or(json!({}));
        return Err(format!("{status}: {}", v["error"].as_str().unwrap_or("")));
    }
    let part = out.with_extension("part");
    let mut f = tokio::fs::File::create(&part)
        .await
        .map_err(|e| format!("{}: {e}", part.display()))?;
    let (mut n, mut h) = (0u64, sha2::Sha256::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(d) = frame.into_data() {
            h.update(&d);
            n += d.len() as u64;
            f.write_all(&d).await.map_err(|e| e.to_string())?;
        }
    }
    f.sync_all().await.map_err(|e| e.to_string())?;
    let got = rsnet_common::bulk::hex(&h.finalize());
    if want.as_deref() != Some(got.as_str()) {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(format!(
            "downloaded sha256 {got} is not the {want:?} the server named"
        ));
    }
    tokio::fs::rename(&part, out)
        .await
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(n)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rsnet-ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn classes_text(v: &Value) -> String {
    let c: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .collect();
    if c.is_empty() {
        "(every class)".into()
    } else {
        c.join(",")
    }
}
