//! `badge-identity`: serve the identity service, or migrate its store (see
//! `badge_identity::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = badge_identity::cli::Cli::parse();
    badge_runtime::server::run_main(badge_identity::cli::run(cli))?
}
