//! Parent outages, reported once the parent is reached again.
//!
//! While a node cannot reach its parent nothing it sends arrives, so the
//! outage can only be told afterwards. [`report_until_shutdown`] follows
//! the link's [`Reach`]: from the first request that failed to reach a
//! parent it samples, once a second, what the node held (its spool, and
//! for an MLM what it held back: children's messages it answered
//! "retry after", and the copies waiting in its back-channel queues); at
//! the first answer it spools an `event` of class `infrastructure`,
//! subclass [`PARENT_RESTORED`], saying for how long and how much, with
//! the same as JSON data. Outages shorter than [`REPORTED_FROM`] are
//! blips, not reported.

use std::sync::Arc;
use std::time::Duration;

use super::Outbox;
use crate::id::ComponentId;
use crate::link::{Link, Reach};
use crate::metrics::Counter;
use crate::model::{Message, Timestamp};
use crate::server::Shutdown;

/// Subclass of the report.
pub const PARENT_RESTORED: &str = "parent-restored";
/// Shortest outage reported.
pub const REPORTED_FROM: Duration = Duration::from_secs(5);
/// How often what the node holds is sampled during an outage.
const SAMPLE: Duration = Duration::from_secs(1);

/// What a node can say it held during an outage, beside its spool.
#[derive(Default)]
pub struct Holdings {
    /// Children's messages answered "retry after" (an MLM's relay), a
    /// counter read at both ends of the outage.
    pub deferred: Option<Counter>,
    /// Copies waiting in the back-channel queues for the nodes below
    /// (messages, bytes), sampled.
    pub queued: Option<Box<dyn Fn() -> (u64, u64) + Send + Sync>>,
}

/// The most held during one outage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Peak {
    spool_messages: u64,
    spool_bytes: u64,
    queued_messages: u64,
    queued_bytes: u64,
}

/// Follows `link` until `shutdown`, spooling a [`PARENT_RESTORED`] event
/// from `me` through `outbox` after each outage of at least
/// [`REPORTED_FROM`].
pub async fn report_until_shutdown(
    link: Arc<Link>,
    outbox: Arc<Outbox>,
    me: ComponentId,
    holdings: Holdings,
    mut shutdown: Shutdown,
) {
    let mut reach = link.reach();
    loop {
        // Wait for an outage.
        let (since, at) = loop {
            if let Reach::Down { since, at } = *reach.borrow_and_update() {
                break (since, at);
            }
            tokio::select! {
                r = reach.changed() => if r.is_err() { return },
                _ = shutdown.wait() => return,
            }
        };
        let deferred_before = holdings.deferred.as_ref().map(Counter::get);
        let mut peak = Peak::default();
        let mut tick = tokio::time::interval(SAMPLE);
        // Until the parent answers again.
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let s = outbox.spool().stats();
                    peak.spool_messages = peak.spool_messages.max(s.messages);
                    peak.spool_bytes = peak.spool_bytes.max(s.bytes);
                    if let Some(q) = &holdings.queued {
                        let (m, b) = q();
                        peak.queued_messages = peak.queued_messages.max(m);
                        peak.queued_bytes = peak.queued_bytes.max(b);
                    }
                    continue;
                }
                r = reach.changed() => if r.is_err() { return },
                _ = shutdown.wait() => return,
            }
            if *reach.borrow_and_update() == Reach::Up {
                break;
            }
        }
        let down = since.elapsed();
        if down < REPORTED_FROM {
            continue;
        }
        let deferred = deferred_before
            .zip(holdings.deferred.as_ref().map(Counter::get))
            .map(|(a, b)| b.saturating_sub(a));
        let m = report(&me, link.current_parent(), at, down, deferred, peak);
        tracing::warn!(
            parent = link.current_parent(),
            down_ms = down.as_millis() as u64,
            "parent reached again after an outage"
        );
        if let Err(e) = outbox.push(&[m]).await {
            tracing::warn!(error = %e, "outage report not spooled");
        }
    }
}

fn report(
    me: &ComponentId,
    parent: &str,
    at: Timestamp,
    down: Duration,
    deferred: Option<u64>,
    peak: Peak,
) -> Message {
    let mut text = format!(
        "parent {parent} out of reach for {:.1} s from {}; meanwhile the spool held up to {} messages ({} bytes)",
        down.as_secs_f64(),
        at.to_rfc3339(),
        peak.spool_messages,
        peak.spool_bytes,
    );
    if let Some(d) = deferred {
        text.push_str(&format!(", {d} messages from children were deferred"));
    }
    let mut data = serde_json::json!({
        "parent": parent,
        "down_since": at.to_rfc3339(),
        "down_ms": u64::try_from(down.as_millis()).unwrap_or(u64::MAX),
        "spool_peak_messages": peak.spool_messages,
        "spool_peak_bytes": peak.spool_bytes,
    });
    if let Some(d) = deferred {
        data["deferred_messages"] = d.into();
        data["queued_peak_messages"] = peak.queued_messages.into();
        data["queued_peak_bytes"] = peak.queued_bytes.into();
        text.push_str(&format!(
            ", and up to {} copies ({} bytes) waited for the nodes below",
            peak.queued_messages, peak.queued_bytes
        ));
    }
    crate::heartbeat::event(me, PARENT_RESTORED, text, &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Content;

    #[test]
    fn the_report_says_how_long_and_how_much() {
        let peak = Peak {
            spool_messages: 3,
            spool_bytes: 900,
            queued_messages: 2,
            queued_bytes: 400,
        };
        let m = report(
            &"acme.mlm1".parse().unwrap(),
            "https://app:8443",
            Timestamp(0),
            Duration::from_millis(34_200),
            Some(1234),
            peak,
        );
        assert_eq!(m.header.subclass.as_deref(), Some(PARENT_RESTORED));
        let Content::Event(e) = &m.content else {
            panic!("an event")
        };
        assert!(e.text.contains("out of reach for 34.2 s"), "{}", e.text);
        assert!(
            e.text.contains("1234 messages from children were deferred"),
            "{}",
            e.text
        );
        let d: serde_json::Value =
            serde_json::from_slice(&e.data.as_ref().unwrap().payload).unwrap();
        assert_eq!(d["down_ms"], 34_200);
        assert_eq!(d["deferred_messages"], 1234);
        assert_eq!(d["spool_peak_messages"], 3);
        assert_eq!(d["queued_peak_messages"], 2);
    }
}
