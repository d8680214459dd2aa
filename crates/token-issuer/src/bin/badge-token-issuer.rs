//! `badge-token-issuer`: serve TokenRequest, key management, OIDC discovery and the
//! ExternalJWTSigner (see `badge_token_issuer::cli`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = badge_token_issuer::cli::run(badge_token_issuer::cli::Cli::parse()).await;
    badge_runtime::telemetry::flush();
    result
}
