//! rsnet-proxy: the edge (DESIGN.md §1, §4).
//!
//! Integrators call the [`local_api`]; each message gets its support
//! instance ID ([`instances`]) and the proxy's routing hop, is spooled
//! durably and answered 202. The forwarder ([`rsnet_common::forward`])
//! moves the spool upward in batches; nothing leaves the spool before the
//! parent accepted it. Files go as uploads ([`bulk`]): asked for, granted,
//! then streamed to the parent and resumed where they were cut off.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bulk;
pub mod inbox;
pub mod instances;
pub mod local_api;
pub mod modules;
mod node;
pub mod releases;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsnet_common::backchannel::{Queues, QueuesConfig};
use rsnet_common::config::{self, ConfigError, UplinkConfig};
use rsnet_common::control::NodeBase;
use rsnet_common::forward;
use rsnet_common::heartbeat::{self, StatusTree};
use rsnet_common::metrics::Registry;
use rsnet_common::pipeline::rules;
use rsnet_common::ready;
use rsnet_common::server::{self, Shutdown};
use rsnet_common::store::{self, KvStore, Spool, StoreConfig};
use rsnet_common::tls::{self, TlsPaths};
use serde::Deserialize;

/// `[local_api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalApiConfig {
    /// Listen address; must be loopback. Default `127.0.0.1:7070`.
    #[serde(default = "default_local")]
    pub listen: String,
    /// How long a client key (`key` field or `Idempotency-Key` header) is
    /// remembered, in seconds: a resend within this window is answered with
    /// the first message's ID and not spooled again. Default 86400 (a day).
    #[serde(default = "default_key_window")]
    pub key_window_s: u64,
}

impl Default for LocalApiConfig {
    fn default() -> Self {
        LocalApiConfig {
            listen: default_local(),
            key_window_s: default_key_window(),
        }
    }
}

fn default_key_window() -> u64 {
    86_400
}

/// Longest client-key window: 30 days.
const MAX_KEY_WINDOW_S: u64 = 30 * 86_400;

fn default_local() -> String {
    "127.0.0.1:7070".into()
}

/// The proxy's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Store directory (spool, support instances). Required.
    pub data_dir: PathBuf,
    /// Spool capacity in bytes. Default 1 GiB.
    #[serde(default = "default_spool")]
    pub spool_capacity_bytes: u64,
    /// Heartbeat interval in seconds. Default 60.
    #[serde(default = "config::default_heartbeat_secs")]
    pub heartbeat_interval_s: u64,
    /// The local API.
    #[serde(default)]
    pub local_api: LocalApiConfig,
    /// TLS material.
    pub tls: TlsPaths,
    /// The parent.
    pub uplink: UplinkConfig,
    /// The inbox (back-channel messages for local integrators).
    #[serde(default)]
    pub inbox: InboxConfig,
    /// Where durable state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Uploads (bulk transfers).
    #[serde(default)]
    pub bulk: bulk::BulkConfig,
    /// Releases (signed files from the provider).
    #[serde(default)]
    pub releases: releases::ReleasesConfig,
    /// Rules (`[[rule]]`) applied before spooling: filtered messages are
    /// answered 202 and never leave the host; modified ones are spooled as
    /// modified.
    #[serde(default)]
    pub rule: Vec<rsnet_common::pipeline::rules::RuleConfig>,
    /// A file of `[[rule]]`s instead (relative to this file), reloaded on
    /// SIGHUP and when it changes.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// This proxy's own throttle: rates and windows hold messages in the
    /// spool; below the free-disk floor integrators are refused (507).
    #[serde(default)]
    pub throttle: rsnet_common::pipeline::throttle::ThrottleConfig,
    /// Renewing this proxy's own certificate before it expires.
    #[serde(default)]
    pub renewal: rsnet_common::enroll::RenewalConfig,
    /// The file this was loaded from (for the `get-config` control action).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The config `rsnet-proxy enroll` writes: everything else defaults.
pub fn enrolled_config(
    data_dir: &std::path::Path,
    local_api: &str,
    tls: &TlsPaths,
    parents: &[String],
) -> String {
    use rsnet_common::enroll::{node_config, toml_str};
    node_config(
        "rsnet-proxy",
        data_dir,
        &format!("\n[local_api]\nlisten = {}\n", toml_str(local_api)),
        tls,
        parents,
    )
}

/// `[inbox]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Bytes the inbox may hold; beyond, the parent keeps (and resends)
    /// what does not fit. Default 64 MiB.
    pub capacity_bytes: u64,
    /// How long a message taken with `GET /v1/inbox` waits for its ack
    /// before it is offered again, in seconds. Default 60.
    pub lease_s: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            capacity_bytes: 64 << 20,
            lease_s: 60,
        }
    }
}

fn default_spool() -> u64 {
    1 << 30
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
        c.store.validate(&mut errors);
        c.bulk.validate(&mut errors);
        c.throttle.validate_sender(&mut errors);
        c.renewal.validate(&mut errors);
        rules::check_config(
            path,
            c.rules_file.as_deref(),
            &c.rule,
            rules::NodeKind::Proxy,
            &mut errors,
        );
        match c.local_api.listen.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            Ok(_) => errors.push("local_api.listen: must be a loopback address (the local API has no authentication)".into()),
            Err(_) => errors.push(format!("local_api.listen: {:?} is not an IP:port", c.local_api.listen)),
        }
        if c.heartbeat_interval_s == 0 {
            errors.push("heartbeat_interval_s: must be at least 1".into());
        }
        if !(1..=MAX_KEY_WINDOW_S).contains(&c.local_api.key_window_s) {
            errors.push(format!(
                "local_api.key_window_s: must be 1..={MAX_KEY_WINDOW_S}"
            ));
        }
        if c.inbox.capacity_bytes < 1 << 20 {
            errors.push("inbox.capacity_bytes: must be at least 1 MiB".into());
        }
        if c.inbox.lease_s == 0 {
            errors.push("inbox.lease_s: must be at least 1".into());
        }
        if c.spool_capacity_bytes < 1 << 20 {
            errors.push("spool_capacity_bytes: must be at least 1 MiB".into());
        }
        ConfigError::check(path, errors)?;
        Ok(c)
    }

    /// The local API address of a running proxy (reads `ready.json` when the port is 0).
    pub fn local_api_addr(&self) -> Option<SocketAddr> {
        let a: SocketAddr = self.local_api.listen.parse().ok()?;
        if a.port() != 0 {
            return Some(a);
        }
        ready::read(&self.data_dir)?
            .listen
            .get("local_api")
            .copied()
    }
}

/// Runs the proxy until `shutdown`.
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
    let instances = Arc::new(instances::Instances::load(me.id.clone(), kv.clone())?);
    let modules = Arc::new(modules::Modules::load(
        me.id.clone(),
        kv.clone(),
        instances.clone(),
    )?);
    let forward::Sender {
        uplink,
        outbox,
        forwarder,
        config: fwd_cfg,
    } = forward::Sender::new(&cfg.uplink, &cfg.tls, spool.clone(), kv.clone(), &metrics)?;
    let tree = {
        let (id, spool, modules) = (me.id.clone(), spool.clone(), modules.clone());
        let interval_s = cfg.heartbeat_interval_s;
        move || {
            let mut t =
                StatusTree::new(id.clone(), "proxy", started.elapsed().as_secs(), interval_s);
            t.spool = Some(spool.stats().into());
            t.modules = modules.status();
            t
        }
    };
    let node = node::ProxyNode::new(
        NodeBase {
            me: me.id.clone(),
            outbox: outbox.clone(),
            config: cfg.source.clone(),
            tree: Box::new(tree.clone()),
            validate: |f| Config::load(f).map(|_| ()).map_err(|e| e.to_string()),
            control_key: rsnet_common::release::load_public(cfg.releases.public_key.as_deref())
                .map_err(|e| rsnet_common::Error::Setup(e.to_string()))?,
        },
        forwarder.clone(),
        instances.clone(),
        kv.clone(),
    )?;
    let queues = Queues::open(
        store.queues()?,
        QueuesConfig {
            capacity_bytes: cfg.inbox.capacity_bytes,
            // One destination may use the whole inbox (its integrators are local).
            queue_capacity_bytes: cfg.inbox.capacity_bytes,
            lease: Duration::from_secs(cfg.inbox.lease_s),
            ..Default::default()
        },
    )?;
    queues.register_commits(&metrics);
    let bulk = bulk::Bulk::open(
        me.id.clone(),
        &cfg.bulk,
        &cfg.data_dir,
        kv.clone(),
        outbox.clone(),
        uplink.link().clone(),
        queues.clone(),
        &metrics,
    )?;
    let rels = releases::Releases::open(
        me.id.clone(),
        &cfg.releases,
        &cfg.data_dir,
        kv.clone(),
        uplink.link().clone(),
        outbox.clone(),
        queues.clone(),
    )?;
    let inbox = Arc::new(inbox::Inbox {
        bulk: bulk.clone(),
        releases: rels.clone(),
        me: me.id.clone(),
        queues,
        outbox: outbox.clone(),
        node,
        received: metrics.counter(
            "rsnet_backchannel_received_total",
            "back-channel messages received from the parent (repeats not counted)",
        ),
    });
    // Control actions left pending by a crash are carried out now (see control docs).
    inbox.resume().await;
    uplink.set_receiver(inbox.clone());
    let rules = rules::Rules::open(
        rules::RuleSource::of(cfg.source.as_deref(), cfg.rules_file.as_deref(), &cfg.rule),
        rules::NodeKind::Proxy,
        None,
        &metrics,
    )
    .map_err(|e| rsnet_common::Error::Setup(format!("rules: {e}")))?;
    tokio::spawn(rules.clone().watch(shutdown.clone()));
    let l2 = uplink.link().clone();
    let api = Arc::new(local_api::LocalApi {
        me: me.id.clone(),
        outbox: outbox.clone(),
        dead_letters: forwarder.dead_letters().clone(),
        instances: instances.clone(),
        modules,
        inbox,
        bulk: bulk.clone(),
        releases: rels.clone(),
        rules: rules.clone(),
        metrics: metrics.clone(),
        parent: Arc::new(move || l2.current_parent().to_string()),
        key_window: Duration::from_secs(cfg.local_api.key_window_s),
        parked: {
            let f = forwarder.clone();
            Arc::new(move || f.parked_classes())
        },
        disk: (cfg.throttle.min_free_disk_bytes > 0).then(|| {
            rsnet_common::disk::DiskFloor::new(&cfg.data_dir, cfg.throttle.min_free_disk_bytes)
        }),
    });
    let listener = server::bind(&cfg.local_api.listen).await?;
    let addr = listener.local_addr()?;
    let handler = move |req, _peer| {
        let api = api.clone();
        async move { api.handle(req).await }
    };
    let task = server::serve(listener, None, 1024, handler, shutdown.clone());
    outbox
        .push(&[heartbeat::notice(
            &me.id,
            heartbeat::COLD_START,
            "proxy started",
        )])
        .await?;
    forwarder.set_throttle(Arc::new(rsnet_common::pipeline::throttle::Throttle::new(
        me.id.clone(),
        &cfg.throttle,
        &metrics,
    )));
    let fwd = tokio::spawn(forwarder.clone().run(shutdown.clone()));
    // A parent out of reach is reported once it is reached again.
    tokio::spawn(forward::outage::report_until_shutdown(
        uplink.link().clone(),
        outbox.clone(),
        me.id.clone(),
        forward::outage::Holdings::default(),
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
    tokio::spawn(bulk.run(shutdown.clone()));
    tokio::spawn(rels.run(shutdown.clone()));
    tokio::spawn(uplink.clone().poll_until_shutdown(
        cfg.uplink.poll_wait(),
        fwd_cfg.exchange_timeout,
        shutdown.clone(),
    ));
    ready::write(
        &cfg.data_dir,
        BTreeMap::from([("local_api".to_string(), addr)]),
    )?;
    tracing::info!(id = %me.id, local_api = %addr, parent = uplink.link().current_parent(), "proxy running");

    let interval = Duration::from_secs(cfg.heartbeat_interval_s);
    forward::heartbeat_until_shutdown(forwarder, tree, interval, fwd, shutdown).await;
    task.abort();
    tracing::info!("proxy stopped");
    Ok(())
}
