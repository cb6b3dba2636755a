//! `rsnet-mlm --config FILE`, `rsnet-mlm enroll …`
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rsnet_mlm::{run, Config};

/// See [`rsnet_common::process`].
#[global_allocator]
static ALLOCATOR: rsnet_common::process::Allocator = rsnet_common::process::Allocator {};

#[derive(Parser)]
#[command(
    name = "rsnet-mlm",
    version,
    about = "rsnet mid-level manager: relays, filters and fans out",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The TOML config file (runs the MLM).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll this host as an MLM with a one-time token (`rsnet-ctl
    /// enroll --role mlm`): its key is made here and never leaves it.
    /// Writes DIR/tls and a ready config.
    Enroll {
        /// Parent URL (repeatable, failover order; the first is asked).
        #[arg(long = "parent", required = true)]
        parents: Vec<String>,
        /// The token (`ID:SECRET`).
        #[arg(long)]
        token: String,
        /// The provider CA certificate (PEM), to know the parent.
        #[arg(long)]
        ca: PathBuf,
        /// Directory for TLS material and data.
        #[arg(long)]
        dir: PathBuf,
        /// The config file to write (default DIR/mlm.toml; never replaced).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The provider's CRL, as this host receives it (written into the
        /// config: a revoked parent is refused).
        #[arg(long)]
        crl: Option<PathBuf>,
        /// The address children connect to, in the config.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// A DNS name or IP children reach this MLM by (repeatable;
        /// default localhost, 127.0.0.1, ::1).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    rsnet_common::process::no_huge_pages();
    let cli = Cli::parse();
    match (cli.cmd, cli.config) {
        (None, Some(config)) => {
            rsnet_common::server::daemon_main("rsnet-mlm", &config, Config::load, run).await
        }
        (None, None) => {
            eprintln!("rsnet-mlm: --config FILE is needed (or a subcommand; see --help)");
            ExitCode::from(2)
        }
        (
            Some(Cmd::Enroll {
                parents,
                token,
                ca,
                dir,
                config,
                crl,
                listen,
                hosts,
            }),
            _,
        ) => {
            let config = config.unwrap_or_else(|| dir.join("mlm.toml"));
            let setup = rsnet_common::enroll::Setup {
                parents: &parents,
                token: &token,
                ca: &ca,
                dir: &dir,
                role: rsnet_common::tls::Role::Mlm,
                hosts: &hosts,
                config: &config,
                crl: crl.as_deref(),
            };
            let data = dir.join("data");
            let r = rsnet_common::enroll::setup(setup, |tls| {
                rsnet_mlm::enrolled_config(&data, &listen, tls, &parents)
            })
            .await;
            match r {
                Ok(id) => {
                    println!("enrolled as {} ({})", id.id, config.display());
                    println!("run: rsnet-mlm --config {}", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rsnet-mlm: enroll: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
