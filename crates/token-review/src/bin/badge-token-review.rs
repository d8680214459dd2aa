//! `badge-token-review`: serve TokenReview (mTLS gRPC) and, if configured, the
//! Kubernetes token webhook (see `badge_token_review::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = badge_token_review::cli::Cli::parse();
    let runtime = badge_runtime::server::runtime()?;
    runtime.block_on(async {
        let result = badge_token_review::cli::run(cli).await;
        badge_runtime::telemetry::flush();
        result
    })
}
