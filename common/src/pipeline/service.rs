//! [`ExchangeService`]: one child POST through the whole pipeline, shared by
//! the MLM and the appserver, which differ only in their [`Pipeline`].

use std::sync::Arc;

use http::Response;

use crate::backchannel::BackChannel;
use crate::http_util::Body;
use crate::metrics::{Counter, Registry};
use crate::model::Timestamp;
use crate::server::Peer;

use super::exchange::{self, Inbound};
use super::{Exchange, Pipeline, Screen, Stage};

/// The parent side of an exchange: screen, back-channel, stages, reply.
pub struct ExchangeService {
    pipeline: Pipeline,
    backchannel: Arc<BackChannel>,
    budget: Arc<crate::memory::BodyBudget>,
    rejected: Counter,
    answers: Answers,
    metrics: Registry,
}

/// `rsnet_exchange_messages_total` by answer, and `rsnet_exchanges_total`.
struct Answers {
    accepted: Counter,
    rejected: Counter,
    deferred: Counter,
    answered: Counter,
}

impl Answers {
    fn new(metrics: &Registry) -> Answers {
        let by = |answer| {
            metrics.counter_with(
                "rsnet_exchange_messages_total",
                &[("answer", answer)],
                "children's messages answered, by answer (accepted; rejected for good; deferred: rejected with a retry-after)",
            )
        };
        Answers {
            accepted: by("accepted"),
            rejected: by("rejected"),
            deferred: by("deferred"),
            answered: Self::exchanges(metrics, "200"),
        }
    }

    /// The series of exchanges answered with HTTP `status`.
    fn exchanges(metrics: &Registry, status: &str) -> Counter {
        metrics.counter_with(
            "rsnet_exchanges_total",
            &[("status", status)],
            "children's exchange POSTs, by the HTTP status of the answer (200: answered message by message; else refused whole)",
        )
    }

    fn count(&self, answers: &[crate::model::Response]) {
        self.answered.inc();
        for a in answers {
            match (a.status, a.retry_after) {
                (crate::model::Status::Accepted, _) => self.accepted.inc(),
                (crate::model::Status::Rejected, Some(_)) => self.deferred.inc(),
                (crate::model::Status::Rejected, None) => self.rejected.inc(),
            }
        }
    }
}

impl ExchangeService {
    /// A service running `pipeline` behind the screen, with `backchannel`
    /// beside it; bodies are held within `budget`.
    pub fn new(
        pipeline: Pipeline,
        backchannel: Arc<BackChannel>,
        budget: Arc<crate::memory::BodyBudget>,
        metrics: &Registry,
    ) -> Self {
        ExchangeService {
            pipeline,
            backchannel,
            budget,
            rejected: metrics.counter(
                "rsnet_exchange_screened_out_total",
                "messages the screen rejected (undecodable, spoofed source or routing hop)",
            ),
            answers: Answers::new(metrics),
            metrics: metrics.clone(),
        }
    }

    /// Handles one POST to the exchange path. Every answer, refusals too,
    /// says that this parent reads compressed requests.
    pub async fn handle<B>(&self, req: http::Request<B>, peer: &Peer) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        exchange::advertise(self.answer(req, peer).await)
    }

    // The stages before the long-poll are boxed: their futures are large
    // (the body's decoding above all) and are done before it waits, so a
    // held poll keeps only its own small state.
    async fn answer<B>(&self, req: http::Request<B>, peer: &Peer) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let Inbound {
            peer,
            mut control,
            items,
            rejected,
            reservation,
            compress_reply,
            compact_reply,
        } = match Box::pin(exchange::receive(req, peer, &self.budget)).await {
            Ok(i) => i,
            Err(resp) => {
                Answers::exchanges(&self.metrics, resp.status().as_str()).inc();
                return resp;
            }
        };
        let busy = !items.is_empty() || !rejected.is_empty();
        let sent = items.len() + rejected.len();
        let mut ex = Exchange {
            peer,
            received: Timestamp::now(),
            persist: Vec::new(),
        };
        let mut answers = rejected;
        let screened = Screen.judge(&ex, items).await;
        answers.extend(screened.decided.into_iter().map(|(id, v)| v.answer(id)));
        if !answers.is_empty() {
            self.rejected.add(answers.len() as u64);
            tracing::info!(peer = %ex.peer.id, rejected = answers.len(), first = answers[0].reason.as_deref().unwrap_or(""), "messages rejected by the screen");
        }
        // Beside the stages: what the screened traffic teaches about routes,
        // and what the child acknowledged.
        let acks = std::mem::take(&mut control.acks);
        ex.persist = Box::pin(
            self.backchannel
                .inbound(&ex.peer.id, &acks, &screened.forward),
        )
        .await;
        answers.extend(self.pipeline.run(&ex, screened.forward).await);
        // The body's items have been through the stages: its memory goes
        // back to the budget now, not after a long-poll (a held poll
        // holding it capped how many children could wait at once).
        drop(reservation);
        let down = self
            .backchannel
            .reply_for(&ex.peer.id, control.wait(), busy)
            .await;
        // "The rest accepted" only when every message has its answer (the
        // stages give each one exactly one): a message left unanswered must
        // stay unanswered for the child, which then sends it again.
        let accept_rest = compact_reply && answers.len() == sent;
        self.answers.count(&answers);
        exchange::reply(answers, &down, compress_reply, accept_rest)
    }
}
