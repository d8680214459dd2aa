//! The `badge-identity` command line (parsed by the tests that keep
//! `docker-compose.yml` and the docs in step with it).

use std::sync::Arc;

use badge_runtime::config;
use clap::{Parser, Subcommand};

use crate::IdentityConfig;

#[derive(Debug, Parser)]
#[command(name = "badge-identity", version, about = "Badge identity service")]
pub struct Cli {
    #[command(flatten)]
    pub config: config::ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC over mTLS.
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
}

/// Loads the configuration and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg: IdentityConfig = badge_runtime::service::start(&cli.config)?;
    let store = badge_runtime::service::open_store(&cfg.database, cfg.encryption.sealer()?).await?;
    match cli.command {
        Command::Migrate => {
            store.migrate().await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cfg.server.listen).await?;
            crate::serve(
                &cfg,
                store,
                Arc::new(badge_core::SystemClock),
                listener,
                badge_runtime::server::shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}
