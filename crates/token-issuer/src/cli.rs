//! The `badge-token-issuer` command line (parsed by the tests that keep
//! `docker-compose.yml` and the docs in step with it).

use std::sync::Arc;

use badge_runtime::config;
use clap::{Parser, Subcommand};

use crate::{IssuerConfig, Listeners};

#[derive(Debug, Parser)]
#[command(name = "badge-token-issuer", version, about = "Badge token issuer")]
pub struct Cli {
    #[command(flatten)]
    pub config: config::ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (mTLS), OIDC discovery (HTTPS) and, if configured, the
    /// ExternalJWTSigner socket.
    Serve,
}

/// Loads the configuration and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg: IssuerConfig = badge_runtime::service::start(&cli.config)?;
    match cli.command {
        Command::Serve => {
            // The same key-encryption key opens Secret data sealed by identity.
            let sealer = config::sealer(
                cfg.keys.kek_file.as_deref(),
                cfg.keys.kek.as_deref(),
                "keys",
            )?;
            let store = badge_runtime::service::open_store(&cfg.database, sealer).await?;
            let listeners = Listeners {
                grpc: tokio::net::TcpListener::bind(cfg.server.listen).await?,
                oidc: tokio::net::TcpListener::bind(cfg.oidc.listen).await?,
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
