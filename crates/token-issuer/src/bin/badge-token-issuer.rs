//! `badge-token-issuer`: serve TokenRequest, key management, OIDC discovery and the
//! ExternalJWTSigner (see `badge_token_issuer::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = badge_token_issuer::cli::Cli::parse();
    badge_runtime::server::run_main(badge_token_issuer::cli::run(cli))?
}
