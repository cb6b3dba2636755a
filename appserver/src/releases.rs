//! Publishing releases (DESIGN.md §7): the first part of issue 10.
//!
//! ```text
//! POST /api/v1/releases?kind=K&version=V&to=T[&to=T…]   body: the file, streamed
//!   └ written to DATA/releases/ID.part as it arrives, SHA-256 on the way,
//!     bounded by [releases] max_bytes, then fsynced and renamed to ID.bin
//!   └ the manifest (ID, kind, version, size, sha256, target) signed with the
//!     release key, stored (KV `release/ID`), answered 201
//!   └ distributed down the tree (`crate::rollout`)
//! GET  /api/v1/releases/ID     the signed manifest and each destination's state
//! GET  /api/v1/releases        every signed manifest
//! ```
//!
//! The file is never held in memory whole. Staging (`stage=`, `success=`,
//! `failure=`), resume, cancel and pin (rollback) are `crate::rollout`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rsnet_common::http_util::{error, json, stream_body, Body};
use rsnet_common::release::{Manifest, ReleaseKey, ReleaseKind, SignedManifest};
use rsnet_common::store::{put_async, KvStore, StoreError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// KV key prefix of signed manifests.
pub const PREFIX: &str = "release/";
/// A body chunk must arrive within this of the last one.
const IDLE: Duration = Duration::from_secs(30);
/// Past `max_bytes`, the rest of a body is read and discarded up to this
/// much more before the 413 goes out, so that a client still writing sees
/// the answer instead of a reset connection. A body declared larger than
/// `max_bytes` plus this is refused without reading it.
const DRAIN_BYTES: u64 = 16 << 20;

/// `[releases]`: publishing releases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasesConfig {
    /// The release signing key (`rsnet-certs init` writes `PKI/release.key`).
    /// Without it, publishing is refused (503).
    pub key: Option<PathBuf>,
    /// Largest release file, in bytes. Default 1 GiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        ReleasesConfig {
            key: None,
            max_bytes: default_max_bytes(),
        }
    }
}

fn default_max_bytes() -> u64 {
    1 << 30
}

/// The published releases.
pub struct Releases {
    /// Distribution down the tree.
    pub rollout: crate::rollout::Rollout,
    key: Option<ReleaseKey>,
    max_bytes: u64,
    dir: PathBuf,
    kv: Arc<dyn KvStore>,
}

impl Releases {
    /// Over `data_dir/releases`, signing with the configured key.
    ///
    /// # Errors
    /// An unreadable key, or a directory that cannot be made.
    pub fn open(
        cfg: &ReleasesConfig,
        data_dir: &std::path::Path,
        kv: Arc<dyn KvStore>,
        outbound: Arc<crate::outbound::Outbound>,
        metrics: &rsnet_common::metrics::Registry,
    ) -> rsnet_common::Result<Releases> {
        let key = match &cfg.key {
            Some(p) => Some(ReleaseKey::load(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let dir = data_dir.join("releases");
        std::fs::create_dir_all(&dir)?;
        Ok(Releases {
            rollout: crate::rollout::Rollout::new(kv.clone(), outbound, dir.clone(), metrics),
            key,
            max_bytes: cfg.max_bytes,
            dir,
            kv,
        })
    }

    /// `POST /api/v1/releases`.
    pub async fn publish(
        &self,
        req: Request<Incoming>,
        q: &[(String, String)],
        by: &str,
    ) -> Response<Body> {
        let Some(key) = &self.key else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "releases are not configured: set [releases] key to the release key",
            );
        };
        let (mut kind, mut version, mut target, mut item) = (None, None, Vec::new(), None);
        let mut staging = crate::rollout::Staging::default();
        for (k, v) in q {
            let pct = |v: &str| v.trim_end_matches('%').parse::<u8>().ok();
            match k.as_str() {
                "kind" => kind = Some(v.clone()),
                "item" => item = Some(v.clone()),
                "stage" => staging.stages.push(v.clone()),
                "success" => match pct(v) {
                    Some(p) => staging.success_pct = Some(p),
                    None => return error(StatusCode::BAD_REQUEST, "success: a percentage 0..=100"),
                },
                "advance" => match v.as_str() {
                    "delivered" => staging.on_applied = false,
                    "applied" => staging.on_applied = true,
                    _ => return error(StatusCode::BAD_REQUEST, "advance: delivered or applied"),
                },
                "failure" => match pct(v) {
                    Some(p) => staging.failure_pct = Some(p),
                    None => return error(StatusCode::BAD_REQUEST, "failure: a percentage 0..=100"),
                },
                "version" => version = Some(v.clone()),
                "to" => target.push(v.clone()),
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    )
                }
            }
        }
        let kind: ReleaseKind = match kind
            .as_deref()
            .map(|k| serde_json::from_value(serde_json::json!(k)))
        {
            Some(Ok(k)) => k,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "kind: software, config or metadata",
                )
            }
        };
        let Some(version) = version else {
            return error(StatusCode::BAD_REQUEST, "version: missing");
        };
        // Default: one item per kind.
        let item = item.unwrap_or_else(|| {
            serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "software".into())
        });
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes.saturating_add(DRAIN_BYTES)) {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a release file is at most {} bytes", self.max_bytes),
            );
        }
        let id = rsnet_common::MessageId::new().to_string();
        // Check the manifest's rules before taking the body.
        let mut manifest = Manifest {
            id: id.clone(),
            kind,
            item,
            version,
            size: 0,
            sha256: "0".repeat(64),
            target,
        };
        if let Err(e) = manifest.validate() {
            return error(StatusCode::BAD_REQUEST, e);
        }
        // Unknown groups and bad stages are refused before the file is taken.
        let plan = match self
            .rollout
            .expand(&manifest.target)
            .and_then(|dests| self.rollout.plan(&dests, &staging, by))
        {
            Ok(p) => p,
            Err(e) => return e.response(),
        };
        let part = self.dir.join(format!("{id}.part"));
        let (size, sha256) = match self.receive(req.into_body(), &part).await {
            Ok(x) => x,
            Err((status, why)) => {
                let _ = tokio::fs::remove_file(&part).await;
                return error(status, why);
            }
        };
        manifest.size = size;
        manifest.sha256 = sha256;
        let signed = match key.sign(manifest) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        if let Err(e) = tokio::fs::rename(&part, self.dir.join(format!("{id}.bin"))).await {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("release file: {e}"),
            );
        }
        let v = serde_json::to_vec(&signed).unwrap_or_default();
        if let Err(e) = put_async(&self.kv, vec![(format!("{PREFIX}{id}"), v)]).await {
            return rsnet_common::Error::from(e).response();
        }
        tracing::info!(release = %id, size, "release published");
        if let Err(e) = self.rollout.start(&signed, plan).await {
            // Recorded destinations are offered at the next start.
            tracing::warn!(release = %id, error = %e, "release not offered yet");
        }
        json(StatusCode::CREATED, &signed)
    }

    /// Streams the body into `part`, bounded; its size and SHA-256 (hex), after fsync.
    async fn receive(
        &self,
        body: Incoming,
        part: &std::path::Path,
    ) -> Result<(u64, String), (StatusCode, String)> {
        let io = |e: std::io::Error| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("release file: {e}"),
            )
        };
        let mut f = tokio::fs::File::create(part).await.map_err(io)?;
        let mut body = std::pin::pin!(stream_body(body, IDLE));
        let (mut size, mut h) = (0u64, Sha256::new());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| (StatusCode::BAD_REQUEST, format!("body: {e}")))?;
            size += chunk.len() as u64;
            if size > self.max_bytes {
                // Over the limit: discard the rest (bounded), then refuse.
                if size > self.max_bytes.saturating_add(DRAIN_BYTES) {
                    break;
                }
                continue;
            }
            h.update(&chunk);
            f.write_all(&chunk).await.map_err(io)?;
        }
        if size > self.max_bytes {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a release file is at most {} bytes", self.max_bytes),
            ));
        }
        f.sync_all().await.map_err(io)?;
        let sha = rsnet_common::bulk::hex(&h.finalize());
        Ok((size, sha))
    }

    /// The signed manifest of release `id`.
    pub fn signed(&self, id: &str) -> Option<SignedManifest> {
        let v = self.kv.get(&format!("{PREFIX}{id}")).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Queues the offers of releases published but not yet offered.
    pub async fn resume(&self) {
        self.rollout.resume(|id| self.signed(id)).await;
    }

    /// `GET /rs/v1/releases/ID/file` from a child.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        peer: &rsnet_common::server::Peer,
    ) -> Response<Body> {
        self.rollout
            .serve(req, peer, |id| {
                self.signed(&id.to_string()).map(|s| s.manifest.size)
            })
            .await
    }

    /// `POST /api/v1/releases/ID/resume|cancel|pin[?to=T…]` by operator `by`.
    pub async fn act(
        &self,
        id: &str,
        action: &str,
        q: &[(String, String)],
        by: &str,
    ) -> Response<Body> {
        use crate::rollout::Action;
        let action = match action {
            "resume" => Action::Resume,
            "cancel" => Action::Cancel,
            "pin" => Action::Pin,
            other => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no release action {other:?} (resume, cancel, pin)"),
                )
            }
        };
        let mut to = Vec::new();
        for (k, v) in q {
            match k.as_str() {
                "to" if action == Action::Pin => to.push(v.clone()),
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    )
                }
            }
        }
        let Some(signed) = self.signed(id) else {
            return error(StatusCode::NOT_FOUND, format!("no release {id}"));
        };
        match self.rollout.act(&signed, action, &to, by).await {
            Ok(_) => json(StatusCode::OK, &self.rollout.status(id)),
            Err(e) => e.response(),
        }
    }

    /// `GET /api/v1/releases/ID`: the signed manifest and where each
    /// destination is.
    pub fn get(&self, id: &str) -> Response<Body> {
        match self.kv.get(&format!("{PREFIX}{id}")) {
            Ok(Some(v)) => match serde_json::from_slice::<SignedManifest>(&v) {
                Ok(s) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "manifest": s.manifest,
                        "signature": s.signature,
                        "status": self.rollout.status(id),
                    }),
                ),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("stored manifest: {e}"),
                ),
            },
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no release {id}")),
            Err(e) => rsnet_common::Error::from(e).response(),
        }
    }

    /// `GET /api/v1/releases`.
    pub fn list(&self) -> Response<Body> {
        match self.manifests() {
            Ok(all) => json(StatusCode::OK, &serde_json::json!({ "releases": all })),
            Err(e) => rsnet_common::Error::from(e).response(),
        }
    }

    /// Every published release's signed manifest.
    ///
    /// # Errors
    /// Store failures.
    pub fn manifests(&self) -> Result<Vec<SignedManifest>, StoreError> {
        Ok(self
            .kv
            .list(PREFIX)?
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect())
    }
}
