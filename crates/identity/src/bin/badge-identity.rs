//! `badge-identity`: serve the identity service, or migrate its store.

use std::sync::Arc;

use badge_identity::IdentityConfig;
use badge_runtime::config;
use badge_store::{Store, StoreOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "badge-identity", version, about = "Badge identity service")]
struct Cli {
    #[command(flatten)]
    config: config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC over mTLS.
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = run().await;
    badge_runtime::telemetry::flush();
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: IdentityConfig = cli.config.load()?;
    badge_runtime::telemetry::init(&cfg.log);
    let store = Store::connect(
        &cfg.database.url,
        StoreOptions {
            max_connections: cfg.database.max_connections,
            sealer: cfg.encryption.sealer()?,
            ..StoreOptions::default()
        },
    )
    .await?;
    match cli.command {
        Command::Migrate => {
            store.migrate().await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cfg.server.listen).await?;
            badge_identity::serve(
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
