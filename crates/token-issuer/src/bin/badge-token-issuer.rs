//! `badge-token-issuer`: serve TokenRequest, key management, OIDC discovery and the
//! ExternalJWTSigner (see `badge_token_issuer::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = badge_token_issuer::cli::Cli::parse();
    let runtime = badge_runtime::server::runtime()?;
    runtime.block_on(async {
        let result = badge_token_issuer::cli::run(cli).await;
        badge_runtime::telemetry::flush();
        result
    })
}
