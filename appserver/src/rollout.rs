//! Distributing releases down the tree (DESIGN.md §7): the appserver's part.
//!
//! ```text
//! publish ─► Rollout::start: target expanded (groups), each destination
//!            routed to the child it is reachable through; per destination
//!            `queued`; one offer (the signed manifest) queued per child
//! child ─► GET /rs/v1/releases/ID/file (Range: bytes=N-)  only a child the
//!            offer went to; bytes and requests counted
//! reports ─► Rollout::reported: each destination's state (offered,
//!            rejected, fetching, delivered, applied, failed) and each MLM's
//!            (cached), from the `release` messages ingest stored
//! GET /api/v1/releases/ID ─► manifest + status: counts, destinations, MLMs
//! ```
//!
//! A child fetches the file once and offers it below; so the appserver
//! serves it once per child the offer went to, whatever the number of
//! destinations behind that child. Staged rollout, cancel and rollback are
//! **not built yet**.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rsnet_common::download;
use rsnet_common::envelope::wire;
use rsnet_common::http_util::{error, Body};
use rsnet_common::id::{ComponentId, MessageId};
use rsnet_common::metrics::{Counter, Registry};
use rsnet_common::model::{ContentKind, Destination, Direction, Header, Qos, Timestamp};
use rsnet_common::release::{self, DestState, Report, SignedManifest};
use rsnet_common::server::Peer;
use rsnet_common::store::{put_async, KvStore};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::outbound::Outbound;

/// KV prefix of destination states: `release-dest/ID/DEST`.
const DESTS: &str = "release-dest/";
/// KV prefix of MLM states: `release-hop/ID/MLM`.
const HOPS: &str = "release-hop/";
/// KV prefix of the children each release was sent to: `release-route/ID`.
const ROUTES: &str = "release-route/";

/// One destination's (or MLM's) state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Standing {
    /// Where it is.
    pub state: DestState,
    /// Why (rejected, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes held (fetching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// When it last changed (RFC 3339).
    pub updated: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sent {
    /// The children the offer was queued for.
    children: Vec<ComponentId>,
    /// The offer's message ID, once queued.
    #[serde(default)]
    offer: Option<MessageId>,
}

/// See the module docs.
pub struct Rollout {
    kv: Arc<dyn KvStore>,
    outbound: Arc<Outbound>,
    dir: PathBuf,
    served: Counter,
    serves: Counter,
    reports: Mutex<()>,
}

impl Rollout {
    /// Over the release files in `dir`.
    pub fn new(
        kv: Arc<dyn KvStore>,
        outbound: Arc<Outbound>,
        dir: PathBuf,
        metrics: &Registry,
    ) -> Rollout {
        Rollout {
            kv,
            outbound,
            dir,
            served: metrics.counter(
                "rsnet_release_served_bytes_total",
                "release file bytes served to children",
            ),
            serves: metrics.counter(
                "rsnet_release_serves_total",
                "release file requests served to children",
            ),
            reports: Mutex::new(()),
        }
    }

    /// The final destinations of `target`.
    ///
    /// # Errors
    /// A bad ID or an unknown group.
    pub fn expand(&self, target: &[String]) -> Result<Vec<ComponentId>, Error> {
        self.outbound.expand(target).map(|(d, _)| d)
    }

    fn now() -> String {
        Timestamp::now().to_rfc3339()
    }

    /// Starts distributing `signed`: records each destination, then queues
    /// one offer per child.
    ///
    /// # Errors
    /// Expansion or store failures; what was recorded stays, and
    /// [`Rollout::resume`] sends what was not.
    pub async fn start(&self, signed: &SignedManifest) -> Result<(), Error> {
        let id: MessageId = signed
            .manifest
            .id
            .parse()
            .map_err(|_| Error::Invalid("release ID".into()))?;
        let (dests, _) = self.outbound.expand(&signed.manifest.target)?;
        let routed = self.outbound.backchannel.route(&dests);
        let now = Self::now();
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(dests.len() + 1);
        for d in &dests {
            let reason = routed
                .unroutable
                .contains(d)
                .then(|| format!("no route to {d}: it has never sent anything"));
            let st = Standing {
                state: if reason.is_some() {
                    DestState::Failed
                } else {
                    DestState::Queued
                },
                reason,
                bytes: None,
                updated: now.clone(),
            };
            pairs.push((
                format!("{DESTS}{id}/{d}"),
                serde_json::to_vec(&st).unwrap_or_default(),
            ));
        }
        let sent = Sent {
            children: routed.copies.keys().cloned().collect(),
            offer: None,
        };
        pairs.push((
            format!("{ROUTES}{id}"),
            serde_json::to_vec(&sent).unwrap_or_default(),
        ));
        put_async(&self.kv, pairs).await?;
        self.send(id, signed, sent).await
    }

    /// Queues the offers of a release whose destinations are recorded.
    async fn send(
        &self,
        id: MessageId,
        signed: &SignedManifest,
        mut sent: Sent,
    ) -> Result<(), Error> {
        let dests: Vec<ComponentId> = self
            .kv
            .list(&format!("{DESTS}{id}/"))?
            .into_iter()
            .filter_map(|(k, _)| k.rsplit('/').next()?.parse().ok())
            .collect();
        let routed = self.outbound.backchannel.route(&dests);
        let header = Header {
            id: MessageId::new(),
            class: release::CLASS.into(),
            subclass: Some(release::OFFER.into()),
            kind: ContentKind::Data,
            created: Timestamp::now(),
            direction: Direction::Destination(Destination {
                ids: dests,
                group: None,
            }),
            qos: Qos {
                precedence: 5,
                ..Qos::default()
            },
            routing: Vec::new(),
        };
        let content = Bytes::from(wire::encode_content(&release::offer_content(signed)));
        self.outbound
            .backchannel
            .dispatch(&header, content, &routed, None)
            .await?;
        sent.offer = Some(header.id);
        sent.children = routed.copies.keys().cloned().collect();
        put_async(
            &self.kv,
            vec![(
                format!("{ROUTES}{id}"),
                serde_json::to_vec(&sent).unwrap_or_default(),
            )],
        )
        .await?;
        tracing::info!(release = %id, children = sent.children.len(), "release offered");
        Ok(())
    }

    /// Queues the offers of releases recorded but not yet sent (a crash
    /// between the two); `signed` looks a release up.
    pub async fn resume(&self, signed: impl Fn(&str) -> Option<SignedManifest>) {
        let Ok(all) = self.kv.list(ROUTES) else {
            return;
        };
        for (k, v) in all {
            let Ok(sent) = serde_json::from_slice::<Sent>(&v) else {
                continue;
            };
            let id = k.trim_start_matches(ROUTES);
            if sent.offer.is_some() {
                continue;
            }
            let (Ok(rid), Some(s)) = (id.parse::<MessageId>(), signed(id)) else {
                continue;
            };
            if let Err(e) = self.send(rid, &s, sent).await {
                tracing::warn!(release = %id, error = %e, "release offers not queued");
            }
        }
    }

    /// `GET /rs/v1/releases/ID/file` from a child, with `size` from the manifest.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        size_of: impl Fn(&MessageId) -> Option<u64>,
    ) -> Response<Body> {
        let Some(id) = release::id_of_path(req.uri().path()) else {
            return error(StatusCode::NOT_FOUND, "not a release file path");
        };
        let Some(who) = peer.identity.as_ref() else {
            return error(StatusCode::FORBIDDEN, "no client certificate");
        };
        let sent: Sent = match self.kv.get(&format!("{ROUTES}{id}")) {
            Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
            Ok(None) => return error(StatusCode::NOT_FOUND, format!("no release {id}")),
            Err(e) => return rsnet_common::Error::from(e).response(),
        };
        if !sent.children.contains(&who.id) {
            tracing::warn!(release = %id, peer = %who.id, "release file asked for by a child it was not offered to");
            return error(
                StatusCode::FORBIDDEN,
                format!("release {id} was not offered to {}", who.id),
            );
        }
        let Some(size) = size_of(&id) else {
            return error(StatusCode::NOT_FOUND, format!("no release {id}"));
        };
        self.serves.inc();
        download::serve(
            &self.dir.join(format!("{id}.bin")),
            size,
            req.headers(),
            &self.served,
        )
        .await
    }

    /// Applies destinations' and MLMs' reports (from messages ingest has
    /// just stored). A final state (delivered, applied, failed) is not
    /// undone by a late report of an earlier one; a report from a
    /// component the release was not sent to is ignored.
    pub async fn reported(&self, reports: Vec<(ComponentId, Report)>) {
        let _one = self.reports.lock().await;
        let mut pairs = Vec::new();
        let now = Self::now();
        for (origin, r) in reports {
            let (key, known) = if r.state == DestState::Cached {
                (format!("{HOPS}{}/{origin}", r.release), true)
            } else {
                let k = format!("{DESTS}{}/{origin}", r.release);
                let cur = self
                    .kv
                    .get(&k)
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_slice::<Standing>(&v).ok());
                match cur {
                    None => (k, false),
                    Some(c) if c.state.is_final() && !r.state.is_final() => continue,
                    Some(c) if c.state == DestState::Applied => continue,
                    Some(_) => (k, true),
                }
            };
            if !known {
                tracing::warn!(release = %r.release, %origin, "release report from a component it was not sent to; ignored");
                continue;
            }
            let st = Standing {
                state: r.state,
                reason: r.reason,
                bytes: r.bytes,
                updated: now.clone(),
            };
            pairs.push((key, serde_json::to_vec(&st).unwrap_or_default()));
        }
        if !pairs.is_empty() {
            if let Err(e) = put_async(&self.kv, pairs).await {
                tracing::warn!(error = %e, "release states not saved");
            }
        }
    }

    /// The status part of `GET /api/v1/releases/ID`.
    pub fn status(&self, id: &str) -> serde_json::Value {
        let read = |prefix: &str| -> BTreeMap<String, Standing> {
            self.kv
                .list(&format!("{prefix}{id}/"))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.rsplit('/').next()?.to_string(),
                        serde_json::from_slice(&v).ok()?,
                    ))
                })
                .collect()
        };
        let dests = read(DESTS);
        let hops = read(HOPS);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in dests.values() {
            *counts.entry(s.state.as_str()).or_default() += 1;
        }
        serde_json::json!({
            "destinations": dests,
            "counts": counts,
            "mlms": hops,
        })
    }
}
