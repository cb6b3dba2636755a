//! `rsnet-appserver --config FILE`
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rsnet_appserver::{run, Config};

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
    rsnet_common::init_logging();
    let cli = Cli::parse();
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rsnet-appserver: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = rsnet_common::server::shutdown_on_signals();
    match run(cfg, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rsnet-appserver: {e}");
            ExitCode::FAILURE
        }
    }
}
