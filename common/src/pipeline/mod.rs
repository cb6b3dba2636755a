//! The exchange pipeline: how a parent (MLM, appserver) handles a child's POST.
//!
//! ```text
//!  POST /rs/v1/exchange
//!    │ exchange::receive   whole-POST limits, body memory budget,        → HTTP 4xx/503
//!    │                     certificate role, decode
//!    ▼
//!  Screen                  identity: sources and routing hops inside the
//!    │                     peer's subtree; nothing sent the wrong way     → Reject
//!    │                     a class the peer's certificate does not allow  → Defer (class)
//!    ├──────────────► BackChannel (beside the stages): learn routes from the
//!    │                screened items, apply the child's acks
//!    ▼
//!  service modules         expiry; MLM: rules, release watch, bulk gate    → Drop / Absorb
//!    ▼
//!  throttle                rates, windows, free disk, bulk cap             → Defer
//!    ▼
//!  terminal                relay upward (MLM) or ingest (appserver)        → Absorb / Defer / Reject
//!    ▼
//!  exchange::reply         one answer per message + back-channel messages for the child
//! ```
//!
//! Every stage has one interface, [`Stage`]: it takes the items still
//! travelling and returns those it passes on plus a [`Verdict`] for each it
//! decided. [`Verdict::answer`] is the one place a verdict becomes a wire
//! answer. A new capability (a rule module, a throttle, a per-class
//! permission) is one more stage in a node's list, not a change threaded
//! through the node.

pub mod exchange;
pub mod expiry;
pub mod rules;
mod screen;
mod service;
pub mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Item;
use crate::id::MessageId;
use crate::model::{Response, Status, Timestamp};
use crate::tls::Identity;

pub use exchange::Inbound;
pub use screen::{Screen, CLASS_PARKED};
pub use service::ExchangeService;

/// What a stage decided for one message (passing it on is not a verdict: the
/// item stays in [`Judged::forward`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped here on purpose (a filter rule); answered "accepted" so the
    /// sender does not resend it.
    Drop,
    /// Durable here (stored, aggregated) or accepted further up; answered
    /// "accepted", with the keeper's correlation ID if it gave one.
    Absorb {
        /// The keeper's own ID for the message.
        correlation: Option<String>,
    },
    /// Not now (throttled, parent unreachable): the sender keeps it and
    /// sends it again after `retry_after`.
    Defer {
        /// Why.
        reason: String,
        /// When to try again.
        retry_after: Duration,
        /// The deferral concerns only this class (its time window is
        /// closed): the sender holds back that class alone.
        class: Option<String>,
    },
    /// Never (invalid, not allowed, too large): the sender gives it up.
    Reject {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// A rejection for good.
    pub fn reject(reason: impl Into<String>) -> Verdict {
        Verdict::Reject {
            reason: reason.into(),
        }
    }

    /// A deferral.
    pub fn defer(reason: impl Into<String>, retry_after: Duration) -> Verdict {
        Verdict::Defer {
            reason: reason.into(),
            retry_after,
            class: None,
        }
    }

    /// A deferral of one class only (a closed time window).
    pub fn defer_class(reason: impl Into<String>, retry_after: Duration, class: &str) -> Verdict {
        Verdict::Defer {
            reason: reason.into(),
            retry_after,
            class: Some(class.to_string()),
        }
    }

    /// The hop answer for message `id`: the one place verdicts become wire answers.
    pub fn answer(self, id: MessageId) -> Response {
        match self {
            Verdict::Drop => Response::accepted(id, None),
            Verdict::Absorb { correlation } => Response::accepted(id, correlation),
            Verdict::Defer {
                reason,
                retry_after,
                class,
            } => Response {
                retry_class: class,
                ..Response::retry(id, reason, retry_after)
            },
            Verdict::Reject { reason } => Response::rejected(id, reason),
        }
    }

    /// The verdict a parent's answer amounts to (the relay's view of what
    /// happened further up).
    pub fn from_answer(r: Response) -> Verdict {
        match (r.status, r.retry_after) {
            (Status::Accepted, _) => Verdict::Absorb {
                correlation: r.correlation,
            },
            (Status::Rejected, Some(after)) => Verdict::Defer {
                reason: r.reason.unwrap_or_default(),
                retry_after: after,
                class: r.retry_class,
            },
            (Status::Rejected, None) => Verdict::reject(r.reason.unwrap_or_default()),
        }
    }
}

/// One exchange as the stages see it.
pub struct Exchange {
    /// The authenticated child.
    pub peer: Identity,
    /// When the POST arrived.
    pub received: Timestamp,
    /// Durable state this exchange taught the node (route changes), to be
    /// committed by the terminal stage together with what it keeps.
    pub persist: Vec<(String, Vec<u8>)>,
}

/// What a stage returns: the items it passes on, and its verdict on the rest.
#[derive(Debug, Default)]
pub struct Judged {
    /// Items for the next stage, in order.
    pub forward: Vec<Item>,
    /// Items decided here.
    pub decided: Vec<(MessageId, Verdict)>,
}

impl Judged {
    /// Judges each item on its own: `None` passes it on.
    pub fn each(items: Vec<Item>, mut judge: impl FnMut(&Item) -> Option<Verdict>) -> Judged {
        let mut j = Judged {
            forward: Vec::with_capacity(items.len()),
            decided: Vec::new(),
        };
        for item in items {
            match judge(&item) {
                None => j.forward.push(item),
                Some(v) => j.decided.push((item.header.id, v)),
            }
        }
        j
    }
}

/// A boxed stage future.
pub type StageFuture<'a> = Pin<Box<dyn Future<Output = Judged> + Send + 'a>>;

/// One stage of the pipeline.
pub trait Stage: Send + Sync + 'static {
    /// Name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Judges the items still travelling. A terminal stage passes nothing on.
    ///
    /// # Cancel safety
    /// If dropped, a terminal stage may or may not have kept the items; the
    /// child, which got no answer, sends them again and the appserver drops
    /// the repeats.
    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a>;
}

/// A stage that passes everything on: the place of a capability not built yet.
pub struct PassThrough(pub &'static str);

impl Stage for PassThrough {
    fn name(&self) -> &'static str {
        self.0
    }
    fn judge<'a>(&'a self, _ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(async move {
            Judged {
                forward: items,
                decided: Vec::new(),
            }
        })
    }
}

/// Several stages in one slot, in order: each judges what the one before
/// passed on (the MLM's modules slot holds the release watch and the bulk
/// gate this way).
pub struct Chain(pub &'static str, pub Vec<Arc<dyn Stage>>);

impl Stage for Chain {
    fn name(&self) -> &'static str {
        self.0
    }
    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(async move {
            let mut out = Judged {
                forward: items,
                decided: Vec::new(),
            };
            for stage in &self.1 {
                let j = stage.judge(ex, std::mem::take(&mut out.forward)).await;
                out.decided.extend(j.decided);
                out.forward = j.forward;
            }
            out
        })
    }
}

/// The stages behind the screen, in order; the last is terminal.
#[derive(Clone)]
pub struct Pipeline {
    stages: Vec<Arc<dyn Stage>>,
}

/// What a child is told when a message got through every stage without a
/// verdict (a node built without a terminal stage): a bug, not the child's fault.
const UNDECIDED_RETRY: Duration = Duration::from_secs(5);

impl Pipeline {
    /// The stages of a node: service modules, throttle, then `terminal`.
    pub fn new(
        modules: Arc<dyn Stage>,
        throttle: Arc<dyn Stage>,
        terminal: Arc<dyn Stage>,
    ) -> Self {
        Pipeline {
            stages: vec![modules, throttle, terminal],
        }
    }

    /// Runs every stage (each is called, even with no items, so the terminal
    /// stage can commit [`Exchange::persist`]); one answer per item.
    pub async fn run(&self, ex: &Exchange, mut items: Vec<Item>) -> Vec<Response> {
        let mut answers = Vec::with_capacity(items.len());
        for stage in &self.stages {
            let j = stage.judge(ex, items).await;
            answers.extend(j.decided.into_iter().map(|(id, v)| v.answer(id)));
            items = j.forward;
        }
        for item in items {
            tracing::error!(message = %item.header.id, "no stage decided this message");
            answers.push(
                Verdict::defer("no stage of this node took the message", UNDECIDED_RETRY)
                    .answer(item.header.id),
            );
        }
        answers
    }
}

#[cfg(test)]
mod tests;
