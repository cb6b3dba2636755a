//! rsnet-appserver: the top of the tree (DESIGN.md §1, §4).
//!
//! Built along the exchange pipeline: children's POSTs run screen →
//! modules → throttle → [`ingest`] (validate, store once, update the
//! [`topology`]); beside it, the back-channel carries operator sends
//! ([`outbound`], [`groups`]) whose [`deliveries`] record has one owner fed
//! by events; [`api`] serves the read side (messages, stream, components)
//! to operators, [`admin`] the admin page over it; [`uploads`] grants bulk requests and receives the files,
//! [`releases`] publishes signed releases. One mTLS listener serves both
//! children (`/rs/v1/exchange`, `/rs/v1/bulk/TOKEN`; proxy and mlm
//! certificates) and operators
//! (`/api/v1/*`, operator certificates).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod deliveries;
pub mod enrollments;
pub mod error;
pub mod feed;
pub mod groups;
pub mod ingest;
pub mod liveness;
pub mod outbound;
pub mod releases;
pub mod rollout;
pub mod topology;
pub mod uploads;
pub mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rsnet_common::backchannel::BackChannel;
use rsnet_common::pipeline::{ExchangeService, Pipeline};

use crate::deliveries::{Deliveries, QueueEvents};
use crate::groups::Groups;
use crate::ingest::Ingest;
use crate::outbound::Outbound;
use crate::topology::Topology;

use rsnet_common::config::{self, BackChannelSection, ConfigError};
use rsnet_common::metrics::Registry;
use rsnet_common::server::{self, Shutdown};
use rsnet_common::store::{self, StoreConfig};
use rsnet_common::tls::{self, ReloadingServerConfig, TlsPaths};
use serde::Deserialize;

/// The appserver's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Store directory (created if missing). Required.
    pub data_dir: PathBuf,
    /// Listen address for children and operators. Default `0.0.0.0:8443`.
    #[serde(default = "config::default_listen")]
    pub listen: String,
    /// Cap on open connections. Default 20000.
    #[serde(default = "config::default_max_connections")]
    pub max_connections: usize,
    /// Caps per peer identity and on body memory.
    #[serde(default)]
    pub limits: config::ParentLimits,
    /// TLS material.
    pub tls: TlsPaths,
    /// Back-channel queues toward the children.
    #[serde(default)]
    pub backchannel: BackChannelSection,
    /// Where durable state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Publishing releases.
    #[serde(default)]
    pub releases: releases::ReleasesConfig,
    /// Granting and receiving uploads.
    #[serde(default)]
    pub uploads: uploads::UploadsConfig,
    /// Rates, windows and the free-disk floor of what is stored.
    #[serde(default)]
    pub throttle: rsnet_common::pipeline::throttle::ThrottleConfig,
    /// Signing certificates for enrolling nodes.
    #[serde(default)]
    pub enrollment: enrollments::EnrollmentConfig,
    /// When a silent component is reported stale.
    #[serde(default)]
    pub liveness: liveness::LivenessConfig,
}

impl Config {
    /// Loads and validates a config file.
    ///
    /// # Errors
    /// Every problem, with the file name.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        Self::parse(path, &config::read(path)?)
    }

    /// [`Config::load`] of the text of the file at `path` (named in
    /// errors; files it names are read relative to it).
    ///
    /// # Errors
    /// Every problem, with the file name.
    pub fn parse(path: &std::path::Path, text: &str) -> Result<Config, ConfigError> {
        let c: Config = config::parse(path, text)?;
        let mut errors = Vec::new();
        c.limits.validate(&mut errors);
        if c.max_connections == 0 {
            errors.push("max_connections: must be at least 1".into());
        }
        c.backchannel.validate(&mut errors);
        c.store.validate(&mut errors);
        c.uploads.validate(&mut errors);
        c.throttle.validate(&mut errors);
        c.enrollment.validate(&mut errors);
        c.liveness.validate(&mut errors);
        ConfigError::check(path, errors)?;
        Ok(c)
    }
}

/// Runs the appserver until `shutdown`.
///
/// # Errors
/// Start-up failures (store, TLS, bind); the node never starts half-way.
pub async fn run(cfg: Config, shutdown: Shutdown) -> rsnet_common::Result<()> {
    rsnet_common::ready::clear(&cfg.data_dir);
    let me = tls::own_identity(&cfg.tls)?;
    let store = store::open(&cfg.store, &cfg.data_dir)?;
    let metrics = Registry::default();
    let kv = store.kv();
    let messages = store.messages()?;
    let feed = feed::Feed::new(feed::FEED_BYTES, &metrics);
    // Delivery records: one owner, fed by the send, the queues and ingest,
    // and written by the one store writer.
    let records = deliveries::Records::load(kv.as_ref())?;
    let (writer, committed) =
        writer::StoreWriter::start(messages.clone(), records.clone(), feed.clone())?;
    let deliveries = Deliveries::new(records, writer.clone());
    let backchannel = BackChannel::open(
        me.id.clone(),
        store.queues()?,
        kv.clone(),
        cfg.backchannel.config(),
        &metrics,
        Some(Arc::new(QueueEvents(deliveries.clone()))),
    )?;
    let outbound = Arc::new(Outbound {
        backchannel: backchannel.clone(),
        groups: Arc::new(Groups::new(kv.clone())),
        deliveries: deliveries.clone(),
        control_key: cfg
            .releases
            .key
            .as_deref()
            .map(rsnet_common::release::ReleaseKey::load)
            .transpose()
            .map_err(|e| rsnet_common::Error::Setup(e.to_string()))?
            .map(Arc::new),
    });
    let uploads = uploads::Uploads::open(
        &cfg.uploads,
        &cfg.data_dir,
        kv.clone(),
        backchannel.clone(),
        &metrics,
    )?;
    tokio::spawn(uploads.clone().sweep_until_shutdown(shutdown.clone()));
    let releases = Arc::new(releases::Releases::open(
        &cfg.releases,
        &cfg.data_dir,
        kv.clone(),
        outbound.clone(),
        &metrics,
    )?);
    let started = rsnet_common::model::Timestamp::now();
    let mut topo = Topology::load(kv.list(topology::PREFIX)?, started);
    topo.set_self(&me.id, started);
    let topology = Arc::new(Mutex::new(topo));
    let ingest = Ingest::new(
        me.id.clone(),
        messages.clone(),
        writer,
        ingest::Consumers {
            topology: topology.clone(),
            deliveries: deliveries.clone(),
            uploads: uploads.clone(),
            releases: releases.clone(),
            feed: feed.clone(),
        },
        &metrics,
    );
    tokio::spawn(liveness::watch_until_shutdown(
        me.id.clone(),
        topology.clone(),
        ingest.clone(),
        cfg.liveness.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Clients without a certificate get a TLS session only where this
    // appserver signs for enrolling nodes, and then only that path.
    let tls = ReloadingServerConfig::start_with(cfg.tls.clone(), cfg.enrollment.pki_dir.is_some())?;
    let enrollments = enrollments::Enrollments::open(
        &cfg.enrollment,
        kv.clone(),
        me.clone(),
        tls.revocations().clone(),
        &metrics,
    )?;
    let pipeline = Pipeline::new(
        // Modules: each message's class against its component's enrollment
        // (an MLM cannot pass on a class its child may not send); expiry:
        // an expired message is never stored, its report is.
        Arc::new(rsnet_common::pipeline::Chain(
            "modules",
            vec![
                Arc::new(enrollments::EnrolledClasses(enrollments.clone())),
                Arc::new(rsnet_common::pipeline::expiry::Expiry {
                    me: me.id.clone(),
                    notify: rsnet_common::pipeline::expiry::Notify::Inline,
                    dropped: metrics.counter(
                        "rsnet_qos_expired_total",
                        "forward messages dropped here as expired",
                    ),
                }),
            ],
        )),
        // Throttle: rates, windows, and the free-disk floor under the store.
        Arc::new(
            rsnet_common::pipeline::throttle::Throttle::new(me.id.clone(), &cfg.throttle, &metrics)
                .on_disk(&cfg.data_dir),
        ),
        // Terminal: validate content, store once.
        ingest,
    );
    releases.resume().await;
    // A revocation in the CRL (`rsnet-certs revoke` too) ends enrollments
    // and withdraws tokens and upload grants, as one through the API does.
    tokio::spawn(
        enrollments
            .clone()
            .follow_crl(uploads.clone(), shutdown.clone()),
    );
    let api = Arc::new(api::Api {
        enrollments,
        releases,
        uploads,
        exchange: ExchangeService::new(
            pipeline,
            backchannel,
            rsnet_common::memory::BodyBudget::new(cfg.limits.max_body_memory_bytes, &metrics),
            &metrics,
        ),
        messages,
        committed,
        feed,
        topology,
        outbound,
        deliveries,
        audit: audit::Audit::open(&cfg.data_dir)?,
        metrics: metrics.clone(),
    });
    let listener = server::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    // Children's exchanges (long-polls above all) take the lean loop.
    let lean = {
        let api = api.clone();
        rsnet_common::lean_h1::handler(move |req, peer| {
            let api = api.clone();
            async move { api.exchange.handle(req, &peer).await }
        })
    };
    let handler = move |req, peer| {
        let api = api.clone();
        async move { api.handle(req, peer).await }
    };
    let task = server::serve_children(
        listener,
        tls,
        cfg.limits.connections(cfg.max_connections),
        handler,
        (rsnet_common::envelope::EXCHANGE_PATH, lean),
        shutdown.clone(),
    );
    rsnet_common::ready::write(
        &cfg.data_dir,
        BTreeMap::from([("exchange".to_string(), addr)]),
    )?;
    tracing::info!(id = %me.id, %addr, "appserver listening");
    let mut sd = shutdown;
    sd.wait().await;
    task.abort();
    tracing::info!("appserver stopped");
    Ok(())
}
