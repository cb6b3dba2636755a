//! rsnet-mlm: a mid-level manager (DESIGN.md §1, §4).
//!
//! Children POST envelopes; the MLM runs each through its pipeline
//! ([`rsnet_common::pipeline`]): the screen, service modules and throttle
//! (pass-through stages today), then the [`relay`], which appends its
//! routing hop and relays upward synchronously: a child hears "accepted"
//! only after the parent accepted, and "rejected, retry after" when the
//! parent is down. Concurrent children's
//! batches are coalesced into fewer upstream POSTs. The MLM holds no forward
//! state of its own; what it originates (heartbeats, lifecycle notices) goes
//! through its own spool ([`rsnet_common::forward`]). Upload bytes
//! (`/rs/v1/bulk/TOKEN`) are streamed to the parent by [`bulk`], never
//! stored; release files are fetched once from the parent and served to
//! the children below by [`releases`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bulk;
pub mod downlink;
pub mod enroll;
pub mod relay;
pub mod releases;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use rsnet_common::backchannel::BackChannel;
use rsnet_common::config::{self, BackChannelSection, ConfigError, UplinkConfig};
use rsnet_common::control::NodeBase;
use rsnet_common::forward;
use rsnet_common::heartbeat::{self, StatusTree};
use rsnet_common::http_util::{error, text};
use rsnet_common::metrics::Registry;
use rsnet_common::pipeline::{self, rules, ExchangeService, Pipeline};
use rsnet_common::ready;
use rsnet_common::server::{self, Shutdown};
use rsnet_common::store::{self, KvStore, Spool, StoreConfig};
use rsnet_common::tls::{self, ReloadingServerConfig, TlsPaths};
use serde::Deserialize;

/// The MLM's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Store directory (its own spool). Required.
    pub data_dir: PathBuf,
    /// Listen address for children. Default `0.0.0.0:8443`.
    #[serde(default = "config::default_listen")]
    pub listen: String,
    /// Cap on open connections. Default 20000.
    #[serde(default = "config::default_max_connections")]
    pub max_connections: usize,
    /// Caps per peer identity and on body memory.
    #[serde(default)]
    pub limits: config::ParentLimits,
    /// Heartbeat interval in seconds. Default 60.
    #[serde(default = "config::default_heartbeat_secs")]
    pub heartbeat_interval_s: u64,
    /// Bytes for the MLM's own spool (heartbeats, notices). Default 64 MiB.
    #[serde(default = "default_spool")]
    pub spool_capacity_bytes: u64,
    /// TLS material.
    pub tls: TlsPaths,
    /// The parent.
    pub uplink: UplinkConfig,
    /// Back-channel queues toward the children.
    #[serde(default)]
    pub backchannel: BackChannelSection,
    /// Where durable state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Relaying uploads.
    #[serde(default)]
    pub bulk: bulk::BulkConfig,
    /// The release cache.
    #[serde(default)]
    pub releases: releases::ReleasesConfig,
    /// Rates and time windows of what passes upward.
    #[serde(default)]
    pub throttle: pipeline::throttle::ThrottleConfig,
    /// Rules (`[[rule]]`), in order: the first that matches a message decides.
    #[serde(default)]
    pub rule: Vec<pipeline::rules::RuleConfig>,
    /// A file of `[[rule]]`s instead (relative to this file), reloaded on
    /// SIGHUP and when it changes.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// Relaying enrollments of nodes below.
    #[serde(default)]
    pub enrollment: enroll::EnrollmentRelayConfig,
    /// Renewing this MLM's own certificate.
    #[serde(default)]
    pub renewal: rsnet_common::enroll::RenewalConfig,
    /// The file this was loaded from (for the `get-config` control action).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The config `rsnet-mlm enroll` writes: everything else defaults.
pub fn enrolled_config(
    data_dir: &std::path::Path,
    listen: &str,
    tls: &TlsPaths,
    parents: &[String],
) -> String {
    use rsnet_common::enroll::{node_config, toml_str};
    node_config(
        "rsnet-mlm",
        data_dir,
        &format!("listen = {}\n", toml_str(listen)),
        tls,
        parents,
    )
}

fn default_spool() -> u64 {
    64 << 20
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
        let mut c: Config = config::parse(path, text)?;
        c.source = Some(path.to_path_buf());
        let mut errors = Vec::new();
        c.uplink.validate(&mut errors);
        c.backchannel.validate(&mut errors);
        c.store.validate(&mut errors);
        c.bulk.validate(&mut errors);
        c.throttle.validate(&mut errors);
        c.renewal.validate(&mut errors);
        rules::check_config(
            path,
            c.rules_file.as_deref(),
            &c.rule,
            rules::NodeKind::Mlm,
            &mut errors,
        );
        if c.heartbeat_interval_s == 0 {
            errors.push("heartbeat_interval_s: must be at least 1".into());
        }
        c.limits.validate(&mut errors);
        if c.max_connections == 0 {
            errors.push("max_connections: must be at least 1".into());
        }
        ConfigError::check(path, errors)?;
        Ok(c)
    }
}

/// Runs the MLM until `shutdown`.
///
/// # Errors
/// Start-up failures.
pub async fn run(cfg: Config, shutdown: Shutdown) -> rsnet_common::Result<()> {
    ready::clear(&cfg.data_dir);
    let started = Instant::now();
    let me = tls::own_identity(&cfg.tls)?;
    let metrics = Registry::default();
    let store = store::open(&cfg.store, &cfg.data_dir)?;
    let spool: Arc<dyn Spool> = store.spool(cfg.spool_capacity_bytes)?;
    let kv: Arc<dyn KvStore> = store.kv();
    let forward::Sender {
        uplink,
        outbox,
        forwarder,
        config: fwd_cfg,
    } = forward::Sender::new(&cfg.uplink, &cfg.tls, spool.clone(), kv.clone(), &metrics)?;
    let bc = BackChannel::open(
        me.id.clone(),
        store.queues()?,
        kv.clone(),
        cfg.backchannel.config(),
        &metrics,
        None,
    )?;
    // The operator's rules ([[rule]] or rules_file), reloaded on SIGHUP and
    // on a change; aggregates are held in this MLM's store.
    let aggregator = rules::Aggregator::open(me.id.clone(), kv.clone(), outbox.clone(), &metrics)?;
    let rules = rules::Rules::open(
        rules::RuleSource::of(cfg.source.as_deref(), cfg.rules_file.as_deref(), &cfg.rule),
        rules::NodeKind::Mlm,
        Some(aggregator.clone()),
        &metrics,
    )
    .map_err(|e| rsnet_common::Error::Setup(format!("rules: {e}")))?;
    tokio::spawn(aggregator.run(shutdown.clone()));
    tokio::spawn(rules.clone().watch(shutdown.clone()));
    let cache = releases::ReleaseCache::open(
        me.id.clone(),
        &cfg.releases,
        &cfg.data_dir,
        kv.clone(),
        uplink.link().clone(),
        bc.clone(),
        outbox.clone(),
        rules.clone(),
        &metrics,
    )?;
    tokio::spawn(cache.clone().run(shutdown.clone()));
    let transfers = Arc::new(bulk::BulkRelay::new(
        uplink.link().clone(),
        &cfg.bulk,
        &metrics,
    ));
    let pipeline = Pipeline::new(
        // Service modules: expiry, the rules (filter, modify, aggregate),
        // the watch that frees cached releases as reports pass, and this
        // MLM's limit on uploads.
        Arc::new(pipeline::Chain(
            "modules",
            vec![
                // Expired messages go no further (reported through the spool).
                Arc::new(pipeline::expiry::Expiry {
                    me: me.id.clone(),
                    notify: pipeline::expiry::Notify::Spool(outbox.clone()),
                    dropped: metrics.counter(
                        "rsnet_qos_expired_total",
                        "forward messages dropped here as expired",
                    ),
                }),
                rules.clone(),
                Arc::new(releases::ReleaseWatch(cache.clone())),
                Arc::new(bulk::BulkGate {
                    me: me.id.clone(),
                    max_bytes: cfg.bulk.max_bytes,
                    backchannel: bc.clone(),
                }),
            ],
        )),
        // Throttle: rates, time windows, a free-disk floor and a cap on
        // the uploads passing here ([throttle]).
        Arc::new(
            pipeline::throttle::Throttle::new(me.id.clone(), &cfg.throttle, &metrics)
                .on_disk(&cfg.data_dir)
                .with_bulk({
                    let t = transfers.clone();
                    Arc::new(move || t.in_progress())
                }),
        ),
        // Terminal: the hop, the budget, the parent.
        Arc::new(relay::Relay::start(
            me.id.clone(),
            uplink.clone(),
            kv.clone(),
            fwd_cfg.clone(),
            &metrics,
        )),
    );
    let exchange = Arc::new(ExchangeService::new(
        pipeline,
        bc.clone(),
        rsnet_common::memory::BodyBudget::new(cfg.limits.max_body_memory_bytes, &metrics),
        &metrics,
    ));
    let tree = {
        let (id, spool, bc) = (me.id.clone(), spool.clone(), bc.clone());
        let interval_s = cfg.heartbeat_interval_s;
        move || {
            let mut t = StatusTree::new(id.clone(), "mlm", started.elapsed().as_secs(), interval_s);
            t.spool = Some(spool.stats().into());
            let q = bc.queues().stats();
            t.queues = Some(heartbeat::Level {
                messages: q.messages,
                bytes: q.bytes,
                capacity: None,
            });
            t
        }
    };
    let node: Arc<NodeBase> = Arc::new(NodeBase {
        me: me.id.clone(),
        outbox: outbox.clone(),
        config: cfg.source.clone(),
        tree: Box::new(tree.clone()),
        validate: |f| Config::load(f).map(|_| ()).map_err(|e| e.to_string()),
        control_key: rsnet_common::release::load_public(cfg.releases.public_key.as_deref())
            .map_err(|e| rsnet_common::Error::Setup(e.to_string()))?,
    });
    // Control actions left pending by a crash are carried out now (see control docs).
    rsnet_common::control::run_pending(bc.queues(), node.as_ref(), &outbox).await;
    uplink.set_receiver(Arc::new(downlink::Downlink {
        releases: cache.clone(),
        rules,
        filtered: metrics.counter(
            "rsnet_backchannel_filtered_total",
            "back-channel messages from the parent dropped by a rule",
        ),
        backchannel: bc.clone(),
        received: metrics.counter(
            "rsnet_backchannel_received_total",
            "back-channel messages received from the parent (repeats not counted)",
        ),
        node,
        outbox: outbox.clone(),
    }));

    let server_tls = ReloadingServerConfig::start_with(cfg.tls.clone(), cfg.enrollment.accept)?;
    let enrolls = Arc::new(enroll::EnrollRelay {
        me: me.clone(),
        link: uplink.link().clone(),
        gate: rsnet_common::enroll::Gate::default(),
    });
    let listener = server::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    // Children's exchanges (long-polls above all) take the lean loop.
    let lean = {
        let exchange = exchange.clone();
        rsnet_common::lean_h1::handler(move |req, peer| {
            let exchange = exchange.clone();
            async move { exchange.handle(req, &peer).await }
        })
    };
    let m2 = metrics.clone();
    let handler = move |req: http::Request<hyper::body::Incoming>, peer: Arc<server::Peer>| {
        let (exchange, metrics, transfers, cache, enrolls) = (
            exchange.clone(),
            m2.clone(),
            transfers.clone(),
            cache.clone(),
            enrolls.clone(),
        );
        // Each route's future is boxed, so that this one, which hyper keeps
        // for every connection, is small: 100k idle children each hold one
        // long-poll, and without the boxes each also held room for the
        // largest route (a bulk relay), about 11 KiB.
        async move {
            if pipeline::exchange::is_exchange(&req) {
                return Box::pin(exchange.handle(req, &peer)).await;
            }
            if req.uri().path() == rsnet_common::enroll::ENROLL_PATH {
                return Box::pin(enrolls.handle(req, &peer)).await;
            }
            if req
                .uri()
                .path()
                .starts_with(rsnet_common::bulk::BULK_PREFIX)
            {
                return Box::pin(transfers.handle(req, &peer)).await;
            }
            if req.uri().path().starts_with("/rs/v1/releases/") && req.method() == http::Method::GET
            {
                return Box::pin(cache.serve(req, &peer)).await;
            }
            match req.uri().path() {
                "/metrics" => text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    metrics.render(),
                ),
                p => error(StatusCode::NOT_FOUND, format!("no such path {p}")),
            }
        }
    };
    let task = server::serve_children(
        listener,
        server_tls,
        cfg.limits.connections(cfg.max_connections),
        handler,
        (rsnet_common::envelope::EXCHANGE_PATH, lean),
        shutdown.clone(),
    );
    ready::write(
        &cfg.data_dir,
        BTreeMap::from([("exchange".to_string(), addr)]),
    )?;
    tracing::info!(id = %me.id, %addr, parent = uplink.link().current_parent(), "mlm listening");

    outbox
        .push(&[heartbeat::notice(
            &me.id,
            heartbeat::COLD_START,
            "mlm started",
        )])
        .await?;
    let fwd = tokio::spawn(forwarder.clone().run(shutdown.clone()));
    // A parent out of reach is reported once it is reached again: for how
    // long, and what this MLM held back meanwhile.
    let queues = bc.queues().clone();
    tokio::spawn(forward::outage::report_until_shutdown(
        uplink.link().clone(),
        outbox.clone(),
        me.id.clone(),
        forward::outage::Holdings {
            deferred: Some(metrics.counter(
                "rsnet_relay_deferred_total",
                "child messages answered retry-after",
            )),
            queued: Some(Box::new(move || {
                let s = queues.stats();
                (s.messages, s.bytes)
            })),
        },
        shutdown.clone(),
    ));
    tokio::spawn(rsnet_common::enroll::renew_until_shutdown(
        uplink.link().clone(),
        cfg.tls.clone(),
        cfg.renewal.clone(),
        metrics.counter(
            "rsnet_certificate_renewals_total",
            "own certificate renewed",
        ),
        shutdown.clone(),
    ));
    tokio::spawn(uplink.clone().poll_until_shutdown(
        cfg.uplink.poll_wait(),
        fwd_cfg.exchange_timeout,
        shutdown.clone(),
    ));
    let interval = Duration::from_secs(cfg.heartbeat_interval_s);
    forward::heartbeat_until_shutdown(forwarder, tree, interval, fwd, shutdown).await;
    task.abort();
    tracing::info!("mlm stopped");
    Ok(())
}
