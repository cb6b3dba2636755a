//! The appserver's one store writer: what children send, the state it
//! teaches, and the delivery records, through one group commit.
//!
//! Every exchange's batch becomes one request to a [`GroupCommit`] thread,
//! so concurrent children's batches share one transaction and one fsync.
//! The same thread writes the back-channel's delivery records
//! ([`crate::deliveries`]): a report's change to its record rides in the
//! commit that stores the report, and a change from the queues gets a
//! request of its own. One thread means one order: each record is read
//! from memory when its commit is made, so two changes of one record can
//! never land on disk out of order. (A second writer for the records cost
//! a second commit, and its fsync, for every report a destination sent;
//! the two commits then queued for the store's one write lock.)
//!
//! After a commit the writer publishes what was stored to the stream's
//! feed, then announces the new last sequence number.

use std::sync::Arc;

use rsnet_common::id::MessageId;
use rsnet_common::store::{Appended, GroupCommit, MessageStore, StoreError, StoredMessage};
use tokio::sync::watch;

use crate::deliveries::Records;
use crate::feed::{Feed, Rendered};

/// One request to the store writer.
#[derive(Default)]
pub struct Batch {
    /// Messages to store once each.
    pub messages: Vec<StoredMessage>,
    /// Each message's rendering for the stream's feed (empty when nobody
    /// listened).
    pub rendered: Vec<Option<Rendered>>,
    /// KV pairs to write in the same commit (what the exchange taught).
    pub state: Vec<(String, Vec<u8>)>,
    /// Delivery records to write in the same commit, as they are then.
    pub deliveries: Vec<MessageId>,
}

impl Batch {
    /// A request that only writes the records of `ids`.
    pub fn records(ids: Vec<MessageId>) -> Batch {
        Batch {
            deliveries: ids,
            ..Batch::default()
        }
    }
}

/// A handle to the writer thread.
#[derive(Clone)]
pub struct StoreWriter {
    commit: GroupCommit<Batch, Result<Vec<Appended>, StoreError>>,
}

impl StoreWriter {
    /// Starts the writer over `messages`, writing `records` and publishing
    /// to `feed`; returns it and the last committed sequence number, for
    /// subscribers.
    ///
    /// # Errors
    /// A writer thread that cannot start.
    pub fn start(
        messages: Arc<dyn MessageStore>,
        records: Records,
        feed: Arc<Feed>,
    ) -> std::io::Result<(StoreWriter, watch::Receiver<u64>)> {
        let (tx, rx) = watch::channel(messages.last_seq());
        let m = messages;
        let commit = GroupCommit::spawn("store-writer", move |batches: Vec<Batch>| {
            let sizes: Vec<usize> = batches.iter().map(|b| b.messages.len()).collect();
            let (mut msgs, mut rendered, mut state, mut ids) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            // Nothing to carry (or allocate) when nobody listened.
            let any_rendered = batches.iter().any(|b| !b.rendered.is_empty());
            for b in batches {
                if any_rendered && b.rendered.is_empty() {
                    rendered.extend(b.messages.iter().map(|_| None));
                } else {
                    rendered.extend(b.rendered);
                }
                msgs.extend(b.messages);
                state.extend(b.state);
                ids.extend(b.deliveries);
            }
            // Read now, on this thread: the newest version of each record.
            state.extend(records.pairs(&ids));
            #[allow(clippy::disallowed_methods)] // on the store writer thread
            match m.append(msgs, state) {
                Ok(mut all) => {
                    // The feed first, then the announcement: a subscriber
                    // woken by it finds the new messages there.
                    let mut r = rendered.into_iter();
                    feed.publish(all.iter().filter_map(|a| {
                        let r = r.next().flatten();
                        match a {
                            Appended::Stored(seq) => Some((*seq, r)),
                            Appended::Duplicate(_) => None,
                        }
                    }));
                    let _ = tx.send(m.last_seq());
                    sizes
                        .into_iter()
                        .map(|n| Ok(all.drain(..n).collect()))
                        .collect()
                }
                Err(e) => sizes.iter().map(|_| Err(e.clone())).collect(),
            }
        })?;
        Ok((StoreWriter { commit }, rx))
    }

    /// Writes `batch` and waits for its commit: what became of each
    /// message, in order.
    ///
    /// # Errors
    /// The store's failure; nothing of the batch is then written.
    pub async fn store(&self, batch: Batch) -> Result<Vec<Appended>, StoreError> {
        self.commit.submit(batch).await?
    }
}
