//! The token-issuer: Kubernetes-compatible TokenRequest, a signing-key lifecycle
//! with rotation, OIDC discovery, legacy Secret tokens, and Kubernetes'
//! ExternalJWTSigner.

pub mod ca_config;
pub mod ca_keyring;
pub mod certificates;
pub mod cli;
pub mod config;
pub mod external;
pub mod istio;
pub mod jwt_svids;
pub mod keyring;
pub mod legacy;
pub mod oidc;
pub mod pod_certificates;
pub mod rotation;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use badge_core::Clock;
use badge_core::key_lifecycle::Policy;
use badge_core::token::MAX_EXPIRATION_SECONDS;
use badge_keys::{Algorithm, Kek, PublicKey, SigningKey};
use badge_proto::externaljwt::{v1, v1alpha1};
use badge_proto::identity::secret_service_client::SecretServiceClient;
use badge_proto::token::{
    key_service_server::KeyServiceServer, token_service_server::TokenServiceServer,
};
use badge_runtime::GrpcServer;
use badge_runtime::tls::TlsMaterial;
use badge_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::IssuerConfig;
pub use external::ExternalSigner;
pub use keyring::KeyRing;
pub use tokens::Issuer;

/// The sockets the issuer serves on (injected so tests use ephemeral ports).
pub struct Listeners {
    /// gRPC over mTLS.
    pub grpc: TcpListener,
    /// OIDC discovery over HTTPS.
    pub oidc: TcpListener,
}

fn load_kek(config: &IssuerConfig) -> anyhow::Result<Option<Kek>> {
    if !config.stored_keys() {
        return Ok(None);
    }
    let kek = match (&config.keys.kek_file, &config.keys.kek) {
        (Some(path), _) => Kek::from_file(path).with_context(|| "keys.kek_file".to_string())?,
        (None, Some(b64)) => Kek::from_base64(b64).context("keys.kek")?,
        (None, None) => anyhow::bail!("keys.kek_file: a key-encryption key is required"),
    };
    Ok(Some(kek))
}

/// The longest lifetime a token may have, for how long retired keys stay published.
fn max_token_lifetime(config: &IssuerConfig) -> Duration {
    let cap = if config.token.max_expiration_seconds > 0 {
        config.token.max_expiration_seconds
    } else {
        MAX_EXPIRATION_SECONDS
    };
    let extended = if config.token.extend_expiration {
        config.token.max_extended_expiration_seconds
    } else {
        0
    };
    Duration::from_secs(u64::try_from(cap.max(extended)).unwrap_or(u64::MAX / 4))
}

/// Runs the token-issuer until `shutdown`. Refuses to start on an unknown schema, a
/// wrong key-encryption key or unreadable key files.
pub async fn serve(
    config: &IssuerConfig,
    store: Store,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = TlsMaterial::load(&config.server.tls)?;
    store.check_schema().await?;
    let settings = Arc::new(config.token.settings());
    let algorithm: Algorithm = config
        .keys
        .algorithm
        .parse()
        .map_err(|e| anyhow::anyhow!("keys.algorithm: {e}"))?;
    let kek = load_kek(config)?;
    if !store.seals_data() {
        // Only possible with file keys (stored keys need the KEK, see load_kek):
        // sealed Secrets stay unreadable, so their legacy tokens are refused as
        // bearer credentials here (fail closed) rather than checked.
        tracing::warn!(
            "keys.kek_file: no key-encryption key: legacy Secret tokens cannot be checked and are refused as bearer credentials"
        );
    }
    let policy = Policy {
        rotation_period: Duration::from_secs(config.keys.rotation_period_seconds),
        propagation_delay: Duration::from_secs(config.keys.propagation_delay_seconds),
        max_token_lifetime: max_token_lifetime(config),
    };
    let oidc_addr = listeners.oidc.local_addr()?;
    let issuer = settings.signing_issuer().unwrap_or_default().to_string();
    let ring = Arc::new(KeyRing::new(
        issuer,
        config.jwks_uri(oidc_addr),
        policy,
        kek,
    ));

    // Legacy Secret tokens presented as bearer credentials are recorded as used,
    // as reviews are (else the cleaner invalidates tokens in daily use), through
    // identity's SecretService when identity is configured.
    let mut last_used_writer = None;
    let last_used_tx = match &config.identity {
        Some(peer) => {
            let (tx, writer) = badge_access::last_used::LastUsed {
                secrets: badge_access::last_used::Secrets::Grpc(SecretServiceClient::new(
                    badge_runtime::telemetry::traced(peer.channel("identity")?),
                )),
                clock: clock.clone(),
            }
            .queue();
            last_used_writer = Some(tokio::spawn(writer));
            Some(tx)
        }
        None => None,
    };
    // One index for the token checks, bearer-token callers (reviewed as TokenReview
    // does, with this issuer's API audiences) and RBAC decisions.
    let access = badge_access::start(
        store.clone(),
        badge_core::review::ReviewSettings::new(
            settings.issuers.clone(),
            settings.api_audiences.clone(),
        ),
        clock.clone(),
        badge_access::BEARER_CACHE_ENTRIES,
        last_used_tx,
        true,
        "token-issuer",
    );
    let index = access.reviewer.index.clone();
    let guard = access.guard.clone();
    tokio::time::timeout(Duration::from_secs(30), index.ready())
        .await
        .context("loading objects from the store")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = badge_runtime::server::Tasks::default();
    if let Some(writer) = last_used_writer {
        tasks.push(writer);
    }
    let rotator = if config.stored_keys() {
        ring.rebuild(rotation::stored_keys(&index), clock.now())
            .context(
                "keys: the configured key-encryption key cannot unseal the stored signing keys",
            )?;
        let rotator = rotation::Rotator {
            store: store.clone(),
            ring: ring.clone(),
            clock: clock.clone(),
            algorithm,
        };
        tasks.push(tokio::spawn(rotation::follow_keys(
            index.clone(),
            ring.clone(),
            clock.clone(),
        )));
        rotator.tick().await.context("key rotation")?;
        tasks.push(tokio::spawn(
            rotator
                .clone()
                .run(Duration::from_secs(config.keys.check_interval_seconds)),
        ));
        Some(rotator)
    } else {
        let path = config.keys.signing_key_file.clone().unwrap_or_default();
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("keys.signing_key_file {}", path.display()))?;
        let signing = SigningKey::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("keys.signing_key_file {}: {e}", path.display()))?;
        let mut verification = Vec::new();
        for (i, p) in config.keys.verification_key_files.iter().enumerate() {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("keys.verification_key_files[{i}] {}", p.display()))?;
            verification.extend(PublicKey::from_pem(&text).map_err(|e| {
                anyhow::anyhow!("keys.verification_key_files[{i}] {}: {e}", p.display())
            })?);
        }
        ring.install_files(signing, verification, clock.now());
        None
    };
    // The workload CA (docs/certificates.md): its own KEK handle (the key ring
    // owns the other), stored CAs followed through the feed, or a plug-in CA.
    let ca = certificates::start(
        config,
        &store,
        &index,
        load_kek(config)?,
        clock.clone(),
        &mut tasks,
    )
    .await?;
    // Wait until a key signs (another replica may be generating the first one).
    for _ in 0..200 {
        if ring.active(clock.now()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let store_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let issuer_svc = Issuer {
        store_ok: store_ok.clone(),
        store: store.clone(),
        max_token_lifetime: max_token_lifetime(config),
        settings: settings.clone(),
        index: index.clone(),
        ring: ring.clone(),
        clock: clock.clone(),
        rotator,
        default_algorithm: algorithm,
    };
    let signer = ExternalSigner {
        ring: ring.clone(),
        clock: clock.clone(),
        refresh_hint_seconds: config.external_signer.refresh_hint_seconds.unwrap_or(60),
        max_expiration_seconds: config.token.max_expiration_seconds,
    };

    tasks.push(tokio::spawn(tokens::prune_revocations(
        store.clone(),
        clock.clone(),
    )));
    if let Some(peer) = &config.identity {
        let channel = peer.channel("identity")?;
        let controller = legacy::LegacyTokens {
            store: store.clone(),
            index: index.clone(),
            ring: ring.clone(),
            clock: clock.clone(),
            secrets: SecretServiceClient::new(badge_runtime::telemetry::traced(channel)),
            ca_pem: tls.ca_pem().to_vec(),
        };
        tasks.push(tokio::spawn(controller.run()));
    }

    let acceptor = oidc::tls_acceptor(&config.oidc.cert, &config.oidc.key)?;
    tracing::info!(addr = %oidc_addr, "OIDC discovery serving (https)");
    tasks.push(tokio::spawn(oidc::serve(
        listeners.oidc,
        acceptor,
        ring.clone(),
        ca.as_ref().map(|c| c.ring.clone()),
        badge_core::oidc::DEFAULT_CACHE_MAX_AGE_SECONDS,
        stopped(),
    )));

    if let Some(path) = &config.external_signer.socket {
        tasks.push(serve_external_socket(path, signer.clone(), stopped())?);
    }

    let server = GrpcServer::new()
        .named("token-issuer")
        .with_limits(config.server.limits)
        .add_service(TokenServiceServer::new(issuer_svc.clone()), tokens::METHODS)
        .add_service(KeyServiceServer::new(issuer_svc), &[])
        .add_service(
            v1::external_jwt_signer_server::ExternalJwtSignerServer::new(signer.clone()),
            external::METHODS,
        )
        .add_service(
            v1alpha1::external_jwt_signer_server::ExternalJwtSignerServer::new(signer),
            &[],
        );
    let server = match &ca {
        Some(ca) => server.add_service(
            badge_proto::certificates::certificate_authority_service_server::CertificateAuthorityServiceServer::new(
                certificates::CaService {
                    ca: ca.clone(),
                    keys: ring.clone(),
                    clock: clock.clone(),
                },
            ),
            certificates::METHODS,
        )
        .add_service(
            badge_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer::new(
                istio::IstioCa {
                    ca: ca.clone(),
                    reviewer: access.reviewer.clone(),
                    audiences: config.ca.istio_audiences.clone(),
                    clock: clock.clone(),
                },
            ),
            istio::METHODS,
        )
        .add_service(
            badge_proto::certificates::pod_certificate_service_server::PodCertificateServiceServer::new(
                pod_certificates::PodCertificates {
                    ca: ca.clone(),
                    index: index.clone(),
                    clock: clock.clone(),
                },
            ),
            pod_certificates::METHODS,
        )
        .add_service(
            badge_proto::certificates::jwt_svid_service_server::JwtSvidServiceServer::new(
                jwt_svids::JwtSvids {
                    ca: ca.clone(),
                    keys: ring.clone(),
                    index: index.clone(),
                    clock: clock.clone(),
                },
            ),
            jwt_svids::METHODS,
        ),
        None => server,
    };
    let names = server.service_names().to_vec();
    server.register_not_serving().await;
    let probe_reviewer = access.reviewer.clone();
    probe_reviewer.set_max_index_lag(config.database.max_index_lag());
    let probe_ring = ring.clone();
    let probe_clock = clock.clone();
    tasks.push(badge_runtime::server::spawn_readiness(
        server.health(),
        names,
        Duration::from_secs(2),
        move || {
            let r = probe_reviewer.clone();
            let ready = probe_ring.active(probe_clock.now()).is_some();
            let ok = store_ok.clone();
            async move {
                // The store answers, and the index (token checks, bearer tokens,
                // RBAC) keeps up with it.
                let probe = r.probe().await;
                ok.store(probe.store_reachable, std::sync::atomic::Ordering::Relaxed);
                ready && probe.ok()
            }
        },
    ));
    let _tasks = tasks;
    tracing::info!(addr = %listeners.grpc.local_addr()?, "token-issuer serving (mTLS gRPC)");
    let stop = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let _access = access;
    server.serve(listeners.grpc, &tls, guard, stop).await?;
    tracing::info!("token-issuer stopped");
    Ok(())
}

/// ExternalJWTSigner on a Unix socket (mode 0600 from its first instant, peers of
/// other users refused: see [`external::socket`]).
fn serve_external_socket(
    path: &std::path::Path,
    signer: ExternalSigner,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let uds = external::socket::bind(path)?;
    tracing::info!(socket = %path.display(), "ExternalJWTSigner serving (unix socket)");
    // Reflection too, so `grpcurl -plaintext -unix <socket> list` works.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(badge_proto::FILE_DESCRIPTOR_SET)
        .with_service_name("v1.ExternalJWTSigner")
        .with_service_name("v1alpha1.ExternalJWTSigner")
        .build_v1alpha()
        .context("ExternalJWTSigner reflection")?;
    Ok(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(reflection)
            .add_service(
                v1::external_jwt_signer_server::ExternalJwtSignerServer::new(signer.clone()),
            )
            .add_service(v1alpha1::external_jwt_signer_server::ExternalJwtSignerServer::new(signer))
            .serve_with_incoming_shutdown(external::socket::incoming(uds), stop)
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "ExternalJWTSigner socket");
        }
    }))
}
