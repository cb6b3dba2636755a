//! Storing what children send: validate, store once, answer.
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
use rsnet_common::model::{Hop, Timestamp};
use rsnet_common::pipeline::{Exchange, Judged, Stage, StageFuture, Verdict};
use rsnet_common::store::{
    Appended, Backend, GroupCommit, KvStore, MessageStore, StoreError, StoredMessage,
};
use tokio::sync::watch;

use rsnet_common::backchannel::{BackChannel, BackChannelConfig};
use rsnet_common::model::Content;

use crate::deliveries::Deliveries;
use crate::groups::Groups;
use crate::outbound::Outbound;
use crate::topology::{self, Topology};

type Batch = (Vec<StoredMessage>, Vec<(String, Vec<u8>)>);

/// Shared appserver state.
pub struct App {
    /// This appserver's ID.
    pub me: ComponentId,
    /// The message store.
    pub messages: Arc<dyn MessageStore>,
    /// Components.
    pub topology: Mutex<Topology>,
    writer: GroupCommit<Batch, Result<Vec<Appended>, StoreError>>,
    /// The last committed sequence number, for subscribers.
    pub committed: watch::Receiver<u64>,
    /// Queues and routes toward the children.
    pub backchannel: Arc<BackChannel>,
    /// Where each back-channel message is.
    pub deliveries: Arc<Deliveries>,
    /// Operator sends and groups.
    pub outbound: Outbound,
    stored: Counter,
    duplicates: Counter,
    rejected: Counter,
}

impl App {
    /// Opens the store views and starts the writer.
    ///
    /// # Errors
    /// Store failures.
    pub fn open(
        me: ComponentId,
        store: &dyn Backend,
        backchannel: BackChannelConfig,
        metrics: &Registry,
    ) -> Result<Arc<App>, Box<dyn std::error::Error + Send + Sync>> {
        let kv: Arc<dyn KvStore> = store.kv();
        let deliveries = Deliveries::open(kv.clone())?;
        let backchannel = BackChannel::open(
            me.clone(),
            store.queues()?,
            kv.clone(),
            backchannel,
            metrics,
            Some(deliveries.clone()),
        )?;
        let outbound = Outbound {
            backchannel: backchannel.clone(),
            groups: Arc::new(Groups::new(kv)),
            deliveries: deliveries.clone(),
        };
        let messages = store.messages()?;
        let topology = Topology::load(store.kv().list(topology::PREFIX)?);
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
        let m2 = messages.clone();
        metrics.gauge(
            "rsnet_store_last_seq",
            "highest stored sequence number",
            move || m2.last_seq() as f64,
        );
        Ok(Arc::new(App {
            me,
            messages,
            topology: Mutex::new(topology),
            writer,
            committed: rx,
            backchannel,
            deliveries,
            outbound,
            stored: metrics.counter("rsnet_store_stored_total", "messages stored"),
            duplicates: metrics.counter(
                "rsnet_store_duplicates_total",
                "repeated message IDs answered without storing",
            ),
            rejected: metrics.counter(
                "rsnet_exchange_rejected_total",
                "messages the appserver rejected as invalid content",
            ),
        }))
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
        let mut tracked = Vec::new();
        {
            let mut topo = self.topology.lock().unwrap_or_else(|p| p.into_inner());
            for item in items {
                match stored(&item, &self.me, now) {
                    Ok((s, content)) => {
                        if let (Content::Response(r), Some(src)) = (&content, item.header.source())
                        {
                            if self.deliveries.respond(
                                &src.origin,
                                item.header.subclass.as_deref(),
                                r,
                            ) {
                                tracked.push(r.request);
                            }
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
        let delivery = self.deliveries.persist(tracked);
        let (stored, delivery) = tokio::join!(self.writer.submit((batch, state)), delivery);
        if let Err(e) = delivery {
            tracing::warn!(error = %e, "delivery state not persisted");
        }
        match stored.and_then(|r| r) {
            Ok(results) => {
                for (id, r) in ids.into_iter().zip(results) {
                    match r {
                        Appended::Stored(_) => self.stored.inc(),
                        Appended::Duplicate(_) => self.duplicates.inc(),
                    }
                    decided.push((id, Verdict::Absorb { correlation: None }));
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

/// The appserver's terminal stage: [`App::ingest`].
pub struct Ingest(pub Arc<App>);

impl Stage for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }
    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(self.0.ingest(ex, items))
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
