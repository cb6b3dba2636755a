//! Storing what children send: validate, store once, answer. The
//! appserver's terminal pipeline stage.
//!
//! Each exchange POST becomes one request to a [`GroupCommit`] writer, so
//! concurrent children's batches share one transaction and one fsync. A
//! message is answered `accepted` only after that commit; a repeated
//! message ID is answered `accepted` again and not stored twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rsnet_common::envelope::Item;
use rsnet_common::id::ComponentId;
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::Content;
use rsnet_common::model::{Hop, Timestamp};
use rsnet_common::pipeline::{Exchange, Judged, Stage, StageFuture, Verdict};
use rsnet_common::release;
use rsnet_common::store::{Appended, GroupCommit, MessageStore, StoreError, StoredMessage};
use tokio::sync::watch;

use crate::deliveries::{Deliveries, Event};
use crate::topology::Topology;
use crate::uploads::Uploads;

type Batch = (Vec<StoredMessage>, Vec<(String, Vec<u8>)>);

/// The appserver's terminal stage: validate, store once, answer.
pub struct Ingest {
    me: ComponentId,
    topology: Arc<Mutex<Topology>>,
    deliveries: Arc<Deliveries>,
    uploads: Arc<Uploads>,
    releases: Arc<crate::releases::Releases>,
    writer: GroupCommit<Batch, Result<Vec<Appended>, StoreError>>,
    stored: Counter,
    duplicates: Counter,
    rejected: Counter,
}

impl Ingest {
    /// Starts the store writer over `messages`; returns the stage and the
    /// last committed sequence number, for subscribers.
    ///
    /// # Errors
    /// A writer thread that cannot start.
    pub fn start(
        me: ComponentId,
        messages: Arc<dyn MessageStore>,
        topology: Arc<Mutex<Topology>>,
        deliveries: Arc<Deliveries>,
        uploads: Arc<Uploads>,
        releases: Arc<crate::releases::Releases>,
        metrics: &Registry,
    ) -> std::io::Result<(Arc<Ingest>, watch::Receiver<u64>)> {
        let (tx, rx) = watch::channel(messages.last_seq());
        let m = messages.clone();
        let writer = GroupCommit::spawn("store-writer", move |batches: Vec<Batch>| {
            let sizes: Vec<usize> = batches.iter().map(|b| b.0.len()).collect();
            let (mut msgs, mut state) = (Vec::new(), Vec::new());
            for (m, s) in batches {
                msgs.extend(m);
                state.extend(s);
            }
            #[allow(clippy::disallowed_methods)] // on the store writer thread
            match m.append(msgs, state) {
                Ok(mut all) => {
                    let _ = tx.send(m.last_seq());
                    sizes
                        .into_iter()
                        .map(|n| Ok(all.drain(..n).collect()))
                        .collect()
                }
                Err(e) => sizes.iter().map(|_| Err(e.clone())).collect(),
            }
        })?;
        metrics.gauge(
            "rsnet_store_last_seq",
            "highest stored sequence number",
            move || messages.last_seq() as f64,
        );
        let ingest = Arc::new(Ingest {
            me,
            topology,
            deliveries,
            uploads,
            releases,
            writer,
            stored: metrics.counter("rsnet_store_stored_total", "messages stored"),
            duplicates: metrics.counter(
                "rsnet_store_duplicates_total",
                "repeated message IDs answered without storing",
            ),
            rejected: metrics.counter(
                "rsnet_exchange_rejected_total",
                "messages the appserver rejected as invalid content",
            ),
        });
        Ok((ingest, rx))
    }

    /// Validates and stores a screened batch, with the state the exchange
    /// taught (routes) and the topology it changed, in one commit; a verdict
    /// per message.
    ///
    /// # Durability
    /// Every `Absorb` is for a message committed with fsync.
    pub async fn ingest(&self, ex: &Exchange, items: Vec<Item>) -> Judged {
        let now = ex.received;
        let mut decided = Vec::new();
        let mut batch = Vec::with_capacity(items.len());
        let mut state = ex.persist.clone();
        let mut ids = Vec::with_capacity(items.len());
        let mut reports = Vec::new();
        // Bulk requests, by their place in `ids`: granted once stored.
        let mut bulk = Vec::new();
        // Release reports, likewise.
        let mut rel = Vec::new();
        // Content checks and encoding first, outside the topology lock, so
        // that concurrent exchanges do this work on every core at once.
        let checked: Vec<_> = items
            .into_iter()
            .map(|item| {
                let s = stored(&item, &self.me, now);
                (item, s)
            })
            .collect();
        {
            let mut topo = self.topology.lock().unwrap_or_else(|p| p.into_inner());
            for (item, checked) in checked {
                match checked {
                    Ok((s, content)) => {
                        match (content, item.header.source()) {
                            (Content::Response(r), Some(src)) => reports.push(Event::Reported {
                                origin: src.origin.clone(),
                                stage: item.header.subclass.clone(),
                                response: r,
                            }),
                            (Content::BulkRequest(b), Some(src)) => {
                                bulk.push((ids.len(), src.origin.clone(), b))
                            }
                            (c, Some(src)) if item.header.class == release::CLASS => {
                                if let Some(r) = release::Report::of(&c) {
                                    rel.push((ids.len(), src.origin.clone(), r));
                                }
                            }
                            _ => {}
                        }
                        topo.learn(&item.header, now, &mut state);
                        ids.push(item.header.id);
                        batch.push(s);
                    }
                    Err(reason) => decided.push((item.header.id, Verdict::reject(reason))),
                }
            }
        }
        self.rejected.add(decided.len() as u64);
        if batch.is_empty() && state.is_empty() {
            return Judged {
                forward: Vec::new(),
                decided,
            };
        }
        let delivery = self.deliveries.apply(reports);
        let (stored, delivery) = tokio::join!(self.writer.submit((batch, state)), delivery);
        if let Err(e) = delivery {
            tracing::warn!(error = %e, "delivery state not persisted");
        }
        match stored.and_then(|r| r) {
            Ok(results) => {
                // A repeated request was granted or denied the first time.
                let fresh: Vec<_> = bulk
                    .into_iter()
                    .filter(|(i, ..)| matches!(results.get(*i), Some(Appended::Stored(_))))
                    .map(|(i, origin, b)| (ids[i], origin, b))
                    .collect();
                let reports: Vec<_> = rel
                    .into_iter()
                    .filter(|(i, ..)| matches!(results.get(*i), Some(Appended::Stored(_))))
                    .map(|(_, origin, r)| (origin, r))
                    .collect();
                for (id, r) in ids.into_iter().zip(results) {
                    match r {
                        Appended::Stored(_) => self.stored.inc(),
                        Appended::Duplicate(_) => self.duplicates.inc(),
                    }
                    decided.push((id, Verdict::Absorb { correlation: None }));
                }
                if !fresh.is_empty() {
                    self.uploads.requested(fresh).await;
                }
                if !reports.is_empty() {
                    let releases = &self.releases;
                    releases
                        .rollout
                        .reported(reports, |id| releases.signed(id))
                        .await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed; asking children to retry");
                for id in ids {
                    decided.push((
                        id,
                        Verdict::defer(format!("appserver store: {e}"), Duration::from_secs(1)),
                    ));
                }
            }
        }
        Judged {
            forward: Vec::new(),
            decided,
        }
    }
}

impl Stage for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }
    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(self.ingest(ex, items))
    }
}

fn stored(
    item: &Item,
    me: &ComponentId,
    now: Timestamp,
) -> Result<(StoredMessage, Content), String> {
    // The appserver is a final receiver: it checks the content, not just the header.
    let content = item.content().map_err(|e| e.to_string())?;
    let source = item.header.source().ok_or("no source")?.origin.clone();
    // The appserver is the last hop; the stored header shows the whole path.
    let mut header = item.header.clone();
    header.routing.push(Hop {
        id: me.clone(),
        time: now,
    });
    Ok((
        StoredMessage {
            id: item.header.id,
            source,
            class: item.header.class.clone(),
            subclass: item.header.subclass.clone(),
            kind: item.header.kind,
            created: item.header.created,
            received: now,
            header: rsnet_common::envelope::wire::encode_header(&header).into(),
            content: item.content.clone(),
        },
        content,
    ))
}
