//! `badge up`: the whole stack in one process for development — identity,
//! token-issuer and token-review on one store (by default an embedded SQLite file
//! under the data directory: nothing to install; `--database-url postgres://…` for
//! Postgres), with a dev PKI and key-encryption key created on first run under the
//! data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use badge_identity::{FeedConfig, IdentityConfig};
use badge_runtime::config::{DatabaseConfig, ListenConfig, LogConfig};
use badge_runtime::pki::{self, DevPki};
use badge_runtime::tls::TlsFiles;
use badge_store::{Store, StoreOptions};
use badge_token_issuer::config::{
    ExternalSignerConfig, IssuerConfig, KeysConfig, OidcConfig, PeerConfig, TokenConfig,
};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the PKI, key-encryption key and env file live.
    #[arg(long, default_value = "badge-data")]
    pub data_dir: PathBuf,
    /// The store, created if missing: `sqlite://PATH` (embedded; default
    /// `sqlite://<data-dir>/badge.db`) or `postgres://user@host:port/db`.
    #[arg(long, env = "BADGE_DATABASE__URL")]
    pub database_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub identity_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub issuer_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8445")]
    pub oidc_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8446")]
    pub review_listen: SocketAddr,
    /// Kubernetes token-authentication webhook (HTTPS).
    #[arg(long, default_value = "127.0.0.1:8447")]
    pub webhook_listen: SocketAddr,
    /// Token issuer URL (https, no query); default https://<oidc listen address>.
    #[arg(long)]
    pub issuer_url: Option<String>,
    /// Algorithm of generated signing keys.
    #[arg(long, default_value = "ES256")]
    pub algorithm: String,
    /// Identity answers Get and List from the database instead of its in-memory
    /// index (identity's `feed.reads_from_index = false`; for comparison).
    #[arg(long)]
    pub identity_reads_from_store: bool,
}

/// A PKI made before the webhook required a credential has no `kube-apiserver`
/// client certificate: issue it from the same CA (the rest is kept; the
/// directory is tightened to 0700).
pub fn ensure_kube_apiserver_cert(existing: &DevPki) -> anyhow::Result<DevPki> {
    pki::create_private_dir(&existing.dir)?;
    if !existing.kube_apiserver.cert.exists() {
        pki::issue_client(
            &existing.dir,
            pki::KUBE_APISERVER_STEM,
            pki::KUBE_APISERVER_USER,
            &[],
        )
        .context("issuing the kube-apiserver webhook client certificate")?;
    }
    Ok(existing.clone())
}

/// Writes kube-apiserver's webhook kubeconfig for `pki` (mode 0600: it holds the
/// client key) to `path`, pointing at `server`.
pub fn write_webhook_kubeconfig(pki: &DevPki, server: &str, path: &Path) -> anyhow::Result<()> {
    let kubeconfig = pki::webhook_kubeconfig(pki, server)?;
    pki::write_file(path, kubeconfig.as_bytes(), true)?;
    Ok(())
}

/// Creates a key-encryption key file (mode 0600) unless one exists.
pub fn ensure_kek(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let (_, b64) = badge_keys::Kek::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(b64.as_bytes())?;
    Ok(())
}

impl UpArgs {
    /// `--database-url`, or the embedded SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("badge.db").display()))
    }
}

/// Runs until Ctrl-C / SIGTERM.
pub async fn run(a: UpArgs) -> anyhow::Result<()> {
    run_until(a, badge_runtime::server::shutdown_signal()).await
}

/// Runs until `stop` completes (then stops every service gracefully), or until a
/// service stops on its own.
pub async fn run_until(
    a: UpArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let database_url = a.database_url();
    // Security: the data directory holds the key-encryption key, the database and
    // the PKI; created 0700 (an existing one is left as the operator made it).
    pki::create_dir_if_missing(&a.data_dir).context("creating the data directory")?;
    let pki_dir = a.data_dir.join("pki");
    let pki = if DevPki::at(&pki_dir).exists() {
        ensure_kube_apiserver_cert(&DevPki::at(&pki_dir))?
    } else {
        pki::generate(&pki_dir, &[]).context("creating the dev PKI")?
    };
    let kek = a.data_dir.join("kek");
    ensure_kek(&kek)?;

    if Store::create_database_if_missing(&database_url).await? {
        println!(
            "created database {}",
            badge_runtime::config::redact_url(&database_url)
        );
    }
    // Secret data is sealed with the same key-encryption key as the signing keys.
    let sealer =
        badge_keys::Kek::from_file(&kek).map_err(|e| anyhow::anyhow!("{}: {e}", kek.display()))?;
    let store = Store::connect(
        &database_url,
        StoreOptions {
            sealer: Some(Arc::new(sealer)),
            ..StoreOptions::default()
        },
    )
    .await?;
    store.migrate().await?;

    let database = DatabaseConfig {
        url: database_url.clone(),
        max_connections: 16,
        max_index_lag_seconds: 5,
    };
    let id_server = pki.server("identity");
    let issuer_url = a
        .issuer_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", a.oidc_listen));
    let identity = IdentityConfig {
        telemetry: Default::default(),
        server: ListenConfig {
            listen: a.identity_listen,
            limits: Default::default(),
            tls: TlsFiles {
                ca: pki.ca.clone(),
                cert: id_server.cert,
                key: id_server.key,
            },
        },
        database: database.clone(),
        log: LogConfig::default(),
        feed: FeedConfig {
            reads_from_index: !a.identity_reads_from_store,
            ..FeedConfig::default()
        },
        encryption: badge_identity::EncryptionConfig {
            kek_file: Some(kek.clone()),
            kek: None,
        },
        legacy_tokens: badge_identity::LegacyTokensConfig::default(),
        // Workloads may call identity with their service-account tokens.
        authentication: badge_identity::AuthenticationConfig {
            issuers: vec![issuer_url.clone()],
            api_audiences: vec![],
        },
    };
    let is_server = pki.server("token-issuer");
    let is_client = pki.client("token-issuer");
    let issuer = IssuerConfig {
        telemetry: Default::default(),
        server: ListenConfig {
            listen: a.issuer_listen,
            limits: Default::default(),
            tls: TlsFiles {
                ca: pki.ca.clone(),
                cert: is_server.cert.clone(),
                key: is_server.key.clone(),
            },
        },
        database,
        log: LogConfig::default(),
        token: TokenConfig {
            issuers: vec![issuer_url.clone()],
            api_audiences: vec![],
            max_expiration_seconds: 0,
            extend_expiration: true,
            max_extended_expiration_seconds: badge_core::token::EXTENDED_EXPIRATION_SECONDS,
        },
        keys: KeysConfig {
            algorithm: a.algorithm.clone(),
            kek_file: Some(kek.clone()),
            ..KeysConfig::default()
        },
        oidc: OidcConfig {
            listen: a.oidc_listen,
            cert: is_server.cert,
            key: is_server.key,
            jwks_uri: None,
            external_address: None,
        },
        external_signer: ExternalSignerConfig {
            socket: Some(a.data_dir.join("signer.sock")),
            refresh_hint_seconds: None,
        },
        ca: Default::default(),
        identity: Some(PeerConfig {
            endpoint: format!("https://{}", a.identity_listen),
            server_name: "localhost".into(),
            tls: TlsFiles {
                ca: pki.ca.clone(),
                cert: is_client.cert,
                key: is_client.key,
            },
        }),
    };
    let rv_server = pki.server("token-review");
    let rv_client = pki.client("token-review");
    let p = |x: &Path| x.display().to_string();
    // Built through the same loader as a config file, so every default applies.
    let review: badge_token_review::ReviewConfig = badge_runtime::config::load(
        None,
        Vec::<(String, String)>::new(),
        &[
            format!("server.listen={}", a.review_listen),
            format!("server.tls.ca={}", p(&pki.ca)),
            format!("server.tls.cert={}", p(&rv_server.cert)),
            format!("server.tls.key={}", p(&rv_server.key)),
            format!("database.url={database_url}"),
            format!("review.issuers=[\"{issuer_url}\"]"),
            format!("encryption.kek_file={}", p(&kek)),
            format!("webhook.listen={}", a.webhook_listen),
            format!("webhook.cert={}", p(&rv_server.cert)),
            format!("webhook.key={}", p(&rv_server.key)),
            // Callers need a certificate from the dev CA (kube-apiserver's, in
            // webhook-kubeconfig.yaml) or a service-account token.
            format!("webhook.client_ca={}", p(&pki.ca)),
            format!("identity.endpoint=https://{}", a.identity_listen),
            format!("identity.tls.ca={}", p(&pki.ca)),
            format!("identity.tls.cert={}", p(&rv_client.cert)),
            format!("identity.tls.key={}", p(&rv_client.key)),
        ],
    )?;
    let mut errors = Vec::new();
    badge_runtime::config::Validate::validate(&issuer, &mut errors);
    badge_runtime::config::Validate::validate(&identity, &mut errors);
    if !errors.is_empty() {
        anyhow::bail!("invalid configuration:\n  - {}", errors.join("\n  - "));
    }

    let id_listener = tokio::net::TcpListener::bind(a.identity_listen)
        .await
        .with_context(|| format!("binding {}", a.identity_listen))?;
    let listeners = badge_token_issuer::Listeners {
        grpc: tokio::net::TcpListener::bind(a.issuer_listen)
            .await
            .with_context(|| format!("binding {}", a.issuer_listen))?,
        oidc: tokio::net::TcpListener::bind(a.oidc_listen)
            .await
            .with_context(|| format!("binding {}", a.oidc_listen))?,
    };
    let review_listeners = badge_token_review::Listeners {
        grpc: tokio::net::TcpListener::bind(a.review_listen)
            .await
            .with_context(|| format!("binding {}", a.review_listen))?,
        webhook: Some(
            tokio::net::TcpListener::bind(a.webhook_listen)
                .await
                .with_context(|| format!("binding {}", a.webhook_listen))?,
        ),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let clock: Arc<dyn badge_core::Clock> = Arc::new(badge_core::SystemClock);
    let id_task = {
        let (cfg, store, clock, stop) = (identity.clone(), store.clone(), clock.clone(), stopped());
        tokio::spawn(
            async move { badge_identity::serve(&cfg, store, clock, id_listener, stop).await },
        )
    };
    let is_task = {
        let (cfg, store, clock, stop) = (issuer.clone(), store.clone(), clock.clone(), stopped());
        tokio::spawn(
            async move { badge_token_issuer::serve(&cfg, store, clock, listeners, stop).await },
        )
    };

    let rv_task = {
        let (cfg, store, clock, stop) = (review.clone(), store.clone(), clock.clone(), stopped());
        tokio::spawn(async move {
            badge_token_review::serve(&cfg, store, clock, review_listeners, stop).await
        })
    };
    let env = env_file(&a, &pki, &issuer_url);
    pki::write_file(&a.data_dir.join("badge.env"), env.as_bytes(), false)?;
    write_webhook_kubeconfig(
        &pki,
        &format!("https://{}/", a.webhook_listen),
        &a.data_dir.join(WEBHOOK_KUBECONFIG),
    )?;
    print_banner(&a, &pki, &issuer_url, &database_url);

    let (mut id_task, mut is_task, mut rv_task) = (id_task, is_task, rv_task);
    // Run until Ctrl-C / SIGTERM, or until either service stops on its own (an
    // error): then stop the other one too.
    let early = tokio::select! {
        () = stop => None,
        r = &mut id_task => Some(("identity", r)),
        r = &mut is_task => Some(("token-issuer", r)),
        r = &mut rv_task => Some(("token-review", r)),
    };
    let _ = stop_tx.send(true);
    if let Some((name, r)) = early {
        id_task.abort();
        is_task.abort();
        rv_task.abort();
        r.with_context(|| format!("{name} task"))?
            .with_context(|| format!("{name} stopped"))?;
        return Ok(());
    }
    let (a, b, c) = tokio::join!(id_task, is_task, rv_task);
    a??;
    b??;
    c??;
    Ok(())
}

/// kube-apiserver's webhook kubeconfig, next to `badge.env` in the data directory.
pub const WEBHOOK_KUBECONFIG: &str = "webhook-kubeconfig.yaml";

fn env_file(a: &UpArgs, pki: &DevPki, issuer_url: &str) -> String {
    format!(
        "BADGE_IDENTITY_ENDPOINT=https://{}\nBADGE_ISSUER_ENDPOINT=https://{}\nBADGE_REVIEW_ENDPOINT=https://{}\nBADGE_WEBHOOK_URL=https://{}/\nBADGE_ISSUER_URL={issuer_url}\nBADGE_OIDC_DISCOVERY={issuer_url}/.well-known/openid-configuration\nBADGE_CA={}\nBADGE_CLIENT_CERT={}\nBADGE_CLIENT_KEY={}\nBADGE_SIGNER_SOCKET={}\n",
        a.identity_listen,
        a.issuer_listen,
        a.review_listen,
        a.webhook_listen,
        pki.ca.display(),
        pki.admin.cert.display(),
        pki.admin.key.display(),
        a.data_dir.join("signer.sock").display(),
    )
}

fn print_banner(a: &UpArgs, pki: &DevPki, issuer_url: &str, database_url: &str) {
    let g = format!(
        "grpcurl -cacert {} -cert {} -key {}",
        pki.ca.display(),
        pki.admin.cert.display(),
        pki.admin.key.display()
    );
    println!(
        "\nBadge is up.\n\
         \n  identity      https://{id}   (gRPC, mTLS)\
         \n  token-issuer  https://{is}   (gRPC, mTLS)\
         \n  token-review  https://{rv}   (gRPC, mTLS); webhook https://{wh}/ (client certificate or bearer token)\
         \n  webhook kubeconfig  {kubeconfig} (kube-apiserver: --authentication-token-webhook-config-file)\
         \n  OIDC          {issuer_url}/.well-known/openid-configuration\
         \n  signer        {sock} (Kubernetes ExternalJWTSigner)\
         \n  admin cert    {cert} (O=system:masters), CA {ca}\
         \n  env file      {env}\
         \n  store         {store}\
         \n\nTry:\
         \n  {g} {id} list\
         \n  {g} -d '{{\"service_account\":{{\"metadata\":{{\"name\":\"demo\",\"namespace\":\"default\"}}}}}}' {id} badge.identity.v1.ServiceAccountService/CreateServiceAccount\
         \n  {g} -d '{{\"namespace\":\"default\",\"name\":\"demo\",\"audiences\":[\"my-api\"]}}' {is} badge.token.v1.TokenService/CreateToken\
         \n  {g} -d '{{\"spec\":{{\"token\":\"<token>\",\"audiences\":[\"my-api\"]}}}}' {rv} badge.review.v1.TokenReviewService/CreateTokenReview\
         \n  curl --cacert {ca} {issuer_url}/openid/v1/jwks\
         \n\nbadgectl (kubectl-like; Kubernetes YAML):\
         \n  {ctl} get serviceaccounts -A\
         \n  {ctl} create token default --audience my-api\
         \n  {ctl} apply -f my-manifest.yaml\n",
        ctl = format!(
            "cargo run -q --release --bin badgectl -- --config {}",
            a.data_dir.join("badge.env").display()
        ),
        id = a.identity_listen,
        is = a.issuer_listen,
        rv = a.review_listen,
        wh = a.webhook_listen,
        sock = a.data_dir.join("signer.sock").display(),
        cert = pki.admin.cert.display(),
        ca = pki.ca.display(),
        env = a.data_dir.join("badge.env").display(),
        kubeconfig = a.data_dir.join(WEBHOOK_KUBECONFIG).display(),
        store = badge_runtime::config::redact_url(database_url),
    );
}
