//! `badge-token-review`: serve TokenReview (mTLS gRPC) and, if configured, the
//! Kubernetes token webhook (HTTPS).

use std::sync::Arc;

use badge_runtime::config::ConfigArgs;
use badge_store::{Store, StoreOptions};
use badge_token_review::{Listeners, ReviewConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "badge-token-review", version, about = "Badge token review")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (mTLS) and, if configured, the webhook (HTTPS).
    Serve,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: ReviewConfig = cli.config.load()?;
    badge_runtime::telemetry::init(&cfg.log);
    match cli.command {
        Command::Serve => {
            let store = Store::connect(
                &cfg.database.url,
                StoreOptions {
                    max_connections: cfg.database.max_connections,
                    // The key-encryption key identity seals Secret data with.
                    sealer: cfg.encryption.sealer()?,
                    ..StoreOptions::default()
                },
            )
            .await?;
            let webhook = match &cfg.webhook {
                Some(w) => Some(tokio::net::TcpListener::bind(w.listen).await?),
                None => None,
            };
            let listeners = Listeners {
                grpc: tokio::net::TcpListener::bind(cfg.server.listen).await?,
                webhook,
            };
            badge_token_review::serve(
                &cfg,
                store,
                Arc::new(badge_core::SystemClock),
                listeners,
                badge_runtime::server::shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}
