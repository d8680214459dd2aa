//! `badge-token-review`: serve TokenReview (mTLS gRPC) and, if configured, the
//! Kubernetes token webhook (see `badge_token_review::cli`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = badge_token_review::cli::run(badge_token_review::cli::Cli::parse()).await;
    badge_runtime::telemetry::flush();
    result
}
