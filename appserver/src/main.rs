//! `rsnet-appserver --config FILE`
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rsnet_appserver::{run, Config};

/// See [`rsnet_common::process`].
#[global_allocator]
static ALLOCATOR: rsnet_common::process::Allocator = rsnet_common::process::Allocator {};

#[derive(Parser)]
#[command(
    name = "rsnet-appserver",
    version,
    about = "rsnet appserver: stores every message exactly once"
)]
struct Cli {
    /// The TOML config file.
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    rsnet_common::process::no_huge_pages();
    let cli = Cli::parse();
    rsnet_common::server::daemon_main("rsnet-appserver", &cli.config, Config::load, run).await
}
