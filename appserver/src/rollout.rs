//! Distributing releases down the tree (DESIGN.md §7): the appserver's part.
//!
//! ```text
//! publish ─► Rollout::plan (stages cut from the expanded target)
//!        ─► Rollout::start: per destination `queued` (with its stage); the
//!           first stage offered: one offer (the signed manifest) per child
//! child ─► GET /rs/v1/releases/ID/file (Range: bytes=N-)  only a child an
//!           offer went to; bytes and requests counted
//! reports ─► Rollout::reported: each destination's state (offered,
//!           rejected, fetching, delivered, applied, failed) and each MLM's
//!           (cached), from the `release` messages ingest stored; then the
//!           plan moves on (Rollout::evaluate)
//! GET /api/v1/releases/ID ─► manifest + status: counts, destinations, MLMs, rollout
//! POST /api/v1/releases/ID/resume|cancel|pin ─► Rollout::act
//! ```
//!
//! A child fetches the file once and offers it below; so the appserver
//! serves it once per child an offer went to, whatever the number of
//! destinations behind that child.
//!
//! # Stages
//!
//! A release may be rolled out in **stages** ([`Plan`]): each a group, IDs
//! or a percentage of the target, then the rest. Only the current stage's
//! destinations are offered it. When at least `success_pct` of a stage's
//! destinations report delivered or applied (only applied, if asked) the
//! next stage starts; when
//! more than `failure_pct` of them failed the release **halts** (nothing
//! more is offered). An operator may `resume` a release (the next stage
//! starts now), `cancel` it (a cancellation goes to everything offered it:
//! a proxy drops it if not yet delivered, an MLM its cached copy), or `pin`
//! destinations to it again (rollback to an earlier release: a proxy that
//! still keeps it as its previous version makes it current again). Every
//! change is recorded with who made it and when.

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
/// KV prefix of rollout plans: `release-plan/ID`.
const PLANS: &str = "release-plan/";

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
    /// The stage it belongs to (0 first).
    #[serde(default)]
    pub stage: usize,
}

/// How a release is rolled out (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// In order; the last is the rest of the target.
    pub stages: Vec<Stage>,
    /// Share of a stage's destinations (percent) that must have it before
    /// the next stage starts.
    pub success_pct: u8,
    /// Share of a stage's destinations (percent) that may fail; more halts
    /// the release.
    pub failure_pct: u8,
    /// Success is `applied` (an integrator said so), not just `delivered`.
    #[serde(default)]
    pub on_applied: bool,
    /// Where the rollout is.
    pub state: PlanState,
    /// The stage being rolled out (0 first).
    pub current: usize,
    /// Every change, oldest first.
    pub history: Vec<Change>,
}

/// One stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    /// How the operator named it (`group:canary`, `10%`; `rest`, `all`).
    pub name: String,
    /// Its destinations.
    pub dests: Vec<ComponentId>,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub started: Option<String>,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanState {
    /// The current stage is being rolled out.
    Active,
    /// Too many failures: nothing more is offered until resumed.
    Halted,
    /// Every stage met its threshold.
    Done,
    /// Cancelled by an operator.
    Cancelled,
}

/// One recorded change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    /// When (RFC 3339).
    pub at: String,
    /// Who: the operator's certificate ID, or `rsnet` for a threshold.
    pub by: String,
    /// What: `published`, `stage-started`, `halted`, `resumed`, `done`,
    /// `cancelled`, `pinned`.
    pub action: String,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The rollout an operator asks for at publishing.
#[derive(Debug, Clone, Default)]
pub struct Staging {
    /// Stage specs in order: `group:NAME`, an ID, or `N%` of the target.
    pub stages: Vec<String>,
    /// Default 100.
    pub success_pct: Option<u8>,
    /// Default 0 (any failure halts).
    pub failure_pct: Option<u8>,
    /// Count only `applied` as success (default: `delivered` too).
    pub on_applied: bool,
}

/// The operator actions on a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start the next stage now (of a halted or waiting release).
    Resume,
    /// Stop it and withdraw it below.
    Cancel,
    /// Offer it again to the given destinations (rollback).
    Pin,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sent {
    /// The children a message about the release was queued for.
    children: Vec<ComponentId>,
    /// The last offer's message ID, once queued.
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
    /// One writer of states and plans at a time.
    writer: Mutex<()>,
}

fn now() -> String {
    Timestamp::now().to_rfc3339()
}

fn change(by: &str, action: &str, detail: Option<String>) -> Change {
    Change {
        at: now(),
        by: by.to_string(),
        action: action.to_string(),
        detail,
    }
}

fn release_id(signed: &SignedManifest) -> Result<MessageId, Error> {
    signed
        .manifest
        .id
        .parse()
        .map_err(|_| Error::Invalid("release ID".into()))
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
            writer: Mutex::new(()),
        }
    }

    /// The final destinations of `target`.
    ///
    /// # Errors
    /// A bad ID or an unknown group.
    pub fn expand(&self, target: &[String]) -> Result<Vec<ComponentId>, Error> {
        self.outbound.expand(target).map(|(d, _)| d)
    }

    /// Checks a staging request and cuts `target` into stages.
    ///
    /// # Errors
    /// A bad stage spec or threshold, an unknown group.
    pub fn plan(&self, target: &[ComponentId], staging: &Staging, by: &str) -> Result<Plan, Error> {
        let pct = |v: Option<u8>, d: u8, what: &str| match v {
            None => Ok(d),
            Some(p) if p <= 100 => Ok(p),
            Some(_) => Err(Error::Invalid(format!("{what}: 0..=100"))),
        };
        let success_pct = pct(staging.success_pct, 100, "success")?;
        let failure_pct = pct(staging.failure_pct, 0, "failure")?;
        let mut left: Vec<ComponentId> = target.to_vec();
        let mut stages = Vec::new();
        for (i, spec) in staging.stages.iter().enumerate() {
            let dests: Vec<ComponentId> = if let Some(n) = spec.strip_suffix('%') {
                let n: usize = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| Error::Invalid(format!("stage[{i}]: {spec:?}: 1%..=100%")))?;
                let k = share(target.len(), n).min(left.len());
                left.drain(..k).collect()
            } else {
                let named = self.expand(std::slice::from_ref(spec))?;
                let (inside, rest): (Vec<_>, Vec<_>) =
                    left.into_iter().partition(|d| named.contains(d));
                left = rest;
                inside
            };
            if !dests.is_empty() {
                stages.push(Stage {
                    name: spec.clone(),
                    dests,
                    started: None,
                });
            }
        }
        if !left.is_empty() {
            let name = if stages.is_empty() { "all" } else { "rest" };
            stages.push(Stage {
                name: name.into(),
                dests: left,
                started: None,
            });
        }
        let detail = format!(
            "{} destinations in {} stage(s): {}",
            target.len(),
            stages.len(),
            stages
                .iter()
                .map(|s| format!("{} ({})", s.name, s.dests.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Plan {
            stages,
            success_pct,
            failure_pct,
            on_applied: staging.on_applied,
            state: PlanState::Active,
            current: 0,
            history: vec![change(by, "published", Some(detail))],
        })
    }

    /// Starts distributing `signed` along `plan`: records each destination
    /// (with its stage), then offers the first stage.
    ///
    /// # Errors
    /// Store failures; what was recorded stays, and [`Rollout::resume`]
    /// offers what was not.
    pub async fn start(&self, signed: &SignedManifest, mut plan: Plan) -> Result<(), Error> {
        let id = release_id(signed)?;
        let _one = self.writer.lock().await;
        let stamp = now();
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        for (n, stage) in plan.stages.iter().enumerate() {
            let routed = self.outbound.backchannel.route(&stage.dests);
            for d in &stage.dests {
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
                    updated: stamp.clone(),
                    stage: n,
                };
                pairs.push((
                    format!("{DESTS}{id}/{d}"),
                    serde_json::to_vec(&st).unwrap_or_default(),
                ));
            }
        }
        if let Some(s) = plan.stages.first_mut() {
            s.started = Some(stamp);
        }
        pairs.push((
            format!("{PLANS}{id}"),
            serde_json::to_vec(&plan).unwrap_or_default(),
        ));
        pairs.push((
            format!("{ROUTES}{id}"),
            serde_json::to_vec(&Sent::default()).unwrap_or_default(),
        ));
        put_async(&self.kv, pairs).await?;
        let first = plan
            .stages
            .first()
            .map(|s| s.dests.clone())
            .unwrap_or_default();
        self.send(id, signed, &first).await?;
        self.evaluate(&id, signed).await;
        Ok(())
    }

    /// Queues an offer of `signed` for `dests` (one copy per child).
    async fn send(
        &self,
        id: MessageId,
        signed: &SignedManifest,
        dests: &[ComponentId],
    ) -> Result<(), Error> {
        let content = Bytes::from(wire::encode_content(&release::offer_content(signed)));
        self.down(id, release::OFFER, content, dests).await
    }

    /// Queues one back-channel message of subclass `what` about release
    /// `id` for `dests`, after recording the children it goes to.
    async fn down(
        &self,
        id: MessageId,
        what: &str,
        content: Bytes,
        dests: &[ComponentId],
    ) -> Result<(), Error> {
        let mut sent: Sent = self
            .kv
            .get(&format!("{ROUTES}{id}"))?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        let routed = self.outbound.backchannel.route(dests);
        let header = Header {
            id: MessageId::new(),
            class: release::CLASS.into(),
            subclass: Some(what.into()),
            kind: ContentKind::Data,
            created: Timestamp::now(),
            direction: Direction::Destination(Destination {
                ids: dests.to_vec(),
                group: None,
            }),
            qos: Qos {
                precedence: 5,
                ..Qos::default()
            },
            routing: Vec::new(),
        };
        for c in routed.copies.keys() {
            if !sent.children.contains(c) {
                sent.children.push(c.clone());
            }
        }
        if what == release::OFFER {
            sent.offer = Some(header.id);
        }
        // Recorded first: a child may ask for the file as soon as it hears.
        put_async(
            &self.kv,
            vec![(
                format!("{ROUTES}{id}"),
                serde_json::to_vec(&sent).unwrap_or_default(),
            )],
        )
        .await?;
        if routed.copies.is_empty() {
            return Ok(());
        }
        self.outbound
            .backchannel
            .dispatch(&header, content, &routed, None)
            .await?;
        tracing::info!(release = %id, what, destinations = dests.len(), children = routed.copies.len(), "release message queued");
        Ok(())
    }

    /// Offers the current stage of releases recorded but never offered (a
    /// crash between the two); `signed` looks a release up.
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
            let (Ok(rid), Some(s), Some(plan)) =
                (id.parse::<MessageId>(), signed(id), self.load_plan(id))
            else {
                continue;
            };
            if plan.state != PlanState::Active {
                continue;
            }
            let dests = plan
                .stages
                .get(plan.current)
                .map(|s| s.dests.clone())
                .unwrap_or_default();
            if let Err(e) = self.send(rid, &s, &dests).await {
                tracing::warn!(release = %id, error = %e, "release offers not queued");
            }
        }
    }

    fn load_plan(&self, id: &str) -> Option<Plan> {
        let v = self.kv.get(&format!("{PLANS}{id}")).ok()??;
        serde_json::from_slice(&v).ok()
    }

    fn standing(&self, id: &str, dest: &ComponentId) -> Option<Standing> {
        let v = self.kv.get(&format!("{DESTS}{id}/{dest}")).ok()??;
        serde_json::from_slice(&v).ok()
    }

    async fn save_plan(&self, id: &MessageId, plan: &Plan) -> Result<(), Error> {
        put_async(
            &self.kv,
            vec![(
                format!("{PLANS}{id}"),
                serde_json::to_vec(plan).unwrap_or_default(),
            )],
        )
        .await?;
        Ok(())
    }

    /// Moves a plan along after its states changed: halts it past the
    /// failure threshold, starts the next stage past the success threshold.
    /// Called with the writer lock held.
    async fn evaluate(&self, id: &MessageId, signed: &SignedManifest) {
        let key = id.to_string();
        let Some(mut plan) = self.load_plan(&key) else {
            return;
        };
        let before = (plan.state, plan.current);
        let mut next: Vec<ComponentId> = Vec::new();
        while plan.state == PlanState::Active {
            let Some(stage) = plan.stages.get(plan.current) else {
                break;
            };
            let n = stage.dests.len().max(1);
            let (mut ok, mut failed) = (0usize, 0usize);
            for d in &stage.dests {
                match self.standing(&key, d).map(|s| s.state) {
                    Some(DestState::Applied) => ok += 1,
                    Some(DestState::Delivered) if !plan.on_applied => ok += 1,
                    Some(DestState::Failed) => failed += 1,
                    _ => {}
                }
            }
            if failed * 100 > usize::from(plan.failure_pct) * n {
                let detail = format!(
                    "stage {} ({}): {failed} of {} failed, more than the {}% allowed",
                    plan.current + 1,
                    stage.name,
                    stage.dests.len(),
                    plan.failure_pct
                );
                tracing::warn!(release = %id, %detail, "release halted");
                plan.state = PlanState::Halted;
                plan.history.push(change("rsnet", "halted", Some(detail)));
                break;
            }
            if ok * 100 < usize::from(plan.success_pct) * n {
                break;
            }
            advance(&mut plan, "rsnet", &mut next);
        }
        if (plan.state, plan.current) == before {
            return;
        }
        if let Err(e) = self.save_plan(id, &plan).await {
            tracing::warn!(release = %id, error = %e, "rollout state not saved");
            return;
        }
        if !next.is_empty() {
            if let Err(e) = self.send(*id, signed, &next).await {
                tracing::warn!(release = %id, error = %e, "next stage not offered");
            }
        }
    }

    /// An operator's action on release `signed` (see [`Action`]); `to` names
    /// the destinations of a pin; `by` is the operator.
    ///
    /// # Errors
    /// No rollout, a state that does not allow it, a bad destination, store
    /// failures.
    pub async fn act(
        &self,
        signed: &SignedManifest,
        action: Action,
        to: &[String],
        by: &str,
    ) -> Result<Plan, Error> {
        let id = release_id(signed)?;
        let key = id.to_string();
        let _one = self.writer.lock().await;
        let mut plan = self
            .load_plan(&key)
            .ok_or_else(|| Error::NotFound(format!("release {id} has no rollout")))?;
        let mut next = Vec::new();
        match action {
            Action::Resume => {
                if !matches!(plan.state, PlanState::Halted | PlanState::Active) {
                    return Err(Error::Conflict(format!(
                        "release {id} is {:?}: nothing to resume",
                        plan.state
                    )));
                }
                plan.history.push(change(by, "resumed", None));
                advance(&mut plan, by, &mut next);
            }
            Action::Cancel => {
                if plan.state == PlanState::Cancelled {
                    return Err(Error::Conflict(format!(
                        "release {id} is already cancelled"
                    )));
                }
                plan.state = PlanState::Cancelled;
                plan.history.push(change(by, "cancelled", None));
            }
            Action::Pin => {
                if plan.state == PlanState::Cancelled {
                    return Err(Error::Conflict(format!("release {id} is cancelled")));
                }
                if to.is_empty() {
                    return Err(Error::Invalid("to: names no destination".into()));
                }
                let dests = self.expand(to)?;
                let stamp = now();
                let mut pairs = Vec::new();
                for d in &dests {
                    let st = Standing {
                        state: DestState::Queued,
                        reason: None,
                        bytes: None,
                        updated: stamp.clone(),
                        stage: self.standing(&key, d).map_or(plan.current, |s| s.stage),
                    };
                    pairs.push((
                        format!("{DESTS}{id}/{d}"),
                        serde_json::to_vec(&st).unwrap_or_default(),
                    ));
                }
                put_async(&self.kv, pairs).await?;
                plan.history.push(change(by, "pinned", Some(to.join(", "))));
                next = dests;
            }
        }
        self.save_plan(&id, &plan).await?;
        if action == Action::Cancel {
            // Withdrawn from everything it was offered to.
            let offered: Vec<ComponentId> = plan
                .stages
                .iter()
                .take(plan.current + 1)
                .flat_map(|s| s.dests.iter().cloned())
                .collect();
            let content = Bytes::from(wire::encode_content(&release::cancel_content(&id)));
            self.down(id, release::CANCEL, content, &offered).await?;
        }
        if !next.is_empty() {
            self.send(id, signed, &next).await?;
        }
        Ok(plan)
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
        let cancelled = self
            .load_plan(&id.to_string())
            .is_some_and(|p| p.state == PlanState::Cancelled);
        if cancelled {
            return error(StatusCode::GONE, format!("release {id} was cancelled"));
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
    /// just stored), then moves each plan along. A final state (delivered,
    /// applied, failed) is not undone by a late report of an earlier one; a
    /// report from a component the release was not sent to is ignored.
    pub async fn reported(
        &self,
        reports: Vec<(ComponentId, Report)>,
        signed: impl Fn(&str) -> Option<SignedManifest>,
    ) {
        let _one = self.writer.lock().await;
        let mut pairs = Vec::new();
        let stamp = now();
        let mut touched: Vec<String> = Vec::new();
        for (origin, r) in reports {
            let mut stage = 0;
            let key = if r.state == DestState::Cached {
                format!("{HOPS}{}/{origin}", r.release)
            } else {
                match self.standing(&r.release, &origin) {
                    None => {
                        tracing::warn!(release = %r.release, %origin, "release report from a component it was not sent to; ignored");
                        continue;
                    }
                    Some(c) if c.state.is_final() && !r.state.is_final() => continue,
                    Some(c) if c.state == DestState::Applied => continue,
                    Some(c) => {
                        stage = c.stage;
                        format!("{DESTS}{}/{origin}", r.release)
                    }
                }
            };
            if !touched.contains(&r.release) {
                touched.push(r.release.clone());
            }
            let st = Standing {
                state: r.state,
                reason: r.reason,
                bytes: r.bytes,
                updated: stamp.clone(),
                stage,
            };
            pairs.push((key, serde_json::to_vec(&st).unwrap_or_default()));
        }
        if pairs.is_empty() {
            return;
        }
        if let Err(e) = put_async(&self.kv, pairs).await {
            tracing::warn!(error = %e, "release states not saved");
            return;
        }
        for id in touched {
            if let (Ok(rid), Some(s)) = (id.parse::<MessageId>(), signed(&id)) {
                self.evaluate(&rid, &s).await;
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
        let rollout = self.load_plan(id).map(|p| {
            let stages: Vec<serde_json::Value> = p
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut c: BTreeMap<&str, usize> = BTreeMap::new();
                    for d in dests.values().filter(|d| d.stage == i) {
                        *c.entry(d.state.as_str()).or_default() += 1;
                    }
                    serde_json::json!({
                        "name": s.name,
                        "destinations": s.dests.len(),
                        "started": s.started,
                        "counts": c,
                    })
                })
                .collect();
            serde_json::json!({
                "state": p.state,
                "stage": p.current + 1,
                "stages": stages,
                "success_pct": p.success_pct,
                "failure_pct": p.failure_pct,
                "success_is": if p.on_applied { "applied" } else { "delivered" },
                "history": p.history,
            })
        });
        serde_json::json!({
            "destinations": dests,
            "counts": counts,
            "mlms": hops,
            "rollout": rollout,
        })
    }
}

/// How many of `total` destinations `pct` percent is: rounded up, so a
/// stage of a small target is never empty.
fn share(total: usize, pct: usize) -> usize {
    (total * pct).div_ceil(100)
}

/// The next stage of `plan` starts (its destinations added to `next`), or
/// the plan is done.
fn advance(plan: &mut Plan, by: &str, next: &mut Vec<ComponentId>) {
    if plan.current + 1 >= plan.stages.len() {
        plan.state = PlanState::Done;
        plan.history.push(change(by, "done", None));
        return;
    }
    plan.current += 1;
    plan.state = PlanState::Active;
    let stage = &mut plan.stages[plan.current];
    stage.started = Some(now());
    let detail = format!(
        "stage {} ({}): {} destinations",
        plan.current + 1,
        stage.name,
        stage.dests.len()
    );
    next.extend(stage.dests.iter().cloned());
    plan.history.push(change(by, "stage-started", Some(detail)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentage_stage_is_rounded_up_and_never_empty() {
        assert_eq!(share(1000, 10), 100);
        assert_eq!(share(3, 10), 1);
        assert_eq!(share(3, 34), 2);
        assert_eq!(share(20, 100), 20);
        assert_eq!(share(0, 50), 0);
    }

    #[test]
    fn a_plan_advances_stage_by_stage_then_is_done() {
        let id = |s: &str| s.parse::<ComponentId>().unwrap();
        let mut plan = Plan {
            stages: vec![
                Stage {
                    name: "group:canary".into(),
                    dests: vec![id("acme.p1")],
                    started: None,
                },
                Stage {
                    name: "rest".into(),
                    dests: vec![id("acme.p2"), id("acme.p3")],
                    started: None,
                },
            ],
            success_pct: 100,
            failure_pct: 0,
            on_applied: false,
            state: PlanState::Active,
            current: 0,
            history: Vec::new(),
        };
        let mut next = Vec::new();
        advance(&mut plan, "rsnet", &mut next);
        assert_eq!((plan.current, plan.state), (1, PlanState::Active));
        assert_eq!(next, vec![id("acme.p2"), id("acme.p3")]);
        assert!(plan.stages[1].started.is_some());
        advance(&mut plan, "ops.alice", &mut next);
        assert_eq!(plan.state, PlanState::Done);
        let actions: Vec<&str> = plan.history.iter().map(|c| c.action.as_str()).collect();
        assert_eq!(actions, ["stage-started", "done"]);
        assert_eq!(plan.history[1].by, "ops.alice");
    }
}
