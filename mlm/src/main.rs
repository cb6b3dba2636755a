//! `rsnet-mlm --config FILE`
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rsnet_mlm::{run, Config};

#[derive(Parser)]
#[command(
    name = "rsnet-mlm",
    version,
    about = "rsnet mid-level manager: relays, filters and fans out"
)]
struct Cli {
    /// The TOML config file.
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    rsnet_common::server::daemon_main("rsnet-mlm", &cli.config, Config::load, run).await
}
