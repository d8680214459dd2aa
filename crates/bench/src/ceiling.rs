//! One command for the machine's mTLS gRPC ceiling: a throwaway dev PKI, the echo
//! server in this process on 127.0.0.1:0, and the echo scenario against it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use badge_runtime::pki;
use badge_runtime::tls::{TlsFiles, TlsMaterial};

use crate::echo::EchoServer;
use crate::load::{self, LoadConfig};
use crate::report::Report;
use crate::scenario::Scenario;

/// What to run against the in-process echo server.
#[derive(Debug, Clone)]
pub struct CeilingConfig {
    pub connections: usize,
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub threads: Option<usize>,
    pub payload_bytes: usize,
}

/// Generates a temporary PKI (removed afterwards), serves echo with the
/// `identity` server certificate, and loads it as the admin client.
pub async fn run(config: &CeilingConfig) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir().context("temporary directory for the dev PKI")?;
    let pki = pki::generate(dir.path(), &[]).context("generating the dev PKI")?;
    let server_cert = pki.server("identity");
    let server_tls = TlsMaterial::load(&TlsFiles {
        ca: pki.ca.clone(),
        cert: server_cert.cert,
        key: server_cert.key,
    })?;
    let server = EchoServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &server_tls).await?;
    let load = LoadConfig {
        target: server.url(),
        server_name: "localhost".to_string(),
        tls: TlsFiles {
            ca: pki.ca.clone(),
            cert: pki.admin.cert.clone(),
            key: pki.admin.key.clone(),
        },
        connections: config.connections,
        in_flight: config.in_flight,
        duration: config.duration,
        warmup: config.warmup,
        threads: config.threads,
    };
    let report = load::run(&load, Scenario::echo(config.payload_bytes)).await;
    let stopped = server.stop().await;
    let report = report?;
    stopped?;
    Ok(report)
}
