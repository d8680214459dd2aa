//! `badge-identity`: serve the identity service, or migrate its store.

use std::path::PathBuf;
use std::sync::Arc;

use badge_identity::IdentityConfig;
use badge_runtime::{BootstrapPolicy, config};
use badge_store::{Store, StoreOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "badge-identity", version, about = "Badge identity service")]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "BADGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Override a setting: `--set server.listen=127.0.0.1:9000` (repeatable).
    #[arg(long = "set", global = true)]
    set: Vec<String>,
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
    let cfg: IdentityConfig = config::load(cli.config.as_deref(), std::env::vars(), &cli.set)?;
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
                Arc::new(BootstrapPolicy),
                badge_runtime::server::shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}
