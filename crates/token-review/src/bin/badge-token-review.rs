//! `badge-token-review`: serve TokenReview (mTLS gRPC) and, if configured, the
//! Kubernetes token webhook (see `badge_token_review::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = badge_token_review::cli::Cli::parse();
    badge_runtime::server::run_main(badge_token_review::cli::run(cli))?
}
