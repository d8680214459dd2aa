//! `badge`: operator commands shared by every service (see `badge_cli::cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    let cli = badge_cli::cli::Cli::parse();
    let runtime = badge_runtime::server::runtime()?;
    runtime.block_on(async {
        let result = badge_cli::cli::run(cli).await;
        badge_runtime::telemetry::flush();
        result
    })
}
