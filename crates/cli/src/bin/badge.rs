//! `badge`: operator commands shared by every service (see `badge_cli::cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    let cli = badge_cli::cli::Cli::parse();
    badge_runtime::server::run_main(badge_cli::cli::run(cli))?
}
