//! What control actions may do to a proxy ([`rsnet_common::control`]).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rsnet_common::control::Controlled;
use rsnet_common::forward::{Forwarder, Outbox};
use rsnet_common::heartbeat::StatusTree;
use rsnet_common::id::ComponentId;
use rsnet_common::store::{KvStore, StoreError};

use crate::instances::Instances;

/// KV key holding `off` while an operator has forwarding disabled, so the
/// choice survives a restart.
const FORWARDING: &str = "control/forwarding";

/// The proxy as control actions see it.
pub struct ProxyNode {
    me: ComponentId,
    outbox: Arc<Outbox>,
    forwarder: Arc<Forwarder>,
    instances: Arc<Instances>,
    kv: Arc<dyn KvStore>,
    config: Option<PathBuf>,
    tree: Box<dyn Fn() -> StatusTree + Send + Sync>,
}

impl ProxyNode {
    /// Wraps the proxy's parts; restores a persisted "forwarding disabled".
    ///
    /// # Errors
    /// Store failures.
    pub fn new(
        me: ComponentId,
        outbox: Arc<Outbox>,
        forwarder: Arc<Forwarder>,
        instances: Arc<Instances>,
        kv: Arc<dyn KvStore>,
        config: Option<PathBuf>,
        tree: Box<dyn Fn() -> StatusTree + Send + Sync>,
    ) -> Result<Arc<ProxyNode>, StoreError> {
        if kv.get(FORWARDING)?.is_some() {
            tracing::warn!("forwarding is disabled by an operator's control action");
            forwarder.set_enabled(false);
        }
        Ok(Arc::new(ProxyNode {
            me,
            outbox,
            forwarder,
            instances,
            kv,
            config,
            tree,
        }))
    }
}

impl Controlled for ProxyNode {
    fn id(&self) -> &ComponentId {
        &self.me
    }

    fn heartbeat_now(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            let t = (self.tree)();
            let summary = format!(
                "uptime {}s, spool {} messages, forwarding {}",
                t.uptime_s,
                t.spool.map(|s| s.messages).unwrap_or(0),
                if self.forwarder.is_enabled() {
                    "on"
                } else {
                    "off"
                }
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

    fn forwarding(&self) -> &'static str {
        if self.forwarder.is_enabled() {
            "on"
        } else {
            "off"
        }
    }

    fn set_forwarding(&self, on: bool) -> Result<(), String> {
        let r = if on {
            self.kv.delete(&[FORWARDING.into()])
        } else {
            self.kv.put(vec![(FORWARDING.into(), b"off".to_vec())])
        };
        r.map_err(|e| e.to_string())?;
        self.forwarder.set_enabled(on);
        Ok(())
    }

    fn set_instance(&self, id: &ComponentId, on: bool) -> Result<(), String> {
        self.instances.set_enabled(id, on)
    }
}
