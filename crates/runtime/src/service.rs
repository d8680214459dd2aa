//! What every service binary does before it serves: load its configuration,
//! start logging and telemetry, open the store. Each service's `cli.rs` then
//! declares only its own commands.

use std::sync::Arc;

use badge_core::seal::DataSealer;
use badge_store::{Store, StoreOptions};
use serde::de::DeserializeOwned;

use crate::config::{ConfigArgs, DatabaseConfig, LogConfig, TelemetryConfig, Validate};

/// The sections every service's configuration has.
pub trait ServiceConfig: DeserializeOwned + Validate {
    /// The binary's name, as logs and traces report it (`badge-identity`).
    const NAME: &'static str;
    fn log(&self) -> &LogConfig;
    fn telemetry(&self) -> &TelemetryConfig;
}

/// Loads and validates the configuration, then installs logging and telemetry
/// for the service. Must run inside the tokio runtime (the OTLP exporter does).
pub fn start<C: ServiceConfig>(args: &ConfigArgs) -> anyhow::Result<C> {
    let config: C = args.load()?;
    crate::telemetry::init_with(config.log(), config.telemetry(), C::NAME)
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(config)
}

/// The store of `database`, sealing with `sealer` (lazy: no connection is made
/// until needed, so the service starts and reports NOT_SERVING while the database
/// is down).
pub async fn open_store(
    database: &DatabaseConfig,
    sealer: Option<Arc<dyn DataSealer>>,
) -> anyhow::Result<Store> {
    Ok(Store::connect(
        &database.url,
        StoreOptions {
            max_connections: database.max_connections,
            sealer,
            ..StoreOptions::default()
        },
    )
    .await?)
}
