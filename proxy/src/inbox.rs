//! The proxy's inbox: back-channel messages for the proxy and its support
//! instances, held durably until the local integrator acknowledges them.
//!
//! ```text
//! parent reply ─► Inbox::receive ─► Queues[destination] ─► ack upward
//!  (all of it)          │   one commit for the whole reply,   + "delivered" responses
//!                       │   with a received mark per message    (one spool push)
//! GET /v1/inbox?wait=S ─┘ take (leased for `lease`; re-offered if not acked)
//! POST /v1/inbox/ack ──► remove ─► "processed" / "failed" response upward
//! ```
//!
//! One queue per final destination (`acme.p7`, `acme.p7.si12`), so a message
//! for both is processed, and reported, once per destination. A message
//! resent by the parent (its ack was lost) is recognised by its ID and
//! acknowledged again without a second inbox entry. Processing is reported
//! as a `response` whose source is the destination, class `response`,
//! subclass `delivered` or `processed`, which the appserver's delivery view
//! shows per destination. Control actions (class `control`) addressed to
//! the proxy are committed as pending in the reply's commit and carried out
//! right after it ([`rsnet_common::control::run_pending`]), so a crash can
//! never make one run twice for one message. `bulk-response`s (answers to
//! this proxy's upload requests) go the same way, through the
//! [`crate::bulk::BULK`] pseudo-queue to [`crate::bulk::Bulk`], and
//! release offers through `^release` to [`crate::releases::Releases`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsnet_common::backchannel::{self, Offer, Offered, Queues, Receiver};
use rsnet_common::envelope::{wire, Item};
use rsnet_common::forward::Outbox;
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::metrics::Counter;
use rsnet_common::model::{ContentKind, Message, Response, DELIVERED, PROCESSED};
use rsnet_common::release;
use rsnet_common::store::SpoolRecord;
use serde_json::{json, Value};

use rsnet_common::control::{self, Controlled};

/// Most messages one `GET /v1/inbox` returns.
pub const MAX_TAKE: usize = 1000;
/// Bytes one `GET /v1/inbox` returns (at least one message).
const TAKE_BYTES: usize = 4 << 20;

/// How an integrator acknowledges one message.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The message ID.
    pub id: String,
    /// The destination it was for; default: every destination holding it.
    #[serde(default)]
    pub destination: Option<String>,
    /// `processed` (default) or `failed`.
    #[serde(default)]
    pub status: Option<String>,
    /// Why it failed, or a short result.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The inbox.
pub struct Inbox {
    /// This proxy.
    pub me: ComponentId,
    /// Durable queues, one per destination.
    pub queues: Arc<Queues>,
    /// Where responses go upward.
    pub outbox: Arc<Outbox>,
    /// What control actions act on.
    pub node: Arc<dyn Controlled>,
    /// New messages received from the parent.
    pub received: Counter,
    /// Uploads, which `bulk-response`s are for.
    pub bulk: Arc<crate::bulk::Bulk>,
    /// Releases, which offers are for.
    pub releases: Arc<crate::releases::Releases>,
}

impl Inbox {
    /// `on`, or `off` while an operator disabled forwarding.
    pub fn node_forwarding(&self) -> &'static str {
        self.node.forwarding()
    }

    fn report(&self, dest: &ComponentId, stage: &str, r: Response) -> Message {
        Message::response(dest, stage, r, &self.me)
    }

    async fn spool(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        if let Err(e) = self.outbox.push(&msgs).await {
            tracing::warn!(error = %e, "delivery report not spooled");
        }
    }

    async fn receive_all(&self, items: Vec<Item>) -> Vec<MessageId> {
        let mut acks = Vec::with_capacity(items.len());
        let mut offers = Vec::with_capacity(items.len());
        let mut taken: Vec<(MessageId, Vec<ComponentId>, bool, bool)> =
            Vec::with_capacity(items.len());
        let mut offers_seen = false;
        for item in &items {
            let id = item.header.id;
            let Some(d) = backchannel::screen(&self.queues, item) else {
                acks.push(id);
                continue;
            };
            let mine: Vec<ComponentId> = d
                .ids
                .iter()
                .filter(|x| x.is_within(&self.me))
                .cloned()
                .collect();
            if mine.len() < d.ids.len() {
                tracing::warn!(message = %id, "back-channel message names destinations outside this proxy; those are ignored");
            }
            let is_control = item.header.class == control::CLASS;
            let is_bulk = item.header.kind == ContentKind::BulkResponse;
            let is_release = release::is_offer(&item.header) || release::is_cancel(&item.header);
            let push: Vec<(String, SpoolRecord)> = if is_control {
                vec![(control::CONTROL.to_string(), control::pending_record(item))]
            } else if is_release {
                // Checked and fetched by crate::releases, which reports on it.
                vec![(release::PENDING.to_string(), control::pending_record(item))]
            } else if is_bulk {
                // For this proxy's uploads, not for integrators.
                vec![(crate::bulk::BULK.to_string(), control::pending_record(item))]
            } else {
                let header = Bytes::from(wire::encode_header(&item.header));
                mine.iter()
                    .map(|dest| {
                        (
                            dest.to_string(),
                            SpoolRecord {
                                id,
                                precedence: item.header.qos.precedence,
                                persistent: item.header.qos.persistence,
                                expiry: item.header.qos.expiry,
                                header: header.clone(),
                                content: item.content.clone(),
                            },
                        )
                    })
                    .collect()
            };
            offers.push(Offer {
                push,
                received: Some(id),
            });
            taken.push((id, mine, is_control, is_bulk || is_release));
            offers_seen |= is_release;
        }
        let results = self.queues.offer_many(offers).await;
        let mut reports = Vec::new();
        let (mut controls, mut grants) = (false, false);
        let mut offers = offers_seen;
        for ((id, mine, is_control, is_bulk), r) in taken.into_iter().zip(results) {
            match r {
                Ok(o @ (Offered::Queued(_) | Offered::Partly { .. })) => {
                    self.received.inc();
                    acks.push(id);
                    controls |= is_control;
                    grants |= is_bulk;
                    if !is_control && !is_bulk {
                        let corr = format!("{}/inbox/{id}", self.me);
                        // A destination whose inbox is at its quota is told
                        // so; the others have it.
                        reports.extend(mine.iter().map(|dest| {
                            if o.over_quota().iter().any(|q| q == dest.as_str()) {
                                tracing::warn!(message = %id, %dest, "inbox of a destination at its quota; message not kept for it");
                                let why = format!("the inbox of {dest} at {} is full (nothing takes what is sent to it)", self.me);
                                self.report(dest, DELIVERED, Response::rejected(id, why))
                            } else {
                                self.report(dest, DELIVERED, Response::accepted(id, Some(corr.clone())))
                            }
                        }));
                    }
                }
                Ok(Offered::Duplicate) => acks.push(id),
                Err(e) => {
                    tracing::warn!(message = %id, error = %e, "inbox cannot take the message; parent resends it");
                }
            }
        }
        self.spool(reports).await;
        if controls {
            control::run_pending(&self.queues, self.node.as_ref(), &self.outbox).await;
        }
        if grants {
            self.bulk.apply_pending().await;
        }
        if std::mem::take(&mut offers) {
            self.releases.wake();
        }
        acks
    }

    /// Carries out control actions and applies bulk responses left pending
    /// by a crash (at start).
    pub async fn resume(&self) {
        control::run_pending(&self.queues, self.node.as_ref(), &self.outbox).await;
        self.bulk.apply_pending().await;
    }

    /// Leases up to `limit` messages for the integrator, waiting up to
    /// `wait` for the first one.
    pub async fn take(&self, wait: Duration, limit: usize) -> Vec<Value> {
        let until = Instant::now() + wait;
        loop {
            let version = self.queues.version();
            let names = self.queues.names();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let t = self.queues.take_from(&refs, TAKE_BYTES, limit).await;
            for id in &t.expired {
                tracing::warn!(message = %id, "inbox message expired before it was taken; dropped");
            }
            if !t.records.is_empty() || Instant::now() >= until {
                return t
                    .records
                    .iter()
                    .zip(&t.from)
                    .map(|(r, qi)| view(r, &names[*qi]))
                    .collect();
            }
            self.queues.wait_any(version, until).await;
        }
    }

    /// Acknowledges messages the integrator handled; reports each upward.
    /// Returns `(acknowledged, unknown)`.
    ///
    /// # Errors
    /// A message naming the bad entry.
    pub async fn ack(&self, acks: &[Ack]) -> Result<(usize, Vec<String>), String> {
        let mut reports = Vec::new();
        let mut unknown = Vec::new();
        let mut n = 0;
        for (i, a) in acks.iter().enumerate() {
            let id: MessageId = a.id.parse().map_err(|e| format!("acks[{i}].id: {e}"))?;
            let failed = match a.status.as_deref() {
                None | Some("processed") => false,
                Some("failed") => true,
                Some(s) => {
                    return Err(format!(
                        "acks[{i}].status: {s:?} (expected processed or failed)"
                    ))
                }
            };
            let dests: Vec<String> = match &a.destination {
                Some(d) => vec![d.clone()],
                None => self.queues.names(),
            };
            let mut hit = false;
            for d in dests {
                if self.queues.ack(&d, &[id]).await.is_empty() {
                    continue;
                }
                hit = true;
                n += 1;
                let Ok(dest) = d.parse::<ComponentId>() else {
                    continue;
                };
                let corr = Some(format!("{}/inbox/{id}", self.me));
                let r = if failed {
                    Response {
                        correlation: corr,
                        ..Response::rejected(
                            id,
                            a.reason.clone().unwrap_or_else(|| "failed".into()),
                        )
                    }
                } else {
                    Response {
                        reason: a.reason.clone(),
                        ..Response::accepted(id, corr)
                    }
                };
                reports.push(self.report(&dest, PROCESSED, r));
            }
            if !hit {
                unknown.push(a.id.clone());
            }
        }
        self.spool(reports).await;
        Ok((n, unknown))
    }
}

/// One inbox entry as the integrator sees it.
fn view(r: &SpoolRecord, destination: &str) -> Value {
    match wire::decode_header(&r.header) {
        Ok(h) => {
            let content = wire::decode_content(&r.content, h.kind);
            let view = rsnet_common::json::MessageView::new(
                &h,
                content.as_ref().map_err(|e| format!("content: {e}")),
            )
            .with_str("destination", destination);
            // Every field serializes without error (strings, numbers, values).
            serde_json::to_value(view).unwrap_or(Value::Null)
        }
        Err(e) => json!({
            "id": r.id.to_string(),
            "error": format!("header: {e}"),
            "destination": destination,
        }),
    }
}

impl Receiver for Inbox {
    fn receive(
        &self,
        items: Vec<Item>,
    ) -> Pin<Box<dyn Future<Output = Vec<MessageId>> + Send + '_>> {
        Box::pin(self.receive_all(items))
    }
}
