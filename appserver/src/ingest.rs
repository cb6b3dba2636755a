//! Storing what children send: validate, store once, answer. The
//! appserver's terminal pipeline stage.
//!
//! Each exchange POST becomes one request to the store writer
//! ([`crate::writer`]), so concurrent children's batches share one
//! transaction and one fsync; what the batch's reports change in the
//! delivery records is written in that commit too. A message is answered
//! `accepted` only after that commit; a repeated
//! message ID is answered `accepted` again and not stored twice. While a
//! stream subscriber listens, each message is also rendered for the
//! stream's [`crate::feed`] here, on the exchange's task, and published by
//! the writer with its sequence number.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rsnet_common::envelope::{wire, Item};
use rsnet_common::id::ComponentId;
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::Hop;
use rsnet_common::model::{Content, Header, Message, Timestamp};
use rsnet_common::pipeline::{Exchange, Judged, Stage, StageFuture, Verdict};
use rsnet_common::release;
use rsnet_common::store::{Appended, MessageStore, StoredMessage};

use crate::deliveries::{Deliveries, Event};
use crate::feed::{Feed, Rendered};
use crate::topology::Topology;
use crate::uploads::Uploads;
use crate::writer::{Batch, StoreWriter};

/// What ingest tells of the messages it stores, beside the store.
pub struct Consumers {
    /// Components, learned from headers.
    pub topology: Arc<Mutex<Topology>>,
    /// Delivery records, from reports.
    pub deliveries: Arc<Deliveries>,
    /// Bulk grants, from requests.
    pub uploads: Arc<Uploads>,
    /// Rollouts, from release reports.
    pub releases: Arc<crate::releases::Releases>,
    /// The stream's feed, from everything stored.
    pub feed: Arc<Feed>,
}

/// The appserver's terminal stage: validate, store once, answer.
pub struct Ingest {
    me: ComponentId,
    to: Consumers,
    writer: StoreWriter,
    stored: Counter,
    duplicates: Counter,
    rejected: Counter,
}

impl Ingest {
    /// The stage, storing through `writer` (started over `messages`).
    pub fn new(
        me: ComponentId,
        messages: Arc<dyn MessageStore>,
        writer: StoreWriter,
        to: Consumers,
        metrics: &Registry,
    ) -> Arc<Ingest> {
        metrics.gauge(
            "rsnet_store_last_seq",
            "highest stored sequence number",
            move || messages.last_seq() as f64,
        );
        Arc::new(Ingest {
            me,
            to,
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
        })
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
        let render = self.to.feed.listening();
        let mut rendered = Vec::with_capacity(if render { items.len() } else { 0 });
        let mut state = ex.persist.clone();
        let mut ids = Vec::with_capacity(items.len());
        let mut reports = Vec::new();
        // Bulk requests, by their place in `ids`: granted once stored.
        let mut bulk = Vec::new();
        // Release reports, likewise.
        let mut rel = Vec::new();
        // Content checks and encoding first, outside the topology lock, so
        // that concurrent exchanges do this work on every core at once.
        // The appserver is the last hop; the stored header shows the whole path.
        let hop = Hop {
            id: self.me.clone(),
            time: now,
        };
        let checked: Vec<_> = items
            .into_iter()
            .map(|item| {
                let s = stored(&item, &hop, render);
                (item, s)
            })
            .collect();
        {
            let mut topo = self.to.topology.lock().unwrap_or_else(|p| p.into_inner());
            for (item, checked) in checked {
                match checked {
                    Ok((s, content, r)) => {
                        topo.learn(&item.header, &content, now, &mut state);
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
                        ids.push(item.header.id);
                        batch.push(s);
                        if render {
                            rendered.push(r);
                        }
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
        // The reports' changes are written in this batch's commit.
        let changed = self.to.deliveries.apply_in_memory(reports);
        let request = Batch {
            messages: batch,
            rendered,
            state,
            deliveries: changed.clone(),
        };
        let stored = self.writer.store(request).await;
        if stored.is_err() {
            // Changed in memory but not written: a repeated report changes
            // nothing, so write them now (they are written again with their
            // next change if this fails too).
            let d = self.to.deliveries.clone();
            tokio::spawn(async move {
                if let Err(e) = d.persist(changed).await {
                    tracing::warn!(error = %e, "delivery state not persisted");
                }
            });
        }
        match stored {
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
                    self.to.uploads.requested(fresh).await;
                }
                if !reports.is_empty() {
                    let releases = &self.to.releases;
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

impl Ingest {
    /// Stores messages the appserver makes itself (liveness events), with
    /// `state` in the same commit, through the one writer, and puts them on
    /// the stream. Each already carries the appserver's hop.
    ///
    /// # Errors
    /// The commit failed: nothing of it was written.
    ///
    /// # Durability
    /// `Ok` once committed with fsync.
    pub async fn store_own(
        &self,
        messages: Vec<Message>,
        state: Vec<(String, Vec<u8>)>,
    ) -> Result<(), rsnet_common::store::StoreError> {
        let received = Timestamp::now();
        let render = self.to.feed.listening();
        let mut batch = Batch {
            state,
            ..Batch::default()
        };
        for m in &messages {
            let Some(src) = m.header.source() else {
                continue;
            };
            if render {
                batch
                    .rendered
                    .push(Rendered::of(&m.header, &m.content, received));
            }
            batch.messages.push(record(
                &m.header,
                src.origin.clone(),
                received,
                wire::encode_header_compact(&m.header).into(),
                wire::encode_content(&m.content).into(),
            ));
        }
        let n = batch.messages.len() as u64;
        self.writer.store(batch).await?;
        self.stored.add(n);
        Ok(())
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

/// A checked item as it is stored (its header with `hop`, the
/// appserver's, in the compact form), its content, and (if `render`) its
/// rendering for the stream's feed.
fn stored(
    item: &Item,
    hop: &Hop,
    render: bool,
) -> Result<(StoredMessage, Content, Option<Rendered>), String> {
    // The appserver is a final receiver: it checks the content, not just the header.
    let content = item.content().map_err(|e| e.to_string())?;
    let source = item.header.source().ok_or("no source")?.origin.clone();
    let rendered = if render {
        let mut header = item.header.clone();
        header.routing.push(hop.clone());
        Rendered::of(&header, &content, hop.time)
    } else {
        None
    };
    Ok((
        record(
            &item.header,
            source,
            hop.time,
            item.header_with_hop(hop),
            item.content.clone(),
        ),
        content,
        rendered,
    ))
}

/// The store's record of a message from `source` with `header`, received
/// at `received`, as the bytes `header_xml` and `content_xml`.
fn record(
    header: &Header,
    source: ComponentId,
    received: Timestamp,
    header_xml: Bytes,
    content_xml: Bytes,
) -> StoredMessage {
    StoredMessage {
        id: header.id,
        source,
        class: header.class.clone(),
        subclass: header.subclass.clone(),
        kind: header.kind,
        created: header.created,
        received,
        header: header_xml,
        content: content_xml,
    }
}
