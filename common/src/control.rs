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
//! | `disable-forwarding`, `enable-forwarding` | proxy | stops or resumes moving the spool upward (messages keep being spooled) |
//! | `disable-instance`, `enable-instance` | support instance | the local API refuses, or again accepts, messages for it |
//!
//! Anything else is answered `failed` with "unknown action", so an operator
//! never waits for an effect that will not come.

use std::future::Future;
use std::pin::Pin;

use crate::envelope::Item;
use crate::id::ComponentId;
use crate::model::Response;

/// The class of control messages.
pub const CLASS: &str = "control";

/// What a node lets control actions do.
pub trait Controlled: Send + Sync + 'static {
    /// This node's ID.
    fn id(&self) -> &ComponentId;
    /// Spools a heartbeat now; returns a one-line summary.
    fn heartbeat_now(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
    /// The node's config file as text.
    fn config_text(&self) -> Result<String, String>;
    /// `on`, `off`, or `n/a` for a node that does not forward on its own.
    fn forwarding(&self) -> &'static str {
        "n/a"
    }
    /// Turns forwarding on or off (proxies).
    fn set_forwarding(&self, _on: bool) -> Result<(), String> {
        Err("this node does not forward on its own".into())
    }
    /// Enables or disables a support instance (proxies).
    fn set_instance(&self, _id: &ComponentId, _on: bool) -> Result<(), String> {
        Err("this node has no support instances".into())
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
        ("disable-forwarding", true) => node
            .set_forwarding(false)
            .map(|_| "forwarding disabled".into()),
        ("enable-forwarding", true) => node
            .set_forwarding(true)
            .map(|_| "forwarding enabled".into()),
        ("disable-instance", false) => node
            .set_instance(dest, false)
            .map(|_| format!("{dest} disabled")),
        ("enable-instance", false) => node
            .set_instance(dest, true)
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
