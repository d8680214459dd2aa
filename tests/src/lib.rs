//! Test harness: starts the real identity server on an ephemeral port over real
//! mTLS against a fresh Postgres database, and hands out tonic clients.

// Test support: a failure fails the test that called it, loudly.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "test support"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use badge_identity::{FeedConfig, IdentityConfig};
use badge_runtime::config::{DatabaseConfig, ListenConfig, LogConfig};
use badge_runtime::pki::{self, CertPaths, DevPki};
use badge_runtime::tls::TlsFiles;
use badge_store::testing::{TestDatabase, fresh_database};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use badge_proto::identity as pb;

/// A running identity server.
pub struct IdentityServer {
    pub addr: SocketAddr,
    pub pki: DevPki,
    pub db: TestDatabase,
    pub config: IdentityConfig,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl IdentityServer {
    /// Fresh database, fresh dev PKI, server on 127.0.0.1:0.
    pub async fn start() -> Self {
        Self::start_accepting(&[]).await
    }

    /// As [`IdentityServer::start`], accepting bearer tokens of `issuers`.
    pub async fn start_accepting(issuers: &[String]) -> Self {
        Self::start_with(issuers, badge_runtime::limits::Limits::default()).await
    }

    /// As [`IdentityServer::start_accepting`], with the listener's `limits`.
    pub async fn start_with(issuers: &[String], limits: badge_runtime::limits::Limits) -> Self {
        Self::start_configured(issuers, limits, |_| {}).await
    }

    /// As [`IdentityServer::start_with`], with `configure` adjusting the
    /// configuration before the server starts (e.g. a short watch timeout).
    pub async fn start_configured(
        issuers: &[String],
        limits: badge_runtime::limits::Limits,
        configure: impl FnOnce(&mut IdentityConfig),
    ) -> Self {
        let db = fresh_database().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki::generate(dir.path(), &[]).expect("dev pki");
        // Secrets are sealed at rest with a key-encryption key, as in production.
        let kek_file = dir.path().join("kek");
        let (kek, b64) = badge_keys::Kek::generate().expect("kek");
        std::fs::write(&kek_file, b64.as_bytes()).expect("write kek");
        db.store().await; // migrate
        let store = badge_store::Store::connect(
            &db.url,
            badge_store::StoreOptions {
                sealer: Some(Arc::new(kek)),
                ..badge_store::StoreOptions::default()
            },
        )
        .await
        .expect("store");
        let server = pki.server("identity");
        let config = IdentityConfig {
            telemetry: Default::default(),
            server: ListenConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                limits,
                tls: TlsFiles {
                    ca: pki.ca.clone(),
                    cert: server.cert,
                    key: server.key,
                },
            },
            database: DatabaseConfig {
                url: db.url.clone(),
                max_connections: 8,
                max_index_lag_seconds: 5,
            },
            log: LogConfig::default(),
            feed: FeedConfig::default(),
            encryption: badge_identity::EncryptionConfig {
                kek_file: Some(kek_file),
                kek: None,
            },
            legacy_tokens: badge_identity::LegacyTokensConfig::default(),
            authentication: badge_identity::AuthenticationConfig {
                issuers: issuers.to_vec(),
                api_audiences: vec![],
            },
        };
        let mut config = config;
        configure(&mut config);
        let (addr, stop, task) = spawn_identity(&config, store).await;
        let s = IdentityServer {
            addr,
            pki,
            db,
            config,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready when an admin call succeeds.
        let ch = s.admin().await;
        let mut ns = pb::namespace_service_client::NamespaceServiceClient::new(ch);
        for _ in 0..100 {
            if ns
                .get_namespace(pb::GetNamespaceRequest {
                    name: "default".into(),
                })
                .await
                .is_ok()
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("identity server did not become ready");
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A channel authenticated with the admin certificate (system:masters).
    pub async fn admin(&self) -> Channel {
        self.channel_as(&self.pki.admin).await
    }

    /// A channel authenticated with `cert`, trusting the dev CA.
    pub async fn channel_as(&self, cert: &CertPaths) -> Channel {
        self.channel_to(self.addr, cert)
    }

    /// A channel authenticated with `cert` to an identity process at `addr` that
    /// serves this server's PKI (itself, or a [`IdentityServer::replica`]).
    pub fn channel_to(&self, addr: SocketAddr, cert: &CertPaths) -> Channel {
        let ca = std::fs::read(&self.pki.ca).expect("ca");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(identity(cert))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{addr}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy()
    }

    /// Issues a client certificate for `user` in `groups` from the dev CA.
    pub fn issue(&self, stem: &str, user: &str, groups: &[&str]) -> CertPaths {
        pki::issue_client(&self.pki.dir, stem, user, groups).expect("issue")
    }

    /// Graceful stop; returns what `serve` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }

    /// A second identity process on the same database, PKI and key-encryption
    /// key: its own store connections, LISTEN connection, index and listener, as
    /// another replica behind a load balancer.
    pub async fn replica(&self) -> IdentityReplica {
        let sealer = self.config.encryption.sealer().expect("kek");
        let store = badge_store::Store::connect(
            &self.db.url,
            badge_store::StoreOptions {
                sealer,
                ..badge_store::StoreOptions::default()
            },
        )
        .await
        .expect("store");
        let (addr, stop, task) = spawn_identity(&self.config, store).await;
        let replica = IdentityReplica {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        let mut ns =
            pb::namespace_service_client::NamespaceServiceClient::new(self.admin_of(addr).await);
        for _ in 0..100 {
            let ready = ns
                .get_namespace(pb::GetNamespaceRequest {
                    name: "default".into(),
                })
                .await
                .is_ok();
            if ready {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("identity replica did not become ready");
    }

    /// An admin channel (system:masters) to another identity process at `addr`
    /// that serves this server's PKI (see [`IdentityServer::replica`]).
    pub async fn admin_of(&self, addr: SocketAddr) -> Channel {
        self.channel_to(addr, &self.pki.admin)
    }
}

/// Serves identity with `config` on `store` on 127.0.0.1:0, in a task; stops when
/// the sender fires.
async fn spawn_identity(
    config: &IdentityConfig,
    store: badge_store::Store,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let cfg = config.clone();
    let task = tokio::spawn(async move {
        badge_identity::serve(
            &cfg,
            store,
            Arc::new(badge_core::SystemClock),
            listener,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    (addr, stop, task)
}

/// A second identity process (see [`IdentityServer::replica`]); stops when
/// dropped.
pub struct IdentityReplica {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for IdentityReplica {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub fn identity(cert: &CertPaths) -> Identity {
    Identity::from_pem(
        std::fs::read(&cert.cert).expect("cert"),
        std::fs::read(&cert.key).expect("key"),
    )
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

/// Metadata with name and namespace.
pub fn meta(namespace: &str, name: &str) -> Option<badge_proto::meta::ObjectMeta> {
    Some(badge_proto::meta::ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    })
}

/// Creates a `kubernetes.io/service-account-token` Secret annotated for
/// `service_account`: the token-issuer fills in its legacy token.
pub async fn create_legacy_token_secret(
    identity: tonic::transport::Channel,
    namespace: &str,
    name: &str,
    service_account: &str,
) {
    use badge_proto::identity as pb;
    let mut m = meta(namespace, name);
    m.as_mut().expect("meta").annotations.insert(
        "kubernetes.io/service-account.name".into(),
        service_account.into(),
    );
    pb::secret_service_client::SecretServiceClient::new(identity)
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                metadata: m,
                r#type: "kubernetes.io/service-account-token".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("secret");
}

/// Options for [`IssuerServer::start`].
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    pub algorithm: &'static str,
    pub propagation_delay_seconds: u64,
    pub max_expiration_seconds: i64,
    pub socket: bool,
    pub legacy_tokens: bool,
    /// Overrides the database URL (e.g. through a proxy that simulates outages).
    pub database_url: Option<String>,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            algorithm: "ES256",
            propagation_delay_seconds: 1,
            max_expiration_seconds: 0,
            socket: true,
            legacy_tokens: true,
            database_url: None,
        }
    }
}

/// A running token-issuer next to an [`IdentityServer`], on the same database.
pub struct IssuerServer {
    pub grpc: SocketAddr,
    pub oidc: SocketAddr,
    pub issuer: String,
    pub socket: Option<std::path::PathBuf>,
    pub config: badge_token_issuer::IssuerConfig,
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for IssuerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IssuerServer {
    /// The issuer's config for `identity`'s database and PKI, listening on the given
    /// (already bound) addresses.
    pub fn config(
        identity: &IdentityServer,
        dir: &Path,
        oidc: SocketAddr,
        opts: &IssuerOptions,
    ) -> badge_token_issuer::IssuerConfig {
        use badge_token_issuer::config::*;
        // The issuer shares identity's key-encryption key (it reads sealed Secrets).
        let kek = identity
            .config
            .encryption
            .kek_file
            .clone()
            .expect("identity kek");
        let server = identity.pki.server("token-issuer");
        let client = identity.pki.client("token-issuer");
        IssuerConfig {
            telemetry: Default::default(),
            server: ListenConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                limits: Default::default(),
                tls: TlsFiles {
                    ca: identity.pki.ca.clone(),
                    cert: server.cert.clone(),
                    key: server.key.clone(),
                },
            },
            database: identity.config.database.clone(),
            log: LogConfig::default(),
            token: TokenConfig {
                issuers: vec![format!("https://127.0.0.1:{}", oidc.port())],
                api_audiences: vec![],
                max_expiration_seconds: opts.max_expiration_seconds,
                extend_expiration: true,
                max_extended_expiration_seconds: badge_core::token::EXTENDED_EXPIRATION_SECONDS,
            },
            keys: KeysConfig {
                algorithm: opts.algorithm.into(),
                kek_file: Some(kek),
                kek: None,
                rotation_period_seconds: 3600,
                propagation_delay_seconds: opts.propagation_delay_seconds,
                check_interval_seconds: 1,
                signing_key_file: None,
                verification_key_files: vec![],
            },
            oidc: OidcConfig {
                listen: oidc,
                cert: server.cert,
                key: server.key,
                jwks_uri: None,
                external_address: None,
            },
            external_signer: ExternalSignerConfig {
                socket: opts.socket.then(|| dir.join("signer.sock")),
                refresh_hint_seconds: Some(30),
            },
            ca: Default::default(),
            identity: opts.legacy_tokens.then(|| PeerConfig {
                endpoint: identity.url(),
                server_name: "localhost".into(),
                tls: TlsFiles {
                    ca: identity.pki.ca.clone(),
                    cert: client.cert,
                    key: client.key,
                },
            }),
        }
    }

    pub async fn start(identity: &IdentityServer, opts: IssuerOptions) -> Self {
        let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::start_on(identity, opts, oidc).await
    }

    /// As [`IssuerServer::start`], with OIDC discovery on `oidc` (bound first, so
    /// the issuer URL `https://127.0.0.1:<port>` can be given to identity).
    pub async fn start_on(
        identity: &IdentityServer,
        opts: IssuerOptions,
        oidc: tokio::net::TcpListener,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (grpc_addr, oidc_addr) = (grpc.local_addr().expect("a"), oidc.local_addr().expect("a"));
        let mut config = Self::config(identity, dir.path(), oidc_addr, &opts);
        if let Some(url) = &opts.database_url {
            config.database.url = url.clone();
        }
        let store = badge_store::Store::connect(
            &config.database.url,
            badge_store::StoreOptions {
                connect_timeout: Duration::from_secs(2),
                sealer: identity.config.encryption.sealer().expect("kek"),
                ..badge_store::StoreOptions::default()
            },
        )
        .await
        .expect("store");
        let (stop, stopped) = oneshot::channel::<()>();
        let cfg = config.clone();
        let task = tokio::spawn(async move {
            badge_token_issuer::serve(
                &cfg,
                store,
                Arc::new(badge_core::SystemClock),
                badge_token_issuer::Listeners { grpc, oidc },
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let s = IssuerServer {
            grpc: grpc_addr,
            oidc: oidc_addr,
            issuer: config.token.issuers[0].clone(),
            socket: config.external_signer.socket.clone(),
            config,
            dir,
            task,
            stop: Some(stop),
        };
        // Ready when ListKeys shows an active key.
        let mut keys = badge_proto::token::key_service_client::KeyServiceClient::new(
            s.channel(identity, &identity.pki.admin),
        );
        for _ in 0..200 {
            if let Ok(r) = keys.list_keys(badge_proto::token::ListKeysRequest {}).await
                && r.get_ref()
                    .keys
                    .iter()
                    .any(|k| k.state == badge_proto::token::KeyState::Active as i32)
            {
                return s;
            }
            assert!(!s.task.is_finished(), "token-issuer exited during start-up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("token-issuer did not become ready");
    }

    /// An mTLS channel to the issuer's gRPC port as `cert`.
    pub fn channel(&self, identity: &IdentityServer, cert: &CertPaths) -> Channel {
        let ca = std::fs::read(&identity.pki.ca).expect("ca");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(self::identity(cert))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{}", self.grpc))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await?
    }
}

/// A plain HTTPS GET trusting `ca` (HTTP/1.1, `Connection: close`): status line,
/// headers (lowercased names) and body.
pub async fn https_get(
    addr: SocketAddr,
    path: &str,
    ca: &Path,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    https_request("GET", addr, path, ca, None, None, &[]).await
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// A TCP proxy in front of Postgres that can be cut and restored, to simulate a
/// store outage.
pub struct PgProxy {
    pub addr: SocketAddr,
    alive: tokio::sync::watch::Sender<bool>,
}

impl PgProxy {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (alive, _) = tokio::sync::watch::channel(true);
        let p = PgProxy { addr, alive };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let mut stop = self.alive.subscribe();
        let alive = self.alive.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                    _ = stop.wait_for(|a| !*a) => return,
                };
                let mut conn_stop = alive.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {},
                        _ = conn_stop.wait_for(|a| !*a) => {},
                    }
                });
            }
        });
    }

    /// Drops every connection and stops listening.
    pub fn cut(&self) {
        // send_replace: plain send does nothing when no receiver is alive.
        self.alive.send_replace(false);
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        self.alive.send_replace(true);
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        self.serve(listener);
    }

    /// `url` with its host:port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("url");
        let (auth_host, path) = rest.split_once('/').expect("path");
        let auth = auth_host
            .rsplit_once('@')
            .map(|(a, _)| format!("{a}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}{}/{path}", self.addr)
    }
}

/// Options for [`ReviewServer::start_with`].
#[derive(Debug, Clone)]
pub struct ReviewOptions {
    /// `webhook.client_ca` is set to the dev CA (unset: it defaults to the
    /// server's CA, the same one).
    pub webhook_client_certs: bool,
    /// Record legacy-token use through identity.
    pub last_used: bool,
    /// Overrides the database URL (e.g. through a [`PgProxy`]).
    pub database_url: Option<String>,
    /// `review.deletion_leeway_seconds`.
    pub deletion_leeway_seconds: u64,
}

impl Default for ReviewOptions {
    fn default() -> Self {
        ReviewOptions {
            webhook_client_certs: true,
            last_used: true,
            database_url: None,
            deletion_leeway_seconds: 0,
        }
    }
}

/// A running token-review next to an [`IdentityServer`] and an [`IssuerServer`], on
/// the same database, key-encryption key and dev PKI, accepting the issuer's
/// issuers.
pub struct ReviewServer {
    pub grpc: SocketAddr,
    pub webhook: SocketAddr,
    pub config: badge_token_review::ReviewConfig,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ReviewServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReviewServer {
    pub fn config(
        identity: &IdentityServer,
        issuer: &IssuerServer,
        webhook: SocketAddr,
        opts: &ReviewOptions,
    ) -> badge_token_review::ReviewConfig {
        use badge_token_review::config::*;
        let server = identity.pki.server("token-review");
        let client = identity.pki.client("token-review");
        let mut database = identity.config.database.clone();
        if let Some(url) = &opts.database_url {
            database.url = url.clone();
        }
        // The feed follower, probes and slow paths need few connections.
        database.max_connections = 4;
        ReviewConfig {
            telemetry: Default::default(),
            mesh: Default::default(),
            server: ListenConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                limits: Default::default(),
                tls: TlsFiles {
                    ca: identity.pki.ca.clone(),
                    cert: server.cert.clone(),
                    key: server.key.clone(),
                },
            },
            database,
            log: LogConfig::default(),
            review: ReviewSection {
                issuers: issuer.config.token.issuers.clone(),
                api_audiences: vec![],
                leeway_seconds: 60,
                deletion_leeway_seconds: opts.deletion_leeway_seconds,
                max_token_bytes: 65536,
                cache_entries: 100_000,
            },
            encryption: EncryptionConfig {
                kek_file: identity.config.encryption.kek_file.clone(),
                kek: None,
            },
            webhook: Some(WebhookConfig {
                listen: webhook,
                cert: server.cert,
                key: server.key,
                client_ca: opts.webhook_client_certs.then(|| identity.pki.ca.clone()),
                limits: Default::default(),
            }),
            identity: opts.last_used.then(|| PeerConfig {
                endpoint: identity.url(),
                server_name: "localhost".into(),
                tls: TlsFiles {
                    ca: identity.pki.ca.clone(),
                    cert: client.cert,
                    key: client.key,
                },
            }),
        }
    }

    pub async fn start(identity: &IdentityServer, issuer: &IssuerServer) -> Self {
        Self::start_with(identity, issuer, ReviewOptions::default()).await
    }

    /// Starts the server and waits until health says SERVING.
    pub async fn start_with(
        identity: &IdentityServer,
        issuer: &IssuerServer,
        opts: ReviewOptions,
    ) -> Self {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let webhook = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (grpc_addr, webhook_addr) = (
            grpc.local_addr().expect("a"),
            webhook.local_addr().expect("a"),
        );
        let config = Self::config(identity, issuer, webhook_addr, &opts);
        let store = badge_store::Store::connect(
            &config.database.url,
            badge_store::StoreOptions {
                max_connections: config.database.max_connections,
                connect_timeout: Duration::from_secs(2),
                sealer: config.encryption.sealer().expect("kek"),
                ..badge_store::StoreOptions::default()
            },
        )
        .await
        .expect("store");
        let (stop, stopped) = oneshot::channel::<()>();
        let cfg = config.clone();
        let task = tokio::spawn(async move {
            badge_token_review::serve(
                &cfg,
                store,
                Arc::new(badge_core::SystemClock),
                badge_token_review::Listeners {
                    grpc,
                    webhook: Some(webhook),
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let s = ReviewServer {
            grpc: grpc_addr,
            webhook: webhook_addr,
            config,
            task,
            stop: Some(stop),
        };
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            s.channel(identity, &identity.pki.admin),
        );
        for _ in 0..400 {
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                && r.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return s;
            }
            assert!(!s.task.is_finished(), "token-review exited during start-up");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("token-review did not become ready");
    }

    /// An mTLS channel to the gRPC port as `cert`.
    pub fn channel(&self, identity: &IdentityServer, cert: &CertPaths) -> Channel {
        let ca = std::fs::read(&identity.pki.ca).expect("ca");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(self::identity(cert))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{}", self.grpc))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy()
    }

    /// Graceful stop; returns what `serve` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await?
    }
}

/// An HTTPS POST trusting `ca`, presenting `client` if given (HTTP/1.1,
/// `Connection: close`): status, headers (lowercased names) and body.
pub async fn https_post(
    addr: SocketAddr,
    path: &str,
    ca: &Path,
    client: Option<&CertPaths>,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    https_request("POST", addr, path, ca, client, Some(content_type), body).await
}

async fn https_request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    ca: &Path,
    client: Option<&CertPaths>,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&c.cert)
                .expect("client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&c.key).expect("client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    let content_type = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content_type}Accept: application/json, */*\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("write");
    tls.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}
