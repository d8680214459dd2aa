//! Node-agent mode (`badge-agent node --agent-config agent.yaml`): one agent per host
//! speaks for the pods listed in its configuration. For each it keeps an
//! X.509-SVID (key generated here, certificate from token-issuer's
//! `CreatePodCertificate` asked as the node), follows the trust bundle, and serves
//! both on one Unix socket:
//!
//! - the SPIFFE Workload API ([`workload_api`]): X.509-SVIDs, bundles, JWT-SVIDs
//!   (minted by token-issuer's `JwtSvidService`), JWT-SVID validation;
//! - Envoy SDS ([`sds`]): `tls_certificate` and `validation_context` secrets;
//! - gRPC health (`grpc.health.v1.Health`, SERVING once the bundle is known) and
//!   reflection.
//!
//! Callers are attested by their Unix peer credentials ([`selector`]).

pub mod config;
pub mod conn;
pub mod issue;
pub mod jwt;
pub mod metrics;
pub mod sds;
pub mod selector;
pub mod state;
pub mod workload_api;
pub mod xds;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use badge_core::{Clock, SystemClock};
use badgectl::ConnectionArgs;
use tokio::net::UnixListener;
use tokio::sync::{Notify, watch};

pub use config::{NodeConfig, Settings};

/// Largest request message decoded (bytes). Workload API and SDS requests are a few
/// hundred bytes; tonic's default (4 MiB) would let every stream of every caller
/// make the agent buffer 4 MiB. Larger messages end the call with `OUT_OF_RANGE`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest HTTP/2 header block accepted (bytes): requests carry one header of ours.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 pings on idle connections, and how long an answer may take before the
/// connection is closed: a peer that stopped reading (its streams' messages queued
/// in the agent) is dropped rather than held.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Bound on a unary call (FetchJWTSVID, ValidateJWTSVID: the waits for the identity
/// and token-issuer inside are shorter). Streams are not cut by it: tonic's
/// timeout covers the handler until its response starts.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `badge-agent node`: the connection settings are the
/// agent's usual ones (badgectl's: flags, `BADGE_*`, `badge-data/badge.env`).
#[derive(Clone, Debug, clap::Args)]
pub struct NodeOptions {
    /// The node agent's configuration (YAML): node, socket, workloads and their
    /// selectors. (`--config` is badgectl's connection file, as for every command.)
    #[arg(long = "agent-config", short = 'f')]
    pub agent_config: std::path::PathBuf,
}

/// Tells a running node agent what to do.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    refresh: Arc<watch::Sender<u64>>,
    stop: Arc<watch::Sender<bool>>,
}

impl NodeHandle {
    pub fn new() -> NodeHandle {
        NodeHandle {
            refresh: Arc::new(watch::channel(0).0),
            stop: Arc::new(watch::channel(false).0),
        }
    }

    /// Renews every SVID — each at a random time within `refresh_jitter_ms`, so
    /// that a node's pods do not renew at once — and refetches the bundle now
    /// (SIGHUP).
    pub fn refresh(&self) {
        self.refresh.send_modify(|g| *g += 1);
    }

    /// Stops serving (SIGTERM); the socket is removed.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Default for NodeHandle {
    fn default() -> Self {
        NodeHandle::new()
    }
}

/// Binds the socket: its directory is created with `dir_mode` when missing; the
/// socket is bound under a temporary name, given `mode`, then renamed into place
/// (so it never exists with another mode). A stale socket is replaced; anything
/// else at the path is refused, never deleted.
pub fn bind(path: &Path, mode: u32, dir_mode: u32) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    let shown = path.display();
    if let Ok(m) = std::fs::symlink_metadata(path)
        && !m.file_type().is_socket()
    {
        anyhow::bail!("socket {shown}: exists and is not a socket; refusing to replace it");
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(&parent)
            .with_context(|| format!("socket {shown}: creating {}", parent.display()))?;
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(dir_mode))
            .with_context(|| format!("socket {shown}: chmod {}", parent.display()))?;
    }
    let tmp = parent.join(format!(
        ".agent-{:08x}.sock",
        rand::Rng::random::<u32>(&mut rand::rng())
    ));
    let listener = UnixListener::bind(&tmp).with_context(|| format!("socket {shown}: bind"))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("socket {shown}: putting it in place"));
    }
    Ok(listener)
}

/// [`run`] as the command line runs it: SIGHUP renews every SVID now; SIGTERM /
/// Ctrl-C stop.
pub async fn run_with_signals(conn: &ConnectionArgs, opts: &NodeOptions) -> anyhow::Result<()> {
    run_with_signals_and_clock(conn, opts, Arc::new(SystemClock)).await
}

/// [`run_with_signals`], reading the time from `clock`.
pub(crate) async fn run_with_signals_and_clock(
    conn: &ConnectionArgs,
    opts: &NodeOptions,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let config = NodeConfig::load(&opts.agent_config)?;
    if let Err(e) =
        badge_runtime::telemetry::init_with(&config.log, &config.telemetry, "badge-agent")
    {
        eprintln!("telemetry: {e}");
    }
    let handle = NodeHandle::new();
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let h = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => { tracing::info!("SIGHUP: renewing every SVID, spread over refresh_jitter_ms"); h.refresh() }
                    _ = term.recv() => { h.stop(); return; }
                    _ = tokio::signal::ctrl_c() => { h.stop(); return; }
                }
            }
        });
    }
    let r = run_with_clock(conn, config, handle, clock).await;
    badge_runtime::telemetry::flush();
    r
}

/// Runs the node agent until [`NodeHandle::stop`], on the wall clock.
pub async fn run(
    conn: &ConnectionArgs,
    config: NodeConfig,
    handle: NodeHandle,
) -> anyhow::Result<()> {
    run_with_clock(conn, config, handle, Arc::new(SystemClock)).await
}

/// [`run`], every task reading the time from `clock`.
async fn run_with_clock(
    conn: &ConnectionArgs,
    config: NodeConfig,
    handle: NodeHandle,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let settings = config.settings().map_err(anyhow::Error::msg)?;
    let conn = conn.connect()?;
    let shared = state::Shared::new(settings.workloads.clone());
    let listener = bind(
        &settings.socket,
        settings.socket_mode,
        settings.socket_dir_mode,
    )?;
    let socket = settings.socket.clone();
    let ctx = Arc::new(issue::Ctx {
        pod_events: settings
            .workloads
            .iter()
            .map(|_| Arc::new(Notify::new()))
            .collect(),
        refresh: handle.refresh.subscribe(),
        issue_slots: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent_issues)),
        shared: shared.clone(),
        identity: conn.identity()?,
        issuer: conn.issuer()?,
        settings,
        clock,
    });
    let _gauge = metrics::expiry_gauge(shared.clone(), ctx.clock.clone());
    let stop = handle.stop.subscribe();

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut tasks = vec![tokio::spawn(issue::run_bundle(
        ctx.clone(),
        ready_tx,
        stop.clone(),
    ))];
    for i in 0..ctx.settings.workloads.len() {
        tasks.push(tokio::spawn(issue::run_workload(
            ctx.clone(),
            i,
            stop.clone(),
        )));
    }
    let mut namespaces: Vec<String> = ctx
        .settings
        .workloads
        .iter()
        .map(|w| w.namespace.clone())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        tasks.push(tokio::spawn(issue::run_pod_watch(
            ctx.clone(),
            ns,
            stop.clone(),
        )));
    }

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_not_serving::<badge_proto::spiffe_workload::spiffe_workload_api_server::SpiffeWorkloadApiServer<workload_api::WorkloadApi>>().await;
    {
        let health = health.clone();
        tokio::spawn(async move {
            if ready_rx.await.is_ok() {
                health.set_serving::<badge_proto::spiffe_workload::spiffe_workload_api_server::SpiffeWorkloadApiServer<workload_api::WorkloadApi>>().await;
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
            }
        });
    }
    // Both reflection versions: grpcurl 1.8 speaks v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(badge_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("SpiffeWorkloadAPI")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection_v1 = reflection().build_v1().context("reflection")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("reflection")?;
    let api = workload_api::WorkloadApi {
        shared: shared.clone(),
        identity: ctx.identity.clone(),
        issuer: ctx.issuer.clone(),
        jwt_ttl_seconds: ctx.settings.jwt_svid_ttl_seconds,
        jwt_cache: Arc::new(Mutex::new(Default::default())),
        clock: ctx.clock.clone(),
    };
    let sds = sds::Sds {
        shared: shared.clone(),
        spiffe_validator: ctx.settings.sds_spiffe_validator,
        clock: ctx.clock.clone(),
    };
    tracing::info!(socket = %socket.display(), node = %ctx.settings.node, workloads = ctx.settings.workloads.len(), "node agent serving the Workload API and Envoy SDS");
    let mut stopped = stop.clone();
    // Not a graceful drain: Workload API and SDS streams never end on their own, so
    // stopping drops every connection (clients reconnect to the next agent).
    let caps = conn::Caps {
        max_connections: ctx.settings.max_connections,
        max_connections_per_uid: ctx.settings.max_connections_per_uid,
        read_groups: ctx.settings.workloads.iter().any(|w| {
            w.selectors
                .iter()
                .any(|s| matches!(s, selector::Selector::SupplementaryGid(_)))
        }),
    };
    // What one connection may hold (see docs/certificates.md, "Limits"): streams,
    // header and message sizes, and no idle peer kept past a missed keepalive.
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(ctx.settings.max_streams_per_connection))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(32))
        .timeout(CALL_TIMEOUT)
        .add_service(health_svc.max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(reflection_v1.max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(reflection_v1alpha.max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(badge_proto::spiffe_workload::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(sds).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming(conn::incoming(listener, caps));
    let served = tokio::select! {
        r = server => r,
        _ = stopped.wait_for(|s| *s) => Ok(()),
    };
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket);
    served.context("serving the socket")?;
    tracing::info!("node agent stopped");
    Ok(())
}
