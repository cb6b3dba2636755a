//! Liveness events: a component that goes silent is reported, and so is
//! its return.
//!
//! Twice a second the watcher asks the [`Topology`] which components have
//! changed ([`Topology::judge`]): silent for more than `missed_heartbeats`
//! of the intervals they promised (stale), or heard again (recovered).
//! Each change becomes an `event` of class `infrastructure`, subclass
//! `stale` or `recovered`, from the appserver, stored and streamed like
//! everything else; its data is JSON naming the component, so a service
//! module can act on it without reading the text. The event and the
//! component's new state are written in one commit: after a crash the
//! store holds both or neither, and the change is found again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rsnet_common::heartbeat;
use rsnet_common::id::ComponentId;
use rsnet_common::metrics::Registry;
use rsnet_common::model::{Message, Timestamp};
use rsnet_common::server::Shutdown;
use serde::Deserialize;

use crate::ingest::Ingest;
use crate::topology::{Change, Liveness, Topology};

/// Subclass of the event a component's silence raises.
pub const STALE: &str = "stale";
/// Subclass of the event its return raises.
pub const RECOVERED: &str = "recovered";
/// How often the watcher judges.
const TICK: Duration = Duration::from_millis(500);

/// `[liveness]` in the appserver's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessConfig {
    /// A component is stale once nothing from or through it was stored for
    /// this many of its heartbeat intervals. Default 2.
    #[serde(default = "default_missed")]
    pub missed_heartbeats: u32,
}

fn default_missed() -> u32 {
    2
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            missed_heartbeats: default_missed(),
        }
    }
}

impl LivenessConfig {
    /// Collects what is wrong.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if !(1..=100).contains(&self.missed_heartbeats) {
            errors.push("liveness.missed_heartbeats: must be 1-100".into());
        }
    }
}

/// The event that reports `change`, from the appserver `me`.
pub fn event(me: &ComponentId, change: &Change) -> Message {
    let secs = change.silent_ms as f64 / 1000.0;
    let (subclass, text) = match change.to {
        Liveness::Stale => (
            STALE,
            format!(
                "{} is stale: not heard for {secs:.1} s (heartbeat every {} s)",
                change.id, change.interval_s
            ),
        ),
        Liveness::Alive => (
            RECOVERED,
            format!("{} is heard again after {secs:.1} s stale", change.id),
        ),
    };
    let data = serde_json::json!({
        "component": change.id.as_str(),
        "liveness": change.to.as_str(),
        "silent_ms": change.silent_ms,
        "interval_s": change.interval_s,
    });
    heartbeat::event(me, subclass, text, &data).with_hop(me)
}

/// Judges the topology every [`TICK`] until `shutdown`, storing an event
/// for each change.
pub async fn watch_until_shutdown(
    me: ComponentId,
    topology: Arc<Mutex<Topology>>,
    ingest: Arc<Ingest>,
    cfg: LivenessConfig,
    metrics: Registry,
    mut shutdown: Shutdown,
) {
    let stale = metrics.counter(
        "rsnet_liveness_stale_total",
        "components reported stale (silent past their allowance)",
    );
    let recovered = metrics.counter(
        "rsnet_liveness_recovered_total",
        "stale components reported heard again",
    );
    let t = topology.clone();
    metrics.gauge(
        "rsnet_components_stale",
        "components stale now",
        move || t.lock().map_or(0, |t| t.stale()) as f64,
    );
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let changes = topology
            .lock()
            .map(|mut t| t.judge(Timestamp::now(), cfg.missed_heartbeats))
            .unwrap_or_default();
        if changes.is_empty() {
            continue;
        }
        let events = changes.iter().map(|c| event(&me, c)).collect();
        let state = changes.iter().map(|c| c.record.clone()).collect();
        match ingest.store_own(events, state).await {
            Ok(()) => {
                for c in &changes {
                    match c.to {
                        Liveness::Stale => stale.inc(),
                        Liveness::Alive => recovered.inc(),
                    }
                    tracing::warn!(component = %c.id, liveness = c.to.as_str(), silent_ms = c.silent_ms, "liveness changed");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "liveness events not stored; judged again");
                if let Ok(mut t) = topology.lock() {
                    for c in &changes {
                        t.undo(c);
                    }
                }
            }
        }
    }
}
