//! `badge-token-issuer`: serve TokenRequest, key management, OIDC discovery and the
//! ExternalJWTSigner; or generate a key-encryption key.

use std::sync::Arc;

use badge_runtime::config;
use badge_store::{Store, StoreOptions};
use badge_token_issuer::{IssuerConfig, Listeners};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "badge-token-issuer", version, about = "Badge token issuer")]
struct Cli {
    #[command(flatten)]
    config: config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (mTLS), OIDC discovery (HTTPS) and, if configured, the
    /// ExternalJWTSigner socket.
    Serve,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = run().await;
    badge_runtime::telemetry::flush();
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: IssuerConfig = cli.config.load()?;
    badge_runtime::telemetry::init(&cfg.log);
    match cli.command {
        Command::Serve => {
            let store = Store::connect(
                &cfg.database.url,
                StoreOptions {
                    max_connections: cfg.database.max_connections,
                    // The same key-encryption key opens Secret data sealed by identity.
                    sealer: badge_keys::Kek::load(
                        cfg.keys.kek_file.as_deref(),
                        cfg.keys.kek.as_deref(),
                    )?
                    .map(|k| {
                        std::sync::Arc::new(k) as std::sync::Arc<dyn badge_core::seal::DataSealer>
                    }),
                    ..StoreOptions::default()
                },
            )
            .await?;
            let listeners = Listeners {
                grpc: tokio::net::TcpListener::bind(cfg.server.listen).await?,
                oidc: tokio::net::TcpListener::bind(cfg.oidc.listen).await?,
            };
            badge_token_issuer::serve(
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
