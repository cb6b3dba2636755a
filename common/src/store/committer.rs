//! Group commit: many concurrent callers, one durable transaction.
//!
//! Callers `submit` a request and await its answer. One dedicated thread
//! takes the first waiting request, then everything else already queued (up
//! to a cap), and hands the whole group to the batch function, which writes
//! it in a single transaction. A burst of N callers thus costs one fsync, not
//! N, and an idle store costs nothing.

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Job<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// Most requests folded into one transaction; bounds a transaction's size and
/// the latency of the first caller in a group.
pub const MAX_GROUP: usize = 256;
/// Requests waiting beyond this make `submit` wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// A handle to a group-commit writer thread.
pub struct GroupCommit<Req, Resp> {
    tx: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for GroupCommit<Req, Resp> {
    fn clone(&self) -> Self {
        GroupCommit {
            tx: self.tx.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> GroupCommit<Req, Resp> {
    /// Starts the writer thread. `batch` receives the requests of one group
    /// and must return exactly one response per request, in order.
    pub fn spawn<F>(name: &str, mut batch: F) -> std::io::Result<Self>
    where
        F: FnMut(Vec<Req>) -> Vec<Resp> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job<Req, Resp>>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut reqs = Vec::with_capacity(MAX_GROUP);
                let mut replies = Vec::with_capacity(MAX_GROUP);
                while let Some((req, reply)) = rx.blocking_recv() {
                    reqs.push(req);
                    replies.push(reply);
                    while reqs.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok((req, reply)) => {
                                reqs.push(req);
                                replies.push(reply);
                            }
                            Err(_) => break,
                        }
                    }
                    let resps = batch(std::mem::take(&mut reqs));
                    debug_assert_eq!(resps.len(), replies.len());
                    for (reply, resp) in replies.drain(..).zip(resps) {
                        let _ = reply.send(resp);
                    }
                }
            })?;
        Ok(GroupCommit { tx })
    }

    /// Submits one request and waits for its group to commit.
    ///
    /// # Cancel safety
    /// If the future is dropped after the request was queued, the request is
    /// still written; only the answer is lost. Callers that must know (to
    /// acknowledge a peer) must await to completion.
    pub async fn submit(&self, req: Req) -> Result<Resp, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }
}
