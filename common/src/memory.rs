//! A budget for request bodies held in memory, overall and per peer
//! identity (DESIGN.md §9, hardening).
//!
//! Each exchange POST is bounded on its own (16 MiB), but without a budget
//! across requests, many connections with one valid certificate can each
//! send a large body at once: 48 bodies of 13 MiB took an MLM from 16 MiB
//! to 1.1 GiB of resident memory. A parent therefore **reserves** a body's
//! bytes before it reads any of it, from a budget for all peers and from a
//! share for this peer identity, and holds the reservation until the
//! body's messages have been through its stages. A long-poll's wait holds
//! none: idle children waiting by the thousand hold no body memory. A
//! request that does not fit waits a little (in arrival order), then is
//! refused with 503 and a retry-after; nothing of it is read.
//!
//! A body with a `Content-Length` reserves that; one without (chunked)
//! reserves the largest an envelope may be.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::id::ComponentId;
use crate::limits::MAX_ENVELOPE_BYTES;
use crate::metrics::{Counter, Registry};

/// Default budget for all bodies held at once: 64 MiB.
pub const DEFAULT_BODY_MEMORY: u64 = 64 << 20;
/// How long a request waits for room before it is refused.
pub const WAIT: Duration = Duration::from_secs(2);
/// What a refused sender is told to wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Budget unit: permits are KiB, so any size fits a semaphore.
const UNIT: u64 = 1024;

/// Why a body was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Larger than any body may be.
    #[error("body of {0} bytes is over the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(u64),
    /// No room within [`WAIT`].
    #[error("{0} bytes of request bodies are held in memory already; retry later")]
    Busy(u64),
}

/// Bytes reserved for one body; given back on drop.
pub struct Reservation {
    _all: OwnedSemaphorePermit,
    _peer: OwnedSemaphorePermit,
}

/// See the module docs.
pub struct BodyBudget {
    total: u64,
    per_peer: u64,
    all: Arc<Semaphore>,
    peers: Mutex<HashMap<ComponentId, Arc<Semaphore>>>,
    refused: Counter,
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl BodyBudget {
    /// A budget of `total` bytes for all bodies at once, of which one peer
    /// identity may hold a quarter (at least one whole envelope).
    pub fn new(total: u64, metrics: &Registry) -> Arc<BodyBudget> {
        let total = total.max(MAX_ENVELOPE_BYTES);
        let per_peer = (total / 4).max(MAX_ENVELOPE_BYTES);
        let b = Arc::new(BodyBudget {
            total,
            per_peer,
            all: Arc::new(Semaphore::new(units(total) as usize)),
            peers: Mutex::new(HashMap::new()),
            refused: metrics.counter(
                "rsnet_body_budget_refused_total",
                "requests refused because the memory budget for bodies was full",
            ),
        });
        let w = Arc::downgrade(&b);
        metrics.gauge(
            "rsnet_body_budget_held_bytes",
            "request body bytes reserved in memory now",
            move || {
                w.upgrade().map_or(0.0, |b| {
                    (u64::from(units(b.total)) - b.all.available_permits() as u64) as f64
                        * UNIT as f64
                })
            },
        );
        b
    }

    fn share(&self, peer: &ComponentId) -> Arc<Semaphore> {
        let mut m = match self.peers.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        // Shares nobody holds are forgotten, so the map stays as small as
        // the set of peers sending at once.
        if m.len() > 1024 {
            let full = units(self.per_peer) as usize;
            m.retain(|_, s| s.available_permits() < full);
        }
        m.entry(peer.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(units(self.per_peer) as usize)))
            .clone()
    }

    /// Reserves room for a body of `len` bytes (`None`: unknown) from
    /// `peer`, waiting up to [`WAIT`].
    ///
    /// # Errors
    /// [`Refused`]: too large, or no room in time.
    pub async fn reserve(
        &self,
        peer: &ComponentId,
        len: Option<u64>,
    ) -> Result<Reservation, Refused> {
        let bytes = len.unwrap_or(MAX_ENVELOPE_BYTES);
        if bytes > MAX_ENVELOPE_BYTES {
            return Err(Refused::TooLarge(bytes));
        }
        let n = units(bytes.max(1));
        let share = self.share(peer);
        let got = tokio::time::timeout(WAIT, async {
            // The peer's own share first: one busy peer waits on itself,
            // not in everyone's line.
            let p = share.acquire_many_owned(n).await.ok()?;
            let a = self.all.clone().acquire_many_owned(n).await.ok()?;
            Some(Reservation { _all: a, _peer: p })
        })
        .await;
        match got {
            Ok(Some(r)) => Ok(r),
            _ => {
                self.refused.inc();
                Err(Refused::Busy(self.total))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ComponentId {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_peer_cannot_take_the_whole_budget_and_others_still_get_in() {
        let b = BodyBudget::new(64 << 20, &Registry::default());
        // One peer's share is 16 MiB: its first 13 MiB body fits, its
        // second waits and is refused.
        let r1 = b.reserve(&id("acme.p1"), Some(13 << 20)).await.unwrap();
        let e = b.reserve(&id("acme.p1"), Some(13 << 20)).await.err();
        assert_eq!(e, Some(Refused::Busy(64 << 20)));
        // Another peer is admitted meanwhile.
        let r2 = b.reserve(&id("acme.p2"), Some(1 << 20)).await.unwrap();
        drop(r1);
        let r3 = b.reserve(&id("acme.p1"), Some(13 << 20)).await.unwrap();
        drop((r2, r3));
        assert_eq!(
            b.reserve(&id("acme.p1"), Some(MAX_ENVELOPE_BYTES + 1))
                .await
                .err(),
            Some(Refused::TooLarge(MAX_ENVELOPE_BYTES + 1))
        );
        // Unknown length reserves a whole envelope.
        let _r = b.reserve(&id("acme.p3"), None).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_budget_bounds_many_peers_together() {
        let b = BodyBudget::new(64 << 20, &Registry::default());
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(
                b.reserve(&id(&format!("acme.p{i}")), Some(16 << 20))
                    .await
                    .unwrap(),
            );
        }
        assert!(b.reserve(&id("acme.p9"), Some(1 << 20)).await.is_err());
        held.pop();
        assert!(b.reserve(&id("acme.p9"), Some(1 << 20)).await.is_ok());
    }
}
