//! Control actions (DESIGN.md §5): back-channel messages of class `control`
//! that the receiving proxy or MLM carries out instead of queueing.
//!
//! The subclass names the action; the result goes upward as the
//! `response` the appserver's delivery view shows (`processed` with the
//! result in `reason`, or `failed` with why):
//!
//! | subclass | destination | effect |
//! |---|---|---|
//! | `ping` | proxy, MLM | answers `pong` |
//! | `get-status` | proxy, MLM | spools a heartbeat now; answers with the status tree summary |
//! | `get-config` | proxy, MLM | answers with the node's config file |
//! | `set-config` | proxy, MLM | merges the TOML in the message's `data` payload into the config file (validated first, written atomically); takes effect at the next restart |
//! | `disable-forwarding`, `enable-forwarding` | proxy | stops or resumes moving the spool upward (messages keep being spooled) |
//! | `disable-instance`, `enable-instance` | support instance | the local API refuses, or again accepts, messages for it |
//!
//! Anything else is answered `failed` with "unknown action", so an operator
//! never waits for an effect that will not come.
//!
//! # Exactly once
//!
//! A receiver never acts on a control message straight from the reply. It
//! first commits, in the one commit of that reply, the message's received
//! mark (so a resend from the parent is recognised and never acted on
//! again) and the message itself in the [`CONTROL`] pseudo-queue. Only then
//! does [`run_pending`] carry it out, spool its result upward, and remove
//! it from that queue. A crash after the commit and before the result was
//! spooled leaves it there, and [`run_pending`] carries it out at the next
//! start: every action above is idempotent (setting a state, reading one),
//! so that repeat of an interrupted action cannot do harm, and the result
//! is reported once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use crate::envelope::Item;
use crate::id::ComponentId;
use crate::model::Response;

/// The class of control messages.
pub const CLASS: &str = "control";

pub use crate::backchannel::queues::CONTROL;

/// A control message as it waits in the [`CONTROL`] pseudo-queue.
pub fn pending_record(item: &Item) -> crate::store::SpoolRecord {
    crate::store::SpoolRecord {
        id: item.header.id,
        precedence: item.header.qos.precedence,
        persistent: true,
        expiry: None,
        header: bytes::Bytes::from(crate::envelope::wire::encode_header(&item.header)),
        content: item.content.clone(),
    }
}

/// Carries out the control actions waiting in `queues`' [`CONTROL`]
/// pseudo-queue for `node`: each for every destination it names inside the
/// node, with the results spooled upward in one push, and only then removed
/// from the queue. See the module docs.
pub async fn run_pending(
    queues: &crate::backchannel::Queues,
    node: &dyn Controlled,
    outbox: &crate::forward::Outbox,
) {
    let me = node.id().clone();
    let taken = queues
        .take(CONTROL, usize::MAX, crate::limits::MAX_BATCH_MESSAGES)
        .await;
    if taken.records.is_empty() {
        return;
    }
    let mut reports = Vec::new();
    let mut done = Vec::new();
    for r in &taken.records {
        let header = match crate::envelope::wire::decode_header(&r.header) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(message = %r.id, error = %e, "pending control action does not parse; dropped");
                done.push(r.id);
                continue;
            }
        };
        let item = Item::of(header, r.content.clone());
        let dests: Vec<ComponentId> = match &item.header.direction {
            crate::model::Direction::Destination(d) => {
                d.ids.iter().filter(|x| x.is_within(&me)).cloned().collect()
            }
            crate::model::Direction::Source(_) => Vec::new(),
        };
        for dest in &dests {
            // Carried out only as the appserver sealed it, for this destination.
            let opened = crate::seal::open(
                node.control_key(),
                &item.header,
                &item.content,
                dest,
                crate::model::Timestamp::now(),
            );
            let answer = match opened {
                Ok((kind, content)) => {
                    let mut header = item.header.clone();
                    header.kind = kind;
                    act(node, dest, &Item::of(header, content)).await
                }
                Err(e) => {
                    tracing::warn!(message = %item.header.id, %dest, reason = %e, "control action refused");
                    Response::rejected(
                        item.header.id,
                        format!("control action not carried out: {e}"),
                    )
                }
            };
            reports.push(crate::model::Message::response(
                dest,
                crate::model::PROCESSED,
                answer,
                &me,
            ));
        }
        done.push(r.id);
    }
    if !reports.is_empty() {
        if let Err(e) = outbox.push(&reports).await {
            // Left pending: carried out (again) and reported at the next start.
            tracing::warn!(error = %e, "control results not spooled; the actions stay pending");
            return;
        }
    }
    queues.ack(CONTROL, &done).await;
}

/// What a node lets control actions do.
pub trait Controlled: Send + Sync + 'static {
    /// This node's ID.
    fn id(&self) -> &ComponentId;
    /// The key the appserver's seal on a control action is checked with
    /// (none: every control action is refused).
    fn control_key(&self) -> Option<&crate::release::ReleasePublicKey> {
        None
    }
    /// Spools a heartbeat now; returns a one-line summary.
    fn heartbeat_now(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
    /// The node's config file as text.
    fn config_text(&self) -> Result<String, String>;
    /// Merges `fragment` (TOML) into the config file; see [`merge_config`].
    fn set_config(&self, _fragment: &str) -> Result<String, String> {
        Err("this node cannot change its config".into())
    }
    /// `on`, `off`, or `n/a` for a node that does not forward on its own.
    fn forwarding(&self) -> &'static str {
        "n/a"
    }
    /// Turns forwarding on or off (proxies); durable.
    fn set_forwarding(
        &self,
        _on: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Err("this node does not forward on its own".into()) })
    }
    /// Enables or disables a support instance (proxies); durable.
    fn set_instance<'a>(
        &'a self,
        _id: &'a ComponentId,
        _on: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async { Err("this node has no support instances".into()) })
    }
}

/// What every node shares for control actions: its ID, spool front, config
/// file and status tree. An MLM is exactly this; a proxy wraps it.
pub struct NodeBase {
    /// The node's ID.
    pub me: ComponentId,
    /// Its spool front (for heartbeats on demand).
    pub outbox: Arc<crate::forward::Outbox>,
    /// Its config file.
    pub config: Option<PathBuf>,
    /// Its status tree.
    pub tree: Box<dyn Fn() -> crate::heartbeat::StatusTree + Send + Sync>,
    /// Its config loader, run on a candidate file before `set-config` saves it.
    pub validate: fn(&Path) -> Result<(), String>,
    /// The release public key: a control action is carried out only if
    /// the appserver sealed it with the release key ([`crate::seal`]).
    pub control_key: Option<crate::release::ReleasePublicKey>,
}

impl NodeBase {
    /// Spools a heartbeat now; returns a summary ending with `extra`.
    pub async fn heartbeat(&self, extra: &str) -> Result<String, String> {
        let t = (self.tree)();
        let summary = format!(
            "uptime {}s, spool {} messages{extra}",
            t.uptime_s,
            t.spool.map(|s| s.messages).unwrap_or(0)
        );
        self.outbox
            .push(&[t.heartbeat()])
            .await
            .map_err(|e| e.to_string())?;
        Ok(summary)
    }

    fn path(&self) -> Result<&Path, String> {
        self.config
            .as_deref()
            .ok_or_else(|| "config file unknown".into())
    }
}

impl Controlled for NodeBase {
    fn id(&self) -> &ComponentId {
        &self.me
    }
    fn control_key(&self) -> Option<&crate::release::ReleasePublicKey> {
        self.control_key.as_ref()
    }
    fn heartbeat_now(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(self.heartbeat(""))
    }
    fn config_text(&self) -> Result<String, String> {
        let p = self.path()?;
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    }
    fn set_config(&self, fragment: &str) -> Result<String, String> {
        merge_config(self.path()?, fragment, self.validate)
    }
}

/// Carries out the control message `item` for destination `dest` on `node`.
pub async fn act(node: &dyn Controlled, dest: &ComponentId, item: &Item) -> Response {
    let id = item.header.id;
    let action = item.header.subclass.as_deref().unwrap_or("");
    let is_node = dest == node.id();
    let result: Result<String, String> = match (action, is_node) {
        ("ping", true) => Ok("pong".into()),
        ("get-status", true) => node.heartbeat_now().await,
        ("get-config", true) => node.config_text(),
        ("set-config", true) => match item.content() {
            Ok(crate::model::Content::Data(d)) => match std::str::from_utf8(&d.payload) {
                Ok(fragment) => node.set_config(fragment),
                Err(_) => Err("set-config: the payload is not UTF-8 TOML".into()),
            },
            _ => Err("set-config: needs a data message whose payload is TOML".into()),
        },
        ("disable-forwarding", true) => node
            .set_forwarding(false)
            .await
            .map(|_| "forwarding disabled".into()),
        ("enable-forwarding", true) => node
            .set_forwarding(true)
            .await
            .map(|_| "forwarding enabled".into()),
        ("disable-instance", false) => node
            .set_instance(dest, false)
            .await
            .map(|_| format!("{dest} disabled")),
        ("enable-instance", false) => node
            .set_instance(dest, true)
            .await
            .map(|_| format!("{dest} enabled")),
        ("disable-instance" | "enable-instance", true) => Err(format!(
            "{action} is addressed to a support instance, not {dest}"
        )),
        (a, _) => Err(format!("unknown action {a:?} for {dest}")),
    };
    tracing::info!(message = %id, %dest, action, ok = result.is_ok(), "control action");
    match result {
        Ok(text) => Response {
            reason: Some(text),
            ..Response::accepted(id, None)
        },
        Err(why) => Response::rejected(id, why),
    }
}

/// Merges the TOML `fragment` into the config file at `path`: tables are
/// merged key by key, other values replaced. The result must pass
/// `validate` (the node's own loader, run on a temporary copy) before it
/// replaces the file (write, fsync, rename), so a bad change never lands.
///
/// # Errors
/// Unreadable file, fragment not TOML, or the merged config is invalid.
pub fn merge_config(
    path: &std::path::Path,
    fragment: &str,
    validate: impl Fn(&std::path::Path) -> Result<(), String>,
) -> Result<String, String> {
    use std::io::Write as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut base: toml::Table = text.parse().map_err(|e| format!("current config: {e}"))?;
    let patch: toml::Table = fragment.parse().map_err(|e| format!("payload: {e}"))?;
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let keys: Vec<String> = patch.keys().cloned().collect();
    merge(&mut base, patch);
    let out = toml::to_string(&base).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("toml.new");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(out.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    if let Err(e) = validate(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("refused, the result would not load: {e}"));
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!(
        "saved {} (changed: {}); takes effect at the next restart",
        path.display(),
        keys.join(", ")
    ))
}
