//! `badge-identity`: serve the identity service, or migrate its store (see
//! `badge_identity::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = badge_identity::cli::Cli::parse();
    let runtime = badge_runtime::server::runtime()?;
    runtime.block_on(async {
        let result = badge_identity::cli::run(cli).await;
        badge_runtime::telemetry::flush();
        result
    })
}
