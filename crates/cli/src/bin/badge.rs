//! `badge`: operator commands shared by every service (see `badge_cli::cli`).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let result = badge_cli::cli::run(badge_cli::cli::Cli::parse()).await;
    badge_runtime::telemetry::flush();
    result
}
