//! What control actions may do to an MLM ([`rsnet_common::control`]).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rsnet_common::control::Controlled;
use rsnet_common::forward::Outbox;
use rsnet_common::heartbeat::StatusTree;
use rsnet_common::id::ComponentId;

/// The MLM as control actions see it.
pub struct MlmNode {
    /// Its ID.
    pub me: ComponentId,
    /// Its own spool front (heartbeats).
    pub outbox: Arc<Outbox>,
    /// Its config file.
    pub config: Option<PathBuf>,
    /// Its status tree.
    pub tree: Box<dyn Fn() -> StatusTree + Send + Sync>,
}

impl Controlled for MlmNode {
    fn id(&self) -> &ComponentId {
        &self.me
    }

    fn heartbeat_now(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            let t = (self.tree)();
            let summary = format!(
                "uptime {}s, spool {} messages",
                t.uptime_s,
                t.spool.map(|s| s.messages).unwrap_or(0)
            );
            self.outbox
                .push(&[t.heartbeat()])
                .await
                .map_err(|e| e.to_string())?;
            Ok(summary)
        })
    }

    fn set_config(&self, fragment: &str) -> Result<String, String> {
        let p = self.config.as_ref().ok_or("config file unknown")?;
        rsnet_common::control::merge_config(p, fragment, |f| {
            crate::Config::load(f)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn config_text(&self) -> Result<String, String> {
        let p = self.config.as_ref().ok_or("config file unknown")?;
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    }
}
