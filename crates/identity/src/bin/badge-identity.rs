//! `badge-identity`: serve the identity service, or migrate its store (see
//! `badge_identity::cli`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = badge_identity::cli::run(badge_identity::cli::Cli::parse()).await;
    badge_runtime::telemetry::flush();
    result
}
