//! What control actions may do to a proxy ([`rsnet_common::control`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rsnet_common::control::{Controlled, NodeBase};
use rsnet_common::forward::Forwarder;
use rsnet_common::id::ComponentId;
use rsnet_common::store::{delete_async, put_async, KvStore, StoreError};

use crate::instances::Instances;

/// KV key holding `off` while an operator has forwarding disabled, so the
/// choice survives a restart.
const FORWARDING: &str = "control/forwarding";

/// The proxy as control actions see it.
pub struct ProxyNode {
    base: NodeBase,
    forwarder: Arc<Forwarder>,
    instances: Arc<Instances>,
    kv: Arc<dyn KvStore>,
}

impl ProxyNode {
    /// Wraps the proxy's parts; restores a persisted "forwarding disabled".
    ///
    /// # Errors
    /// Store failures.
    pub fn new(
        base: NodeBase,
        forwarder: Arc<Forwarder>,
        instances: Arc<Instances>,
        kv: Arc<dyn KvStore>,
    ) -> Result<Arc<ProxyNode>, StoreError> {
        if kv.get(FORWARDING)?.is_some() {
            tracing::warn!("forwarding is disabled by an operator's control action");
            forwarder.set_enabled(false);
        }
        Ok(Arc::new(ProxyNode {
            base,
            forwarder,
            instances,
            kv,
        }))
    }
}

impl Controlled for ProxyNode {
    fn id(&self) -> &ComponentId {
        self.base.id()
    }
    fn control_key(&self) -> Option<&rsnet_common::release::ReleasePublicKey> {
        self.base.control_key()
    }

    fn heartbeat_now(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            let f = format!(", forwarding {}", self.forwarding());
            self.base.heartbeat(&f).await
        })
    }

    fn config_text(&self) -> Result<String, String> {
        self.base.config_text()
    }

    fn set_config(&self, fragment: &str) -> Result<String, String> {
        self.base.set_config(fragment)
    }

    fn forwarding(&self) -> &'static str {
        if self.forwarder.is_enabled() {
            "on"
        } else {
            "off"
        }
    }

    fn set_forwarding(
        &self,
        on: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let r = if on {
                delete_async(&self.kv, vec![FORWARDING.into()]).await
            } else {
                put_async(&self.kv, vec![(FORWARDING.into(), b"off".to_vec())]).await
            };
            r.map_err(|e| e.to_string())?;
            self.forwarder.set_enabled(on);
            Ok(())
        })
    }

    fn set_instance<'a>(
        &'a self,
        id: &'a ComponentId,
        on: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(self.instances.set_enabled(id, on))
    }
}
