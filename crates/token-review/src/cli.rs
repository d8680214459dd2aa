//! The `badge-token-review` command line (parsed by the tests that keep
//! `docker-compose.yml` and the docs in step with it).

use std::sync::Arc;

use badge_runtime::config::ConfigArgs;
use clap::{Parser, Subcommand};

use crate::{Listeners, ReviewConfig};

#[derive(Debug, Parser)]
#[command(name = "badge-token-review", version, about = "Badge token review")]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (mTLS) and, if configured, the webhook (HTTPS).
    Serve,
}

/// Loads the configuration and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg: ReviewConfig = badge_runtime::service::start(&cli.config)?;
    match cli.command {
        Command::Serve => {
            // The key-encryption key identity seals Secret data with.
            let store =
                badge_runtime::service::open_store(&cfg.database, cfg.encryption.sealer()?).await?;
            let webhook = match &cfg.webhook {
                Some(w) => Some(tokio::net::TcpListener::bind(w.listen).await?),
                None => None,
            };
            let listeners = Listeners {
                grpc: tokio::net::TcpListener::bind(cfg.server.listen).await?,
                webhook,
            };
            crate::serve(
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
