//! `badge health`: one grpc.health.v1 `Check` over the services' mTLS, for container
//! health checks (docker-compose) and scripts. Health is open to any caller with a
//! certificate from the CA, so a service's own client certificate will do.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub use tonic_health::pb::health_check_response::ServingStatus;

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The gRPC listener, `https://host:port`.
    #[arg(long)]
    pub endpoint: String,
    /// CA the server certificate must chain to (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// Client certificate to present (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Name to verify in the server certificate (default: the endpoint's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Service to ask about, e.g. `badge.identity.v1.NamespaceService` (default: the
    /// whole server).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_seconds: u64,
}

impl HealthArgs {
    /// The name checked against the server certificate.
    pub fn server_name(&self) -> anyhow::Result<String> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let uri: tonic::transport::Uri = self
            .endpoint
            .parse()
            .with_context(|| format!("--endpoint {:?} is not a URL", self.endpoint))?;
        let host = uri
            .host()
            .with_context(|| format!("--endpoint {:?} names no host", self.endpoint))?;
        Ok(host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string())
    }
}

/// The server's answer; an error when it cannot be reached, the TLS handshake
/// fails or the call is refused.
pub async fn check(args: &HealthArgs) -> anyhow::Result<ServingStatus> {
    if !args.endpoint.starts_with("https://") {
        anyhow::bail!(
            "--endpoint must be an https:// URL (Badge serves gRPC over mTLS only), got {:?}",
            args.endpoint
        );
    }
    let tls = TlsMaterial::load(&TlsFiles {
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    })?;
    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    let server_name = args.server_name()?;
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())?
            .connect_timeout(timeout)
            .tls_config(tls.client_config(&server_name))?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.endpoint))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("health check: {}: {}", s.code(), s.message()))?;
        Ok::<_, anyhow::Error>(response.into_inner().status)
    };
    let status = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {timeout:?}", args.endpoint))??;
    Ok(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown))
}
